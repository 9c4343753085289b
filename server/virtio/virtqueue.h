// Split virtqueue (virtio 1.x, section 2.7) as the device sees it, over GuestMemory.
//
// The queue is plain state (size, ring addresses, indices) plus host pointers to the three
// rings, obtained from the client's DMA map table at configuration time. Every descriptor
// address and length is translated through GuestMemory, so a buffer outside mapped,
// accessible memory never turns into a server memory access. Chains are bounded: no loops, no
// more descriptors than the ring size (or than an indirect table holds), no nested indirect
// tables. Ring index reads use acquire ordering and the used index a release store; the
// decision to interrupt or to sleep re-reads the driver's flags after a full fence.
//
// The host ring pointers are taken once, in Configure: a device must Reset() (or re-Configure)
// its queues before the DMA map holding a ring goes away (VfioDevice::OnDmaRangeRemoved).
// Not thread-safe: one device thread owns the queue; the driver is the only other party.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <vector>

#include "server/common/status.h"
#include "server/session/device.h"
#include "server/state/record.h"

namespace vfu::virtio {

inline constexpr uint16_t kDescFlagNext = 1;
inline constexpr uint16_t kDescFlagWrite = 2;
inline constexpr uint16_t kDescFlagIndirect = 4;
inline constexpr uint16_t kAvailFlagNoInterrupt = 1;  // VRING_AVAIL_F_NO_INTERRUPT
inline constexpr uint16_t kUsedFlagNoNotify = 1;      // VRING_USED_F_NO_NOTIFY
inline constexpr uint16_t kMaxQueueSize = 32768;
// An indirect table may hold at most max(queue size, kMaxIndirectEntries) descriptors. The
// spec bounds a chain by the queue size, but Linux builds indirect tables larger than small
// rings (it only warns); 1024 matches QEMU's VIRTQUEUE_MAX_SIZE and vhost's UIO_MAXIOV.
inline constexpr uint32_t kMaxIndirectEntries = 1024;

struct QueueConfig {
  uint16_t size = 0;  // a power of two, 1..32768
  uint64_t desc_addr = 0;
  uint64_t avail_addr = 0;
  uint64_t used_addr = 0;
  bool event_idx = false;  // VIRTIO_F_EVENT_IDX negotiated
  bool indirect = false;   // VIRTIO_F_INDIRECT_DESC negotiated
};

// One available request: the head index and its buffers as host segments, device-readable
// ones first (in chain order), then device-writable ones.
struct DescriptorChain {
  uint16_t head = 0;
  std::vector<iovec> readable;
  std::vector<iovec> writable;
  uint64_t readable_bytes = 0;
  uint64_t writable_bytes = 0;
  // Set when the chain itself was well formed but a buffer could not be translated (outside
  // mapped memory, wrong permission): the device fails just this request. The segments that
  // did translate are kept so that a device can still write a status byte if its status
  // buffer is fine.
  Status buffer_error;
  // Whether the last device-writable descriptor with data translated: `writable.back()` ends
  // in that descriptor's buffer only if it did (a device that writes a trailing status byte
  // must check this, or it would write into an earlier buffer).
  bool last_writable_translated = false;

  void Clear();
};

class SplitVirtqueue {
 public:
  // Checks the configuration (size a power of two, ring alignment 16/2/4, each ring inside
  // one mapped accessible region: descriptor table and avail ring readable, used ring
  // writable) and takes host pointers to the rings.
  Status Configure(const QueueConfig& config, GuestMemory* memory);
  void Reset();
  bool ready() const { return desc_ != nullptr; }
  const QueueConfig& config() const { return config_; }

  // Takes the next available chain into *chain (reusing its vectors). Returns false when the
  // ring is empty. An error means the driver broke the ring itself (avail index ahead by
  // more than the queue size, head index out of range, a loop, a chain longer than allowed,
  // a malformed or nested indirect table, an unmapped indirect table, a device-readable
  // descriptor after a device-writable one): the device must set NEEDS_RESET. On such an error
  // the entry is not consumed and *chain is unspecified.
  // With EVENT_IDX and notifications enabled, each Pop also publishes avail_event.
  Result<bool> Pop(DescriptorChain* chain);

  // Returns a chain to the driver with `written` bytes written into its writable part. The used
  // element is written first, then used->idx with a release store, so the driver never sees
  // the index before the element.
  void Push(uint16_t head, uint32_t written);

  // After one or more Push calls: whether the driver wants an interrupt now (honours
  // VRING_AVAIL_F_NO_INTERRUPT, or used_event with EVENT_IDX, where avail->flags is ignored).
  // With EVENT_IDX it covers every Push since the previous call, so call it once per batch;
  // the first call after Configure/Reset/set_indices always says yes.
  bool ShouldInterrupt();

  // True when the driver has made buffers available that Pop has not taken yet.
  bool HasAvailable() const;

  // Kick suppression while the device polls: disabled sets VRING_USED_F_NO_NOTIFY (or stops
  // moving avail_event with EVENT_IDX); enabled clears it (or publishes avail_event =
  // next avail index). Returns true if, after enabling, work is already available (the caller
  // must then not sleep: this closes the race with a driver that added work without kicking).
  // A device that sleeps waiting for kicks must call this (and see false) before every sleep.
  bool EnableNotifications();
  void DisableNotifications();

  // State that can leave the process (server/state/record.h): the configuration and the
  // device-side position (last_avail_idx, used index, the interrupt and notification state of
  // EVENT_IDX). The rings themselves are guest memory. RestoreState configures the queue again
  // over `memory` (the restored DMA maps) when the saved one was ready; all or nothing.
  void SaveState(state::Writer& w) const;
  Status RestoreState(state::Reader& r, GuestMemory* memory);

  uint16_t last_avail_idx() const { return last_avail_idx_; }
  uint16_t used_idx() const { return used_idx_; }
  // Restores indices (e.g. a device reattaching to a live queue); tests use it too.
  void set_indices(uint16_t last_avail, uint16_t used) {
    last_avail_idx_ = last_avail;
    shadow_avail_idx_ = last_avail;
    used_idx_ = used;
    signalled_used_valid_ = false;
  }

 private:
  struct Desc;
  // Walks the chain at `head` in the descriptor table into *chain.
  Status WalkChain(uint16_t head, DescriptorChain* chain);
  // Follows the indirect table `desc` refers to (it ends the chain).
  Status WalkIndirect(const Desc& desc, bool* seen_writable, DescriptorChain* chain);
  // Translates one buffer descriptor into *chain (a translation failure is a buffer_error).
  Status AddBuffer(const Desc& desc, bool* seen_writable, DescriptorChain* chain);

  QueueConfig config_;
  GuestMemory* memory_ = nullptr;
  uint8_t* desc_ = nullptr;   // struct virtq_desc[size]
  uint8_t* avail_ = nullptr;  // flags, idx, ring[size], used_event
  uint8_t* used_ = nullptr;   // flags, idx, ring[size] {id, len}, avail_event
  uint16_t last_avail_idx_ = 0;
  uint16_t shadow_avail_idx_ = 0;  // avail->idx as last read (validated); saves re-reads
  uint16_t used_idx_ = 0;
  uint16_t signalled_used_ = 0;  // used index at the last interrupt decision (EVENT_IDX)
  bool signalled_used_valid_ = false;
  bool notifications_enabled_ = true;
  // Scratch for indirect tables that span more than one DMA map (copied, then walked).
  std::vector<iovec> indirect_segments_;
  std::vector<uint8_t> indirect_copy_;
};

}  // namespace vfu::virtio
