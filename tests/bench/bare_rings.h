// Bare shared-ring loops for the benchmarks' baselines: a "driver" (the calling thread) keeps
// 4 KiB block reads outstanding and a spinning "device" thread serves them, with nothing but the
// ring format's own work in between (no address checks, no validation, no counters, no
// reactor). Three formats, one interface (Submit(slot, sector), Poll(on_completion(slot)),
// thread()):
//   SpscRing        one request ring and one completion ring of small inline records: the floor
//                   of any shared-ring design;
//   BareSplitRing   a virtio split virtqueue (descriptor table, avail and used rings) carrying
//                   virtio-blk requests: 16-byte header and status byte in the slot's buffer;
//   BarePackedRing  a virtio 1.1 packed virtqueue (VIRTIO_F_RING_PACKED) carrying the same.
// Both virtio drivers write the three descriptors of a request (header, data, status) on every
// submission, as the Linux driver and ours do. With a RAM disk the device copies each block into
// the slot's data area; without one (null) no data moves. Slots are laid out like those of the
// userspace driver: `slot_stride` bytes each, header at 0, status at 16, data at 64.
#pragma once

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>

namespace vfu::bench {

// Pins the calling thread to `cpu` (nothing on a machine with fewer than two CPUs).
inline void PinThreadToCpu(int cpu) {
  if (std::thread::hardware_concurrency() < 2) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  (void)pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

constexpr uint32_t kBareBlockBytes = 4096;
constexpr uint32_t kBareSectorBytes = 512;

struct BareRingSetup {
  uint8_t* slots = nullptr;        // slot buffers; may be null for SpscRing without a disk
  size_t slot_stride = 0;          // bytes between slots
  const uint8_t* disk = nullptr;   // RAM disk the device copies reads from; null: none
  void (*on_device_start)() = {};  // runs first on the device thread (e.g. pinning)
};

// Owns the device thread: starts it with Serve() and stops it on destruction.
template <typename Ring>
class BareDeviceThread {
 public:
  explicit BareDeviceThread(Ring* ring, void (*on_start)())
      : thread_([ring, on_start, this] {
          if (on_start != nullptr) on_start();
          ring->Serve(stop_);
        }) {}
  ~BareDeviceThread() {
    stop_.store(true);
    thread_.join();
  }
  BareDeviceThread(const BareDeviceThread&) = delete;
  BareDeviceThread& operator=(const BareDeviceThread&) = delete;
  const pthread_t* handle() {
    handle_ = thread_.native_handle();
    return &handle_;
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
  pthread_t handle_{};
};

// Fills `slot`'s 16-byte virtio-blk header for a read of `sector`.
inline uint8_t* WriteReadHeader(const BareRingSetup& setup, uint32_t slot, uint64_t sector) {
  uint8_t* buffer = setup.slots + size_t{slot} * setup.slot_stride;
  const uint64_t header[2] = {0 /* VIRTIO_BLK_T_IN, reserved */, sector};
  std::memcpy(buffer, header, sizeof(header));
  return buffer;
}

// The device's side of one request, common to every virtio-format loop: read the header, copy the
// block (RAM disk), write the status byte.
inline void ServeBlkRead(const uint8_t* disk, const uint8_t* header_at, uint8_t* data_at,
                         uint32_t data_len, uint8_t* status_at) {
  uint64_t header[2];
  std::memcpy(header, header_at, sizeof(header));
  asm volatile("" : : "r"(header) : "memory");
  if (disk != nullptr) std::memcpy(data_at, disk + header[1] * kBareSectorBytes, data_len);
  *status_at = 0;  // VIRTIO_BLK_S_OK
}

class SpscRing {
 public:
  static constexpr uint32_t kSize = 256;

  explicit SpscRing(const BareRingSetup& setup)
      : setup_(setup), device_(this, setup.on_device_start) {}
  const pthread_t* thread() { return device_.handle(); }

  void Submit(uint32_t slot, uint64_t sector) {
    uint64_t data = 0;
    if (setup_.slots != nullptr) {
      data = reinterpret_cast<uintptr_t>(setup_.slots + size_t{slot} * setup_.slot_stride + 64);
    }
    requests_[request_tail_local_ % kSize] = Request{slot, sector, data, kBareBlockBytes, 0};
    ++request_tail_local_;
    request_tail_.store(request_tail_local_, std::memory_order_release);
  }
  template <typename OnCompletion>
  size_t Poll(OnCompletion&& on_completion) {
    const uint32_t tail = completion_tail_.load(std::memory_order_acquire);
    size_t n = 0;
    for (; completion_head_ != tail; ++completion_head_, ++n) {
      on_completion(static_cast<uint32_t>(completions_[completion_head_ % kSize].slot));
    }
    return n;
  }

  void Serve(const std::atomic<bool>& stop) {
    uint32_t head = 0;
    uint32_t completed = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      const uint32_t tail = request_tail_.load(std::memory_order_acquire);
      for (; head != tail; ++head) {
        const Request r = requests_[head % kSize];
        asm volatile("" : : "r"(&r) : "memory");
        if (setup_.disk != nullptr) {
          std::memcpy(reinterpret_cast<uint8_t*>(r.data), setup_.disk + r.sector * kBareSectorBytes,
                      r.len);
        }
        completions_[completed % kSize] = Completion{r.slot, 0, r.len + 1};
        ++completed;
        completion_tail_.store(completed, std::memory_order_release);
      }
    }
  }

 private:
  struct Request {  // what a request needs: which, where on disk, where in memory, how much
    uint64_t slot;
    uint64_t sector;
    uint64_t data;
    uint32_t len;
    uint32_t op;
  };
  struct Completion {
    uint64_t slot;
    uint32_t status;
    uint32_t len;
  };

  BareRingSetup setup_;
  alignas(64) Request requests_[kSize] = {};
  alignas(64) std::atomic<uint32_t> request_tail_{0};
  alignas(64) uint32_t request_tail_local_ = 0;
  uint32_t completion_head_ = 0;
  alignas(64) Completion completions_[kSize] = {};
  alignas(64) std::atomic<uint32_t> completion_tail_{0};
  BareDeviceThread<SpscRing> device_;  // last: starts after the rings are built
};

// Split virtqueue, 256 entries. Slot s owns descriptors 3s..3s+2. `kPublishPerBatch`: the
// device stores used->idx once after serving everything it found available (as a device that
// completes a batch at a time does) instead of after every request.
template <bool kPublishPerBatch>
class BareSplitRing {
 public:
  static constexpr uint16_t kSize = 256;

  explicit BareSplitRing(const BareRingSetup& setup)
      : setup_(setup), device_(this, setup.on_device_start) {}
  const pthread_t* thread() { return device_.handle(); }

  void Submit(uint32_t slot, uint64_t sector) {
    uint8_t* buffer = WriteReadHeader(setup_, slot, sector);
    const auto head = static_cast<uint16_t>(3 * slot);
    desc_[head] = Desc{Address(buffer), 16, kNext, static_cast<uint16_t>(head + 1)};
    desc_[head + 1] = Desc{Address(buffer + 64), kBareBlockBytes, kNext | kWrite,
                           static_cast<uint16_t>(head + 2)};
    desc_[head + 2] = Desc{Address(buffer + 16), 1, kWrite, 0};
    avail_ring_[driver_avail_ % kSize] = head;
    ++driver_avail_;
    avail_idx_.store(driver_avail_, std::memory_order_release);
  }
  template <typename OnCompletion>
  size_t Poll(OnCompletion&& on_completion) {
    const uint16_t used = used_idx_.load(std::memory_order_acquire);
    size_t n = 0;
    for (; driver_used_ != used; ++driver_used_, ++n) {
      on_completion(used_ring_[driver_used_ % kSize].id / 3);
    }
    return n;
  }

  void Serve(const std::atomic<bool>& stop) {
    uint16_t last_avail = 0;
    uint16_t used = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      const uint16_t avail = avail_idx_.load(std::memory_order_acquire);
      for (; last_avail != avail; ++last_avail) {
        const uint16_t head = avail_ring_[last_avail % kSize];
        const Desc header = desc_[head];
        const Desc data = desc_[header.next];
        const Desc status = desc_[data.next];
        ServeBlkRead(setup_.disk, Host(header.addr), Host(data.addr), data.len, Host(status.addr));
        used_ring_[used % kSize] = UsedElem{head, data.len + 1};
        ++used;
        if (!kPublishPerBatch) used_idx_.store(used, std::memory_order_release);
      }
      if (kPublishPerBatch) used_idx_.store(used, std::memory_order_release);
    }
  }

 private:
  static constexpr uint16_t kNext = 1, kWrite = 2;
  struct Desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
  };
  struct UsedElem {
    uint32_t id;
    uint32_t len;
  };
  static uint64_t Address(uint8_t* p) { return reinterpret_cast<uintptr_t>(p); }
  static uint8_t* Host(uint64_t addr) { return reinterpret_cast<uint8_t*>(addr); }

