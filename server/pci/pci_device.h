// PciDevice: the PCI layer between a session and a concrete device. It presents a type-0 PCI
// function as the nine VFIO regions (BAR0-5, ROM, config space, VGA) and five IRQ indexes
// (INTx, MSI, MSI-X, ERR, REQ), serves config space from a ConfigSpace model, and routes BAR
// accesses to the concrete device (or to the MSI-X table/PBA). INTx follows PCI rules: it is
// raised only while the command register allows it and MSI-X is disabled, and the status
// register's interrupt bit mirrors the line.
//
// Config space flavours (constructor): kConventionalConfigSize (256 bytes, no capabilities
// unless the device adds them) or kExpressConfigSize (4 KiB, PCI Express). A PCI Express
// device gets, automatically and first in the chain, the PCI Express capability (v2 endpoint)
// and the Power Management capability (PCIe requires both), and an all-zero extended
// capability header at 0x100 until it adds extended capabilities. Conventional devices may
// add Power Management with AddPowerManagement().
//
// Device setup order (constructor or factory, before a session serves the device): AddBar for
// every BAR, then EnableMsix (its BARs must exist), then any further capabilities
// (config().AddVendorCapability(...) etc.). The session sizes its IRQ table from DescribeIrq
// when it starts, so the MSI-X vector count must be fixed by then.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "server/common/unique_fd.h"
#include "server/pci/config_space.h"
#include "server/pci/msix.h"
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
  const Msix& msix() const { return msix_; }

  // Raises MSI-X `vector` (see msix.h for masking and pending rules). False when it was not
  // signalled now: MSI-X not set up or disabled (then the device should use INTx), masked
  // (pending, delivered on unmask), or no client.
  bool TriggerMsix(uint32_t vector) { return msix_.Trigger(vector); }
  // The guest turned MSI-X on (Enable bit of Message Control).
  bool msix_enabled() const { return msix_.enabled(); }

  // State that can leave the process (server/state/record.h): config space, the INTx line and
  // MSI-X (table, written entries, pending vectors). The device's setup (BARs, capabilities,
  // masks) comes from its constructor in the new process; a record of another layout is
  // refused. All or nothing: on an error nothing has changed.
  void SavePciState(state::Writer& w) const;
  Status RestorePciState(state::Reader& r);

  // Offsets of the automatic capabilities (0 when absent).
  uint32_t express_cap_offset() const { return express_cap_; }
  uint32_t pm_cap_offset() const { return pm_cap_; }
  // PMCSR PowerState: 0 (D0) or 3 (D3hot); always D0 without a PM capability.
  uint8_t power_state() const;

 protected:
  // Declares a BAR (call from the concrete device's constructor).
  Status AddBar(int index, BarSpec spec);
  // Sets up MSI-X with `vectors` (1..2048) vectors: the table at `table_offset` of BAR
  // `table_bar`, the PBA at `pba_offset` of BAR `pba_bar` (8-byte aligned, inside declared
  // memory BARs, not overlapping each other nor any mmappable area: keep them in 4 KiB pages of
  // their own that are not mmapped). Adds the MSI-X capability and makes DescribeIrq report the
  // vectors on the MSI-X index. Call once, after AddBar.
  Status EnableMsix(uint32_t vectors, int table_bar, uint64_t table_offset, int pba_bar,
                    uint64_t pba_offset);
  // Adds the Power Management capability (PCI Express devices have it already: EEXIST).
  Status AddPowerManagement();

  // BAR accesses that the session has bounds-checked.
  virtual Status BarRead(int bar, uint64_t offset, std::span<uint8_t> out) = 0;
  virtual Status BarWrite(int bar, uint64_t offset, std::span<const uint8_t> data) = 0;
  // After a guest write to config space (for side effects such as enabling bus mastering).
  virtual void OnConfigWrite(uint32_t offset, size_t len) {
    (void)offset;
    (void)len;
  }
  // Before a guest read of config space [offset, offset + len): a chance to refresh registers
  // that are computed on demand (e.g. virtio-pci's PCI configuration access capability).
  virtual void OnConfigRead(uint32_t offset, size_t len) {
    (void)offset;
    (void)len;
  }
  // Device-specific part of reset; config space is reset by PciDevice.
  virtual Status ResetDevice() { return Status::Ok(); }

  // Level-triggered INTx: assert while the device has an interrupt condition.
  void SetIntx(bool asserted);
  bool intx_asserted() const { return intx_asserted_; }
  bool bus_master_enabled() const { return config_.Get16(kCommand) & kCommandBusMaster; }

 private:
  void UpdateIntxStatus();
  // INTx may be signalled: the function has a pin, Interrupt Disable is clear and MSI-X is off.
  bool IntxDeliverable() const;
  // True when [offset, offset + len) of `bar` shares a 4 KiB page with one of the BAR's
  // mmappable areas (clients map whole pages).
  bool OverlapsMmapArea(int bar, uint64_t offset, uint64_t len) const;

  ConfigSpace config_;
  bool has_intx_;
  bool intx_asserted_ = false;
  BarSpec bars_[6];
  DeviceContext* context_ = nullptr;
  Msix msix_;
  uint32_t express_cap_ = 0;
  uint32_t pm_cap_ = 0;
};

}  // namespace vfu::pci
