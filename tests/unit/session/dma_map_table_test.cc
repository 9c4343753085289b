// DmaMapTable on its own: memfd-backed maps, the permission and bounds checks every guest
// access goes through, and copies that cross from one map into an adjacent one.
#include "server/session/dma_map_table.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <numeric>
#include <vector>

#include <gtest/gtest.h>

#include "server/protocol/wire.h"
#include "tests/support/fd_count.h"

namespace vfu {
namespace {

using testing::OpenFdCount;

using Access = GuestMemory::Access;
constexpr uint32_t kRW = wire::kDmaFlagRead | wire::kDmaFlagWrite;

// A memfd holding `size` bytes whose byte i is (i + seed) & 0xff.
UniqueFd PatternMemfd(size_t size, uint8_t seed) {
  UniqueFd fd(::memfd_create("dma-table-test", MFD_CLOEXEC));
  EXPECT_TRUE(fd.valid());
  std::vector<uint8_t> bytes(size);
  for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<uint8_t>(i + seed);
  EXPECT_EQ(::pwrite(fd.get(), bytes.data(), size, 0), static_cast<ssize_t>(size));
  return fd;
}

UniqueFd Dup(const UniqueFd& fd) { return UniqueFd(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0)); }

// Two adjacent 8 KiB maps: [0x10000, 0x12000) from memfd A (seed 0) and [0x12000, 0x14000)
// from memfd B at offset 0x1000 (seed 100, so its first mapped byte is (0x1000 + 100) & 0xff).
class TwoAdjacentMaps : public ::testing::Test {
 protected:
  void SetUp() override {
    a_ = PatternMemfd(0x2000, 0);
    b_ = PatternMemfd(0x3000, 100);
    ASSERT_TRUE(table_.Map(0x10000, 0x2000, 0, kRW, Dup(a_)).ok());
    ASSERT_TRUE(table_.Map(0x12000, 0x2000, 0x1000, kRW, Dup(b_)).ok());
  }
  static uint8_t AByte(uint64_t iova) { return static_cast<uint8_t>(iova - 0x10000); }
  static uint8_t BByte(uint64_t iova) {
    return static_cast<uint8_t>(iova - 0x12000 + 0x1000 + 100);
  }

  DmaMapTable table_{16};
  UniqueFd a_, b_;
};

TEST_F(TwoAdjacentMaps, TranslateInsideOneMapPointsAtTheFileContents) {
  auto pa = table_.Translate(0x10010, 16, Access::kRead);
  ASSERT_TRUE(pa.ok());
  EXPECT_EQ((*pa)[0], AByte(0x10010));
  auto pb = table_.Translate(0x13ff0, 16, Access::kWrite);
  ASSERT_TRUE(pb.ok());
  EXPECT_EQ((*pb)[15], BByte(0x13fff));
  // Writes through the pointer land in the memfd (a shared mapping).
  (*pb)[0] = 0xee;
  uint8_t back = 0;
  ASSERT_EQ(::pread(b_.get(), &back, 1, 0x1000 + 0x1ff0), 1);
  EXPECT_EQ(back, 0xee);
}

TEST_F(TwoAdjacentMaps, TranslateStraddlingTwoMapsIsEfault) {
  auto p = table_.Translate(0x11ff8, 16, Access::kRead);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, EFAULT);
  // Exactly up to the boundary is fine.
  EXPECT_TRUE(table_.Translate(0x11ff0, 16, Access::kRead).ok());
}

TEST_F(TwoAdjacentMaps, ReadAndWriteCrossTheBoundary) {
  std::vector<uint8_t> out(32);
  ASSERT_TRUE(table_.Read(0x11ff0, out).ok());
  for (size_t i = 0; i < 16; ++i) EXPECT_EQ(out[i], AByte(0x11ff0 + i)) << i;
  for (size_t i = 16; i < 32; ++i) EXPECT_EQ(out[i], BByte(0x11ff0 + i)) << i;

  std::vector<uint8_t> data(32);
  std::iota(data.begin(), data.end(), 200);
  ASSERT_TRUE(table_.Write(0x11ff0, data).ok());
  std::vector<uint8_t> check(32);
  ASSERT_TRUE(table_.Read(0x11ff0, check).ok());
  EXPECT_EQ(check, data);
  uint8_t in_b = 0;
  ASSERT_EQ(::pread(b_.get(), &in_b, 1, 0x1000), 1);
  EXPECT_EQ(in_b, data[16]);
}

