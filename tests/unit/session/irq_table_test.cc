// IrqTable on its own: eventfd assignment per range, delivery, masking with pending bits,
// INTx automask, loopback triggers, disable-all, and the checks against the device's indexes.
#include "server/session/irq_table.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
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
