// IrqTable on its own: eventfd assignment per range, delivery, masking with pending bits,
// INTx automask, loopback triggers, disable-all, and the checks against the device's indexes.
#include "server/session/irq_table.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <future>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/fd_count.h"

namespace vfu {
namespace {

using testing::OpenFdCount;

constexpr uint32_t kNone = wire::kIrqSetDataNone;
constexpr uint32_t kBool = wire::kIrqSetDataBool;
constexpr uint32_t kEfd = wire::kIrqSetDataEventfd;
constexpr uint32_t kMask = wire::kIrqSetActionMask;
constexpr uint32_t kUnmask = wire::kIrqSetActionUnmask;
constexpr uint32_t kTrigger = wire::kIrqSetActionTrigger;

// Index 0: INTx-like (1 vector, maskable, automasked). 1: MSI-like (4 vectors, not maskable).
// 2: MSI-X-like (8 vectors, maskable). 3: 2 vectors without eventfd support.
constexpr uint32_t kIntx = 0, kMsi = 1, kMsix = 2, kNoEventfd = 3;

IrqTable MakeTable() {
  return IrqTable({
      {1, wire::kIrqInfoEventfd | wire::kIrqInfoMaskable | wire::kIrqInfoAutomasked},
      {4, wire::kIrqInfoEventfd},
      {8, wire::kIrqInfoEventfd | wire::kIrqInfoMaskable | wire::kIrqInfoNoResize},
      {2, 0},
  });
}

proto::SetIrqsRequest Req(uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
                          const std::vector<uint8_t>* bools = nullptr) {
  proto::SetIrqsRequest r{wire::IrqSet{20, flags, index, start, count}, {}};
  if (bools != nullptr) r.bools = {bools->data(), bools->size()};
  return r;
}

std::vector<UniqueFd> Eventfds(size_t n) {
  std::vector<UniqueFd> fds;
  for (size_t i = 0; i < n; ++i) fds.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  return fds;
}

// Duplicates the test's eventfds for handing to the table (which takes ownership).
std::vector<UniqueFd> Dups(const std::vector<UniqueFd>& fds) {
  std::vector<UniqueFd> out;
  for (const UniqueFd& fd : fds) out.emplace_back(::dup(fd.get()));
  return out;
}

uint64_t Take(const UniqueFd& fd) {
  uint64_t v = 0;
  if (::read(fd.get(), &v, sizeof(v)) != sizeof(v)) return 0;
  return v;
}

TEST(IrqTable, AssignedEventfdsAreSignalledPerVector) {
  IrqTable t = MakeTable();
  auto efds = Eventfds(4);
  ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kMsi, 0, 4), Dups(efds), nullptr).ok());
  EXPECT_EQ(t.eventfd_count(), 4u);
  EXPECT_TRUE(t.Trigger(kMsi, 2));
  EXPECT_TRUE(t.Trigger(kMsi, 2));
  EXPECT_EQ(Take(efds[2]), 2u);
  EXPECT_EQ(Take(efds[0]), 0u);
  EXPECT_EQ(Take(efds[3]), 0u);
  EXPECT_EQ(t.delivered(), 2u);
}

TEST(IrqTable, PartialRangeAssignmentLeavesOtherVectorsAlone) {
  IrqTable t = MakeTable();
  auto first = Eventfds(2);
  auto second = Eventfds(2);
  ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kMsix, 0, 2), Dups(first), nullptr).ok());
  ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kMsix, 6, 2), Dups(second), nullptr).ok());
  EXPECT_TRUE(t.HasEventfd(kMsix, 1));
  EXPECT_FALSE(t.HasEventfd(kMsix, 2));
  EXPECT_TRUE(t.HasEventfd(kMsix, 7));
  EXPECT_TRUE(t.Trigger(kMsix, 7));
  EXPECT_EQ(Take(second[1]), 1u);
  // De-assign [1, 7) with DATA_EVENTFD and no fds: vector 0 and 7 keep theirs.
  ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kMsix, 1, 6), {}, nullptr).ok());
  EXPECT_TRUE(t.HasEventfd(kMsix, 0));
  EXPECT_FALSE(t.HasEventfd(kMsix, 1));
  EXPECT_FALSE(t.HasEventfd(kMsix, 6));
  EXPECT_TRUE(t.HasEventfd(kMsix, 7));
  EXPECT_EQ(t.eventfd_count(), 2u);
}

