#include "server/virtio/virtqueue.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <string>

namespace vfu::virtio {

// struct virtq_desc (2.7.5), little-endian like the x86 host.
struct SplitVirtqueue::Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};

namespace {

constexpr uint64_t kDescBytes = 16;
constexpr uint64_t kUsedElemBytes = 8;
static_assert(std::endian::native == std::endian::little, "virtio 1.x rings are little-endian");

// Ring sizes and offsets (2.7, "Virtqueue Part Sizes"): the trailing event words are always
// part of the layout, whether or not EVENT_IDX is negotiated.
constexpr uint64_t DescTableBytes(uint16_t size) { return kDescBytes * size; }
constexpr uint64_t AvailRingBytes(uint16_t size) { return 6 + 2ull * size; }
constexpr uint64_t UsedRingBytes(uint16_t size) { return 6 + kUsedElemBytes * size; }
constexpr size_t kAvailFlags = 0;
constexpr size_t kAvailIdx = 2;
constexpr size_t kAvailRing = 4;
constexpr size_t kUsedFlags = 0;
constexpr size_t kUsedIdx = 2;
constexpr size_t kUsedRing = 4;
size_t UsedEventOffset(uint16_t size) { return kAvailRing + 2ull * size; }
size_t AvailEventOffset(uint16_t size) { return kUsedRing + kUsedElemBytes * size; }

// Shared ring words are accessed with __atomic builtins: the driver writes them concurrently.
// Configure checked that the host pointers of the avail and used rings are suitably aligned.
uint16_t LoadAcquire16(const uint8_t* p) {
  return __atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_ACQUIRE);
}
uint16_t LoadRelaxed16(const uint8_t* p) {
  return __atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_RELAXED);
}
void StoreRelaxed16(uint8_t* p, uint16_t v) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), v, __ATOMIC_RELAXED);
}
void StoreRelease16(uint8_t* p, uint16_t v) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), v, __ATOMIC_RELEASE);
}
void StoreRelaxed32(uint8_t* p, uint32_t v) {
  __atomic_store_n(reinterpret_cast<uint32_t*>(p), v, __ATOMIC_RELAXED);
}

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

bool HostAligned(const uint8_t* p, uintptr_t align) {
  return (reinterpret_cast<uintptr_t>(p) & (align - 1)) == 0;
}

}  // namespace

void DescriptorChain::Clear() {
  head = 0;
  readable.clear();
  writable.clear();
  readable_bytes = 0;
  writable_bytes = 0;
  buffer_error = Status::Ok();
  last_writable_translated = false;
}

Status SplitVirtqueue::Configure(const QueueConfig& config, GuestMemory* memory) {
  Reset();
  if (memory == nullptr) return MakeError(EINVAL, "virtqueue has no guest memory");
  const uint16_t size = config.size;
  if (size == 0 || size > kMaxQueueSize || !std::has_single_bit(size)) {
    return MakeError(
        EINVAL, "virtqueue size " + std::to_string(size) + " is not a power of two in [1, 32768]");
  }
  // 2.7 alignment: descriptor table 16, available ring 2, used ring 4.
  if (config.desc_addr % 16 != 0 || config.avail_addr % 2 != 0 || config.used_addr % 4 != 0) {
    return MakeError(EINVAL, "virtqueue rings are misaligned (desc " + Hex(config.desc_addr) +
                                 ", avail " + Hex(config.avail_addr) + ", used " +
                                 Hex(config.used_addr) + ")");
  }
  auto desc = memory->Translate(config.desc_addr, DescTableBytes(size), GuestMemory::Access::kRead);
  if (!desc) return MakeError(desc.error().code, "descriptor table: " + desc.error().message);
  auto avail =
      memory->Translate(config.avail_addr, AvailRingBytes(size), GuestMemory::Access::kRead);
  if (!avail) return MakeError(avail.error().code, "available ring: " + avail.error().message);
  auto used = memory->Translate(config.used_addr, UsedRingBytes(size), GuestMemory::Access::kWrite);
  if (!used) return MakeError(used.error().code, "used ring: " + used.error().message);
  // The guest addresses are aligned; the host ones also depend on the DMA map's fd offset.
  // The ring words are accessed atomically, which needs natural alignment on the host too.
  if (!HostAligned(*avail, 2) || !HostAligned(*used, 4)) {
    return MakeError(EINVAL,
                     "virtqueue rings are misaligned in the host mapping (DMA map fd "
                     "offset and IOVA disagree in alignment)");
  }
  config_ = config;
  memory_ = memory;
  desc_ = *desc;
  avail_ = *avail;
  used_ = *used;
  return Status::Ok();
}

