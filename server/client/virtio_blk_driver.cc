#include "server/client/virtio_blk_driver.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>

namespace vfu::client {
namespace {

constexpr uint32_t kConfigRegion = wire::kPciConfigRegionIndex;
constexpr uint8_t kCapVendor = 0x09;
constexpr uint8_t kCapMsix = 0x11;
constexpr uint8_t kCommonCfg = 1, kNotifyCfg = 2, kDeviceCfg = 4;

// virtio common config offsets.
constexpr uint32_t kDevFeatSel = 0x00, kDevFeat = 0x04, kDrvFeatSel = 0x08, kDrvFeat = 0x0c;
constexpr uint32_t kMsixConfig = 0x10, kStatus = 0x14, kQSelect = 0x16, kQSize = 0x18;
constexpr uint32_t kQMsix = 0x1a, kQEnable = 0x1c, kQNotifyOff = 0x1e;
constexpr uint32_t kQDesc = 0x20, kQDriver = 0x28, kQDevice = 0x30;

constexpr uint64_t kVersion1 = 1ull << 32, kEventIdx = 1ull << 29, kIndirect = 1ull << 28;
constexpr uint64_t kBlkSegMax = 1ull << 2, kBlkRo = 1ull << 5, kBlkBlkSize = 1ull << 6;
constexpr uint64_t kBlkFlush = 1ull << 9, kBlkMq = 1ull << 12, kBlkDiscard = 1ull << 13;
constexpr uint64_t kBlkWriteZeroes = 1ull << 14;

constexpr uint16_t kDescNext = 1, kDescWrite = 2;
constexpr uint32_t kMetaBytes = 64;  // header (16) + segment (16) + status (1), per slot

uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

uint16_t LoadAcquire16(uint8_t* p) {
  return __atomic_load_n(reinterpret_cast<uint16_t*>(p), __ATOMIC_ACQUIRE);
}
void StoreRelease16(uint8_t* p, uint16_t v) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), v, __ATOMIC_RELEASE);
}

bool NeedEvent(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

}  // namespace

VirtioBlkDriver::VirtioBlkDriver(Client* client, VirtioBlkDriverOptions options)
    : client_(client), options_(options), queue_size_(options.queue_size) {}

VirtioBlkDriver::~VirtioBlkDriver() {
  if (!mapped_) return;
  try {
    (void)ResetDevice();
    (void)client_->DisableIrqs(wire::kPciMsixIrqIndex);
    (void)client_->DmaUnmap(options_.iova_base, memory_.size());
  } catch (...) {
    // Best effort: the connection may be gone; nothing else to release here.
  }
}

Result<std::unique_ptr<VirtioBlkDriver>> VirtioBlkDriver::Create(Client* client,
                                                                 VirtioBlkDriverOptions options) {
  if (options.queues == 0 || options.queue_size < 4 ||
      (options.queue_size & (options.queue_size - 1)) != 0) {
    return MakeError(EINVAL, "queue size must be a power of two >= 4 and queues >= 1");
  }
  std::unique_ptr<VirtioBlkDriver> d(new VirtioBlkDriver(client, options));
  VFU_RETURN_IF_ERROR(d->Init());
  return d;
}

