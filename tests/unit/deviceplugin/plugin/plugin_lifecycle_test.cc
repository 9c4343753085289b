// The device plugin in-process against a kubelet test double (FakeKubelet, documented kubelet
// behaviour) and a fake vfio-user-server control API: registration, health both ways, server
// loss and return, kubelet restart, plugin restart, Allocate, preferred allocation,
// PreStartContainer, clean shutdown, and resource names overridden per class.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <thread>

#include <gtest/gtest.h>

#include "deviceplugin/plugin/device_plugin_app.h"
#include "tests/support/subprocess.h"
#include "tests/unit/deviceplugin/plugin/fake_control_server.h"
#include "tests/unit/deviceplugin/plugin/fake_kubelet.h"

namespace vfu::testing {
namespace {

using deviceplugin::DevicePluginApp;
using deviceplugin::PluginConfig;
using std::chrono::seconds;

constexpr const char* kBlk = "vfio-user.io/virtio-blk";
constexpr const char* kSample = "vfio-user.io/sample";
// A pool's spec.resourceName for virtio-blk (--resource-name virtio-blk=example.com/fast-disk).
constexpr const char* kFastDisk = "example.com/fast-disk";

std::string HealthOf(const DeviceList& list, const std::string& id) {
  for (const auto& d : list) {
    if (d.id() == id) return d.health();
  }
  return "absent";
}

std::vector<std::string> Ids(const DeviceList& list) {
  std::vector<std::string> ids;
  for (const auto& d : list) ids.push_back(d.id());
  return ids;
}

auto AllHealthy(size_t count) {
  return [count](const DeviceList& list) {
    if (list.size() != count) return false;
    for (const auto& d : list) {
      if (d.health() != "Healthy") return false;
    }
    return true;
  };
}

auto AllUnhealthy(size_t count) {
  return [count](const DeviceList& list) {
    if (list.size() != count) return false;
    for (const auto& d : list) {
      if (d.health() != "Unhealthy") return false;
    }
    return true;
  };
}

// A unix socket file at `path`, like a running vfio-user device leaves (nobody connects to it).
class ListeningSocket {
 public:
  explicit ListeningSocket(const std::string& path) {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    ok_ =
        ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 && ::listen(fd_, 1) == 0;
  }
  ~ListeningSocket() { ::close(fd_); }
  bool ok() const { return ok_; }

 private:
  int fd_ = -1;
  bool ok_ = false;
};

class PluginLifecycle : public ::testing::Test {
 protected:
  void SetUp() override {
    plugin_dir_ = dir_.File("device-plugins");
    socket_root_ = dir_.File("run");
    control_ = std::make_unique<FakeControlServer>(dir_.File("control.sock"));
    kubelet_ = std::make_unique<FakeKubelet>(plugin_dir_, dir_.File("pod-resources.sock"));
    // disk0/disk1 on NUMA node 0 (poll threads 0 and 1), disk2 on node 1; one sample device.
    control_->SetDevices({MakeControlDevice("disk0", "virtio-blk", socket_root_, 0, 0),
                          MakeControlDevice("disk1", "virtio-blk", socket_root_, 0, 1),
                          MakeControlDevice("disk2", "virtio-blk", socket_root_, 1, 0),
                          MakeControlDevice("s0", "sample", socket_root_, 0, 0)});
    ASSERT_TRUE(control_->Start());
    ASSERT_TRUE(kubelet_->Start());
  }

  void TearDown() override {
    plugin_.reset();
    kubelet_.reset();
    control_.reset();
  }

  PluginConfig Config() const {
    PluginConfig c;
    c.control_socket = dir_.File("control.sock");
    c.kubelet_dir = plugin_dir_;
    c.pod_resources_socket = dir_.File("pod-resources.sock");
    c.metrics_address = "";
    c.socket_check_interval = std::chrono::milliseconds(500);
    c.max_register_backoff = std::chrono::milliseconds(500);
    return c;
  }

  void StartPlugin(PluginConfig config) {
    plugin_ = std::make_unique<DevicePluginApp>(config);
    Status s = plugin_->Start();
    ASSERT_TRUE(s.ok()) << s.message();
  }
  void StartPlugin() { StartPlugin(Config()); }

  void StartPluginAndWaitForDevices() {
    StartPlugin();
    ASSERT_TRUE(kubelet_->WaitForList(kBlk, AllHealthy(3)));
  }