void SplitVirtqueue::Reset() {
  config_ = QueueConfig{};
  memory_ = nullptr;
  desc_ = nullptr;
  avail_ = nullptr;
  used_ = nullptr;
  last_avail_idx_ = 0;
  shadow_avail_idx_ = 0;
  used_idx_ = 0;
  signalled_used_ = 0;
  signalled_used_valid_ = false;
  notifications_enabled_ = true;
  indirect_segments_.clear();
  indirect_copy_.clear();
}

Result<bool> SplitVirtqueue::Pop(DescriptorChain* chain) {
  if (!ready()) return MakeError(EINVAL, "virtqueue is not configured");
  const uint16_t size = config_.size;
  if (shadow_avail_idx_ == last_avail_idx_) {
    // Acquire: the ring entries and descriptors the driver wrote before publishing this index
    // are visible to the reads below.
    const uint16_t avail_idx = LoadAcquire16(avail_ + kAvailIdx);
    const uint16_t pending = static_cast<uint16_t>(avail_idx - last_avail_idx_);
    if (pending > size) {
      return MakeError(EINVAL, "available index " + std::to_string(avail_idx) + " is " +
                                   std::to_string(pending) + " ahead of " +
                                   std::to_string(last_avail_idx_) + " (queue size " +
                                   std::to_string(size) + ")");
    }
    shadow_avail_idx_ = avail_idx;
    if (pending == 0) return false;
  }
  const uint16_t slot = last_avail_idx_ & (size - 1);
  const uint16_t head = LoadRelaxed16(avail_ + kAvailRing + 2ull * slot);
  if (head >= size) {
    return MakeError(EINVAL, "available ring entry " + std::to_string(slot) + " names descriptor " +
                                 std::to_string(head) + " (queue size " + std::to_string(size) +
                                 ")");
  }
  chain->Clear();
  chain->head = head;
  VFU_RETURN_IF_ERROR(WalkChain(head, chain));
  ++last_avail_idx_;
  if (config_.event_idx && notifications_enabled_) {
    StoreRelaxed16(used_ + AvailEventOffset(size), last_avail_idx_);
  }
  return true;
}

Status SplitVirtqueue::WalkChain(uint16_t head, DescriptorChain* chain) {
  const uint16_t size = config_.size;
  bool seen_writable = false;
  uint16_t index = head;
  // A chain visits each descriptor at most once, so more than `size` steps means a loop.
  for (uint32_t count = 1;; ++count) {
    if (count > size) {
      return MakeError(EINVAL, "descriptor chain at head " + std::to_string(head) +
                                   " is longer than the queue size " + std::to_string(size) +
                                   " (a loop)");
    }
    // One copy of the descriptor: each field is read exactly once, whatever the driver does
    // to the table meanwhile.
    Desc d;
    std::memcpy(&d, desc_ + kDescBytes * index, sizeof(d));
    if (d.flags & kDescFlagIndirect) return WalkIndirect(d, &seen_writable, chain);
    VFU_RETURN_IF_ERROR(AddBuffer(d, &seen_writable, chain));
    if (!(d.flags & kDescFlagNext)) return Status::Ok();
    if (d.next >= size) {
      return MakeError(EINVAL, "descriptor " + std::to_string(index) + " links to " +
                                   std::to_string(d.next) + " (queue size " + std::to_string(size) +
                                   ")");
    }
    index = d.next;
  }
}

