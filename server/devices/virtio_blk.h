// virtio-blk (virtio 1.2, section 5.2): a polled block device over a block Backend.
//
// Requests are taken from any number of queues, parsed (header, data, status byte) and
// submitted to the backend with the guest's buffers as the I/O vectors (no copies); completions
// write the status byte, return the chain and interrupt the driver as its suppression rules
// allow. Supported: IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES; capacity, block size,
// read-only, serial, multiple queues. A malformed request (bad header, wrong lengths, buffers
// outside guest memory) fails with IOERR/UNSUPP when its status byte is reachable; a broken
// ring sets DEVICE_NEEDS_RESET. Never reads or writes outside mapped guest memory.
#pragma once

#include <array>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "server/block/backend.h"
#include "server/virtio/virtio_device.h"

namespace vfu::devices {

// virtio-blk feature bits.
inline constexpr uint64_t kBlkFeatureSegMax = 1ull << 2;
inline constexpr uint64_t kBlkFeatureRo = 1ull << 5;
inline constexpr uint64_t kBlkFeatureBlkSize = 1ull << 6;
inline constexpr uint64_t kBlkFeatureFlush = 1ull << 9;
inline constexpr uint64_t kBlkFeatureMq = 1ull << 12;
inline constexpr uint64_t kBlkFeatureDiscard = 1ull << 13;
inline constexpr uint64_t kBlkFeatureWriteZeroes = 1ull << 14;

// Request types and status values.
inline constexpr uint32_t kBlkTypeIn = 0;
inline constexpr uint32_t kBlkTypeOut = 1;
inline constexpr uint32_t kBlkTypeFlush = 4;
inline constexpr uint32_t kBlkTypeGetId = 8;
inline constexpr uint32_t kBlkTypeDiscard = 11;
inline constexpr uint32_t kBlkTypeWriteZeroes = 13;
inline constexpr uint32_t kBlkTypeUnparsed = 0xffffffffu;  // header unreadable (for counters)
inline constexpr uint8_t kBlkStatusOk = 0;
inline constexpr uint8_t kBlkStatusIoErr = 1;
inline constexpr uint8_t kBlkStatusUnsupported = 2;
inline constexpr uint32_t kBlkIdBytes = 20;
inline constexpr uint64_t kSectorSize = 512;

struct [[gnu::packed]] BlkRequestHeader {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
};
static_assert(sizeof(BlkRequestHeader) == 16);

struct [[gnu::packed]] BlkDiscardSegment {
  uint64_t sector;
  uint32_t num_sectors;
  uint32_t flags;  // bit 0: unmap
};
static_assert(sizeof(BlkDiscardSegment) == 16);

struct [[gnu::packed]] BlkConfig {
  uint64_t capacity;  // in 512-byte sectors
  uint32_t size_max;
  uint32_t seg_max;
  uint16_t cylinders;
  uint8_t heads;
  uint8_t sectors;
  uint32_t blk_size;
  uint8_t physical_block_exp;
  uint8_t alignment_offset;
  uint16_t min_io_size;
  uint32_t opt_io_size;
  uint8_t writeback;
  uint8_t unused0;
  uint16_t num_queues;
  uint32_t max_discard_sectors;
  uint32_t max_discard_seg;
  uint32_t discard_sector_alignment;
  uint32_t max_write_zeroes_sectors;
  uint32_t max_write_zeroes_seg;
  uint8_t write_zeroes_may_unmap;
  uint8_t unused1[3];
};
static_assert(sizeof(BlkConfig) == 60);

struct VirtioBlkOptions {
  uint16_t num_queues = 1;
  uint16_t queue_size = 256;
  uint32_t block_size = 512;
  bool read_only = false;
  std::string serial = "vfu-disk";
  uint32_t seg_max = 254;
  // How long a reset, a detach or a DMA unmap waits for in-flight I/O (whose buffers are guest
  // memory) before it goes on without it; see VirtioBlkDevice::RetainMemoryForInflight.
  std::chrono::milliseconds inflight_timeout{60'000};
};

// After this many backend failures in a row the device reports itself unhealthy; one success
// makes it healthy again.
inline constexpr uint64_t kBlkUnhealthyAfterConsecutiveErrors = 8;

struct BlkStats {
  uint64_t reads = 0, writes = 0, flushes = 0, discards = 0, write_zeroes = 0, get_ids = 0;
  uint64_t read_bytes = 0, write_bytes = 0;
  uint64_t errors = 0, unsupported = 0;
};

class VirtioBlkDevice : public virtio::VirtioDevice {
 public:
  VirtioBlkDevice(std::unique_ptr<block::Backend> backend, VirtioBlkOptions options);
  ~VirtioBlkDevice() override;

