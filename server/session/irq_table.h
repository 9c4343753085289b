// The interrupt state of one client session: per IRQ index (INTx, MSI, MSI-X, ERR, REQ) and
// vector, the trigger eventfd the client gave with SET_IRQS, the mask bit and the pending bit.
// Applies SET_IRQS exactly as the spec and QEMU use it (eventfd assign/de-assign per range,
// count=0 disable, mask/unmask with DATA_NONE or DATA_BOOL, loopback triggers) and delivers the
// device's interrupts: a masked vector becomes pending and fires when unmasked; INTx masks
// itself after firing (AUTOMASKED) until the client unmasks it.
#pragma once

#include <cstdint>
#include <vector>

#include "server/common/status.h"
#include "server/common/unique_fd.h"
#include "server/protocol/codec.h"
#include "server/session/device.h"
#include "server/state/record.h"

namespace vfu {

class IrqTable {
 public:
  // One entry per IRQ index, with the device's count and flags.
  explicit IrqTable(const std::vector<IrqDescription>& indexes);

  // A change of mask state that the device should hear about.
  struct MaskChange {
    uint32_t index;
    uint32_t vector;
    bool masked;
  };

  // Applies a decoded SET_IRQS; `fds` are its eventfds (none, or one per vector). Validates
  // index/start/count against this device. Appends mask changes to *changes.
  Status Apply(const proto::SetIrqsRequest& request, std::vector<UniqueFd> fds,
               std::vector<MaskChange>* changes);

  // Raises a vector. Returns true when an eventfd was signalled.
  bool Trigger(uint32_t index, uint32_t vector);
  bool Pending(uint32_t index, uint32_t vector) const;
  bool Masked(uint32_t index, uint32_t vector) const;
  bool HasEventfd(uint32_t index, uint32_t vector) const;

  // Drops every eventfd and pending bit and unmasks all (client detached).
  void Clear();

  // State that can leave the process (server/state/record.h): per index and vector the eventfd
  // (as an fd of the record), the mask and the pending bit. RestoreState checks the shape
  // against this device's indexes and every fd (an eventfd, made non-blocking), duplicates the
  // fds and only then replaces the table; all or nothing.
  void SaveState(state::Writer& w) const;
  Status RestoreState(state::Reader& r);
  size_t eventfd_count() const;
  uint64_t delivered() const { return delivered_; }

 private:
  struct Vector {
    UniqueFd trigger;
    bool masked = false;
    bool pending = false;
  };
  struct Index {
    IrqDescription desc;
    std::vector<Vector> vectors;
  };

  // For the eventfd of `vector`: refuses other files; makes it non-blocking.
  static Status CheckIsEventfd(int fd, uint32_t vector);
  static Status MakeNonBlocking(int fd, uint32_t vector);
  bool Signal(Vector& v);
  void SetMask(uint32_t index, uint32_t vector, bool masked, std::vector<MaskChange>* changes);

  std::vector<Index> indexes_;
  uint64_t delivered_ = 0;
};

}  // namespace vfu
