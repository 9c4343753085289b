// File backend: io_uring engine (liburing) with a thread-pool engine as fallback. Both share
// one synchronous executor for the rare paths (short transfers, fallocate modes the file
// system lacks), which runs on a worker thread so the poll loop never blocks.
#include <fcntl.h>
#include <liburing.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "server/block/backend.h"
#include "server/common/unique_fd.h"

namespace vfu::block {
namespace {

constexpr size_t kZeroChunk = 64 * 1024;

// Copies of a request that outlive the caller's iovec array.
struct OwnedRequest {
  Request request;
  std::vector<iovec> iov;
  uint64_t done = 0;  // bytes already transferred (a short transfer being finished)
};

OwnedRequest Own(const Request& r) {
  OwnedRequest o;
  o.request = r;
  o.iov.assign(r.iov, r.iov + r.iovcnt);
  o.request.iov = nullptr;
  return o;
}

int WriteZeroes(int fd, uint64_t offset, uint64_t length) {
  static const std::vector<uint8_t> zeros(kZeroChunk, 0);
  while (length > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(length, kZeroChunk));
    ssize_t w = ::pwrite(fd, zeros.data(), n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    offset += static_cast<uint64_t>(w);
    length -= static_cast<uint64_t>(w);
  }
  return 0;
}

// Executes a request synchronously, starting `done` bytes in (reads/writes).
int ExecuteSync(int fd, OwnedRequest& o) {
  const Request& r = o.request;
  switch (r.op) {
    case Op::kRead:
    case Op::kWrite: {
      uint64_t total = r.length;
      while (o.done < total) {
        // Build the iovec tail from o.done.
        std::vector<iovec> tail;
        uint64_t skip = o.done;
        for (const iovec& v : o.iov) {
          if (skip >= v.iov_len) {
            skip -= v.iov_len;
            continue;
          }
          tail.push_back({static_cast<uint8_t*>(v.iov_base) + skip, v.iov_len - skip});
          skip = 0;
        }
        int cnt = static_cast<int>(std::min<size_t>(tail.size(), IOV_MAX));
        ssize_t n = r.op == Op::kRead
                        ? ::preadv(fd, tail.data(), cnt, static_cast<off_t>(r.offset + o.done))
                        : ::pwritev(fd, tail.data(), cnt, static_cast<off_t>(r.offset + o.done));
        if (n < 0) {
          if (errno == EINTR) continue;
          return -errno;
        }
        if (n == 0) return -EIO;  // the file ended early (it shrank under us)
        o.done += static_cast<uint64_t>(n);
      }
      return 0;
    }
    case Op::kFlush:
      return ::fdatasync(fd) == 0 ? 0 : -errno;
    case Op::kDiscard:
      // Punching a hole reads back as zeros; without hole support, write zeros.
      if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(r.offset),
                      static_cast<off_t>(r.length)) == 0) {
        return 0;
      }
      return WriteZeroes(fd, r.offset, r.length);
    case Op::kWriteZeroes:
      if (::fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(r.offset),
                      static_cast<off_t>(r.length)) == 0) {
        return 0;
      }
      if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(r.offset),
                      static_cast<off_t>(r.length)) == 0) {
        return 0;
      }
      return WriteZeroes(fd, r.offset, r.length);
  }
  return -EINVAL;
}

// Worker threads executing requests synchronously; completions go to a queue and an eventfd.
class WorkerPool {
 public:
  WorkerPool(int fd, unsigned threads, int event_fd) : fd_(fd), event_fd_(event_fd) {
    for (unsigned i = 0; i < threads; ++i) workers_.emplace_back([this] { Run(); });
  }
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  void Enqueue(OwnedRequest o) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      jobs_.push_back(std::move(o));
    }
    cv_.notify_one();
  }

  void TakeCompletions(std::vector<Completion>* out) {
    std::lock_guard<std::mutex> lock(mutex_);
    out->insert(out->end(), done_.begin(), done_.end());
    done_.clear();
  }

 private:
  void Run() {
    while (true) {
      OwnedRequest job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
        if (stop_ && jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      int result = ExecuteSync(fd_, job);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        done_.push_back({job.request.tag, result});
      }
      uint64_t one = 1;
      (void)::write(event_fd_, &one, sizeof(one));
    }
  }

  int fd_;
  int event_fd_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<OwnedRequest> jobs_;
  std::vector<Completion> done_;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

