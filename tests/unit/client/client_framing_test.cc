// The client library's reply framing against a scripted peer on a socketpair: with exactly one
// request outstanding, REGION_READ/REGION_WRITE replies are read with a single recvmsg of the
// expected size (MessageStream::ReadExpected). These tests pin down that this fast path never
// reads past the reply it starts with and falls back to exact framing when the reply is shorter,
// longer or split, and that a surprise second message is reported instead of mis-parsed.
//
// The client is synchronous and blocking, so the "server" side here is just bytes queued on the
// peer socket before the call (or written by a helper thread for the split case).
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "server/client/client.h"
#include "server/protocol/codec.h"
#include "server/protocol/wire.h"
#include "server/transport/unix_socket.h"

namespace vfu::testing {
namespace {

using client::Client;
using client::ClientOptions;
using wire::Command;

constexpr uint16_t kRegionRead = static_cast<uint16_t>(Command::kRegionRead);
constexpr uint16_t kRegionWrite = static_cast<uint16_t>(Command::kRegionWrite);

std::vector<uint8_t> Reply(uint16_t id, uint16_t command, std::span<const uint8_t> payload,
                           uint32_t error_no = 0) {
  std::vector<uint8_t> out;
  uint32_t flags = wire::kFlagTypeReply | (error_no ? wire::kFlagError : 0u);
  proto::BeginMessage(out, id, command, flags, error_no);
  out.insert(out.end(), payload.begin(), payload.end());
  proto::FinishMessage(out);
  return out;
}

std::vector<uint8_t> ReadReply(uint16_t id, uint64_t offset, std::span<const uint8_t> data) {
  std::vector<uint8_t> payload;
  proto::Append(payload, wire::RegionAccess{offset, 0, static_cast<uint32_t>(data.size())});
  payload.insert(payload.end(), data.begin(), data.end());
  return Reply(id, kRegionRead, payload);
}

class ClientFramingTest : public ::testing::Test {
 protected:
  void SetUp() override { Connect(std::chrono::milliseconds(2000)); }

  void Connect(std::chrono::milliseconds timeout) {
    client_.reset();
    auto pair = UnixConnection::Pair();
    ASSERT_TRUE(pair.ok());
    peer_ = std::move(pair->second);
    ASSERT_TRUE(peer_.SetNonBlocking(false).ok());
    // The VERSION reply is queued before the client asks (its first msg_id is 1).
    std::vector<uint8_t> version;
    proto::Append(version, wire::Version{0, 0});
    const char json[] = "{\"capabilities\":{\"max_msg_fds\":8}}";
    version.insert(version.end(), json, json + sizeof(json));
    Queue(Reply(1, static_cast<uint16_t>(Command::kVersion), version));
    ClientOptions options;
    options.timeout = timeout;
    auto c = Client::Attach(std::move(pair->first), options);
    ASSERT_TRUE(c.ok()) << c.error().message;
    client_ = std::move(*c);
    next_id_ = 2;
  }

  void Queue(std::span<const uint8_t> bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::write(peer_.fd(), bytes.data() + done, bytes.size() - done);
      ASSERT_GT(n, 0) << std::strerror(errno);
      done += static_cast<size_t>(n);
    }
  }

  // Drains what the client sent so far (requests are not checked here).
  void DrainRequests() {
    uint8_t buf[4096];
    while (::recv(peer_.fd(), buf, sizeof(buf), MSG_DONTWAIT) > 0) {
    }
  }

  UnixConnection peer_;
  std::unique_ptr<Client> client_;
  uint16_t next_id_ = 2;
};

TEST_F(ClientFramingTest, ExactSizeReplyInOneRead) {
  const uint8_t magic[4] = {0x53, 0x55, 0x46, 0x56};
  Queue(ReadReply(next_id_, 0, magic));
  auto v = client_->Read<uint32_t>(0, 0);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(*v, 0x56465553u);
}

TEST_F(ClientFramingTest, ShorterErrorReplyThenStreamStaysInStep) {
  Queue(Reply(next_id_++, kRegionRead, {}, EINVAL));
  auto bad = client_->Read<uint32_t>(0, 0x2000);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, EINVAL);

