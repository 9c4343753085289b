#include "operator/kube/cluster_config.h"

#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace vfu::op {
namespace {

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return MakeError(ENOENT, "cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string TrimSpace(const std::string& text) {
  size_t begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  size_t end = text.find_last_not_of(" \t\r\n");
  return text.substr(begin, end - begin + 1);
}

Result<std::string> Base64Decode(const std::string& text, const std::string& what) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  uint32_t bits = 0;
  int nbits = 0;
  for (char c : text) {
    if (c == '=' || c == '\n' || c == '\r' || c == ' ') continue;
    int v = value(c);
    if (v < 0) return MakeError(EINVAL, what + " is not valid base64");
    bits = (bits << 6) | static_cast<uint32_t>(v);
    nbits += 6;
    if (nbits >= 8) {
      nbits -= 8;
      out.push_back(static_cast<char>((bits >> nbits) & 0xff));
    }
  }
  return out;
}

std::string Resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  return base_dir + "/" + path;
}

// Reads `<key>-data` (base64) or `<key>` (a file) from `node`; empty if neither is set.
Result<std::string> DataOrFile(const YAML::Node& node, const std::string& key,
                               const std::string& base_dir) {
  if (node[key + "-data"])
    return Base64Decode(node[key + "-data"].as<std::string>(), key + "-data");
  if (node[key]) return ReadFile(Resolve(base_dir, node[key].as<std::string>()));
  return std::string();
}

YAML::Node FindNamed(const YAML::Node& list, const std::string& name) {
  if (!list || !list.IsSequence()) return YAML::Node();
  for (const auto& entry : list) {
    if (entry["name"] && entry["name"].as<std::string>() == name) return entry;
  }
  return YAML::Node();
}

}  // namespace

std::shared_ptr<TokenSource> TokenSource::Static(std::string token) {
  auto source = std::shared_ptr<TokenSource>(new TokenSource());
  source->token_ = std::move(token);
  return source;
}

std::shared_ptr<TokenSource> TokenSource::File(std::string path,
                                               std::chrono::milliseconds max_age) {
  auto source = std::shared_ptr<TokenSource>(new TokenSource());
  source->path_ = std::move(path);
  source->max_age_ = max_age;
  return source;
}

std::string TokenSource::Token() {
  std::lock_guard<std::mutex> lock(mu_);
  if (path_.empty()) return token_;
  auto now = std::chrono::steady_clock::now();
  if (!read_at_ || now - *read_at_ >= max_age_) {
    auto text = ReadFile(path_);
    // A failed read keeps the last token: the kubelet replaces the file atomically, so a
    // failure is transient and the old token is still valid for a while.
    if (text) token_ = TrimSpace(*text);
    read_at_ = now;
  }
  return token_;
}

void TokenSource::Invalidate() {
  std::lock_guard<std::mutex> lock(mu_);
  read_at_.reset();
}

Result<ClusterConfig> LoadInClusterConfig(const std::string& service_account_dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (!host || !port || !*host || !*port) {
    return MakeError(ENOENT, "not in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set");
  }
  ClusterConfig config;
  std::string h = host;
  if (h.find(':') != std::string::npos) h = "[" + h + "]";  // IPv6 service address
  config.server = "https://" + h + ":" + port;
  auto ca = ReadFile(service_account_dir + "/ca.crt");
  if (!ca) return ca.error();
  config.ca_pem = *ca;
  std::string token_path = service_account_dir + "/token";
  if (!ReadFile(token_path)) return MakeError(ENOENT, "cannot read the token " + token_path);
  config.token = TokenSource::File(token_path);
  auto ns = ReadFile(service_account_dir + "/namespace");
  config.namespace_name = ns ? TrimSpace(*ns) : "default";
  return config;
}

Result<ClusterConfig> LoadKubeconfig(const std::string& path, const std::string& context_name) {
  auto text = ReadFile(path);
  if (!text) return text.error();
  std::string base_dir = ".";
  if (size_t slash = path.rfind('/'); slash != std::string::npos) base_dir = path.substr(0, slash);
  try {
    YAML::Node root = YAML::Load(*text);
    std::string name = context_name;
    if (name.empty() && root["current-context"]) name = root["current-context"].as<std::string>();
    if (name.empty()) return MakeError(EINVAL, path + ": no current-context");
    YAML::Node context = FindNamed(root["contexts"], name)["context"];
    if (!context) return MakeError(EINVAL, path + ": context '" + name + "' not found");
    std::string cluster_name = context["cluster"] ? context["cluster"].as<std::string>() : "";
    std::string user_name = context["user"] ? context["user"].as<std::string>() : "";
    YAML::Node cluster = FindNamed(root["clusters"], cluster_name)["cluster"];
    if (!cluster || !cluster["server"]) {
      return MakeError(EINVAL, path + ": cluster '" + cluster_name + "' has no server");
    }
    ClusterConfig config;
    config.server = cluster["server"].as<std::string>();
    while (!config.server.empty() && config.server.back() == '/') config.server.pop_back();
    config.namespace_name =
        context["namespace"] ? context["namespace"].as<std::string>() : std::string("default");
    if (cluster["insecure-skip-tls-verify"]) {
      config.insecure_skip_tls_verify = cluster["insecure-skip-tls-verify"].as<bool>();
    }
    auto ca = DataOrFile(cluster, "certificate-authority", base_dir);
    if (!ca) return ca.error();
    config.ca_pem = *ca;
    YAML::Node user = FindNamed(root["users"], user_name)["user"];
    if (user) {
      if (user["exec"] || user["auth-provider"]) {
        return MakeError(ENOTSUP, path + ": user '" + user_name +
                                      "' uses an exec or auth-provider plugin, which this "
                                      "operator does not run; use a token or a certificate");
      }
      if (user["token"]) {
        config.token = TokenSource::Static(user["token"].as<std::string>());
      } else if (user["tokenFile"]) {
        config.token = TokenSource::File(Resolve(base_dir, user["tokenFile"].as<std::string>()));
      }
      auto cert = DataOrFile(user, "client-certificate", base_dir);
      if (!cert) return cert.error();
      auto key = DataOrFile(user, "client-key", base_dir);
      if (!key) return key.error();
      config.client_cert_pem = *cert;
      config.client_key_pem = *key;
    }
    return config;
  } catch (const YAML::Exception& e) {
    return MakeError(EINVAL, path + ": " + e.what());
  }
}

Result<ClusterConfig> LoadClusterConfig(const std::string& kubeconfig_flag) {
  if (!kubeconfig_flag.empty()) return LoadKubeconfig(kubeconfig_flag);
  if (const char* env = std::getenv("KUBECONFIG"); env && *env) {
    std::string first = env;
    first = first.substr(0, first.find(':'));
    return LoadKubeconfig(first);
  }
  auto in_cluster = LoadInClusterConfig();
  if (in_cluster) return in_cluster;
  if (const char* home = std::getenv("HOME"); home && *home) {
    auto from_home = LoadKubeconfig(std::string(home) + "/.kube/config");
    if (from_home) return from_home;
  }
  return MakeError(ENOENT, "no cluster configuration: not in a cluster (" +
                               in_cluster.error().message +
                               "), no --kubeconfig, $KUBECONFIG or ~/.kube/config");
}

}  // namespace vfu::op
