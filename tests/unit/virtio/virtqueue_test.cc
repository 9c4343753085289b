// SplitVirtqueue against a fake driver over a real DmaMapTable of memfd-backed maps: normal
// operation (chains, indirect tables, index wrap, used ring, interrupt and notification
// suppression with and without EVENT_IDX) and hostile rings, each of which must end in a fatal
// error or a per-request buffer_error, never in a crash or an access outside guest memory.
#include "server/virtio/virtqueue.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <semaphore>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/unit/virtio/fake_driver.h"

namespace vfu::virtio::testing {
namespace {

using ::testing::HasSubstr;
using Buffer = FakeDriver::Buffer;

std::vector<uint8_t> Gather(const std::vector<iovec>& iovs) {
  std::vector<uint8_t> out;
  for (const iovec& v : iovs) {
    const auto* p = static_cast<const uint8_t*>(v.iov_base);
    out.insert(out.end(), p, p + v.iov_len);
  }
  return out;
}

// Fills the segments with `fill`; returns the bytes written.
uint32_t Scatter(const std::vector<iovec>& iovs, uint8_t fill) {
  uint32_t n = 0;
  for (const iovec& v : iovs) {
    std::memset(v.iov_base, fill, v.iov_len);
    n += static_cast<uint32_t>(v.iov_len);
  }
  return n;
}

class VirtqueueTest : public ::testing::Test {
 protected:
  void Start(uint16_t size, bool event_idx = false, bool indirect = false,
             size_t memory_bytes = 1 << 20) {
    driver_ = std::make_unique<FakeDriver>(size, memory_bytes);
    Status s = q_.Configure(driver_->Config(event_idx, indirect), &driver_->table());
    ASSERT_TRUE(s.ok()) << s.message();
  }
  Result<bool> Pop() { return q_.Pop(&chain_); }
  // Pops and expects a well-formed chain (buffer errors allowed).
  void ExpectPop() {
    auto r = Pop();
    ASSERT_TRUE(r.ok()) << r.error().message;
    ASSERT_TRUE(*r);
  }
  // Pops and expects the queue to be broken, for the reason `why` (part of the message).
  void ExpectFatal(const char* why) {
    auto r = Pop();
    ASSERT_FALSE(r.ok()) << "Pop accepted a broken ring";
    EXPECT_THAT(r.error().message, HasSubstr(why));
  }
  // Pops and expects a chain whose buffers did not all translate, for the reason `why`.
  void ExpectBufferError(uint16_t head, const char* why) {
    ExpectPop();
    EXPECT_EQ(chain_.head, head);
    ASSERT_FALSE(chain_.buffer_error.ok());
    EXPECT_THAT(chain_.buffer_error.message(), HasSubstr(why));
  }