Status VirtioBlkDriver::FindCapabilities() {
  uint8_t cfg[256];
  VFU_RETURN_IF_ERROR(client_->RegionRead(kConfigRegion, 0, cfg));
  uint8_t ptr = cfg[0x34] & 0xfc;
  bool have_common = false, have_notify = false, have_device = false;
  uint32_t msix_cap = 0;
  for (int hops = 0; ptr != 0 && hops < 48; ++hops) {
    uint8_t id = cfg[ptr];
    if (id == kCapMsix) msix_cap = ptr;
    if (id == kCapVendor) {
      uint8_t type = cfg[ptr + 3];
      uint8_t bar = cfg[ptr + 4];
      uint32_t off = Load<uint32_t>(cfg + ptr + 8);
      if (type == kCommonCfg && !have_common) {
        common_bar_ = bar, common_off_ = off, have_common = true;
      } else if (type == kNotifyCfg && !have_notify) {
        notify_bar_ = bar, notify_off_ = off, notify_mult_ = Load<uint32_t>(cfg + ptr + 16);
        have_notify = true;
      } else if (type == kDeviceCfg && !have_device) {
        device_bar_ = bar, device_off_ = off, have_device = true;
      }
    }
    ptr = cfg[ptr + 1] & 0xfc;
  }
  if (!have_common || !have_notify || !have_device || msix_cap == 0) {
    return MakeError(ENODEV, "not a modern virtio-pci device with MSI-X");
  }
  // Enable MSI-X (message control bit 15) and bus mastering.
  uint16_t ctrl = Load<uint16_t>(cfg + msix_cap + 2) | 0x8000;
  VFU_RETURN_IF_ERROR(client_->Write<uint16_t>(kConfigRegion, msix_cap + 2, ctrl));
  uint16_t cmd = Load<uint16_t>(cfg + 4) | 0x6;  // memory space + bus master
  VFU_RETURN_IF_ERROR(client_->Write<uint16_t>(kConfigRegion, 4, cmd));
  return Status::Ok();
}

Status VirtioBlkDriver::WriteCommon8(uint32_t off, uint8_t v) {
  return client_->Write<uint8_t>(common_bar_, common_off_ + off, v);
}
Status VirtioBlkDriver::WriteCommon16(uint32_t off, uint16_t v) {
  return client_->Write<uint16_t>(common_bar_, common_off_ + off, v);
}
Status VirtioBlkDriver::WriteCommon32(uint32_t off, uint32_t v) {
  return client_->Write<uint32_t>(common_bar_, common_off_ + off, v);
}
Status VirtioBlkDriver::WriteCommon64(uint32_t off, uint64_t v) {
  VFU_RETURN_IF_ERROR(WriteCommon32(off, static_cast<uint32_t>(v)));
  return WriteCommon32(off + 4, static_cast<uint32_t>(v >> 32));
}
Result<uint32_t> VirtioBlkDriver::ReadCommon32(uint32_t off) {
  return client_->Read<uint32_t>(common_bar_, common_off_ + off);
}
Result<uint16_t> VirtioBlkDriver::ReadCommon16(uint32_t off) {
  return client_->Read<uint16_t>(common_bar_, common_off_ + off);
}

uint8_t VirtioBlkDriver::ReadStatus() {
  auto s = client_->Read<uint8_t>(common_bar_, common_off_ + kStatus);
  return s.ok() ? *s : 0xff;
}

Status VirtioBlkDriver::ResetDevice() {
  VFU_RETURN_IF_ERROR(WriteCommon8(kStatus, 0));
  for (int i = 0; i < 1000; ++i) {
    if (ReadStatus() == 0) return Status::Ok();
  }
  return MakeError(EIO, "device did not reset");
}

