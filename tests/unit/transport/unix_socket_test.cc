// The transport and framing layers over real sockets: partial reads, fds attributed to the right
// message when messages are pipelined, MSG_CTRUNC (too many fds) reported while the byte stream
// stays in step, the listener's treatment of existing socket paths, and MessageStream's send
// queue when the peer does not read.
#include "server/transport/unix_socket.h"

#include "tests/support/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/protocol/codec.h"
#include "server/session/message_stream.h"
#include "tests/support/fd_count.h"
#include "tests/support/session_harness.h"

namespace vfu {
namespace {

using testing::BuildMessage;
using testing::OpenFdCount;

std::vector<uint8_t> Msg(uint16_t id, size_t payload_size, uint8_t fill = 0x5a) {
  std::vector<uint8_t> payload(payload_size, fill);
  return BuildMessage(id, static_cast<uint16_t>(wire::Command::kRegionWrite), payload);
}

UniqueFd Eventfd() {
  UniqueFd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  EXPECT_TRUE(fd.valid());
  return fd;
}

// Sends all of `bytes` with `fds` on the first byte through a raw sendmsg (any fd count).
void RawSend(int sock, std::span<const uint8_t> bytes, std::span<const int> fds = {}) {
  std::vector<char> control(fds.empty() ? 0 : CMSG_SPACE(sizeof(int) * fds.size()));
  iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ASSERT_EQ(::sendmsg(sock, &msg, MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
}

// Reads with a MessageStream until one message arrives (bounded).
ReadStatus ReadOne(MessageStream& s, InboundMessage* msg) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (std::chrono::steady_clock::now() < deadline) {
    auto r = s.Read(msg);
    EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
    if (!r.ok() || *r != ReadStatus::kWouldBlock) return r.ok() ? *r : ReadStatus::kClosed;
    pollfd p{s.fd(), POLLIN, 0};
    ::poll(&p, 1, 50);
  }
  ADD_FAILURE() << "no message within 2 s";
  return ReadStatus::kWouldBlock;
}

struct Pair {
  Pair() {
    auto p = UnixConnection::Pair();
    EXPECT_TRUE(p.ok());
    a = std::move(p->first);
    b = std::move(p->second);
  }
  UnixConnection a, b;
};

// --- UnixConnection ---------------------------------------------------------------------------

TEST(UnixConnection, ReceiveReportsEagainThenBytesThenEndOfStream) {
  Pair p;
  std::vector<UniqueFd> fds;
  uint8_t buf[8];
  auto none = p.b.Receive(buf, &fds);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, EAGAIN);
  const uint8_t hello[3] = {1, 2, 3};
  iovec iov{const_cast<uint8_t*>(hello), 3};
  auto sent = p.a.Send({&iov, 1});
  ASSERT_TRUE(sent.ok());
  EXPECT_EQ(*sent, 3u);
  auto got = p.b.Receive(buf, &fds);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->bytes, 3u);
  EXPECT_FALSE(got->fds_truncated);
  p.a.Close();
  auto eof = p.b.Receive(buf, &fds);
  ASSERT_TRUE(eof.ok());
  EXPECT_EQ(eof->bytes, 0u);
}

TEST(UnixConnection, ReceiveBytesTakesTheBytesAndNeverInstallsFdsSentWithThem) {
  Pair p;
  const size_t fds_before = OpenFdCount();
  {
    UniqueFd unexpected = Eventfd();
    const uint8_t data[4] = {9, 8, 7, 6};
    int raw = unexpected.get();
    RawSend(p.a.fd(), data, {&raw, 1});
  }  // our copy of the fd is closed; only the one in flight remains, owned by the socket
  uint8_t head[1], rest[8];
  iovec iov[2] = {{head, sizeof(head)}, {rest, sizeof(rest)}};
  auto got = p.b.ReceiveBytes(iov);
  ASSERT_TRUE(got.ok()) << got.error().message;
  ASSERT_EQ(got->bytes, 4u);
  EXPECT_FALSE(got->fds_truncated);
  EXPECT_EQ(head[0], 9);
  EXPECT_EQ(rest[0], 8);
  EXPECT_EQ(rest[2], 6);
  EXPECT_EQ(OpenFdCount(), fds_before);  // the kernel closed the fd instead of installing it
  auto none = p.b.ReceiveBytes(iov);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, EAGAIN);
}

