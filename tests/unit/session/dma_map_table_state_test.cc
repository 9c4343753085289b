// DMA map table state that can leave the process: after random maps (memfds at various offsets,
// read-only, write-only and read-write, some without an fd) and unmaps, a table saved and
// restored into a new object maps the same guest memory: the next random reads, writes and
// translations give the same results and the same bytes, and the next maps and unmaps are
// accepted or refused alike. A record that does not fit is refused and changes nothing.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "server/protocol/wire.h"
#include "server/session/dma_map_table.h"
#include "server/state/record.h"
#include "tests/support/fd_count.h"

namespace vfu {
namespace {

using Access = GuestMemory::Access;
constexpr uint64_t kBase = 0x100000;
constexpr uint64_t kPage = 4096;
constexpr uint64_t kSlots = 32;  // guest address space: kSlots pages from kBase

// The client side: memfds to map from (kept open by the test, as QEMU keeps guest RAM).
struct Client {
  Client() {
    for (int i = 0; i < 4; ++i) {
      UniqueFd fd(::memfd_create("dma-state-test", MFD_CLOEXEC));
      EXPECT_EQ(::ftruncate(fd.get(), 16 * kPage), 0);
      memfds.push_back(std::move(fd));
    }
  }
  std::vector<UniqueFd> memfds;
};

struct Step {
  int kind = 0;
  int code = 0;
  std::vector<uint8_t> bytes;
  bool operator==(const Step&) const = default;
};

Step RandomStep(std::mt19937& rng, DmaMapTable& t, Client& c) {
  Step step;
  step.kind = static_cast<int>(rng() % 5);
  uint64_t iova = kBase + (rng() % kSlots) * kPage;
  uint64_t pages = 1 + rng() % 4;
  switch (step.kind) {
    case 0: {
      uint32_t flags = 1 + rng() % 3;  // read, write or both
      bool with_fd = rng() % 6 != 0;
      UniqueFd fd;
      uint64_t offset = (rng() % 8) * kPage;
      if (with_fd) fd.Reset(::fcntl(c.memfds[rng() % 4].get(), F_DUPFD_CLOEXEC, 0));
      step.code = t.Map(iova, pages * kPage, offset, flags, std::move(fd)).code();
      break;
    }
    case 1:
      step.code = t.Unmap(iova, pages * kPage).code();
      break;
    case 2: {
      std::vector<uint8_t> data(1 + rng() % 64);
      for (auto& b : data) b = static_cast<uint8_t>(rng());
      step.code = t.Write(iova + rng() % 256, data).code();
      break;
    }
    case 3: {
      step.bytes.resize(1 + rng() % 64);
      step.code = t.Read(iova + rng() % 256, step.bytes).code();
      if (step.code != 0) step.bytes.clear();
      break;
    }
    case 4: {
      Access access = (rng() & 1) ? Access::kRead : Access::kWrite;
      auto p = t.Translate(iova + rng() % 256, 1 + rng() % 8192, access);
      step.code = p.ok() ? 0 : p.error().code;
      break;
    }
  }
  return step;
}

TEST(DmaMapTableState, RestoredTableMapsTheSameMemoryAndBehavesAlike) {
  for (uint32_t seed = 1; seed <= 30; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Client client;
    DmaMapTable original(16);
    std::mt19937 rng(seed);
    for (int i = 0; i < 200; ++i) RandomStep(rng, original, client);

    state::Writer w;
    ASSERT_TRUE(original.SaveState(w).ok());
    auto r = state::Reader::Open(w.bytes(), w.fds());
    ASSERT_TRUE(r.ok());
    DmaMapTable restored(16);
    Status s = restored.RestoreState(*r);
    ASSERT_TRUE(s.ok()) << s.message();
    ASSERT_EQ(restored.size(), original.size());
    for (const auto& [iova, region] : original.regions()) {
      const auto& other = restored.regions().at(iova);
      EXPECT_EQ(other.size, region.size);
      EXPECT_EQ(other.readable, region.readable);
      EXPECT_EQ(other.writable, region.writable);
      EXPECT_EQ(other.host == nullptr, region.host == nullptr);
    }

    // The same steps on both; a write through one is seen by reads through the other, since
    // both map the client's memfds.
    std::mt19937 next_a(seed * 13);
    std::mt19937 next_b(seed * 13);
    for (int i = 0; i < 200; ++i) {
      Step a = RandomStep(next_a, original, client);
      Step b = RandomStep(next_b, restored, client);
      ASSERT_EQ(a, b) << "step " << i << " kind " << a.kind;
    }
  }
}

TEST(DmaMapTableState, RestoredMapsShareTheClientsMemory) {
  Client client;
  DmaMapTable original(16);
  ASSERT_TRUE(original
                  .Map(kBase, 4 * kPage, kPage, wire::kDmaFlagRead | wire::kDmaFlagWrite,
                       UniqueFd(::dup(client.memfds[0].get())))
                  .ok());
  state::Writer w;
  ASSERT_TRUE(original.SaveState(w).ok());
  auto r = state::Reader::Open(w.bytes(), w.fds());
  DmaMapTable restored(16);
  ASSERT_TRUE(restored.RestoreState(*r).ok());
  std::vector<uint8_t> hello = {'h', 'e', 'l', 'l', 'o'};
  ASSERT_TRUE(restored.Write(kBase + 100, hello).ok());
  uint8_t seen[5] = {};
  ASSERT_EQ(::pread(client.memfds[0].get(), seen, 5, kPage + 100), 5);
  EXPECT_EQ(std::vector<uint8_t>(seen, seen + 5), hello);
}

TEST(DmaMapTableState, ARecordThatDoesNotFitIsRefusedAndChangesNothing) {
  Client client;
  DmaMapTable original(16);
  for (uint64_t i = 0; i < 6; ++i) {
    ASSERT_TRUE(original
                    .Map(kBase + 2 * i * kPage, kPage, 0, wire::kDmaFlagRead,
                         UniqueFd(::dup(client.memfds[0].get())))
                    .ok());
  }
  state::Writer w;
  ASSERT_TRUE(original.SaveState(w).ok());

  DmaMapTable small(4);  // a session that allows fewer maps
  ASSERT_TRUE(small.Map(kBase, kPage, 0, wire::kDmaFlagRead, {}).ok());
  auto r = state::Reader::Open(w.bytes(), w.fds());
  Status s = small.RestoreState(*r);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("6 maps, this session allows 4"), std::string::npos) << s.message();
  EXPECT_EQ(small.size(), 1u);

