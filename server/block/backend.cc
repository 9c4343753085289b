#include "server/block/backend.h"

#include <sys/mman.h>

#include <cstring>
#include <vector>

#include "server/common/checked_math.h"
#include "server/common/mapping.h"
#include "server/common/unique_fd.h"

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

// Completes every request during Submit; the completion waits in a queue for Reap.
class ImmediateBackend : public Backend {
 public:
  ImmediateBackend(uint64_t size, unsigned queue_depth) : size_(size), depth_(queue_depth) {}

  uint64_t size() const override { return size_; }
  bool read_only() const override { return false; }
  int event_fd() const override { return -1; }
  size_t inflight() const override { return done_.size(); }

  Status Submit(const Request& r) override {
    if (done_.size() >= depth_) return MakeError(EAGAIN, "queue full");
    VFU_RETURN_IF_ERROR(CheckRange(r, size_, false));
    done_.push_back({r.tag, Execute(r)});
    return Status::Ok();
  }

  size_t Reap(std::vector<Completion>* out) override {
    size_t n = done_.size();
    out->insert(out->end(), done_.begin(), done_.end());
    done_.clear();
    return n;
  }

 protected:
  virtual int Execute(const Request& r) = 0;

 private:
  uint64_t size_;
  unsigned depth_;
  std::vector<Completion> done_;
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
  int fd = ::memfd_create("vfu-ram-backend", MFD_CLOEXEC);
  if (fd < 0) return MakeError(errno, "memfd_create for the ram backend failed");
  UniqueFd owner(fd);
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) return MakeError(errno, "ftruncate failed");
  auto m = MemoryMapping::Map(fd, 0, size, PROT_READ | PROT_WRITE);
  if (!m) return m.error();
  return std::unique_ptr<Backend>(new RamBackend(size, queue_depth, std::move(*m)));
}

}  // namespace vfu::block
