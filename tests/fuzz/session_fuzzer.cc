// libFuzzer target over vfio-user decoding and session dispatch.
//
// Each input drives a fresh SampleDevice served by a real Session over a socketpair
// (UnixConnection::Pair): the input's bytes are the raw client byte stream. The first byte
// selects how the stream is delivered:
//   bit 0  send a valid VERSION (QEMU's) first, so later commands get past negotiation
//   bit 1  attach a memfd (64 KiB) to the fuzz stream's first byte (reaches DMA_MAP)
//   bit 2  attach an eventfd to the fuzz stream's first byte (reaches SET_IRQS)
//   bit 3  deliver the stream in small chunks, running the session after each (partial
//          headers/payloads); the second byte gives the chunk size
//   bit 4  close the client end at the end (EOF, possibly mid-message)
//   bit 5  a read budget of 1 (yield after every message) instead of 16
//   bit 6  enable bus mastering first (config write), so the device's DMA paths run
//   bit 7  slow reader: tiny socket send buffer, 256-byte output limit, replies drained only
//          when the client cannot send any more (queued replies, read pausing, Flush)
// The rest is the stream. Replies (and the fds they carry) are drained and closed. Every loop is
// bounded. The pure decoders of protocol/codec.h are also run on the stream bytes, with a few
// round-trip invariants checked.
//
// Leaks: LeakSanitizer covers memory; file descriptors are counted before and after each input
// and the fuzzer aborts if any are left open.
#include <dirent.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "server/common/log.h"
#include "server/common/unique_fd.h"
#include "server/devices/sample_device.h"
#include "server/pci/config_space.h"
#include "server/protocol/codec.h"
#include "server/protocol/wire.h"
#include "server/session/session.h"
#include "server/transport/unix_socket.h"

namespace {

using namespace vfu;

constexpr char kQemuVersionJson[] =
    "{\"capabilities\": {\"max_msg_fds\": 16, \"max_data_xfer_size\": 1048576, \"pgsizes\": "
    "4096, \"max_dma_maps\": 65535, \"migration\": {\"pgsize\": 4096, \"max_bitmap_size\": "
    "268435456}, \"write_multiple\": true}}";

enum Mode : uint8_t {
  kModeVersion = 1 << 0,
  kModeMemfd = 1 << 1,
  kModeEventfd = 1 << 2,
  kModeChunked = 1 << 3,
  kModeEof = 1 << 4,
  kModeBudget1 = 1 << 5,
  kModeBusMaster = 1 << 6,
  kModeSlowReader = 1 << 7,
};

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

void DumpFds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    char path[64];
    char target[256] = {};
    std::snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
    ssize_t n = ::readlink(path, target, sizeof(target) - 1);
    std::fprintf(stderr, "  fd %s -> %s\n", e->d_name, n > 0 ? target : "?");
  }
  ::closedir(dir);
}

std::vector<uint8_t> Message(uint16_t id, wire::Command command, std::span<const uint8_t> payload,
                             uint32_t flags = 0) {
  std::vector<uint8_t> out;
  proto::BeginMessage(out, id, static_cast<uint16_t>(command), flags);
  out.insert(out.end(), payload.begin(), payload.end());
  proto::FinishMessage(out);
  return out;
}

