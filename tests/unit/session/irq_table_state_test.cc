// IRQ table state that can leave the process: after random SET_IRQS (eventfd assignment and
// removal, masks, unmasks, loopback triggers) and device triggers, a table saved and restored
// into a new object signals the same eventfds, keeps the same vectors pending and masked, and
// answers the next random requests exactly like the original. A record of another device shape,
// or one whose fd is not an eventfd, is refused and changes nothing.
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "server/session/irq_table.h"
#include "server/state/record.h"

namespace vfu {
namespace {

constexpr uint32_t kEfd = wire::kIrqSetDataEventfd;
constexpr uint32_t kNone = wire::kIrqSetDataNone;
constexpr uint32_t kMask = wire::kIrqSetActionMask;
constexpr uint32_t kUnmask = wire::kIrqSetActionUnmask;
constexpr uint32_t kTrigger = wire::kIrqSetActionTrigger;

const std::vector<IrqDescription> kIndexes = {
    {1, wire::kIrqInfoEventfd | wire::kIrqInfoMaskable | wire::kIrqInfoAutomasked},
    {4, wire::kIrqInfoEventfd},
    {8, wire::kIrqInfoEventfd | wire::kIrqInfoMaskable | wire::kIrqInfoNoResize},
};

// The eventfds a test has handed out, so that two tables can be compared through them.
struct Eventfds {
  std::vector<UniqueFd> all;
  // Counts read from every eventfd (and reset to zero).
  std::vector<uint64_t> Drain() {
    std::vector<uint64_t> counts;
    for (const UniqueFd& fd : all) {
      uint64_t v = 0;
      counts.push_back(::read(fd.get(), &v, sizeof(v)) == sizeof(v) ? v : 0);
    }
    return counts;
  }
};

// One random step on `t`: a SET_IRQS or a device trigger. Two tables given the same rng state
// and the same Eventfds get the same step (eventfds are shared: both tables signal them).
struct Step {
  bool ok = true;
  bool signalled = false;
  bool operator==(const Step&) const = default;
};

Step RandomStep(std::mt19937& rng, IrqTable& t, Eventfds& efds, bool create) {
  auto index = static_cast<uint32_t>(rng() % kIndexes.size());
  uint32_t vectors = kIndexes[index].count;
  uint32_t what = rng() % 100;
  Step step;
  if (what < 25) {
    auto start = static_cast<uint32_t>(rng() % vectors);
    auto count = static_cast<uint32_t>(1 + rng() % (vectors - start));
    if (create) {
      for (uint32_t i = 0; i < count; ++i) {
        efds.all.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      }
    }
    // The newest `count` eventfds (the same ones for both tables).
    std::vector<UniqueFd> fds;
    for (size_t i = efds.all.size() - count; i < efds.all.size(); ++i) {
      fds.emplace_back(::dup(efds.all[i].get()));
    }
    proto::SetIrqsRequest req{wire::IrqSet{20, kEfd | kTrigger, index, start, count}, {}};
    step.ok = t.Apply(req, std::move(fds), nullptr).ok();
  } else if (what < 45) {
    auto start = static_cast<uint32_t>(rng() % vectors);
    uint32_t action = (rng() & 1) ? kMask : kUnmask;
    proto::SetIrqsRequest req{wire::IrqSet{20, kNone | action, index, start, 1}, {}};
    step.ok = t.Apply(req, {}, nullptr).ok();
  } else if (what < 50) {
    uint32_t vector = static_cast<uint32_t>(rng() % vectors);
    proto::SetIrqsRequest req{wire::IrqSet{20, kNone | kTrigger, index, vector, 1}, {}};
    step.ok = t.Apply(req, {}, nullptr).ok();
  } else {
    step.signalled = t.Trigger(index, rng() % vectors);
  }
  return step;
}

struct Observed {
  std::vector<bool> pending, masked, has_fd;
  uint64_t delivered = 0;
  bool operator==(const Observed&) const = default;
};

Observed Observe(const IrqTable& t) {
  Observed o;
  for (uint32_t i = 0; i < kIndexes.size(); ++i) {
    for (uint32_t v = 0; v < kIndexes[i].count; ++v) {
      o.pending.push_back(t.Pending(i, v));
      o.masked.push_back(t.Masked(i, v));
      o.has_fd.push_back(t.HasEventfd(i, v));
    }
  }
  o.delivered = t.delivered();
  return o;
}

TEST(IrqTableState, RestoredTableBehavesLikeTheOriginal) {
  for (uint32_t seed = 1; seed <= 30; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Eventfds efds;
    IrqTable original(kIndexes);
    std::mt19937 rng(seed);
    for (int i = 0; i < 150; ++i) RandomStep(rng, original, efds, true);
    efds.Drain();

    state::Writer w;
    original.SaveState(w);
    auto r = state::Reader::Open(w.bytes(), w.fds());
    ASSERT_TRUE(r.ok());
    IrqTable restored(kIndexes);
    Status s = restored.RestoreState(*r);
    ASSERT_TRUE(s.ok()) << s.message();
    ASSERT_EQ(Observe(restored), Observe(original));
    EXPECT_EQ(restored.eventfd_count(), original.eventfd_count());

    // From here on both get the same steps; after each, the eventfds must have been signalled
    // the same number of times by each.
    std::mt19937 next_a(seed * 77);
    std::mt19937 next_b(seed * 77);
    for (int i = 0; i < 150; ++i) {
      Step a = RandomStep(next_a, original, efds, true);
      std::vector<uint64_t> by_a = efds.Drain();
      // The same step on the restored table, with the eventfds the first step created.
      Eventfds view;
      for (const UniqueFd& fd : efds.all) view.all.emplace_back(::dup(fd.get()));
      Step b = RandomStep(next_b, restored, view, false);
      std::vector<uint64_t> by_b = efds.Drain();
      ASSERT_EQ(a, b) << "step " << i;
      ASSERT_EQ(by_a, by_b) << "step " << i;
      Observed oa = Observe(original);
      Observed ob = Observe(restored);
      oa.delivered = ob.delivered = 0;  // counted per table
      ASSERT_EQ(oa, ob) << "step " << i;
    }
  }
}

TEST(IrqTableState, ARecordForAnotherDeviceShapeIsRefusedAndChangesNothing) {
  IrqTable original(kIndexes);
  state::Writer w;
  original.SaveState(w);
  std::vector<IrqDescription> other = kIndexes;
  other[2].count = 16;
  IrqTable restored(other);
  proto::SetIrqsRequest mask{wire::IrqSet{20, kNone | kMask, 2, 3, 1}, {}};
  ASSERT_TRUE(restored.Apply(mask, {}, nullptr).ok());
  auto r = state::Reader::Open(w.bytes(), w.fds());
  Status s = restored.RestoreState(*r);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("IRQ index 2 has 8 vectors, this device has 16"), std::string::npos)
      << s.message();
  EXPECT_TRUE(restored.Masked(2, 3));
}

TEST(IrqTableState, AnFdThatIsNotAnEventfdIsRefusedAndChangesNothing) {
  IrqTable original(kIndexes);
  UniqueFd efd(::eventfd(0, EFD_CLOEXEC));
  proto::SetIrqsRequest req{wire::IrqSet{20, kEfd | kTrigger, 1, 0, 1}, {}};
  std::vector<UniqueFd> fds;
  fds.emplace_back(::dup(efd.get()));
  ASSERT_TRUE(original.Apply(req, std::move(fds), nullptr).ok());
  state::Writer w;
  original.SaveState(w);

  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  std::vector<int> swapped = {write_end.get()};  // the record's one fd, replaced by a pipe
  IrqTable restored(kIndexes);
  auto r = state::Reader::Open(w.bytes(), swapped);
  Status s = restored.RestoreState(*r);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(restored.eventfd_count(), 0u);
}

}  // namespace
}  // namespace vfu