TEST(IrqTable, TriggerWithoutEventfdIsPendingAndDeliveredOnAssignment) {
  IrqTable t = MakeTable();
  EXPECT_FALSE(t.Trigger(kMsi, 1));
  EXPECT_TRUE(t.Pending(kMsi, 1));
  auto efds = Eventfds(1);
  ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kMsi, 1, 1), Dups(efds), nullptr).ok());
  EXPECT_EQ(Take(efds[0]), 1u);
  EXPECT_FALSE(t.Pending(kMsi, 1));
}

TEST(IrqTable, MaskedVectorBecomesPendingAndFiresOnUnmask) {
  IrqTable t = MakeTable();
  auto efds = Eventfds(8);
  ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kMsix, 0, 8), Dups(efds), nullptr).ok());
  std::vector<IrqTable::MaskChange> changes;
  ASSERT_TRUE(t.Apply(Req(kNone | kMask, kMsix, 3, 1), {}, &changes).ok());
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].vector, 3u);
  EXPECT_TRUE(changes[0].masked);
  EXPECT_TRUE(t.Masked(kMsix, 3));
  EXPECT_FALSE(t.Trigger(kMsix, 3));
  EXPECT_TRUE(t.Pending(kMsix, 3));
  EXPECT_EQ(Take(efds[3]), 0u);
  changes.clear();
  ASSERT_TRUE(t.Apply(Req(kNone | kUnmask, kMsix, 3, 1), {}, &changes).ok());
  EXPECT_EQ(Take(efds[3]), 1u);
  EXPECT_FALSE(t.Pending(kMsix, 3));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_FALSE(changes[0].masked);
  // Masking an already-masked vector twice reports one change only.
  changes.clear();
  ASSERT_TRUE(t.Apply(Req(kNone | kMask, kMsix, 3, 1), {}, &changes).ok());
  ASSERT_TRUE(t.Apply(Req(kNone | kMask, kMsix, 3, 1), {}, &changes).ok());
  EXPECT_EQ(changes.size(), 1u);
}

TEST(IrqTable, DataBoolSelectsWhichVectorsTheActionTouches) {
  IrqTable t = MakeTable();
  std::vector<uint8_t> bools = {1, 0, 0, 1};
  ASSERT_TRUE(t.Apply(Req(kBool | kMask, kMsix, 2, 4, &bools), {}, nullptr).ok());
  EXPECT_TRUE(t.Masked(kMsix, 2));
  EXPECT_FALSE(t.Masked(kMsix, 3));
  EXPECT_FALSE(t.Masked(kMsix, 4));
  EXPECT_TRUE(t.Masked(kMsix, 5));
  EXPECT_FALSE(t.Masked(kMsix, 0));
}

TEST(IrqTable, IntxAutomasksAfterEachDelivery) {
  IrqTable t = MakeTable();
  auto efds = Eventfds(1);
  ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kIntx, 0, 1), Dups(efds), nullptr).ok());
  EXPECT_TRUE(t.Trigger(kIntx, 0));
  EXPECT_TRUE(t.Masked(kIntx, 0));
  EXPECT_FALSE(t.Trigger(kIntx, 0));
  EXPECT_EQ(Take(efds[0]), 1u);
  ASSERT_TRUE(t.Apply(Req(kNone | kUnmask, kIntx, 0, 1), {}, nullptr).ok());
  EXPECT_EQ(Take(efds[0]), 1u);     // the pending one
  EXPECT_TRUE(t.Masked(kIntx, 0));  // and masked again
  ASSERT_TRUE(t.Apply(Req(kNone | kUnmask, kIntx, 0, 1), {}, nullptr).ok());
  EXPECT_FALSE(t.Masked(kIntx, 0));
  EXPECT_EQ(Take(efds[0]), 0u);  // nothing pending this time
}

