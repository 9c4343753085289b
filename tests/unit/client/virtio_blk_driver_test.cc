// The userspace virtio-blk driver's own behaviour (server/client/virtio_blk_driver.h), against
// the real server stack on its own thread.
#include "server/client/virtio_blk_driver.h"

#include <chrono>
#include <memory>

#include <gtest/gtest.h>

#include "server/client/client.h"
#include "tests/support/server_thread.h"

namespace vfu::testing {
namespace {

using client::VirtioBlkDriver;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Regression: with EVENT_IDX, Poll moved used_event to "interrupt at the next completion" on
// every call, so the first Poll after SetInterruptsSuppressed(true) undid the suppression and
// the device signalled the queue's eventfd for completions the caller was polling for.
TEST(VirtioBlkDriver, SuppressedInterruptsStaySuppressedAcrossPollsWithEventIdx) {
  ServerThread server;
  const std::string socket = server.AddDevice("virtio-blk,id=d,backend=ram,size=1M,poll=busy");
  server.Start();
  auto c = client::Client::Connect(socket);
  ASSERT_TRUE(c.ok()) << c.error().message;
  client::VirtioBlkDriverOptions options;
  options.event_idx = true;
  auto d = VirtioBlkDriver::Create(c->get(), options);
  ASSERT_TRUE(d.ok()) << d.error().message;
  VirtioBlkDriver& driver = **d;
  ASSERT_TRUE(driver.features() & (uint64_t{1} << 29)) << "the device offers EVENT_IDX";

  // The device may interrupt for the first completion of a fresh queue: take that one first.
  ASSERT_TRUE(driver.Read(0, 0, 0, 4096, 0).ok());
  ASSERT_TRUE(driver.WaitFor(0, 1, seconds(10)).ok());
  (void)driver.WaitForInterrupt(0, milliseconds(100));

  driver.SetInterruptsSuppressed(0, true);
  for (int i = 1; i <= 10; ++i) {
    ASSERT_TRUE(driver.Read(0, 0, static_cast<uint64_t>(i) * 8, 4096, i).ok());
    auto done = driver.WaitFor(0, 1, seconds(10));  // polls the used ring
    ASSERT_TRUE(done.ok()) << done.error().message;
    EXPECT_EQ((*done)[0].tag, static_cast<uint64_t>(i));
  }
  EXPECT_FALSE(driver.WaitForInterrupt(0, milliseconds(100)))
      << "the device interrupted a queue whose driver suppressed interrupts";

  // And they come back when asked for.
  driver.SetInterruptsSuppressed(0, false);
  ASSERT_TRUE(driver.Read(0, 0, 0, 4096, 11).ok());
  EXPECT_TRUE(driver.WaitForInterrupt(0, milliseconds(5000)));
}

}  // namespace
}  // namespace vfu::testing
