// virtio-blk health and counters: repeated backend failures make the device unhealthy with a
// reason and one success makes it healthy again; per-operation counters and latency histograms
// count what the driver did. Driven over the socket by the userspace driver.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>

#include "server/block/backend.h"
#include "server/client/client.h"
#include "server/client/virtio_blk_driver.h"
#include "server/devices/virtio_blk.h"
#include "server/virtio/virtio_pci.h"
#include "tests/support/server_thread.h"

namespace vfu::testing {
namespace {

using std::chrono::seconds;

// A null backend whose requests fail with EIO while `failing` is set.
class SwitchableBackend : public block::Backend {
 public:
  explicit SwitchableBackend(std::shared_ptr<std::atomic<bool>> failing)
      : failing_(std::move(failing)) {}
  uint64_t size() const override { return 1 << 20; }
  bool read_only() const override { return false; }
  std::string description() const override { return "switchable"; }
  Status Submit(const block::Request& request) override {
    done_.push_back({request.tag, failing_->load() ? -EIO : 0});
    return Status::Ok();
  }
  size_t Reap(std::vector<block::Completion>* out) override {
    size_t n = done_.size();
    out->insert(out->end(), done_.begin(), done_.end());
    done_.clear();
    return n;
  }
  size_t inflight() const override { return done_.size(); }
  int event_fd() const override { return -1; }

 private:
  std::shared_ptr<std::atomic<bool>> failing_;
  std::vector<block::Completion> done_;
};

class VirtioBlkHealth : public ::testing::Test {
 protected:
  void SetUp() override {
    failing_ = std::make_shared<std::atomic<bool>>(false);
    auto blk = std::make_unique<devices::VirtioBlkDevice>(
        std::make_unique<SwitchableBackend>(failing_), devices::VirtioBlkOptions{});
    auto pci = virtio::VirtioPciDevice::Create(std::move(blk));
    ASSERT_TRUE(pci.ok());
    socket_ = server_.AddDeviceObject("disk", std::move(*pci));
    server_.Start();
    auto c = client::Client::Connect(socket_);
    ASSERT_TRUE(c.ok()) << c.error().message;
    client_ = std::move(*c);
    auto d = client::VirtioBlkDriver::Create(client_.get(), {});
    ASSERT_TRUE(d.ok()) << d.error().message;
    driver_ = std::move(*d);
  }

  // Writes one sector and returns the request's virtio status.
  uint8_t WriteOne() {
    EXPECT_TRUE(driver_->Write(0, 0, 0, 512, 1).ok());
    auto done = driver_->WaitFor(0, 1, seconds(10));
    EXPECT_TRUE(done.ok() && done->size() == 1);
    return done.ok() && !done->empty() ? (*done)[0].status : 0xff;
  }

  std::string HealthError() {
    std::string error;
    server_.RunOnReactor([&] { error = server_.device(0)->health_error(); });
    return error;
  }

  DeviceCounters Counters() {
    DeviceCounters c;
    server_.RunOnReactor([&] { server_.device(0)->CollectCounters(&c); });
    return c;
  }

  ServerThread server_;
  std::shared_ptr<std::atomic<bool>> failing_;
  std::string socket_;
  std::unique_ptr<client::Client> client_;
  std::unique_ptr<client::VirtioBlkDriver> driver_;
};

TEST_F(VirtioBlkHealth, RepeatedBackendErrorsMakeTheDeviceUnhealthyAndOneSuccessHeals) {
  EXPECT_EQ(WriteOne(), devices::kBlkStatusOk);
  EXPECT_EQ(HealthError(), "");
  failing_->store(true);
  for (uint64_t i = 0; i + 1 < devices::kBlkUnhealthyAfterConsecutiveErrors; ++i) {
    EXPECT_EQ(WriteOne(), devices::kBlkStatusIoErr);
  }
  EXPECT_EQ(HealthError(), "") << "one error short of the threshold";
  EXPECT_EQ(WriteOne(), devices::kBlkStatusIoErr);
  std::string reason = HealthError();
  EXPECT_NE(reason.find("repeated I/O errors"), std::string::npos) << reason;
  EXPECT_NE(reason.find("Input/output error"), std::string::npos) << reason;

  failing_->store(false);
  EXPECT_EQ(WriteOne(), devices::kBlkStatusOk);
  EXPECT_EQ(HealthError(), "");
}

TEST_F(VirtioBlkHealth, CountersCountRequestsBytesErrorsAndLatencyPerOperation) {
  for (int i = 0; i < 3; ++i) EXPECT_EQ(WriteOne(), devices::kBlkStatusOk);
  failing_->store(true);
  EXPECT_EQ(WriteOne(), devices::kBlkStatusIoErr);
  failing_->store(false);
  ASSERT_TRUE(driver_->Read(0, 0, 0, 1024, 7).ok());
  ASSERT_TRUE(driver_->WaitFor(0, 1, seconds(10)).ok());
  ASSERT_TRUE(driver_->Flush(0, 0, 8).ok());
  ASSERT_TRUE(driver_->WaitFor(0, 1, seconds(10)).ok());

  DeviceCounters c = Counters();
  auto op = [&](const std::string& name) -> const OperationCounters& {
    for (const auto& o : c.operations) {
      if (o.name == name) return o;
    }
    static OperationCounters missing;
    ADD_FAILURE() << "no counters for " << name;
    return missing;
  };
  EXPECT_EQ(op("write").requests, 4u);
  EXPECT_EQ(op("write").errors, 1u);
  EXPECT_EQ(op("write").bytes, 3u * 512);  // failed requests move no bytes
  EXPECT_EQ(op("write").latency.count(), 4u);
  EXPECT_EQ(op("read").requests, 1u);
  EXPECT_EQ(op("read").bytes, 1024u);
  EXPECT_EQ(op("flush").requests, 1u);
  EXPECT_EQ(op("discard").requests, 0u);
  EXPECT_GT(c.interrupts, 0u);
}

TEST_F(VirtioBlkHealth, MalformedRequestsCountAsErrorsButDoNotMakeTheDeviceUnhealthy) {
  // A request beyond the disk's end is the driver's fault, not the backend's.
  uint64_t past_end = driver_->capacity_sectors();
  for (uint64_t i = 0; i < 2 * devices::kBlkUnhealthyAfterConsecutiveErrors; ++i) {
    ASSERT_TRUE(driver_->Write(0, 0, past_end, 512, i).ok());
    auto done = driver_->WaitFor(0, 1, seconds(10));
    ASSERT_TRUE(done.ok());
    EXPECT_EQ((*done)[0].status, devices::kBlkStatusIoErr);
  }
  EXPECT_EQ(HealthError(), "");
  DeviceCounters c = Counters();
  EXPECT_EQ(c.operations[1].name, "write");
  EXPECT_EQ(c.operations[1].errors, 2 * devices::kBlkUnhealthyAfterConsecutiveErrors);
}

}  // namespace
}  // namespace vfu::testing