// Regression: a pending INTx delivered when its eventfd was assigned did not automask, so the
// next trigger fired again before the client unmasked.
TEST(IrqTable, IntxDeliveredOnAssignmentIsAutomaskedAndReported) {
  IrqTable t = MakeTable();
  EXPECT_FALSE(t.Trigger(kIntx, 0));  // pending: no eventfd yet
  auto efds = Eventfds(1);
  std::vector<IrqTable::MaskChange> changes;
  ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kIntx, 0, 1), Dups(efds), &changes).ok());
  EXPECT_EQ(Take(efds[0]), 1u);
  EXPECT_TRUE(t.Masked(kIntx, 0));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_TRUE(changes[0].masked);
  EXPECT_FALSE(t.Trigger(kIntx, 0));  // held until the client unmasks
  EXPECT_EQ(Take(efds[0]), 0u);
}

// Regression: any fd was accepted as an interrupt eventfd, and a blocking pipe that was full
// made the interrupt write block the poll thread.
TEST(IrqTable, AnFdThatIsNotAnEventfdIsRefusedAndChangesNothing) {
  IrqTable t = MakeTable();
  auto efds = Eventfds(2);
  ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kMsi, 0, 2), Dups(efds), nullptr).ok());
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  UniqueFd read_end(pipe_fds[0]);
  std::vector<UniqueFd> mixed;
  mixed.emplace_back(::eventfd(0, EFD_CLOEXEC));
  mixed.emplace_back(pipe_fds[1]);
  Status s = t.Apply(Req(kEfd | kTrigger, kMsi, 0, 2), std::move(mixed), nullptr);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), EINVAL);
  EXPECT_NE(s.message().find("not an eventfd"), std::string::npos) << s.message();
  // The eventfds assigned before are still the ones signalled.
  EXPECT_TRUE(t.Trigger(kMsi, 1));
  EXPECT_EQ(Take(efds[1]), 1u);
}

// Regression: a client that filled its (blocking) eventfd's counter to the maximum made the
// interrupt write block the poll thread; the table makes the eventfd non-blocking.
TEST(IrqTable, AnEventfdAtItsMaximumCountDoesNotBlockTheTrigger) {
  IrqTable t = MakeTable();
  UniqueFd client(::eventfd(0, EFD_CLOEXEC));  // blocking, as a hostile client may send it
  ASSERT_TRUE(client.valid());
  const uint64_t almost_full = 0xfffffffffffffffeull;
  ASSERT_EQ(::write(client.get(), &almost_full, sizeof(almost_full)), 8);
  std::vector<UniqueFd> fds;
  fds.emplace_back(::dup(client.get()));
  ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kMsi, 0, 1), std::move(fds), nullptr).ok());
  auto trigger = std::async(std::launch::async, [&t] { return t.Trigger(kMsi, 0); });
  if (trigger.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    uint64_t v;
    (void)::read(client.get(), &v, sizeof(v));  // unblock the write so the test can end
    trigger.wait();
    FAIL() << "the interrupt write blocked on a full eventfd";
  }
  EXPECT_FALSE(trigger.get());  // not delivered: the counter is full (the client sees it set)
}

TEST(IrqTable, LoopbackTriggerSignalsLikeTheDevice) {
  IrqTable t = MakeTable();
  auto efds = Eventfds(4);
  ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kMsi, 0, 4), Dups(efds), nullptr).ok());
  ASSERT_TRUE(t.Apply(Req(kNone | kTrigger, kMsi, 1, 2), {}, nullptr).ok());
  EXPECT_EQ(Take(efds[0]), 0u);
  EXPECT_EQ(Take(efds[1]), 1u);
  EXPECT_EQ(Take(efds[2]), 1u);
  std::vector<uint8_t> bools = {0, 0, 0, 1};
  ASSERT_TRUE(t.Apply(Req(kBool | kTrigger, kMsi, 0, 4, &bools), {}, nullptr).ok());
  EXPECT_EQ(Take(efds[3]), 1u);
  EXPECT_EQ(Take(efds[1]), 0u);
}