  BareRingSetup setup_;
  alignas(4096) Desc desc_[kSize] = {};
  alignas(64) std::atomic<uint16_t> avail_idx_{0};
  alignas(64) uint16_t avail_ring_[kSize] = {};
  alignas(64) std::atomic<uint16_t> used_idx_{0};
  alignas(64) UsedElem used_ring_[kSize] = {};
  alignas(64) uint16_t driver_avail_ = 0;
  uint16_t driver_used_ = 0;
  BareDeviceThread<BareSplitRing> device_;
};

// Packed virtqueue, 256 entries, in-order chains of three descriptors; buffer id = slot. The
// driver writes a chain's head flags last (release); the device reads the chain, serves it and
// writes one used descriptor over the chain's head (release on its flags).
class BarePackedRing {
 public:
  static constexpr uint16_t kSize = 256;

  explicit BarePackedRing(const BareRingSetup& setup)
      : setup_(setup), device_(this, setup.on_device_start) {}
  const pthread_t* thread() { return device_.handle(); }

  void Submit(uint32_t slot, uint64_t sector) {
    uint8_t* buffer = WriteReadHeader(setup_, slot, sector);
    const auto id = static_cast<uint16_t>(slot);
    const Position head = driver_next_;
    const Position data = Advance(head);
    const Position status = Advance(data);
    driver_next_ = Advance(status);
    Write(data, Address(buffer + 64), kBareBlockBytes, id, kNext | kWrite,
          std::memory_order_relaxed);
    Write(status, Address(buffer + 16), 1, id, kWrite, std::memory_order_relaxed);
    Write(head, Address(buffer), 16, id, kNext, std::memory_order_release);
  }
  template <typename OnCompletion>
  size_t Poll(OnCompletion&& on_completion) {
    size_t n = 0;
    while (IsUsed(ring_[driver_used_.index].flags.load(std::memory_order_acquire),
                  driver_used_.wrap)) {
      on_completion(ring_[driver_used_.index].id);
      driver_used_ = Advance(Advance(Advance(driver_used_)));
      ++n;
    }
    return n;
  }

