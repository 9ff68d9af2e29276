#include "server/frontend/tls.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/core/log.h"

namespace dino::frontend {
namespace {

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct StoreFree {
  void operator()(X509_STORE* s) const { X509_STORE_free(s); }
};
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using StorePtr = std::unique_ptr<X509_STORE, StoreFree>;
using BioPtr = std::unique_ptr<BIO, BioFree>;

// What identifies a version of a file: a rename onto the path changes the inode, an in-place
// rewrite the mtime or size.
struct FileStamp {
  ino_t inode = 0;
  int64_t mtime_ns = 0;
  int64_t size = -1;
  bool operator==(const FileStamp& other) const {
    return inode == other.inode && mtime_ns == other.mtime_ns && size == other.size;
  }
};

FileStamp StampOf(const std::string& path) {
  struct stat info {};
  if (path.empty() || ::stat(path.c_str(), &info) != 0) return {};
  return {info.st_ino, int64_t{info.st_mtim.tv_sec} * 1000000000 + info.st_mtim.tv_nsec,
          static_cast<int64_t>(info.st_size)};
}

// OpenSSL's most recent error as text (and its queue emptied, so it cannot leak into the
// next unrelated check).
std::string OpenSslError() {
  const unsigned long code = ERR_peek_last_error();
  std::string text = code == 0 ? "no PEM data"
                     : ERR_reason_error_string(code) != nullptr
                         ? ERR_reason_error_string(code)
                         : absl::StrCat("OpenSSL error ", code);
  ERR_clear_error();
  return text;
}

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": cannot read ", path, ": ", std::strerror(errno)));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

absl::StatusOr<std::vector<X509Ptr>> ReadCertificates(const std::string& path, const char* flag) {
  absl::StatusOr<std::string> pem = ReadFile(path, flag);
  if (!pem.ok()) return pem.status();
  BioPtr bio(BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size())));
  std::vector<X509Ptr> certificates;
  while (X509* certificate = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    certificates.emplace_back(certificate);
  }
  // Reading past the last certificate leaves a "no start line" error; anything else in a
  // file that held certificates is malformed PEM.
  const unsigned long last = ERR_peek_last_error();
  if (certificates.empty() || (last != 0 && ERR_GET_REASON(last) != PEM_R_NO_START_LINE)) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": ", path, " does not hold PEM certificates (", OpenSslError(), ")"));
  }
  ERR_clear_error();
  return certificates;
}

}  // namespace

struct TlsIdentityReloader::Identity {
  std::vector<X509Ptr> chain;  // The server's certificate first.
  PkeyPtr key;
  StorePtr client_cas;  // Null without --tls_client_ca.
  FileStamp cert_stamp, key_stamp, client_ca_stamp;
};

namespace {

absl::StatusOr<std::shared_ptr<const TlsIdentityReloader::Identity>> LoadIdentity(
    const TlsFiles& files) {
  auto identity = std::make_shared<TlsIdentityReloader::Identity>();
  // Stamps first: a file replaced while it is read is then seen as changed at the next check.
  identity->cert_stamp = StampOf(files.cert_path);
  identity->key_stamp = StampOf(files.key_path);
  identity->client_ca_stamp = StampOf(files.client_ca_path);

  absl::StatusOr<std::vector<X509Ptr>> chain = ReadCertificates(files.cert_path, "--tls_cert");
  if (!chain.ok()) return chain.status();
  identity->chain = *std::move(chain);

  absl::StatusOr<std::string> key_pem = ReadFile(files.key_path, "--tls_key");
  if (!key_pem.ok()) return key_pem.status();
  BioPtr bio(BIO_new_mem_buf(key_pem->data(), static_cast<int>(key_pem->size())));
  identity->key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (identity->key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("--tls_key: ", files.key_path,
                                                   " does not hold an unencrypted PEM private "
                                                   "key (",
                                                   OpenSslError(), ")"));
  }
  if (X509_check_private_key(identity->chain.front().get(), identity->key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("--tls_key: ", files.key_path,
                                                   " is not the private key of the first "
                                                   "certificate in --tls_cert ",
                                                   files.cert_path));
  }