TEST(UnixConnection, ReceiveBytesIntoOneBufferNeverInstallsFdsEither) {
  Pair p;
  const size_t fds_before = OpenFdCount();
  {
    UniqueFd unexpected = Eventfd();
    const uint8_t data[3] = {4, 5, 6};
    int raw = unexpected.get();
    RawSend(p.a.fd(), data, {&raw, 1});
  }
  uint8_t buf[8] = {};
  auto got = p.b.ReceiveBytes(std::span<uint8_t>(buf, sizeof(buf)));
  ASSERT_TRUE(got.ok()) << got.error().message;
  ASSERT_EQ(got->bytes, 3u);
  EXPECT_EQ(buf[0], 4);
  EXPECT_EQ(buf[2], 6);
  EXPECT_EQ(OpenFdCount(), fds_before);
  auto none = p.b.ReceiveBytes(std::span<uint8_t>(buf, sizeof(buf)));
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, EAGAIN);
  p.a.Close();
  auto eof = p.b.ReceiveBytes(std::span<uint8_t>(buf, sizeof(buf)));
  ASSERT_TRUE(eof.ok());
  EXPECT_EQ(eof->bytes, 0u);
}

TEST(UnixConnection, SendRefusesMoreFdsThanAReceiverAccepts) {
  Pair p;
  std::vector<UniqueFd> efds;
  std::vector<int> raw;
  for (size_t i = 0; i <= kMaxReceiveFds; ++i) {
    efds.push_back(Eventfd());
    raw.push_back(efds.back().get());
  }
  uint8_t byte = 0;
  iovec iov{&byte, 1};
  auto r = p.a.Send({&iov, 1}, raw);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, EINVAL);
  auto ok = p.a.Send({&iov, 1}, std::span<const int>(raw).first(kMaxReceiveFds));
  ASSERT_TRUE(ok.ok());
  std::vector<UniqueFd> got;
  auto in = p.b.Receive({&byte, 1}, &got);
  ASSERT_TRUE(in.ok());
  EXPECT_EQ(got.size(), kMaxReceiveFds);
  EXPECT_FALSE(in->fds_truncated);
}

TEST(UnixConnection, ControlTruncationIsReportedAndTheFdsThatArrivedAreClosed) {
  const size_t before = OpenFdCount();
  {
    Pair p;
    {
      std::vector<UniqueFd> efds;
      std::vector<int> raw;
      for (int i = 0; i < 40; ++i) {
        efds.push_back(Eventfd());
        raw.push_back(efds.back().get());
      }
      const uint8_t data[4] = {9, 8, 7, 6};
      RawSend(p.a.fd(), data, raw);
    }
    std::vector<UniqueFd> fds;
    uint8_t buf[4];
    auto got = p.b.Receive(buf, &fds);
    ASSERT_TRUE(got.ok());
    EXPECT_TRUE(got->fds_truncated);
    EXPECT_EQ(got->bytes, 4u);  // the bytes still count
    EXPECT_TRUE(fds.empty());
    EXPECT_EQ(buf[3], 6);
  }
  EXPECT_EQ(OpenFdCount(), before);
}

// --- MessageStream reading --------------------------------------------------------------------