  void Serve(const std::atomic<bool>& stop) {
    Position next;
    Position used;
    while (!stop.load(std::memory_order_relaxed)) {
      while (IsAvailable(ring_[next.index].flags.load(std::memory_order_acquire), next.wrap)) {
        const Desc& header = ring_[next.index];
        const uint16_t id = header.id;
        const uint64_t header_addr = header.addr;
        next = Advance(next);
        const Desc& data = ring_[next.index];
        const uint64_t data_addr = data.addr;
        const uint32_t data_len = data.len;
        next = Advance(next);
        const uint64_t status_addr = ring_[next.index].addr;
        next = Advance(next);
        ServeBlkRead(setup_.disk, Host(header_addr), Host(data_addr), data_len, Host(status_addr));
        Desc& out = ring_[used.index];
        out.id = id;
        out.len = data_len + 1;
        out.flags.store(used.wrap ? kAvail | kUsed : 0, std::memory_order_release);
        used = Advance(Advance(Advance(used)));
      }
    }
  }

 private:
  static constexpr uint16_t kNext = 1, kWrite = 2, kAvail = 1 << 7, kUsed = 1 << 15;
  struct Desc {
    uint64_t addr;
    uint32_t len;
    uint16_t id;
    std::atomic<uint16_t> flags;
  };
  static_assert(sizeof(Desc) == 16);
  struct Position {
    uint16_t index = 0;
    bool wrap = true;  // the ring wrap counter starts at 1
  };
  static Position Advance(Position p) {
    if (++p.index == kSize) return Position{0, !p.wrap};
    return p;
  }
  // Available: AVAIL == wrap counter and USED != it. Used: AVAIL == USED == wrap counter.
  static bool IsAvailable(uint16_t flags, bool wrap) {
    return ((flags & kAvail) != 0) == wrap && ((flags & kUsed) != 0) != wrap;
  }
  static bool IsUsed(uint16_t flags, bool wrap) {
    return ((flags & kAvail) != 0) == wrap && ((flags & kUsed) != 0) == wrap;
  }
  void Write(Position p, uint64_t addr, uint32_t len, uint16_t id, uint16_t flags,
             std::memory_order order) {
    Desc& d = ring_[p.index];
    d.addr = addr;
    d.len = len;
    d.id = id;
    d.flags.store(static_cast<uint16_t>(flags | (p.wrap ? kAvail : kUsed)), order);
  }
  static uint64_t Address(uint8_t* p) { return reinterpret_cast<uintptr_t>(p); }
  static uint8_t* Host(uint64_t addr) { return reinterpret_cast<uint8_t*>(addr); }

  BareRingSetup setup_;
  alignas(4096) Desc ring_[kSize] = {};
  alignas(64) Position driver_next_;
  Position driver_used_;
  BareDeviceThread<BarePackedRing> device_;
};

}  // namespace vfu::bench
