#include "server/block/backend.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "server/common/checked_math.h"
#include "server/common/mapping.h"

namespace vfu::block {

const char* OpName(Op op) {
  switch (op) {
    case Op::kRead:
      return "read";
    case Op::kWrite:
      return "write";
    case Op::kFlush:
      return "flush";
    case Op::kDiscard:
      return "discard";
    case Op::kWriteZeroes:
      return "write_zeroes";
  }
  return "unknown";
}

Status CheckRange(const Request& r, uint64_t size, bool read_only) {
  if (read_only && r.op != Op::kRead && r.op != Op::kFlush) {
    return MakeError(EROFS, std::string(OpName(r.op)) + " on a read-only backend");
  }
  if (r.op == Op::kFlush) return Status::Ok();
  if (!RangeWithin(r.offset, r.length, size)) {
    return MakeError(EINVAL, std::string(OpName(r.op)) + " beyond the end of the backend");
  }
  return Status::Ok();
}

namespace {

// Runs every request on the caller's thread, never blocking. Submit validates and queues a
// request; Reap executes the queued requests in order and returns their completions. Deferring
// the work to Reap lets a device submit a whole batch first, and lets each copy start fetching
// the memory of a request a few places ahead, so that the cache misses of a batch overlap
// instead of each copy waiting for its own (docs/performance.md: about +25 % IOPS for random
// 4 KiB reads from a RAM disk at queue depth 32).
class ImmediateBackend : public Backend {
 public:
  ImmediateBackend(uint64_t size, unsigned queue_depth) : size_(size), depth_(queue_depth) {}

  uint64_t size() const override { return size_; }
  bool read_only() const override { return false; }
  int event_fd() const override { return -1; }
  size_t inflight() const override { return queued_.size(); }

  Status Submit(const Request& r) override {
    if (queued_.size() >= depth_) return MakeError(EAGAIN, "queue full");
    VFU_RETURN_IF_ERROR(CheckRange(r, size_, false));
    queued_.push_back(r);
    return Status::Ok();
  }

  size_t Reap(std::vector<Completion>* out) override {
    const size_t n = queued_.size();
    for (size_t i = 0; i < n; ++i) {
      if (i + kPrefetchDistance < n) Prefetch(queued_[i + kPrefetchDistance]);
      out->push_back({queued_[i].tag, Execute(queued_[i])});
    }
    queued_.clear();
    return n;
  }

 protected:
  // Measured on a 2-vCPU VM with random 4 KiB reads at QD32: 2-4 requests ahead and 1-2 KiB
  // of each source are best; prefetching whole blocks fills the CPU's miss buffers and loses.
  static constexpr size_t kPrefetchDistance = 3;
  static constexpr uint64_t kPrefetchBytes = 2048;

  // Starts fetching the memory the request will read from; changes nothing.
  virtual void Prefetch(const Request&) {}
  virtual int Execute(const Request& r) = 0;

 private:
  uint64_t size_;
  unsigned depth_;
  std::vector<Request> queued_;
};

class NullBackend : public ImmediateBackend {
 public:
  using ImmediateBackend::ImmediateBackend;
  std::string description() const override { return "null"; }

 protected:
  int Execute(const Request&) override { return 0; }
};

class RamBackend : public ImmediateBackend {
 public:
  RamBackend(uint64_t size, unsigned depth, MemoryMapping memory)
      : ImmediateBackend(size, depth), memory_(std::move(memory)) {}
  std::string description() const override { return "ram"; }

 protected:
  void Prefetch(const Request& r) override {
    // The start of a read's source block; the hardware prefetcher follows the rest once the
    // copy streams. (Writes copy from guest buffers; not measured, so not prefetched.)
    if (r.op != Op::kRead) return;
    const uint8_t* from = memory_.data() + r.offset;
    const uint64_t bytes = std::min(r.length, kPrefetchBytes);
    for (uint64_t at = 0; at < bytes; at += 64) __builtin_prefetch(from + at);
  }

  int Execute(const Request& r) override {
    uint8_t* base = memory_.data() + r.offset;
    switch (r.op) {
      case Op::kRead:
      case Op::kWrite: {
        uint64_t at = 0;
        for (int i = 0; i < r.iovcnt; ++i) {
          if (r.op == Op::kRead)
            std::memcpy(r.iov[i].iov_base, base + at, r.iov[i].iov_len);
          else
            std::memcpy(base + at, r.iov[i].iov_base, r.iov[i].iov_len);
          at += r.iov[i].iov_len;
        }
        return 0;
      }
      case Op::kDiscard:
      case Op::kWriteZeroes:
        std::memset(base, 0, r.length);
        return 0;
      case Op::kFlush:
        return 0;
    }
    return -EINVAL;
  }

 private:
  MemoryMapping memory_;
};

}  // namespace

std::unique_ptr<Backend> CreateNullBackend(uint64_t size, unsigned queue_depth) {
  return std::make_unique<NullBackend>(size, queue_depth);
}

Result<std::unique_ptr<Backend>> CreateRamBackend(uint64_t size, unsigned queue_depth) {
  if (size == 0) return MakeError(EINVAL, "ram backend of size 0");
  // Anonymous memory in transparent huge pages: random 4 KiB reads over a disk of hundreds of
  // MiB would otherwise take a TLB miss and a page walk per request (measured in
  // docs/performance.md: +20 % IOPS at 256 MiB).
  auto m = MemoryMapping::MapAnonymous(size, /*prefer_huge_pages=*/true);
  if (!m) return m.error();
  return std::unique_ptr<Backend>(new RamBackend(size, queue_depth, std::move(*m)));
}

}  // namespace vfu::block