  TempDir dir_;
  std::string plugin_dir_;
  std::string socket_root_;
  std::unique_ptr<FakeControlServer> control_;
  std::unique_ptr<FakeKubelet> kubelet_;
  std::unique_ptr<DevicePluginApp> plugin_;
};

TEST_F(PluginLifecycle, RegistersOneResourcePerDeviceClassAsTheKubeletExpects) {
  StartPlugin();
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, AllHealthy(3)));
  ASSERT_TRUE(kubelet_->WaitForList(kSample, AllHealthy(1)));
  EXPECT_TRUE(kubelet_->rejections().empty());
  v1beta1::RegisterRequest r = kubelet_->last_request(kBlk);
  EXPECT_EQ(r.version(), "v1beta1");
  EXPECT_EQ(r.endpoint(), "vfio-user-virtio-blk.sock");
  EXPECT_TRUE(r.options().get_preferred_allocation_available());
  EXPECT_FALSE(r.options().pre_start_required());
  EXPECT_EQ(kubelet_->last_request(kSample).endpoint(), "vfio-user-sample.sock");
  EXPECT_TRUE(kubelet_->options(kBlk).get_preferred_allocation_available());
  DeviceList blk = kubelet_->latest(kBlk);
  EXPECT_EQ(Ids(blk), (std::vector<std::string>{"disk0", "disk1", "disk2"}));
  ASSERT_EQ(blk[2].topology().nodes_size(), 1);
  EXPECT_EQ(blk[2].topology().nodes(0).id(), 1);
  EXPECT_EQ(kubelet_->registrations(kBlk), 1);
}

TEST_F(PluginLifecycle, ServerHealthChangesReachTheKubeletBothWays) {
  StartPluginAndWaitForDevices();
  control_->SetHealth("disk1", false, "backend unreadable");
  ASSERT_TRUE(kubelet_->WaitForList(
      kBlk, [](const DeviceList& l) { return HealthOf(l, "disk1") == "Unhealthy"; }));
  EXPECT_EQ(HealthOf(kubelet_->latest(kBlk), "disk0"), "Healthy");
  control_->SetHealth("disk1", true);
  EXPECT_TRUE(kubelet_->WaitForList(kBlk, AllHealthy(3)));
}

TEST_F(PluginLifecycle, ServerLossMakesEveryDeviceUnhealthyAndItsReturnRecoversThem) {
  StartPluginAndWaitForDevices();
  control_->Stop();
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, AllUnhealthy(3)));
  ASSERT_TRUE(kubelet_->WaitForList(kSample, AllUnhealthy(1)));
  EXPECT_EQ(Ids(kubelet_->latest(kBlk)), (std::vector<std::string>{"disk0", "disk1", "disk2"}));
  ASSERT_TRUE(control_->Start());
  EXPECT_TRUE(kubelet_->WaitForList(kBlk, AllHealthy(3)));
  EXPECT_TRUE(kubelet_->WaitForList(kSample, AllHealthy(1)));
  // The plugin stayed registered: the kubelet saw the same stream recover.
  EXPECT_EQ(kubelet_->registrations(kBlk), 1);
}

TEST_F(PluginLifecycle, DevicesRemovedByTheServerLeaveTheListAndNewOnesJoin) {
  StartPluginAndWaitForDevices();
  control_->SetDevices({MakeControlDevice("disk0", "virtio-blk", socket_root_),
                        MakeControlDevice("disk3", "virtio-blk", socket_root_)});
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, [](const DeviceList& l) {
    return Ids(l) == std::vector<std::string>{"disk0", "disk3"};
  }));
  // The sample class lost its only device: an empty list, not a vanished plugin.
  EXPECT_TRUE(kubelet_->WaitForList(kSample, [](const DeviceList& l) { return l.empty(); }));
}

TEST_F(PluginLifecycle, KubeletRestartIsFollowedByRegistrationOnAFreshSocket) {
  StartPluginAndWaitForDevices();
  std::string socket = plugin_dir_ + "/vfio-user-virtio-blk.sock";
  struct stat before {};
  ASSERT_EQ(::stat(socket.c_str(), &before), 0);
  auto restarted = std::chrono::steady_clock::now();
  kubelet_->Restart();
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, AllHealthy(3)));
  auto took = std::chrono::steady_clock::now() - restarted;
  RecordProperty(
      "reregistration_ms",
      std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
  EXPECT_EQ(kubelet_->registrations(kBlk), 2);
  EXPECT_TRUE(kubelet_->WaitForList(kSample, AllHealthy(1)));
  EXPECT_EQ(kubelet_->registrations(kSample), 2);
  struct stat after {};
  ASSERT_EQ(::stat(socket.c_str(), &after), 0);
  EXPECT_TRUE(S_ISSOCK(after.st_mode));
  // Register returns to the plugin after the kubelet opened the stream.
  EXPECT_TRUE(WaitUntil([&] { return plugin_->registrar().registered("virtio-blk"); }));
  // Allocation works against the new kubelet.
  v1beta1::ContainerAllocateResponse response;
  EXPECT_TRUE(kubelet_->Allocate(kBlk, {"disk0"}, &response).ok());
}

