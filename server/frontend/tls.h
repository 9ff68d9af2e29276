// TLS for the server's ports (--tls_cert, --tls_key, --tls_client_ca, --tls_reload_seconds).
//
// gRPC: grpc::experimental::FileWatcherCertificateProvider re-reads the PEM files every
// reload interval and hands changed contents to new handshakes (connections already open keep
// the identity they were made with), so a rotated certificate is served without a restart.
//
// HTTPS (the UM-Bridge and OIP REST fronts on cpp-httplib's SSLServer): TlsIdentityReloader
// keeps the parsed certificate chain, key and client CA in memory and, at most once per reload
// interval, compares the files' inode/mtime/size with what it loaded; on a change it loads and
// checks them again and installs them on every later handshake (OpenSSL's certificate
// callback). A changed set that does not load (half-written, key not matching the
// certificate) is logged and the previous identity keeps serving.
#pragma once

#include <grpcpp/security/server_credentials.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct ssl_ctx_st;  // OpenSSL's SSL_CTX.
struct ssl_st;      // OpenSSL's SSL.

namespace dino::frontend {

struct TlsFiles {
  std::string cert_path;       // --tls_cert: PEM certificate chain, the server's first.
  std::string key_path;        // --tls_key: PEM private key of that certificate.
  std::string client_ca_path;  // --tls_client_ca: PEM CA(s); "" means no client certificates.
  int reload_seconds = 60;     // --tls_reload_seconds: how often the files are checked.
};

// Reads and checks the files as they are now: each readable and holding PEM of the right kind,
// the key belonging to the first certificate. INVALID_ARGUMENT naming the flag and path.
absl::Status CheckTlsFiles(const TlsFiles& files);

// Server credentials for gRPC that accept only TLS, re-read from the files every
// files.reload_seconds; with a client CA, client certificates are required and verified.
std::shared_ptr<grpc::ServerCredentials> GrpcTlsServerCredentials(const TlsFiles& files);

// The HTTPS identity, reloaded when its files change (see the file comment). Thread-safe.
class TlsIdentityReloader {
 public:
  // Loads and checks the files (errors as CheckTlsFiles).
  static absl::StatusOr<std::shared_ptr<TlsIdentityReloader>> Create(TlsFiles files);
  ~TlsIdentityReloader();

  // Sets up a server SSL_CTX: TLS 1.2 or later, client certificates required and verified
  // when there is a client CA, and the callback that installs the current identity on each
  // handshake. Returns false when OpenSSL refuses a setting.
  bool ConfigureContext(ssl_ctx_st& context);

  struct Identity;  // Parsed certificates and key plus the file stamps they were read at.

 private:
  explicit TlsIdentityReloader(TlsFiles files, std::shared_ptr<const Identity> identity);
  // The identity to use now, after reloading it if the interval passed and the files changed.
  std::shared_ptr<const Identity> Current();
  static int InstallIdentity(ssl_st* ssl, void* reloader);

  const TlsFiles files_;
  std::mutex mutex_;
  std::shared_ptr<const Identity> identity_;
  std::chrono::steady_clock::time_point next_check_;
};

}  // namespace dino::frontend
