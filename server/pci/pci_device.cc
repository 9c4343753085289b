#include "server/pci/pci_device.h"

#include <string>

#include "server/pci/capabilities.h"

namespace vfu::pci {
namespace {

// Clients map BAR areas in whole pages.
constexpr uint64_t kPage = 4096;
uint64_t PageFloor(uint64_t v) { return v & ~(kPage - 1); }
uint64_t PageCeil(uint64_t v) { return (v + kPage - 1) & ~(kPage - 1); }

}  // namespace

PciDevice::PciDevice(const PciIdentity& id, size_t config_size, bool has_intx)
    : config_(config_size), has_intx_(has_intx) {
  config_.Set16(kVendorId, id.vendor_id);
  config_.Set16(kDeviceId, id.device_id);
  config_.Set8(kRevisionId, id.revision);
  config_.Set8(kClassProgIf, id.class_code & 0xff);
  config_.Set16(kClassProgIf + 1, static_cast<uint16_t>(id.class_code >> 8));
  config_.Set16(kSubsystemVendorId, id.subsystem_vendor_id);
  config_.Set16(kSubsystemId, id.subsystem_id);
  config_.Set8(kHeaderType, 0);
  config_.Set8(kInterruptPin, has_intx ? 1 : 0);
  if (config_.size() >= kExpressConfigSize) {
    // Appending to an empty capability list cannot fail.
    if (auto off = AddExpressCapability(config_)) express_cap_ = *off;
    if (auto off = AddPowerManagementCapability(config_)) pm_cap_ = *off;
  }
  config_.SnapshotResetState();
}

Status PciDevice::AddBar(int index, BarSpec spec) {
  if (index >= 0 && index <= 5) {
    for (const wire::SparseMmapArea& a : spec.mmap_areas) {
      if (a.size > spec.size || a.offset > spec.size - a.size) {
        return MakeError(EINVAL, "mmappable area outside BAR " + std::to_string(index));
      }
      uint64_t first = PageFloor(a.offset);
      if (msix_.Overlaps(index, first, PageCeil(a.offset + a.size) - first)) {
        return MakeError(EINVAL, "mmappable area of BAR " + std::to_string(index) +
                                     " shares a page with the MSI-X table or PBA");
      }
    }
  }
  VFU_RETURN_IF_ERROR(config_.DeclareBar(index, spec.size, spec.flags));
  bars_[index] = std::move(spec);
  return Status::Ok();
}

bool PciDevice::OverlapsMmapArea(int bar, uint64_t offset, uint64_t len) const {
  uint64_t first = PageFloor(offset);
  uint64_t last = PageCeil(offset + len);
  for (const wire::SparseMmapArea& a : bars_[bar].mmap_areas) {
    if (a.size != 0 && first < PageCeil(a.offset + a.size) && PageFloor(a.offset) < last) {
      return true;
    }
  }
  return false;
}

Status PciDevice::EnableMsix(uint32_t vectors, int table_bar, uint64_t table_offset, int pba_bar,
                             uint64_t pba_offset) {
  if (msix_.initialized()) return MakeError(EEXIST, "MSI-X is already set up");
  if (vectors == 0 || vectors > kMsixMaxVectors) {
    return MakeError(EINVAL, "MSI-X vector count " + std::to_string(vectors) + " not in 1..2048");
  }
  if (table_bar >= 0 && table_bar <= 5 &&
      OverlapsMmapArea(table_bar, table_offset, uint64_t{vectors} * kMsixEntrySize)) {
    return MakeError(EINVAL, "MSI-X table shares a page with a mmappable area");
  }
  if (pba_bar >= 0 && pba_bar <= 5 &&
      OverlapsMmapArea(pba_bar, pba_offset, (uint64_t{vectors} + 63) / 64 * 8)) {
    return MakeError(EINVAL, "MSI-X PBA shares a page with a mmappable area");
  }
  VFU_RETURN_IF_ERROR(msix_.Init(&config_, vectors, table_bar, table_offset, pba_bar, pba_offset));
  msix_.set_context(context_);
  return Status::Ok();
}

Status PciDevice::AddPowerManagement() {
  if (pm_cap_ != 0) return MakeError(EEXIST, "the Power Management capability is already there");
  auto off = AddPowerManagementCapability(config_);
  if (!off) return off.error();
  pm_cap_ = *off;
  return Status::Ok();
}

uint8_t PciDevice::power_state() const {
  if (pm_cap_ == 0) return kPowerStateD0;
  return static_cast<uint8_t>(config_.Get16(pm_cap_ + kPmPmcsr) & kPmcsrStateMask);
}

RegionDescription PciDevice::DescribeRegion(uint32_t index) const {
  RegionDescription r;
  if (index <= wire::kPciBar5RegionIndex) {
    const BarSpec& bar = bars_[index];
    if (bar.size == 0) return r;
    r.size = bar.size;
    r.flags = wire::kRegionFlagRead | wire::kRegionFlagWrite;
    if (bar.mmap_fd >= 0 && !bar.mmap_areas.empty()) {
      r.flags |= wire::kRegionFlagMmap;
      r.mmap_fd = bar.mmap_fd;
      r.mmap_offset = bar.mmap_offset;
      r.sparse_areas = bar.mmap_areas;
    }
  } else if (index == wire::kPciConfigRegionIndex) {
    r.size = config_.size();
    r.flags = wire::kRegionFlagRead | wire::kRegionFlagWrite;
  }
  return r;
}

IrqDescription PciDevice::DescribeIrq(uint32_t index) const {
  switch (index) {
    case wire::kPciIntxIrqIndex:
      return {has_intx_ ? 1u : 0u,
              wire::kIrqInfoEventfd | wire::kIrqInfoMaskable | wire::kIrqInfoAutomasked};
    case wire::kPciMsiIrqIndex:
      return {0, wire::kIrqInfoEventfd};
    case wire::kPciMsixIrqIndex:
      return {msix_.vectors(),
              wire::kIrqInfoEventfd | wire::kIrqInfoMaskable | wire::kIrqInfoNoResize};
    case wire::kPciErrIrqIndex:
    case wire::kPciReqIrqIndex:
      // One vector each: QEMU then wires its error and device-request notifiers (and warns
      // "Could not enable error recovery" when ERR has none).
      return {1, wire::kIrqInfoEventfd};
    default:
      return {0, wire::kIrqInfoEventfd};
  }
}

Status PciDevice::ReadRegion(uint32_t index, uint64_t offset, std::span<uint8_t> out) {
  if (index == wire::kPciConfigRegionIndex) {
    OnConfigRead(static_cast<uint32_t>(offset), out.size());
    config_.Read(static_cast<uint32_t>(offset), out);
    return Status::Ok();
  }
  if (index <= wire::kPciBar5RegionIndex && bars_[index].size != 0) {
    int bar = static_cast<int>(index);
    if (msix_.Overlaps(bar, offset, out.size())) return msix_.Read(bar, offset, out);
    return BarRead(bar, offset, out);
  }
  return MakeError(EINVAL, "the device has no region " + std::to_string(index));
}

Status PciDevice::WriteRegion(uint32_t index, uint64_t offset, std::span<const uint8_t> data) {
  if (index == wire::kPciConfigRegionIndex) {
    bool intx_was_deliverable = IntxDeliverable();
    uint8_t old_power_state = power_state();
    config_.Write(static_cast<uint32_t>(offset), data);
    if (pm_cap_ != 0) {
      // Only D0 and D3hot exist: a write of D1 or D2 completes but changes nothing.
      uint16_t pmcsr = config_.Get16(pm_cap_ + kPmPmcsr);
      uint8_t state = pmcsr & kPmcsrStateMask;
      if (state != kPowerStateD0 && state != kPowerStateD3Hot) {
        config_.Set16(pm_cap_ + kPmPmcsr,
                      static_cast<uint16_t>((pmcsr & ~kPmcsrStateMask) | old_power_state));
      }
    }
    msix_.OnConfigWrite();
    // A level-triggered line that becomes deliverable again (Interrupt Disable cleared, MSI-X
    // turned off) while still asserted fires now.
    if (!intx_was_deliverable && IntxDeliverable() && intx_asserted_ && context_ != nullptr) {
      context_->TriggerIrq(wire::kPciIntxIrqIndex, 0);
    }
    UpdateIntxStatus();
    OnConfigWrite(static_cast<uint32_t>(offset), data.size());
    return Status::Ok();
  }
  if (index <= wire::kPciBar5RegionIndex && bars_[index].size != 0) {
    int bar = static_cast<int>(index);
    if (msix_.Overlaps(bar, offset, data.size())) return msix_.Write(bar, offset, data);
    return BarWrite(bar, offset, data);
  }
  return MakeError(EINVAL, "the device has no region " + std::to_string(index));
}

Status PciDevice::Reset() {
  config_.Reset();
  msix_.Reset();
  intx_asserted_ = false;
  return ResetDevice();
}

void PciDevice::Attach(DeviceContext* context) {
  context_ = context;
  msix_.set_context(context);
}

void PciDevice::Detach() {
  context_ = nullptr;
  msix_.set_context(nullptr);
}

void PciDevice::OnIrqMaskChanged(uint32_t index, uint32_t vector, bool masked) {
  // INTx is level-triggered: a line still asserted when the client unmasks fires again.
  if (index == wire::kPciIntxIrqIndex && vector == 0 && !masked && intx_asserted_) {
    SetIntx(true);
  }
}

void PciDevice::SetIntx(bool asserted) {
  intx_asserted_ = asserted;
  UpdateIntxStatus();
  if (asserted && IntxDeliverable() && context_ != nullptr) {
    context_->TriggerIrq(wire::kPciIntxIrqIndex, 0);
  }
}

bool PciDevice::IntxDeliverable() const {
  return has_intx_ && !(config_.Get16(kCommand) & kCommandIntxDisable) && !msix_.enabled();
}

void PciDevice::UpdateIntxStatus() {
  uint16_t status = config_.Get16(kStatus);
  status = intx_asserted_ ? (status | kStatusInterrupt) : (status & ~kStatusInterrupt);
  config_.Set16(kStatus, status);
}

inline constexpr uint16_t kPciFunctionStateVersion = 1;

void PciDevice::SavePciState(state::Writer& w) const {
  config_.SaveState(w);
  size_t mark = w.BeginSection(state::Tag::kPciFunction, kPciFunctionStateVersion);
  w.Bool(intx_asserted_);
  w.Bool(msix_.initialized());
  w.EndSection(mark);
  if (msix_.initialized()) msix_.SaveState(w);
}

Status PciDevice::RestorePciState(state::Reader& r) {
  ConfigSpace config = config_;
  VFU_RETURN_IF_ERROR(config.RestoreState(r));
  state::Reader s = r.Section(state::Tag::kPciFunction, kPciFunctionStateVersion, nullptr);
  bool intx = s.Bool();
  bool has_msix = s.Bool();
  if (s.ok() && has_msix != msix_.initialized()) {
    s.Fail(has_msix ? "the record has MSI-X, this device has none"
                    : "the record has no MSI-X, this device has it");
  }
  s.ExpectEnd();
  if (!s.ok()) return s.status();
  if (!r.ok()) return r.status();
  // MSI-X restores all or nothing itself, and is the last part that can fail.
  if (msix_.initialized()) VFU_RETURN_IF_ERROR(msix_.RestoreState(r));
  config_ = std::move(config);
  intx_asserted_ = intx;
  return Status::Ok();
}

}  // namespace vfu::pci
