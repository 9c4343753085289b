#include "server/transport/unix_socket.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "server/common/syscalls.h"

namespace vfu {
namespace {

Error Errno(const char* what) {
  int err = errno;
  return MakeError(err, std::string(what) + ": " + std::strerror(err));
}

// Runs a socket system call again while a signal interrupts it; a non-blocking socket that has
// nothing to give (or no room) becomes EAGAIN with `would_block`, anything else errno.
template <typename Call>
Result<size_t> SocketCall(const char* what, const char* would_block, Call call) {
  ssize_t n;
  do {
    n = call();
  } while (n < 0 && errno == EINTR);
  if (n >= 0) return static_cast<size_t>(n);
  if (errno == EAGAIN || errno == EWOULDBLOCK) return MakeError(EAGAIN, would_block);
  return Errno(what);
}

Result<sockaddr_un> MakeAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return MakeError(ENAMETOOLONG, "socket path is empty or longer than " +
                                       std::to_string(sizeof(addr.sun_path) - 1) +
                                       " bytes: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

}  // namespace

Result<UnixConnection> UnixConnection::Connect(const std::string& path) {
  auto addr = MakeAddress(path);
  if (!addr) return addr.error();
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Errno("socket");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(sockaddr_un)) != 0) {
    int err = errno;
    return MakeError(err, "connect to " + path + ": " + std::strerror(err));
  }
  return UnixConnection(std::move(fd));
}

Result<std::pair<UnixConnection, UnixConnection>> UnixConnection::Pair() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) != 0) {
    return Errno("socketpair");
  }
  return std::make_pair(UnixConnection(UniqueFd(fds[0])), UnixConnection(UniqueFd(fds[1])));
}

Result<UnixConnection::Received> UnixConnection::Receive(std::span<uint8_t> buf,
                                                         std::vector<UniqueFd>* fds) {
  iovec iov{buf.data(), buf.size()};
  return Receive(std::span<const iovec>(&iov, 1), fds);
}

Result<UnixConnection::Received> UnixConnection::Receive(std::span<const iovec> iov,
                                                         std::vector<UniqueFd>* fds) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxReceiveFds)];
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov.data());
  msg.msg_iovlen = iov.size();
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  auto n = SocketCall("recvmsg", "no data",
                      [&] { return sys::RecvMsg(fd_.get(), &msg, MSG_CMSG_CLOEXEC); });
  if (!n) return n.error();
  // Take ownership of every fd first, so that any error below closes them.
  size_t first_new = fds->size();
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const auto* data = reinterpret_cast<const unsigned char*>(CMSG_DATA(c));
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, data + i * sizeof(int), sizeof(int));
      fds->emplace_back(fd);
    }
  }
  Received received{*n, false};
  if (msg.msg_flags & MSG_CTRUNC) {
    fds->resize(first_new);
    received.fds_truncated = true;
  }
  return received;
}

Result<UnixConnection::Received> UnixConnection::ReceiveBytes(std::span<uint8_t> buf) {
  auto n = SocketCall("recv", "no data",
                      [&] { return sys::Recv(fd_.get(), buf.data(), buf.size(), 0); });
  if (!n) return n.error();
  return Received{*n, false};
}

Result<UnixConnection::Received> UnixConnection::ReceiveBytes(std::span<const iovec> iov) {
  auto n = SocketCall("readv", "no data", [&] {
    return sys::Readv(fd_.get(), iov.data(), static_cast<int>(iov.size()));
  });
  if (!n) return n.error();
  return Received{*n, false};
}

Result<size_t> UnixConnection::Send(std::span<const iovec> iov, std::span<const int> fds) {
  if (fds.empty() && iov.size() == 1) {
    // The common case (every request and reply without fds): send(2) skips the msghdr and
    // iovec copies of sendmsg(2).
    return SocketCall("send", "socket buffer full", [&] {
      return sys::Send(fd_.get(), iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
    });
  }
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov.data());
  msg.msg_iovlen = iov.size();
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxReceiveFds)];
  if (!fds.empty()) {
    if (fds.size() > kMaxReceiveFds) return MakeError(EINVAL, "too many fds to send");
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  return SocketCall("sendmsg", "socket buffer full",
                    [&] { return sys::SendMsg(fd_.get(), &msg, MSG_NOSIGNAL); });
}

Status UnixConnection::SetNonBlocking(bool non_blocking) {
  int flags = ::fcntl(fd_.get(), F_GETFL);
  if (flags < 0) return Errno("fcntl(F_GETFL)");
  flags = non_blocking ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (::fcntl(fd_.get(), F_SETFL, flags) != 0) return Errno("fcntl(F_SETFL)");
  return Status::Ok();
}

Status UnixConnection::SetReceiveTimeout(std::chrono::milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  if (::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0) {
    return Errno("setsockopt(SO_RCVTIMEO)");
  }
  return Status::Ok();
}

UnixListener::~UnixListener() {
  if (fd_.valid() && !path_.empty()) ::unlink(path_.c_str());
}

UnixListener::UnixListener(UnixListener&& other) noexcept
    : fd_(std::move(other.fd_)), path_(std::move(other.path_)) {
  other.path_.clear();
}

UnixListener& UnixListener::operator=(UnixListener&& other) noexcept {
  if (this != &other) {
    if (fd_.valid() && !path_.empty()) ::unlink(path_.c_str());
    fd_ = std::move(other.fd_);
    path_ = std::move(other.path_);
    other.path_.clear();
  }
  return *this;
}

Result<UnixListener> UnixListener::Bind(const std::string& path, int backlog) {
  auto addr = MakeAddress(path);
  if (!addr) return addr.error();
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return MakeError(EEXIST, path + " exists and is not a socket; refusing to replace it");
    }
    // A leftover socket: replace it only if nobody is listening on it any more.
    auto probe = UnixConnection::Connect(path);
    if (probe) return MakeError(EADDRINUSE, path + " is in use by a running server");
    ::unlink(path.c_str());
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return Errno("socket");
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(sockaddr_un)) != 0) {
    int err = errno;
    return MakeError(err, "bind " + path + ": " + std::strerror(err));
  }
  if (::listen(fd.get(), backlog) != 0) {
    Error e = Errno("listen");
    ::unlink(path.c_str());
    return e;
  }
  UnixListener listener;
  listener.fd_ = std::move(fd);
  listener.path_ = path;
  return listener;
}

Result<UnixConnection> UnixListener::Accept() {
  int fd;
  do {
    fd = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return MakeError(EAGAIN, "no pending connection");
    return Errno("accept4");
  }
  return UnixConnection(UniqueFd(fd));
}

Result<UnixListener> UnixListener::Adopt(UniqueFd fd, const std::string& path) {
  int type = 0;
  int listening = 0;
  sockaddr_un addr{};
  socklen_t len = sizeof(addr);
  socklen_t ilen = sizeof(int);
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_TYPE, &type, &ilen) != 0) return Errno("SO_TYPE");
  ilen = sizeof(int);
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &ilen) != 0) {
    return Errno("SO_ACCEPTCONN");
  }
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return Errno("getsockname");
  }
  if (type != SOCK_STREAM || !listening || addr.sun_family != AF_UNIX) {
    return MakeError(EINVAL,
                     "the fd handed over for " + path + " is not a listening unix stream socket");
  }
  int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return Errno("fcntl O_NONBLOCK");
  }
  UnixListener listener;
  listener.fd_ = std::move(fd);
  listener.path_ = path;
  return listener;
}

UniqueFd UnixListener::Release() {
  path_.clear();
  return std::move(fd_);
}

}  // namespace vfu
