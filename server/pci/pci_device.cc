#include "server/pci/pci_device.h"

#include <string>

namespace vfu::pci {

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
  config_.SnapshotResetState();
}

Status PciDevice::AddBar(int index, BarSpec spec) {
  VFU_RETURN_IF_ERROR(config_.DeclareBar(index, spec.size, spec.flags));
  bars_[index] = std::move(spec);
  return Status::Ok();
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
      return {msix_vectors_,
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
    config_.Read(static_cast<uint32_t>(offset), out);
    return Status::Ok();
  }
  if (index <= wire::kPciBar5RegionIndex && bars_[index].size != 0) {
    return BarRead(static_cast<int>(index), offset, out);
  }
  return MakeError(EINVAL, "region " + std::to_string(index) + " is not implemented");
}

Status PciDevice::WriteRegion(uint32_t index, uint64_t offset, std::span<const uint8_t> data) {
  if (index == wire::kPciConfigRegionIndex) {
    bool intx_was_disabled = config_.Get16(kCommand) & kCommandIntxDisable;
    config_.Write(static_cast<uint32_t>(offset), data);
    bool intx_disabled = config_.Get16(kCommand) & kCommandIntxDisable;
    if (intx_was_disabled && !intx_disabled && intx_asserted_ && context_ != nullptr) {
      context_->TriggerIrq(wire::kPciIntxIrqIndex, 0);
    }
    UpdateIntxStatus();
    OnConfigWrite(static_cast<uint32_t>(offset), data.size());
    return Status::Ok();
  }
  if (index <= wire::kPciBar5RegionIndex && bars_[index].size != 0) {
    return BarWrite(static_cast<int>(index), offset, data);
  }
  return MakeError(EINVAL, "region " + std::to_string(index) + " is not implemented");
}

Status PciDevice::Reset() {
  config_.Reset();
  intx_asserted_ = false;
  return ResetDevice();
}

void PciDevice::Attach(DeviceContext* context) { context_ = context; }
void PciDevice::Detach() { context_ = nullptr; }

void PciDevice::OnIrqMaskChanged(uint32_t index, uint32_t vector, bool masked) {
  // INTx is level-triggered: a line still asserted when the client unmasks fires again.
  if (index == wire::kPciIntxIrqIndex && vector == 0 && !masked && intx_asserted_) {
    SetIntx(true);
  }
}

void PciDevice::SetIntx(bool asserted) {
  intx_asserted_ = asserted;
  UpdateIntxStatus();
  if (asserted && has_intx_ && context_ != nullptr &&
      !(config_.Get16(kCommand) & kCommandIntxDisable)) {
    context_->TriggerIrq(wire::kPciIntxIrqIndex, 0);
  }
}

void PciDevice::UpdateIntxStatus() {
  uint16_t status = config_.Get16(kStatus);
  status = intx_asserted_ ? (status | kStatusInterrupt) : (status & ~kStatusInterrupt);
  config_.Set16(kStatus, status);
}

}  // namespace vfu::pci
