// A hostile or broken driver against the real virtio-blk device over the socket: buffers
// outside guest memory fail just that request (IOERR), a broken ring sets
// DEVICE_NEEDS_RESET, and in every case the device stays usable after a reset and the server
// never touches memory outside the client's DMA maps (the test binary also runs under ASAN).
#include <cstring>

#include <gtest/gtest.h>

#include "server/client/client.h"
#include "server/client/virtio_blk_driver.h"
#include "server/devices/virtio_blk.h"
#include "tests/support/server_thread.h"

namespace vfu::testing {
namespace {

using client::VirtioBlkDriver;
using Raw = VirtioBlkDriver::RawDescriptor;
using std::chrono::seconds;

constexpr uint16_t kNext = 1, kWrite = 2, kIndirect = 4;
constexpr uint8_t kNeedsReset = 64;

class VirtioBlkHostileDriver : public ::testing::Test {
 protected:
  void SetUp() override {
    socket_ = server_.AddDevice("virtio-blk,id=d,backend=ram,size=4M");
    server_.Start();
    auto c = client::Client::Connect(socket_);
    ASSERT_TRUE(c.ok());
    client_ = std::move(*c);
    driver_ = MakeDriver();
    ASSERT_NE(driver_, nullptr);
  }

  std::unique_ptr<VirtioBlkDriver> MakeDriver() {
    auto d = VirtioBlkDriver::Create(client_.get(), {});
    EXPECT_TRUE(d.ok()) << d.error().message;
    return d.ok() ? std::move(*d) : nullptr;
  }

  // A read request from slot 0 whose data descriptor is `data`.
  std::vector<Raw> ReadChain(Raw data) {
    uint64_t meta = driver_->slot_iova(0, 0);
    uint32_t type = 0;
    uint64_t sector = 0;
    uint8_t* host = driver_->slot_buffer(0, 0) - 64;
    std::memcpy(host, &type, 4);
    std::memcpy(host + 8, &sector, 8);
    host[32] = 0xff;
    data.flags |= kNext;
    data.next = 2;
    return {Raw{meta, 16, kNext, 1}, data, Raw{meta + 32, 1, kWrite, 0}};
  }

  uint8_t StatusByte() { return (driver_->slot_buffer(0, 0) - 64)[32]; }

  void ExpectDeviceWorksAfterReset() {
    driver_.reset();  // resets the device and unmaps
    driver_ = MakeDriver();
    ASSERT_NE(driver_, nullptr);
    std::memset(driver_->slot_buffer(0, 0), 0x3c, 4096);
    ASSERT_TRUE(driver_->Write(0, 0, 8, 4096, 1).ok());
    ASSERT_TRUE(driver_->WaitFor(0, 1, seconds(10)).ok());
    std::memset(driver_->slot_buffer(0, 0), 0, 4096);
    ASSERT_TRUE(driver_->Read(0, 0, 8, 4096, 2).ok());
    auto r = driver_->WaitFor(0, 1, seconds(10));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ((*r)[0].status, devices::kBlkStatusOk);
    EXPECT_EQ(driver_->slot_buffer(0, 0)[4095], 0x3c);
  }

  ServerThread server_;
  std::string socket_;
  std::unique_ptr<client::Client> client_;
  std::unique_ptr<VirtioBlkDriver> driver_;
};

TEST_F(VirtioBlkHostileDriver, DataBufferOutsideGuestMemoryFailsThatRequestWithIoerr) {
  auto chain = ReadChain(Raw{0x7000000000ull, 4096, kWrite, 0});
  ASSERT_TRUE(driver_->SubmitRaw(0, 0, chain, 0, 11).ok());
  auto r = driver_->WaitFor(0, 1, seconds(10));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(StatusByte(), devices::kBlkStatusIoErr);
  EXPECT_EQ(driver_->ReadStatus() & kNeedsReset, 0);
  // The same device keeps serving well-formed requests without a reset.
  ASSERT_TRUE(driver_->Read(0, 1, 0, 4096, 12).ok());
  auto ok = driver_->WaitFor(0, 1, seconds(10));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ((*ok)[0].status, devices::kBlkStatusOk);
}

TEST_F(VirtioBlkHostileDriver, DataBufferStraddlingTheEndOfGuestMemoryFailsWithIoerr) {
  // Half the buffer in the last mapped page, half beyond the map.
  auto chain = ReadChain(Raw{driver_->memory_end_iova() - 2048, 4096, kWrite, 0});
  ASSERT_TRUE(driver_->SubmitRaw(0, 0, chain, 0, 21).ok());
  ASSERT_TRUE(driver_->WaitFor(0, 1, seconds(10)).ok());
  EXPECT_EQ(StatusByte(), devices::kBlkStatusIoErr);
}

TEST_F(VirtioBlkHostileDriver, DescriptorLoopSetsNeedsReset) {
  uint64_t meta = driver_->slot_iova(0, 0);
  std::vector<Raw> loop = {Raw{meta, 16, kNext, 1}, Raw{meta + 64, 512, kNext | kWrite, 0}};
  ASSERT_TRUE(driver_->SubmitRaw(0, 0, loop, 0, 31).ok());
  uint8_t status = 0;
  for (int i = 0; i < 500 && !(status & kNeedsReset); ++i) status = driver_->ReadStatus();
  EXPECT_TRUE(status & kNeedsReset);
  ExpectDeviceWorksAfterReset();
}

TEST_F(VirtioBlkHostileDriver, AvailIndexJumpingPastTheRingSetsNeedsReset) {
  driver_->CorruptAvailIndex(0, 1000);
  uint8_t status = 0;
  for (int i = 0; i < 500 && !(status & kNeedsReset); ++i) status = driver_->ReadStatus();
  EXPECT_TRUE(status & kNeedsReset);
  ExpectDeviceWorksAfterReset();
}

TEST_F(VirtioBlkHostileDriver, IndirectDescriptorWithoutTheFeatureSetsNeedsReset) {
  uint64_t meta = driver_->slot_iova(0, 0);
  std::vector<Raw> chain = {Raw{meta + 64, 48, kIndirect, 0}};
  ASSERT_TRUE(driver_->SubmitRaw(0, 0, chain, 0, 41).ok());
  uint8_t status = 0;
  for (int i = 0; i < 500 && !(status & kNeedsReset); ++i) status = driver_->ReadStatus();
  EXPECT_TRUE(status & kNeedsReset);
  ExpectDeviceWorksAfterReset();
}

TEST_F(VirtioBlkHostileDriver, HeadIndexBeyondTheRingSetsNeedsReset) {
  std::vector<Raw> none;
  ASSERT_TRUE(driver_->SubmitRaw(0, 0, none, 4000, 51).ok());
  uint8_t status = 0;
  for (int i = 0; i < 500 && !(status & kNeedsReset); ++i) status = driver_->ReadStatus();
  EXPECT_TRUE(status & kNeedsReset);
  ExpectDeviceWorksAfterReset();
}

TEST_F(VirtioBlkHostileDriver, MissingStatusByteCompletesWithoutTouchingAnything) {
  uint64_t meta = driver_->slot_iova(0, 0);
  // Header only: nothing device-writable, so there is nowhere to put a status.
  std::vector<Raw> chain = {Raw{meta, 16, 0, 0}};
  ASSERT_TRUE(driver_->SubmitRaw(0, 0, chain, 0, 61).ok());
  auto r = driver_->WaitFor(0, 1, seconds(10));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].used_len, 0u);
  EXPECT_EQ(driver_->ReadStatus() & kNeedsReset, 0);
}

