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
#include "server/state/record.h"

namespace vfu {

class DmaMapTable : public GuestMemory {
 public:
  struct Region {
    uint64_t iova = 0;
    uint64_t size = 0;
    bool readable = false;
    bool writable = false;
    uint8_t* host = nullptr;  // the mapping's start; null when the client passed no fd
    bool has_fd = false;      // the client passed an fd
    // Shared so that Retain() can keep it mapped past an unmap.
    std::shared_ptr<const MemoryMapping> mapping;
    // The client's fd and offset, kept so that the map can be handed to another process with
    // the rest of the session's state (SaveState). Null when the client passed no fd, and for
    // maps beyond kMaxKeptFds (their state cannot be saved then).
    std::shared_ptr<const UniqueFd> fd;
    uint64_t offset = 0;
  };

  // At most this many maps keep their fd: a client cannot make the server hold more fds than
  // that (QEMU maps guest RAM in a few dozen regions at most).
  static constexpr size_t kMaxKeptFds = 256;

  explicit DmaMapTable(size_t max_regions) : max_regions_(max_regions) {}

  // Adds [iova, iova + size). With an fd: checks it is a regular file (memfd, hugetlbfs, tmpfs)
  // large enough for offset + size, and maps it with the permissions in `flags`. EEXIST on
  // overlap, ENOSPC when the table is full.
  Status Map(uint64_t iova, uint64_t size, uint64_t offset, uint32_t flags, UniqueFd fd);
  // Removes exactly [iova, iova + size); ENOENT when no map matches.
  Status Unmap(uint64_t iova, uint64_t size);
  void UnmapAll() {
    regions_.clear();
    kept_fds_ = 0;
    last_hit_ = nullptr;
  }

  // State that can leave the process (server/state/record.h): every map's range, permissions,
  // offset and fd. RestoreState maps them again from those fds (the Reader's, borrowed: it
  // duplicates them) into an empty table; all or nothing.
  // SaveState fails (E2BIG) when a map with an fd did not keep it (more than kMaxKeptFds maps).
  Status SaveState(state::Writer& w) const;
  Status RestoreState(state::Reader& r);

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
  size_t kept_fds_ = 0;
  std::map<uint64_t, Region> regions_;  // keyed by iova
  Region* last_hit_ = nullptr;          // the region Find returned last (reset on any change)
};

}  // namespace vfu