TEST(MessageStreamRead, MessageArrivingByteByByteIsReassembled) {
  Pair p;
  MessageStream reader(std::move(p.b));
  auto msg = Msg(7, 40);
  InboundMessage in;
  for (size_t i = 0; i < msg.size(); ++i) {
    auto r = reader.Read(&in);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(*r, ReadStatus::kWouldBlock) << "at byte " << i;
    EXPECT_EQ(reader.mid_message(), i > 0) << i;
    RawSend(p.a.fd(), {msg.data() + i, 1});
  }
  ASSERT_EQ(ReadOne(reader, &in), ReadStatus::kMessage);
  EXPECT_EQ(in.header.msg_id, 7);
  EXPECT_EQ(in.header.msg_size, msg.size());
  ASSERT_EQ(in.payload.size(), 40u);
  EXPECT_EQ(in.payload[39], 0x5a);
  EXPECT_FALSE(reader.mid_message());
}

TEST(MessageStreamRead, PipelinedMessagesKeepTheirOwnFds) {
  Pair p;
  MessageStream reader(std::move(p.b));
  UniqueFd e1 = Eventfd(), e2 = Eventfd(), e3 = Eventfd();
  // Four messages back to back: none, one fd, none, two fds.
  auto m1 = Msg(1, 8), m2 = Msg(2, 24), m3 = Msg(3, 0), m4 = Msg(4, 16);
  RawSend(p.a.fd(), m1);
  int one[] = {e1.get()};
  RawSend(p.a.fd(), m2, one);
  RawSend(p.a.fd(), m3);
  int two[] = {e2.get(), e3.get()};
  RawSend(p.a.fd(), m4, two);

  InboundMessage in;
  ASSERT_EQ(ReadOne(reader, &in), ReadStatus::kMessage);
  EXPECT_EQ(in.header.msg_id, 1);
  EXPECT_TRUE(in.fds.empty());
  ASSERT_EQ(ReadOne(reader, &in), ReadStatus::kMessage);
  EXPECT_EQ(in.header.msg_id, 2);
  ASSERT_EQ(in.fds.size(), 1u);
  // It is the same eventfd: a write through the received copy is seen by the original.
  uint64_t v = 5;
  ASSERT_EQ(::write(in.fds[0].get(), &v, 8), 8);
  ASSERT_EQ(::read(e1.get(), &v, 8), 8);
  EXPECT_EQ(v, 5u);
  ASSERT_EQ(ReadOne(reader, &in), ReadStatus::kMessage);
  EXPECT_EQ(in.header.msg_id, 3);
  EXPECT_TRUE(in.fds.empty());
  EXPECT_TRUE(in.payload.empty());
  ASSERT_EQ(ReadOne(reader, &in), ReadStatus::kMessage);
  EXPECT_EQ(in.header.msg_id, 4);
  EXPECT_EQ(in.fds.size(), 2u);
}

TEST(MessageStreamRead, FdsSentWithTheSecondHalfOfAPayloadBelongToThatMessage) {
  Pair p;
  MessageStream reader(std::move(p.b));
  UniqueFd e = Eventfd();
  auto m = Msg(9, 32);
  RawSend(p.a.fd(), {m.data(), 20});
  InboundMessage in;
  auto r = reader.Read(&in);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, ReadStatus::kWouldBlock);
  int raw[] = {e.get()};
  RawSend(p.a.fd(), {m.data() + 20, m.size() - 20}, raw);
  auto next = Msg(10, 0);
  RawSend(p.a.fd(), next);
  ASSERT_EQ(ReadOne(reader, &in), ReadStatus::kMessage);
  EXPECT_EQ(in.header.msg_id, 9);
  EXPECT_EQ(in.fds.size(), 1u);
  ASSERT_EQ(ReadOne(reader, &in), ReadStatus::kMessage);
  EXPECT_EQ(in.header.msg_id, 10);
  EXPECT_TRUE(in.fds.empty());
}

