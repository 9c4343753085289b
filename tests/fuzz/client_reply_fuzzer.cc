// libFuzzer target over the client library's reply handling: a Client is attached to one end of
// a socketpair; the other end first answers VERSION properly and then plays back the fuzz input
// as the server's byte stream (optionally with a memfd attached at a chosen offset), and closes,
// so every client call ends with a reply, an error or EOF and never waits for its timeout.
// The first input byte picks the sequence of client calls (REGION_READ/WRITE fast-path framing,
// REGION_INFO with its retry and capability chain, IRQ/device info, DMA map, reset).
//
// Leaks: LeakSanitizer covers memory; fds are counted before and after each input.
// Seeds: tests/fuzz/client_corpus/ (written by make_corpus.py).
#include <dirent.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "server/client/client.h"
#include "server/common/log.h"
#include "server/protocol/codec.h"
#include "server/protocol/wire.h"
#include "server/transport/unix_socket.h"

namespace {

using namespace vfu;

size_t OpenFdCount() {
  size_t n = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n - 1;
}

bool SendAll(int fd, std::span<const uint8_t> bytes, int extra_fd) {
  size_t done = 0;
  while (done < bytes.size()) {
    iovec iov{const_cast<uint8_t*>(bytes.data() + done), bytes.size() - done};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    if (done == 0 && extra_fd >= 0) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &extra_fd, sizeof(int));
    }
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n <= 0) return false;  // buffer full (input larger than the socket buffer): stop
    done += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

extern "C" const char* __ubsan_default_options() { return "halt_on_error=1:print_stacktrace=1"; }

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  if (std::getenv("VFU_FUZZ_LOG") == nullptr) Log::SetLevel(LogLevel::kError);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t fds_before = OpenFdCount();
  uint8_t plan = data[0];
  std::span<const uint8_t> stream(data + 1, size - 1);
  {
    auto pair = UnixConnection::Pair();
    if (!pair) std::abort();
    UnixConnection peer = std::move(pair->second);

    // VERSION reply for msg_id 1, then the fuzz bytes, then EOF.
    std::vector<uint8_t> version;
    proto::BeginMessage(version, 1, static_cast<uint16_t>(wire::Command::kVersion),
                        wire::kFlagTypeReply);
    proto::Append(version, wire::Version{0, 0});
    const char json[] = "{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":64}}";
    version.insert(version.end(), json, json + sizeof(json));
    proto::FinishMessage(version);
    if (!SendAll(peer.fd(), version, -1)) std::abort();
    // Plan bit 7: the next byte times 4 is the stream offset where a memfd rides along.
    UniqueFd memfd;
    size_t fd_at = 0;
    if ((plan & 0x80) && !stream.empty()) {
      fd_at = std::min<size_t>(size_t{stream[0]} * 4, stream.size() - 1);
      stream = stream.subspan(1);
      memfd.Reset(::memfd_create("fuzz-region", MFD_CLOEXEC));
      if (memfd.valid() && ::ftruncate(memfd.get(), 8192) != 0) memfd.Reset();
    }
    if (SendAll(peer.fd(), stream.first(std::min(fd_at, stream.size())), -1)) {
      (void)SendAll(peer.fd(), stream.subspan(std::min(fd_at, stream.size())), memfd.get());
    }
    memfd.Reset();
    ::shutdown(peer.fd(), SHUT_WR);

    client::ClientOptions options;
    options.timeout = std::chrono::milliseconds(1000);  // never reached: EOF comes first
    auto c = client::Client::Attach(std::move(pair->first), options);
    if (c.ok()) {
      client::Client& cl = **c;
      uint8_t buf[128];
      for (int step = 0; step < 6; ++step) {
        switch ((plan >> (step % 4)) & 7) {
          case 0:
            (void)cl.Read<uint32_t>(0, 0);
            break;
          case 1:
            (void)cl.RegionRead(7, 0, std::span<uint8_t>(buf, 100));  // > max_xfer: chunks
            break;
          case 2:
            (void)cl.Write<uint32_t>(0, 4, 1);
            break;
          case 3: {
            auto r = cl.GetRegionInfo(2);
            if (r.ok() && r->fd.valid() && !r->sparse_areas.empty() &&
                r->sparse_areas[0].size <= 8192) {
              (void)cl.MapArea(*r, r->sparse_areas[0]);  // mapped and unmapped at once
            }
            break;
          }
          case 4:
            (void)cl.GetIrqInfo(0);
            (void)cl.GetDeviceInfo();
            (void)cl.GetRegionInfo(0);
            break;
          case 5:
            (void)cl.DmaMap(0x1000, 0x1000, -1, 0);
            break;
          case 6:
            (void)cl.Reset();
            break;
          case 7: {
            auto r = cl.Receive();
            (void)r;
            break;
          }
        }
      }
    }
  }
  size_t now = OpenFdCount();
  if (now != fds_before) {
    std::fprintf(stderr, "fd leak: %zu open fds after the input, %zu before\n", now, fds_before);
    std::abort();
  }
  return 0;
}
