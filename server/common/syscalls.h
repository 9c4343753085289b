// Direct system calls for the per-message hot path (socket receive and send, epoll_wait).
// glibc's wrappers for these are pthread cancellation points: in a multi-threaded process each
// call switches asynchronous cancellation on and off around the system call. Nothing in this
// project uses pthread cancellation, so the poll threads and the client library call the kernel
// directly; same arguments, same -1/errno results as the libc functions. Measured on the
// REGION_READ round trip: 1.19x -> 1.16-1.18x of a raw ping-pong (docs/performance.md).
#pragma once

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstddef>

namespace vfu::sys {

inline ssize_t RecvMsg(int fd, msghdr* msg, int flags) {
  return ::syscall(SYS_recvmsg, fd, msg, flags);
}

inline ssize_t SendMsg(int fd, const msghdr* msg, int flags) {
  return ::syscall(SYS_sendmsg, fd, msg, flags);
}

inline ssize_t Send(int fd, const void* buf, size_t len, int flags) {
  return ::syscall(SYS_sendto, fd, buf, len, flags, nullptr, 0);
}

inline ssize_t Recv(int fd, void* buf, size_t len, int flags) {
  return ::syscall(SYS_recvfrom, fd, buf, len, flags, nullptr, nullptr);
}

inline ssize_t Readv(int fd, const iovec* iov, int iovcnt) {
  return ::syscall(SYS_readv, fd, iov, iovcnt);
}

// epoll_pwait with no signal mask is epoll_wait (and exists on every architecture).
inline int EpollWait(int epfd, epoll_event* events, int max_events, int timeout_ms) {
  return static_cast<int>(
      ::syscall(SYS_epoll_pwait, epfd, events, max_events, timeout_ms, nullptr, size_t{8}));
}

}  // namespace vfu::sys