TEST(MessageStreamRead, TruncatedFdsAreFlaggedAndTheNextMessageIsIntact) {
  const size_t before = OpenFdCount();
  {
    Pair p;
    MessageStream reader(std::move(p.b));
    {
      std::vector<UniqueFd> efds;
      std::vector<int> raw;
      for (int i = 0; i < 40; ++i) {
        efds.push_back(Eventfd());
        raw.push_back(efds.back().get());
      }
      RawSend(p.a.fd(), Msg(1, 20), raw);
    }
    UniqueFd ok_fd = Eventfd();
    int one[] = {ok_fd.get()};
    RawSend(p.a.fd(), Msg(2, 12, 0x33), one);

    InboundMessage in;
    ASSERT_EQ(ReadOne(reader, &in), ReadStatus::kMessage);
    EXPECT_EQ(in.header.msg_id, 1);
    EXPECT_TRUE(in.fds_truncated);
    EXPECT_TRUE(in.fds.empty());
    EXPECT_EQ(in.payload.size(), 20u);
    ASSERT_EQ(ReadOne(reader, &in), ReadStatus::kMessage);
    EXPECT_EQ(in.header.msg_id, 2);
    EXPECT_FALSE(in.fds_truncated);  // the flag does not leak into the next message
    EXPECT_EQ(in.fds.size(), 1u);
    ASSERT_EQ(in.payload.size(), 12u);
    EXPECT_EQ(in.payload[0], 0x33);
  }
  EXPECT_EQ(OpenFdCount(), before);
}

TEST(MessageStreamRead, BadMsgSizeIsAnErrorWithTheHeaderKept) {
  Pair p;
  MessageStream reader(std::move(p.b), /*max_message_size=*/64);
  wire::Header h{0x77, 4, 65, 0, 0};
  RawSend(p.a.fd(), {reinterpret_cast<const uint8_t*>(&h), sizeof(h)});
  InboundMessage in;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  Result<ReadStatus> r = ReadStatus::kWouldBlock;
  while (std::chrono::steady_clock::now() < deadline) {
    r = reader.Read(&in);
    if (!r.ok() || *r != ReadStatus::kWouldBlock) break;
  }
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, E2BIG);
  ASSERT_TRUE(reader.last_header().has_value());
  EXPECT_EQ(reader.last_header()->msg_id, 0x77);
}

TEST(MessageStreamRead, EndOfStreamInsideAMessageIsReportedAsMidMessage) {
  Pair p;
  MessageStream reader(std::move(p.b));
  auto m = Msg(1, 8);
  RawSend(p.a.fd(), {m.data(), 6});
  p.a.Close();
  InboundMessage in;
  EXPECT_EQ(ReadOne(reader, &in), ReadStatus::kClosed);
  EXPECT_TRUE(reader.mid_message());
}

// --- MessageStream sending --------------------------------------------------------------------

