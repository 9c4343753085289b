// /metrics scraped over HTTP after traffic: plugin event metrics, scrape-time device state and
// the server's per-device statistics (here from the fake control API; the integration test
// does the same with real I/O through a real server).
#include <chrono>
#include <filesystem>
#include <optional>
#include <sstream>

#include <gtest/gtest.h>

#include "deviceplugin/plugin/allocation.h"
#include "deviceplugin/plugin/device_plugin_app.h"
#include "server/version.h"
#include "tests/support/subprocess.h"
#include "tests/unit/deviceplugin/plugin/fake_control_server.h"
#include "tests/unit/deviceplugin/plugin/fake_kubelet.h"
#include "tests/unit/deviceplugin/plugin/metrics_scrape.h"

namespace vfu::testing {
namespace {

using std::chrono::seconds;
constexpr const char* kBlk = "vfio-user.io/virtio-blk";

ctl::StatsResponse SampleStats() {
  ctl::StatsResponse stats;
  ctl::DeviceStats* d = stats.add_devices();
  d->set_id("disk0");
  d->set_device_class("virtio-blk");
  ctl::OperationStats* read = d->add_operations();
  read->set_operation("read");
  read->set_requests(10);
  read->set_bytes(40960);
  read->set_errors(1);
  ctl::LatencyHistogram* h = read->mutable_latency();
  h->add_upper_bounds_seconds(0.0001);
  h->add_upper_bounds_seconds(0.001);
  h->add_bucket_counts(4);
  h->add_bucket_counts(9);
  h->set_count(10);
  h->set_sum_seconds(0.005);
  d->set_poll_calls(200);
  d->set_poll_busy_calls(50);
  d->set_poll_busy_ns(3'000'000'000);
  d->set_dma_regions(2);
  d->set_dma_bytes(1 << 20);
  d->set_client_connected(true);
  d->set_connects(1);
  d->set_protocol_errors(3);
  ctl::PollThreadStats* t = stats.add_poll_threads();
  t->set_index(0);
  t->set_busy_ns(1'500'000'000);
  t->set_idle_ns(500'000'000);
  return stats;
}

class PluginMetrics : public ::testing::Test {
 protected:
  void SetUp() override {
    control_ = std::make_unique<FakeControlServer>(dir_.File("control.sock"));
    kubelet_ = std::make_unique<FakeKubelet>(dir_.File("dp"), dir_.File("pr.sock"));
    control_->SetDevices({MakeControlDevice("disk0", "virtio-blk", dir_.File("run")),
                          MakeControlDevice("disk1", "virtio-blk", dir_.File("run"))});
    control_->SetStats(SampleStats());
    ASSERT_TRUE(control_->Start());
    ASSERT_TRUE(kubelet_->Start());
    deviceplugin::PluginConfig c;
    c.control_socket = dir_.File("control.sock");
    c.kubelet_dir = dir_.File("dp");
    c.pod_resources_socket = dir_.File("pr.sock");
    c.metrics_address = "127.0.0.1:0";
    plugin_ = std::make_unique<deviceplugin::DevicePluginApp>(c);
    Status s = plugin_->Start();
    ASSERT_TRUE(s.ok()) << s.message();
    ASSERT_GT(plugin_->metrics_port(), 0);
    ASSERT_TRUE(kubelet_->WaitForList(kBlk, [](const DeviceList& l) { return l.size() == 2; }));
    // Register returns to the plugin after the kubelet opened the stream.
    ASSERT_TRUE(WaitUntil([&] { return plugin_->registrar().registered("virtio-blk"); }));
  }

  void TearDown() override {
    plugin_.reset();
    kubelet_.reset();
    control_.reset();
  }

  std::string Scrape() {
    std::optional<std::string> body = HttpGet(plugin_->metrics_port());
    EXPECT_TRUE(body.has_value());
    return body.value_or("");
  }

  TempDir dir_;
  std::unique_ptr<FakeControlServer> control_;
  std::unique_ptr<FakeKubelet> kubelet_;
  std::unique_ptr<deviceplugin::DevicePluginApp> plugin_;
};

TEST_F(PluginMetrics, AllocationsAreCountedByResultWithTheirDuration) {
  v1beta1::ContainerAllocateResponse r;
  ASSERT_TRUE(kubelet_->Allocate(kBlk, {"disk0"}, &r).ok());
  ASSERT_FALSE(kubelet_->Allocate(kBlk, {"disk9"}, &r).ok());
  std::string m = Scrape();
  EXPECT_EQ(FamilyType(m, "vfio_user_allocations_total"), "counter");
  EXPECT_EQ(
      FindSample(m, "vfio_user_allocations_total", {{"resource", kBlk}, {"result", "success"}}), 1);
  EXPECT_EQ(FindSample(m, "vfio_user_allocations_total",
                       {{"resource", kBlk}, {"result", "unknown_device"}}),
            1);
  EXPECT_EQ(FamilyType(m, "vfio_user_allocate_duration_seconds"), "histogram");
  EXPECT_EQ(FindSample(m, "vfio_user_allocate_duration_seconds_count", {{"resource", kBlk}}), 2);
  EXPECT_EQ(FindSample(m, "vfio_user_allocate_duration_seconds_bucket",
                       {{"resource", kBlk}, {"le", "+Inf"}}),
            2);
}

TEST_F(PluginMetrics, DeviceHealthRegistrationAndKubeletConnectionAreExported) {
  std::string m = Scrape();
  EXPECT_EQ(FindSample(m, "vfio_user_devices", {{"resource", kBlk}, {"health", "healthy"}}), 2);
  EXPECT_EQ(FindSample(m, "vfio_user_devices", {{"resource", kBlk}, {"health", "unhealthy"}}), 0);
  EXPECT_EQ(FindSample(m, "vfio_user_kubelet_registrations_total",
                       {{"resource", kBlk}, {"result", "success"}}),
            1);
  EXPECT_EQ(FindSample(m, "vfio_user_kubelet_registered", {{"resource", kBlk}}), 1);
  EXPECT_EQ(FindSample(m, "vfio_user_kubelet_connected", {{"resource", kBlk}}), 1);
  EXPECT_EQ(FindSample(m, "vfio_user_server_control_connected"), 1);
  EXPECT_EQ(FindSample(m, "vfio_user_build_info", {{"component", "vfio-user-device-plugin"}}), 1);
  EXPECT_TRUE(FindSample(m, "vfio_user_build_info", {{"version", vfu::kVersion}}).has_value());

  control_->Stop();
  ASSERT_TRUE(kubelet_->WaitForList(kBlk, [](const DeviceList& l) {
    return l.size() == 2 && l[0].health() == "Unhealthy" && l[1].health() == "Unhealthy";
  }));
  m = Scrape();
  EXPECT_EQ(FindSample(m, "vfio_user_devices", {{"resource", kBlk}, {"health", "unhealthy"}}), 2);
  EXPECT_EQ(FindSample(m, "vfio_user_server_control_connected"), 0);
  EXPECT_EQ(FindSample(m, "vfio_user_server_stats_up"), 0);
}

TEST_F(PluginMetrics, ServerStatisticsAreExportedPerDeviceInBaseUnits) {
  std::string m = Scrape();
  std::map<std::string, std::string> read{
      {"device", "disk0"}, {"class", "virtio-blk"}, {"operation", "read"}};
  EXPECT_EQ(FindSample(m, "vfio_user_server_stats_up"), 1);
  EXPECT_EQ(FamilyType(m, "vfio_user_device_requests_total"), "counter");
  EXPECT_EQ(FindSample(m, "vfio_user_device_requests_total", read), 10);
  EXPECT_EQ(FindSample(m, "vfio_user_device_bytes_total", read), 40960);
  EXPECT_EQ(FindSample(m, "vfio_user_device_request_errors_total", read), 1);
  auto bucket = [&](const std::string& le) {
    auto l = read;
    l["le"] = le;
    return FindSample(m, "vfio_user_device_request_duration_seconds_bucket", l);
  };
  EXPECT_EQ(bucket("+Inf"), 10);
  EXPECT_EQ(FindSample(m, "vfio_user_device_request_duration_seconds_count", read), 10);
  EXPECT_DOUBLE_EQ(FindSample(m, "vfio_user_device_request_duration_seconds_sum", read).value_or(0),
                   0.005);
  std::map<std::string, std::string> dev{{"device", "disk0"}};
  EXPECT_DOUBLE_EQ(FindSample(m, "vfio_user_device_poll_busy_ratio", dev).value_or(-1), 0.25);
  EXPECT_DOUBLE_EQ(FindSample(m, "vfio_user_device_poll_busy_seconds_total", dev).value_or(-1), 3);
  EXPECT_EQ(FindSample(m, "vfio_user_device_client_connected", dev), 1);
  EXPECT_EQ(FindSample(m, "vfio_user_device_dma_regions", dev), 2);
  EXPECT_EQ(FindSample(m, "vfio_user_device_dma_mapped_bytes", dev), 1 << 20);
  EXPECT_EQ(FindSample(m, "vfio_user_device_protocol_errors_total", dev), 3);
  EXPECT_DOUBLE_EQ(
      FindSample(m, "vfio_user_poll_thread_busy_seconds_total", {{"thread", "0"}}).value_or(-1),
      1.5);
}

TEST_F(PluginMetrics, EveryFamilyUsesTheProjectPrefixAndCountersEndInTotal) {
  v1beta1::ContainerAllocateResponse r;
  ASSERT_TRUE(kubelet_->Allocate(kBlk, {"disk1"}, &r).ok());
  std::string m = Scrape();
  std::istringstream in(m);
  std::string line;
  int families = 0;
  while (std::getline(in, line)) {
    if (line.rfind("# TYPE ", 0) != 0) continue;
    families++;
    std::istringstream fields(line.substr(7));
    std::string name, type;
    fields >> name >> type;
    // prometheus-cpp's exposer adds its own exposer_* families to every endpoint.
    if (name.rfind("exposer_", 0) == 0) continue;
    EXPECT_EQ(name.rfind("vfio_user_", 0), 0u) << name;
    if (type == "counter") {
      EXPECT_TRUE(name.ends_with("_total")) << name;
    }
  }
  EXPECT_GE(families, 15);
  EXPECT_EQ(
      FindSample(m, "vfio_user_device_allocation_info", {{"resource", kBlk}, {"device", "disk1"}}),
      1)
      << m;
}

// Regression: when the plugin could not serve its own socket, each retry was counted as a
// failed Register call, though none reached the kubelet.
TEST(PluginMetricsSocketError, APluginSocketThatCannotBeServedIsNotCountedAsARegisterCall) {
  TempDir dir;
  FakeControlServer control(dir.File("control.sock"));
  FakeKubelet kubelet(dir.File("dp"), dir.File("pr.sock"));
  control.SetDevices({MakeControlDevice("disk0", "virtio-blk", dir.File("run"))});
  ASSERT_TRUE(control.Start());
  ASSERT_TRUE(kubelet.Start());
  // A directory where the plugin's socket goes: it can neither be removed nor bound.
  const std::string blocked = dir.File("dp") + "/" + deviceplugin::PluginSocketName("virtio-blk");
  ASSERT_TRUE(std::filesystem::create_directories(blocked + "/keep"));
  deviceplugin::PluginConfig c;
  c.control_socket = dir.File("control.sock");
  c.kubelet_dir = dir.File("dp");
  c.pod_resources_socket = dir.File("pr.sock");
  c.metrics_address = "127.0.0.1:0";
  deviceplugin::DevicePluginApp plugin(c);
  Status s = plugin.Start();
  ASSERT_TRUE(s.ok()) << s.message();
  auto sample = [&](const char* result) {
    std::optional<std::string> body = HttpGet(plugin.metrics_port());
    return body ? FindSample(*body, "vfio_user_kubelet_registrations_total",
                             {{"resource", kBlk}, {"result", result}})
                : std::nullopt;
  };
  ASSERT_TRUE(WaitUntil([&] { return sample("socket_error").value_or(0) >= 1; }))
      << "the socket error was never counted";
  EXPECT_EQ(sample("failure").value_or(0), 0) << "counted as a failed Register call";
  EXPECT_EQ(kubelet.registrations(kBlk), 0);
  plugin.Stop();
}

}  // namespace
}  // namespace vfu::testing
