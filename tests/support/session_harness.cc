#include "tests/support/session_harness.h"

#include <poll.h>

#include <cstring>

#include <gtest/gtest.h>

namespace vfu::testing {

std::vector<uint8_t> BuildMessage(uint16_t msg_id, uint16_t command,
                                  std::span<const uint8_t> payload, uint32_t flags) {
  std::vector<uint8_t> out;
  proto::BeginMessage(out, msg_id, command, flags);
  out.insert(out.end(), payload.begin(), payload.end());
  proto::FinishMessage(out);
  return out;
}

SessionHarness::SessionHarness() {
  auto dev = devices::SampleDevice::Create();
  EXPECT_TRUE(dev.ok());
  sample_ = std::move(*dev);
  Init(sample_.get());
}

SessionHarness::SessionHarness(VfioDevice* device) { Init(device); }

void SessionHarness::Init(VfioDevice* device) {
  auto pair = UnixConnection::Pair();
  EXPECT_TRUE(pair.ok());
  client_ = std::move(pair->first);
  session_ = std::make_unique<Session>(std::move(pair->second), device, SessionOptions{},
                                       LogContext(std::vector<LogField>{{"test", "harness"}}));
}

SessionHarness::~SessionHarness() { session_.reset(); }

void SessionHarness::SendRaw(std::span<const uint8_t> bytes, std::span<const int> fds) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    iovec iov{const_cast<uint8_t*>(bytes.data() + sent), bytes.size() - sent};
    auto n = client_.Send({&iov, 1}, sent == 0 ? fds : std::span<const int>());
    if (!n) {
      if (n.error().code == EAGAIN) {
        RunServer();  // make room
        continue;
      }
      ADD_FAILURE() << "send failed: " << n.error().message;
      return;
    }
    sent += *n;
  }
}

uint16_t SessionHarness::Send(wire::Command command, std::span<const uint8_t> payload,
                              std::span<const int> fds, uint32_t flags) {
  uint16_t id = next_id_++;
  auto bytes = BuildMessage(id, static_cast<uint16_t>(command), payload, flags);
  SendRaw(bytes, fds);
  return id;
}

Session::State SessionHarness::RunServer() {
  if (closed_) return Session::State::kClosed;
  for (int i = 0; i < 1000; ++i) {
    Session::State st = session_->OnReadable();
    if (st == Session::State::kClosed) {
      closed_ = true;
      return st;
    }
    if (session_->WantsWrite()) (void)session_->OnWritable();
    if (session_->HasBufferedInput() && !session_->ReadPaused()) continue;  // as the endpoint
    pollfd p{session_->fd(), POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) break;
  }
  return Session::State::kOpen;
}

std::optional<WireReply> SessionHarness::ReadReply() {
  WireReply r;
  auto read_exact = [&](uint8_t* buf, size_t len) -> bool {
    size_t have = 0;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (have < len) {
      auto got = client_.Receive({buf + have, len - have}, &r.fds);
      if (got.ok()) {
        if (got->bytes == 0) return false;
        have += got->bytes;
        continue;
      }
      if (got.error().code != EAGAIN || std::chrono::steady_clock::now() > deadline) return false;
      if (session_ && !closed_ && session_->WantsWrite()) (void)session_->OnWritable();
      pollfd p{client_.fd(), POLLIN, 0};
      ::poll(&p, 1, 10);
    }
    return true;
  };
  if (!read_exact(reinterpret_cast<uint8_t*>(&r.header), sizeof(r.header))) return std::nullopt;
  if (r.header.msg_size < sizeof(wire::Header)) return std::nullopt;
  r.payload.resize(r.header.msg_size - sizeof(wire::Header));
  if (!r.payload.empty() && !read_exact(r.payload.data(), r.payload.size())) return std::nullopt;
  return r;
}

WireReply SessionHarness::Call(wire::Command command, std::span<const uint8_t> payload,
                               std::span<const int> fds, uint32_t flags) {
  uint16_t id = Send(command, payload, fds, flags);
  RunServer();
  auto reply = ReadReply();
  if (!reply) {
    ADD_FAILURE() << "no reply to " << wire::CommandName(static_cast<uint16_t>(command));
    return {};
  }
  EXPECT_EQ(reply->header.msg_id, id);
  EXPECT_EQ(reply->header.command, static_cast<uint16_t>(command));
  EXPECT_EQ(reply->header.flags & wire::kFlagTypeMask, wire::kFlagTypeReply);
  return std::move(*reply);
}

bool SessionHarness::NoReplyPending() {
  pollfd p{client_.fd(), POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;
}

bool SessionHarness::ServerClosed() {
  pollfd p{client_.fd(), POLLIN, 0};
  if (::poll(&p, 1, 100) <= 0) return false;
  uint8_t b;
  return ::recv(client_.fd(), &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

WireReply SessionHarness::Negotiate() {
  std::vector<uint8_t> payload;
  proto::Append(payload, wire::Version{0, 0});
  payload.insert(payload.end(), kQemuVersionJson, kQemuVersionJson + sizeof(kQemuVersionJson));
  WireReply r = Call(wire::Command::kVersion, payload);
  EXPECT_FALSE(r.is_error());
  return r;
}

}  // namespace vfu::testing
