// MemoryMapping owns one mmap()ed range and unmaps it exactly once (RAII for mappings).
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "server/common/status.h"

namespace vfu {

class MemoryMapping {
 public:
  MemoryMapping() = default;
  ~MemoryMapping() { Reset(); }
  MemoryMapping(const MemoryMapping&) = delete;
  MemoryMapping& operator=(const MemoryMapping&) = delete;
  MemoryMapping(MemoryMapping&& other) noexcept
      : addr_(std::exchange(other.addr_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  MemoryMapping& operator=(MemoryMapping&& other) noexcept {
    if (this != &other) {
      Reset();
      addr_ = std::exchange(other.addr_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }

  // Maps `size` bytes of `fd` at `offset` shared, with the given PROT_* bits.
  static Result<MemoryMapping> Map(int fd, uint64_t offset, size_t size, int prot);
  // Maps `size` bytes of private anonymous memory (zero-filled, read-write, allocated on first
  // touch, no swap reservation: like a sparse file, a size beyond the machine's memory is
  // accepted under the default overcommit policy). With `prefer_huge_pages` the range is advised
  // for transparent huge pages (MADV_HUGEPAGE; a no-op where THP is disabled), so that random
  // access over a large range does not miss the TLB on every page.
  static Result<MemoryMapping> MapAnonymous(size_t size, bool prefer_huge_pages);

  uint8_t* data() const { return static_cast<uint8_t*>(addr_); }
  size_t size() const { return size_; }
  bool valid() const { return addr_ != nullptr; }

  void Reset() {
    if (addr_ != nullptr) ::munmap(addr_, size_);
    addr_ = nullptr;
    size_ = 0;
  }

 private:
  void* addr_ = nullptr;
  size_t size_ = 0;
};

}  // namespace vfu