Status SplitVirtqueue::WalkIndirect(const Desc& desc, bool* seen_writable, DescriptorChain* chain) {
  if (!config_.indirect) {
    return MakeError(EINVAL, "indirect descriptor but VIRTIO_F_INDIRECT_DESC not negotiated");
  }
  // 2.7.5.3.1: INDIRECT and NEXT together are forbidden, so an indirect descriptor ends the
  // chain (it may follow direct descriptors). 2.7.5.3.2: WRITE on it is ignored.
  if (desc.flags & kDescFlagNext) {
    return MakeError(EINVAL, "indirect descriptor also has the NEXT flag");
  }
  if (desc.len == 0 || desc.len % kDescBytes != 0) {
    return MakeError(EINVAL, "indirect table length " + std::to_string(desc.len) +
                                 " is not a non-zero multiple of 16");
  }
  const uint32_t entries = desc.len / kDescBytes;
  const uint32_t max_entries = std::max<uint32_t>(config_.size, kMaxIndirectEntries);
  if (entries > max_entries) {
    return MakeError(EINVAL, "indirect table has " + std::to_string(entries) +
                                 " descriptors (at most " + std::to_string(max_entries) + ")");
  }
  indirect_segments_.clear();
  Status mapped = memory_->TranslateSegments(desc.addr, desc.len, GuestMemory::Access::kRead,
                                             &indirect_segments_);
  if (!mapped.ok()) {
    return MakeError(mapped.code(), "indirect table [" + Hex(desc.addr) + ", +" + Hex(desc.len) +
                                        "): " + mapped.message());
  }
  const uint8_t* table;
  if (indirect_segments_.size() == 1) {
    table = static_cast<const uint8_t*>(indirect_segments_[0].iov_base);
  } else {
    // The table spans adjacent DMA maps: copy it into one piece (rare).
    indirect_copy_.resize(desc.len);
    size_t done = 0;
    for (const iovec& seg : indirect_segments_) {
      std::memcpy(indirect_copy_.data() + done, seg.iov_base, seg.iov_len);
      done += seg.iov_len;
    }
    table = indirect_copy_.data();
  }
  uint32_t index = 0;
  for (uint32_t count = 1;; ++count) {
    if (count > entries) {
      return MakeError(EINVAL, "indirect chain is longer than its table (" +
                                   std::to_string(entries) + " descriptors; a loop)");
    }
    Desc d;
    std::memcpy(&d, table + kDescBytes * index, sizeof(d));
    if (d.flags & kDescFlagIndirect) {
      return MakeError(EINVAL, "nested indirect descriptor in an indirect table");
    }
    VFU_RETURN_IF_ERROR(AddBuffer(d, seen_writable, chain));
    if (!(d.flags & kDescFlagNext)) return Status::Ok();
    if (d.next >= entries) {
      return MakeError(EINVAL, "indirect descriptor " + std::to_string(index) + " links to " +
                                   std::to_string(d.next) + " (table of " +
                                   std::to_string(entries) + ")");
    }
    index = d.next;
  }
}

Status SplitVirtqueue::AddBuffer(const Desc& desc, bool* seen_writable, DescriptorChain* chain) {
  const bool writable = desc.flags & kDescFlagWrite;
  if (writable) {
    *seen_writable = true;
  } else if (*seen_writable) {
    // 2.7.4.2: device-writable descriptors come after all device-readable ones.
    return MakeError(EINVAL, "device-readable descriptor after a device-writable one");
  }
  if (desc.len == 0) return Status::Ok();
  Status s = memory_->TranslateSegments(
      desc.addr, desc.len, writable ? GuestMemory::Access::kWrite : GuestMemory::Access::kRead,
      writable ? &chain->writable : &chain->readable);
  if (writable) chain->last_writable_translated = s.ok();
  if (!s.ok()) {
    if (chain->buffer_error.ok()) {
      chain->buffer_error =
          MakeError(s.code(), std::string(writable ? "writable" : "readable") + " buffer [" +
                                  Hex(desc.addr) + ", +" + Hex(desc.len) + "): " + s.message());
    }
    return Status::Ok();
  }
  (writable ? chain->writable_bytes : chain->readable_bytes) += desc.len;
  return Status::Ok();
}

void SplitVirtqueue::Push(uint16_t head, uint32_t written) {
  if (!ready()) return;
  uint8_t* elem = used_ + kUsedRing + kUsedElemBytes * (used_idx_ & (config_.size - 1));
  StoreRelaxed32(elem, head);
  StoreRelaxed32(elem + 4, written);
  ++used_idx_;
  // Release: the element above is visible before the driver can see the new index.
  StoreRelease16(used_ + kUsedIdx, used_idx_);
}

