// Block backends: where a block device's data lives. One interface, three kinds:
//   null  - completes everything at once, stores nothing (measures the device path alone);
//   ram   - an anonymous memory area;
//   file  - a file or block device, with io_uring (liburing) and a thread-pool fallback for
//           hosts where io_uring is unavailable (e.g. a container seccomp profile).
// Submit never blocks the caller's poll loop; finished requests are collected with Reap, and
// event_fd() becomes readable when there is something to reap, so a sleeping reactor wakes.
// A FLUSH completes only after fdatasync() (file) has returned: an acknowledged flush is durable.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "server/common/status.h"

namespace vfu::block {

enum class Op { kRead, kWrite, kFlush, kDiscard, kWriteZeroes };

const char* OpName(Op op);

struct Request {
  Op op = Op::kRead;
  uint64_t offset = 0;         // bytes
  uint64_t length = 0;         // bytes: the iovec total for reads/writes, the range otherwise
  const iovec* iov = nullptr;  // reads/writes; must stay valid until the request completes
  int iovcnt = 0;
  uint64_t tag = 0;  // returned with the completion
};

struct Completion {
  uint64_t tag = 0;
  int result = 0;  // 0, or a negative errno
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual uint64_t size() const = 0;  // bytes
  virtual bool read_only() const = 0;
  virtual std::string description() const = 0;

  // Queues a request; never blocks. EAGAIN when `queue_depth` requests are already in flight;
  // EROFS for a write to a read-only backend; EINVAL for a range beyond the end.
  virtual Status Submit(const Request& request) = 0;
  // Appends finished requests to *out without blocking; returns how many.
  virtual size_t Reap(std::vector<Completion>* out) = 0;
  virtual size_t inflight() const = 0;
  // Readable while completions wait to be reaped (-1 when Reap is always immediate).
  virtual int event_fd() const = 0;
  // Reports an error that makes the backend unusable (e.g. its file disappeared); empty when
  // healthy. The device turns this into its health status.
  virtual std::string health_error() const { return {}; }
};

Status CheckRange(const Request& request, uint64_t size, bool read_only);

std::unique_ptr<Backend> CreateNullBackend(uint64_t size, unsigned queue_depth = 1024);
Result<std::unique_ptr<Backend>> CreateRamBackend(uint64_t size, unsigned queue_depth = 1024);

struct FileBackendOptions {
  std::string path;
  bool read_only = false;
  enum class Engine { kAuto, kIoUring, kThreadPool } engine = Engine::kAuto;
  unsigned queue_depth = 256;
  unsigned threads = 4;  // thread-pool engine
};
Result<std::unique_ptr<Backend>> CreateFileBackend(const FileBackendOptions& options);

}  // namespace vfu::block
