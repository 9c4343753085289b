// vfio-user client library: connects to a server socket, negotiates, and offers an API shaped
// like kernel VFIO (device info, region info with sparse mmap areas, region read/write, DMA
// map/unmap of memfd-backed memory, SET_IRQS with eventfds, reset). It is synchronous: each
// call sends one request and waits (bounded by a timeout) for its reply; posted writes
// (NO_REPLY) do not wait. Used by tests, benchmarks, vfio-user-ctl and userspace drivers.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "server/common/mapping.h"
#include "server/common/status.h"
#include "server/common/unique_fd.h"
#include "server/protocol/codec.h"
#include "server/session/message_stream.h"

namespace vfu::client {

struct ClientOptions {
  std::chrono::milliseconds timeout{5000};
  proto::Capabilities proposed_caps = DefaultCaps();

  static proto::Capabilities DefaultCaps();
};

struct RegionInfo {
  wire::RegionInfo info{};
  std::vector<wire::SparseMmapArea> sparse_areas;
  UniqueFd fd;  // present when the region is mmappable
};

// A raw reply, for callers (tests) that look at the wire directly.
struct RawReply {
  wire::Header header{};
  std::vector<uint8_t> payload;
  std::vector<UniqueFd> fds;
  bool is_error() const { return header.flags & wire::kFlagError; }
};

// Memory a client shares with the server for DMA: a memfd and the client's own mapping of it.
class DmaBuffer {
 public:
  static Result<DmaBuffer> Create(size_t size, const char* name = "vfu-dma");
  int fd() const { return fd_.get(); }
  uint8_t* data() const { return mapping_.data(); }
  size_t size() const { return mapping_.size(); }

 private:
  UniqueFd fd_;
  MemoryMapping mapping_;
};

class Client {
 public:
  static Result<std::unique_ptr<Client>> Connect(const std::string& socket_path,
                                                 ClientOptions options = {});
  // Over an already-connected socket (tests use socketpairs).
  static Result<std::unique_ptr<Client>> Attach(UnixConnection connection,
                                                ClientOptions options = {});

  const proto::Capabilities& server_caps() const { return server_caps_; }
  uint32_t max_data_xfer_size() const { return max_xfer_; }

  Result<wire::DeviceInfo> GetDeviceInfo();
  // Asks with a small argsz first and retries with the size the server reports, like QEMU.
  Result<RegionInfo> GetRegionInfo(uint32_t index);
  Result<wire::IrqInfo> GetIrqInfo(uint32_t index);

  Status RegionRead(uint32_t region, uint64_t offset, std::span<uint8_t> out);
  Status RegionWrite(uint32_t region, uint64_t offset, std::span<const uint8_t> data);
  // Sends the write with NO_REPLY and returns without waiting.
  Status RegionWritePosted(uint32_t region, uint64_t offset, std::span<const uint8_t> data);
  template <typename T>
  Result<T> Read(uint32_t region, uint64_t offset) {
    T v{};
    Status s = RegionRead(region, offset, {reinterpret_cast<uint8_t*>(&v), sizeof(T)});
    if (!s.ok()) return s.error();
    return v;
  }
  template <typename T>
  Status Write(uint32_t region, uint64_t offset, T v) {
    return RegionWrite(region, offset, {reinterpret_cast<const uint8_t*>(&v), sizeof(T)});
  }

  // Maps one mmappable area of a region into this process.
  Result<MemoryMapping> MapArea(const RegionInfo& region, const wire::SparseMmapArea& area);

  Status DmaMap(uint64_t iova, uint64_t size, int fd, uint64_t fd_offset,
                uint32_t flags = wire::kDmaFlagRead | wire::kDmaFlagWrite);
  Status DmaUnmap(uint64_t iova, uint64_t size);
  Status DmaUnmapAll();

  // Assigns trigger eventfds to [start, start + fds.size()) of an IRQ index, in chunks of the
  // server's max_msg_fds; an fd of -1 de-assigns that vector.
  Status SetIrqEventfds(uint32_t index, uint32_t start, std::span<const int> fds);
  Status DisableIrqs(uint32_t index);
  Status MaskIrq(uint32_t index, uint32_t vector, bool masked);
  Status SetIrqs(const wire::IrqSet& set, std::span<const int> fds,
                 std::span<const uint8_t> bools = {});

  Status Reset();

  // Sends any message and waits for its reply (tests).
  Result<RawReply> Call(uint16_t command, std::span<const uint8_t> payload,
                        std::span<const int> fds = {}, uint32_t flags = 0);
  // Sends without waiting (NO_REPLY, or to pipeline), and waits for the next reply.
  Result<uint16_t> Send(uint16_t command, std::span<const uint8_t> payload,
                        std::span<const int> fds = {}, uint32_t flags = 0);
  Result<RawReply> Receive();

 private:
  Client(UnixConnection connection, ClientOptions options);
  Status Negotiate();
  Status CheckReply(const RawReply& reply, uint16_t command) const;
  Status CheckReplyHeader(const wire::Header& header, uint16_t command) const;
  static Status CheckReplyMatches(const wire::Header& header, uint16_t id, uint16_t command);
  // Call / Receive for a reply whose full size is known (0: unknown). With exactly one request
  // outstanding the reply is then read with a single recvmsg (MessageStream::ReadExpected).
  Result<RawReply> CallExpecting(size_t expected_reply_size, uint16_t command,
                                 std::span<const uint8_t> payload, std::span<const int> fds = {},
                                 uint32_t flags = 0);
  Result<RawReply> ReceiveExpecting(size_t expected_reply_size);
  // Reads the next reply into inbound_ (valid until the next call; no allocation once its
  // buffers have grown). `fds_allowed` false: the reply cannot carry fds (read without a
  // control buffer).
  Result<InboundMessage*> ReceiveInPlace(size_t expected_reply_size, bool fds_allowed);
  // REGION_READ / REGION_WRITE, the hot path of trapped MMIO: sends the request and reads the
  // reply (which never carries fds) in place, with no allocation and no control buffer; checks
  // that it answers this request, is not an error, and holds a RegionAccess plus `reply_data`
  // bytes. The result is valid until the next call.
  Result<const InboundMessage*> CallRegionAccess(uint16_t command, std::span<const uint8_t> payload,
                                                 size_t reply_data);

  MessageStream stream_;
  ClientOptions options_;
  uint16_t next_id_ = 1;
  proto::Capabilities server_caps_;
  uint32_t max_xfer_ = proto::kMaxDataXferSize;
  uint32_t max_fds_ = 1;
  std::vector<uint8_t> buf_;
  InboundMessage inbound_;    // the reply being read (partial after a timeout mid-message)
  uint32_t outstanding_ = 0;  // requests sent (without NO_REPLY) whose replies are unread
  bool in_step_ = true;       // false after a timeout or a framing surprise: exact reads only
};

}  // namespace vfu::client