  // The fds came with the record but one is now too short for its map.
  UniqueFd tiny(::memfd_create("tiny", MFD_CLOEXEC));
  std::vector<int> fds(w.fds().size(), tiny.get());
  DmaMapTable fresh(16);
  auto r2 = state::Reader::Open(w.bytes(), fds);
  Status s2 = fresh.RestoreState(*r2);
  ASSERT_FALSE(s2.ok());
  EXPECT_NE(s2.message().find("DMA map state: "), std::string::npos) << s2.message();
  EXPECT_EQ(fresh.size(), 0u);
}

// A client cannot make the server hold more than kMaxKeptFds of its fds; past that, maps still
// work but the session's state can no longer leave the process, which SaveState says.
TEST(DmaMapTableState, KeptFdsAreBoundedAndSavingPastTheBoundIsRefused) {
  Client client;
  const size_t limit = DmaMapTable::kMaxKeptFds;
  DmaMapTable table(limit + 8);
  const size_t before = testing::OpenFdCount();
  for (size_t i = 0; i < limit + 4; ++i) {
    ASSERT_TRUE(table
                    .Map(kBase + i * kPage, kPage, 0, wire::kDmaFlagRead,
                         UniqueFd(::dup(client.memfds[0].get())))
                    .ok());
  }
  EXPECT_EQ(testing::OpenFdCount(), before + limit);
  uint8_t byte = 0;
  EXPECT_TRUE(table.Read(kBase + (limit + 3) * kPage, {&byte, 1}).ok());
  state::Writer w;
  Status s = table.SaveState(w);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), E2BIG);
  // Unmapping the maps without a kept fd makes the state savable again.
  for (size_t i = limit; i < limit + 4; ++i) {
    ASSERT_TRUE(table.Unmap(kBase + i * kPage, kPage).ok());
  }
  state::Writer again;
  EXPECT_TRUE(table.SaveState(again).ok());
  table.UnmapAll();
  EXPECT_EQ(testing::OpenFdCount(), before);
}

}  // namespace
}  // namespace vfu