Status VirtioBlkDriver::Init() {
  VFU_RETURN_IF_ERROR(FindCapabilities());
  VFU_RETURN_IF_ERROR(ResetDevice());
  VFU_RETURN_IF_ERROR(WriteCommon8(kStatus, 1 | 2));  // ACKNOWLEDGE | DRIVER

  uint64_t offered = 0;
  for (uint32_t sel = 0; sel < 2; ++sel) {
    VFU_RETURN_IF_ERROR(WriteCommon32(kDevFeatSel, sel));
    auto f = ReadCommon32(kDevFeat);
    if (!f) return f.error();
    offered |= uint64_t{*f} << (32 * sel);
  }
  uint64_t wanted = kVersion1 | kBlkSegMax | kBlkBlkSize | kBlkFlush | kBlkDiscard |
                    kBlkWriteZeroes | kBlkRo | (options_.queues > 1 ? kBlkMq : 0) |
                    (options_.event_idx ? kEventIdx : 0) | (options_.indirect ? kIndirect : 0);
  features_ = offered & wanted;
  if (!(features_ & kVersion1)) return MakeError(ENODEV, "device does not offer VERSION_1");
  for (uint32_t sel = 0; sel < 2; ++sel) {
    VFU_RETURN_IF_ERROR(WriteCommon32(kDrvFeatSel, sel));
    VFU_RETURN_IF_ERROR(WriteCommon32(kDrvFeat, static_cast<uint32_t>(features_ >> (32 * sel))));
  }
  VFU_RETURN_IF_ERROR(WriteCommon8(kStatus, 1 | 2 | 8));
  if (!(ReadStatus() & 8)) return MakeError(EIO, "device refused FEATURES_OK");

  // Device config: capacity at 0, blk_size at 20, num_queues at 34.
  auto cap = client_->Read<uint64_t>(device_bar_, device_off_ + 0);
  if (!cap) return cap.error();
  capacity_ = *cap;
  if (features_ & kBlkBlkSize) {
    auto bs = client_->Read<uint32_t>(device_bar_, device_off_ + 20);
    if (bs.ok()) block_size_ = *bs;
  }
  auto nq = client_->Read<uint16_t>(common_bar_, common_off_ + 0x12);
  if (!nq) return nq.error();
  if (*nq < options_.queues)
    return MakeError(EINVAL, "device has only " + std::to_string(*nq) + " queues");

  // Memory: per queue the rings, then per slot a meta area and a data buffer.
  uint64_t n = queue_size_;
  ring_bytes_per_queue_ = RoundUp(16 * n + 6 + 2 * n, 4096) + RoundUp(6 + 8 * n, 4096);
  slot_stride_ = RoundUp(kMetaBytes + options_.slot_bytes, 4096);
  slots_base_ = ring_bytes_per_queue_ * options_.queues;
  uint64_t total = slots_base_ + slot_stride_ * slots_per_queue() * options_.queues;
  total = RoundUp(total, 1 << 20);
  auto mem = DmaBuffer::Create(total, "vfu-blk-driver");
  if (!mem) return mem.error();
  memory_ = std::move(*mem);
  VFU_RETURN_IF_ERROR(client_->DmaMap(options_.iova_base, memory_.size(), memory_.fd(), 0));
  mapped_ = true;

  queues_.resize(options_.queues);
  std::vector<int> fds;
  UniqueFd config_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  fds.push_back(config_fd.get());
  for (uint16_t q = 0; q < options_.queues; ++q) {
    queues_[q].eventfd.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    fds.push_back(queues_[q].eventfd.get());
  }
  VFU_RETURN_IF_ERROR(client_->SetIrqEventfds(wire::kPciMsixIrqIndex, 0, fds));
  VFU_RETURN_IF_ERROR(WriteCommon16(kMsixConfig, 0));
  for (uint16_t q = 0; q < options_.queues; ++q) VFU_RETURN_IF_ERROR(SetupQueue(q));
  VFU_RETURN_IF_ERROR(WriteCommon8(kStatus, 1 | 2 | 8 | 4));  // DRIVER_OK
  uint8_t st = ReadStatus();
  if (!(st & 4) || (st & 64))
    return MakeError(EIO, "device did not accept DRIVER_OK (status " + std::to_string(st) + ")");
  return Status::Ok();
}