TEST(MessageStreamSend, QueuesWhatTheSocketDoesNotTakeAndDeliversItInOrderWithFds) {
  Pair p;
  int small = 4096;
  ASSERT_EQ(::setsockopt(p.a.fd(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
  MessageStream writer(std::move(p.a));
  MessageStream reader(std::move(p.b));

  // Fill the socket until something has to be queued.
  std::vector<std::vector<uint8_t>> sent;
  for (uint16_t id = 1; !writer.HasPendingOutput(); ++id) {
    ASSERT_LT(id, 1000) << "the socket never filled up";
    sent.push_back(Msg(id, 16 * 1024, static_cast<uint8_t>(id)));
    ASSERT_TRUE(writer.Send(sent.back()).ok());
  }
  EXPECT_GT(writer.pending_bytes(), 0u);
  // A message with an fd queued behind the others: the fd must travel with its own message.
  UniqueFd efd = Eventfd();
  int raw = efd.get();
  const uint16_t fd_msg_id = static_cast<uint16_t>(sent.size() + 1);
  sent.push_back(Msg(fd_msg_id, 100, 0xfd));
  ASSERT_TRUE(writer.Send(sent.back(), {&raw, 1}).ok());
  sent.push_back(Msg(static_cast<uint16_t>(sent.size() + 1), 50, 0xee));
  ASSERT_TRUE(writer.Send(sent.back()).ok());

  size_t received = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  InboundMessage in;
  while (received < sent.size() && std::chrono::steady_clock::now() < deadline) {
    ASSERT_TRUE(writer.Flush().ok());
    auto r = reader.Read(&in);
    ASSERT_TRUE(r.ok());
    if (*r == ReadStatus::kWouldBlock) {
      pollfd pf{reader.fd(), POLLIN, 0};
      ::poll(&pf, 1, 10);
      continue;
    }
    ASSERT_EQ(*r, ReadStatus::kMessage);
    const auto& want = sent[received];
    EXPECT_EQ(in.header.msg_id, received + 1);
    ASSERT_EQ(in.payload.size(), want.size() - sizeof(wire::Header));
    EXPECT_TRUE(std::equal(in.payload.begin(), in.payload.end(), want.begin() + 16));
    if (in.header.msg_id == fd_msg_id) {
      ASSERT_EQ(in.fds.size(), 1u);
      uint64_t v = 3;
      ASSERT_EQ(::write(in.fds[0].get(), &v, 8), 8);
      ASSERT_EQ(::read(efd.get(), &v, 8), 8);
      EXPECT_EQ(v, 3u);
    } else {
      EXPECT_TRUE(in.fds.empty()) << "message " << in.header.msg_id;
    }
    ++received;
  }
  EXPECT_EQ(received, sent.size());
  EXPECT_FALSE(writer.HasPendingOutput());
  EXPECT_EQ(writer.pending_bytes(), 0u);
}

TEST(MessageStreamSend, QueuedFdsAreDuplicatesSoTheCallerMayCloseItsOwn) {
  const size_t before = OpenFdCount();
  {
    Pair p;
    int small = 4096;
    ASSERT_EQ(::setsockopt(p.a.fd(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
    MessageStream writer(std::move(p.a));
    for (uint16_t id = 1; !writer.HasPendingOutput(); ++id) {
      ASSERT_LT(id, 1000);
      ASSERT_TRUE(writer.Send(Msg(id, 16 * 1024)).ok());
    }
    {
      UniqueFd efd = Eventfd();
      int raw = efd.get();
      ASSERT_TRUE(writer.Send(Msg(999, 8), {&raw, 1}).ok());
    }  // closed by the caller; the queue holds its own duplicate
    EXPECT_EQ(OpenFdCount(), before + 3);  // two socket ends + the queued duplicate
  }
  EXPECT_EQ(OpenFdCount(), before);  // dropping the stream closes the queued duplicate
}

// --- UnixListener -----------------------------------------------------------------------------

class ListenerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/vfu-listener-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/dev.sock";
  }
  void TearDown() override {
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  std::string dir_, path_;
};

TEST_F(ListenerTest, AcceptsConnectionsAndRemovesItsSocketFile) {
  {
    auto l = UnixListener::Bind(path_);
    ASSERT_TRUE(l.ok()) << l.error().message;
    struct stat st {};
    ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    auto none = l->Accept();
    ASSERT_FALSE(none.ok());
    EXPECT_EQ(none.error().code, EAGAIN);
    auto c = UnixConnection::Connect(path_);
    ASSERT_TRUE(c.ok());
    auto s = l->Accept();
    ASSERT_TRUE(s.ok());
    EXPECT_TRUE(s->valid());
  }
  struct stat st {};
  EXPECT_NE(::lstat(path_.c_str(), &st), 0);  // unlinked by the listener's destructor
}

TEST_F(ListenerTest, RefusesToReplaceARegularFile) {
  {
    UniqueFd f(::open(path_.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
    ASSERT_TRUE(f.valid());
    ASSERT_EQ(::write(f.get(), "keep", 4), 4);
  }
  auto l = UnixListener::Bind(path_);
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.error().code, EEXIST);
  struct stat st {};
  ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_size, 4);  // untouched
}

TEST_F(ListenerTest, RefusesToReplaceADirectoryOrSymlink) {
  ASSERT_EQ(::mkdir(path_.c_str(), 0700), 0);
  auto l = UnixListener::Bind(path_);
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.error().code, EEXIST);
  ASSERT_EQ(::rmdir(path_.c_str()), 0);
  ASSERT_EQ(::symlink("/dev/null", path_.c_str()), 0);
  auto l2 = UnixListener::Bind(path_);
  ASSERT_FALSE(l2.ok());
  EXPECT_EQ(l2.error().code, EEXIST);
}

TEST_F(ListenerTest, ReplacesAStaleSocketLeftByADeadServer) {
  {
    // A socket file whose listener is gone (bound, then closed without unlink).
    UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    ASSERT_LT(path_.size(), sizeof(addr.sun_path));
    std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
    ASSERT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  struct stat st {};
  ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
  auto l = UnixListener::Bind(path_);
  ASSERT_TRUE(l.ok()) << l.error().message;
  auto c = UnixConnection::Connect(path_);
  EXPECT_TRUE(c.ok());
}

TEST_F(ListenerTest, RefusesToStealTheSocketOfARunningServer) {
  auto first = UnixListener::Bind(path_);
  ASSERT_TRUE(first.ok());
  auto second = UnixListener::Bind(path_);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, EADDRINUSE);
  // The first listener still works.
  auto c = UnixConnection::Connect(path_);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(first->Accept().ok());
}

TEST_F(ListenerTest, PathLongerThanSunPathIsEnametoolong) {
  std::string long_path = dir_ + "/" + std::string(sizeof(sockaddr_un::sun_path), 'x');
  auto l = UnixListener::Bind(long_path);
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.error().code, ENAMETOOLONG);
  auto c = UnixConnection::Connect(long_path);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ENAMETOOLONG);
}

TEST_F(ListenerTest, ConnectToAMissingPathFailsWithEnoent) {
  auto c = UnixConnection::Connect(path_);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ENOENT);
}

}  // namespace
}  // namespace vfu

