// The seam between a vfio-user session and the device it serves.
//
// A session (one client) talks to a VfioDevice: it asks for the VFIO view of the device
// (regions, IRQs), forwards region accesses and resets, and tells the device when a client
// attaches or detaches and when DMA memory disappears. The device talks back through a
// DeviceContext: guest memory (the session's DMA map table) and interrupt delivery (the
// session's IRQ eventfds). A device and its session always run on the same reactor thread, so
// none of these calls need locks.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "server/common/stats.h"
#include "server/common/status.h"
#include "server/protocol/wire.h"
#include "server/state/record.h"

namespace vfu {

class Poller;

// Guest (client) memory as the device sees it: IOVAs that the client DMA-mapped. Every access
// is checked to lie inside mapped, accessible memory with the required permission.
class GuestMemory {
 public:
  enum class Access { kRead, kWrite };
  virtual ~GuestMemory() = default;
  // A host pointer to [iova, iova + len) when that range lies inside one mapped, accessible
  // region with the permission asked for; otherwise an error (EFAULT, or EACCES).
  virtual Result<uint8_t*> Translate(uint64_t iova, uint64_t len, Access access) = 0;
  // Appends host segments covering [iova, iova + len), which may span adjacent maps, to *out.
  // Fails (appending nothing) unless every byte is mapped, accessible and permitted.
  virtual Status TranslateSegments(uint64_t iova, uint64_t len, Access access,
                                   std::vector<iovec>* out) = 0;
  // Copies that may cross region boundaries.
  virtual Status Read(uint64_t iova, std::span<uint8_t> out) = 0;
  virtual Status Write(uint64_t iova, std::span<const uint8_t> data) = 0;
  // Keeps the host mappings of every range mapped now in place until the returned handle is
  // released, even if the client unmaps them meanwhile (the addresses are then no longer
  // translated, but memory that I/O still targets stays mapped). Null if nothing needs it.
  virtual std::shared_ptr<const void> Retain() { return nullptr; }
};

// What the session provides to an attached device.
class DeviceContext {
 public:
  virtual ~DeviceContext() = default;
  virtual GuestMemory& guest_memory() = 0;
  // Raises interrupt `vector` of IRQ index `index` (e.g. wire::kPciMsixIrqIndex). Masked
  // interrupts become pending; returns true when an eventfd was signalled.
  virtual bool TriggerIrq(uint32_t index, uint32_t vector) = 0;
  virtual bool IrqPending(uint32_t index, uint32_t vector) const = 0;
};

struct RegionDescription {
  uint64_t size = 0;
  uint32_t flags = 0;  // wire::kRegionFlagRead / Write / Mmap
  // With kRegionFlagMmap: the fd the client maps (borrowed; lives as long as the device), the
  // offset of the region in it, and the mmappable sub-areas (offsets relative to the region).
  int mmap_fd = -1;
  uint64_t mmap_offset = 0;
  std::vector<wire::SparseMmapArea> sparse_areas;
};

struct IrqDescription {
  uint32_t count = 0;
  uint32_t flags = 0;  // wire::kIrqInfo*
};

class VfioDevice {
 public:
  virtual ~VfioDevice() = default;

  virtual uint32_t device_flags() const { return wire::kDeviceFlagPci | wire::kDeviceFlagReset; }
  virtual uint32_t num_regions() const { return wire::kPciNumRegions; }
  virtual uint32_t num_irqs() const { return wire::kPciNumIrqs; }
  virtual RegionDescription DescribeRegion(uint32_t index) const = 0;
  virtual IrqDescription DescribeIrq(uint32_t index) const = 0;

  // Accesses inside [0, size) of a region with the matching READ/WRITE flag; the session has
  // checked the bounds and flags already.
  virtual Status ReadRegion(uint32_t index, uint64_t offset, std::span<uint8_t> out) = 0;
  virtual Status WriteRegion(uint32_t index, uint64_t offset, std::span<const uint8_t> data) = 0;

  virtual Status Reset() = 0;

  // A client session starts / ends. After Detach the device must not touch guest memory or
  // raise interrupts; its own state (registers, backing data) is kept for the next client.
  virtual void Attach(DeviceContext* context) = 0;
  virtual void Detach() = 0;

  // The client is about to unmap [iova, iova + size): drop every reference into it now.
  virtual void OnDmaRangeRemoved(uint64_t iova, uint64_t size) {
    (void)iova;
    (void)size;
  }
  // A device that does work between messages (polls rings) returns its poller; the endpoint
  // registers it with the reactor, and wake_fd (when >= 0) as an fd that wakes a sleeping
  // reactor (e.g. backend I/O completions).
  virtual Poller* poller() { return nullptr; }
  virtual int wake_fd() const { return -1; }
  // Why the device cannot serve right now (backend failure, repeated I/O errors); empty while
  // it can. Called on the device's poll thread.
  virtual std::string health_error() const { return {}; }
  // Adds the device's counters to *out (on the device's poll thread).
  virtual void CollectCounters(DeviceCounters* out) const { (void)out; }
  // An IRQ's mask state changed (e.g. MSI-X vector unmasked via SET_IRQS).
  virtual void OnIrqMaskChanged(uint32_t index, uint32_t vector, bool masked) {
    (void)index;
    (void)vector;
    (void)masked;
  }

  // Handing a live device to another process (server/state/record.h). Quiesce finishes the
  // work in flight (a virtio device completes its requests to the driver) so that SaveState
  // can write the device's whole state; RestoreState (with the restored client attached)
  // takes it back, all or nothing. A device that cannot be handed over keeps the default:
  // EOPNOTSUPP, and its client is not carried over.
  virtual void Quiesce() {}
  virtual Status SaveState(state::Writer& w) const {
    (void)w;
    return MakeError(EOPNOTSUPP, "this device's state cannot be handed over");
  }
  virtual Status RestoreState(state::Reader& r) {
    (void)r;
    return MakeError(EOPNOTSUPP, "this device's state cannot be handed over");
  }
};

}  // namespace vfu
