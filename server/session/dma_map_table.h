// The DMA map table of one client: the guest memory ranges it shared with DMA_MAP, mmap()ed
// from the fds it passed (or recorded as not directly accessible when it passed none). It is
// the GuestMemory that devices read and write through, so it is where every guest address is
// checked. Maps must not overlap; unmaps must match a map exactly (or be "unmap all").
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "server/common/mapping.h"
#include "server/common/status.h"
#include "server/common/unique_fd.h"
#include "server/session/device.h"

namespace vfu {

class DmaMapTable : public GuestMemory {
 public:
  struct Region {
    uint64_t iova = 0;
    uint64_t size = 0;
    bool readable = false;
    bool writable = false;
    uint8_t* host = nullptr;  // the mapping's start; null when the client passed no fd
    // Shared so that Retain() can keep it mapped past an unmap.
    std::shared_ptr<const MemoryMapping> mapping;
  };

  explicit DmaMapTable(size_t max_regions) : max_regions_(max_regions) {}

  // Adds [iova, iova + size). With an fd: checks it is a regular file (memfd, hugetlbfs, tmpfs)
  // large enough for offset + size, and maps it with the permissions in `flags`. EEXIST on
  // overlap, ENOSPC when the table is full.
  Status Map(uint64_t iova, uint64_t size, uint64_t offset, uint32_t flags, UniqueFd fd);
  // Removes exactly [iova, iova + size); ENOENT when no map matches.
  Status Unmap(uint64_t iova, uint64_t size);
  void UnmapAll() {
    regions_.clear();
    last_hit_ = nullptr;
  }

  size_t size() const { return regions_.size(); }
  uint64_t mapped_bytes() const;
  const std::map<uint64_t, Region>& regions() const { return regions_; }

  Result<uint8_t*> Translate(uint64_t iova, uint64_t len, Access access) override;
  Status TranslateSegments(uint64_t iova, uint64_t len, Access access,
                           std::vector<iovec>* out) override;
  Status Read(uint64_t iova, std::span<uint8_t> out) override;
  Status Write(uint64_t iova, std::span<const uint8_t> data) override;
  std::shared_ptr<const void> Retain() override;

 private:
  // The region containing iova, or nullptr.
  Region* Find(uint64_t iova);
  Status CheckUsable(const Region& r, uint64_t iova, Access access) const;

  size_t max_regions_;
  std::map<uint64_t, Region> regions_;  // keyed by iova
  Region* last_hit_ = nullptr;          // the region Find returned last (reset on any change)
};

}  // namespace vfu
