#include "server/session/dma_map_table.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstring>
#include <iterator>
#include <string>

#include "server/common/checked_math.h"
#include "server/protocol/wire.h"

namespace vfu {
namespace {

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

Status DmaMapTable::Map(uint64_t iova, uint64_t size, uint64_t offset, uint32_t flags,
                        UniqueFd fd) {
  if (size == 0 || !RangeFitsAddressSpace(iova, size)) {
    return MakeError(EINVAL, "DMA range is empty or wraps");
  }
  if (regions_.size() >= max_regions_) {
    return MakeError(ENOSPC, "DMA map table is full (" + std::to_string(max_regions_) + " maps)");
  }
  // Overlap: the first region at or after iova, and the one before it.
  auto next = regions_.lower_bound(iova);
  if (next != regions_.end() && RangesOverlap(iova, size, next->second.iova, next->second.size)) {
    return MakeError(EEXIST, "DMA map [" + Hex(iova) + ", +" + Hex(size) +
                                 ") overlaps the map at " + Hex(next->second.iova));
  }
  if (next != regions_.begin()) {
    auto prev = std::prev(next);
    if (RangesOverlap(iova, size, prev->second.iova, prev->second.size)) {
      return MakeError(EEXIST, "DMA map [" + Hex(iova) + ", +" + Hex(size) +
                                   ") overlaps the map at " + Hex(prev->second.iova));
    }
  }
  Region region;
  region.iova = iova;
  region.size = size;
  region.readable = flags & wire::kDmaFlagRead;
  region.writable = flags & wire::kDmaFlagWrite;
  if (fd.valid()) {
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return MakeError(errno, "fstat of the DMA fd failed");
    // Mapping past the end of a file would turn a later guest access into SIGBUS.
    if (!S_ISREG(st.st_mode)) return MakeError(EINVAL, "DMA fd is not a regular file or memfd");
    if (!RangeWithin(offset, size, static_cast<uint64_t>(st.st_size))) {
      return MakeError(EINVAL, "DMA map offset " + Hex(offset) + " + size " + Hex(size) +
                                   " is beyond the end of the fd (" + Hex(st.st_size) + ")");
    }
    int prot = (region.readable ? PROT_READ : 0) | (region.writable ? PROT_WRITE : 0);
    auto mapping = MemoryMapping::Map(fd.get(), offset, size, prot);
    if (!mapping) return mapping.error();
    region.mapping = std::make_shared<const MemoryMapping>(std::move(*mapping));
    region.host = region.mapping->data();
    region.offset = offset;
    region.has_fd = true;
    if (kept_fds_ < kMaxKeptFds) {
      region.fd = std::make_shared<const UniqueFd>(std::move(fd));
      ++kept_fds_;
    }
  }
  regions_.emplace(iova, std::move(region));
  last_hit_ = nullptr;
  return Status::Ok();
}

Status DmaMapTable::Unmap(uint64_t iova, uint64_t size) {
  auto it = regions_.find(iova);
  if (it == regions_.end() || it->second.size != size) {
    return MakeError(ENOENT, "no DMA map is exactly [" + Hex(iova) + ", +" + Hex(size) + ")");
  }
  if (it->second.fd != nullptr) --kept_fds_;
  regions_.erase(it);
  last_hit_ = nullptr;
  return Status::Ok();
}

uint64_t DmaMapTable::mapped_bytes() const {
  uint64_t total = 0;
  for (const auto& [iova, r] : regions_) total += r.size;
  return total;
}

std::shared_ptr<const void> DmaMapTable::Retain() {
  auto kept = std::make_shared<std::vector<std::shared_ptr<const MemoryMapping>>>();
  for (const auto& [iova, r] : regions_) {
    if (r.mapping) kept->push_back(r.mapping);
  }
  return kept;
}

DmaMapTable::Region* DmaMapTable::Find(uint64_t iova) {
  // Consecutive accesses nearly always hit the same map (guest RAM is a few large maps).
  if (last_hit_ != nullptr && iova - last_hit_->iova < last_hit_->size) return last_hit_;
  auto it = regions_.upper_bound(iova);
  if (it == regions_.begin()) return nullptr;
  --it;
  Region& r = it->second;
  if (iova - r.iova >= r.size) return nullptr;
  last_hit_ = &r;
  return &r;
}

Status DmaMapTable::CheckUsable(const Region& r, uint64_t iova, Access access) const {
  if (r.host == nullptr) {
    return MakeError(EFAULT, "guest range at " + Hex(iova) + " was mapped without an fd");
  }
  if ((access == Access::kRead && !r.readable) || (access == Access::kWrite && !r.writable)) {
    return MakeError(EACCES, "guest range at " + Hex(iova) + " does not allow this access");
  }
  return Status::Ok();
}

Result<uint8_t*> DmaMapTable::Translate(uint64_t iova, uint64_t len, Access access) {
  Region* r = Find(iova);
  if (r == nullptr || !RangeWithin(iova - r->iova, len, r->size)) {
    return MakeError(
        EFAULT, "guest range [" + Hex(iova) + ", +" + Hex(len) + ") is not inside one DMA map");
  }
  VFU_RETURN_IF_ERROR(CheckUsable(*r, iova, access));
  return r->host + (iova - r->iova);
}

Status DmaMapTable::TranslateSegments(uint64_t iova, uint64_t len, Access access,
                                      std::vector<iovec>* out) {
  if (!RangeFitsAddressSpace(iova, len)) return MakeError(EFAULT, "guest range wraps");
  size_t first = out->size();
  uint64_t done = 0;
  while (done < len) {
    Region* r = Find(iova + done);
    if (r == nullptr) {
      out->resize(first);
      return MakeError(EFAULT, "guest address " + Hex(iova + done) + " is not mapped");
    }
    uint64_t offset = iova + done - r->iova;
    uint64_t chunk = std::min<uint64_t>(r->size - offset, len - done);
    Status usable = CheckUsable(*r, iova + done, access);
    if (!usable.ok()) {
      out->resize(first);
      return usable;
    }
    out->push_back({r->host + offset, chunk});
    done += chunk;
  }
  return Status::Ok();
}

Status DmaMapTable::Read(uint64_t iova, std::span<uint8_t> out) {
  if (!RangeFitsAddressSpace(iova, out.size())) return MakeError(EFAULT, "guest range wraps");
  size_t done = 0;
  while (done < out.size()) {
    Region* r = Find(iova + done);
    if (r == nullptr)
      return MakeError(EFAULT, "guest address " + Hex(iova + done) + " is not mapped");
    uint64_t in_region = r->size - (iova + done - r->iova);
    uint64_t chunk = std::min<uint64_t>(in_region, out.size() - done);
    auto p = Translate(iova + done, chunk, Access::kRead);
    if (!p) return p.error();
    std::memcpy(out.data() + done, *p, chunk);
    done += chunk;
  }
  return Status::Ok();
}

Status DmaMapTable::Write(uint64_t iova, std::span<const uint8_t> data) {
  if (!RangeFitsAddressSpace(iova, data.size())) return MakeError(EFAULT, "guest range wraps");
  size_t done = 0;
  while (done < data.size()) {
    Region* r = Find(iova + done);
    if (r == nullptr)
      return MakeError(EFAULT, "guest address " + Hex(iova + done) + " is not mapped");
    uint64_t in_region = r->size - (iova + done - r->iova);
    uint64_t chunk = std::min<uint64_t>(in_region, data.size() - done);
    auto p = Translate(iova + done, chunk, Access::kWrite);
    if (!p) return p.error();
    std::memcpy(*p, data.data() + done, chunk);
    done += chunk;
  }
  return Status::Ok();
}

inline constexpr uint16_t kDmaMapsStateVersion = 1;

Status DmaMapTable::SaveState(state::Writer& w) const {
  for (const auto& [iova, r] : regions_) {
    if (r.has_fd && r.fd == nullptr) {
      return MakeError(E2BIG, "the DMA map at " + Hex(iova) + " did not keep its fd (more than " +
                                  std::to_string(kMaxKeptFds) + " maps with fds)");
    }
  }
  size_t mark = w.BeginSection(state::Tag::kDmaMaps, kDmaMapsStateVersion);
  w.U32(static_cast<uint32_t>(regions_.size()));
  for (const auto& [iova, r] : regions_) {
    w.U64(r.iova);
    w.U64(r.size);
    w.U64(r.offset);
    w.U32((r.readable ? wire::kDmaFlagRead : 0) | (r.writable ? wire::kDmaFlagWrite : 0));
    w.Bool(r.fd != nullptr);
    if (r.fd != nullptr) w.Fd(r.fd->get());
  }
  w.EndSection(mark);
  return Status::Ok();
}

Status DmaMapTable::RestoreState(state::Reader& r) {
  state::Reader s = r.Section(state::Tag::kDmaMaps, kDmaMapsStateVersion, nullptr);
  uint32_t count = s.U32();
  if (s.ok() && count > max_regions_) {
    s.Fail(std::to_string(count) + " maps, this session allows " + std::to_string(max_regions_));
  }
  DmaMapTable restored(max_regions_);
  for (uint32_t i = 0; i < count && s.ok(); ++i) {
    uint64_t iova = s.U64();
    uint64_t size = s.U64();
    uint64_t offset = s.U64();
    uint32_t flags = s.U32();
    bool has_fd = s.Bool();
    int fd = has_fd ? s.Fd() : -1;
    if (!s.ok()) break;
    UniqueFd own;
    if (has_fd) {
      own.Reset(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
      if (!own) return MakeError(errno, "DMA map state: cannot duplicate a map's fd");
    }
    if (Status st = restored.Map(iova, size, offset, flags, std::move(own)); !st.ok()) {
      return MakeError(st.code(), "DMA map state: " + st.message());
    }
  }
  s.ExpectEnd();
  if (!s.ok()) return s.status();
  if (!r.ok()) return r.status();
  regions_ = std::move(restored.regions_);
  kept_fds_ = restored.kept_fds_;
  last_hit_ = nullptr;
  return Status::Ok();
}

}  // namespace vfu