  if (!files.client_ca_path.empty()) {
    absl::StatusOr<std::vector<X509Ptr>> cas =
        ReadCertificates(files.client_ca_path, "--tls_client_ca");
    if (!cas.ok()) return cas.status();
    identity->client_cas.reset(X509_STORE_new());
    for (const X509Ptr& ca : *cas) {
      if (X509_STORE_add_cert(identity->client_cas.get(), ca.get()) != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("--tls_client_ca: ", files.client_ca_path, ": ", OpenSslError()));
      }
    }
  }
  return identity;
}

}  // namespace

absl::Status CheckTlsFiles(const TlsFiles& files) { return LoadIdentity(files).status(); }

std::shared_ptr<grpc::ServerCredentials> GrpcTlsServerCredentials(const TlsFiles& files) {
  const auto interval = static_cast<unsigned int>(files.reload_seconds);
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider;
  if (files.client_ca_path.empty()) {
    provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        files.key_path, files.cert_path, interval);
  } else {
    provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        files.key_path, files.cert_path, files.client_ca_path, interval);
  }
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (files.client_ca_path.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<TlsIdentityReloader>> TlsIdentityReloader::Create(TlsFiles files) {
  auto identity = LoadIdentity(files);
  if (!identity.ok()) return identity.status();
  return std::shared_ptr<TlsIdentityReloader>(
      new TlsIdentityReloader(std::move(files), *std::move(identity)));
}

TlsIdentityReloader::TlsIdentityReloader(TlsFiles files, std::shared_ptr<const Identity> identity)
    : files_(std::move(files)),
      identity_(std::move(identity)),
      next_check_(std::chrono::steady_clock::now() + std::chrono::seconds(files_.reload_seconds)) {}

TlsIdentityReloader::~TlsIdentityReloader() = default;

std::shared_ptr<const TlsIdentityReloader::Identity> TlsIdentityReloader::Current() {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto now = std::chrono::steady_clock::now();
  if (now < next_check_) return identity_;
  next_check_ = now + std::chrono::seconds(files_.reload_seconds);
  if (StampOf(files_.cert_path) == identity_->cert_stamp &&
      StampOf(files_.key_path) == identity_->key_stamp &&
      StampOf(files_.client_ca_path) == identity_->client_ca_stamp) {
    return identity_;
  }
  auto reloaded = LoadIdentity(files_);
  if (!reloaded.ok()) {
    serving::LogError("HTTPS keeps its previous certificate: the changed TLS files do not load: ",
                      reloaded.status().message());
    return identity_;
  }
  identity_ = *std::move(reloaded);
  serving::LogInfo("HTTPS reloaded its certificate from ", files_.cert_path);
  return identity_;
}

int TlsIdentityReloader::InstallIdentity(ssl_st* ssl, void* reloader) {
  const std::shared_ptr<const Identity> identity =
      static_cast<TlsIdentityReloader*>(reloader)->Current();
  // The leaf before its key: SSL_use_PrivateKey checks the key against the certificate.
  if (SSL_use_certificate(ssl, identity->chain.front().get()) != 1 ||
      SSL_use_PrivateKey(ssl, identity->key.get()) != 1) {
    return 0;
  }
  SSL_clear_chain_certs(ssl);
  for (size_t i = 1; i < identity->chain.size(); ++i) {
    if (SSL_add1_chain_cert(ssl, identity->chain[i].get()) != 1) return 0;
  }
  // Client certificates are verified later in this handshake, against this store.
  if (identity->client_cas != nullptr &&
      SSL_set1_verify_cert_store(ssl, identity->client_cas.get()) != 1) {
    return 0;
  }
  return 1;
}

bool TlsIdentityReloader::ConfigureContext(ssl_ctx_st& context) {
  if (SSL_CTX_set_min_proto_version(&context, TLS1_2_VERSION) != 1) return false;
  SSL_CTX_set_options(&context, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  if (!files_.client_ca_path.empty()) {
    SSL_CTX_set_verify(&context, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  SSL_CTX_set_cert_cb(&context, &TlsIdentityReloader::InstallIdentity, this);
  return true;
}

}  // namespace dino::frontend