  uint16_t device_type() const override { return 2; }
  uint64_t device_features() const override;
  uint16_t num_queues() const override { return options_.num_queues; }
  uint16_t max_queue_size() const override { return options_.queue_size; }
  uint32_t config_size() const override { return sizeof(BlkConfig); }
  void ReadConfig(uint32_t offset, std::span<uint8_t> out) override;
  void WriteConfig(uint32_t offset, std::span<const uint8_t> data) override;

  Status Activate(virtio::VirtioContext* context) override;
  void Reset() override;
  PollResult Process() override;
  void DrainInflight() override;
  PollResult ProcessInactive() override;
  size_t inflight() const override { return inflight_count_; }
  int event_fd() const override { return backend_->event_fd(); }
  std::string health_error() const override;
  void CollectCounters(DeviceCounters* out) const override;

  const BlkStats& stats() const { return stats_; }
  block::Backend* backend() { return backend_.get(); }

 private:
  struct Inflight {
    bool used = false;
    uint16_t queue = 0;
    uint16_t head = 0;
    uint8_t* status = nullptr;  // the request's status byte in guest memory
    uint32_t written = 0;       // bytes written into the chain on success (data + status)
    uint32_t type = 0;
    uint64_t bytes = 0;
    uint64_t started_ns = 0;
    std::vector<iovec> data;   // the guest buffers the backend reads or writes
    bool abandoned = false;    // given up on by a reset or detach: its completion is dropped
    bool pins_memory = false;  // the guest memory retained for late I/O waits for it
  };

  // After a wait for in-flight I/O timed out, while the backend still holds guest buffers:
  // keeps the guest memory mapped now in place until every request in flight has finished, so
  // that late I/O never lands in unmapped memory. With `abandon` (a reset or detach: the driver
  // is gone) those requests are also marked abandoned: their completions are dropped, never
  // written into the next driver's rings or through their stale status pointers.
  void RetainMemoryForInflight(bool abandon, const char* waiting_for);
  // Returns a finished request's slot (and its share of retained memory).
  void FreeSlot(Inflight& s, uint64_t tag);
  // Frees the slots of what the backend finished, without completing anything to a driver
  // (there is none, or it is being reset). Returns how many.
  size_t ForgetFinished();
  // Waits briefly for the backend to finish something (its event fd, or 1 ms).
  void WaitForBackend();

  // Takes what the queue offers, up to a budget. Returns the number of requests started.
  size_t DrainQueue(uint16_t index);
  // Parses and starts one request; completes it at once when it fails before reaching the
  // backend.
  void StartRequest(uint16_t queue, virtio::DescriptorChain& chain);
  void Complete(uint16_t queue, uint16_t head, uint8_t* status, uint8_t value, uint32_t written);
  // Counts a finished request of `type` (a virtio-blk request type) in the operation counters.
  void CountRequest(uint32_t type, uint8_t status, uint64_t bytes, uint64_t latency_ns);
  size_t ReapCompletions();
  void WaitForInflight();
  // Takes a free slot (marked used and counted in flight), or -1.
  int AllocateSlot();

  std::unique_ptr<block::Backend> backend_;
  VirtioBlkOptions options_;
  BlkConfig config_{};
  virtio::VirtioContext* context_ = nullptr;
  virtio::DescriptorChain chain_;
  std::vector<Inflight> slots_;
  std::vector<iovec> data_scratch_;  // the request being parsed; swapped into its slot
  std::vector<int> free_slots_;
  size_t inflight_count_ = 0;  // slots in use, abandoned ones included
  size_t abandoned_count_ = 0;
  size_t pinned_count_ = 0;  // slots with pins_memory
  // Guest memory kept mapped for late I/O (GuestMemory::Retain handles), until pinned_count_
  // drops to 0.
  std::vector<std::shared_ptr<const void>> retained_memory_;
  std::vector<block::Completion> completions_;
  std::vector<bool> interrupt_pending_;
  std::vector<BlkDiscardSegment> segments_;
  BlkStats stats_;
  // Per operation: read, write, flush, discard, write_zeroes, get_id, other.
  std::array<OperationCounters, 7> op_counters_;
  uint64_t now_ns_ = 0;  // taken once per batch of started requests
  uint64_t consecutive_backend_errors_ = 0;
  int last_backend_error_ = 0;
};

}  // namespace vfu::devices
