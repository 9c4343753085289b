// MSI-X for a PciDevice: the capability in config space (ID 0x11), the vector table and the
// pending-bit array (PBA) in a BAR, and interrupt delivery through the session's IRQ eventfds.
//
// Who masks what. A vfio-user client does not have to use our table:
//  - QEMU emulates the MSI-X table itself and never writes it through the server; it masks and
//    unmasks single vectors with SET_IRQS on the MASKABLE MSI-X IRQ index, and the session's
//    IrqTable keeps those vectors pending and fires them on unmask. QEMU does forward config
//    space writes (so Enable and Function Mask are seen here) and PBA reads.
//  - Other clients (our own userspace drivers) program the table through REGION_WRITE.
// So the per-entry Mask bit of our table only counts once the client has written that entry
// (any byte of its 16); an entry nobody wrote never masks its vector (it still reads back as
// masked, its reset value). Enable and Function Mask always count.
//
// Delivery rule for Trigger(v):
//  - MSI-X disabled (Enable clear): dropped, returns false (a device uses INTx then; PCI forbids
//    a function to send MSI-X messages while disabled).
//  - Function Mask set, or the entry written and masked: the vector becomes pending here and is
//    delivered when the mask clears (config write or table write).
//  - Otherwise DeviceContext::TriggerIrq(kPciMsixIrqIndex, v), which itself pends vectors that
//    the client masked with SET_IRQS or that have no eventfd yet.
// A PBA read reports a vector pending when either this component or the session holds it.
//
// Layout rules checked by Init: 1..2048 vectors; table and PBA in declared memory BARs,
// 8-byte aligned, inside their BARs and not overlapping. (PciDevice additionally keeps them
// out of mmappable areas, since a client only traps accesses to the rest of a BAR.)
// Table and PBA accept accesses of any size inside one structure; the table's vector control
// word has only the Mask bit writable; PBA writes are ignored (it is read-only).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "server/common/status.h"
#include "server/pci/config_space.h"
#include "server/session/device.h"

namespace vfu::pci {

// Capability register offsets (relative to the capability) and bits.
inline constexpr uint32_t kMsixControl = 0x02;  // Message Control (16)
inline constexpr uint32_t kMsixTable = 0x04;    // Table offset | BIR (32)
inline constexpr uint32_t kMsixPba = 0x08;      // PBA offset | BIR (32)
inline constexpr uint32_t kMsixCapSize = 0x0c;
inline constexpr uint16_t kMsixControlTableSizeMask = 0x07ff;  // vectors - 1, read-only
inline constexpr uint16_t kMsixControlFunctionMask = 1u << 14;
inline constexpr uint16_t kMsixControlEnable = 1u << 15;
inline constexpr uint32_t kMsixBirMask = 0x7;

// Table entry layout.
inline constexpr uint32_t kMsixEntrySize = 16;
inline constexpr uint32_t kMsixEntryAddrLo = 0x0;
inline constexpr uint32_t kMsixEntryAddrHi = 0x4;
inline constexpr uint32_t kMsixEntryData = 0x8;
inline constexpr uint32_t kMsixEntryVectorControl = 0xc;
inline constexpr uint32_t kMsixVectorMasked = 1u << 0;

inline constexpr uint32_t kMsixMaxVectors = 2048;

class Msix {
 public:
  Msix() = default;
  Msix(const Msix&) = delete;
  Msix& operator=(const Msix&) = delete;

  // Appends the capability to `config` (kept by pointer: it must outlive this) and lays out
  // the table and PBA. EEXIST when already initialized.
  Status Init(ConfigSpace* config, uint32_t vectors, int table_bar, uint64_t table_offset,
              int pba_bar, uint64_t pba_offset);
  bool initialized() const { return vectors_ != 0; }

  // Where interrupts go (nullptr while no client is attached: Trigger then does nothing).
  void set_context(DeviceContext* context) { context_ = context; }

  uint32_t vectors() const { return vectors_; }
  uint32_t cap_offset() const { return cap_; }
  int table_bar() const { return table_bar_; }
  uint64_t table_offset() const { return table_offset_; }
  uint64_t table_size() const { return uint64_t{vectors_} * kMsixEntrySize; }
  int pba_bar() const { return pba_bar_; }
  uint64_t pba_offset() const { return pba_offset_; }
  uint64_t pba_size() const { return (uint64_t{vectors_} + 63) / 64 * 8; }

  // Message Control state, read from config space.
  bool enabled() const;
  bool function_masked() const;

  // Table entry state.
  uint64_t message_address(uint32_t vector) const;
  uint32_t message_data(uint32_t vector) const;
  bool entry_masked(uint32_t vector) const;   // the Mask bit as the table reads back
  bool entry_written(uint32_t vector) const;  // the client wrote this entry since reset
  // The PBA bit: pending here or in the session's IRQ table.
  bool pending(uint32_t vector) const;

  // True when [offset, offset + len) of `bar` touches the table or the PBA.
  bool Overlaps(int bar, uint64_t offset, uint64_t len) const;
  // Accesses that lie entirely inside the table or the PBA (EINVAL otherwise).
  Status Read(int bar, uint64_t offset, std::span<uint8_t> out) const;
  Status Write(int bar, uint64_t offset, std::span<const uint8_t> data);

  // Raises `vector` following the delivery rule above; true when an eventfd was signalled.
  bool Trigger(uint32_t vector);
  // After a config-space write: delivers the pending vectors that are no longer masked.
  void OnConfigWrite() { DeliverPending(); }
  // Device reset: entries masked with zero address/data, nothing pending, nothing written.
  // (Enable and Function Mask are reset with config space.)
  void Reset();

  // State that can leave the process (server/state/record.h): the table, which entries the
  // client wrote, the vectors pending here. Enable and Function Mask live in config space,
  // which is saved on its own. A record for another number of vectors is refused; all or
  // nothing.
  void SaveState(state::Writer& w) const;
  Status RestoreState(state::Reader& r);

 private:
  bool Inside(int bar, uint64_t offset, uint64_t len, int window_bar, uint64_t window_offset,
              uint64_t window_size) const;
  bool Masked(uint32_t vector) const;
  void DeliverPending();
  uint32_t EntryWord(uint32_t vector, uint32_t word_offset) const;

  ConfigSpace* config_ = nullptr;
  DeviceContext* context_ = nullptr;
  uint32_t vectors_ = 0;
  uint32_t cap_ = 0;
  int table_bar_ = -1;
  uint64_t table_offset_ = 0;
  int pba_bar_ = -1;
  uint64_t pba_offset_ = 0;
  std::vector<uint8_t> table_;  // vectors_ * 16 bytes, little-endian
  std::vector<bool> written_;
  std::vector<bool> pending_;
};

}  // namespace vfu::pci
