// Small helpers shared by the session-level tests: payload builders, fd factories and bounded
// eventfd checks. Everything here talks to the wire through SessionHarness or raw sockets.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "server/common/unique_fd.h"
#include "server/protocol/codec.h"
#include "server/protocol/wire.h"
#include "tests/support/session_harness.h"

namespace vfu::testing {

// The bytes of a packed struct.
template <typename T>
std::vector<uint8_t> AsBytes(const T& value) {
  std::vector<uint8_t> out;
  proto::Append(out, value);
  return out;
}

inline std::vector<uint8_t> Concat(std::vector<uint8_t> a, std::span<const uint8_t> b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// A VERSION payload: major, minor and `json` followed by a NUL (unless nul is false).
inline std::vector<uint8_t> VersionPayload(uint16_t major, uint16_t minor, std::string_view json,
                                           bool nul = true) {
  std::vector<uint8_t> out;
  proto::Append(out, wire::Version{major, minor});
  out.insert(out.end(), json.begin(), json.end());
  if (nul) out.push_back(0);
  return out;
}

// A header with an arbitrary msg_size (for framing tests) followed by `payload`.
inline std::vector<uint8_t> RawHeader(uint16_t msg_id, uint16_t command, uint32_t msg_size,
                                      uint32_t flags = 0, std::span<const uint8_t> payload = {}) {
  std::vector<uint8_t> out;
  proto::Append(out, wire::Header{msg_id, command, msg_size, flags, 0});
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

inline UniqueFd MakeMemfd(size_t size, const char* name = "test-memfd") {
  UniqueFd fd(::memfd_create(name, MFD_CLOEXEC));
  EXPECT_TRUE(fd.valid());
  EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  return fd;
}

inline UniqueFd MakeEventfd() {
  UniqueFd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  EXPECT_TRUE(fd.valid());
  return fd;
}

inline std::vector<int> RawFds(const std::vector<UniqueFd>& fds) {
  std::vector<int> raw;
  for (const UniqueFd& fd : fds) raw.push_back(fd.get());
  return raw;
}

// Waits up to timeout_ms for the eventfd to be signalled; returns its counter (0 if not
// signalled) and resets it.
inline uint64_t DrainEventfd(int fd, int timeout_ms = 200) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) <= 0) return 0;
  uint64_t value = 0;
  if (::read(fd, &value, sizeof(value)) != sizeof(value)) return 0;
  return value;
}

// True when the eventfd is not signalled right now.
inline bool EventfdQuiet(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;
}

// Sends bytes and any number of fds in one sendmsg (bypasses UnixConnection's 32-fd limit).
inline ssize_t SendWithManyFds(int socket_fd, std::span<const uint8_t> bytes,
                               std::span<const int> fds) {
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  return ::sendmsg(socket_fd, &msg, MSG_NOSIGNAL);
}

// --- Region access through a harness --------------------------------------------------------
inline WireReply RegionWrite(SessionHarness& h, uint32_t region, uint64_t offset,
                             std::span<const uint8_t> data) {
  auto payload = AsBytes(wire::RegionAccess{offset, region, static_cast<uint32_t>(data.size())});
  payload.insert(payload.end(), data.begin(), data.end());
  return h.Call(wire::Command::kRegionWrite, payload);
}

inline void Write32(SessionHarness& h, uint32_t region, uint64_t offset, uint32_t value) {
  auto r = RegionWrite(h, region, offset, AsBytes(value));
  EXPECT_FALSE(r.is_error()) << "write of region " << region << " at " << offset
                             << " failed: " << r.error_no();
}

inline uint32_t Read32(SessionHarness& h, uint32_t region, uint64_t offset) {
  auto r = h.CallStruct(wire::Command::kRegionRead, wire::RegionAccess{offset, region, 4});
  EXPECT_FALSE(r.is_error()) << "read of region " << region << " at " << offset
                             << " failed: " << r.error_no();
  if (r.payload.size() != sizeof(wire::RegionAccess) + 4) {
    ADD_FAILURE() << "read reply of " << r.payload.size() << " bytes";
    return 0;
  }
  uint32_t v;
  std::memcpy(&v, r.payload.data() + sizeof(wire::RegionAccess), 4);
  return v;
}

inline uint16_t Read16(SessionHarness& h, uint32_t region, uint64_t offset) {
  auto r = h.CallStruct(wire::Command::kRegionRead, wire::RegionAccess{offset, region, 2});
  EXPECT_FALSE(r.is_error());
  if (r.payload.size() != sizeof(wire::RegionAccess) + 2) {
    ADD_FAILURE() << "read reply of " << r.payload.size() << " bytes";
    return 0;
  }
  uint16_t v;
  std::memcpy(&v, r.payload.data() + sizeof(wire::RegionAccess), 2);
  return v;
}

}  // namespace vfu::testing
