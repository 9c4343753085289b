// A planned handoff inside one test process: a virtio-blk device serving a client (the
// userspace driver, doing what a guest does) is suspended on one server, its listener,
// connection, session and device state are saved, and a second server with the same device
// configuration takes them over. The client never reconnects: its next requests are served by
// the second server, the data written before the handoff reads back, and a new client can still
// connect to the socket. A failed takeover leaves the first server serving as before.
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/client/client.h"
#include "server/client/virtio_blk_driver.h"
#include "server/state/record.h"
#include "server/transport/unix_socket.h"
#include "tests/support/blk_io.h"
#include "tests/support/server_thread.h"

namespace vfu::testing {
namespace {

using client::BlkCompletion;
using client::VirtioBlkDriver;
using std::chrono::milliseconds;
using std::chrono::seconds;

// A file-backed virtio-blk device served by a first server thread, and a client driving it.
class Handoff : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string image = dir_.File("disk.img");
    FILE* f = std::fopen(image.c_str(), "w");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(::ftruncate(fileno(f), 16 << 20), 0);
    std::fclose(f);
    socket_ = dir_.File("disk.sock");
    spec_ = "virtio-blk,id=disk,socket=" + socket_ + ",backend=file,path=" + image;
    auto parsed = devices::ParseDeviceSpec(spec_);
    ASSERT_TRUE(parsed.ok());
    auto device = devices::CreateDevice(*parsed);
    ASSERT_TRUE(device.ok()) << device.error().message;
    device_ = std::move(*device);
    endpoint_ = std::make_unique<DeviceEndpoint>("disk", socket_, device_.get(), &first_.reactor());
    ASSERT_TRUE(endpoint_->Start().ok());
    first_.Start();
    ConnectBlkDriver(socket_, &client_, &driver_);
  }
  void TearDown() override {
    driver_.reset();
    client_.reset();
    second_.Stop();
    first_.Stop();
    endpoint_.reset();
  }
  Status Suspend(state::Writer* w) {
    Status s;
    first_.RunOnReactor([&] { s = endpoint_->SuspendAndSave(*w, milliseconds(2000)); });
    return s;
  }

  TempDir dir_;
  std::string socket_;
  std::string spec_;
  ServerThread first_;
  ServerThread second_;
  std::unique_ptr<VfioDevice> device_;
  std::unique_ptr<DeviceEndpoint> endpoint_;
  std::unique_ptr<client::Client> client_;
  std::unique_ptr<VirtioBlkDriver> driver_;
};

TEST_F(Handoff, TheClientKeepsItsDeviceAndDataAcrossTheHandoff) {
  WriteOrVerifyBlocks(*driver_, 0, 32, 1, true);
  state::Writer w;
  Status saved = Suspend(&w);
  ASSERT_TRUE(saved.ok()) << saved.message();
  // The listener, the connection, the driver's DMA map and its queue eventfds travel as fds.
  EXPECT_GE(w.fds().size(), 3u);

  second_.Start();
  Status adopted = second_.AdoptDevice(spec_, w.bytes(), w.fds());
  ASSERT_TRUE(adopted.ok()) << adopted.message();
  first_.RunOnReactor([&] { endpoint_->Release(); });
  first_.Stop();
  endpoint_.reset();  // the first server's device object is gone too, as with its process

  // Same client, same connection: the data is there and new I/O works.
  WriteOrVerifyBlocks(*driver_, 0, 32, 1, false);
  WriteOrVerifyBlocks(*driver_, 1024, 32, 2, true);
  WriteOrVerifyBlocks(*driver_, 1024, 32, 2, false);
  // The socket path is still served (by the second server): it accepts connections (and
  // turns a second client away while the first is connected, as before).
  auto other = UnixConnection::Connect(socket_);
  EXPECT_TRUE(other.ok()) << "the socket must still accept connections";
}

TEST_F(Handoff, RequestsSentDuringTheHandoffAreServedByTheNewServer) {
  WriteOrVerifyBlocks(*driver_, 0, 8, 3, true);
  state::Writer w;
  ASSERT_TRUE(Suspend(&w).ok());
  // The driver submits while nobody serves: the request (a kick message) waits in the socket.
  uint8_t* buf = driver_->slot_buffer(0, 0);
  std::memset(buf, 0, 4096);
  ASSERT_TRUE(driver_->Read(0, 0, 0, 4096, 77).ok());
  second_.Start();
  ASSERT_TRUE(second_.AdoptDevice(spec_, w.bytes(), w.fds()).ok());
  first_.RunOnReactor([&] { endpoint_->Release(); });
  auto got = driver_->WaitFor(0, 1, seconds(10));
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ((*got)[0].tag, 77u);
  EXPECT_EQ((*got)[0].status, 0);
  for (uint32_t i = 0; i < 4096; ++i) ASSERT_EQ(buf[i], BlockPattern(0, i, 3)) << i;
}

TEST_F(Handoff, AFailedTakeoverLeavesTheFirstServerServing) {
  WriteOrVerifyBlocks(*driver_, 0, 8, 4, true);
  state::Writer w;
  ASSERT_TRUE(Suspend(&w).ok());
  // The new server's device does not fit the record (another queue count, so another number
  // of MSI-X vectors): refused, with the part that does not fit named.
  second_.Start();
  Status adopted = second_.AdoptDevice(spec_ + ",queues=2", w.bytes(), w.fds());
  ASSERT_FALSE(adopted.ok());
  EXPECT_NE(adopted.message().find("IRQ state"), std::string::npos) << adopted.message();
  // A truncated record is refused too.
  std::vector<uint8_t> cut(w.bytes().begin(), w.bytes().end() - 3);
  EXPECT_FALSE(second_.AdoptDevice(spec_, cut, w.fds()).ok());
  second_.Stop();

  // The first server resumes and the client goes on as if nothing happened.
  first_.RunOnReactor([&] { endpoint_->Resume(); });
  WriteOrVerifyBlocks(*driver_, 0, 8, 4, false);
  WriteOrVerifyBlocks(*driver_, 512, 8, 5, true);
  WriteOrVerifyBlocks(*driver_, 512, 8, 5, false);
}

}  // namespace
}  // namespace vfu::testing