class Harness {
 public:
  Harness(devices::SampleDevice* device, SessionOptions options, bool slow_reader)
      : slow_reader_(slow_reader) {
    auto pair = UnixConnection::Pair();
    if (!pair) std::abort();
    client_ = std::move(pair->first);
    if (slow_reader_) {
      int small = 1;  // the kernel rounds this up to its minimum (a few KiB)
      ::setsockopt(pair->second.fd(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    }
    session_ = std::make_unique<Session>(std::move(pair->second), device, options,
                                         LogContext(std::vector<LogField>{{"fuzz", "1"}}));
  }

  // Runs the session until it has nothing more to read (bounded), then reads the replies
  // unless this is a slow reader.
  void RunServer() {
    RunSession();
    if (!slow_reader_) DrainReplies();
  }

  // At the end: alternate draining and serving until both sides are quiet (bounded).
  void Finish() {
    for (int i = 0; i < 64 && !closed_; ++i) {
      DrainReplies();
      RunSession();
      if (!session_->WantsWrite()) {
        pollfd p{session_->fd(), POLLIN, 0};
        if (::poll(&p, 1, 0) <= 0) break;
      }
    }
    DrainReplies();
  }

  void RunSession() {
    for (int i = 0; i < 64 && !closed_; ++i) {
      if (session_->WantsWrite() && session_->OnWritable() == Session::State::kClosed) {
        closed_ = true;
        break;
      }
      if (session_->OnReadable() == Session::State::kClosed) {
        closed_ = true;
        break;
      }
      if (session_->WantsWrite()) (void)session_->OnWritable();
      pollfd p{session_->fd(), POLLIN, 0};
      if (::poll(&p, 1, 0) <= 0) break;
    }
  }

  // Reads and discards whatever the server sent (closing received fds).
  void DrainReplies() {
    uint8_t buf[4096];
    for (int i = 0; i < 4096; ++i) {
      std::vector<UniqueFd> fds;
      auto got = client_.Receive(buf, &fds);
      if (!got || got->bytes == 0) return;
    }
  }

  // Sends all of `bytes`, running the server whenever the socket buffer is full (bounded).
  void Send(std::span<const uint8_t> bytes, std::span<const int> fds = {}) {
    size_t sent = 0;
    for (int spins = 0; sent < bytes.size() && spins < 10000; ++spins) {
      iovec iov{const_cast<uint8_t*>(bytes.data() + sent), bytes.size() - sent};
      auto n = client_.Send({&iov, 1}, sent == 0 ? fds : std::span<const int>());
      if (!n) {
        if (n.error().code != EAGAIN || closed_) return;  // server gone: EPIPE
        RunServer();
        DrainReplies();  // a slow reader must read eventually, or both sides stall
        continue;
      }
      sent += *n;
    }
  }

  void CloseClient() { client_.Close(); }
  bool closed() const { return closed_; }

 private:
  UnixConnection client_;
  std::unique_ptr<Session> session_;
  bool slow_reader_ = false;
  bool closed_ = false;
};

void FuzzDecoders(std::span<const uint8_t> data) {
  proto::Bytes b(data.data(), data.size());
  (void)proto::DecodeHeader(b);
  (void)proto::DecodeHeader(b, 64);
  if (auto v = proto::DecodeVersion(b); v.ok()) {
    // Whatever a client proposes, our reply fits the size we were given (when anything fits)
    // and is itself a valid VERSION payload.
    proto::Capabilities ours;
    ours.max_msg_fds = proto::kAdvertisedMaxMsgFds;
    ours.max_data_xfer_size = proto::kMaxDataXferSize;
    ours.pgsizes = proto::kPageSize;
    ours.max_dma_maps = proto::kMaxDmaMaps;
    ours.write_multiple = true;
    auto reply = proto::EncodeVersionReply(v->caps, ours, data.size());
    auto back = proto::DecodeVersion({reply.data(), reply.size()});
    if (!back.ok()) {
      std::fprintf(stderr, "EncodeVersionReply produced an undecodable reply: %s\n",
                   back.error().message.c_str());
      std::abort();
    }
    auto req = proto::EncodeVersionRequest(v->caps);
    if (!proto::DecodeVersion({req.data(), req.size()}).ok()) std::abort();
  }
  (void)proto::DecodeDmaMap(b);
  (void)proto::DecodeDmaUnmap(b);
  (void)proto::DecodeDeviceInfoRequest(b);
  (void)proto::DecodeRegionInfoRequest(b);
  (void)proto::DecodeIrqInfoRequest(b);
  for (size_t fds : {size_t{0}, size_t{1}, size_t{2}}) {
    if (auto s = proto::DecodeSetIrqs(b, fds); s.ok()) {
      if ((s->set.flags & wire::kIrqSetDataBool) && s->bools.size() != s->set.count) std::abort();
    }
  }
  (void)proto::DecodeRegionRead(b);
  (void)proto::DecodeRegionRead(b, 8);
  if (auto w = proto::DecodeRegionWrite(b); w.ok()) {
    if (w->data.size() != w->access.count) std::abort();
  }
  if (auto m = proto::DecodeWriteMulti(b); m.ok()) {
    if (sizeof(wire::WriteMultiHeader) + m->size() * sizeof(wire::WriteMultiEntry) != data.size()) {
      std::abort();
    }
  }
  if (auto r = proto::DecodeRegionInfoReply(b); r.ok()) {
    if (r->sparse_areas.size() * sizeof(wire::SparseMmapArea) > data.size()) std::abort();
  }
  if (data.size() >= 24) {
    auto a = proto::Load<wire::RegionAccess>(b);
    uint64_t size = proto::Load<uint64_t>(b, 16);
    if (proto::CheckRegionAccess(a.region, a.offset, a.count, wire::kPciNumRegions, size).ok()) {
      if (a.offset + a.count > size || a.offset + a.count < a.offset) std::abort();
    }
  }
}

}  // namespace

// UBSan reports are findings too: stop at the first one so libFuzzer saves the input.
extern "C" const char* __ubsan_default_options() { return "halt_on_error=1:print_stacktrace=1"; }

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  if (std::getenv("VFU_FUZZ_LOG") == nullptr) Log::SetLevel(LogLevel::kError);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // Measured per input: libFuzzer itself opens fds between inputs (symbolizer pipes).
  const size_t fds_before = OpenFdCount();
  uint8_t mode = data[0];
  size_t chunk = 1;
  std::span<const uint8_t> stream(data + 1, size - 1);
  if ((mode & kModeChunked) && !stream.empty()) {
    chunk = 1 + stream[0] % 64;
    stream = stream.subspan(1);
  }

