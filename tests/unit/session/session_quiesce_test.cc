// Session::Quiesce, the first step of a handoff: the session reaches a message boundary. A
// message the client is in the middle of sending is waited for (at most the timeout) and
// handled; replies are sent; a client that never finishes its message makes Quiesce fail with
// ETIMEDOUT and the session serves on; a client that leaves ends it. Complete messages still in
// the socket are left there for the next owner of the connection.
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <chrono>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "server/protocol/codec.h"
#include "server/session/session.h"
#include "tests/support/session_harness.h"

namespace vfu::testing {
namespace {

using std::chrono::milliseconds;

std::vector<uint8_t> DeviceGetInfo(uint16_t id) {
  wire::DeviceInfo info{};
  info.argsz = sizeof(info);
  return BuildMessage(id, static_cast<uint16_t>(wire::Command::kDeviceGetInfo),
                      {reinterpret_cast<const uint8_t*>(&info), sizeof(info)});
}

TEST(SessionQuiesce, WaitsForTheRestOfAMessageAndAnswersIt) {
  SessionHarness h;
  h.Negotiate();
  std::vector<uint8_t> msg = DeviceGetInfo(40);
  h.SendRaw({msg.data(), 10});  // half a header
  ASSERT_EQ(h.RunServer(), Session::State::kOpen);
  std::thread rest([&] {
    std::this_thread::sleep_for(milliseconds(50));
    h.SendRaw({msg.data() + 10, msg.size() - 10});
  });
  Status s = h.session()->Quiesce(milliseconds(5000));
  rest.join();
  ASSERT_TRUE(s.ok()) << s.message();
  auto reply = h.ReadReply();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->header.msg_id, 40);
  EXPECT_FALSE(reply->is_error());
}

TEST(SessionQuiesce, AClientThatNeverFinishesItsMessageTimesOutAndTheSessionServesOn) {
  SessionHarness h;
  h.Negotiate();
  std::vector<uint8_t> msg = DeviceGetInfo(41);
  h.SendRaw({msg.data(), 20});  // the header and a few payload bytes
  ASSERT_EQ(h.RunServer(), Session::State::kOpen);
  Status s = h.session()->Quiesce(milliseconds(100));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ETIMEDOUT);
  // The client finishes later: the session answers as usual.
  h.SendRaw({msg.data() + 20, msg.size() - 20});
  ASSERT_EQ(h.RunServer(), Session::State::kOpen);
  auto reply = h.ReadReply();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->header.msg_id, 41);
}

TEST(SessionQuiesce, CompleteMessagesInTheSocketStayThereForTheNextOwner) {
  SessionHarness h;
  h.Negotiate();
  ASSERT_TRUE(h.session()->Quiesce(milliseconds(100)).ok());
  std::vector<uint8_t> msg = DeviceGetInfo(42);
  h.SendRaw(msg);
  ASSERT_TRUE(h.session()->Quiesce(milliseconds(100)).ok());
  EXPECT_TRUE(h.NoReplyPending());  // not read by Quiesce: a boundary was already reached
  int queued = 0;
  ASSERT_EQ(::ioctl(h.session()->fd(), FIONREAD, &queued), 0);
  EXPECT_EQ(queued, static_cast<int>(msg.size()));
}

TEST(SessionQuiesce, AClientThatLeavesEndsIt) {
  SessionHarness h;
  h.Negotiate();
  std::vector<uint8_t> msg = DeviceGetInfo(43);
  h.SendRaw({msg.data(), 8});
  ASSERT_EQ(h.RunServer(), Session::State::kOpen);
  h.CloseClient();
  Status s = h.session()->Quiesce(milliseconds(1000));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ECONNRESET);
}

}  // namespace
}  // namespace vfu::testing
