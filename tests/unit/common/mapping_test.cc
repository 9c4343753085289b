// MemoryMapping: file-backed and anonymous mappings, each unmapped exactly once, and the huge
// page advice that the ram block backend relies on.
#include "server/common/mapping.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

namespace vfu {
namespace {

// The VmFlags line of the /proc/self/smaps entry (VMA) that contains `addr` ("" if none).
std::string VmFlagsOf(const void* addr) {
  const auto at = reinterpret_cast<uint64_t>(addr);
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool in_entry = false;
  while (std::getline(smaps, line)) {
    // An entry starts with "start-end perms ..."; its fields are "Name: value" lines.
    const size_t dash = line.find('-');
    if (dash != std::string::npos && dash < line.find(' ')) {
      const uint64_t start = std::stoull(line.substr(0, dash), nullptr, 16);
      const uint64_t end = std::stoull(line.substr(dash + 1), nullptr, 16);
      in_entry = start <= at && at < end;
      continue;
    }
    if (in_entry && line.rfind("VmFlags:", 0) == 0) return line;
  }
  return "";
}

bool IsMapped(const void* addr) {
  unsigned char resident = 0;
  // mincore fails with ENOMEM for an address that is not mapped.
  void* page = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(addr) &
                                       ~static_cast<uintptr_t>(::getpagesize() - 1));
  return ::mincore(page, 1, &resident) == 0;
}

TEST(MemoryMappingTest, AnonymousMemoryIsZeroFilledWritableAndUnmappedOnDestruction) {
  void* addr = nullptr;
  {
    auto m = MemoryMapping::MapAnonymous(1 << 20, /*prefer_huge_pages=*/false);
    ASSERT_TRUE(m.ok()) << m.error().message;
    addr = m->data();
    EXPECT_EQ(m->size(), 1u << 20);
    EXPECT_EQ(m->data()[12345], 0);
    m->data()[12345] = 7;
    EXPECT_EQ(m->data()[12345], 7);
    EXPECT_TRUE(IsMapped(addr));
  }
  EXPECT_FALSE(IsMapped(addr));
}

TEST(MemoryMappingTest, AnonymousMappingOfZeroBytesIsRefused) {
  auto m = MemoryMapping::MapAnonymous(0, true);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, EINVAL);
}

// With THP in the kernel (whatever its enabled setting), the advice marks the range VM_HUGEPAGE
// ("hg" in smaps); without THP the advice is refused and the mapping keeps small pages.
TEST(MemoryMappingTest, PreferringHugePagesAdvisesTheRangeWhereTheKernelHasThem) {
  const bool kernel_has_thp = ::access("/sys/kernel/mm/transparent_hugepage", F_OK) == 0;
  auto huge = MemoryMapping::MapAnonymous(8 << 20, true);
  auto small = MemoryMapping::MapAnonymous(8 << 20, false);
  ASSERT_TRUE(huge.ok() && small.ok());
  ASSERT_NE(VmFlagsOf(small->data()), "");
  EXPECT_EQ(VmFlagsOf(small->data()).find(" hg"), std::string::npos) << VmFlagsOf(small->data());
  EXPECT_EQ(VmFlagsOf(huge->data()).find(" hg") != std::string::npos, kernel_has_thp)
      << VmFlagsOf(huge->data());
  huge->data()[(8 << 20) - 1] = 1;  // usable either way
  EXPECT_EQ(huge->data()[(8 << 20) - 1], 1);
}

}  // namespace
}  // namespace vfu