  std::unique_ptr<FakeDriver> driver_;
  SplitVirtqueue q_;
  DescriptorChain chain_;
};

// ---------------------------------------------------------------------------------------
// Configure

using VirtqueueConfigureTest = VirtqueueTest;

TEST_F(VirtqueueConfigureTest, AcceptsRingsInMappedMemory) {
  Start(8);
  EXPECT_TRUE(q_.ready());
  EXPECT_EQ(q_.config().size, 8);
  EXPECT_FALSE(q_.HasAvailable());
}

TEST_F(VirtqueueConfigureTest, AcceptsTheLargestQueueSize) {
  Start(kMaxQueueSize, false, false, 4 << 20);
  EXPECT_TRUE(q_.ready());
}

TEST_F(VirtqueueConfigureTest, RejectsSizesThatAreNotPowersOfTwo) {
  FakeDriver d(8);
  for (uint16_t size : {0, 3, 6, 100, 65535}) {
    QueueConfig c = d.Config();
    c.size = size;
    EXPECT_FALSE(q_.Configure(c, &d.table()).ok()) << size;
    EXPECT_FALSE(q_.ready());
  }
}

TEST_F(VirtqueueConfigureTest, RejectsMisalignedRings) {
  FakeDriver d(8);
  QueueConfig c = d.Config();
  c.desc_addr += 8;
  EXPECT_FALSE(q_.Configure(c, &d.table()).ok());
  c = d.Config();
  c.avail_addr += 1;
  EXPECT_FALSE(q_.Configure(c, &d.table()).ok());
  c = d.Config();
  c.used_addr += 2;
  EXPECT_FALSE(q_.Configure(c, &d.table()).ok());
  EXPECT_FALSE(q_.ready());
}

TEST_F(VirtqueueConfigureTest, RejectsRingsOutsideMappedMemory) {
  FakeDriver d(8);
  QueueConfig c = d.Config();
  c.desc_addr = 0x1000;
  EXPECT_FALSE(q_.Configure(c, &d.table()).ok());
  c = d.Config();
  c.avail_addr = d.end_iova() - 4;  // starts inside, runs past the end
  EXPECT_FALSE(q_.Configure(c, &d.table()).ok());
  c = d.Config();
  c.used_addr = 0xfffffffffffffff0ull;  // wraps
  EXPECT_FALSE(q_.Configure(c, &d.table()).ok());
  EXPECT_FALSE(q_.ready());
}

TEST_F(VirtqueueConfigureTest, RejectsARingSpanningTwoMaps) {
  FakeDriver d(8);
  QueueConfig c = d.Config();
  c.desc_addr = d.split_iova() - 64;  // 128-byte table, half in each map
  EXPECT_FALSE(q_.Configure(c, &d.table()).ok());
}

TEST_F(VirtqueueConfigureTest, RejectsAUsedRingInReadOnlyMemory) {
  FakeDriver d(8);
  const uint64_t ro = d.MapExtra(0x40000000, 0x1000, wire::kDmaFlagRead);
  QueueConfig c = d.Config();
  c.used_addr = ro;
  EXPECT_FALSE(q_.Configure(c, &d.table()).ok());
  // The descriptor table and avail ring only need to be readable.
  c = d.Config();
  c.avail_addr = ro;
  EXPECT_TRUE(q_.Configure(c, &d.table()).ok());
}

TEST_F(VirtqueueConfigureTest, RejectsRingsInMemoryMappedWithoutAnFd) {
  FakeDriver d(8);
  const uint64_t nofd = d.MapExtra(0x40000000, 0x1000, FakeDriver::kReadWrite, false);
  QueueConfig c = d.Config();
  c.desc_addr = nofd;
  EXPECT_FALSE(q_.Configure(c, &d.table()).ok());
}

TEST_F(VirtqueueConfigureTest, RejectsRingsMisalignedInTheHostMapping) {
  FakeDriver d(8);
  // A map starting at an odd IOVA: aligned guest addresses are odd host addresses.
  const uint64_t odd = d.MapExtra(0x40000001, 0x2000, FakeDriver::kReadWrite);
  QueueConfig c = d.Config();
  c.avail_addr = odd + 1;
  EXPECT_FALSE(q_.Configure(c, &d.table()).ok());
  c = d.Config();
  c.used_addr = odd + 3;
  EXPECT_FALSE(q_.Configure(c, &d.table()).ok());
}

TEST_F(VirtqueueConfigureTest, RejectsMissingMemoryAndUnconfiguredUse) {
  FakeDriver d(8);
  EXPECT_FALSE(q_.Configure(d.Config(), nullptr).ok());
  EXPECT_FALSE(q_.Pop(&chain_).ok());
  EXPECT_FALSE(q_.HasAvailable());
  EXPECT_FALSE(q_.ShouldInterrupt());
  EXPECT_FALSE(q_.EnableNotifications());
  q_.DisableNotifications();
  q_.Push(0, 0);  // ignored
}

TEST_F(VirtqueueConfigureTest, ResetForgetsTheRings) {
  Start(8);
  q_.Reset();
  EXPECT_FALSE(q_.ready());
  EXPECT_FALSE(Pop().ok());
}

// ---------------------------------------------------------------------------------------
// Normal operation

TEST_F(VirtqueueTest, EmptyRingPopsNothing) {
  Start(8);
  auto r = Pop();
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r);
  EXPECT_FALSE(q_.HasAvailable());
}

TEST_F(VirtqueueTest, PopsASingleReadableDescriptor) {
  Start(8);
  const uint64_t buf = driver_->AllocFilled(100, 0xab);
  const Buffer b[] = {{buf, 100, false}};
  const uint16_t head = driver_->AddChain(b);
  driver_->PublishAvailIdx();
  EXPECT_TRUE(q_.HasAvailable());
  ExpectPop();
  EXPECT_EQ(chain_.head, head);
  EXPECT_TRUE(chain_.buffer_error.ok());
  EXPECT_EQ(chain_.readable_bytes, 100u);
  EXPECT_EQ(chain_.writable_bytes, 0u);
  EXPECT_TRUE(chain_.writable.empty());
  EXPECT_EQ(Gather(chain_.readable), std::vector<uint8_t>(100, 0xab));
  EXPECT_EQ(q_.last_avail_idx(), 1);
  auto again = Pop();
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(*again);
}

TEST_F(VirtqueueTest, PopsAMultiDescriptorChainAndReturnsItThroughTheUsedRing) {
  Start(8);
  const Buffer b[] = {{driver_->AllocFilled(16, 1), 16, false},
                      {driver_->AllocFilled(512, 2), 512, false},
                      {driver_->AllocFilled(3, 3), 3, false},
                      {driver_->AllocFilled(4096, 0), 4096, true},
                      {driver_->AllocFilled(1, 0), 1, true}};
  const uint16_t head = driver_->AddChain(b);
  driver_->PublishAvailIdx();
  ExpectPop();
  EXPECT_EQ(chain_.head, head);
  ASSERT_EQ(chain_.readable.size(), 3u);
  ASSERT_EQ(chain_.writable.size(), 2u);
  EXPECT_EQ(chain_.readable_bytes, 531u);
  EXPECT_EQ(chain_.writable_bytes, 4097u);
  std::vector<uint8_t> expected(16, 1);
  expected.insert(expected.end(), 512, 2);
  expected.insert(expected.end(), 3, 3);
  EXPECT_EQ(Gather(chain_.readable), expected);

  const uint32_t written = Scatter(chain_.writable, 0x5a);
  q_.Push(chain_.head, written);
  EXPECT_EQ(driver_->UsedIdx(), 1);
  auto used = driver_->Reclaim();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, head);
  EXPECT_EQ(used[0].len, 4097u);
  EXPECT_EQ(driver_->Host(b[3].addr)[4095], 0x5a);
  EXPECT_EQ(driver_->Host(b[4].addr)[0], 0x5a);
  EXPECT_EQ(driver_->Host(b[0].addr)[0], 1);  // readable buffers untouched
}

TEST_F(VirtqueueTest, UsedRingRecordsEachChainInCompletionOrder) {
  Start(8);
  uint16_t heads[3];
  for (auto& h : heads) {
    const Buffer b[] = {{driver_->Alloc(8), 8, true}};
    h = driver_->AddChain(b);
  }
  driver_->PublishAvailIdx();
  std::vector<uint16_t> popped;
  for (int i = 0; i < 3; ++i) {
    ExpectPop();
    popped.push_back(chain_.head);
  }
  EXPECT_EQ(popped, std::vector<uint16_t>(heads, heads + 3));
  // Out of order completion, with distinct lengths.
  q_.Push(popped[2], 7);
  q_.Push(popped[0], 0);
  q_.Push(popped[1], 8);
  auto used = driver_->Reclaim();
  ASSERT_EQ(used.size(), 3u);
  EXPECT_EQ(used[0].id, heads[2]);
  EXPECT_EQ(used[0].len, 7u);
  EXPECT_EQ(used[1].id, heads[0]);
  EXPECT_EQ(used[1].len, 0u);
  EXPECT_EQ(used[2].id, heads[1]);
  EXPECT_EQ(used[2].len, 8u);
  EXPECT_EQ(q_.used_idx(), 3);
}

