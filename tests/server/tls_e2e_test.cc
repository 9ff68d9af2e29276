// TLS end to end: a real dino-server with --tls_cert/--tls_key (and --tls_client_ca), driven
// through the C++ client library and, for the HTTPS fronts, cpp-httplib's SSLClient. The CAs
// and certificates are made by the openssl command in a scratch folder: a CA with a server
// certificate (SAN localhost, 127.0.0.1) and a client certificate, and an unrelated CA with
// its own server and client certificates.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "client/dino_client.h"
#include "client/training_client.h"
#include "tests/common/scratch_dir.h"
#include "tests/common/server_process.h"
#include "tests/common/test_models.h"

namespace dino {
namespace {

using ::testing::HasSubstr;

constexpr testing::SmallDims kDims{};
constexpr char kModel[] = "dipnet";
constexpr char kToken[] = "tls-test-token-0123456789";

std::string ServerBinary() { return DINO_SERVER_BINARY; }

// Runs `command` with its output discarded; its exit status (-1 when it did not exit).
int ExitStatusOf(const std::string& command) {
  const int status = std::system((command + " >/dev/null 2>&1").c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void Openssl(const std::string& folder, const std::string& arguments) {
  const std::string command = "cd '" + folder + "' && openssl " + arguments + " >/dev/null 2>&1";
  if (std::system(command.c_str()) != 0) throw std::runtime_error("failed: " + command);
}

// <name>.pem / <name>.key: a self-signed CA (P-256 keys: fast to make).
void MakeCa(const std::string& folder, const std::string& name) {
  Openssl(folder, "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout " +
                      name + ".key -out " + name + ".pem -days 2 -subj '/CN=dino test " + name +
                      "'");
}

// <name>.pem / <name>.key signed by CA <ca>; server certificates name localhost and
// 127.0.0.1, client certificates are for TLS client authentication.
void MakeCertificate(const std::string& folder, const std::string& ca, const std::string& name,
                     bool server) {
  const std::string extensions = name + ".ext";
  std::ofstream(folder + "/" + extensions)
      << (server ? "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
                 : "extendedKeyUsage=clientAuth\n");
  Openssl(folder, "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout " + name +
                      ".key -out " + name + ".csr -subj '/CN=" + name + "'");
  Openssl(folder, "x509 -req -in " + name + ".csr -CA " + ca + ".pem -CAkey " + ca +
                      ".key -CAcreateserial -out " + name + ".pem -days 2 -extfile " + extensions);
}

// Runs dino-server with `flags` until it exits (it must fail before serving); returns its exit
// status and everything it printed.
std::pair<int, std::string> RunFailingServer(const std::string& flags) {
  const std::string command =
      ServerBinary() + " --port=0 --metrics_port=-1 --host=127.0.0.1 " + flags + " 2>&1 </dev/null";
  FILE* pipe = ::popen(command.c_str(), "r");
  std::string output;
  char buffer[512];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

// The scratch folder of the test suite: certificates, keys, the model repository, the token.
testing::ScopedTempDir* certificates_folder = nullptr;

std::string File(const std::string& name) { return (*certificates_folder) / name; }

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // cpp-httplib's SSLClient writes with write(2); a server that hangs up on a refused
    // handshake must fail that request, not kill the test with SIGPIPE.
    ::signal(SIGPIPE, SIG_IGN);
    certificates_folder = new testing::ScopedTempDir("dino-tls-");
    const std::string& dir = certificates_folder->path();
    MakeCa(dir, "ca");
    MakeCertificate(dir, "ca", "server", /*server=*/true);
    MakeCertificate(dir, "ca", "client", /*server=*/false);
    MakeCa(dir, "other_ca");
    MakeCertificate(dir, "other_ca", "other_server", /*server=*/true);
    MakeCertificate(dir, "other_ca", "other_client", /*server=*/false);
    testing::WriteModel(testing::SmallDipnet(kDims, torch::kFloat64, 1),
                        testing::SmallMetadata("dipnet", kDims.d_m), dir + "/repository", kModel,
                        1);
    std::ofstream(dir + "/admin.token") << kToken << "\n";
  }
  static void TearDownTestSuite() {
    delete certificates_folder;
    certificates_folder = nullptr;
  }

  // --model_repository plus the server's TLS files (copies, so a test may replace them).
  static std::vector<std::string> ServerFlags(const std::string& cert, const std::string& key) {
    return {"--model_repository=" + File("repository"), "--repository_poll_seconds=0",
            "--tls_cert=" + cert, "--tls_key=" + key};
  }

  // A client of `target` trusting `ca` ("" for plaintext), with a client certificate
  // <client>.pem when `client` is not empty.
  static absl::StatusOr<client::DinoClient> Connect(const std::string& target,
                                                    const std::string& ca,
                                                    const std::string& client = "",
                                                    const std::string& token = "",
                                                    const std::string& server_name = "") {
    client::ClientOptions options;
    options.target = target;
    options.timeout = absl::Seconds(10);
    options.bearer_token = token;
    if (!ca.empty()) {
      client::TlsClientFiles files;
      files.ca_path = File(ca + ".pem");
      if (!client.empty()) {
        files.cert_path = File(client + ".pem");
        files.key_path = File(client + ".key");
      }
      auto credentials = client::TlsChannelCredentials(files);
      if (!credentials.ok()) return credentials.status();
      options.credentials = *credentials;
      options.tls_server_name = server_name;
    }
    return client::DinoClient::Connect(options);
  }

  // Evaluate at m = 0 through a fresh channel (so a new TLS handshake): OK or why not.
  static absl::Status EvaluateStatus(const std::string& target, const std::string& ca,
                                     const std::string& client = "", const std::string& token = "",
                                     const std::string& server_name = "") {
    auto connected = Connect(target, ca, client, token, server_name);
    if (!connected.ok()) return connected.status();
    absl::StatusOr<NpyArray> m = NpyArray::Zeros({1, kDims.d_m}, NpyDType::kFloat64);
    if (!m.ok()) return m.status();
    auto result = connected->Evaluate({kModel}, *m);
    if (!result.ok()) return result.status();
    if (result->q.shape != std::vector<int64_t>{1, kDims.d_q}) {
      return absl::InternalError("Evaluate returned the wrong shape");
    }
    return absl::OkStatus();
  }
};

// Polls `check` every 200 ms for up to `seconds`; true once it returned true.
template <typename Check>
bool Eventually(Check check, double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (check()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return check();
}

// The port printed on the server's "<what> on https://host:port" line.
int PrintedPort(const testing::ServerProcess& server, const std::string& what) {
  std::smatch match;
  const std::regex line(what + " on https://[^\\s]*:(\\d+)");
  if (!std::regex_search(server.output(), match, line)) return 0;
  return std::stoi(match[1]);
}

// GET /Info over HTTPS trusting `ca`, with client certificate <client> when not empty: the
// HTTP status, or -1 when no connection or handshake succeeded.
int HttpsInfoStatus(int port, const std::string& ca, const std::string& client) {
  std::unique_ptr<httplib::SSLClient> https =
      client.empty() ? std::make_unique<httplib::SSLClient>("127.0.0.1", port)
                     : std::make_unique<httplib::SSLClient>(
                           "127.0.0.1", port, File(client + ".pem"), File(client + ".key"));
  https->set_ca_cert_path(File(ca + ".pem").c_str());
  https->enable_server_certificate_verification(true);
  https->set_connection_timeout(5);
  auto answer = https->Get("/Info");
  return answer ? answer->status : -1;
}

TEST_F(TlsTest, TlsServesTrustingClientsAndRefusesPlaintext) {
  testing::ServerProcess server(ServerBinary(),
                                ServerFlags(File("server.pem"), File("server.key")));
  // 127.0.0.1 is in the certificate's SAN; so is localhost, checked by name override.
  EXPECT_TRUE(EvaluateStatus(server.target(), "ca").ok()) << EvaluateStatus(server.target(), "ca");
  EXPECT_TRUE(EvaluateStatus(server.target(), "ca", "", "", "localhost").ok());
  // Plaintext to a TLS port fails (the server expects a TLS ClientHello).
  const absl::Status plaintext = EvaluateStatus(server.target(), "");
  EXPECT_TRUE(absl::IsUnavailable(plaintext)) << plaintext;
  // A client that trusts another CA refuses the server's certificate.
  const absl::Status untrusted = EvaluateStatus(server.target(), "other_ca");
  EXPECT_TRUE(absl::IsUnavailable(untrusted)) << untrusted;
  // A name the certificate does not carry is refused too.
  const absl::Status wrong_name = EvaluateStatus(server.target(), "ca", "", "", "dino.example");
  EXPECT_TRUE(absl::IsUnavailable(wrong_name)) << wrong_name;

  // dino-bench's --tls_* flags: measures over TLS; without them it cannot connect.
  const std::string bench = std::string(DINO_BENCH_BINARY) + " --server " + server.target() +
                            " --n 5 --warmup 1 --methods evaluate --timeout 5";
  EXPECT_EQ(ExitStatusOf(bench + " --tls_ca " + File("ca.pem") + " --tls_server_name localhost"),
            0);
  EXPECT_NE(ExitStatusOf(bench), 0);
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificateFromTheClientCa) {
  std::vector<std::string> flags = ServerFlags(File("server.pem"), File("server.key"));
  flags.push_back("--tls_client_ca=" + File("ca.pem"));
  testing::ServerProcess server(ServerBinary(), flags);
  const absl::Status right = EvaluateStatus(server.target(), "ca", "client");
  EXPECT_TRUE(right.ok()) << right;
  const absl::Status no_certificate = EvaluateStatus(server.target(), "ca");
  EXPECT_TRUE(absl::IsUnavailable(no_certificate)) << no_certificate;
  const absl::Status other_ca = EvaluateStatus(server.target(), "ca", "other_client");
  EXPECT_TRUE(absl::IsUnavailable(other_ca)) << other_ca;

  // A verified client certificate is an identity check: without --admin_token_file, model
  // control is open to certificate holders (and to no one else, who cannot connect at all).
  client::ClientOptions options;
  options.target = server.target();
  options.credentials =
      *client::TlsChannelCredentials({File("ca.pem"), File("client.pem"), File("client.key")});
  auto training = client::TrainingClient::Connect(options);
  ASSERT_TRUE(training.ok()) << training.status();
  auto jobs = training->ListJobs();
  EXPECT_TRUE(jobs.ok()) << jobs.status();
}

TEST_F(TlsTest, BearerTokenStillAppliesOnTopOfMutualTls) {
  std::vector<std::string> flags = ServerFlags(File("server.pem"), File("server.key"));
  flags.push_back("--tls_client_ca=" + File("ca.pem"));
  flags.push_back("--admin_token_file=" + File("admin.token"));
  flags.push_back("--require_token_for_inference");
  testing::ServerProcess server(ServerBinary(), flags);
  const absl::Status without_token = EvaluateStatus(server.target(), "ca", "client");
  EXPECT_TRUE(absl::IsUnauthenticated(without_token)) << without_token;
  const absl::Status wrong_token = EvaluateStatus(server.target(), "ca", "client", "not-it");
  EXPECT_TRUE(absl::IsUnauthenticated(wrong_token)) << wrong_token;
  const absl::Status with_token = EvaluateStatus(server.target(), "ca", "client", kToken);
  EXPECT_TRUE(with_token.ok()) << with_token;
  // The token does not replace the certificate.
  const absl::Status token_only = EvaluateStatus(server.target(), "ca", "", kToken);
  EXPECT_TRUE(absl::IsUnavailable(token_only)) << token_only;
}

TEST_F(TlsTest, HttpFrontsServeHttpsWithTheSameIdentityAndClientCa) {
  std::vector<std::string> flags = ServerFlags(File("server.pem"), File("server.key"));
  flags.push_back("--tls_client_ca=" + File("ca.pem"));
  flags.push_back("--umbridge_port=0");
  flags.push_back("--http_port=0");
  testing::ServerProcess server(ServerBinary(), flags);
  const int umbridge_port = PrintedPort(server, "UM-Bridge");
  ASSERT_GT(umbridge_port, 0) << server.output();
  EXPECT_EQ(HttpsInfoStatus(umbridge_port, "ca", "client"), 200);
  EXPECT_EQ(HttpsInfoStatus(umbridge_port, "ca", ""), -1);  // No client certificate.
  EXPECT_EQ(HttpsInfoStatus(umbridge_port, "ca", "other_client"), -1);
  EXPECT_EQ(HttpsInfoStatus(umbridge_port, "other_ca", "client"), -1);  // Untrusted server.
  // Plaintext HTTP gets no answer from an HTTPS port.
  httplib::Client plaintext("127.0.0.1", umbridge_port);
  plaintext.set_connection_timeout(5);
  plaintext.set_read_timeout(5);
  auto plain = plaintext.Get("/Info");
  EXPECT_TRUE(!plain || plain->status != 200);

  const int oip_port = PrintedPort(server, "Open Inference Protocol REST");
  ASSERT_GT(oip_port, 0) << server.output();
  httplib::SSLClient oip("127.0.0.1", oip_port, File("client.pem"), File("client.key"));
  oip.set_ca_cert_path(File("ca.pem").c_str());
  oip.enable_server_certificate_verification(true);
  auto ready = oip.Get("/v2/health/ready");
  ASSERT_TRUE(ready) << httplib::to_string(ready.error());
  EXPECT_EQ(ready->status, 200);
}

// Writes `from` over `to` the way certificate managers do: a new file renamed into place.
void ReplaceFile(const std::string& from, const std::string& to) {
  std::filesystem::copy_file(from, to + ".new", std::filesystem::copy_options::overwrite_existing);
  std::filesystem::rename(to + ".new", to);
}

TEST_F(TlsTest, ChangedCertificateFilesAreServedWithoutARestart) {
  const std::string live = File("live");
  std::filesystem::create_directories(live);
  std::filesystem::copy_file(File("server.pem"), live + "/server.pem");
  std::filesystem::copy_file(File("server.key"), live + "/server.key");
  std::vector<std::string> flags = ServerFlags(live + "/server.pem", live + "/server.key");
  flags.push_back("--tls_reload_seconds=1");
  flags.push_back("--umbridge_port=0");
  testing::ServerProcess server(ServerBinary(), flags);
  const int https_port = PrintedPort(server, "UM-Bridge");
  ASSERT_GT(https_port, 0) << server.output();
  ASSERT_TRUE(EvaluateStatus(server.target(), "ca").ok());
  ASSERT_FALSE(EvaluateStatus(server.target(), "other_ca").ok());
  ASSERT_EQ(HttpsInfoStatus(https_port, "ca", ""), 200);

  // A new pair from a new CA; the key first, then the certificate (a watcher may see the
  // mismatched pair in between and must keep serving the old one).
  ReplaceFile(File("other_server.key"), live + "/server.key");
  ReplaceFile(File("other_server.pem"), live + "/server.pem");
  EXPECT_TRUE(Eventually([&] { return EvaluateStatus(server.target(), "other_ca").ok(); }, 20))
      << EvaluateStatus(server.target(), "other_ca");
  const absl::Status old_ca = EvaluateStatus(server.target(), "ca");
  EXPECT_TRUE(absl::IsUnavailable(old_ca)) << old_ca;
  EXPECT_TRUE(Eventually([&] { return HttpsInfoStatus(https_port, "other_ca", "") == 200; }, 20));
  EXPECT_EQ(HttpsInfoStatus(https_port, "ca", ""), -1);
  // The same process served throughout.
  EXPECT_EQ(::kill(server.pid(), 0), 0);
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(), 0);
}

TEST_F(TlsTest, BadTlsFilesFailTheStartNamingTheFlag) {
  const std::string repository = "--model_repository=" + File("repository") + " ";
  auto [missing_status, missing] = RunFailingServer(
      repository + "--tls_cert=" + File("absent.pem") + " --tls_key=" + File("server.key"));
  EXPECT_NE(missing_status, 0);
  EXPECT_THAT(missing, HasSubstr("--tls_cert"));
  EXPECT_THAT(missing, HasSubstr("absent.pem"));

  auto [mismatch_status, mismatch] = RunFailingServer(
      repository + "--tls_cert=" + File("server.pem") + " --tls_key=" + File("client.key"));
  EXPECT_NE(mismatch_status, 0);
  EXPECT_THAT(mismatch, HasSubstr("--tls_key"));
  EXPECT_THAT(mismatch, HasSubstr("not the private key"));

  auto [not_pem_status, not_pem] = RunFailingServer(
      repository + "--tls_cert=" + File("admin.token") + " --tls_key=" + File("server.key"));
  EXPECT_NE(not_pem_status, 0);
  EXPECT_THAT(not_pem, HasSubstr("--tls_cert"));

  auto [ca_status, ca] = RunFailingServer(repository + "--tls_cert=" + File("server.pem") +
                                          " --tls_key=" + File("server.key") +
                                          " --tls_client_ca=" + File("absent_ca.pem"));
  EXPECT_NE(ca_status, 0);
  EXPECT_THAT(ca, HasSubstr("--tls_client_ca"));

  auto [half_status, half] = RunFailingServer(repository + "--tls_cert=" + File("server.pem"));
  EXPECT_NE(half_status, 0);
  EXPECT_THAT(half, HasSubstr("--tls_key"));
}

}  // namespace
}  // namespace dino