TEST_F(PluginLifecycle, RepeatedKubeletRestartsEachEndRegistered) {
  StartPluginAndWaitForDevices();
  for (int i = 0; i < 3; ++i) kubelet_->Restart();
  // However the restarts interleave with the plugin's reactions, the last kubelet ends up with
  // the resource registered and its list streaming.
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, AllHealthy(3)));
  ASSERT_TRUE(kubelet_->WaitForList(kSample, AllHealthy(1)));
  EXPECT_GE(kubelet_->registrations(kBlk), 2);
  EXPECT_TRUE(kubelet_->stream_open(kBlk));
  v1beta1::ContainerAllocateResponse response;
  EXPECT_TRUE(kubelet_->Allocate(kBlk, {"disk1"}, &response).ok());
}

TEST_F(PluginLifecycle, DeletingOnlyThePluginSocketTriggersReRegistration) {
  StartPluginAndWaitForDevices();
  ASSERT_EQ(::unlink((plugin_dir_ + "/vfio-user-virtio-blk.sock").c_str()), 0);
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, AllHealthy(3)));
  // Wait for the second registration (the list above may still be the first stream's).
  EXPECT_TRUE(WaitUntil([&] { return kubelet_->registrations(kBlk) >= 2; }));
  EXPECT_EQ(kubelet_->registrations(kBlk), 2);
  EXPECT_EQ(kubelet_->registrations(kSample), 1);
  EXPECT_TRUE(std::filesystem::exists(plugin_dir_ + "/vfio-user-virtio-blk.sock"));
}

TEST_F(PluginLifecycle, PluginStartedBeforeTheKubeletRegistersOnceItListens) {
  kubelet_->Stop();
  kubelet_ = std::make_unique<FakeKubelet>(plugin_dir_, dir_.File("pod-resources.sock"));
  StartPlugin();
  // Give the plugin something to fail at: no kubelet.sock yet.
  ASSERT_TRUE(WaitUntil(
      [&] { return std::filesystem::exists(plugin_dir_ + "/vfio-user-virtio-blk.sock"); }));
  EXPECT_FALSE(plugin_->registrar().registered("virtio-blk"));
  ASSERT_TRUE(kubelet_->Start());
  EXPECT_TRUE(kubelet_->WaitForList(kBlk, AllHealthy(3)));
  EXPECT_TRUE(kubelet_->rejections().empty());
}

TEST_F(PluginLifecycle, PluginRestartKeepsDeviceIdsAndRebuildsInUseFromPodResources) {
  StartPluginAndWaitForDevices();
  v1beta1::ContainerAllocateResponse response;
  ASSERT_TRUE(kubelet_->Allocate(kBlk, {"disk1"}, &response, "vm-a", "compute").ok());
  DeviceList before = kubelet_->latest(kBlk);
  plugin_.reset();  // a plugin that goes away (its pod is replaced)
  ASSERT_TRUE(kubelet_->WaitForStreamEnd(kBlk, seconds(10)));

  StartPlugin();
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, AllHealthy(3)));
  EXPECT_EQ(Ids(kubelet_->latest(kBlk)), Ids(before));
  // "In use" comes from the kubelet's pod-resources List, not from the old process.
  ASSERT_TRUE(WaitUntil([&] { return plugin_->in_use().rebuilt_from_kubelet(); }));
  deviceplugin::InUseMap in_use = plugin_->in_use().Snapshot();
  ASSERT_EQ(in_use[kBlk].count("disk1"), 1u);
  EXPECT_EQ(in_use[kBlk]["disk1"].pod, "vm-a");
  EXPECT_EQ(in_use[kBlk]["disk1"].container, "compute");
  EXPECT_EQ(in_use[kBlk].size(), 1u);
}

