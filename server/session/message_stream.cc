#include "server/session/message_stream.h"

#include <fcntl.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace vfu {

Result<size_t> MessageStream::Absorb(const uint8_t* data, size_t n, InboundMessage* msg,
                                     bool* done) {
  *done = false;
  size_t used = 0;
  if (!in_payload_) {
    size_t take = std::min(n, sizeof(header_buf_) - header_have_);
    std::memcpy(header_buf_ + header_have_, data, take);
    header_have_ += take;
    used += take;
    if (header_have_ < sizeof(header_buf_)) return used;
    std::memcpy(&msg->header, header_buf_, sizeof(header_buf_));
    last_header_ = msg->header;
    auto header = proto::DecodeHeader({header_buf_, sizeof(header_buf_)}, max_message_size_);
    if (!header) return header.error();
    msg->payload.resize(header->msg_size - sizeof(wire::Header));
    payload_have_ = 0;
    in_payload_ = true;
  }
  size_t take = std::min(n - used, msg->payload.size() - payload_have_);
  if (take > 0) std::memcpy(msg->payload.data() + payload_have_, data + used, take);
  payload_have_ += take;
  used += take;
  if (payload_have_ == msg->payload.size()) {
    in_payload_ = false;
    header_have_ = 0;
    payload_have_ = 0;
    *done = true;
  }
  return used;
}

Result<ReadStatus> MessageStream::Read(InboundMessage* msg) {
  while (true) {
    if (!in_payload_ && header_have_ == 0) {
      // A new message: first what an earlier read took beyond the previous one.
      msg->Clear();
      if (carry_len_ > 0) {
        msg->fds = std::move(carry_fds_);
        carry_fds_.clear();
        msg->fds_truncated = carry_fds_truncated_;
        carry_fds_truncated_ = false;
        bool done = false;
        auto used = Absorb(carry_ + carry_off_, carry_len_, msg, &done);
        if (!used) return used.error();
        carry_off_ += *used;
        carry_len_ -= *used;
        if (done) return ReadStatus::kMessage;
        continue;  // the carried bytes were all used: the rest comes from the socket
      }
      if (speculative_) {
        // Header and the first bytes of the payload in one recvmsg. A message shorter than
        // that lets the read run into the next one; those bytes are kept for the next message.
        // Fds ride with the first byte of the sendmsg that carried them and end the read, so
        // they belong to the message holding the read's last byte (each sendmsg carries at
        // most one message, as QEMU and our client send them). A message is at least a
        // 16-byte header, so the carried bytes hold at most one message start: that message's.
        uint8_t buf[kSpeculativeRead];
        auto got = connection_.Receive({buf, sizeof(buf)}, &msg->fds);
        if (!got) {
          if (got.error().code == EAGAIN) return ReadStatus::kWouldBlock;
          return got.error();
        }
        if (got->fds_truncated) msg->fds_truncated = true;
        if (got->bytes == 0) return ReadStatus::kClosed;
        bool done = false;
        auto used = Absorb(buf, got->bytes, msg, &done);
        if (!used) return used.error();
        if (*used < got->bytes) {
          std::memcpy(carry_, buf + *used, got->bytes - *used);
          carry_off_ = 0;
          carry_len_ = got->bytes - *used;
          carry_fds_ = std::move(msg->fds);
          msg->fds.clear();
          carry_fds_truncated_ = msg->fds_truncated;
          msg->fds_truncated = false;
        }
        if (done) return ReadStatus::kMessage;
        continue;
      }
    }
    // The rest of the header or of the payload, never reading past this message.
    bool done = false;
    if (!in_payload_) {
      uint8_t rest[sizeof(header_buf_)];
      auto got = connection_.Receive({rest, sizeof(header_buf_) - header_have_}, &msg->fds);
      if (!got) {
        if (got.error().code == EAGAIN) return ReadStatus::kWouldBlock;
        return got.error();
      }
      if (got->fds_truncated) msg->fds_truncated = true;
      if (got->bytes == 0) return ReadStatus::kClosed;
      auto used = Absorb(rest, got->bytes, msg, &done);
      if (!used) return used.error();
    } else {
      std::span<uint8_t> target{msg->payload.data() + payload_have_,
                                msg->payload.size() - payload_have_};
      auto got = connection_.Receive(target, &msg->fds);
      if (!got) {
        if (got.error().code == EAGAIN) return ReadStatus::kWouldBlock;
        return got.error();
      }
      if (got->fds_truncated) msg->fds_truncated = true;
      if (got->bytes == 0) return ReadStatus::kClosed;
      payload_have_ += got->bytes;
      if (payload_have_ == msg->payload.size()) {
        in_payload_ = false;
        header_have_ = 0;
        payload_have_ = 0;
        done = true;
      }
    }
    if (done) return ReadStatus::kMessage;
  }
}

