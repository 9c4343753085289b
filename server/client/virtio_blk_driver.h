// A userspace virtio-blk driver on the vfio-user client library: what a guest kernel does,
// done from a test or benchmark process. It finds the virtio-pci capabilities in config space,
// negotiates features, sets up split virtqueues in memfd-backed memory that it DMA-maps to the
// server, wires one MSI-X eventfd per queue, and submits requests (read, write, flush,
// discard, write-zeroes, get-id). Completions are found by polling the used ring or by
// waiting on the queue's eventfd. Not thread-safe; one driver per client connection.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "server/client/client.h"
#include "server/common/unique_fd.h"

namespace vfu::client {

struct VirtioBlkDriverOptions {
  uint16_t queues = 1;
  uint16_t queue_size = 128;
  bool event_idx = true;
  bool indirect = false;
  // Bytes of data buffer per queue slot (the largest single request).
  uint32_t slot_bytes = 128 * 1024;
  // IOVA where the driver's memory is mapped for the device.
  uint64_t iova_base = 0x10000000;
};

struct BlkCompletion {
  uint64_t tag = 0;
  uint8_t status = 0xff;  // virtio-blk status (0 ok, 1 ioerr, 2 unsupported)
  uint32_t used_len = 0;
};

class VirtioBlkDriver {
 public:
  static Result<std::unique_ptr<VirtioBlkDriver>> Create(Client* client,
                                                         VirtioBlkDriverOptions options = {});
  ~VirtioBlkDriver();

  uint64_t capacity_sectors() const { return capacity_; }
  uint32_t block_size() const { return block_size_; }
  uint64_t features() const { return features_; }
  uint16_t num_queues() const { return static_cast<uint16_t>(queues_.size()); }
  uint8_t ReadStatus();

  // The data buffer of queue slot `slot` (slot_bytes long): fill it before a write, read it
  // after a read completes. Slots are the caller's to manage: one request per slot at a time.
  uint8_t* slot_buffer(uint16_t queue, uint16_t slot);
  uint16_t slots_per_queue() const { return static_cast<uint16_t>(queue_size_ / 3); }

  // Starts a request on `queue` using `slot` (and its buffer for data). `tag` comes back with
  // the completion. Kicks the device unless it asked not to be kicked.
  Status Read(uint16_t queue, uint16_t slot, uint64_t sector, uint32_t bytes, uint64_t tag);
  Status Write(uint16_t queue, uint16_t slot, uint64_t sector, uint32_t bytes, uint64_t tag);
  Status Flush(uint16_t queue, uint16_t slot, uint64_t tag);
  Status Discard(uint16_t queue, uint16_t slot, uint64_t sector, uint32_t sectors, uint64_t tag);
  Status WriteZeroes(uint16_t queue, uint16_t slot, uint64_t sector, uint32_t sectors,
                     uint64_t tag);
  Status GetId(uint16_t queue, uint16_t slot, uint64_t tag);
  // A request with an arbitrary type (for testing the device's refusal of unknown types).
  Status Raw(uint16_t queue, uint16_t slot, uint32_t type, uint64_t sector, uint32_t in_bytes,
             uint32_t out_bytes, uint64_t tag);

  // Test hook: publishes a hand-made chain (descriptor addresses are raw IOVAs, possibly
  // hostile) at descriptor index `first` and makes `head` available.
  struct RawDescriptor {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
  };
  Status SubmitRaw(uint16_t queue, uint16_t first, std::span<const RawDescriptor> descs,
                   uint16_t head, uint64_t tag);
  // Test hook: IOVA of a slot's meta area (header at +0, status at +32) and data (+64).
  uint64_t slot_iova(uint16_t queue, uint16_t slot) const { return SlotIova(queue, slot, 0); }
  // Test hook: the first IOVA after the driver's DMA-mapped memory.
  uint64_t memory_end_iova() const { return options_.iova_base + memory_.size(); }
  // Benchmark hook: host pointers to a queue's rings and to the driver's memory, so that a
  // baseline device loop can serve the same rings without the server.
  struct RingView {
    uint8_t* desc = nullptr;
    uint8_t* avail = nullptr;
    uint8_t* used = nullptr;
    uint16_t size = 0;
    uint8_t* memory = nullptr;  // host address of iova_base
    uint64_t iova_base = 0;
  };
  RingView ring_view(uint16_t queue) const {
    const Queue& q = queues_[queue];
    return {q.desc, q.avail, q.used, queue_size_, memory_.data(), options_.iova_base};
  }
  // Test hook: moves the avail index by `delta` without adding entries (a broken driver).
  void CorruptAvailIndex(uint16_t queue, uint16_t delta);

