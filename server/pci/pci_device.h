// PciDevice: the PCI layer between a session and a concrete device. It presents a type-0 PCI
// function as the nine VFIO regions (BAR0-5, ROM, config space, VGA) and five IRQ indexes
// (INTx, MSI, MSI-X, ERR, REQ), serves config space from a ConfigSpace model, and routes BAR
// accesses to the concrete device. INTx follows PCI rules: it is raised only while the
// command register allows it, and the status register's interrupt bit mirrors the line.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "server/common/unique_fd.h"
#include "server/pci/config_space.h"
#include "server/session/device.h"

namespace vfu::pci {

struct PciIdentity {
  uint16_t vendor_id = 0;
  uint16_t device_id = 0;
  uint16_t subsystem_vendor_id = 0;
  uint16_t subsystem_id = 0;
  uint8_t revision = 0;
  uint32_t class_code = 0;  // base class, subclass, prog-if
};

// One BAR as the device declares it.
struct BarSpec {
  uint64_t size = 0;
  uint32_t flags = 0;  // kBarIo / kBarMem64 / kBarPrefetch
  // Mmappable sub-areas (offset, size), backed by `mmap_fd` at `mmap_offset`.
  int mmap_fd = -1;
  uint64_t mmap_offset = 0;
  std::vector<wire::SparseMmapArea> mmap_areas;
};

class PciDevice : public VfioDevice {
 public:
  PciDevice(const PciIdentity& identity, size_t config_size, bool has_intx);

  RegionDescription DescribeRegion(uint32_t index) const override;
  IrqDescription DescribeIrq(uint32_t index) const override;
  Status ReadRegion(uint32_t index, uint64_t offset, std::span<uint8_t> out) override;
  Status WriteRegion(uint32_t index, uint64_t offset, std::span<const uint8_t> data) override;
  Status Reset() override;
  void Attach(DeviceContext* context) override;
  void Detach() override;
  void OnIrqMaskChanged(uint32_t index, uint32_t vector, bool masked) override;

  ConfigSpace& config() { return config_; }
  const ConfigSpace& config() const { return config_; }
  DeviceContext* context() const { return context_; }

 protected:
  // Declares a BAR (call from the concrete device's constructor).
  Status AddBar(int index, BarSpec spec);

  // BAR accesses that the session has bounds-checked.
  virtual Status BarRead(int bar, uint64_t offset, std::span<uint8_t> out) = 0;
  virtual Status BarWrite(int bar, uint64_t offset, std::span<const uint8_t> data) = 0;
  // After a guest write to config space (for side effects such as enabling bus mastering).
  virtual void OnConfigWrite(uint32_t offset, size_t len) {
    (void)offset;
    (void)len;
  }
  // Device-specific part of reset; config space is reset by PciDevice.
  virtual Status ResetDevice() { return Status::Ok(); }

  // Level-triggered INTx: assert while the device has an interrupt condition.
  void SetIntx(bool asserted);
  bool intx_asserted() const { return intx_asserted_; }
  bool bus_master_enabled() const { return config_.Get16(kCommand) & kCommandBusMaster; }

  // Extra IRQ indexes the concrete device supports (MSI-X comes with issue 3's model).
  uint32_t msix_vectors_ = 0;

 private:
  void UpdateIntxStatus();

  ConfigSpace config_;
  bool has_intx_;
  bool intx_asserted_ = false;
  BarSpec bars_[6];
  DeviceContext* context_ = nullptr;
};

}  // namespace vfu::pci