class FileBackendBase : public Backend {
 public:
  FileBackendBase(UniqueFd fd, uint64_t size, const FileBackendOptions& options)
      : fd_(std::move(fd)),
        size_(size),
        options_(options),
        event_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}
  // A server that stops (SIGTERM, device removed) leaves every completed write on disk, even
  // those the guest never flushed.
  ~FileBackendBase() override {
    if (!options_.read_only) (void)::fdatasync(fd_.get());
  }

  uint64_t size() const override { return size_; }
  bool read_only() const override { return options_.read_only; }
  int event_fd() const override { return event_fd_.get(); }
  size_t inflight() const override { return inflight_; }

  std::string health_error() const override {
    struct stat st {};
    if (::fstat(fd_.get(), &st) != 0) return std::string("fstat failed: ") + std::strerror(errno);
    if (S_ISREG(st.st_mode) && st.st_nlink == 0)
      return "backing file " + options_.path + " was deleted";
    // The path must still name the file in use: a moved-away or replaced file means the
    // device no longer serves what its configuration says.
    struct stat at_path {};
    if (::stat(options_.path.c_str(), &at_path) != 0)
      return "backing file " + options_.path + " is missing: " + std::strerror(errno);
    if (at_path.st_dev != st.st_dev || at_path.st_ino != st.st_ino)
      return "backing file " + options_.path + " was replaced; the device still uses the old one";
    return {};
  }

 protected:
  void DrainEvent() {
    uint64_t v;
    (void)::read(event_fd_.get(), &v, sizeof(v));
  }

  UniqueFd fd_;
  uint64_t size_;
  FileBackendOptions options_;
  UniqueFd event_fd_;
  size_t inflight_ = 0;
};

class ThreadPoolFileBackend : public FileBackendBase {
 public:
  ThreadPoolFileBackend(UniqueFd fd, uint64_t size, const FileBackendOptions& options)
      : FileBackendBase(std::move(fd), size, options),
        pool_(fd_.get(), std::max(1u, options.threads), event_fd_.get()) {}

  std::string description() const override { return "file:" + options_.path + " (thread pool)"; }

  Status Submit(const Request& r) override {
    if (inflight_ >= options_.queue_depth) return MakeError(EAGAIN, "queue full");
    VFU_RETURN_IF_ERROR(CheckRange(r, size_, options_.read_only));
    pool_.Enqueue(Own(r));
    ++inflight_;
    return Status::Ok();
  }

  size_t Reap(std::vector<Completion>* out) override {
    DrainEvent();
    size_t before = out->size();
    pool_.TakeCompletions(out);
    size_t n = out->size() - before;
    inflight_ -= n;
    return n;
  }

 private:
  WorkerPool pool_;
};

class IoUringFileBackend : public FileBackendBase {
 public:
  IoUringFileBackend(UniqueFd fd, uint64_t size, const FileBackendOptions& options, io_uring ring)
      : FileBackendBase(std::move(fd), size, options),
        ring_(ring),
        slots_(options.queue_depth),
        fallback_(fd_.get(), 1, event_fd_.get()) {
    for (unsigned i = 0; i < options.queue_depth; ++i) free_slots_.push_back(i);
    io_uring_register_eventfd(&ring_, event_fd_.get());
  }
  ~IoUringFileBackend() override {
    // Wait for what the kernel still owns: its buffers are the callers' (guest memory).
    while (in_kernel_ > 0) {
      io_uring_cqe* cqe = nullptr;
      if (io_uring_wait_cqe(&ring_, &cqe) != 0) break;
      io_uring_cqe_seen(&ring_, cqe);
      --in_kernel_;
    }
    io_uring_queue_exit(&ring_);
  }

  std::string description() const override { return "file:" + options_.path + " (io_uring)"; }

