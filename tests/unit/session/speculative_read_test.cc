// The server reads a message's header together with the first bytes of its payload. These
// tests pin the cases where that read runs into the next message: the extra bytes and any fds
// that came with them belong to the next message, never to the short one.
#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "tests/support/fd_count.h"
#include "tests/support/session_harness.h"

namespace vfu::testing {
namespace {

using wire::Command;

TEST(SpeculativeRead, ShortMessagesBackToBackInOneWriteAreEachAnswered) {
  SessionHarness h;
  h.Negotiate();
  std::vector<uint8_t> bytes;
  for (uint16_t id = 10; id < 13; ++id) {
    auto m = BuildMessage(id, static_cast<uint16_t>(Command::kDeviceReset), {});
    bytes.insert(bytes.end(), m.begin(), m.end());
  }
  wire::DeviceInfo info{16, 0, 0, 0};
  auto tail = BuildMessage(13, static_cast<uint16_t>(Command::kDeviceGetInfo),
                           {reinterpret_cast<uint8_t*>(&info), sizeof(info)});
  bytes.insert(bytes.end(), tail.begin(), tail.end());
  h.SendRaw(bytes);
  h.RunServer();
  for (uint16_t id = 10; id < 14; ++id) {
    auto r = h.ReadReply();
    ASSERT_TRUE(r) << id;
    EXPECT_EQ(r->header.msg_id, id);
    EXPECT_FALSE(r->is_error()) << id << " errno " << r->error_no();
  }
}

// Sends `resets` DEVICE_RESETs (no payload) and then a DMA_MAP with its memfd, each with its
// own sendmsg, before the server reads anything; checks that every reset succeeds (a reset that
// got the fd would fail with EINVAL) and that the map was made from the fd.
void ExpectTheFdGoesToTheMapAfterResets(int resets) {
  size_t fds_before = OpenFdCount();
  {
    SessionHarness h;
    h.Negotiate();
    UniqueFd memfd(::memfd_create("guest", MFD_CLOEXEC));
    ASSERT_EQ(::ftruncate(memfd.get(), 1 << 20), 0);
    for (int i = 0; i < resets; ++i) h.Send(Command::kDeviceReset, {});
    wire::DmaMap map{32, wire::kDmaFlagRead | wire::kDmaFlagWrite, 0, 0x100000, 1 << 20};
    int fd = memfd.get();
    h.SendStruct(Command::kDmaMap, map, {&fd, 1});
    h.RunServer();
    for (int i = 0; i < resets; ++i) {
      auto reset = h.ReadReply();
      ASSERT_TRUE(reset);
      EXPECT_FALSE(reset->is_error()) << "reset " << i << " errno " << reset->error_no();
    }
    auto mapped = h.ReadReply();
    ASSERT_TRUE(mapped);
    EXPECT_FALSE(mapped->is_error()) << mapped->error_no();
    ASSERT_EQ(h.session()->dma_maps().size(), 1u);
    // The map really has the memory (it was mapped from the fd, not recorded fd-less).
    EXPECT_TRUE(h.session()->dma_maps().regions().begin()->second.host != nullptr);
  }
  EXPECT_EQ(OpenFdCount(), fds_before);
}

TEST(SpeculativeRead, FdsOfAMessageFollowingAShortOneGoToThatMessage) {
  // The server's first read takes the reset and the start of the map.
  ExpectTheFdGoesToTheMapAfterResets(1);
}

TEST(SpeculativeRead, FdsAfterTwoHeaderOnlyMessagesGoToTheMessageTheyCameWith) {
  // The first read takes both resets; the second carries the map and its fd.
  ExpectTheFdGoesToTheMapAfterResets(2);
}

TEST(SpeculativeRead, AMessageSplitAcrossTheCarriedBytesAndTheSocketIsReassembled) {
  SessionHarness h;
  h.Negotiate();
  // RESET (16 bytes) then REGION_READ (32 bytes) sent byte by byte after the first 20 bytes.
  auto reset = BuildMessage(1, static_cast<uint16_t>(Command::kDeviceReset), {});
  wire::RegionAccess read{0, 0, 4};
  auto rr = BuildMessage(2, static_cast<uint16_t>(Command::kRegionRead),
                         {reinterpret_cast<uint8_t*>(&read), sizeof(read)});
  std::vector<uint8_t> all(reset);
  all.insert(all.end(), rr.begin(), rr.end());
  h.SendRaw({all.data(), 20});
  h.RunServer();
  for (size_t i = 20; i < all.size(); ++i) {
    h.SendRaw({all.data() + i, 1});
    h.RunServer();
  }
  auto r1 = h.ReadReply();
  ASSERT_TRUE(r1);
  EXPECT_EQ(r1->header.msg_id, 1);
  auto r2 = h.ReadReply();
  ASSERT_TRUE(r2);
  EXPECT_EQ(r2->header.msg_id, 2);
  ASSERT_FALSE(r2->is_error()) << r2->error_no();
  uint32_t magic = 0;
  std::memcpy(&magic, r2->payload.data() + 16, 4);
  EXPECT_EQ(magic, devices::SampleDevice::kMagic);
}

}  // namespace
}  // namespace vfu::testing