TEST(IrqTable, CountZeroTriggerDisablesTheIndexAndClearsPending) {
  IrqTable t = MakeTable();
  auto efds = Eventfds(8);
  ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kMsix, 0, 8), Dups(efds), nullptr).ok());
  ASSERT_TRUE(t.Apply(Req(kNone | kMask, kMsix, 0, 1), {}, nullptr).ok());
  t.Trigger(kMsix, 0);
  ASSERT_TRUE(t.Pending(kMsix, 0));
  ASSERT_TRUE(t.Apply(Req(kNone | kTrigger, kMsix, 0, 0), {}, nullptr).ok());
  EXPECT_EQ(t.eventfd_count(), 0u);
  EXPECT_FALSE(t.Pending(kMsix, 0));
  // Other indexes are untouched.
  auto intx = Eventfds(1);
  ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kIntx, 0, 1), Dups(intx), nullptr).ok());
  ASSERT_TRUE(t.Apply(Req(kNone | kTrigger, kMsix, 0, 0), {}, nullptr).ok());
  EXPECT_TRUE(t.HasEventfd(kIntx, 0));
}

TEST(IrqTable, RejectsRangesIndexesAndActionsTheDeviceDoesNotHave) {
  IrqTable t = MakeTable();
  EXPECT_EQ(t.Apply(Req(kNone | kTrigger, 4, 0, 1), {}, nullptr).code(), EINVAL);
  EXPECT_EQ(t.Apply(Req(kNone | kTrigger, 0xffffffffu, 0, 1), {}, nullptr).code(), EINVAL);
  EXPECT_EQ(t.Apply(Req(kNone | kTrigger, kMsi, 3, 2), {}, nullptr).code(), EINVAL);
  EXPECT_EQ(t.Apply(Req(kNone | kTrigger, kMsi, 4, 1), {}, nullptr).code(), EINVAL);
  EXPECT_EQ(t.Apply(Req(kNone | kTrigger, kMsi, 0xffffffffu, 2), {}, nullptr).code(), EINVAL);
  EXPECT_EQ(t.Apply(Req(kNone | kMask, kMsi, 0, 1), {}, nullptr).code(), EINVAL);
  EXPECT_EQ(t.Apply(Req(kNone | kUnmask, kMsi, 0, 1), {}, nullptr).code(), EINVAL);
  EXPECT_EQ(t.Apply(Req(kEfd | kTrigger, kNoEventfd, 0, 1), Eventfds(1), nullptr).code(), EINVAL);
  EXPECT_EQ(t.Apply(Req(kEfd | kMask, kMsix, 0, 1), Eventfds(1), nullptr).code(), ENOTSUP);
  EXPECT_EQ(t.eventfd_count(), 0u);
  EXPECT_FALSE(t.Masked(kMsi, 0));
}

TEST(IrqTable, TriggerOutOfRangeIsIgnored) {
  IrqTable t = MakeTable();
  EXPECT_FALSE(t.Trigger(9, 0));
  EXPECT_FALSE(t.Trigger(kMsi, 4));
  EXPECT_FALSE(t.Pending(kMsi, 4));
  EXPECT_FALSE(t.Masked(9, 0));
  EXPECT_FALSE(t.HasEventfd(kIntx, 1));
}

TEST(IrqTable, ClearAndDestructionCloseEveryEventfd) {
  const size_t before = OpenFdCount();
  {
    IrqTable t = MakeTable();
    ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kMsix, 0, 8), Eventfds(8), nullptr).ok());
    ASSERT_TRUE(t.Apply(Req(kNone | kMask, kMsix, 1, 1), {}, nullptr).ok());
    EXPECT_EQ(OpenFdCount(), before + 8);
    t.Clear();
    EXPECT_EQ(OpenFdCount(), before);
    EXPECT_FALSE(t.Masked(kMsix, 1));
    ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kMsi, 0, 4), Eventfds(4), nullptr).ok());
    // Replacing an eventfd closes the old one.
    ASSERT_TRUE(t.Apply(Req(kEfd | kTrigger, kMsi, 0, 4), Eventfds(4), nullptr).ok());
    EXPECT_EQ(OpenFdCount(), before + 4);
  }
  EXPECT_EQ(OpenFdCount(), before);
}

}  // namespace
}  // namespace vfu