  // Collects finished requests of `queue` from the used ring (non-blocking).
  size_t Poll(uint16_t queue, std::vector<BlkCompletion>* out);
  // Waits for the queue's interrupt eventfd (then Poll). false on timeout.
  bool WaitForInterrupt(uint16_t queue, std::chrono::milliseconds timeout);
  // Submits nothing; waits until `count` completions of `queue` arrived, polling or with
  // interrupts. Fails on timeout.
  Result<std::vector<BlkCompletion>> WaitFor(uint16_t queue, size_t count,
                                             std::chrono::milliseconds timeout,
                                             bool use_interrupts = false);

  // Driver-side notification suppression: ask the device not to interrupt this queue, until
  // called again with false (with EVENT_IDX, Poll then stops moving used_event).
  void SetInterruptsSuppressed(uint16_t queue, bool suppressed);
  uint64_t kicks() const { return kicks_; }
  int interrupt_fd(uint16_t queue) const { return queues_[queue].eventfd.get(); }

  // Forget the device without resetting it or unmapping memory (simulates a VMM that died).
  void Abandon() { mapped_ = false; }

  // Resets the device (status 0) the way a guest does.
  Status ResetDevice();

 private:
  struct Queue {
    uint64_t desc_iova = 0, avail_iova = 0, used_iova = 0;
    uint8_t* desc = nullptr;
    uint8_t* avail = nullptr;
    uint8_t* used = nullptr;
    uint16_t avail_idx = 0;
    uint16_t last_used = 0;
    bool interrupts_suppressed = false;  // SetInterruptsSuppressed: Poll leaves used_event alone
    uint16_t notify_off = 0;
    UniqueFd eventfd;
    std::vector<uint64_t> tags;  // per slot
    std::vector<uint32_t> status_offsets;
  };

  VirtioBlkDriver(Client* client, VirtioBlkDriverOptions options);
  Status Init();
  Status FindCapabilities();
  Status SetupQueue(uint16_t index);
  Status Submit(uint16_t queue, uint16_t slot, uint32_t type, uint64_t sector,
                std::span<const std::pair<uint32_t, uint32_t>> data, bool device_writes,
                uint64_t tag);
  Status SubmitRange(uint16_t queue, uint16_t slot, uint32_t type, uint64_t sector,
                     uint32_t sectors, uint64_t tag);
  Status WriteCommon8(uint32_t off, uint8_t v);
  Status WriteCommon16(uint32_t off, uint16_t v);
  Status WriteCommon32(uint32_t off, uint32_t v);
  Status WriteCommon64(uint32_t off, uint64_t v);
  Result<uint32_t> ReadCommon32(uint32_t off);
  Result<uint16_t> ReadCommon16(uint32_t off);
  uint64_t SlotIova(uint16_t queue, uint16_t slot, uint32_t offset) const;
  uint8_t* SlotHost(uint16_t queue, uint16_t slot, uint32_t offset) const;

  Client* client_;
  VirtioBlkDriverOptions options_;
  uint16_t queue_size_;
  DmaBuffer memory_;
  uint64_t ring_bytes_per_queue_ = 0;
  uint64_t slot_stride_ = 0;
  uint64_t slots_base_ = 0;
  uint32_t common_bar_ = 0, common_off_ = 0;
  uint32_t notify_bar_ = 0, notify_off_ = 0, notify_mult_ = 0;
  uint32_t device_bar_ = 0, device_off_ = 0;
  uint64_t capacity_ = 0;
  uint32_t block_size_ = 512;
  uint64_t features_ = 0;
  std::vector<Queue> queues_;
  uint64_t kicks_ = 0;
  bool mapped_ = false;
};

}  // namespace vfu::client
