// What a virtio device implements, independent of the transport. The virtio-pci transport
// (virtio_pci.h) owns feature negotiation, device status, queue setup, notifications and
// interrupts; a device sees only its features, its config space, its queues (through a
// VirtioContext) and reset. Devices are polled: Process() services the queues and returns
// whether it did any work.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "server/common/status.h"
#include "server/runtime/reactor.h"
#include "server/session/device.h"
#include "server/virtio/virtqueue.h"

namespace vfu::virtio {

// Transport-level feature bits.
inline constexpr uint64_t kFeatureIndirectDesc = 1ull << 28;
inline constexpr uint64_t kFeatureEventIdx = 1ull << 29;
inline constexpr uint64_t kFeatureVersion1 = 1ull << 32;

// Device status bits.
inline constexpr uint8_t kStatusAcknowledge = 1;
inline constexpr uint8_t kStatusDriver = 2;
inline constexpr uint8_t kStatusDriverOk = 4;
inline constexpr uint8_t kStatusFeaturesOk = 8;
inline constexpr uint8_t kStatusNeedsReset = 64;
inline constexpr uint8_t kStatusFailed = 128;

// What the transport offers a running device.
class VirtioContext {
 public:
  virtual ~VirtioContext() = default;
  virtual uint64_t driver_features() const = 0;
  virtual uint16_t num_queues() const = 0;
  // The queue, or nullptr when the driver did not enable it.
  virtual SplitVirtqueue* queue(uint16_t index) = 0;
  // Interrupts the driver for queue `index` if the queue's suppression rules allow.
  virtual void InterruptQueue(uint16_t index) = 0;
  // The device broke (or the driver broke the device): sets DEVICE_NEEDS_RESET and tells the
  // driver with a configuration interrupt.
  virtual void SetNeedsReset(const std::string& reason) = 0;
  virtual void ConfigChanged() = 0;
  virtual GuestMemory* memory() = 0;
};

class VirtioDevice {
 public:
  virtual ~VirtioDevice() = default;

  virtual uint16_t device_type() const = 0;      // virtio device ID (2 = block)
  virtual uint64_t device_features() const = 0;  // device-specific bits (0..23)
  virtual uint16_t num_queues() const = 0;
  virtual uint16_t max_queue_size() const = 0;
  virtual uint32_t config_size() const = 0;
  virtual void ReadConfig(uint32_t offset, std::span<uint8_t> out) = 0;
  virtual void WriteConfig(uint32_t offset, std::span<const uint8_t> data) {
    (void)offset;
    (void)data;
  }

  // DRIVER_OK: the queues the driver enabled are configured. The context stays valid until
  // Reset() or Detach().
  virtual Status Activate(VirtioContext* context) = 0;
  // Stops using the queues and guest memory; waits for in-flight I/O to finish first (its
  // buffers are guest memory). Device data (the disk) is kept.
  virtual void Reset() = 0;
  // Waits for in-flight I/O and completes it to the driver as usual (guest memory is about to
  // change under the queues).
  virtual void DrainInflight() {}
  // Services the queues and completes finished I/O. kBusy when anything happened.
  virtual PollResult Process() = 0;
  // Between drivers (no context): collects I/O that finishes late, after a reset or detach
  // stopped waiting for it. kBusy when anything was collected.
  virtual PollResult ProcessInactive() { return PollResult::kIdle; }
  // True while requests are in flight in the backend (the poller must not sleep unless the
  // backend can wake it: see event_fd()).
  virtual size_t inflight() const = 0;
  // Becomes readable when in-flight I/O completes (-1: completions are immediate).
  virtual int event_fd() const { return -1; }
  // Why the device cannot serve, if it cannot (backend failure); empty when healthy.
  virtual std::string health_error() const { return {}; }
  // Adds request counters (see server/common/stats.h).
  virtual void CollectCounters(DeviceCounters* out) const { (void)out; }
};

}  // namespace vfu::virtio