TEST_F(VirtqueueTest, BufferSpanningAdjacentMapsBecomesTwoSegments) {
  Start(8);
  const uint64_t addr = driver_->split_iova() - 100;
  std::memset(driver_->Host(addr), 0x77, 300);
  const Buffer b[] = {{addr, 300, false}};
  driver_->AddChain(b);
  driver_->PublishAvailIdx();
  ExpectPop();
  EXPECT_TRUE(chain_.buffer_error.ok()) << chain_.buffer_error.message();
  ASSERT_EQ(chain_.readable.size(), 2u);
  EXPECT_EQ(chain_.readable[0].iov_len, 100u);
  EXPECT_EQ(chain_.readable[1].iov_len, 200u);
  EXPECT_EQ(Gather(chain_.readable), std::vector<uint8_t>(300, 0x77));
}

TEST_F(VirtqueueTest, ZeroLengthDescriptorsContributeNothing) {
  Start(8);
  // Zero-length descriptors even at unmapped addresses are fine: nothing is accessed.
  const Buffer b[] = {{0x1000, 0, false},
                      {driver_->AllocFilled(4, 9), 4, false},
                      {0xdead0000, 0, true},
                      {driver_->Alloc(1), 1, true}};
  driver_->AddChain(b);
  driver_->PublishAvailIdx();
  ExpectPop();
  EXPECT_TRUE(chain_.buffer_error.ok());
  EXPECT_EQ(chain_.readable.size(), 1u);
  EXPECT_EQ(chain_.writable.size(), 1u);
  EXPECT_EQ(chain_.readable_bytes, 4u);
  EXPECT_EQ(chain_.writable_bytes, 1u);
}

TEST_F(VirtqueueTest, PopsAnIndirectChain) {
  Start(8, false, true);
  const Buffer b[] = {{driver_->AllocFilled(16, 4), 16, false},
                      {driver_->AllocFilled(64, 5), 64, false},
                      {driver_->Alloc(512), 512, true},
                      {driver_->Alloc(1), 1, true}};
  const uint16_t head = driver_->AddIndirectChain(b);
  driver_->PublishAvailIdx();
  ExpectPop();
  EXPECT_EQ(chain_.head, head);
  EXPECT_TRUE(chain_.buffer_error.ok());
  EXPECT_EQ(chain_.readable.size(), 2u);
  EXPECT_EQ(chain_.writable.size(), 2u);
  EXPECT_EQ(chain_.readable_bytes, 80u);
  EXPECT_EQ(chain_.writable_bytes, 513u);
  q_.Push(chain_.head, Scatter(chain_.writable, 0xee));
  auto used = driver_->Reclaim();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, head);
  EXPECT_EQ(used[0].len, 513u);
  EXPECT_EQ(driver_->Host(b[3].addr)[0], 0xee);
}

TEST_F(VirtqueueTest, IndirectTableSpanningAdjacentMapsIsRead) {
  Start(8, false, true);
  const Buffer b[] = {{driver_->AllocFilled(8, 1), 8, false},
                      {driver_->AllocFilled(8, 2), 8, false},
                      {driver_->Alloc(8), 8, true}};
  // A 48-byte table with its second descriptor cut in half by the map boundary.
  const uint16_t head = driver_->AddIndirectChain(b, driver_->split_iova() - 24);
  driver_->PublishAvailIdx();
  ExpectPop();
  EXPECT_EQ(chain_.head, head);
  EXPECT_TRUE(chain_.buffer_error.ok());
  EXPECT_EQ(chain_.readable_bytes, 16u);
  EXPECT_EQ(chain_.writable_bytes, 8u);
  std::vector<uint8_t> expected(8, 1);
  expected.insert(expected.end(), 8, 2);
  EXPECT_EQ(Gather(chain_.readable), expected);
}

TEST_F(VirtqueueTest, DirectDescriptorsMayPrecedeAnIndirectTable) {
  // 2.7.5.3.2: zero or more direct descriptors followed by one indirect descriptor.
  Start(8, false, true);
  const uint64_t table = driver_->Alloc(32);
  const Buffer inner[] = {{driver_->AllocFilled(8, 2), 8, false}, {driver_->Alloc(4), 4, true}};
  driver_->WriteIndirectTable(table, inner);
  driver_->WriteDesc(0, driver_->AllocFilled(8, 1), 8, kDescFlagNext, 1);
  driver_->WriteDesc(1, table, 32, kDescFlagIndirect, 0);
  driver_->Publish(0);
  ExpectPop();
  EXPECT_TRUE(chain_.buffer_error.ok());
  EXPECT_EQ(chain_.readable.size(), 2u);
  EXPECT_EQ(chain_.writable.size(), 1u);
  std::vector<uint8_t> expected(8, 1);
  expected.insert(expected.end(), 8, 2);
  EXPECT_EQ(Gather(chain_.readable), expected);
}

TEST_F(VirtqueueTest, IgnoresTheWriteFlagOnAnIndirectDescriptor) {
  // 2.7.5.3.2: "The device MUST ignore the write-only flag ... in the descriptor that refers to
  // an indirect table" (Linux's balloon driver sets it).
  Start(8, false, true);
  const uint64_t table = driver_->Alloc(32);
  const Buffer inner[] = {{driver_->AllocFilled(8, 2), 8, false}, {driver_->Alloc(4), 4, true}};
  driver_->WriteIndirectTable(table, inner);
  driver_->WriteDesc(0, table, 32, kDescFlagIndirect | kDescFlagWrite, 0);
  driver_->Publish(0);
  ExpectPop();
  EXPECT_TRUE(chain_.buffer_error.ok());
  EXPECT_EQ(chain_.readable_bytes, 8u);
  EXPECT_EQ(chain_.writable_bytes, 4u);
}