TEST_F(PluginLifecycle, AllocateReturnsDirectoryMountsAndSocketEnvsInSortedIdOrder) {
  StartPluginAndWaitForDevices();
  v1beta1::ContainerAllocateResponse r;
  grpc::Status s = kubelet_->Allocate(kBlk, {"disk2", "disk0"}, &r);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(r.mounts_size(), 2);
  EXPECT_EQ(r.mounts(0).host_path(), socket_root_ + "/disk0");
  EXPECT_EQ(r.mounts(0).container_path(), "/var/run/vfio-user/virtio-blk/0");
  EXPECT_EQ(r.mounts(1).host_path(), socket_root_ + "/disk2");
  EXPECT_EQ(r.mounts(1).container_path(), "/var/run/vfio-user/virtio-blk/1");
  EXPECT_EQ(r.envs().at("VFIO_USER_VIRTIO_BLK_SOCKETS"),
            "/var/run/vfio-user/virtio-blk/0/vfio-user.sock,"
            "/var/run/vfio-user/virtio-blk/1/vfio-user.sock");
  EXPECT_EQ(r.envs().at("VFIO_USER_VIRTIO_BLK_DEVICE_IDS"), "disk0,disk2");
}

TEST_F(PluginLifecycle, AllocateOfUnknownOrUnhealthyDevicesFailsWithAClearError) {
  StartPluginAndWaitForDevices();
  v1beta1::ContainerAllocateResponse r;
  grpc::Status unknown = kubelet_->Allocate(kBlk, {"disk7"}, &r);
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(unknown.error_message().find("disk7"), std::string::npos);
  grpc::Status wrong_class = kubelet_->Allocate(kBlk, {"s0"}, &r);
  EXPECT_EQ(wrong_class.error_code(), grpc::StatusCode::NOT_FOUND);

  control_->SetHealth("disk1", false, "backend unreadable");
  ASSERT_TRUE(kubelet_->WaitForList(
      kBlk, [](const DeviceList& l) { return HealthOf(l, "disk1") == "Unhealthy"; }));
  grpc::Status unhealthy = kubelet_->Allocate(kBlk, {"disk0", "disk1"}, &r);
  EXPECT_EQ(unhealthy.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(unhealthy.error_message().find("backend unreadable"), std::string::npos)
      << unhealthy.error_message();
}

TEST_F(PluginLifecycle, PreferredAllocationKeepsTheContainerOnOneNumaNode) {
  StartPluginAndWaitForDevices();
  std::vector<std::string> picked;
  ASSERT_TRUE(
      kubelet_->GetPreferredAllocation(kBlk, {"disk0", "disk1", "disk2"}, {}, 2, &picked).ok());
  EXPECT_EQ(picked, (std::vector<std::string>{"disk0", "disk1"}));
  ASSERT_TRUE(
      kubelet_->GetPreferredAllocation(kBlk, {"disk0", "disk1", "disk2"}, {}, 1, &picked).ok());
  EXPECT_EQ(picked, (std::vector<std::string>{"disk2"}));  // best fit: node 1 has exactly one
}

TEST_F(PluginLifecycle, PreStartContainerIsOffByDefaultAndChecksTheSocketWhenOn) {
  PluginConfig config = Config();
  config.pre_start_container = true;
  StartPlugin(config);
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, AllHealthy(3)));
  EXPECT_TRUE(kubelet_->last_request(kBlk).options().pre_start_required());
  EXPECT_TRUE(kubelet_->options(kBlk).pre_start_required());
  grpc::Status missing = kubelet_->PreStartContainer(kBlk, {"disk0"});
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(missing.error_message().find("no socket"), std::string::npos);
  ListeningSocket socket(socket_root_ + "/disk0/vfio-user.sock");
  ASSERT_TRUE(socket.ok());
  EXPECT_TRUE(kubelet_->PreStartContainer(kBlk, {"disk0"}).ok());
  EXPECT_EQ(kubelet_->PreStartContainer(kBlk, {"nope"}).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(PluginLifecycle, CleanShutdownSendsAnEmptyListAndRemovesThePluginSockets) {
  StartPluginAndWaitForDevices();
  // Both resources' ListAndWatch streams must be open before the stop: otherwise the plugin
  // can stop before the kubelet opened the second one, and there is no stream for its empty
  // list (a cold CI run under load saw exactly that).
  ASSERT_TRUE(kubelet_->WaitForList(kSample, [](const DeviceList& l) { return !l.empty(); }));
  plugin_->Stop();
  ASSERT_TRUE(kubelet_->WaitForStreamEnd(kBlk, seconds(10)));
  std::vector<DeviceList> history = kubelet_->history(kBlk);
  ASSERT_FALSE(history.empty());
  EXPECT_TRUE(history.back().empty());
  EXPECT_TRUE(kubelet_->WaitForList(kSample, [](const DeviceList& l) { return l.empty(); }));
  EXPECT_FALSE(std::filesystem::exists(plugin_dir_ + "/vfio-user-virtio-blk.sock"));
  EXPECT_FALSE(std::filesystem::exists(plugin_dir_ + "/vfio-user-sample.sock"));
  EXPECT_TRUE(std::filesystem::exists(plugin_dir_ + "/kubelet.sock"));
}

TEST_F(PluginLifecycle, InvalidResourcePrefixIsRefusedAtStart) {
  PluginConfig config = Config();
  config.resource_prefix = "kubernetes.io";
  DevicePluginApp app(config);
  Status s = app.Start();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("kubernetes.io"), std::string::npos);
}

