// Cluster configuration: in-cluster service account files and environment, kubeconfig
// contexts with inline and file credentials, and a kubeconfig that really reaches a server.
#include "operator/kube/cluster_config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "tests/unit/operator/test_util.h"

namespace vfu::op::testing {
namespace {

class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/vfu-operator-test-XXXXXX";
    path_ = ::mkdtemp(pattern);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }
  void Write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name) << text;
  }

 private:
  std::filesystem::path path_;
};

// Sets an environment variable for the test's duration.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(ClusterConfig, InClusterReadsServiceAccountFilesAndServiceAddress) {
  TempDir dir;
  dir.Write("token", "tok-1\n");
  dir.Write("ca.crt", "-----BEGIN CERTIFICATE-----\n");
  dir.Write("namespace", "vfio-user\n");
  ScopedEnv host("KUBERNETES_SERVICE_HOST", "10.96.0.1");
  ScopedEnv port("KUBERNETES_SERVICE_PORT", "443");
  auto config = LoadInClusterConfig(dir.path().string());
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->server, "https://10.96.0.1:443");
  EXPECT_EQ(config->namespace_name, "vfio-user");
  EXPECT_EQ(config->ca_pem, "-----BEGIN CERTIFICATE-----\n");
  EXPECT_EQ(config->token->Token(), "tok-1");
}

TEST(ClusterConfig, InClusterWithoutServiceEnvironmentIsAnError) {
  ScopedEnv host("KUBERNETES_SERVICE_HOST", nullptr);
  EXPECT_FALSE(LoadInClusterConfig("/nonexistent").ok());
}

TEST(ClusterConfig, TokenFileIsReadAgainAfterInvalidate) {
  TempDir dir;
  dir.Write("token", "old");
  auto source = TokenSource::File((dir.path() / "token").string(), std::chrono::hours(1));
  EXPECT_EQ(source->Token(), "old");
  dir.Write("token", "new");
  EXPECT_EQ(source->Token(), "old");  // cached within max_age
  source->Invalidate();               // as after a 401
  EXPECT_EQ(source->Token(), "new");
}

TEST(ClusterConfig, KubeconfigUsesTheCurrentContextWithInlineCredentials) {
  TempDir dir;
  dir.Write("config", R"(apiVersion: v1
kind: Config
current-context: dev
contexts:
  - name: prod
    context: {cluster: prod, user: prod}
  - name: dev
    context: {cluster: dev, user: dev, namespace: team}
clusters:
  - name: prod
    cluster: {server: https://prod:6443}
  - name: dev
    cluster:
      server: https://dev:6443/
      certificate-authority-data: Q0EtUEVN
users:
  - name: dev
    user:
      client-certificate-data: Q0VSVA==
      client-key-data: S0VZ
)");
  auto config = LoadKubeconfig((dir.path() / "config").string());
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->server, "https://dev:6443");
  EXPECT_EQ(config->namespace_name, "team");
  EXPECT_EQ(config->ca_pem, "CA-PEM");
  EXPECT_EQ(config->client_cert_pem, "CERT");
  EXPECT_EQ(config->client_key_pem, "KEY");
  EXPECT_EQ(config->token, nullptr);
}

TEST(ClusterConfig, KubeconfigTokenFileIsRelativeToTheKubeconfig) {
  TempDir dir;
  dir.Write("token", "from-file\n");
  dir.Write("config", R"(current-context: c
contexts: [{name: c, context: {cluster: c, user: u}}]
clusters: [{name: c, cluster: {server: "http://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {tokenFile: token}}]
)");
  auto config = LoadKubeconfig((dir.path() / "config").string());
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_TRUE(config->insecure_skip_tls_verify);
  EXPECT_EQ(config->token->Token(), "from-file");
}

TEST(ClusterConfig, KubeconfigWithAnExecPluginIsRefusedWithAReason) {
  TempDir dir;
  dir.Write("config", R"(current-context: c
contexts: [{name: c, context: {cluster: c, user: u}}]
clusters: [{name: c, cluster: {server: "https://x"}}]
users: [{name: u, user: {exec: {command: aws}}}]
)");
  auto config = LoadKubeconfig((dir.path() / "config").string());
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.error().message.find("exec"), std::string::npos);
}

TEST(ClusterConfig, KubeconfigReachesTheServerWithItsToken) {
  FakeApiServer fake;
  TempDir dir;
  dir.Write("config",
            "current-context: c\n"
            "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
            "clusters: [{name: c, cluster: {server: \"" +
                fake.url() +
                "\"}}]\n"
                "users: [{name: u, user: {token: kube-token}}]\n");
  auto config = LoadClusterConfig((dir.path() / "config").string());
  ASSERT_TRUE(config.ok()) << config.error().message;
  KubeClient client(std::shared_ptr<HttpTransport>(MakeCppRestTransport(*config)));
  ASSERT_TRUE(client.List(resources::kNodes, "").ok());
  EXPECT_EQ(fake.AuthorizationHeaders().back(), "Bearer kube-token");
}

}  // namespace
}  // namespace vfu::op::testing