  const uint8_t value[4] = {1, 2, 3, 4};
  Queue(ReadReply(next_id_++, 4, value));
  auto good = client_->Read<uint32_t>(0, 4);
  ASSERT_TRUE(good.ok()) << good.error().message;
  EXPECT_EQ(*good, 0x04030201u);

  // REGION_WRITE replies (header + access, no data) take the same path.
  std::vector<uint8_t> ack;
  proto::Append(ack, wire::RegionAccess{4, 0, 4});
  Queue(Reply(next_id_++, kRegionWrite, ack));
  EXPECT_TRUE(client_->Write<uint32_t>(0, 4, 7).ok());
}

TEST_F(ClientFramingTest, LongerReplyIsReadWholeAndRejected) {
  // 8 data bytes for a 4-byte read: the client reads past its expected size the exact way,
  // rejects the reply, and the next reply is still framed correctly.
  const uint8_t eight[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  Queue(ReadReply(next_id_++, 0, eight));
  auto wrong = client_->Read<uint32_t>(0, 0);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.error().code, EPROTO);

  const uint8_t value[4] = {9, 9, 9, 9};
  Queue(ReadReply(next_id_++, 0, value));
  auto good = client_->Read<uint32_t>(0, 0);
  ASSERT_TRUE(good.ok()) << good.error().message;
  EXPECT_EQ(*good, 0x09090909u);
}

TEST_F(ClientFramingTest, ReplySplitAcrossWritesIsReassembled) {
  const uint8_t value[4] = {0xaa, 0xbb, 0xcc, 0xdd};
  auto reply = ReadReply(next_id_, 0, value);
  // First 10 bytes now (a partial header), the rest a little later from another thread.
  Queue(std::span<const uint8_t>(reply).first(10));
  std::thread later([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    size_t done = 10;
    while (done < reply.size()) {
      ssize_t n = ::write(peer_.fd(), reply.data() + done, reply.size() - done);
      if (n <= 0) return;
      done += static_cast<size_t>(n);
    }
  });
  auto v = client_->Read<uint32_t>(0, 0);
  later.join();
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(*v, 0xddccbbaau);
}

TEST_F(ClientFramingTest, ReplySplitInsidePayloadIsReassembled) {
  const uint8_t value[4] = {1, 0, 0, 0};
  auto reply = ReadReply(next_id_, 0, value);
  Queue(std::span<const uint8_t>(reply).first(20));  // header and part of the payload
  std::thread later([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    (void)::write(peer_.fd(), reply.data() + 20, reply.size() - 20);
  });
  auto v = client_->Read<uint32_t>(0, 0);
  later.join();
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(*v, 1u);
}

// Replies up to 256 bytes are read into one stack buffer and split; longer ones straight into
// the header and payload buffers. Both must reassemble a reply that arrives in pieces.
TEST_F(ClientFramingTest, LargeReplySplitInsidePayloadIsReassembled) {
  std::vector<uint8_t> data(1024);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7);
  auto reply = ReadReply(next_id_, 0, data);
  ASSERT_GT(reply.size(), 256u);
  Queue(std::span<const uint8_t>(reply).first(300));
  std::thread later([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    (void)::write(peer_.fd(), reply.data() + 300, reply.size() - 300);
  });
  std::vector<uint8_t> out(data.size());
  Status s = client_->RegionRead(0, 0, out);
  later.join();
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(out, data);
}

TEST_F(ClientFramingTest, ReplyOfExactlyTheSmallBufferSizeIsReadWhole) {
  // 16-byte header + 16-byte access + 224 data bytes = 256: the largest one-buffer read.
  std::vector<uint8_t> data(224, 0x5a);
  auto reply = ReadReply(next_id_, 0, data);
  ASSERT_EQ(reply.size(), 256u);
  Queue(reply);
  std::vector<uint8_t> out(data.size());
  Status s = client_->RegionRead(0, 0, out);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(out, data);
}