namespace vfu {
namespace {

// A listener handed over by another process (here: the same one) is adopted only when it is a
// listening unix stream socket; Release gives it up without unlinking its path.
TEST(UnixListenerHandoff, AdoptAcceptsAListeningSocketAndReleaseKeepsThePath) {
  testing::TempDir dir;
  std::string path = dir.File("l.sock");
  auto first = UnixListener::Bind(path);
  ASSERT_TRUE(first.ok());
  UniqueFd dup(::fcntl(first->fd(), F_DUPFD_CLOEXEC, 0));
  auto adopted = UnixListener::Adopt(std::move(dup), path);
  ASSERT_TRUE(adopted.ok()) << adopted.error().message;
  (void)first->Release();  // the "old process" lets go
  first = UnixListener();
  struct stat st {};
  ASSERT_EQ(::lstat(path.c_str(), &st), 0) << "Release must not unlink the path";
  auto client = UnixConnection::Connect(path);
  ASSERT_TRUE(client.ok());
  auto accepted = adopted->Accept();
  EXPECT_TRUE(accepted.ok());
  adopted = UnixListener();  // the adopter unlinks on destruction like a binder
  EXPECT_NE(::lstat(path.c_str(), &st), 0);
}

TEST(UnixListenerHandoff, AdoptRefusesAConnectedSocketAndARegularFile) {
  auto pair = UnixConnection::Pair();
  ASSERT_TRUE(pair.ok());
  UniqueFd connected(::fcntl(pair->first.fd(), F_DUPFD_CLOEXEC, 0));
  auto a = UnixListener::Adopt(std::move(connected), "/nonexistent/x.sock");
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.error().message.find("not a listening unix stream socket"), std::string::npos);
  UniqueFd file(::open("/proc/self/status", O_RDONLY | O_CLOEXEC));
  EXPECT_FALSE(UnixListener::Adopt(std::move(file), "/nonexistent/y.sock").ok());
}

}  // namespace
}  // namespace vfu