TEST_F(PluginLifecycle, ResourceNameOverrideIsRegisteredForItsClassKeepingTheClassLayout) {
  PluginConfig config = Config();
  config.resource_names = {{"virtio-blk", kFastDisk}};
  StartPlugin(config);
  ASSERT_TRUE(kubelet_->WaitForList(kFastDisk, AllHealthy(3)));
  // Classes without an override keep <prefix>/<class>.
  ASSERT_TRUE(kubelet_->WaitForList(kSample, AllHealthy(1)));
  EXPECT_TRUE(kubelet_->rejections().empty());
  EXPECT_EQ(kubelet_->last_request(kFastDisk).endpoint(), "vfio-user-virtio-blk.sock");
  EXPECT_EQ(kubelet_->registrations(kFastDisk), 1);
  EXPECT_EQ(kubelet_->registrations(kBlk), 0);
  EXPECT_EQ(Ids(kubelet_->latest(kFastDisk)),
            (std::vector<std::string>{"disk0", "disk1", "disk2"}));
  EXPECT_TRUE(WaitUntil([&] { return plugin_->registrar().registered("virtio-blk"); }));

  // The container layout stays keyed by class: the KubeVirt hook finds the sockets there.
  v1beta1::ContainerAllocateResponse r;
  grpc::Status s = kubelet_->Allocate(kFastDisk, {"disk1"}, &r);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(r.mounts_size(), 1);
  EXPECT_EQ(r.mounts(0).container_path(), "/var/run/vfio-user/virtio-blk/0");
  EXPECT_EQ(r.envs().at("VFIO_USER_VIRTIO_BLK_SOCKETS"),
            "/var/run/vfio-user/virtio-blk/0/vfio-user.sock");
  EXPECT_EQ(plugin_->in_use().CountInUse(kFastDisk), 1u);
}

TEST_F(PluginLifecycle, InUseIsRebuiltFromPodResourcesUnderTheOverriddenName) {
  // As restored from the kubelet's checkpoint: one device under the pool's name, and one under
  // the default name of the class, which this plugin does not register.
  kubelet_->AddPodResources("vm-fast", "default", "compute", kFastDisk, {"disk2"});
  kubelet_->AddPodResources("vm-old", "default", "compute", kBlk, {"disk0"});
  PluginConfig config = Config();
  config.resource_names = {{"virtio-blk", kFastDisk}};
  StartPlugin(config);
  ASSERT_TRUE(kubelet_->WaitForList(kFastDisk, AllHealthy(3)));
  ASSERT_TRUE(WaitUntil([&] { return plugin_->in_use().rebuilt_from_kubelet(); }));
  deviceplugin::InUseMap in_use = plugin_->in_use().Snapshot();
  ASSERT_EQ(in_use[kFastDisk].count("disk2"), 1u);
  EXPECT_EQ(in_use[kFastDisk]["disk2"].pod, "vm-fast");
  EXPECT_EQ(in_use[kFastDisk].size(), 1u);
  EXPECT_EQ(in_use.count(kBlk), 0u);
}

TEST_F(PluginLifecycle, InvalidResourceNameOverrideIsRefusedAtStart) {
  PluginConfig config = Config();
  config.resource_names = {{"virtio-blk", "node.kubernetes.io/disk"}};
  DevicePluginApp app(config);
  Status s = app.Start();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("node.kubernetes.io/disk"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace vfu::testing