Status VirtioBlkDriver::SetupQueue(uint16_t index) {
  Queue& q = queues_[index];
  uint64_t base = ring_bytes_per_queue_ * index;
  uint64_t n = queue_size_;
  q.desc_iova = options_.iova_base + base;
  q.avail_iova = q.desc_iova + 16 * n;
  q.used_iova = options_.iova_base + base + RoundUp(16 * n + 6 + 2 * n, 4096);
  q.desc = memory_.data() + base;
  q.avail = q.desc + 16 * n;
  q.used = memory_.data() + (q.used_iova - options_.iova_base);
  q.tags.assign(slots_per_queue(), 0);
  VFU_RETURN_IF_ERROR(WriteCommon16(kQSelect, index));
  auto max = ReadCommon16(kQSize);
  if (!max) return max.error();
  if (*max < queue_size_) return MakeError(EINVAL, "queue size larger than the device's maximum");
  VFU_RETURN_IF_ERROR(WriteCommon16(kQSize, queue_size_));
  VFU_RETURN_IF_ERROR(WriteCommon16(kQMsix, static_cast<uint16_t>(index + 1)));
  auto off = ReadCommon16(kQNotifyOff);
  if (!off) return off.error();
  q.notify_off = *off;
  VFU_RETURN_IF_ERROR(WriteCommon64(kQDesc, q.desc_iova));
  VFU_RETURN_IF_ERROR(WriteCommon64(kQDriver, q.avail_iova));
  VFU_RETURN_IF_ERROR(WriteCommon64(kQDevice, q.used_iova));
  return WriteCommon16(kQEnable, 1);
}

uint64_t VirtioBlkDriver::SlotIova(uint16_t queue, uint16_t slot, uint32_t offset) const {
  return options_.iova_base + slots_base_ +
         slot_stride_ * (uint64_t{queue} * slots_per_queue() + slot) + offset;
}

uint8_t* VirtioBlkDriver::SlotHost(uint16_t queue, uint16_t slot, uint32_t offset) const {
  return memory_.data() + (SlotIova(queue, slot, offset) - options_.iova_base);
}

uint8_t* VirtioBlkDriver::slot_buffer(uint16_t queue, uint16_t slot) {
  return SlotHost(queue, slot, kMetaBytes);
}

Status VirtioBlkDriver::Submit(uint16_t queue, uint16_t slot, uint32_t type, uint64_t sector,
                               std::span<const std::pair<uint32_t, uint32_t>> data,
                               bool device_writes, uint64_t tag) {
  if (queue >= queues_.size() || slot >= slots_per_queue())
    return MakeError(EINVAL, "bad queue or slot");
  Queue& q = queues_[queue];
  // Meta area: header at 0, discard segment at 16, status at 32.
  uint8_t* meta = SlotHost(queue, slot, 0);
  std::memcpy(meta, &type, 4);
  std::memset(meta + 4, 0, 4);
  std::memcpy(meta + 8, &sector, 8);
  meta[32] = 0xff;
  // Slot s owns descriptors [3s, 3s + 2].
  uint16_t head = static_cast<uint16_t>(slot * 3);
  struct D {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
  } descs[3];
  int n = 0;
  descs[n++] = {SlotIova(queue, slot, 0), 16, 0};
  for (const auto& [offset, len] : data) {
    descs[n++] = {SlotIova(queue, slot, offset), len,
                  static_cast<uint16_t>(device_writes ? kDescWrite : 0)};
  }
  descs[n++] = {SlotIova(queue, slot, 32), 1, kDescWrite};
  for (int i = 0; i < n; ++i) {
    uint8_t* d = q.desc + 16 * (head + i);
    uint16_t flags = static_cast<uint16_t>(descs[i].flags | (i + 1 < n ? kDescNext : 0));
    uint16_t next = static_cast<uint16_t>(head + i + 1);
    std::memcpy(d, &descs[i].addr, 8);
    std::memcpy(d + 8, &descs[i].len, 4);
    std::memcpy(d + 12, &flags, 2);
    std::memcpy(d + 14, &next, 2);
  }
  q.tags[slot] = tag;
  uint16_t old_idx = q.avail_idx;
  std::memcpy(q.avail + 4 + 2 * (q.avail_idx % queue_size_), &head, 2);
  ++q.avail_idx;
  StoreRelease16(q.avail + 2, q.avail_idx);
  // Does the device want a kick? (Full fence: our index store before its flag load.)
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool kick;
  if (features_ & kEventIdx) {
    uint16_t avail_event = LoadAcquire16(q.used + 4 + 8 * queue_size_);
    kick = NeedEvent(avail_event, q.avail_idx, old_idx);
  } else {
    kick = !(LoadAcquire16(q.used) & 1);
  }
  if (kick) {
    ++kicks_;
    uint16_t value = queue;
    return client_->RegionWritePosted(notify_bar_, notify_off_ + q.notify_off * notify_mult_,
                                      {reinterpret_cast<uint8_t*>(&value), 2});
  }
  return Status::Ok();
}

