// vfio-user-device-plugin and vfio-user-server as real processes: the plugin learns the
// devices from the server's control socket, registers with the kubelet test double, a real
// vfio-user client drives the device the kubelet allocated (found through the Allocate
// response's mount), /metrics then shows that traffic, the server going away and coming back
// is mirrored in health, and SIGTERM ends the plugin cleanly with an empty list.
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "server/client/client.h"
#include "server/client/virtio_blk_driver.h"
#include "tests/support/subprocess.h"
#include "tests/unit/deviceplugin/plugin/fake_kubelet.h"
#include "tests/unit/deviceplugin/plugin/metrics_scrape.h"

namespace vfu::testing {
namespace {

using std::chrono::seconds;
constexpr const char* kBlk = "vfio-user.io/virtio-blk";

auto HealthyCount(size_t count) {
  return [count](const DeviceList& list) {
    size_t healthy = 0;
    for (const auto& d : list) healthy += d.health() == "Healthy";
    return list.size() == count && healthy == count;
  };
}

auto UnhealthyCount(size_t count) {
  return [count](const DeviceList& list) {
    size_t unhealthy = 0;
    for (const auto& d : list) unhealthy += d.health() == "Unhealthy";
    return list.size() == count && unhealthy == count;
  };
}

class DevicePluginWithServer : public ::testing::Test {
 protected:
  void SetUp() override {
    kubelet_ = std::make_unique<FakeKubelet>(dir_.File("device-plugins"), dir_.File("pr.sock"));
    ASSERT_TRUE(kubelet_->Start());
    StartServer();
    plugin_ = std::make_unique<Subprocess>(
        VFU_DEVICE_PLUGIN_BINARY,
        std::vector<std::string>{"--control-socket", dir_.File("control.sock"), "--kubelet-dir",
                                 dir_.File("device-plugins"), "--pod-resources-socket",
                                 dir_.File("pr.sock"), "--metrics-address", "127.0.0.1:0"});
    ASSERT_TRUE(plugin_->Start());
    ASSERT_TRUE(plugin_->WaitForOutput("metrics: serving /metrics", seconds(20)))
        << plugin_->Output();
    // The log line names the port picked for 127.0.0.1:0.
    std::string out = plugin_->Output();
    size_t at = out.find("port=", out.find("serving /metrics"));
    ASSERT_NE(at, std::string::npos) << out;
    metrics_port_ = std::atoi(out.c_str() + at + 5);
    ASSERT_GT(metrics_port_, 0) << out;
  }

  void TearDown() override {
    plugin_.reset();
    server_.reset();
    kubelet_.reset();
  }

  void StartServer() {
    std::vector<std::string> args{"--control-socket", dir_.File("control.sock")};
    for (const char* id : {"disk0", "disk1"}) {
      // One directory per device, as the host socket root layout has it (--device does not
      // create it).
      std::filesystem::create_directories(dir_.File("run") + "/" + id);
      args.push_back("--device");
      args.push_back(std::string("virtio-blk,id=") + id + ",socket=" + dir_.File("run") + "/" + id +
                     "/vfio-user.sock,backend=ram,size=16M");
    }
    server_ = std::make_unique<Subprocess>(VFU_SERVER_BINARY, args);
    ASSERT_TRUE(server_->Start());
    ASSERT_TRUE(
        WaitUntil([&] { return std::filesystem::exists(dir_.File("control.sock")); }, seconds(20)))
        << server_->Output();
  }

  TempDir dir_;
  std::unique_ptr<FakeKubelet> kubelet_;
  std::unique_ptr<Subprocess> server_;
  std::unique_ptr<Subprocess> plugin_;
  int metrics_port_ = 0;
};

TEST_F(DevicePluginWithServer, AllocatedDeviceServesARealClientAndItsTrafficShowsInMetrics) {
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, HealthyCount(2), seconds(20))) << plugin_->Output();
  v1beta1::ContainerAllocateResponse allocation;
  grpc::Status s = kubelet_->Allocate(kBlk, {"disk1"}, &allocation);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(allocation.mounts_size(), 1);
  EXPECT_EQ(allocation.mounts(0).container_path(), "/var/run/vfio-user/virtio-blk/0");
  EXPECT_EQ(allocation.envs().at("VFIO_USER_VIRTIO_BLK_SOCKETS"),
            "/var/run/vfio-user/virtio-blk/0/vfio-user.sock");