TEST_F(TwoAdjacentMaps, TranslateSegmentsSplitsAtTheBoundary) {
  std::vector<iovec> segs;
  ASSERT_TRUE(table_.TranslateSegments(0x11000, 0x2000, Access::kRead, &segs).ok());
  ASSERT_EQ(segs.size(), 2u);
  EXPECT_EQ(segs[0].iov_len, 0x1000u);
  EXPECT_EQ(segs[1].iov_len, 0x1000u);
  EXPECT_EQ(static_cast<uint8_t*>(segs[1].iov_base)[0], BByte(0x12000));
  // A range running past the second map appends nothing and fails.
  std::vector<iovec> none;
  EXPECT_EQ(table_.TranslateSegments(0x13000, 0x2000, Access::kRead, &none).code(), EFAULT);
  EXPECT_TRUE(none.empty());
}

TEST_F(TwoAdjacentMaps, GapsAndRangesPastTheEndAreEfault) {
  std::vector<uint8_t> out(8);
  EXPECT_EQ(table_.Read(0xfff8, out).code(), EFAULT);   // starts before the first map
  EXPECT_EQ(table_.Read(0x13ffc, out).code(), EFAULT);  // runs past the last map
  EXPECT_EQ(table_.Write(0x20000, out).code(), EFAULT);
  EXPECT_EQ(table_.Translate(0x14000, 1, Access::kRead).error().code, EFAULT);
  EXPECT_EQ(table_.Translate(0, 1, Access::kRead).error().code, EFAULT);
  EXPECT_EQ(table_.Read(~0ull - 3, out).code(), EFAULT);  // wraps 2^64
}

TEST_F(TwoAdjacentMaps, OverlappingMapsAreEexistAndAdjacentOnesFit) {
  for (auto [iova, size] : {std::pair<uint64_t, uint64_t>{0x10000, 0x2000},
                            {0xf000, 0x2000},
                            {0x13000, 0x2000},
                            {0x11000, 0x1000},
                            {0x8000, 0x10000}}) {
    EXPECT_EQ(table_.Map(iova, size, 0, kRW, UniqueFd()).code(), EEXIST) << std::hex << iova;
  }
  EXPECT_TRUE(table_.Map(0xf000, 0x1000, 0, kRW, UniqueFd()).ok());
  EXPECT_TRUE(table_.Map(0x14000, 0x1000, 0, kRW, UniqueFd()).ok());
  EXPECT_EQ(table_.size(), 4u);
  EXPECT_EQ(table_.mapped_bytes(), 0x6000u);
}

TEST_F(TwoAdjacentMaps, UnmapMustMatchExactly) {
  EXPECT_EQ(table_.Unmap(0x10000, 0x1000).code(), ENOENT);
  EXPECT_EQ(table_.Unmap(0x11000, 0x1000).code(), ENOENT);
  EXPECT_EQ(table_.Unmap(0x10000, 0x4000).code(), ENOENT);
  ASSERT_TRUE(table_.Unmap(0x10000, 0x2000).ok());
  EXPECT_EQ(table_.size(), 1u);
  EXPECT_EQ(table_.Translate(0x10000, 1, Access::kRead).error().code, EFAULT);
  EXPECT_TRUE(table_.Translate(0x12000, 1, Access::kRead).ok());
  table_.UnmapAll();
  EXPECT_EQ(table_.size(), 0u);
  EXPECT_EQ(table_.mapped_bytes(), 0u);
}

TEST(DmaMapTable, PermissionsAreCheckedPerDirection) {
  DmaMapTable table(8);
  ASSERT_TRUE(table.Map(0x1000, 0x1000, 0, wire::kDmaFlagRead, PatternMemfd(0x1000, 1)).ok());
  ASSERT_TRUE(table.Map(0x2000, 0x1000, 0, kRW, PatternMemfd(0x1000, 2)).ok());
  ASSERT_TRUE(table.Map(0x3000, 0x1000, 0, 0, PatternMemfd(0x1000, 3)).ok());
  EXPECT_TRUE(table.Translate(0x1000, 4, Access::kRead).ok());
  EXPECT_EQ(table.Translate(0x1000, 4, Access::kWrite).error().code, EACCES);
  EXPECT_EQ(table.Translate(0x3000, 4, Access::kRead).error().code, EACCES);
  EXPECT_EQ(table.Translate(0x3000, 4, Access::kWrite).error().code, EACCES);
  uint8_t buf[8] = {};
  EXPECT_EQ(table.Write(0x1000, buf).code(), EACCES);
  // Copies spanning two maps need the permission in both.
  EXPECT_EQ(table.Write(0x1ffc, buf).code(), EACCES);  // read-only, then writable
  EXPECT_TRUE(table.Read(0x1ffc, buf).ok());           // both readable
  EXPECT_EQ(table.Read(0x2ffc, buf).code(), EACCES);   // readable, then no access
}