Status VirtioBlkDriver::Read(uint16_t queue, uint16_t slot, uint64_t sector, uint32_t bytes,
                             uint64_t tag) {
  if (bytes > options_.slot_bytes) return MakeError(EINVAL, "request larger than a slot");
  std::pair<uint32_t, uint32_t> data[] = {{kMetaBytes, bytes}};
  return Submit(queue, slot, 0, sector, data, true, tag);
}

Status VirtioBlkDriver::Write(uint16_t queue, uint16_t slot, uint64_t sector, uint32_t bytes,
                              uint64_t tag) {
  if (bytes > options_.slot_bytes) return MakeError(EINVAL, "request larger than a slot");
  std::pair<uint32_t, uint32_t> data[] = {{kMetaBytes, bytes}};
  return Submit(queue, slot, 1, sector, data, false, tag);
}

Status VirtioBlkDriver::Flush(uint16_t queue, uint16_t slot, uint64_t tag) {
  return Submit(queue, slot, 4, 0, {}, false, tag);
}

Status VirtioBlkDriver::GetId(uint16_t queue, uint16_t slot, uint64_t tag) {
  std::pair<uint32_t, uint32_t> data[] = {{kMetaBytes, 20}};
  return Submit(queue, slot, 8, 0, data, true, tag);
}

Status VirtioBlkDriver::SubmitRange(uint16_t queue, uint16_t slot, uint32_t type, uint64_t sector,
                                    uint32_t sectors, uint64_t tag) {
  // One discard/write-zeroes segment {sector, num_sectors, flags} in the slot's meta area.
  uint8_t* seg = SlotHost(queue, slot, 16);
  uint32_t flags = 0;
  std::memcpy(seg, &sector, 8);
  std::memcpy(seg + 8, &sectors, 4);
  std::memcpy(seg + 12, &flags, 4);
  std::pair<uint32_t, uint32_t> data[] = {{16, 16}};
  return Submit(queue, slot, type, 0, data, false, tag);
}

Status VirtioBlkDriver::Discard(uint16_t queue, uint16_t slot, uint64_t sector, uint32_t sectors,
                                uint64_t tag) {
  return SubmitRange(queue, slot, 11, sector, sectors, tag);
}

Status VirtioBlkDriver::WriteZeroes(uint16_t queue, uint16_t slot, uint64_t sector,
                                    uint32_t sectors, uint64_t tag) {
  return SubmitRange(queue, slot, 13, sector, sectors, tag);
}

Status VirtioBlkDriver::Raw(uint16_t queue, uint16_t slot, uint32_t type, uint64_t sector,
                            uint32_t in_bytes, uint32_t out_bytes, uint64_t tag) {
  if (in_bytes > 0) {
    std::pair<uint32_t, uint32_t> data[] = {{kMetaBytes, in_bytes}};
    return Submit(queue, slot, type, sector, data, true, tag);
  }
  if (out_bytes > 0) {
    std::pair<uint32_t, uint32_t> data[] = {{kMetaBytes, out_bytes}};
    return Submit(queue, slot, type, sector, data, false, tag);
  }
  return Submit(queue, slot, type, sector, {}, false, tag);
}

