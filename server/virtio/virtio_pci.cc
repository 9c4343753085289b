#include "server/virtio/virtio_pci.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "server/common/log.h"

namespace vfu::virtio {
namespace {

constexpr uint16_t kVirtioVendorId = 0x1af4;
constexpr uint16_t kModernDeviceIdBase = 0x1040;

// virtio_pci_cap cfg_type values.
constexpr uint8_t kCapCommonCfg = 1;
constexpr uint8_t kCapNotifyCfg = 2;
constexpr uint8_t kCapIsrCfg = 3;
constexpr uint8_t kCapDeviceCfg = 4;

struct Field {
  uint32_t offset;
  uint32_t size;
};
constexpr Field kCommonFields[] = {
    {common::kDeviceFeatureSelect, 4}, {common::kDeviceFeature, 4},
    {common::kDriverFeatureSelect, 4}, {common::kDriverFeature, 4},
    {common::kConfigMsixVector, 2},    {common::kNumQueues, 2},
    {common::kDeviceStatus, 1},        {common::kConfigGeneration, 1},
    {common::kQueueSelect, 2},         {common::kQueueSize, 2},
    {common::kQueueMsixVector, 2},     {common::kQueueEnable, 2},
    {common::kQueueNotifyOff, 2},      {common::kQueueDesc, 8},
    {common::kQueueDriver, 8},         {common::kQueueDevice, 8},
    {common::kQueueNotifyData, 2},     {common::kQueueReset, 2},
};

uint32_t DefaultClassCode(uint16_t device_type) {
  switch (device_type) {
    case 1:
      return 0x020000;  // network controller
    case 2:
      return 0x010000;  // mass storage (SCSI), as QEMU's virtio-blk
    default:
      return 0xff0000;
  }
}

// A virtio_pci_cap body after the vendor-cap header (cap_vndr, cap_next, cap_len):
// cfg_type, bar, id, padding[2], offset (le32), length (le32) [, extra].
std::vector<uint8_t> VirtioCapBody(uint8_t cfg_type, uint8_t bar, uint32_t offset,
                                   uint32_t length) {
  std::vector<uint8_t> b(13, 0);
  b[0] = cfg_type;
  b[1] = bar;
  std::memcpy(&b[5], &offset, 4);
  std::memcpy(&b[9], &length, 4);
  return b;
}

}  // namespace

const char* PollModeName(PollMode mode) {
  switch (mode) {
    case PollMode::kBusy:
      return "busy";
    case PollMode::kAdaptive:
      return "adaptive";
    case PollMode::kInterrupt:
      return "interrupt";
  }
  return "adaptive";
}

bool ParsePollMode(const std::string& text, PollMode* mode) {
  if (text == "busy")
    *mode = PollMode::kBusy;
  else if (text == "adaptive")
    *mode = PollMode::kAdaptive;
  else if (text == "interrupt")
    *mode = PollMode::kInterrupt;
  else
    return false;
  return true;
}

VirtioPciDevice::VirtioPciDevice(std::unique_ptr<VirtioDevice> device, VirtioPciOptions options)
    : PciDevice(
          {.vendor_id = kVirtioVendorId,
           .device_id = options.pci_device_id_override != 0
                            ? options.pci_device_id_override
                            : static_cast<uint16_t>(kModernDeviceIdBase + device->device_type()),
           .subsystem_vendor_id = kVirtioVendorId,
           .subsystem_id = 0x1100,
           .revision = 1,
           .class_code = options.class_code != 0 ? options.class_code
                                                 : DefaultClassCode(device->device_type())},
          pci::kExpressConfigSize, /*has_intx=*/true),
      device_(std::move(device)),
      options_(options),
      queues_(device_->num_queues()) {
  for (Queue& q : queues_) q.size = device_->max_queue_size();
}

VirtioPciDevice::~VirtioPciDevice() { device_->Reset(); }

Result<std::unique_ptr<VirtioPciDevice>> VirtioPciDevice::Create(
    std::unique_ptr<VirtioDevice> device, VirtioPciOptions options) {
  if (device->num_queues() == 0 || device->max_queue_size() == 0 ||
      !std::has_single_bit(device->max_queue_size())) {
    return MakeError(EINVAL, "a virtio device needs >= 1 queue of a power-of-two size");
  }
  std::unique_ptr<VirtioPciDevice> dev(new VirtioPciDevice(std::move(device), options));
  VFU_RETURN_IF_ERROR(dev->Init());
  return dev;
}

Status VirtioPciDevice::Init() {
  uint32_t vectors = num_queues() + 1u;  // config + one per queue
  VFU_RETURN_IF_ERROR(AddBar(kMsixBar, {.size = 0x1000, .flags = 0}));
  VFU_RETURN_IF_ERROR(
      AddBar(kVirtioBar, {.size = kVirtioBarSize, .flags = pci::kBarMem64 | pci::kBarPrefetch}));
  VFU_RETURN_IF_ERROR(EnableMsix(vectors, kMsixBar, 0x0, kMsixBar, 0x800));
  auto add = [&](std::vector<uint8_t> body) -> Status {
    auto off = config().AddVendorCapability(body);
    return off.ok() ? Status::Ok() : Status(off.error());
  };
  VFU_RETURN_IF_ERROR(
      add(VirtioCapBody(kCapCommonCfg, kVirtioBar, kCommonCfgOffset, kCommonCfgSize)));
  VFU_RETURN_IF_ERROR(add(VirtioCapBody(kCapIsrCfg, kVirtioBar, kIsrOffset, 1)));
  VFU_RETURN_IF_ERROR(add(VirtioCapBody(kCapDeviceCfg, kVirtioBar, kDeviceCfgOffset,
                                        std::max<uint32_t>(device_->config_size(), 4))));
  std::vector<uint8_t> notify =
      VirtioCapBody(kCapNotifyCfg, kVirtioBar, kNotifyOffset, kNotifyOffMultiplier * num_queues());
  uint32_t multiplier = kNotifyOffMultiplier;
  notify.insert(notify.end(), reinterpret_cast<uint8_t*>(&multiplier),
                reinterpret_cast<uint8_t*>(&multiplier) + 4);
  VFU_RETURN_IF_ERROR(add(notify));
  config().SnapshotResetState();
  return Status::Ok();
}

uint64_t VirtioPciDevice::offered_features() const {
  return device_->device_features() | kFeatureVersion1 | kFeatureEventIdx | kFeatureIndirectDesc;
}

// --- VfioDevice -----------------------------------------------------------------------------

void VirtioPciDevice::Attach(DeviceContext* context) { PciDevice::Attach(context); }

void VirtioPciDevice::Detach() {
  // The client's memory is about to go away: stop using it (in-flight I/O finishes first).
  // The device keeps its data; the driver of the next client starts from reset.
  ResetTransport();
  PciDevice::Detach();
}

void VirtioPciDevice::OnDmaRangeRemoved(uint64_t iova, uint64_t size) {
  if (!active_) return;
  // The spec wants every reference into the range dropped before the reply: in-flight
  // buffers may live there, so finish them first.
  device_->DrainInflight();
  // Firmware and QEMU remap memory while a driver runs (SeaBIOS drives virtio-blk during
  // boot): a queue whose rings were in the range pauses until they are mapped again.
  for (Queue& q : queues_) {
    if (!q.enabled || !q.ring.ready() || !RingsOverlap(q, iova, size)) continue;
    q.saved_last_avail = q.ring.last_avail_idx();
    q.saved_used = q.ring.used_idx();
    q.ring.Reset();
    q.stale = true;
    any_stale_ = true;
  }
}

bool VirtioPciDevice::RingsOverlap(const Queue& q, uint64_t iova, uint64_t size) const {
  auto overlaps = [&](uint64_t base, uint64_t len) {
    return base < iova + size && iova < base + len;
  };
  uint64_t n = q.size;
  return overlaps(q.desc, 16 * n) || overlaps(q.driver, 6 + 2 * n) || overlaps(q.device, 6 + 8 * n);
}

void VirtioPciDevice::RevalidateStaleQueues() {
  any_stale_ = false;
  for (Queue& q : queues_) {
    if (!q.stale) continue;
    if (q.ring.Configure(MakeQueueConfig(q), memory()).ok()) {
      q.ring.set_indices(q.saved_last_avail, q.saved_used);
      if (!notifications_enabled_) q.ring.DisableNotifications();
      q.stale = false;
    } else {
      any_stale_ = true;
    }
  }
}

QueueConfig VirtioPciDevice::MakeQueueConfig(const Queue& q) const {
  return QueueConfig{q.size,
                     q.desc,
                     q.driver,
                     q.device,
                     (driver_features_ & kFeatureEventIdx) != 0,
                     (driver_features_ & kFeatureIndirectDesc) != 0};
}

// --- BAR access -----------------------------------------------------------------------------

Status VirtioPciDevice::BarRead(int bar, uint64_t offset, std::span<uint8_t> out) {
  std::fill(out.begin(), out.end(), 0);
  if (bar != kVirtioBar) return Status::Ok();
  if (offset < kCommonCfgOffset + kCommonCfgSize) {
    ReadCommon(offset - kCommonCfgOffset, out);
  } else if (offset >= kIsrOffset && offset < kIsrOffset + 4) {
    // Reading the ISR clears it and deasserts INTx.
    out[0] = isr_;
    isr_ = 0;
    SetIntx(false);
  } else if (offset >= kDeviceCfgOffset && offset < kDeviceCfgOffset + 0x1000) {
    uint64_t rel = offset - kDeviceCfgOffset;
    uint32_t size = device_->config_size();
    if (rel < size) {
      size_t n = std::min<uint64_t>(out.size(), size - rel);
      device_->ReadConfig(static_cast<uint32_t>(rel), out.first(n));
    }
  }
  return Status::Ok();
}

Status VirtioPciDevice::BarWrite(int bar, uint64_t offset, std::span<const uint8_t> data) {
  if (bar != kVirtioBar) return Status::Ok();
  if (offset < kCommonCfgOffset + kCommonCfgSize) {
    WriteCommon(offset - kCommonCfgOffset, data);
  } else if (offset >= kDeviceCfgOffset && offset < kDeviceCfgOffset + 0x1000) {
    uint64_t rel = offset - kDeviceCfgOffset;
    if (rel < device_->config_size()) {
      size_t n = std::min<uint64_t>(data.size(), device_->config_size() - rel);
      device_->WriteConfig(static_cast<uint32_t>(rel), data.first(n));
    }
  } else if (offset >= kNotifyOffset &&
             offset < kNotifyOffset + kNotifyOffMultiplier * num_queues()) {
    // A kick. The poll loop services the rings on its next round; nothing else to do here.
    ++stats_.kicks;
  }
  return Status::Ok();
}

void VirtioPciDevice::ReadCommon(uint64_t offset, std::span<uint8_t> out) {
  uint8_t image[kCommonCfgSize] = {};
  auto put = [&](uint32_t off, uint64_t v, uint32_t size) { std::memcpy(image + off, &v, size); };
  uint64_t features = offered_features();
  put(common::kDeviceFeatureSelect, device_feature_select_, 4);
  put(common::kDeviceFeature,
      device_feature_select_ < 2 ? (features >> (32 * device_feature_select_)) & 0xffffffffu : 0,
      4);
  put(common::kDriverFeatureSelect, driver_feature_select_, 4);
  put(common::kDriverFeature,
      driver_feature_select_ < 2 ? (driver_features_ >> (32 * driver_feature_select_)) & 0xffffffffu
                                 : 0,
      4);
  put(common::kConfigMsixVector, config_msix_vector_, 2);
  put(common::kNumQueues, num_queues(), 2);
  put(common::kDeviceStatus, status_, 1);
  put(common::kConfigGeneration, config_generation_, 1);
  put(common::kQueueSelect, queue_select_, 2);
  if (queue_select_ < queues_.size()) {
    const Queue& q = queues_[queue_select_];
    put(common::kQueueSize, q.size, 2);
    put(common::kQueueMsixVector, q.msix_vector, 2);
    put(common::kQueueEnable, q.enabled ? 1 : 0, 2);
    put(common::kQueueNotifyOff, queue_select_, 2);
    put(common::kQueueDesc, q.desc, 8);
    put(common::kQueueDriver, q.driver, 8);
    put(common::kQueueDevice, q.device, 8);
    put(common::kQueueNotifyData, queue_select_, 2);
  }
  // Reads past the structure return zeros.
  for (size_t i = 0; i < out.size() && offset + i < kCommonCfgSize; ++i) out[i] = image[offset + i];
}

void VirtioPciDevice::WriteCommon(uint64_t offset, std::span<const uint8_t> data) {
  // Apply the write to each field it touches, keeping the field's untouched bytes.
  for (const Field& f : kCommonFields) {
    uint64_t begin = std::max<uint64_t>(offset, f.offset);
    uint64_t end = std::min<uint64_t>(offset + data.size(), f.offset + f.size);
    if (begin >= end) continue;
    uint8_t bytes[8] = {};
    ReadCommon(f.offset, {bytes, f.size});
    for (uint64_t i = begin; i < end; ++i) bytes[i - f.offset] = data[i - offset];
    uint64_t value = 0;
    std::memcpy(&value, bytes, f.size);
    WriteCommonField(f.offset, value);
  }
}

void VirtioPciDevice::WriteCommonField(uint32_t field, uint64_t value) {
  Queue* q = queue_select_ < queues_.size() ? &queues_[queue_select_] : nullptr;
  // Queue layout cannot change while the queue is enabled (spec 4.1.4.3.2).
  bool queue_writable = q != nullptr && !q->enabled;
  switch (field) {
    case common::kDeviceFeatureSelect:
      device_feature_select_ = static_cast<uint32_t>(value);
      break;
    case common::kDriverFeatureSelect:
      driver_feature_select_ = static_cast<uint32_t>(value);
      break;
    case common::kDriverFeature:
      if (driver_feature_select_ < 2 && !(status_ & kStatusFeaturesOk)) {
        uint64_t shift = 32ull * driver_feature_select_;
        driver_features_ = (driver_features_ & ~(0xffffffffull << shift)) | (value << shift);
      }
      break;
    case common::kConfigMsixVector:
      config_msix_vector_ = value < num_queues() + 1u ? static_cast<uint16_t>(value) : kNoVector;
      break;
    case common::kDeviceStatus:
      SetStatus(static_cast<uint8_t>(value));
      break;
    case common::kQueueSelect:
      queue_select_ = static_cast<uint16_t>(value);
      break;
    case common::kQueueSize:
      // A power of two no larger than the maximum; anything else is ignored.
      if (queue_writable && value != 0 && value <= device_->max_queue_size() &&
          std::has_single_bit(value)) {
        q->size = static_cast<uint16_t>(value);
      }
      break;
    case common::kQueueMsixVector:
      if (q != nullptr)
        q->msix_vector = value < num_queues() + 1u ? static_cast<uint16_t>(value) : kNoVector;
      break;
    case common::kQueueEnable:
      if (q != nullptr && value == 1 && !q->enabled) {
        q->enabled = true;
        if (active_) {
          // Enabled after DRIVER_OK: set it up now.
          Status s = q->ring.Configure(MakeQueueConfig(*q), memory());
          if (!s.ok()) SetNeedsReset("queue " + std::to_string(queue_select_) + ": " + s.message());
        }
      }
      break;
    case common::kQueueDesc:
      if (queue_writable) q->desc = value;
      break;
    case common::kQueueDriver:
      if (queue_writable) q->driver = value;
      break;
    case common::kQueueDevice:
      if (queue_writable) q->device = value;
      break;
    default:
      break;  // read-only fields
  }
}

void VirtioPciDevice::SetStatus(uint8_t status) {
  if (status == 0) {
    ResetTransport();
    return;
  }
  uint8_t added = status & ~status_;
  if (added & kStatusFeaturesOk) {
    // The driver may only accept what we offer, and must accept VERSION_1.
    if ((driver_features_ & ~offered_features()) != 0 || !(driver_features_ & kFeatureVersion1)) {
      Log::Write(LogLevel::kWarn,
                 "virtio: driver accepted features we do not offer; FEATURES_OK refused");
      status &= ~kStatusFeaturesOk;
    }
  }
  // Bits are never cleared except by a reset.
  status_ |= status;
  if ((added & kStatusDriverOk) && (status_ & kStatusFeaturesOk) && !active_) {
    Status s = ActivateQueues();
    if (!s.ok()) SetNeedsReset(s.message());
  }
}

Status VirtioPciDevice::ActivateQueues() {
  if (memory() == nullptr) return MakeError(EIO, "no client memory");
  for (size_t i = 0; i < queues_.size(); ++i) {
    Queue& q = queues_[i];
    if (!q.enabled) continue;
    Status s = q.ring.Configure(MakeQueueConfig(q), memory());
    if (!s.ok()) return MakeError(s.code(), "queue " + std::to_string(i) + ": " + s.message());
  }
  VFU_RETURN_IF_ERROR(device_->Activate(this));
  active_ = true;
  notifications_enabled_ = true;
  // Polling modes start polling: the driver need not kick until we are about to sleep.
  if (options_.poll_mode != PollMode::kInterrupt) AfterWake();
  return Status::Ok();
}

void VirtioPciDevice::ResetTransport() {
  if (active_) device_->Reset();
  active_ = false;
  for (Queue& q : queues_) {
    q.ring.Reset();
    q = Queue{};
    q.size = device_->max_queue_size();
  }
  any_stale_ = false;
  device_feature_select_ = 0;
  driver_feature_select_ = 0;
  driver_features_ = 0;
  config_msix_vector_ = kNoVector;
  status_ = 0;
  queue_select_ = 0;
  isr_ = 0;
  SetIntx(false);
  ++stats_.resets;
}

Status VirtioPciDevice::ResetDevice() {
  // Function-level reset (DEVICE_RESET from the client): the virtio state goes too.
  ResetTransport();
  return Status::Ok();
}

// --- VirtioContext --------------------------------------------------------------------------

SplitVirtqueue* VirtioPciDevice::queue(uint16_t index) {
  if (index >= queues_.size() || !queues_[index].enabled || queues_[index].stale ||
      !queues_[index].ring.ready()) {
    return nullptr;
  }
  return &queues_[index].ring;
}

void VirtioPciDevice::InterruptQueue(uint16_t index) {
  if (index >= queues_.size()) return;
  Queue& q = queues_[index];
  if (!q.ring.ready() || !q.ring.ShouldInterrupt()) return;
  Interrupt(q.msix_vector, 1);
}

void VirtioPciDevice::Interrupt(uint16_t vector, uint8_t isr_bit) {
  ++stats_.interrupts;
  if (msix_enabled()) {
    if (vector != kNoVector) TriggerMsix(vector);
    return;
  }
  isr_ |= isr_bit;
  SetIntx(true);
}

void VirtioPciDevice::SetNeedsReset(const std::string& reason) {
  ++stats_.needs_reset;
  Log::Write(LogLevel::kWarn, "virtio: device needs reset", {{"reason", reason}});
  status_ |= kStatusNeedsReset;
  if (active_) {
    device_->Reset();
    active_ = false;
  }
  ConfigChanged();
}

void VirtioPciDevice::ConfigChanged() {
  ++config_generation_;
  if (status_ & kStatusDriverOk) Interrupt(config_msix_vector_, 2);
}

GuestMemory* VirtioPciDevice::memory() {
  return context() != nullptr ? &context()->guest_memory() : nullptr;
}

// --- Poller ---------------------------------------------------------------------------------

PollResult VirtioPciDevice::Poll() {
  if (!active_) return device_->ProcessInactive();
  if (any_stale_) RevalidateStaleQueues();
  return device_->Process();
}

bool VirtioPciDevice::PrepareToSleep() {
  // Late completions without a driver are collected by polling unless the backend's fd wakes us.
  if (!active_) return device_->inflight() == 0 || device_->event_fd() >= 0;
  if (options_.poll_mode == PollMode::kBusy) return false;
  // Completions the backend cannot announce through an fd must be collected by polling.
  if (device_->inflight() > 0 && device_->event_fd() < 0) return false;
  bool work = false;
  for (Queue& q : queues_) {
    if (q.ring.ready() && q.ring.EnableNotifications()) work = true;
  }
  notifications_enabled_ = true;
  return !work;
}

void VirtioPciDevice::AfterWake() {
  if (!active_ || options_.poll_mode == PollMode::kInterrupt) return;
  // Polling again: the driver need not kick.
  for (Queue& q : queues_) {
    if (q.ring.ready()) q.ring.DisableNotifications();
  }
  notifications_enabled_ = false;
}

std::chrono::microseconds VirtioPciDevice::IdleThreshold() const {
  switch (options_.poll_mode) {
    case PollMode::kBusy:
      return active_ ? kNeverSleep : kDefaultIdleThreshold;
    case PollMode::kInterrupt:
      return std::chrono::microseconds(0);
    case PollMode::kAdaptive:
      return options_.idle_before_sleep;
  }
  return kDefaultIdleThreshold;
}

void VirtioPciDevice::CollectCounters(DeviceCounters* out) const {
  device_->CollectCounters(out);
  out->interrupts += stats_.interrupts;
}

// --- state that can leave the process -------------------------------------------------------

inline constexpr uint16_t kVirtioPciStateVersion = 1;

void VirtioPciDevice::Quiesce() {
  // Completes the backend's requests to the driver (used ring, interrupts) as before a DMA
  // unmap: what the driver sees as in flight afterwards is only what the device has not taken
  // from the avail ring yet, which the next process takes.
  if (active_) device_->DrainInflight();
}

Status VirtioPciDevice::SaveState(state::Writer& w) const {
  if (device_->inflight() != 0) {
    return MakeError(EBUSY, std::to_string(device_->inflight()) +
                                " requests are in flight: drain the device before saving it");
  }
  size_t mark = w.BeginSection(state::Tag::kVirtioPci, kVirtioPciStateVersion);
  w.U32(device_feature_select_);
  w.U32(driver_feature_select_);
  w.U64(driver_features_);
  w.U16(config_msix_vector_);
  w.U8(status_);
  w.U8(config_generation_);
  w.U16(queue_select_);
  w.U8(isr_);
  w.Bool(active_);
  w.Bool(notifications_enabled_);
  w.Bool(any_stale_);
  w.U16(static_cast<uint16_t>(queues_.size()));
  for (const Queue& q : queues_) {
    w.U16(q.size);
    w.U16(q.msix_vector);
    w.Bool(q.enabled);
    w.U64(q.desc);
    w.U64(q.driver);
    w.U64(q.device);
    w.Bool(q.stale);
    w.U16(q.saved_last_avail);
    w.U16(q.saved_used);
    q.ring.SaveState(w);
  }
  w.EndSection(mark);
  SavePciState(w);
  return Status::Ok();
}

Status VirtioPciDevice::RestoreState(state::Reader& r) {
  state::Reader s = r.Section(state::Tag::kVirtioPci, kVirtioPciStateVersion, nullptr);
  uint32_t device_feature_select = s.U32();
  uint32_t driver_feature_select = s.U32();
  uint64_t driver_features = s.U64();
  uint16_t config_msix_vector = s.U16();
  uint8_t status = s.U8();
  uint8_t config_generation = s.U8();
  uint16_t queue_select = s.U16();
  uint8_t isr = s.U8();
  bool active = s.Bool();
  bool notifications_enabled = s.Bool();
  bool any_stale = s.Bool();
  uint16_t count = s.U16();
  if (s.ok() && count != queues_.size()) {
    s.Fail(std::to_string(count) + " queues, this device has " + std::to_string(queues_.size()));
  }
  if (s.ok() && (driver_features & ~offered_features()) != 0) {
    s.Fail("driver features " + std::to_string(driver_features) + " were not all offered here");
  }
  if (active && memory() == nullptr) s.Fail("an active device needs the client's memory");
  std::vector<Queue> queues(s.ok() ? count : 0);
  for (Queue& q : queues) {
    q.size = s.U16();
    q.msix_vector = s.U16();
    q.enabled = s.Bool();
    q.desc = s.U64();
    q.driver = s.U64();
    q.device = s.U64();
    q.stale = s.Bool();
    q.saved_last_avail = s.U16();
    q.saved_used = s.U16();
    if (s.ok() && (q.size == 0 || q.size > device_->max_queue_size())) {
      s.Fail("a queue of size " + std::to_string(q.size) + ", at most " +
             std::to_string(device_->max_queue_size()) + " here");
    }
    if (!s.ok()) break;
    // The ring is checked against the client's memory now; nothing changes until all is read.
    if (Status st = q.ring.RestoreState(s, memory()); !st.ok()) return st;
  }
  s.ExpectEnd();
  if (!s.ok()) return s.status();
  if (!r.ok()) return r.status();
  VFU_RETURN_IF_ERROR(RestorePciState(r));  // all or nothing itself; the last check

  if (active_) device_->Reset();
  queues_ = std::move(queues);
  device_feature_select_ = device_feature_select;
  driver_feature_select_ = driver_feature_select;
  driver_features_ = driver_features;
  config_msix_vector_ = config_msix_vector;
  status_ = status;
  config_generation_ = config_generation;
  queue_select_ = queue_select;
  isr_ = isr;
  any_stale_ = any_stale;
  active_ = false;
  if (active) {
    // The device takes the queues as they are (their positions restored), as at DRIVER_OK.
    if (Status st = device_->Activate(this); !st.ok()) {
      ResetTransport();
      return MakeError(st.code(),
                       "virtio-pci state: the device refused its queues: " + st.message());
    }
    active_ = true;
  }
  notifications_enabled_ = notifications_enabled;
  return Status::Ok();
}

}  // namespace vfu::virtio
