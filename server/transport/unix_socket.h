// Unix-domain stream sockets for vfio-user: a listener and a connection that moves bytes and
// SCM_RIGHTS file descriptors. This layer knows nothing about the protocol: it never looks at
// the bytes it moves. Every received fd is wrapped in a UniqueFd before anything else happens,
// a truncated control message (MSG_CTRUNC) is an error, and all sockets are non-blocking
// unless a caller (a synchronous client) asks otherwise.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "server/common/status.h"
#include "server/common/unique_fd.h"

namespace vfu {

// Most fds accepted with one message. The control buffer is sized for this many; a sender that
// exceeds it gets MSG_CTRUNC, which Receive reports as an error.
inline constexpr size_t kMaxReceiveFds = 32;

class UnixConnection {
 public:
  UnixConnection() = default;
  explicit UnixConnection(UniqueFd fd) : fd_(std::move(fd)) {}

  // Blocking connect to a listening socket path.
  static Result<UnixConnection> Connect(const std::string& path);
  // A connected pair (both ends non-blocking unless set otherwise).
  static Result<std::pair<UnixConnection, UnixConnection>> Pair();

  struct Received {
    size_t bytes = 0;            // 0 means end of stream
    bool fds_truncated = false;  // MSG_CTRUNC: the sender passed more fds than we accept
  };
  // Reads up to buf.size() bytes and appends received fds to *fds. EAGAIN as an error when
  // nothing is available (non-blocking) or a receive timeout expired (blocking). On MSG_CTRUNC
  // the bytes still count, the fds that did arrive are closed, and fds_truncated is set: the
  // caller rejects the message but the byte stream stays in step.
  Result<Received> Receive(std::span<uint8_t> buf, std::vector<UniqueFd>* fds);
  // The same into several buffers (one recvmsg).
  Result<Received> Receive(std::span<const iovec> iov, std::vector<UniqueFd>* fds);
  // For a reader that knows no fds can legitimately come with these bytes: readv without a
  // control buffer (cheaper than recvmsg). Fds a peer sends anyway are closed by the kernel
  // (they are never installed in this process); the bytes are returned as usual.
  Result<Received> ReceiveBytes(std::span<const iovec> iov);
  // The same into one buffer, with recv(2) (no iovec array for the kernel to import).
  Result<Received> ReceiveBytes(std::span<uint8_t> buf);

  // Sends the iovecs in one sendmsg (a plain send when there is one buffer and no fd); `fds`
  // ride with the first byte. Returns the bytes written (possibly fewer than asked); EAGAIN as
  // an error when the socket buffer is full.
  Result<size_t> Send(std::span<const iovec> iov, std::span<const int> fds = {});

  Status SetNonBlocking(bool non_blocking);
  Status SetReceiveTimeout(std::chrono::milliseconds timeout);

  int fd() const { return fd_.get(); }
  bool valid() const { return fd_.valid(); }
  void Close() { fd_.Reset(); }

 private:
  UniqueFd fd_;
};

class UnixListener {
 public:
  UnixListener() = default;
  ~UnixListener();
  UnixListener(UnixListener&& other) noexcept;
  UnixListener& operator=(UnixListener&& other) noexcept;
  UnixListener(const UnixListener&) = delete;
  UnixListener& operator=(const UnixListener&) = delete;

  // Binds and listens on `path` (non-blocking). A stale socket file left by a dead server is
  // replaced; any other existing file is an error (EEXIST).
  static Result<UnixListener> Bind(const std::string& path, int backlog = 8);

  // Accepts one pending connection as a non-blocking socket; EAGAIN when none is pending.
  Result<UnixConnection> Accept();

  // A listening socket another process bound (handed over with SCM_RIGHTS): checks that `fd` is
  // a listening unix stream socket, makes it non-blocking, and unlinks `path` on destruction
  // like a socket bound here.
  static Result<UnixListener> Adopt(UniqueFd fd, const std::string& path);
  // Gives the socket up without unlinking its path (it was handed to another process, which
  // listens on it now); returns the fd, which the caller may close.
  UniqueFd Release();

  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }

 private:
  UniqueFd fd_;
  std::string path_;
};

}  // namespace vfu