bool SplitVirtqueue::ShouldInterrupt() {
  if (!ready()) return false;
  // Orders the used->idx store(s) before the read of the driver's suppression state: the
  // driver (re-)enables interrupts and then re-checks used->idx, so one of us sees the other.
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  if (!config_.event_idx) return !(LoadRelaxed16(avail_ + kAvailFlags) & kAvailFlagNoInterrupt);
  const uint16_t old_idx = signalled_used_;
  const uint16_t new_idx = used_idx_;
  const bool valid = signalled_used_valid_;
  signalled_used_ = new_idx;
  signalled_used_valid_ = true;
  if (!valid) return true;
  const uint16_t used_event = LoadRelaxed16(avail_ + UsedEventOffset(config_.size));
  // vring_need_event(): interrupt when used_event lies in [old_idx, new_idx).
  return static_cast<uint16_t>(new_idx - used_event - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

bool SplitVirtqueue::HasAvailable() const {
  if (!ready()) return false;
  if (shadow_avail_idx_ != last_avail_idx_) return true;
  return LoadAcquire16(avail_ + kAvailIdx) != last_avail_idx_;
}

bool SplitVirtqueue::EnableNotifications() {
  if (!ready()) return false;
  notifications_enabled_ = true;
  if (config_.event_idx) {
    StoreRelaxed16(used_ + AvailEventOffset(config_.size), last_avail_idx_);
  } else {
    StoreRelaxed16(used_ + kUsedFlags, 0);
  }
  // Orders the store above before the re-read of avail->idx: a driver that published work
  // before seeing notifications enabled did not kick, and the re-read then finds that work.
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  return HasAvailable();
}

void SplitVirtqueue::DisableNotifications() {
  if (!ready()) return;
  notifications_enabled_ = false;
  // With EVENT_IDX the flag stays 0 (2.7.10: the driver ignores it then); avail_event simply
  // stops moving, so the driver stops kicking once it passes it.
  if (!config_.event_idx) StoreRelaxed16(used_ + kUsedFlags, kUsedFlagNoNotify);
}

inline constexpr uint16_t kVirtqueueStateVersion = 1;

void SplitVirtqueue::SaveState(state::Writer& w) const {
  size_t mark = w.BeginSection(state::Tag::kVirtqueue, kVirtqueueStateVersion);
  w.Bool(ready());
  w.U16(config_.size);
  w.U64(config_.desc_addr);
  w.U64(config_.avail_addr);
  w.U64(config_.used_addr);
  w.Bool(config_.event_idx);
  w.Bool(config_.indirect);
  w.U16(last_avail_idx_);
  w.U16(used_idx_);
  w.U16(signalled_used_);
  w.Bool(signalled_used_valid_);
  w.Bool(notifications_enabled_);
  w.EndSection(mark);
}

Status SplitVirtqueue::RestoreState(state::Reader& r, GuestMemory* memory) {
  state::Reader s = r.Section(state::Tag::kVirtqueue, kVirtqueueStateVersion, nullptr);
  bool was_ready = s.Bool();
  QueueConfig config;
  config.size = s.U16();
  config.desc_addr = s.U64();
  config.avail_addr = s.U64();
  config.used_addr = s.U64();
  config.event_idx = s.Bool();
  config.indirect = s.Bool();
  uint16_t last_avail = s.U16();
  uint16_t used = s.U16();
  uint16_t signalled_used = s.U16();
  bool signalled_used_valid = s.Bool();
  bool notifications_enabled = s.Bool();
  s.ExpectEnd();
  if (!s.ok()) return s.status();
  if (!r.ok()) return r.status();
  // Configure checks the rings against the restored memory; only then does anything change.
  SplitVirtqueue restored;
  if (was_ready) {
    if (Status st = restored.Configure(config, memory); !st.ok()) {
      return MakeError(st.code(), "virtqueue state: " + st.message());
    }
  }
  *this = std::move(restored);
  last_avail_idx_ = last_avail;
  shadow_avail_idx_ = last_avail;
  used_idx_ = used;
  signalled_used_ = signalled_used;
  signalled_used_valid_ = signalled_used_valid;
  notifications_enabled_ = notifications_enabled;
  return Status::Ok();
}

}  // namespace vfu::virtio
