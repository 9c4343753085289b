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

}  // namespace vfu
