// Modern (virtio 1.x) virtio-over-PCI transport. It routes BAR offsets to the four virtio
// structures described by vendor capabilities — common configuration, notifications, ISR
// status and device configuration — and owns feature negotiation, device status, queue setup,
// MSI-X vectors (config + one per queue) and interrupt suppression. The device behind it
// (VirtioDevice) sees features, config, queues and reset, nothing about PCI.
//
// BAR1 holds the MSI-X table and PBA (never mmapped: QEMU emulates the table and forwards PBA
// reads). BAR4 (64-bit) holds the virtio structures; queue notifications are posted
// REGION_WRITEs to the notify area, which wake the poll thread, and the device is also a
// reactor Poller: while busy it polls its rings with guest kicks suppressed, and before the
// thread sleeps it re-enables kicks and re-checks the rings (adaptive polling).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "server/pci/pci_device.h"
#include "server/runtime/reactor.h"
#include "server/virtio/virtio_device.h"
#include "server/virtio/virtqueue.h"

namespace vfu::virtio {

enum class PollMode { kBusy, kAdaptive, kInterrupt };
const char* PollModeName(PollMode mode);
bool ParsePollMode(const std::string& text, PollMode* mode);

struct VirtioPciOptions {
  PollMode poll_mode = PollMode::kAdaptive;
  // Adaptive mode: how long the rings must stay empty before the poller agrees to sleep.
  std::chrono::microseconds idle_before_sleep{200};
  uint16_t pci_device_id_override = 0;  // 0: 0x1040 + device type
  uint32_t class_code = 0;              // 0: derived from the device type
};

// Layout of BAR4.
inline constexpr int kMsixBar = 1;
inline constexpr int kVirtioBar = 4;
inline constexpr uint64_t kVirtioBarSize = 0x4000;
inline constexpr uint64_t kCommonCfgOffset = 0x0000;
inline constexpr uint64_t kCommonCfgSize = 0x40;
inline constexpr uint64_t kIsrOffset = 0x1000;
inline constexpr uint64_t kDeviceCfgOffset = 0x2000;
inline constexpr uint64_t kNotifyOffset = 0x3000;
inline constexpr uint32_t kNotifyOffMultiplier = 4;
inline constexpr uint16_t kNoVector = 0xffff;

// Common configuration structure offsets (virtio 1.2, 4.1.4.3).
namespace common {
inline constexpr uint32_t kDeviceFeatureSelect = 0x00;
inline constexpr uint32_t kDeviceFeature = 0x04;
inline constexpr uint32_t kDriverFeatureSelect = 0x08;
inline constexpr uint32_t kDriverFeature = 0x0c;
inline constexpr uint32_t kConfigMsixVector = 0x10;
inline constexpr uint32_t kNumQueues = 0x12;
inline constexpr uint32_t kDeviceStatus = 0x14;
inline constexpr uint32_t kConfigGeneration = 0x15;
inline constexpr uint32_t kQueueSelect = 0x16;
inline constexpr uint32_t kQueueSize = 0x18;
inline constexpr uint32_t kQueueMsixVector = 0x1a;
inline constexpr uint32_t kQueueEnable = 0x1c;
inline constexpr uint32_t kQueueNotifyOff = 0x1e;
inline constexpr uint32_t kQueueDesc = 0x20;
inline constexpr uint32_t kQueueDriver = 0x28;
inline constexpr uint32_t kQueueDevice = 0x30;
inline constexpr uint32_t kQueueNotifyData = 0x38;
inline constexpr uint32_t kQueueReset = 0x3a;
}  // namespace common

struct VirtioPciStats {
  uint64_t kicks = 0;
  uint64_t interrupts = 0;
  uint64_t resets = 0;
  uint64_t needs_reset = 0;
};

class VirtioPciDevice : public pci::PciDevice, public Poller, public VirtioContext {
 public:
  static Result<std::unique_ptr<VirtioPciDevice>> Create(std::unique_ptr<VirtioDevice> device,
                                                         VirtioPciOptions options = {});
  ~VirtioPciDevice() override;