TEST_F(ClientFramingTest, TimeoutInsideAReplyThenTheRestArrives) {
  // The reply stalls after 20 of its 36 bytes: the call times out. When the rest arrives, the
  // next Receive finishes that same reply (the partial bytes are kept, not lost or overrun).
  Connect(std::chrono::milliseconds(100));
  const uint8_t value[4] = {5, 6, 7, 8};
  auto reply = ReadReply(next_id_, 0, value);
  Queue(std::span<const uint8_t>(reply).first(20));
  auto r = client_->Read<uint32_t>(0, 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ETIMEDOUT);
  Queue(std::span<const uint8_t>(reply).subspan(20));
  auto late = client_->Receive();
  ASSERT_TRUE(late.ok()) << late.error().message;
  EXPECT_EQ(late->header.msg_id, next_id_);
  ASSERT_EQ(late->payload.size(), sizeof(wire::RegionAccess) + 4);
  EXPECT_EQ(0, std::memcmp(late->payload.data() + sizeof(wire::RegionAccess), value, 4));
  // In step again: the next call works (exact framing from now on).
  ++next_id_;
  Queue(ReadReply(next_id_, 0, value));
  auto again = client_->Read<uint32_t>(0, 0);
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(*again, 0x08070605u);
}

TEST_F(ClientFramingTest, SecondMessageBehindAShortReplyIsReportedNotMisparsed) {
  // A 16-byte error reply followed at once by another message: the single read of the expected
  // 36 bytes would run into the second message. The client must say so (EPROTO) rather than
  // take the second message's bytes as part of the first.
  auto first = Reply(next_id_++, kRegionRead, {}, EIO);
  const uint8_t value[4] = {1, 2, 3, 4};
  auto second = ReadReply(0x7777, 0, value);
  std::vector<uint8_t> both = first;
  both.insert(both.end(), second.begin(), second.end());
  Queue(both);
  auto r = client_->Read<uint32_t>(0, 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, EPROTO) << r.error().message;
}

TEST_F(ClientFramingTest, PipelinedRequestsUseExactFraming) {
  // With two requests outstanding the client cannot know which reply comes first, so it
  // frames exactly: the first Receive gets the first reply whole, the second the second.
  const uint8_t a[4] = {1, 1, 1, 1};
  std::vector<uint8_t> req;
  proto::Append(req, wire::RegionAccess{0, 0, 4});
  auto id1 = client_->Send(kRegionRead, req);
  ASSERT_TRUE(id1.ok());
  auto ra = ReadReply(*id1, 0, a);
  auto rb = Reply(*id1 + 1, kRegionRead, {}, EINVAL);  // short error reply second
  std::vector<uint8_t> both = ra;
  both.insert(both.end(), rb.begin(), rb.end());
  Queue(both);
  // RegionRead now has 2 outstanding: it must not use the single-read path.
  auto v = client_->Read<uint32_t>(0, 0);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.error().code, EPROTO);  // it got the reply to id1: mismatch, reported as such
  auto next = client_->Receive();
  ASSERT_TRUE(next.ok()) << next.error().message;
  EXPECT_EQ(next->header.msg_id, *id1 + 1);
  EXPECT_TRUE(next->is_error());
  DrainRequests();
}

// Regression: a server announcing max_data_xfer_size 0 was accepted, and every region access
// then looped forever on 0-byte chunks (against a server that answers them).
TEST(ClientNegotiation, AServerAnnouncingMaxDataXferSizeZeroIsRefused) {
  auto pair = UnixConnection::Pair();
  ASSERT_TRUE(pair.ok());
  UnixConnection peer = std::move(pair->second);
  std::vector<uint8_t> version;
  proto::Append(version, wire::Version{0, 0});
  const char json[] = "{\"capabilities\":{\"max_data_xfer_size\":0}}";
  version.insert(version.end(), json, json + sizeof(json));
  const std::vector<uint8_t> reply = Reply(1, static_cast<uint16_t>(Command::kVersion), version);
  ASSERT_EQ(::write(peer.fd(), reply.data(), reply.size()), static_cast<ssize_t>(reply.size()));
  ClientOptions options;
  options.timeout = std::chrono::milliseconds(2000);
  auto c = Client::Attach(std::move(pair->first), options);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, EPROTO);
  EXPECT_NE(c.error().message.find("max_data_xfer_size"), std::string::npos) << c.error().message;
}

}  // namespace
}  // namespace vfu::testing