TEST_F(VirtqueueTest, IndirectTablesMayHoldUpTo1024DescriptorsOnSmallQueues) {
  Start(8, false, true);
  std::vector<Buffer> b;
  const uint64_t data = driver_->Alloc(kMaxIndirectEntries);
  for (uint32_t i = 0; i < kMaxIndirectEntries; ++i) b.push_back({data + i, 1, i >= 512});
  driver_->AddIndirectChain(b);
  driver_->PublishAvailIdx();
  ExpectPop();
  EXPECT_TRUE(chain_.buffer_error.ok());
  EXPECT_EQ(chain_.readable_bytes, 512u);
  EXPECT_EQ(chain_.writable_bytes, 512u);
}

TEST_F(VirtqueueTest, AcceptsAFullRingPublishedAtOnce) {
  Start(8);
  for (int i = 0; i < 8; ++i) {
    const Buffer b[] = {{driver_->Alloc(4), 4, true}};
    driver_->AddChain(b);
  }
  driver_->PublishAvailIdx();  // avail idx exactly `size` ahead
  for (int i = 0; i < 8; ++i) ExpectPop();
  auto r = Pop();
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r);
}

// Runs `requests` request/response rounds through a ring of `size`, the driver keeping it as
// full as it can, and checks every byte and used element.
void RunTraffic(FakeDriver& driver, SplitVirtqueue& q, uint32_t requests) {
  const uint64_t in = driver.Alloc(8 * driver.size());
  const uint64_t out = driver.Alloc(4 * driver.size());
  uint32_t submitted = 0, completed = 0;
  DescriptorChain chain;
  std::vector<uint32_t> expected_tag(driver.size());
  while (completed < requests) {
    // Driver: fill the ring. At most size / 2 chains are in flight, so rotating through `size`
    // buffer slots never shares one between two of them.
    while (submitted < requests && driver.free_descriptors() >= 2) {
      const uint16_t slot = static_cast<uint16_t>(submitted % driver.size());
      const uint64_t req = in + 8ull * slot;
      const uint64_t resp = out + 4ull * slot;
      std::memcpy(driver.Host(req), &submitted, 4);
      const Buffer b[] = {{req, 4, false}, {resp, 4, true}};
      const uint16_t head = driver.AddChain(b);
      expected_tag[head] = submitted;
      ++submitted;
    }
    driver.PublishAvailIdx();
    // Device: echo tag + 1 into the writable buffer.
    while (true) {
      auto r = q.Pop(&chain);
      ASSERT_TRUE(r.ok()) << r.error().message;
      if (!*r) break;
      ASSERT_TRUE(chain.buffer_error.ok());
      ASSERT_EQ(chain.readable_bytes, 4u);
      ASSERT_EQ(chain.writable_bytes, 4u);
      uint32_t tag;
      std::memcpy(&tag, chain.readable[0].iov_base, 4);
      ASSERT_EQ(tag, expected_tag[chain.head]);
      tag += 1;
      std::memcpy(chain.writable[0].iov_base, &tag, 4);
      q.Push(chain.head, 4);
    }
    // Driver: check responses.
    for (const auto& e : driver.Reclaim()) {
      ASSERT_EQ(e.len, 4u);
      ASSERT_LT(e.id, driver.size());
      ++completed;
    }
  }
  EXPECT_EQ(submitted, requests);
}

TEST_F(VirtqueueTest, IndicesWrapAroundOver70000Requests) {
  Start(8);
  RunTraffic(*driver_, q_, 70000);
  EXPECT_EQ(q_.last_avail_idx(), static_cast<uint16_t>(70000));
  EXPECT_EQ(q_.used_idx(), static_cast<uint16_t>(70000));
  EXPECT_EQ(driver_->UsedIdx(), static_cast<uint16_t>(70000));
}

TEST_F(VirtqueueTest, IndicesWrapAroundFromNearTheTop) {
  Start(4);
  driver_->StartAt(65533);
  q_.set_indices(65533, 65533);
  RunTraffic(*driver_, q_, 20);
  EXPECT_EQ(q_.last_avail_idx(), static_cast<uint16_t>(65533 + 20));
}

// ---------------------------------------------------------------------------------------
// Interrupt suppression

using VirtqueueInterruptTest = VirtqueueTest;

// Submits and completes one single-buffer request.
void CompleteOne(FakeDriver& driver, SplitVirtqueue& q) {
  const Buffer b[] = {{driver.Alloc(4), 4, true}};
  driver.AddChain(b);
  driver.PublishAvailIdx();
  DescriptorChain chain;
  auto r = q.Pop(&chain);
  ASSERT_TRUE(r.ok() && *r);
  q.Push(chain.head, 4);
  driver.Reclaim();
}

TEST_F(VirtqueueInterruptTest, WithoutEventIdxInterruptsUnlessTheDriverSetsNoInterrupt) {
  Start(8);
  CompleteOne(*driver_, q_);
  EXPECT_TRUE(q_.ShouldInterrupt());
  driver_->SetAvailFlags(kAvailFlagNoInterrupt);
  CompleteOne(*driver_, q_);
  EXPECT_FALSE(q_.ShouldInterrupt());
  driver_->SetAvailFlags(0);
  CompleteOne(*driver_, q_);
  EXPECT_TRUE(q_.ShouldInterrupt());
}

TEST_F(VirtqueueInterruptTest, WithEventIdxInterruptsWhenUsedIdxPassesUsedEvent) {
  Start(8, true);
  driver_->SetUsedEvent(4);  // "interrupt me once used element 4 is written"
  std::vector<bool> decisions;
  for (int i = 0; i < 7; ++i) {
    CompleteOne(*driver_, q_);
    decisions.push_back(q_.ShouldInterrupt());
  }
  // Used idx 1 (first decision: always yes), 2, 3, 4: no; 5: element 4 done: yes; 6, 7: no.
  EXPECT_EQ(decisions, (std::vector<bool>{true, false, false, false, true, false, false}));
}