  // VfioDevice
  void Attach(DeviceContext* context) override;
  void Detach() override;
  void OnDmaRangeRemoved(uint64_t iova, uint64_t size) override;
  Poller* poller() override { return this; }
  int wake_fd() const override { return device_->event_fd(); }
  std::string health_error() const override { return device_->health_error(); }
  void CollectCounters(DeviceCounters* out) const override;

  // Poller
  PollResult Poll() override;
  bool PrepareToSleep() override;
  void AfterWake() override;
  std::chrono::microseconds IdleThreshold() const override;

  // VirtioContext
  uint64_t driver_features() const override { return driver_features_; }
  uint16_t num_queues() const override { return static_cast<uint16_t>(queues_.size()); }
  SplitVirtqueue* queue(uint16_t index) override;
  void InterruptQueue(uint16_t index) override;
  void SetNeedsReset(const std::string& reason) override;
  void ConfigChanged() override;
  GuestMemory* memory() override;

  // State that can leave the process (server/state/record.h): the virtio transport (features
  // and their selectors, status, config generation and vector, queue select, ISR, each queue's
  // size, vector, enable, addresses and ring position, paused "stale" queues) followed by the
  // PCI function (config space, INTx, MSI-X). The device must have no request in flight
  // (SaveState fails with EBUSY otherwise: the caller drains first). RestoreState needs the
  // restored client attached (its memory holds the rings): it checks the whole record before
  // it changes anything, then re-activates the device if the driver had (DRIVER_OK).
  void Quiesce() override;
  Status SaveState(state::Writer& w) const override;
  Status RestoreState(state::Reader& r) override;

  VirtioDevice* device() { return device_.get(); }
  uint8_t device_status() const { return status_; }
  const VirtioPciStats& stats() const { return stats_; }
  PollMode poll_mode() const { return options_.poll_mode; }

 protected:
  Status BarRead(int bar, uint64_t offset, std::span<uint8_t> out) override;
  Status BarWrite(int bar, uint64_t offset, std::span<const uint8_t> data) override;
  Status ResetDevice() override;

 private:
  struct Queue {
    uint16_t size = 0;
    uint16_t msix_vector = kNoVector;
    bool enabled = false;
    uint64_t desc = 0;
    uint64_t driver = 0;
    uint64_t device = 0;
    SplitVirtqueue ring;
    // The rings' memory was unmapped while the queue was live; it is set up again from the
    // same addresses (keeping its indices) once the memory is mapped again.
    bool stale = false;
    uint16_t saved_last_avail = 0;
    uint16_t saved_used = 0;
  };

  VirtioPciDevice(std::unique_ptr<VirtioDevice> device, VirtioPciOptions options);
  Status Init();
  uint64_t offered_features() const;
  void ReadCommon(uint64_t offset, std::span<uint8_t> out);
  void WriteCommon(uint64_t offset, std::span<const uint8_t> data);
  void WriteCommonField(uint32_t field, uint64_t value);
  void SetStatus(uint8_t status);
  Status ActivateQueues();
  QueueConfig MakeQueueConfig(const Queue& q) const;
  bool RingsOverlap(const Queue& q, uint64_t iova, uint64_t size) const;
  void RevalidateStaleQueues();
  void ResetTransport();
  void Interrupt(uint16_t vector, uint8_t isr_bit);
  bool active() const { return active_; }

  std::unique_ptr<VirtioDevice> device_;
  VirtioPciOptions options_;
  std::vector<Queue> queues_;
  uint32_t device_feature_select_ = 0;
  uint32_t driver_feature_select_ = 0;
  uint64_t driver_features_ = 0;
  uint16_t config_msix_vector_ = kNoVector;
  uint8_t status_ = 0;
  uint8_t config_generation_ = 0;
  uint16_t queue_select_ = 0;
  uint8_t isr_ = 0;
  bool active_ = false;
  bool notifications_enabled_ = true;
  bool any_stale_ = false;
  VirtioPciStats stats_;
};

}  // namespace vfu::virtio