Status VirtioBlkDriver::SubmitRaw(uint16_t queue, uint16_t first,
                                  std::span<const RawDescriptor> descs, uint16_t head,
                                  uint64_t tag) {
  Queue& q = queues_[queue];
  for (size_t i = 0; i < descs.size(); ++i) {
    uint8_t* d = q.desc + 16 * ((first + i) % queue_size_);
    std::memcpy(d, &descs[i].addr, 8);
    std::memcpy(d + 8, &descs[i].len, 4);
    std::memcpy(d + 12, &descs[i].flags, 2);
    std::memcpy(d + 14, &descs[i].next, 2);
  }
  if (head / 3 < slots_per_queue()) q.tags[head / 3] = tag;
  std::memcpy(q.avail + 4 + 2 * (q.avail_idx % queue_size_), &head, 2);
  ++q.avail_idx;
  StoreRelease16(q.avail + 2, q.avail_idx);
  ++kicks_;
  uint16_t value = queue;
  return client_->RegionWritePosted(notify_bar_, notify_off_ + q.notify_off * notify_mult_,
                                    {reinterpret_cast<uint8_t*>(&value), 2});
}

void VirtioBlkDriver::CorruptAvailIndex(uint16_t queue, uint16_t delta) {
  Queue& q = queues_[queue];
  q.avail_idx = static_cast<uint16_t>(q.avail_idx + delta);
  StoreRelease16(q.avail + 2, q.avail_idx);
  uint16_t value = queue;
  (void)client_->RegionWritePosted(notify_bar_, notify_off_ + q.notify_off * notify_mult_,
                                   {reinterpret_cast<uint8_t*>(&value), 2});
}

size_t VirtioBlkDriver::Poll(uint16_t queue, std::vector<BlkCompletion>* out) {
  Queue& q = queues_[queue];
  uint16_t used_idx = LoadAcquire16(q.used + 2);
  size_t n = 0;
  while (q.last_used != used_idx) {
    const uint8_t* elem = q.used + 4 + 8 * (q.last_used % queue_size_);
    uint32_t id = Load<uint32_t>(elem);
    uint32_t len = Load<uint32_t>(elem + 4);
    uint16_t slot = static_cast<uint16_t>(id / 3);
    BlkCompletion c;
    c.used_len = len;
    if (slot < slots_per_queue()) {
      c.tag = q.tags[slot];
      c.status = *SlotHost(queue, slot, 32);
    }
    out->push_back(c);
    ++q.last_used;
    ++n;
  }
  if ((features_ & kEventIdx) && !q.interrupts_suppressed) {
    // Interrupt at the next completion.
    StoreRelease16(q.avail + 4 + 2 * queue_size_, q.last_used);
  }
  return n;
}

void VirtioBlkDriver::SetInterruptsSuppressed(uint16_t queue, bool suppressed) {
  Queue& q = queues_[queue];
  q.interrupts_suppressed = suppressed;
  StoreRelease16(q.avail, suppressed ? 1 : 0);
  if (features_ & kEventIdx) {
    // With EVENT_IDX the flag is ignored: move used_event far away instead.
    StoreRelease16(q.avail + 4 + 2 * queue_size_,
                   suppressed ? static_cast<uint16_t>(q.last_used - 1) : q.last_used);
  }
}

bool VirtioBlkDriver::WaitForInterrupt(uint16_t queue, std::chrono::milliseconds timeout) {
  pollfd p{queues_[queue].eventfd.get(), POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return false;
  uint64_t v;
  return ::read(p.fd, &v, sizeof(v)) == sizeof(v);
}

Result<std::vector<BlkCompletion>> VirtioBlkDriver::WaitFor(uint16_t queue, size_t count,
                                                            std::chrono::milliseconds timeout,
                                                            bool use_interrupts) {
  std::vector<BlkCompletion> out;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (out.size() < count) {
    Poll(queue, &out);
    if (out.size() >= count) break;
    auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      return MakeError(ETIMEDOUT, "only " + std::to_string(out.size()) + " of " +
                                      std::to_string(count) + " completions arrived");
    }
    if (use_interrupts) {
      WaitForInterrupt(queue,
                       std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now));
    }
  }
  return out;
}

}  // namespace vfu::client