TEST_F(VirtqueueInterruptTest, WithEventIdxABatchCrossingUsedEventInterruptsOnce) {
  Start(8, true);
  CompleteOne(*driver_, q_);
  EXPECT_TRUE(q_.ShouldInterrupt());  // used idx 1
  driver_->SetUsedEvent(3);
  for (int i = 0; i < 4; ++i) CompleteOne(*driver_, q_);  // used idx 5, passing element 3
  EXPECT_TRUE(q_.ShouldInterrupt());
  EXPECT_FALSE(q_.ShouldInterrupt());  // nothing new
  CompleteOne(*driver_, q_);
  EXPECT_FALSE(q_.ShouldInterrupt());
}

TEST_F(VirtqueueInterruptTest, WithEventIdxIgnoresTheNoInterruptFlag) {
  Start(8, true);
  driver_->SetAvailFlags(kAvailFlagNoInterrupt);
  CompleteOne(*driver_, q_);
  EXPECT_TRUE(q_.ShouldInterrupt());
  driver_->SetUsedEvent(1);
  CompleteOne(*driver_, q_);
  EXPECT_TRUE(q_.ShouldInterrupt());
}

TEST_F(VirtqueueInterruptTest, WithEventIdxHandlesIndexWrap) {
  Start(8, true);
  driver_->StartAt(65534);
  q_.set_indices(65534, 65534);
  CompleteOne(*driver_, q_);          // used idx 65535
  EXPECT_TRUE(q_.ShouldInterrupt());  // first decision
  driver_->SetUsedEvent(0);           // element 0 is the one written at the wrap
  CompleteOne(*driver_, q_);          // used idx 0 (element 65535)
  EXPECT_FALSE(q_.ShouldInterrupt());
  CompleteOne(*driver_, q_);  // used idx 1 (element 0)
  EXPECT_TRUE(q_.ShouldInterrupt());
}

// ---------------------------------------------------------------------------------------
// Notification (kick) suppression

using VirtqueueNotifyTest = VirtqueueTest;

TEST_F(VirtqueueNotifyTest, WithoutEventIdxDisableSetsNoNotifyAndEnableClearsIt) {
  Start(8);
  EXPECT_EQ(driver_->UsedFlags(), 0);
  q_.DisableNotifications();
  EXPECT_EQ(driver_->UsedFlags(), kUsedFlagNoNotify);
  EXPECT_FALSE(q_.EnableNotifications());
  EXPECT_EQ(driver_->UsedFlags(), 0);
}

TEST_F(VirtqueueNotifyTest, WithEventIdxPopMovesAvailEventOnlyWhileEnabled) {
  Start(8, true);
  for (int i = 0; i < 4; ++i) {
    const Buffer b[] = {{driver_->Alloc(4), 4, true}};
    driver_->AddChain(b);
  }
  driver_->PublishAvailIdx();
  ExpectPop();
  EXPECT_EQ(driver_->AvailEvent(), 1);
  q_.DisableNotifications();
  EXPECT_EQ(driver_->UsedFlags(), 0);  // the flag is not used with EVENT_IDX
  ExpectPop();
  ExpectPop();
  EXPECT_EQ(driver_->AvailEvent(), 1);    // frozen
  EXPECT_TRUE(q_.EnableNotifications());  // one is still pending
  EXPECT_EQ(driver_->AvailEvent(), 3);
  ExpectPop();
  EXPECT_EQ(driver_->AvailEvent(), 4);
  EXPECT_FALSE(q_.EnableNotifications());
}

TEST_F(VirtqueueNotifyTest, EnableReportsWorkAddedWhileDisabled) {
  for (bool event_idx : {false, true}) {
    SCOPED_TRACE(event_idx ? "event_idx" : "flags");
    Start(8, event_idx);
    EXPECT_FALSE(q_.EnableNotifications());
    // The device polls with notifications disabled. (With EVENT_IDX the first buffer past the
    // frozen avail_event still kicks; later ones do not.)
    q_.DisableNotifications();
    const Buffer b[] = {{driver_->Alloc(4), 4, true}};
    driver_->AddChain(b);
    driver_->PublishAvailIdx();
    ExpectPop();
    // The driver adds more work and, seeing notifications suppressed, does not kick...
    const uint16_t old = driver_->avail_idx();
    driver_->AddChain(b);
    driver_->PublishAvailIdx();
    EXPECT_FALSE(driver_->WouldKick(old, event_idx));
    // ...so the device must find the work itself when it re-enables before sleeping.
    EXPECT_TRUE(q_.EnableNotifications());
    ExpectPop();
    EXPECT_FALSE(q_.EnableNotifications());
    // Enabled and empty: the driver kicks for the next one.
    const uint16_t old2 = driver_->avail_idx();
    driver_->AddChain(b);
    driver_->PublishAvailIdx();
    EXPECT_TRUE(driver_->WouldKick(old2, event_idx));
  }
}

