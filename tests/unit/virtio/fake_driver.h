// A fake virtio driver for split-virtqueue tests: it owns guest memory (a memfd, as a real
// vfio-user client would share it), maps it into a real DmaMapTable, lays out the three rings
// and a data area in it, and plays the driver's side of the ring protocol: building chains
// (direct and indirect), publishing the avail index, reading used elements, setting the
// suppression words. It also writes raw descriptors and ring entries for hostile tests.
//
// The device sees the memory through the DmaMapTable's own mappings of the memfd; the driver
// writes through the DmaBuffer's mapping: two views of the same shared pages, as in a real VM.
// The memory is mapped as two adjacent DMA maps (split at split_iova()), so tests can place
// buffers and tables across a map boundary.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include <gtest/gtest.h>

#include "server/client/client.h"
#include "server/protocol/wire.h"
#include "server/session/dma_map_table.h"
#include "server/virtio/virtqueue.h"

namespace vfu::virtio::testing {

class FakeDriver {
 public:
  static constexpr uint64_t kBase = 0x10000000;  // IOVA of the guest memory
  static constexpr uint32_t kReadWrite = wire::kDmaFlagRead | wire::kDmaFlagWrite;

  struct Buffer {
    uint64_t addr = 0;
    uint32_t len = 0;
    bool writable = false;
  };
  struct UsedElem {
    uint32_t id = 0;
    uint32_t len = 0;
  };

  // Guest memory of memory_bytes (a multiple of 2 pages), rings at the start of it, each on
  // its own page; the data area follows.
  explicit FakeDriver(uint16_t queue_size, size_t memory_bytes = 1 << 20)
      : size_(queue_size), table_(64) {
    auto buffer = client::DmaBuffer::Create(memory_bytes, "fake-virtio-driver");
    if (!buffer) ADD_FAILURE() << buffer.error().message;
    memory_ = std::make_unique<client::DmaBuffer>(std::move(*buffer));
    const uint64_t half = memory_bytes / 2;
    Status first = table_.Map(kBase, half, 0, kReadWrite, UniqueFd(::dup(memory_->fd())));
    Status second =
        table_.Map(kBase + half, half, half, kReadWrite, UniqueFd(::dup(memory_->fd())));
    EXPECT_TRUE(first.ok()) << first.message();
    EXPECT_TRUE(second.ok()) << second.message();
    desc_iova_ = kBase;
    avail_iova_ = AlignUp(desc_iova_ + 16ull * size_, kPage);
    used_iova_ = AlignUp(avail_iova_ + 6 + 2ull * size_, kPage);
    next_alloc_ = AlignUp(used_iova_ + 6 + 8ull * size_, kPage);
    for (uint16_t i = size_; i > 0; --i) free_.push_back(i - 1);
    chains_.resize(size_);
  }

  DmaMapTable& table() { return table_; }
  uint16_t size() const { return size_; }
  uint64_t desc_iova() const { return desc_iova_; }
  uint64_t avail_iova() const { return avail_iova_; }
  uint64_t used_iova() const { return used_iova_; }
  uint64_t end_iova() const { return kBase + memory_->size(); }
  uint64_t split_iova() const { return kBase + memory_->size() / 2; }

  QueueConfig Config(bool event_idx = false, bool indirect = false) const {
    QueueConfig c;
    c.size = size_;
    c.desc_addr = desc_iova_;
    c.avail_addr = avail_iova_;
    c.used_addr = used_iova_;
    c.event_idx = event_idx;
    c.indirect = indirect;
    return c;
  }

  // Guest memory access through the driver's own view.
  uint8_t* Host(uint64_t iova) {
    EXPECT_GE(iova, kBase);
    EXPECT_LT(iova - kBase, memory_->size());
    return memory_->data() + (iova - kBase);
  }
  // A fresh data buffer (bump allocation; the data area is never reused).
  uint64_t Alloc(size_t len, size_t align = 16) {
    uint64_t iova = AlignUp(next_alloc_, align);
    next_alloc_ = iova + len;
    EXPECT_LE(next_alloc_, end_iova()) << "fake driver memory exhausted";
    return iova;
  }
  // Allocates len bytes and fills them with `fill`.
  uint64_t AllocFilled(size_t len, uint8_t fill) {
    uint64_t iova = Alloc(len);
    std::memset(Host(iova), fill, len);
    return iova;
  }