  Status Submit(const Request& r) override {
    if (free_slots_.empty()) return MakeError(EAGAIN, "queue full");
    VFU_RETURN_IF_ERROR(CheckRange(r, size_, options_.read_only));
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return MakeError(EAGAIN, "submission queue full");
    unsigned slot = free_slots_.back();
    free_slots_.pop_back();
    slots_[slot] = Own(r);
    OwnedRequest& o = slots_[slot];
    auto off = static_cast<__u64>(r.offset);
    switch (r.op) {
      case Op::kRead:
        io_uring_prep_readv(sqe, fd_.get(), o.iov.data(), static_cast<unsigned>(o.iov.size()), off);
        break;
      case Op::kWrite:
        io_uring_prep_writev(sqe, fd_.get(), o.iov.data(), static_cast<unsigned>(o.iov.size()),
                             off);
        break;
      case Op::kFlush:
        io_uring_prep_fsync(sqe, fd_.get(), IORING_FSYNC_DATASYNC);
        break;
      case Op::kDiscard:
        io_uring_prep_fallocate(sqe, fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off,
                                static_cast<__u64>(r.length));
        break;
      case Op::kWriteZeroes:
        io_uring_prep_fallocate(sqe, fd_.get(), FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, off,
                                static_cast<__u64>(r.length));
        break;
    }
    io_uring_sqe_set_data64(sqe, slot);
    int rc = io_uring_submit(&ring_);
    if (rc < 0) {
      free_slots_.push_back(slot);
      return MakeError(-rc, std::string("io_uring_submit: ") + std::strerror(-rc));
    }
    ++inflight_;
    ++in_kernel_;
    return Status::Ok();
  }

  size_t Reap(std::vector<Completion>* out) override {
    DrainEvent();
    size_t before = out->size();
    fallback_.TakeCompletions(out);
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
      unsigned slot = static_cast<unsigned>(io_uring_cqe_get_data64(cqe));
      int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      --in_kernel_;
      OwnedRequest& o = slots_[slot];
      bool transfer = o.request.op == Op::kRead || o.request.op == Op::kWrite;
      if (transfer && res >= 0 && static_cast<uint64_t>(res) < o.request.length) {
        // Short transfer: the worker finishes it from where the kernel stopped.
        o.done = static_cast<uint64_t>(res);
        fallback_.Enqueue(std::move(o));
      } else if (!transfer && (res == -EOPNOTSUPP || res == -EINVAL) &&
                 o.request.op != Op::kFlush) {
        // The file system lacks this fallocate mode: the worker writes zeros instead.
        fallback_.Enqueue(std::move(o));
      } else {
        out->push_back({o.request.tag, res >= 0 ? 0 : res});
      }
      free_slots_.push_back(slot);
    }
    size_t n = out->size() - before;
    inflight_ -= n;
    return n;
  }

 private:
  io_uring ring_;
  std::vector<OwnedRequest> slots_;
  std::vector<unsigned> free_slots_;
  size_t in_kernel_ = 0;
  WorkerPool fallback_;
};

}  // namespace

Result<std::unique_ptr<Backend>> CreateFileBackend(const FileBackendOptions& options) {
  int flags = (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  UniqueFd fd(::open(options.path.c_str(), flags));
  if (!fd) {
    int err = errno;
    return MakeError(err, "cannot open " + options.path + ": " + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return MakeError(errno, "fstat " + options.path + " failed");
  uint64_t size = 0;
  if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    if (::ioctl(fd.get(), BLKGETSIZE64, &size) != 0) return MakeError(errno, "BLKGETSIZE64 failed");
  } else {
    return MakeError(EINVAL, options.path + " is neither a regular file nor a block device");
  }
  if (size == 0) return MakeError(EINVAL, options.path + " is empty");
  if (options.queue_depth == 0) return MakeError(EINVAL, "queue depth 0");

  if (options.engine != FileBackendOptions::Engine::kThreadPool) {
    io_uring ring{};
    int rc = io_uring_queue_init(options.queue_depth, &ring, 0);
    if (rc == 0) {
      return std::unique_ptr<Backend>(new IoUringFileBackend(std::move(fd), size, options, ring));
    }
    if (options.engine == FileBackendOptions::Engine::kIoUring) {
      return MakeError(-rc, std::string("io_uring unavailable: ") + std::strerror(-rc));
    }
  }
  return std::unique_ptr<Backend>(new ThreadPoolFileBackend(std::move(fd), size, options));
}

}  // namespace vfu::block
