// MessageStream frames vfio-user messages over a UnixConnection, for both the server session
// and the client library. Reading is incremental and never blocks a non-blocking socket: the
// 16-byte header is read first (so fds are attributed to the message they came with and never
// to its neighbour), then exactly msg_size - 16 payload bytes. Writing sends whole messages and
// queues whatever the socket does not take now, keeping the fds for the first byte.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <vector>

#include "server/common/status.h"
#include "server/common/unique_fd.h"
#include "server/protocol/codec.h"
#include "server/protocol/wire.h"
#include "server/transport/unix_socket.h"

namespace vfu {

struct InboundMessage {
  wire::Header header{};
  std::vector<uint8_t> payload;
  std::vector<UniqueFd> fds;
  bool fds_truncated = false;  // the sender passed more fds than kMaxReceiveFds

  proto::Bytes bytes() const { return {payload.data(), payload.size()}; }
  void Clear() {
    payload.clear();
    fds.clear();
    fds_truncated = false;
  }
};

enum class ReadStatus { kMessage, kWouldBlock, kClosed };

class MessageStream {
 public:
  MessageStream() = default;
  explicit MessageStream(UnixConnection connection,
                         uint32_t max_message_size = proto::kMaxMessageSize)
      : connection_(std::move(connection)), max_message_size_(max_message_size) {}

  // Advances reading. kMessage: *msg holds one complete message. kClosed: the peer closed the
  // stream (mid_message() tells whether it did so inside a message). An error means the
  // stream is out of step (bad msg_size, socket error) and must be closed; the header of the
  // offending message, when it was read, is in last_header().
  Result<ReadStatus> Read(InboundMessage* msg);
  // For a blocking client that knows exactly one message (the reply to its only outstanding
  // request) can be in flight: reads it with one recvmsg of at most `expected_size` bytes
  // (header and payload together) instead of the header first, and finishes with Read() when
  // the message is longer. A read never crosses the end of the message it starts with, so fds
  // stay attributed to that message; if the socket holds more than that one message (bytes
  // beyond msg_size arrived), the stream is out of step: EPROTO, and it must be closed.
  // `fds_allowed` false: the reply cannot carry fds, so it is read without a control buffer
  // (UnixConnection::ReceiveBytes); fds a peer sends anyway are dropped by the kernel.
  Result<ReadStatus> ReadExpected(InboundMessage* msg, size_t expected_size,
                                  bool fds_allowed = true);
  bool mid_message() const { return header_have_ > 0 || in_payload_ || carry_len_ > 0; }
  // Server side: read the header together with the first kSpeculativePayload payload bytes
  // (one recvmsg instead of two for most requests; see Read).
  void set_speculative_reads(bool on) { speculative_ = on; }
  static constexpr size_t kSpeculativePayload = 16;
  static constexpr size_t kSpeculativeRead = sizeof(wire::Header) + kSpeculativePayload;
  // Bytes already read from the socket that belong to messages not yet returned by Read: the
  // caller must call Read again without waiting for the socket to become readable.
  bool HasBufferedInput() const { return carry_len_ > 0; }
  const std::optional<wire::Header>& last_header() const { return last_header_; }

  // Sends one whole message (fds ride with its first byte). What the socket does not accept
  // now is queued and sent by Flush(); messages never interleave.
  Status Send(std::span<const uint8_t> bytes, std::span<const int> fds = {});
  Status Flush();
  bool HasPendingOutput() const { return !pending_.empty(); }
  size_t pending_bytes() const { return pending_bytes_; }
  // Duplicated fds held by queued replies until they go out.
  size_t pending_fds() const { return pending_fds_; }

  UnixConnection& connection() { return connection_; }
  int fd() const { return connection_.fd(); }

 private:
  struct Pending {
    std::vector<uint8_t> bytes;
    size_t sent = 0;
    std::vector<UniqueFd> fds;  // duplicates, sent with the first byte
  };

  // Adds bytes to the message being assembled; returns how many were taken (fewer than n only
  // when the message completed, *done then true). Errors on a bad header.
  Result<size_t> Absorb(const uint8_t* data, size_t n, InboundMessage* msg, bool* done);

  UnixConnection connection_;
  uint32_t max_message_size_ = proto::kMaxMessageSize;
  // ReadExpected reads replies up to this size (header included) into one stack buffer.
  static constexpr size_t kSmallReplyBytes = 256;
  uint8_t header_buf_[sizeof(wire::Header)] = {};

  size_t header_have_ = 0;
  size_t payload_have_ = 0;
  bool in_payload_ = false;
  std::optional<wire::Header> last_header_;
  bool speculative_ = false;
  // Bytes (and fds) a speculative read took beyond the message it was for.
  uint8_t carry_[kSpeculativePayload] = {};
  size_t carry_off_ = 0;
  size_t carry_len_ = 0;
  std::vector<UniqueFd> carry_fds_;
  bool carry_fds_truncated_ = false;
  std::deque<Pending> pending_;
  size_t pending_bytes_ = 0;
  size_t pending_fds_ = 0;
};

}  // namespace vfu
