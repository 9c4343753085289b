// Drives the hook API over its unix socket the way virt-launcher does (KubeVirt
// pkg/hooks/manager.go): Info on every socket in the hook directory, then for v1alpha3
// OnDefineDomain(domainXML, vmi JSON) before defining the domain, and Shutdown when done.
#include "deviceplugin/kubevirt_hook/hook_server.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>

#include "info/api_info.grpc.pb.h"
#include "tests/support/subprocess.h"
#include "v1alpha3/api_v1alpha3.grpc.pb.h"

namespace vfu::kubevirt_hook {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
namespace info = ::kubevirt::hooks::info;
namespace v1alpha3 = ::kubevirt::hooks::v1alpha3;
using namespace std::chrono_literals;

std::string ReadTestdata(const std::string& name) {
  std::ifstream in(std::string(VFU_HOOK_TESTDATA) + "/" + name, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

bool IsSocket(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

bool Readable(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
}

// virt-launcher's side: one channel to the hook socket, calls with a deadline.
class LauncherClient {
 public:
  explicit LauncherClient(const std::string& socket_path)
      : channel_(grpc::CreateChannel("unix:" + socket_path, grpc::InsecureChannelCredentials())),
        info_(info::Info::NewStub(channel_)),
        callbacks_(v1alpha3::Callbacks::NewStub(channel_)) {}

  grpc::Status Info(info::InfoResult* result) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    return info_->Info(&ctx, info::InfoParams(), result);
  }
  grpc::Status OnDefineDomain(const std::string& domain, const std::string& vmi,
                              v1alpha3::OnDefineDomainResult* result) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    v1alpha3::OnDefineDomainParams params;
    params.set_domainxml(domain);
    params.set_vmi(vmi);
    return callbacks_->OnDefineDomain(&ctx, params, result);
  }
  grpc::Status PreCloudInitIso(const v1alpha3::PreCloudInitIsoParams& params,
                               v1alpha3::PreCloudInitIsoResult* result) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    return callbacks_->PreCloudInitIso(&ctx, params, result);
  }
  grpc::Status Shutdown() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    v1alpha3::ShutdownResult result;
    return callbacks_->Shutdown(&ctx, v1alpha3::ShutdownParams(), &result);
  }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<info::Info::Stub> info_;
  std::unique_ptr<v1alpha3::Callbacks::Stub> callbacks_;
};

class HookServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HookServerOptions options;
    options.socket_path = dir_.File("hooks/vfio-user.sock");
    auto server = HookServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.error().message;
    server_ = std::move(*server);
    client_ = std::make_unique<LauncherClient>(server_->socket_path());
  }

  testing::TempDir dir_;
  std::unique_ptr<HookServer> server_;
  std::unique_ptr<LauncherClient> client_;
};

TEST_F(HookServerTest, InfoSubscribesOnDefineDomainAndShutdownWithVersionV1alpha3) {
  info::InfoResult result;
  grpc::Status status = client_->Info(&result);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(result.name(), "vfio-user");
  EXPECT_THAT(result.versions(), ElementsAre("v1alpha3"));
  std::vector<std::string> points;
  for (const auto& point : result.hookpoints()) points.push_back(point.name());
  EXPECT_THAT(points, ElementsAre("OnDefineDomain", "Shutdown"));
}

TEST_F(HookServerTest, OnDefineDomainReturnsTheDomainWithTheDevicesAttached) {
  v1alpha3::OnDefineDomainResult result;
  grpc::Status status = client_->OnDefineDomain(ReadTestdata("plain.domain.xml"),
                                                ReadTestdata("plain.vmi.json"), &result);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(result.domainxml(), ReadTestdata("plain.expected.xml"));

  // virt-launcher may define the domain again with what it got: nothing is added twice.
  v1alpha3::OnDefineDomainResult again;
  ASSERT_TRUE(
      client_->OnDefineDomain(result.domainxml(), ReadTestdata("plain.vmi.json"), &again).ok());
  EXPECT_EQ(again.domainxml(), result.domainxml());
}