// A driver thread and a device thread: the device sleeps only after EnableNotifications says
// the ring is empty, the driver kicks only when the ring asks it to. A lost wakeup shows up
// as the device waiting out its timeout. With max_inflight 1 (ping-pong) the driver publishes
// each request right after seeing the previous completion, i.e. typically while the device is
// between its last empty Pop and EnableNotifications: the window the re-check must close.
void RunKickRace(bool event_idx, uint32_t max_inflight) {
  constexpr uint32_t kRequests = 20000;
  FakeDriver driver(4);
  SplitVirtqueue q;
  ASSERT_TRUE(q.Configure(driver.Config(event_idx), &driver.table()).ok());
  std::counting_semaphore<> kicks(0);
  std::atomic<bool> lost_wakeup{false};
  std::atomic<uint32_t> kick_count{0};
  const uint64_t data = driver.Alloc(4 * kRequests);

  std::thread device([&] {
    DescriptorChain chain;
    uint32_t done = 0;
    while (done < kRequests) {
      q.DisableNotifications();
      while (true) {
        auto r = q.Pop(&chain);
        if (!r.ok()) {
          ADD_FAILURE() << r.error().message;
          return;
        }
        if (!*r) break;
        q.Push(chain.head, 4);
        ++done;
      }
      if (done == kRequests) break;
      // Interrupt delivery (an eventfd write) stands between draining and re-enabling in a
      // real device; yielding here gives the driver that time to publish unseen.
      (void)q.ShouldInterrupt();
      std::this_thread::yield();
      if (q.EnableNotifications()) continue;
      if (!kicks.try_acquire_for(std::chrono::seconds(5))) {
        lost_wakeup = true;
        return;
      }
    }
  });

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  uint32_t submitted = 0, completed = 0;
  while (completed < kRequests && !lost_wakeup && std::chrono::steady_clock::now() < deadline) {
    if (submitted < kRequests && submitted - completed < max_inflight &&
        driver.free_descriptors() > 0) {
      const uint16_t old = driver.avail_idx();
      const Buffer b[] = {{data + 4ull * submitted, 4, true}};
      driver.AddChain(b);
      driver.PublishAvailIdx();
      ++submitted;
      if (driver.WouldKick(old, event_idx)) {
        kick_count.fetch_add(1, std::memory_order_relaxed);
        kicks.release();
      }
    } else {
      std::this_thread::yield();
    }
    completed += static_cast<uint32_t>(driver.Reclaim().size());
  }
  kicks.release();  // never leave the device blocked
  device.join();
  EXPECT_FALSE(lost_wakeup) << "device slept with work on the ring";
  EXPECT_EQ(completed, kRequests);
  // Suppression did something: far fewer kicks than requests is typical, but only the
  // correctness of the handshake is asserted.
  ::testing::Test::RecordProperty("kicks", static_cast<int>(kick_count.load()));
}

TEST(VirtqueueKickRaceTest, NoLostWakeupsWithUsedFlags) { RunKickRace(false, 4); }
TEST(VirtqueueKickRaceTest, NoLostWakeupsWithEventIdx) { RunKickRace(true, 4); }
TEST(VirtqueueKickRaceTest, NoLostWakeupsInPingPongWithUsedFlags) { RunKickRace(false, 1); }
TEST(VirtqueueKickRaceTest, NoLostWakeupsInPingPongWithEventIdx) { RunKickRace(true, 1); }

// ---------------------------------------------------------------------------------------
// Hostile buffers: the request fails (buffer_error), the queue carries on.

using VirtqueueHostileBufferTest = VirtqueueTest;

TEST_F(VirtqueueHostileBufferTest, BufferOutsideAnyMapIsABufferError) {
  Start(8);
  const Buffer b[] = {{0x1000, 16, false}, {driver_->Alloc(1), 1, true}};
  const uint16_t head = driver_->AddChain(b);
  driver_->PublishAvailIdx();
  ExpectBufferError(head, "is not mapped");
  EXPECT_EQ(chain_.buffer_error.code(), EFAULT);
  // The well-formed status buffer is kept, so the device can report the failure in it.
  EXPECT_TRUE(chain_.readable.empty());
  ASSERT_EQ(chain_.writable.size(), 1u);
  EXPECT_EQ(chain_.writable_bytes, 1u);
  q_.Push(chain_.head, 1);
  EXPECT_EQ(driver_->Reclaim().size(), 1u);
  // The queue still works.
  const Buffer ok[] = {{driver_->Alloc(4), 4, true}};
  driver_->AddChain(ok);
  driver_->PublishAvailIdx();
  ExpectPop();
  EXPECT_TRUE(chain_.buffer_error.ok());
}

TEST_F(VirtqueueHostileBufferTest, BufferRunningPastTheEndOfMemoryIsABufferError) {
  Start(8);
  const Buffer b[] = {{driver_->end_iova() - 8, 16, true}};
  const uint16_t head = driver_->AddChain(b);
  driver_->PublishAvailIdx();
  ExpectBufferError(head, "is not mapped");
  EXPECT_TRUE(chain_.writable.empty());  // nothing half-translated
  EXPECT_EQ(chain_.writable_bytes, 0u);
}

TEST_F(VirtqueueHostileBufferTest, BufferInMemoryMappedWithoutAnFdIsABufferError) {
  Start(8);
  const uint64_t nofd = driver_->MapExtra(0x40000000, 0x1000, FakeDriver::kReadWrite, false);
  const Buffer b[] = {{nofd, 16, false}};
  const uint16_t head = driver_->AddChain(b);
  driver_->PublishAvailIdx();
  ExpectBufferError(head, "mapped without an fd");
}

TEST_F(VirtqueueHostileBufferTest, WritableBufferInReadOnlyMemoryIsABufferError) {
  Start(8);
  const uint64_t ro = driver_->MapExtra(0x40000000, 0x1000, wire::kDmaFlagRead);
  const Buffer readable[] = {{ro, 16, false}};
  driver_->AddChain(readable);
  driver_->PublishAvailIdx();
  ExpectPop();
  EXPECT_TRUE(chain_.buffer_error.ok());  // reading it is fine

  const Buffer writable[] = {{ro, 16, true}};
  const uint16_t head = driver_->AddChain(writable);
  driver_->PublishAvailIdx();
  ExpectBufferError(head, "does not allow this access");
  EXPECT_EQ(chain_.buffer_error.code(), EACCES);
}