Result<ReadStatus> MessageStream::ReadExpected(InboundMessage* msg, size_t expected_size,
                                               bool fds_allowed) {
  if (header_have_ != 0 || in_payload_ || expected_size <= sizeof(header_buf_)) return Read(msg);
  msg->Clear();
  msg->payload.resize(expected_size - sizeof(header_buf_));
  auto got = [&]() -> Result<UnixConnection::Received> {
    if (fds_allowed || expected_size > kSmallReplyBytes) {
      iovec iov[2] = {{header_buf_, sizeof(header_buf_)},
                      {msg->payload.data(), msg->payload.size()}};
      return fds_allowed ? connection_.Receive(iov, &msg->fds) : connection_.ReceiveBytes(iov);
    }
    // A small reply without fds (REGION_READ/WRITE of a register): one contiguous buffer read
    // with recv(2), which spares the kernel importing an iovec array; then split it.
    uint8_t small[kSmallReplyBytes];
    auto read = connection_.ReceiveBytes(std::span<uint8_t>(small, expected_size));
    if (read) {
      const size_t head = std::min(read->bytes, sizeof(header_buf_));
      std::memcpy(header_buf_, small, head);
      std::memcpy(msg->payload.data(), small + head, read->bytes - head);
    }
    return read;
  }();
  if (!got) {
    if (got.error().code == EAGAIN) return ReadStatus::kWouldBlock;
    return got.error();
  }
  if (got->fds_truncated) msg->fds_truncated = true;
  const size_t bytes = got->bytes;
  if (bytes == 0) return ReadStatus::kClosed;
  if (bytes < sizeof(header_buf_)) {  // a short read: the rest, the exact way
    header_have_ = bytes;
    return Read(msg);
  }
  std::memcpy(&msg->header, header_buf_, sizeof(header_buf_));
  last_header_ = msg->header;
  auto header = proto::DecodeHeader({header_buf_, sizeof(header_buf_)}, max_message_size_);
  if (!header) return header.error();
  if (bytes > header->msg_size) {
    return MakeError(EPROTO, "received " + std::to_string(bytes) + " bytes where one " +
                                 std::to_string(header->msg_size) +
                                 "-byte message was expected: more than one message in flight");
  }
  msg->payload.resize(header->msg_size - sizeof(header_buf_));
  if (bytes == header->msg_size) return ReadStatus::kMessage;
  // Part of the payload is still to come.
  header_have_ = sizeof(header_buf_);
  in_payload_ = true;
  payload_have_ = bytes - sizeof(header_buf_);
  return Read(msg);
}

Status MessageStream::Send(std::span<const uint8_t> bytes, std::span<const int> fds) {
  size_t sent = 0;
  if (pending_.empty()) {
    iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
    auto n = connection_.Send({&iov, 1}, fds);
    if (!n && n.error().code != EAGAIN) return n.error();
    if (n) {
      sent = *n;
      if (sent == bytes.size()) return Status::Ok();
    }
  }
  Pending p;
  p.bytes.assign(bytes.begin() + static_cast<ptrdiff_t>(sent), bytes.end());
  if (sent == 0) {
    // Nothing went out, so the fds still have to: keep our own duplicates until they do.
    for (int fd : fds) {
      int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
      if (dup < 0) return MakeError(errno, "dup of an fd to send failed");
      p.fds.emplace_back(dup);
    }
  }
  pending_bytes_ += p.bytes.size();
  pending_fds_ += p.fds.size();
  pending_.push_back(std::move(p));
  return Status::Ok();
}

Status MessageStream::Flush() {
  while (!pending_.empty()) {
    Pending& p = pending_.front();
    iovec iov{p.bytes.data() + p.sent, p.bytes.size() - p.sent};
    std::vector<int> raw;
    if (p.sent == 0) {
      for (const UniqueFd& fd : p.fds) raw.push_back(fd.get());
    }
    auto n = connection_.Send({&iov, 1}, raw);
    if (!n) return n.error().code == EAGAIN ? Status::Ok() : Status(n.error());
    p.sent += *n;
    pending_bytes_ -= *n;
    pending_fds_ -= p.fds.size();
    p.fds.clear();
    if (p.sent < p.bytes.size()) return Status::Ok();
    pending_.pop_front();
  }
  return Status::Ok();
}

}  // namespace vfu
