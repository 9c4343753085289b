// virtio-blk when the backend holds a request past the in-flight timeout of a reset: the device
// goes on without it, keeps the guest memory it targets mapped until it finishes, and drops its
// completion instead of writing it into the next driver's rings.
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "server/block/backend.h"
#include "server/client/client.h"
#include "server/client/virtio_blk_driver.h"
#include "server/common/unique_fd.h"
#include "server/devices/virtio_blk.h"
#include "server/virtio/virtio_pci.h"
#include "tests/support/fd_count.h"
#include "tests/support/server_thread.h"

namespace vfu::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// Holds every request until the test releases it; then writes 0xab into its buffers (the I/O
// landing in guest memory) and completes it. Thread-safe: the reactor submits and reaps, the
// test releases.
class HoldingBackend : public block::Backend {
 public:
  struct Shared {
    std::mutex mutex;
    std::vector<block::Request> held;
    std::vector<block::Completion> done;
    bool hold = true;
    UniqueFd event;  // written when requests complete, if the backend announces them
  };
  explicit HoldingBackend(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {}
  uint64_t size() const override { return 1 << 20; }
  bool read_only() const override { return false; }
  std::string description() const override { return "holding"; }
  Status Submit(const block::Request& request) override {
    std::lock_guard lock(shared_->mutex);
    if (shared_->hold) {
      shared_->held.push_back(request);
    } else {
      shared_->done.push_back({request.tag, 0});
    }
    return Status::Ok();
  }
  size_t Reap(std::vector<block::Completion>* out) override {
    std::lock_guard lock(shared_->mutex);
    if (shared_->event.valid()) {
      uint64_t v;
      (void)::read(shared_->event.get(), &v, sizeof(v));
    }
    size_t n = shared_->done.size();
    out->insert(out->end(), shared_->done.begin(), shared_->done.end());
    shared_->done.clear();
    return n;
  }
  size_t inflight() const override {
    std::lock_guard lock(shared_->mutex);
    return shared_->held.size() + shared_->done.size();
  }
  int event_fd() const override { return shared_->event.valid() ? shared_->event.get() : -1; }

  static void ReleaseAll(Shared& shared) {
    std::lock_guard lock(shared.mutex);
    for (const block::Request& r : shared.held) {
      for (int i = 0; i < r.iovcnt; ++i) std::memset(r.iov[i].iov_base, 0xab, r.iov[i].iov_len);
      shared.done.push_back({r.tag, 0});
    }
    shared.held.clear();
    shared.hold = false;
    if (shared.event.valid()) {
      const uint64_t one = 1;
      (void)::write(shared.event.get(), &one, sizeof(one));
    }
  }

 private:
  std::shared_ptr<Shared> shared_;
};

// Regression: after the 60 s wait of a reset gave up, the abandoned request kept pointers into
// the driver's memory, which was then unmapped; when the backend finished, the device wrote its
// status byte through the stale pointer and pushed its head into the next driver's used ring.
// Polled backends (completions collected by polling) and backends with a completion eventfd
// (io_uring, the thread pool): the device must collect the late completion without a driver.
class VirtioBlkAbandonedIo : public ::testing::TestWithParam<bool> {};

TEST_P(VirtioBlkAbandonedIo, ARequestHeldPastTheResetTimeoutIsDroppedAndItsMemoryKeptMapped) {
  auto shared = std::make_shared<HoldingBackend::Shared>();
  if (GetParam()) shared->event = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  devices::VirtioBlkOptions options;
  options.inflight_timeout = milliseconds(100);
  auto blk =
      std::make_unique<devices::VirtioBlkDevice>(std::make_unique<HoldingBackend>(shared), options);
  auto pci = virtio::VirtioPciDevice::Create(std::move(blk));
  ASSERT_TRUE(pci.ok());
  ServerThread server;
  const std::string socket = server.AddDeviceObject("disk", std::move(*pci));
  server.Start();
  auto c = client::Client::Connect(socket);
  ASSERT_TRUE(c.ok()) << c.error().message;

  const int mappings_before = MappingsOf("vfu-blk-driver");
  {
    auto d = client::VirtioBlkDriver::Create(c->get(), {});
    ASSERT_TRUE(d.ok()) << d.error().message;
    ASSERT_TRUE((*d)->Read(0, 0, 0, 4096, 1).ok());
    bool held = false;
    for (int i = 0; i < 1000 && !held; ++i) {
      {
        std::lock_guard lock(shared->mutex);
        held = !shared->held.empty();
      }
      if (!held) std::this_thread::sleep_for(milliseconds(1));
    }
    ASSERT_TRUE(held) << "the read never reached the backend";
    // The reset waits 100 ms for the read, then goes on without it; the driver then unmaps its
    // memory and closes the memfd.
    ASSERT_TRUE((*d)->ResetDevice().ok());
  }
  EXPECT_EQ(MappingsOf("vfu-blk-driver"), mappings_before + 1)
      << "the server should keep the memory of the abandoned read mapped";

  // The I/O lands (in memory that is still mapped) and completes; with no driver attached, the
  // device collects it and lets the memory go.
  HoldingBackend::ReleaseAll(*shared);
  for (int i = 0; i < 5000 && MappingsOf("vfu-blk-driver") != mappings_before; ++i) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  EXPECT_EQ(MappingsOf("vfu-blk-driver"), mappings_before)
      << "the late completion was not collected while no driver was attached";

  auto d2 = client::VirtioBlkDriver::Create(c->get(), {});
  ASSERT_TRUE(d2.ok()) << d2.error().message;
  ASSERT_TRUE((*d2)->Read(0, 0, 0, 4096, 2).ok());
  auto done = (*d2)->WaitFor(0, 1, seconds(10));
  ASSERT_TRUE(done.ok()) << done.error().message;
  ASSERT_EQ(done->size(), 1u);
  EXPECT_EQ((*done)[0].tag, 2u);
  EXPECT_EQ((*done)[0].status, devices::kBlkStatusOk);
  // Nothing else arrives: the abandoned read was not completed into this driver's ring.
  std::this_thread::sleep_for(milliseconds(50));
  std::vector<client::BlkCompletion> extra;
  (*d2)->Poll(0, &extra);
  EXPECT_TRUE(extra.empty()) << "a completion of the abandoned request reached the new driver";
  // Only the new driver's memory is mapped (by the client and by the server).
  EXPECT_EQ(MappingsOf("vfu-blk-driver"), mappings_before + 2);
}

INSTANTIATE_TEST_SUITE_P(Backends, VirtioBlkAbandonedIo, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& param) {
                           return param.param ? "WithCompletionEventfd" : "Polled";
                         });

}  // namespace
}  // namespace vfu::testing