TEST_F(VirtqueueHostileBufferTest, ReadableBufferInWriteOnlyMemoryIsABufferError) {
  Start(8);
  const uint64_t wo = driver_->MapExtra(0x40000000, 0x1000, wire::kDmaFlagWrite);
  const Buffer b[] = {{wo, 16, false}};
  const uint16_t head = driver_->AddChain(b);
  driver_->PublishAvailIdx();
  ExpectBufferError(head, "does not allow this access");
}

TEST_F(VirtqueueHostileBufferTest, AddressPlusLengthWrappingIsABufferError) {
  Start(8);
  const Buffer b[] = {{0xfffffffffffffff0ull, 0x100, false},
                      {0xffffffffffffffffull, 0xffffffff, true}};
  const uint16_t head = driver_->AddChain(b);
  driver_->PublishAvailIdx();
  ExpectBufferError(head, "wraps");
  EXPECT_TRUE(chain_.readable.empty());
  EXPECT_TRUE(chain_.writable.empty());
}

TEST_F(VirtqueueHostileBufferTest, BufferInIndirectTableOutsideMemoryIsABufferError) {
  Start(8, false, true);
  const Buffer b[] = {{0x2000, 64, false}, {driver_->Alloc(1), 1, true}};
  const uint16_t head = driver_->AddIndirectChain(b);
  driver_->PublishAvailIdx();
  ExpectBufferError(head, "is not mapped");
  EXPECT_EQ(chain_.writable.size(), 1u);
}

// ---------------------------------------------------------------------------------------
// Hostile rings: fatal (the device sets NEEDS_RESET).

using VirtqueueHostileRingTest = VirtqueueTest;

TEST_F(VirtqueueHostileRingTest, DescriptorLinkingToItselfIsFatal) {
  Start(8);
  driver_->WriteDesc(3, driver_->Alloc(8), 8, kDescFlagNext, 3);
  driver_->Publish(3);
  ExpectFatal("a loop");
  ExpectFatal("a loop");  // and stays so without touching anything else
}

TEST_F(VirtqueueHostileRingTest, TwoDescriptorCycleIsFatal) {
  Start(8);
  const uint64_t buf = driver_->Alloc(8);
  driver_->WriteDesc(1, buf, 8, kDescFlagNext, 5);
  driver_->WriteDesc(5, buf, 8, kDescFlagNext, 1);
  driver_->Publish(1);
  ExpectFatal("a loop");
}

TEST_F(VirtqueueHostileRingTest, ChainLongerThanTheQueueIsFatal) {
  // Every descriptor in one chain, the last linking back to the first: size + 1 steps.
  Start(16);
  const uint64_t buf = driver_->Alloc(8);
  for (uint16_t i = 0; i < 16; ++i) {
    driver_->WriteDesc(i, buf, 8, kDescFlagNext, static_cast<uint16_t>((i + 1) % 16));
  }
  driver_->Publish(0);
  ExpectFatal("a loop");
}

TEST_F(VirtqueueHostileRingTest, ChainUsingEveryDescriptorOnceIsAccepted) {
  Start(16);
  const uint64_t buf = driver_->Alloc(8);
  for (uint16_t i = 0; i < 16; ++i) {
    driver_->WriteDesc(i, buf, 8, i == 15 ? 0 : kDescFlagNext, static_cast<uint16_t>(i + 1));
  }
  driver_->Publish(0);
  ExpectPop();
  EXPECT_EQ(chain_.readable_bytes, 128u);
}

TEST_F(VirtqueueHostileRingTest, NextIndexBeyondTheTableIsFatal) {
  Start(8);
  driver_->WriteDesc(0, driver_->Alloc(8), 8, kDescFlagNext, 8);
  driver_->Publish(0);
  ExpectFatal("links to 8");
}

TEST_F(VirtqueueHostileRingTest, HeadIndexBeyondTheTableIsFatal) {
  Start(8);
  driver_->Publish(8);
  ExpectFatal("names descriptor 8");
  Start(8);
  driver_->Publish(0xffff);
  ExpectFatal("names descriptor 65535");
}

TEST_F(VirtqueueHostileRingTest, AvailIdxMoreThanQueueSizeAheadIsFatal) {
  Start(8);
  for (uint16_t i = 0; i < 8; ++i) driver_->WriteDesc(i, driver_->Alloc(4), 4, 0, 0);
  driver_->SetAvailIdx(9);
  EXPECT_TRUE(q_.HasAvailable());
  ExpectFatal("is 9 ahead");
  Start(8);
  driver_->SetAvailIdx(0x8000);
  ExpectFatal("is 32768 ahead");
}

TEST_F(VirtqueueHostileRingTest, AvailIdxJumpingAfterSomeWorkIsFatal) {
  Start(8);
  const Buffer b[] = {{driver_->Alloc(4), 4, true}};
  driver_->AddChain(b);
  driver_->PublishAvailIdx();
  ExpectPop();
  driver_->SetAvailIdx(1 + 9);
  ExpectFatal("is 9 ahead");
}

TEST_F(VirtqueueHostileRingTest, ReadableAfterWritableIsFatal) {
  Start(8);
  const Buffer b[] = {
      {driver_->Alloc(8), 8, false}, {driver_->Alloc(8), 8, true}, {driver_->Alloc(8), 8, false}};
  driver_->AddChain(b);
  driver_->PublishAvailIdx();
  ExpectFatal("readable descriptor after a device-writable");
}

TEST_F(VirtqueueHostileRingTest, ReadableInIndirectTableAfterWritableDirectIsFatal) {
  Start(8, false, true);
  const uint64_t table = driver_->Alloc(16);
  const Buffer inner[] = {{driver_->Alloc(8), 8, false}};
  driver_->WriteIndirectTable(table, inner);
  driver_->WriteDesc(0, driver_->Alloc(8), 8, kDescFlagWrite | kDescFlagNext, 1);
  driver_->WriteDesc(1, table, 16, kDescFlagIndirect, 0);
  driver_->Publish(0);
  ExpectFatal("readable descriptor after a device-writable");
}

