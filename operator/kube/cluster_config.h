// Where the API server is and how to authenticate to it: from inside a pod (service account
// token, CA and namespace under /var/run/secrets/kubernetes.io/serviceaccount, address from
// KUBERNETES_SERVICE_HOST/PORT) or from a kubeconfig file (current context: server, CA,
// insecure-skip-tls-verify, bearer token or token file, client certificate and key).
// Bound service-account tokens rotate, so a token file is re-read when it changes and at
// least once a minute (as client-go does), never cached forever.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "server/common/status.h"

namespace vfu::op {

// Gives the bearer token to put on each request.
class TokenSource {
 public:
  // A fixed token (kubeconfig `token:`).
  static std::shared_ptr<TokenSource> Static(std::string token);
  // A token file, re-read when older than `max_age` or when Invalidate() was called (after a
  // 401). Surrounding whitespace is dropped.
  static std::shared_ptr<TokenSource> File(
      std::string path, std::chrono::milliseconds max_age = std::chrono::minutes(1));

  std::string Token();
  void Invalidate();

 private:
  TokenSource() = default;
  std::mutex mu_;
  std::string path_;  // empty for a static token
  std::chrono::milliseconds max_age_{0};
  std::string token_;
  std::optional<std::chrono::steady_clock::time_point> read_at_;
};

struct ClusterConfig {
  std::string server;  // "https://10.0.0.1:443" or "http://127.0.0.1:8001"
  std::string ca_pem;  // PEM bundle to verify the server with; empty: system CAs
  bool insecure_skip_tls_verify = false;
  std::string client_cert_pem;  // client certificate authentication
  std::string client_key_pem;
  std::shared_ptr<TokenSource> token;  // may be null (no bearer token)
  std::string namespace_name;          // the pod's namespace in-cluster, the context's otherwise
};

inline constexpr const char* kServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount";

// In-cluster configuration. `service_account_dir` is a parameter for tests.
Result<ClusterConfig> LoadInClusterConfig(
    const std::string& service_account_dir = kServiceAccountDir);

// Kubeconfig, current-context (or `context` if given). Relative file paths in it are resolved
// against the kubeconfig's directory, as kubectl does. Exec/auth-provider plugins are not
// supported and reported as such.
Result<ClusterConfig> LoadKubeconfig(const std::string& path, const std::string& context = "");

// --kubeconfig if set, else $KUBECONFIG (first entry), else in-cluster, else ~/.kube/config.
Result<ClusterConfig> LoadClusterConfig(const std::string& kubeconfig_flag);

}  // namespace vfu::op
