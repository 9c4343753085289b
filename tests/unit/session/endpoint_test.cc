// DeviceEndpoint: requests that the session has already read from the socket (pipelined short
// messages) are handled even when the socket never becomes readable again; a client that
// half-closes while its replies are paused does not make the loop spin.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <future>

#include <gtest/gtest.h>

#include "server/client/client.h"
#include "server/devices/sample_device.h"
#include "server/session/endpoint.h"
#include "tests/support/server_thread.h"
#include "tests/support/session_harness.h"
#include "tests/unit/session/wire_test_util.h"

namespace vfu::testing {
namespace {

using devices::SampleDevice;
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

// Regression: while reading was paused (too many replies queued), the client socket stayed
// registered for EPOLLRDHUP; once the client half-closed its side, every level-triggered wait
// returned at once with nothing to do, and the poll thread spun at 100 % until the client read.
TEST(DeviceEndpoint, AClientThatHalfClosesWhileItsRepliesArePausedDoesNotMakeTheLoopSpin) {
  TempDir dir;
  auto device = SampleDevice::Create();
  ASSERT_TRUE(device.ok());
  Reactor reactor;  // driven by this test, round by round
  SessionOptions options;
  options.max_pending_output = 64 * 1024;
  DeviceEndpoint endpoint("s0", dir.File("s0.sock"), device->get(), &reactor, options);
  ASSERT_TRUE(endpoint.Start().ok());

  UniqueFd client(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", dir.File("s0.sock").c_str());
  ASSERT_EQ(::connect(client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  auto send_all = [&](const std::vector<uint8_t>& msg) {
    return ::send(client.get(), msg.data(), msg.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(msg.size());
  };
  ASSERT_TRUE(send_all(BuildMessage(1, static_cast<uint16_t>(Command::kVersion),
                                    VersionPayload(0, 0, kQemuVersionJson))));
  // Requests for 4 KiB replies (all of BAR2), never read, until the session pauses.
  const std::vector<uint8_t> read_bar2 =
      AsBytes(wire::RegionAccess{0, 2, static_cast<uint32_t>(SampleDevice::kSharedBarSize)});
  uint16_t id = 2;
  for (int round = 0; round < 2000; ++round) {
    while (id < 60000 &&
           send_all(BuildMessage(id, static_cast<uint16_t>(Command::kRegionRead), read_bar2))) {
      ++id;
    }
    reactor.RunOnce(std::chrono::milliseconds(0));
    if (endpoint.session() != nullptr && endpoint.session()->ReadPaused()) break;
  }
  ASSERT_NE(endpoint.session(), nullptr);
  ASSERT_TRUE(endpoint.session()->ReadPaused()) << "backpressure never kicked in";

  ASSERT_EQ(::shutdown(client.get(), SHUT_WR), 0);
  // Nothing can happen until the client reads: each round must wait out its timeout.
  int rounds_with_events = 0;
  for (int i = 0; i < 5; ++i) {
    if (reactor.RunOnce(std::chrono::milliseconds(20))) ++rounds_with_events;
  }
  EXPECT_LE(rounds_with_events, 1) << "the loop kept waking up for the half-closed socket";
  EXPECT_TRUE(endpoint.client_connected());

  // Once the client reads, the session drains and then sees the half-close: it ends cleanly.
  std::vector<uint8_t> sink(1 << 16);
  for (int round = 0; round < 100000 && endpoint.client_connected(); ++round) {
    while (::recv(client.get(), sink.data(), sink.size(), 0) > 0) {
    }
    reactor.RunOnce(std::chrono::milliseconds(1));
  }
  EXPECT_FALSE(endpoint.client_connected());
  endpoint.Stop();
}

}  // namespace
}  // namespace vfu::testing