  // What the container would see at /var/run/vfio-user/virtio-blk/0 is the mounted host dir.
  std::string socket = allocation.mounts(0).host_path() + "/vfio-user.sock";
  auto client = client::Client::Connect(socket);
  ASSERT_TRUE(client.ok()) << client.error().message;
  auto driver = client::VirtioBlkDriver::Create(client->get());
  ASSERT_TRUE(driver.ok()) << driver.error().message;
  client::VirtioBlkDriver& blk = **driver;
  EXPECT_EQ(blk.capacity_sectors(), 16u * 1024 * 1024 / 512);
  constexpr uint32_t kBytes = 4096;
  constexpr int kRequests = 8;
  for (int i = 0; i < kRequests; ++i) {
    std::memset(blk.slot_buffer(0, 0), 0x40 + i, kBytes);
    ASSERT_TRUE(blk.Write(0, 0, static_cast<uint64_t>(i) * 8, kBytes, i).ok());
    auto done = blk.WaitFor(0, 1, seconds(10));
    ASSERT_TRUE(done.ok() && (*done)[0].status == 0);
  }
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(blk.Read(0, 0, static_cast<uint64_t>(i) * 8, kBytes, 100 + i).ok());
    auto done = blk.WaitFor(0, 1, seconds(10));
    ASSERT_TRUE(done.ok() && (*done)[0].status == 0);
    EXPECT_EQ(blk.slot_buffer(0, 0)[kBytes - 1], 0x40 + i);
  }

  std::optional<std::string> metrics = HttpGet(metrics_port_);
  ASSERT_TRUE(metrics.has_value());
  const std::string& m = *metrics;
  std::map<std::string, std::string> dev{{"device", "disk1"}, {"class", "virtio-blk"}};
  auto op = [&](const char* name) {
    auto l = dev;
    l["operation"] = name;
    return l;
  };
  EXPECT_EQ(FindSample(m, "vfio_user_server_stats_up"), 1) << m;
  EXPECT_GE(FindSample(m, "vfio_user_device_requests_total", op("write")).value_or(0), kRequests)
      << m;
  EXPECT_GE(FindSample(m, "vfio_user_device_requests_total", op("read")).value_or(0), kRequests);
  EXPECT_GE(FindSample(m, "vfio_user_device_bytes_total", op("read")).value_or(0),
            kRequests * kBytes);
  EXPECT_GE(
      FindSample(m, "vfio_user_device_request_duration_seconds_count", op("read")).value_or(0),
      kRequests);
  EXPECT_EQ(FindSample(m, "vfio_user_device_client_connected", dev), 1);
  EXPECT_GE(FindSample(m, "vfio_user_device_dma_regions", dev).value_or(0), 1);
  EXPECT_GT(FindSample(m, "vfio_user_device_poll_busy_ratio", dev).value_or(0), 0);
  EXPECT_EQ(FindSample(m, "vfio_user_device_requests_total",
                       {{"device", "disk0"}, {"operation", "write"}})
                .value_or(0),
            0);
  EXPECT_EQ(
      FindSample(m, "vfio_user_allocations_total", {{"resource", kBlk}, {"result", "success"}}), 1);
  EXPECT_EQ(FindSample(m, "vfio_user_devices", {{"resource", kBlk}, {"health", "healthy"}}), 2);
}

TEST_F(DevicePluginWithServer, ServerRestartIsMirroredInHealthWithTheSameIds) {
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, HealthyCount(2), seconds(20))) << plugin_->Output();
  server_->Signal(SIGTERM);
  ASSERT_TRUE(server_->Wait(seconds(20)).has_value());
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, UnhealthyCount(2), seconds(20))) << plugin_->Output();
  StartServer();
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, HealthyCount(2), seconds(20))) << plugin_->Output();
  DeviceList list = kubelet_->latest(kBlk);
  EXPECT_EQ(list[0].id(), "disk0");
  EXPECT_EQ(list[1].id(), "disk1");
  EXPECT_EQ(kubelet_->registrations(kBlk), 1);
}

TEST_F(DevicePluginWithServer, HungServerTurnsDevicesUnhealthyAndRecoversWhenItRunsAgain) {
  // SIGSTOP: the server's sockets stay open but nothing answers; only keepalive notices.
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, HealthyCount(2), seconds(20))) << plugin_->Output();
  server_->Signal(SIGSTOP);
  bool unhealthy = kubelet_->WaitForList(kBlk, UnhealthyCount(2), seconds(20));
  server_->Signal(SIGCONT);
  ASSERT_TRUE(unhealthy) << plugin_->Output();
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, HealthyCount(2), seconds(20))) << plugin_->Output();
  EXPECT_EQ(kubelet_->registrations(kBlk), 1);
}

TEST_F(DevicePluginWithServer, SigtermSendsAnEmptyListAndExitsCleanly) {
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, HealthyCount(2), seconds(20))) << plugin_->Output();
  plugin_->Signal(SIGTERM);
  std::optional<int> code = plugin_->Wait(seconds(20));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0) << plugin_->Output();
  ASSERT_TRUE(kubelet_->WaitForStreamEnd(kBlk, seconds(10)));
  std::vector<DeviceList> history = kubelet_->history(kBlk);
  ASSERT_FALSE(history.empty());
  EXPECT_TRUE(history.back().empty());
  EXPECT_FALSE(std::filesystem::exists(dir_.File("device-plugins") + "/vfio-user-virtio-blk.sock"));
}

TEST(DevicePluginBinary, HelpAndVersion) {
  auto [code, out] = RunToCompletion(VFU_DEVICE_PLUGIN_BINARY, {"--help"});
  EXPECT_EQ(code, 0);
  for (const char* flag : {"--control-socket", "--kubelet-dir", "--pod-resources-socket",
                           "--resource-prefix", "--resource-name", "--metrics-address",
                           "--pre-start-container", "--log-format", "--log-level"}) {
    EXPECT_NE(out.find(flag), std::string::npos) << flag;
  }
  auto [vcode, vout] = RunToCompletion(VFU_DEVICE_PLUGIN_BINARY, {"--version"});
  EXPECT_EQ(vcode, 0);
  EXPECT_NE(vout.find("vfio-user-device-plugin 0."), std::string::npos) << vout;
  auto [bad, bout] =
      RunToCompletion(VFU_DEVICE_PLUGIN_BINARY, {"--resource-prefix", "kubernetes.io"});
  EXPECT_EQ(bad, 2);
  EXPECT_NE(bout.find("kubernetes.io"), std::string::npos) << bout;
}

}  // namespace
}  // namespace vfu::testing