  // Decoders on the stream bytes, and on the payload of the first message in it.
  FuzzDecoders(stream);
  if (stream.size() > sizeof(wire::Header)) FuzzDecoders(stream.subspan(sizeof(wire::Header)));

  {
    auto device = devices::SampleDevice::Create();
    if (!device) std::abort();
    SessionOptions options;
    if (mode & kModeBudget1) options.read_budget = 1;
    options.max_dma_maps = 8;  // keep the map table small
    if (mode & kModeSlowReader) options.max_pending_output = 256;
    Harness h(device->get(), options, mode & kModeSlowReader);
    uint16_t id = 0xf000;  // our own messages; fuzz-chosen ids may collide, which is fine

    if (mode & kModeVersion) {
      std::vector<uint8_t> payload;
      proto::Append(payload, wire::Version{0, 0});
      payload.insert(payload.end(), kQemuVersionJson, kQemuVersionJson + sizeof(kQemuVersionJson));
      h.Send(Message(id++, wire::Command::kVersion, payload));
      h.RunServer();
      if (mode & kModeBusMaster) {
        std::vector<uint8_t> w;
        proto::Append(w, wire::RegionAccess{pci::kCommand, wire::kPciConfigRegionIndex, 2});
        uint16_t cmd = pci::kCommandMemory | pci::kCommandBusMaster;
        proto::Append(w, cmd);
        h.Send(Message(id++, wire::Command::kRegionWrite, w));
        h.RunServer();
      }
    }

    std::vector<UniqueFd> owned;
    std::vector<int> fds;
    if (mode & kModeMemfd) {
      UniqueFd m(::memfd_create("fuzz-dma", MFD_CLOEXEC));
      if (m.valid() && ::ftruncate(m.get(), 64 << 10) == 0) {
        fds.push_back(m.get());
        owned.push_back(std::move(m));
      }
    }
    if (mode & kModeEventfd) {
      UniqueFd e(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      if (e.valid()) {
        fds.push_back(e.get());
        owned.push_back(std::move(e));
      }
    }

    if (mode & kModeChunked) {
      for (size_t off = 0; off < stream.size() && !h.closed(); off += chunk) {
        size_t n = std::min(chunk, stream.size() - off);
        h.Send(stream.subspan(off, n),
               off == 0 ? std::span<const int>(fds) : std::span<const int>());
        h.RunServer();
      }
    } else if (!stream.empty()) {
      h.Send(stream, fds);
    }
    owned.clear();  // the session holds its own copies of whatever it kept
    h.Finish();
    if (mode & kModeEof) {
      h.CloseClient();
      h.RunServer();
    }
  }  // session, device, socketpair: all released here

  size_t now = OpenFdCount();
  if (now != fds_before) {
    std::fprintf(stderr, "fd leak: %zu open fds after the input, %zu before\n", now, fds_before);
    DumpFds();
    std::abort();
  }
  return 0;
}