  // Extra DMA maps for hostile tests: a separate memfd, or none (not accessible).
  uint64_t MapExtra(uint64_t iova, size_t bytes, uint32_t flags, bool with_fd = true) {
    UniqueFd fd;
    if (with_fd) {
      auto buffer = client::DmaBuffer::Create(bytes, "fake-virtio-extra");
      if (!buffer) ADD_FAILURE() << buffer.error().message;
      extra_.push_back(std::make_unique<client::DmaBuffer>(std::move(*buffer)));
      fd = UniqueFd(::dup(extra_.back()->fd()));
    }
    Status s = table_.Map(iova, bytes, 0, flags, std::move(fd));
    EXPECT_TRUE(s.ok()) << s.message();
    return iova;
  }

  // --- Raw writes (hostile tests build what they like) ---

  void WriteDesc(uint16_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    WriteDescAt(desc_iova_ + 16ull * index, addr, len, flags, next);
  }
  void WriteDescAt(uint64_t iova, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    uint8_t* p = Host(iova);
    std::memcpy(p, &addr, 8);
    std::memcpy(p + 8, &len, 4);
    std::memcpy(p + 12, &flags, 2);
    std::memcpy(p + 14, &next, 2);
  }
  // Puts `head` in the next avail ring slot and publishes it at once.
  void Publish(uint16_t head) {
    Store16(avail_iova_ + 4 + 2ull * (avail_idx_ & (size_ - 1)), head);
    ++avail_idx_;
    PublishAvailIdx();
  }
  // Puts `head` in the next slot without publishing (batching).
  void Stage(uint16_t head) {
    Store16(avail_iova_ + 4 + 2ull * (avail_idx_ & (size_ - 1)), head);
    ++avail_idx_;
  }
  void PublishAvailIdx() {
    __atomic_store_n(reinterpret_cast<uint16_t*>(Host(avail_iova_ + 2)), avail_idx_,
                     __ATOMIC_RELEASE);
  }
  // Sets the avail index (both the published one and the driver's own), e.g. to start near
  // the 16-bit wrap or to jump ahead.
  void SetAvailIdx(uint16_t idx) {
    avail_idx_ = idx;
    PublishAvailIdx();
  }
  // Starts both indices at `idx` (pair with SplitVirtqueue::set_indices(idx, idx)).
  void StartAt(uint16_t idx) {
    SetAvailIdx(idx);
    Store16(used_iova_ + 2, idx);
    last_used_ = idx;
  }
  uint16_t avail_idx() const { return avail_idx_; }

  void SetAvailFlags(uint16_t flags) { Store16(avail_iova_, flags); }
  void SetUsedEvent(uint16_t v) { Store16(avail_iova_ + 4 + 2ull * size_, v); }
  uint16_t UsedFlags() { return Load16(used_iova_); }
  uint16_t AvailEvent() { return Load16(used_iova_ + 4 + 8ull * size_); }
  uint16_t UsedIdx() {
    return __atomic_load_n(reinterpret_cast<uint16_t*>(Host(used_iova_ + 2)), __ATOMIC_ACQUIRE);
  }
  UsedElem Used(uint16_t idx) {
    UsedElem e;
    std::memcpy(&e, Host(used_iova_ + 4 + 8ull * (idx & (size_ - 1))), sizeof(e));
    return e;
  }

