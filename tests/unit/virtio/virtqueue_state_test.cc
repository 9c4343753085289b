// Virtqueue state that can leave the process: a queue saved in the middle of random driver and
// device activity (chains popped but not completed, EVENT_IDX or flag-based suppression in any
// state, indices past a wrap) and restored into a new object over the same guest memory pops
// the same chains, completes them the same way and takes the same interrupt and notification
// decisions as the original. Records that do not fit are refused and change nothing.
#include <cstdint>
#include <cstring>
#include <deque>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "server/state/record.h"
#include "tests/unit/virtio/fake_driver.h"

namespace vfu::virtio::testing {
namespace {

using Buffer = FakeDriver::Buffer;
constexpr uint16_t kSize = 64;

// The driver's side of one random step (the same on two drivers given the same rng).
void DriverStep(std::mt19937& rng, FakeDriver& d, bool event_idx, bool reclaim,
                std::vector<FakeDriver::UsedElem>* reclaimed) {
  uint32_t what = rng() % 100;
  if (what < 50) {
    size_t n = 1 + rng() % 3;
    if (d.free_descriptors() < n) return;
    std::vector<Buffer> buffers;
    for (size_t i = 0; i < n; ++i) {
      uint32_t len = 16 + rng() % 512;
      buffers.push_back({d.Alloc(len), len, i + 1 == n && (rng() & 1)});
    }
    d.AddChain(buffers);
    if (rng() % 3 != 0) d.PublishAvailIdx();
  } else if (what < 60) {
    d.PublishAvailIdx();
  } else if (what < 75) {
    if (event_idx) {
      d.SetUsedEvent(static_cast<uint16_t>(d.UsedIdx() + rng() % 4));
    } else {
      d.SetAvailFlags(rng() & kAvailFlagNoInterrupt);
    }
  } else if (reclaim) {
    auto elems = d.Reclaim();
    reclaimed->insert(reclaimed->end(), elems.begin(), elems.end());
  }
}

// What the device did in one step, to compare two queues.
struct DeviceStep {
  int kind = 0;
  bool ok = true;
  bool flag = false;
  uint16_t head = 0;
  uint64_t readable = 0;
  uint64_t writable = 0;
  bool operator==(const DeviceStep&) const = default;
};

DeviceStep DeviceStepOf(std::mt19937& rng, SplitVirtqueue& q, std::deque<uint16_t>& popped) {
  DeviceStep step;
  step.kind = static_cast<int>(rng() % 6);
  DescriptorChain chain;
  switch (step.kind) {
    case 0:
    case 1: {
      auto r = q.Pop(&chain);
      step.ok = r.ok();
      step.flag = r.ok() && *r;
      if (step.flag) {
        step.head = chain.head;
        step.readable = chain.readable_bytes;
        step.writable = chain.writable_bytes;
        popped.push_back(chain.head);
      }
      break;
    }
    case 2:
      if (!popped.empty()) {
        step.head = popped.front();
        popped.pop_front();
        q.Push(step.head, static_cast<uint32_t>(rng() % 64));
      }
      break;
    case 3:
      step.flag = q.ShouldInterrupt();
      break;
    case 4:
      step.flag = q.EnableNotifications();
      break;
    case 5:
      q.DisableNotifications();
      step.flag = q.HasAvailable();
      break;
  }
  return step;
}

void RoundTrip(uint32_t seed, bool event_idx) {
  SCOPED_TRACE("seed " + std::to_string(seed) + (event_idx ? " event_idx" : " flags"));
  FakeDriver d1(kSize);
  FakeDriver d2(kSize);
  // Past a wrap of the 16-bit indices on both sides.
  d1.StartAt(65500);
  d2.StartAt(65500);
  SplitVirtqueue original;
  ASSERT_TRUE(original.Configure(d1.Config(event_idx, true), &d1.table()).ok());
  original.set_indices(65500, 65500);

  // Before the snapshot the drivers do the same thing; only the original device runs.
  std::mt19937 driver_rng_1(seed);
  std::mt19937 driver_rng_2(seed);
  std::mt19937 device_rng(seed + 7);
  std::deque<uint16_t> popped_1;
  std::vector<FakeDriver::UsedElem> ignored;
  for (int i = 0; i < 60; ++i) {
    DriverStep(driver_rng_1, d1, event_idx, false, &ignored);
    DriverStep(driver_rng_2, d2, event_idx, false, &ignored);
    (void)DeviceStepOf(device_rng, original, popped_1);
  }
  // The second guest memory becomes a copy of the first: what the device wrote is there too.
  std::memcpy(d2.Host(FakeDriver::kBase), d1.Host(FakeDriver::kBase),
              d1.end_iova() - FakeDriver::kBase);

  state::Writer w;
  original.SaveState(w);
  auto r = state::Reader::Open(w.bytes(), w.fds());
  ASSERT_TRUE(r.ok());
  SplitVirtqueue restored;
  Status s = restored.RestoreState(*r, &d2.table());
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(restored.last_avail_idx(), original.last_avail_idx());
  EXPECT_EQ(restored.used_idx(), original.used_idx());
  std::deque<uint16_t> popped_2 = popped_1;  // in flight: the device completes them later

  std::mt19937 next_driver_1(seed * 31);
  std::mt19937 next_driver_2(seed * 31);
  std::mt19937 next_device_1(seed * 17);
  std::mt19937 next_device_2(seed * 17);
  std::vector<FakeDriver::UsedElem> reclaimed_1;
  std::vector<FakeDriver::UsedElem> reclaimed_2;
  for (int i = 0; i < 400; ++i) {
    DriverStep(next_driver_1, d1, event_idx, true, &reclaimed_1);
    DriverStep(next_driver_2, d2, event_idx, true, &reclaimed_2);
    DeviceStep a = DeviceStepOf(next_device_1, original, popped_1);
    DeviceStep b = DeviceStepOf(next_device_2, restored, popped_2);
    ASSERT_EQ(a, b) << "step " << i << " kind " << a.kind;
  }
  ASSERT_EQ(reclaimed_1.size(), reclaimed_2.size());
  for (size_t i = 0; i < reclaimed_1.size(); ++i) {
    EXPECT_EQ(reclaimed_1[i].id, reclaimed_2[i].id);
    EXPECT_EQ(reclaimed_1[i].len, reclaimed_2[i].len);
  }
  EXPECT_EQ(d1.UsedIdx(), d2.UsedIdx());
  EXPECT_EQ(d1.UsedFlags(), d2.UsedFlags());
  EXPECT_EQ(d1.AvailEvent(), d2.AvailEvent());
  EXPECT_GT(reclaimed_1.size(), 20u);  // the continuation did real work
}

TEST(VirtqueueState, RestoredQueueBehavesLikeTheOriginalWithUsedFlags) {
  for (uint32_t seed = 1; seed <= 10; ++seed) RoundTrip(seed, false);
}

TEST(VirtqueueState, RestoredQueueBehavesLikeTheOriginalWithEventIdx) {
  for (uint32_t seed = 1; seed <= 10; ++seed) RoundTrip(seed, true);
}

TEST(VirtqueueState, AQueueThatWasNotReadyRestoresNotReady) {
  FakeDriver d(kSize);
  SplitVirtqueue idle;
  state::Writer w;
  idle.SaveState(w);
  auto r = state::Reader::Open(w.bytes(), w.fds());
  SplitVirtqueue restored;
  ASSERT_TRUE(restored.Configure(d.Config(), &d.table()).ok());
  ASSERT_TRUE(restored.RestoreState(*r, &d.table()).ok());
  EXPECT_FALSE(restored.ready());
}

TEST(VirtqueueState, RingsOutsideTheRestoredMemoryAreRefusedAndChangeNothing) {
  FakeDriver d(kSize);
  SplitVirtqueue original;
  ASSERT_TRUE(original.Configure(d.Config(true, false), &d.table()).ok());
  original.set_indices(5, 3);
  state::Writer w;
  original.SaveState(w);

  // The new process got other memory: the rings are not mapped there.
  DmaMapTable empty(8);
  SplitVirtqueue restored;
  ASSERT_TRUE(restored.Configure(d.Config(), &d.table()).ok());
  restored.set_indices(9, 9);
  auto r = state::Reader::Open(w.bytes(), w.fds());
  Status s = restored.RestoreState(*r, &empty);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("virtqueue state: descriptor table"), std::string::npos)
      << s.message();
  EXPECT_TRUE(restored.ready());
  EXPECT_EQ(restored.last_avail_idx(), 9);
  EXPECT_EQ(restored.used_idx(), 9);
}

}  // namespace
}  // namespace vfu::virtio::testing