TEST(DmaMapTable, MapWithoutFdIsRecordedButNotAccessible) {
  DmaMapTable table(8);
  ASSERT_TRUE(table.Map(0x100000, 0x1000, 0, kRW, UniqueFd()).ok());
  EXPECT_EQ(table.size(), 1u);
  EXPECT_FALSE(table.regions().at(0x100000).host != nullptr);
  EXPECT_EQ(table.Translate(0x100000, 1, Access::kRead).error().code, EFAULT);
  uint8_t b;
  EXPECT_EQ(table.Read(0x100000, {&b, 1}).code(), EFAULT);
}

TEST(DmaMapTable, RejectsBadFdsAndClosesThem) {
  const size_t before = OpenFdCount();
  {
    DmaMapTable table(8);
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    ::close(p[1]);
    EXPECT_EQ(table.Map(0x1000, 0x1000, 0, kRW, UniqueFd(p[0])).code(), EINVAL);
    EXPECT_EQ(table.Map(0x1000, 0x2000, 0, kRW, PatternMemfd(0x1000, 0)).code(), EINVAL);
    EXPECT_EQ(table.Map(0x1000, 0x1000, 0x1000, kRW, PatternMemfd(0x1000, 0)).code(), EINVAL);
    EXPECT_EQ(table.Map(0x1000, 0x1000, ~0ull - 0xfff, kRW, PatternMemfd(0x1000, 0)).code(),
              EINVAL);
    EXPECT_EQ(table.Map(0x1000, 0, 0, kRW, PatternMemfd(0x1000, 0)).code(), EINVAL);
    EXPECT_EQ(table.Map(~0ull - 0xfff, 0x2000, 0, kRW, UniqueFd()).code(), EINVAL);
    EXPECT_EQ(table.size(), 0u);
  }
  EXPECT_EQ(OpenFdCount(), before);
}

TEST(DmaMapTable, FullTableIsEnospcUntilAMapIsRemoved) {
  DmaMapTable table(2);
  ASSERT_TRUE(table.Map(0x1000, 0x1000, 0, kRW, UniqueFd()).ok());
  ASSERT_TRUE(table.Map(0x2000, 0x1000, 0, kRW, UniqueFd()).ok());
  EXPECT_EQ(table.Map(0x3000, 0x1000, 0, kRW, UniqueFd()).code(), ENOSPC);
  ASSERT_TRUE(table.Unmap(0x1000, 0x1000).ok());
  EXPECT_TRUE(table.Map(0x3000, 0x1000, 0, kRW, UniqueFd()).ok());
}

TEST(DmaMapTable, MappingsAreReleasedWithTheTable) {
  void* probe = nullptr;
  {
    DmaMapTable table(4);
    ASSERT_TRUE(table.Map(0x1000, 0x1000, 0, kRW, PatternMemfd(0x1000, 7)).ok());
    auto p = table.Translate(0x1000, 1, Access::kRead);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ((*p)[0], 7);
    probe = *p;
  }
  // The page is unmapped: msync on it reports ENOMEM.
  EXPECT_EQ(::msync(probe, 4096, MS_ASYNC), -1);
  EXPECT_EQ(errno, ENOMEM);
}

}  // namespace
}  // namespace vfu

namespace vfu {
namespace {

// The table remembers the map it found last; after that map goes away (or is replaced by a
// new one at the same IOVA) a lookup must not use the stale entry.
TEST_F(TwoAdjacentMaps, LookupAfterUnmapDoesNotUseTheRememberedMap) {
  ASSERT_TRUE(table_.Translate(0x10010, 16, GuestMemory::Access::kRead).ok());
  ASSERT_TRUE(table_.Unmap(0x10000, 0x2000).ok());
  auto gone = table_.Translate(0x10010, 16, GuestMemory::Access::kRead);
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.error().code, EFAULT);
  std::vector<iovec> segs;
  EXPECT_EQ(table_.TranslateSegments(0x10010, 16, GuestMemory::Access::kRead, &segs).code(),
            EFAULT);
  // Mapped again read-only: the new permissions apply.
  ASSERT_TRUE(table_.Map(0x10000, 0x2000, 0, wire::kDmaFlagRead, Dup(a_)).ok());
  EXPECT_TRUE(table_.Translate(0x10010, 16, GuestMemory::Access::kRead).ok());
  auto write = table_.Translate(0x10010, 16, GuestMemory::Access::kWrite);
  ASSERT_FALSE(write.ok());
  EXPECT_EQ(write.error().code, EACCES);
  table_.UnmapAll();
  EXPECT_FALSE(table_.Translate(0x12010, 16, GuestMemory::Access::kRead).ok());
}

}  // namespace
}  // namespace vfu
