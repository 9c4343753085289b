#include "server/common/mapping.h"

#include <cstring>
#include <string>

namespace vfu {

Result<MemoryMapping> MemoryMapping::Map(int fd, uint64_t offset, size_t size, int prot) {
  if (size == 0) return MakeError(EINVAL, "cannot map zero bytes");
  void* addr = ::mmap(nullptr, size, prot, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (addr == MAP_FAILED) {
    int err = errno;
    return MakeError(err, std::string("mmap failed: ") + std::strerror(err));
  }
  MemoryMapping mapping;
  mapping.addr_ = addr;
  mapping.size_ = size;
  return mapping;
}

Result<MemoryMapping> MemoryMapping::MapAnonymous(size_t size, bool prefer_huge_pages) {
  if (size == 0) return MakeError(EINVAL, "cannot map zero bytes");
  void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (addr == MAP_FAILED) {
    int err = errno;
    return MakeError(err, std::string("mmap failed: ") + std::strerror(err));
  }
  // Advice only: without THP support (EINVAL) the mapping simply keeps small pages.
  if (prefer_huge_pages) (void)::madvise(addr, size, MADV_HUGEPAGE);
  MemoryMapping mapping;
  mapping.addr_ = addr;
  mapping.size_ = size;
  return mapping;
}

}  // namespace vfu