TEST_F(HookServerTest, OnDefineDomainWithUnshareableMemoryFailsWithTheReason) {
  v1alpha3::OnDefineDomainResult result;
  grpc::Status status = client_->OnDefineDomain(
      "<domain><name>d</name><memoryBacking><source type='anonymous'/></memoryBacking></domain>",
      R"({"metadata":{"name":"vm","namespace":"ns"},)"
      R"("spec":{"domain":{"resources":{"limits":{"vfio-user.io/nvme":"1"}}}}})",
      &result);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("VMI ns/vm"));
  EXPECT_THAT(status.error_message(), HasSubstr("anonymous"));

  status = client_->OnDefineDomain("<domain/>", "not json", &result);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(HookServerTest, PreCloudInitIsoReturnsTheDataUnchanged) {
  v1alpha3::PreCloudInitIsoParams params;
  params.set_cloudinitdata(R"({"DataSource":"NoCloud","UserData":"#cloud-config\n"})");
  params.set_cloudinitnocloudsource(R"({"userData":"#cloud-config\n"})");
  params.set_vmi(R"({"metadata":{"name":"vm"}})");
  v1alpha3::PreCloudInitIsoResult result;
  ASSERT_TRUE(client_->PreCloudInitIso(params, &result).ok());
  EXPECT_EQ(result.cloudinitdata(), params.cloudinitdata());
  EXPECT_EQ(result.cloudinitnocloudsource(), params.cloudinitnocloudsource());
}

TEST_F(HookServerTest, ShutdownCallIsAnsweredAndSignalsTheOwner) {
  EXPECT_FALSE(server_->shutdown_requested());
  ASSERT_TRUE(client_->Shutdown().ok());
  EXPECT_TRUE(Readable(server_->shutdown_requested_fd(), 5000ms));
  EXPECT_TRUE(server_->shutdown_requested());
}

TEST_F(HookServerTest, StopRemovesTheSocketAndAStaleSocketIsReplacedOnStart) {
  std::string path = server_->socket_path();
  ASSERT_TRUE(IsSocket(path));
  server_->Stop();
  EXPECT_FALSE(IsSocket(path));

  // A socket file left by a killed earlier run does not block the next start.
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ::close(fd);
  ASSERT_TRUE(IsSocket(path));
  HookServerOptions options;
  options.socket_path = path;
  auto restarted = HookServer::Start(options);
  ASSERT_TRUE(restarted.ok()) << restarted.error().message;
  info::InfoResult result;
  EXPECT_TRUE(LauncherClient(path).Info(&result).ok());
}

// plain.vmi.json with its vfio-user.io/virtio-blk requests renamed to a pool's resource name.
std::string PlainVmiRequesting(const std::string& resource) {
  std::string vmi = ReadTestdata("plain.vmi.json");
  const std::string from = "vfio-user.io/virtio-blk";
  for (size_t at = vmi.find(from); at != std::string::npos; at = vmi.find(from, at)) {
    vmi.replace(at, from.size(), resource);
    at += resource.size();
  }
  return vmi;
}

TEST(HookServerNamingTest, OnDefineDomainCountsOverriddenResourceNamesUnderTheirClass) {
  testing::TempDir dir;
  HookServerOptions options;
  options.socket_path = dir.File("vfio-user.sock");
  options.naming =
      deviceplugin::ResourceNaming("vfio-user.io", {{"virtio-blk", "example.com/fast-disk"}});
  auto server = HookServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.error().message;
  LauncherClient client((*server)->socket_path());
  std::string vmi = PlainVmiRequesting("example.com/fast-disk");
  ASSERT_EQ(vmi.find("vfio-user.io/virtio-blk"), std::string::npos);
  v1alpha3::OnDefineDomainResult result;
  grpc::Status status = client.OnDefineDomain(ReadTestdata("plain.domain.xml"), vmi, &result);
  ASSERT_TRUE(status.ok()) << status.error_message();
  // The same two virtio-blk devices at the same class paths as for vfio-user.io/virtio-blk.
  EXPECT_EQ(result.domainxml(), ReadTestdata("plain.expected.xml"));
}

TEST(HookServerNamingTest, StartRefusesInvalidResourceNames) {
  testing::TempDir dir;
  HookServerOptions options;
  options.socket_path = dir.File("vfio-user.sock");
  options.naming = deviceplugin::ResourceNaming("vfio-user.io", {{"virtio-blk", "fast-disk"}});
  auto server = HookServer::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(server.error().message, HasSubstr("fast-disk"));
  EXPECT_FALSE(IsSocket(options.socket_path));
}

TEST(HookServerStartTest, RefusesToReplaceAFileThatIsNotASocket) {
  testing::TempDir dir;
  std::ofstream(dir.File("hook.sock")) << "data";
  HookServerOptions options;
  options.socket_path = dir.File("hook.sock");
  auto server = HookServer::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(server.error().message, HasSubstr("not a socket"));
}

// ---- the binary --------------------------------------------------------------------------

class HookBinaryTest : public ::testing::Test {
 protected:
  void StartHook(std::vector<std::string> extra_args = {}) {
    std::vector<std::string> args{"--socket-dir", dir_.path(), "--name", "vfu-test"};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    hook_ = std::make_unique<testing::Subprocess>(VFU_KUBEVIRT_HOOK_BINARY, std::move(args));
    ASSERT_TRUE(hook_->Start());
    ASSERT_TRUE(hook_->WaitForOutput("vfio-user-kubevirt-hook ready", 10000ms)) << hook_->Output();
  }
  std::string socket() const { return dir_.File("vfu-test.sock"); }

  testing::TempDir dir_;
  std::unique_ptr<testing::Subprocess> hook_;
};

TEST_F(HookBinaryTest, ShutdownCallEndsTheProcessWithExitCodeZero) {
  StartHook();
  {
    // virt-launcher dials, calls and closes the connection for every call.
    LauncherClient client(socket());
    info::InfoResult result;
    ASSERT_TRUE(client.Info(&result).ok());
    EXPECT_EQ(result.name(), "vfu-test");
    v1alpha3::OnDefineDomainResult domain;
    ASSERT_TRUE(client
                    .OnDefineDomain(ReadTestdata("hugepages-numa.domain.xml"),
                                    ReadTestdata("hugepages-numa.vmi.json"), &domain)
                    .ok());
    EXPECT_EQ(domain.domainxml(), ReadTestdata("hugepages-numa.expected.xml"));
    ASSERT_TRUE(client.Shutdown().ok());
  }
  EXPECT_EQ(hook_->Wait(10000ms), 0) << hook_->Output();
  EXPECT_FALSE(IsSocket(socket()));
  EXPECT_THAT(hook_->Output(), HasSubstr("domain defined"));
  EXPECT_THAT(hook_->Output(), HasSubstr("Shutdown callback"));
}

TEST_F(HookBinaryTest, SigtermEndsTheProcessGracefully) {
  StartHook();
  hook_->Signal(SIGTERM);
  EXPECT_EQ(hook_->Wait(10000ms), 0) << hook_->Output();
  EXPECT_FALSE(IsSocket(socket()));
  EXPECT_THAT(hook_->Output(), HasSubstr("shutting down"));
}

TEST_F(HookBinaryTest, ResourceNameFlagsReachOnDefineDomain) {
  // As in the hooks.kubevirt.io/hookSidecars annotation: "args": ["--resource-name", "..."].
  StartHook({"--resource-name", "virtio-blk=example.com/fast-disk", "--resource-name",
             "sample=example.com/demo"});
  {
    LauncherClient client(socket());
    v1alpha3::OnDefineDomainResult domain;
    grpc::Status status = client.OnDefineDomain(
        ReadTestdata("plain.domain.xml"), PlainVmiRequesting("example.com/fast-disk"), &domain);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(domain.domainxml(), ReadTestdata("plain.expected.xml"));
    ASSERT_TRUE(client.Shutdown().ok());
  }
  EXPECT_EQ(hook_->Wait(10000ms), 0) << hook_->Output();
  EXPECT_THAT(hook_->Output(),
              HasSubstr("sample=example.com/demo,virtio-blk=example.com/fast-disk"));
}

TEST(HookBinaryCliTest, BadResourceNamesExitWithCodeTwoAndSayWhy) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--resource-name", "virtio-blk"}, "is not CLASS=NAME"},
      {{"--resource-name", "virtio-blk=fast-disk"}, "has no domain"},
      {{"--resource-name", "virtio-blk=kubernetes.io/disk"}, "kubernetes.io"},
      {{"--resource-name", "a=example.com/x", "--resource-name", "b=example.com/x"}, "two classes"},
      {{"--resource-prefix", "Vfio-User.io"}, "Vfio-User.io"},
      {{"--resource-name", "a=example.com/x", "b=example.com/y"}, "b=example.com/y"},
  };
  for (const auto& [args, message] : cases) {
    auto [code, output] = testing::RunToCompletion(VFU_KUBEVIRT_HOOK_BINARY, args);
    EXPECT_EQ(code, 2) << args[1] << ": " << output;
    EXPECT_THAT(output, HasSubstr(message));
  }
}

TEST(HookBinaryCliTest, VersionAndHelpWork) {
  auto [version_code, version] = testing::RunToCompletion(VFU_KUBEVIRT_HOOK_BINARY, {"--version"});
  EXPECT_EQ(version_code, 0);
  EXPECT_THAT(version, HasSubstr("vfio-user-kubevirt-hook 0."));
  auto [help_code, help] = testing::RunToCompletion(VFU_KUBEVIRT_HOOK_BINARY, {"--help"});
  EXPECT_EQ(help_code, 0);
  EXPECT_THAT(help, HasSubstr("/var/run/kubevirt-hooks"));
  EXPECT_THAT(help, HasSubstr("--resource-name CLASS=NAME"));
}

}  // namespace
}  // namespace vfu::kubevirt_hook
