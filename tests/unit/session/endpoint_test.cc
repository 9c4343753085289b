// DeviceEndpoint on a live reactor thread: requests that the session has already read from the
// socket (pipelined short messages) are handled even when the socket never becomes readable
// again.
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <future>

#include <gtest/gtest.h>

#include "server/client/client.h"
#include "tests/support/server_thread.h"

namespace vfu::testing {
namespace {

using wire::Command;

TEST(DeviceEndpoint, PipelinedRequestsLeftInTheReadBufferAfterTheReadBudgetAreAnswered) {
  ServerThread server;
  std::string socket = server.AddDevice("sample,id=s0");
  server.Start();
  client::ClientOptions options;
  options.timeout = std::chrono::milliseconds(2000);
  auto c = client::Client::Connect(socket, options);
  ASSERT_TRUE(c.ok()) << c.error().message;

  // Hold the reactor while the requests go out, so that they all wait in the socket together:
  // a DEVICE_GET_INFO (32 bytes) and 16 header-only DEVICE_RESETs. The session handles 16
  // requests per readiness event (its read budget) and reads 32 bytes at a time, so two resets
  // come in one read; the 17th request ends up read but unhandled, with the socket empty
  // behind it.
  std::promise<void> release;
  std::promise<void> held;
  server.reactor().Post([&] {
    held.set_value();
    release.get_future().wait();
  });
  held.get_future().wait();
  constexpr int kRequests = 17;
  std::vector<uint16_t> ids;
  for (int i = 0; i < kRequests; ++i) {
    wire::DeviceInfo info{sizeof(wire::DeviceInfo), 0, 0, 0};
    auto id = i == 0 ? (*c)->Send(static_cast<uint16_t>(Command::kDeviceGetInfo),
                                  {reinterpret_cast<const uint8_t*>(&info), sizeof(info)})
                     : (*c)->Send(static_cast<uint16_t>(Command::kDeviceReset), {});
    ASSERT_TRUE(id.ok()) << id.error().message;
    ids.push_back(*id);
  }
  release.set_value();

  for (int i = 0; i < kRequests; ++i) {
    auto reply = (*c)->Receive();
    ASSERT_TRUE(reply.ok()) << "reply " << i << ": " << reply.error().message;
    EXPECT_EQ(reply->header.msg_id, ids[static_cast<size_t>(i)]);
    EXPECT_FALSE(reply->is_error()) << reply->header.error_no;
  }
}

}  // namespace
}  // namespace vfu::testing