// Regression: with the status descriptor outside guest memory, the device took the last byte
// of the (translated) data buffer for the status byte and wrote IOERR there.
TEST_F(VirtioBlkHostileDriver, UntranslatableStatusBufferLeavesTheDataBufferAlone) {
  uint64_t meta = driver_->slot_iova(0, 0);
  uint8_t* data = driver_->slot_buffer(0, 0);
  std::memset(data, 0x5a, 4096);
  std::vector<Raw> chain = {Raw{meta, 16, kNext, 1}, Raw{meta + 64, 4096, kNext | kWrite, 2},
                            Raw{0x7000000000ull, 1, kWrite, 0}};  // the status: unmapped
  uint8_t* header = data - 64;
  const uint32_t type = 0;  // IN
  const uint64_t sector = 0;
  std::memcpy(header, &type, 4);
  std::memcpy(header + 8, &sector, 8);
  ASSERT_TRUE(driver_->SubmitRaw(0, 0, chain, 0, 71).ok());
  auto r = driver_->WaitFor(0, 1, seconds(10));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)[0].used_len, 0u);
  EXPECT_EQ(data[4095], 0x5a) << "a status byte was written into the data buffer";
  EXPECT_EQ(driver_->ReadStatus() & kNeedsReset, 0);
}

// Regression: used.len is 32 bits, and a read of 4 GiB or more (two 2 GiB writable buffers)
// was acknowledged as OK with used.len cut to 1. The null backend moves no data, and the
// guest memory is a sparse memfd, so this costs no RAM.
TEST(VirtioBlkHugeRequest, AReadTooLargeForUsedLenFailsWithIoerr) {
  ServerThread server;
  const std::string socket = server.AddDevice("virtio-blk,id=d,backend=null,size=16G");
  server.Start();
  auto c = client::Client::Connect(socket);
  ASSERT_TRUE(c.ok()) << c.error().message;
  client::VirtioBlkDriverOptions options;
  options.queue_size = 4;            // one slot
  options.slot_bytes = 0x80000000u;  // of 2 GiB
  auto d = VirtioBlkDriver::Create(c->get(), options);
  ASSERT_TRUE(d.ok()) << d.error().message;
  VirtioBlkDriver& driver = **d;
  const uint64_t meta = driver.slot_iova(0, 0);
  uint8_t* header = driver.slot_buffer(0, 0) - 64;
  const uint32_t type = 0;  // IN
  const uint64_t sector = 0;
  std::memcpy(header, &type, 4);
  std::memcpy(header + 8, &sector, 8);
  header[32] = 0xff;
  std::vector<Raw> chain = {Raw{meta, 16, kNext, 1}, Raw{meta + 64, 0x80000000u, kNext | kWrite, 2},
                            Raw{meta + 64, 0x80000000u, kNext | kWrite, 3},
                            Raw{meta + 32, 1, kWrite, 0}};
  ASSERT_TRUE(driver.SubmitRaw(0, 0, chain, 0, 81).ok());
  auto r = driver.WaitFor(0, 1, seconds(10));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(header[32], devices::kBlkStatusIoErr);
  EXPECT_EQ((*r)[0].used_len, 1u);
}

}  // namespace
}  // namespace vfu::testing