  // Whether a real driver would kick after moving avail idx from old_idx to avail_idx():
  // used->flags without EVENT_IDX, vring_need_event(avail_event) with it.
  bool WouldKick(uint16_t old_idx, bool event_idx) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!event_idx) return !(UsedFlags() & kUsedFlagNoNotify);
    const uint16_t event = AvailEvent();
    return static_cast<uint16_t>(avail_idx_ - event - 1) <
           static_cast<uint16_t>(avail_idx_ - old_idx);
  }

  // --- Well-formed chains, with descriptor bookkeeping like a real driver ---

  size_t free_descriptors() const { return free_.size(); }

  // Builds a direct chain from free descriptors and stages it (not published). Returns the
  // head.
  uint16_t AddChain(std::span<const Buffer> buffers) {
    EXPECT_FALSE(buffers.empty());
    EXPECT_LE(buffers.size(), free_.size());
    std::vector<uint16_t> ids;
    for (size_t i = 0; i < buffers.size(); ++i) {
      ids.push_back(free_.back());
      free_.pop_back();
    }
    for (size_t i = 0; i < buffers.size(); ++i) {
      const bool last = i + 1 == buffers.size();
      WriteDesc(ids[i], buffers[i].addr, buffers[i].len,
                static_cast<uint16_t>((buffers[i].writable ? kDescFlagWrite : 0) |
                                      (last ? 0 : kDescFlagNext)),
                last ? 0 : ids[i + 1]);
    }
    chains_[ids[0]] = ids;
    Stage(ids[0]);
    return ids[0];
  }
  // Builds an indirect table (in the data area, or at table_iova when non-zero) holding the
  // buffers, and one descriptor pointing at it; stages it. Returns the head.
  uint16_t AddIndirectChain(std::span<const Buffer> buffers, uint64_t table_iova = 0) {
    if (table_iova == 0) table_iova = Alloc(16 * buffers.size());
    WriteIndirectTable(table_iova, buffers);
    EXPECT_FALSE(free_.empty());
    uint16_t id = free_.back();
    free_.pop_back();
    WriteDesc(id, table_iova, static_cast<uint32_t>(16 * buffers.size()), kDescFlagIndirect, 0);
    chains_[id] = {id};
    Stage(id);
    return id;
  }
  void WriteIndirectTable(uint64_t table_iova, std::span<const Buffer> buffers) {
    for (size_t i = 0; i < buffers.size(); ++i) {
      const bool last = i + 1 == buffers.size();
      WriteDescAt(table_iova + 16 * i, buffers[i].addr, buffers[i].len,
                  static_cast<uint16_t>((buffers[i].writable ? kDescFlagWrite : 0) |
                                        (last ? 0 : kDescFlagNext)),
                  last ? 0 : static_cast<uint16_t>(i + 1));
    }
  }

  // Takes every new used element, frees its descriptors and returns the elements.
  std::vector<UsedElem> Reclaim() {
    std::vector<UsedElem> out;
    const uint16_t used = UsedIdx();
    for (; last_used_ != used; ++last_used_) {
      UsedElem e = Used(last_used_);
      out.push_back(e);
      if (e.id >= size_ || chains_[e.id].empty()) {
        ADD_FAILURE() << "used element names descriptor " << e.id << " which is not in flight";
        continue;
      }
      for (uint16_t id : chains_[e.id]) free_.push_back(id);
      chains_[e.id].clear();
    }
    return out;
  }

 private:
  static constexpr uint64_t kPage = 4096;
  static uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
  void Store16(uint64_t iova, uint16_t v) {
    __atomic_store_n(reinterpret_cast<uint16_t*>(Host(iova)), v, __ATOMIC_RELAXED);
  }
  uint16_t Load16(uint64_t iova) {
    return __atomic_load_n(reinterpret_cast<uint16_t*>(Host(iova)), __ATOMIC_RELAXED);
  }

  uint16_t size_;
  DmaMapTable table_;
  std::unique_ptr<client::DmaBuffer> memory_;
  std::vector<std::unique_ptr<client::DmaBuffer>> extra_;
  uint64_t desc_iova_ = 0;
  uint64_t avail_iova_ = 0;
  uint64_t used_iova_ = 0;
  uint64_t next_alloc_ = 0;
  uint16_t avail_idx_ = 0;
  uint16_t last_used_ = 0;
  std::vector<uint16_t> free_;
  std::vector<std::vector<uint16_t>> chains_;  // descriptor ids of each in-flight head
};

}  // namespace vfu::virtio::testing