TEST_F(VirtqueueHostileRingTest, IndirectWhenNotNegotiatedIsFatal) {
  Start(8, false, /*indirect=*/false);
  const Buffer b[] = {{driver_->Alloc(8), 8, false}};
  driver_->AddIndirectChain(b);
  driver_->PublishAvailIdx();
  ExpectFatal("not negotiated");
}

TEST_F(VirtqueueHostileRingTest, IndirectWithNextIsFatal) {
  Start(8, false, true);
  const uint64_t table = driver_->Alloc(16);
  const Buffer inner[] = {{driver_->Alloc(8), 8, false}};
  driver_->WriteIndirectTable(table, inner);
  driver_->WriteDesc(0, table, 16, kDescFlagIndirect | kDescFlagNext, 1);
  driver_->WriteDesc(1, driver_->Alloc(8), 8, kDescFlagWrite, 0);
  driver_->Publish(0);
  ExpectFatal("also has the NEXT flag");
}

TEST_F(VirtqueueHostileRingTest, IndirectTableLengthNotAMultipleOf16IsFatal) {
  Start(8, false, true);
  const uint64_t table = driver_->Alloc(32);
  const Buffer inner[] = {{driver_->Alloc(8), 8, false}, {driver_->Alloc(8), 8, false}};
  driver_->WriteIndirectTable(table, inner);
  driver_->WriteDesc(0, table, 24, kDescFlagIndirect, 0);
  driver_->Publish(0);
  ExpectFatal("not a non-zero multiple of 16");
}

TEST_F(VirtqueueHostileRingTest, EmptyIndirectTableIsFatal) {
  Start(8, false, true);
  driver_->WriteDesc(0, driver_->Alloc(16), 0, kDescFlagIndirect, 0);
  driver_->Publish(0);
  ExpectFatal("not a non-zero multiple of 16");
}

TEST_F(VirtqueueHostileRingTest, IndirectTableLargerThanTheBoundIsFatal) {
  Start(8, false, true);
  const uint32_t entries = kMaxIndirectEntries + 1;
  std::vector<Buffer> b(entries, Buffer{driver_->Alloc(1), 1, false});
  driver_->AddIndirectChain(b);
  driver_->PublishAvailIdx();
  ExpectFatal("at most 1024");
}

TEST_F(VirtqueueHostileRingTest, IndirectTableOutsideMemoryIsFatal) {
  Start(8, false, true);
  driver_->WriteDesc(0, 0x3000, 32, kDescFlagIndirect, 0);
  driver_->Publish(0);
  ExpectFatal("indirect table [0x3000");
}

TEST_F(VirtqueueHostileRingTest, IndirectTableRunningPastTheEndOfMemoryIsFatal) {
  Start(8, false, true);
  driver_->WriteDesc(0, driver_->end_iova() - 16, 32, kDescFlagIndirect, 0);
  driver_->Publish(0);
  ExpectFatal("is not mapped");
}

TEST_F(VirtqueueHostileRingTest, IndirectTableWrappingTheAddressSpaceIsFatal) {
  Start(8, false, true);
  driver_->WriteDesc(0, 0xfffffffffffffff0ull, 32, kDescFlagIndirect, 0);
  driver_->Publish(0);
  ExpectFatal("wraps");
}

TEST_F(VirtqueueHostileRingTest, IndirectTableInMemoryMappedWithoutAnFdIsFatal) {
  Start(8, false, true);
  const uint64_t nofd = driver_->MapExtra(0x40000000, 0x1000, FakeDriver::kReadWrite, false);
  driver_->WriteDesc(0, nofd, 32, kDescFlagIndirect, 0);
  driver_->Publish(0);
  ExpectFatal("mapped without an fd");
}

TEST_F(VirtqueueHostileRingTest, NestedIndirectIsFatal) {
  Start(8, false, true);
  const uint64_t inner_table = driver_->Alloc(16);
  const Buffer leaf[] = {{driver_->Alloc(8), 8, false}};
  driver_->WriteIndirectTable(inner_table, leaf);
  const uint64_t outer_table = driver_->Alloc(16);
  driver_->WriteDescAt(outer_table, inner_table, 16, kDescFlagIndirect, 0);
  driver_->WriteDesc(0, outer_table, 16, kDescFlagIndirect, 0);
  driver_->Publish(0);
  ExpectFatal("nested indirect");
}

TEST_F(VirtqueueHostileRingTest, LoopInsideAnIndirectTableIsFatal) {
  Start(8, false, true);
  const uint64_t table = driver_->Alloc(32);
  const uint64_t buf = driver_->Alloc(8);
  driver_->WriteDescAt(table, buf, 8, kDescFlagNext, 1);
  driver_->WriteDescAt(table + 16, buf, 8, kDescFlagNext, 0);
  driver_->WriteDesc(0, table, 32, kDescFlagIndirect, 0);
  driver_->Publish(0);
  ExpectFatal("a loop");
}

TEST_F(VirtqueueHostileRingTest, NextOutsideAnIndirectTableIsFatal) {
  Start(8, false, true);
  // Index 2 is inside the descriptor *table* size but outside this 2-entry indirect table.
  const uint64_t table = driver_->Alloc(48);
  const uint64_t buf = driver_->Alloc(8);
  driver_->WriteDescAt(table, buf, 8, kDescFlagNext, 2);
  driver_->WriteDescAt(table + 16, buf, 8, 0, 0);
  driver_->WriteDescAt(table + 32, buf, 8, 0, 0);  // in memory, but not in the table
  driver_->WriteDesc(0, table, 32, kDescFlagIndirect, 0);
  driver_->Publish(0);
  ExpectFatal("links to 2 (table of 2)");
}

}  // namespace
}  // namespace vfu::virtio::testing
