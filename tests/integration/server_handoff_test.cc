// A planned handoff between two vfio-user-server processes: a client (the userspace virtio-blk
// driver) stays connected while the server it talks to is replaced by a successor started with
// --take-over, twice in a row. The old server exits 0 only once the successor serves; the
// client's data written before reads back after, and its I/O goes on on the same connection. A
// successor that cannot take the devices (another configuration) exits 1 and the running
// server serves on.
#include <signal.h>
#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/client/client.h"
#include "server/client/virtio_blk_driver.h"
#include "server/transport/unix_socket.h"
#include "tests/support/blk_io.h"
#include "tests/support/subprocess.h"

namespace vfu::testing {
namespace {

using client::VirtioBlkDriver;
using std::chrono::seconds;

class ServerHandoff : public ::testing::Test {
 protected:
  void SetUp() override {
    image_ = dir_.File("disk.img");
    FILE* f = std::fopen(image_.c_str(), "w");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(::ftruncate(fileno(f), 16 << 20), 0);
    std::fclose(f);
    socket_ = dir_.File("disk.sock");
    handoff_ = dir_.File("handoff.sock");
    control_ = dir_.File("control.sock");
  }
  std::vector<std::string> Args(const std::string& extra_device_keys = "") {
    return {
        "--device",
        "virtio-blk,id=disk,socket=" + socket_ + ",backend=file,path=" + image_ + extra_device_keys,
        "--handoff-socket",
        handoff_,
        "--control-socket",
        control_,
        "--log-level",
        "debug"};
  }
  std::unique_ptr<Subprocess> StartServer(const std::vector<std::string>& args) {
    auto p = std::make_unique<Subprocess>(VFU_SERVER_BINARY, args);
    EXPECT_TRUE(p->Start());
    return p;
  }
  // A server with the device, and a client whose driver has written `blocks` blocks.
  void StartServingAClient(int blocks, uint8_t seed) {
    server_ = StartServer(Args());
    ASSERT_TRUE(server_->WaitForOutput("vfio-user-server ready", seconds(10))) << server_->Output();
    ConnectBlkDriver(socket_, &client_, &driver_);
    WriteOrVerifyBlocks(*driver_, 0, blocks, seed, true);
  }
  // The client goes, then the serving server stops on SIGTERM and must exit 0.
  void StopServing(Subprocess* serving) {
    driver_.reset();
    client_.reset();
    serving->Signal(SIGTERM);
    EXPECT_EQ(serving->Wait(seconds(20)), 0) << serving->Output();
  }

  TempDir dir_;
  std::string image_;
  std::string socket_;
  std::string handoff_;
  std::string control_;
  std::unique_ptr<Subprocess> server_;
  std::unique_ptr<client::Client> client_;
  std::unique_ptr<VirtioBlkDriver> driver_;
};

TEST_F(ServerHandoff, TheClientKeepsItsDeviceThroughTwoSuccessiveHandoffs) {
  StartServingAClient(16, 1);
  std::vector<std::unique_ptr<Subprocess>> servers;
  servers.push_back(std::move(server_));
  for (int round = 1; round <= 2; ++round) {
    SCOPED_TRACE("handoff " + std::to_string(round));
    std::vector<std::string> args = Args();
    args.push_back("--take-over");
    args.push_back(handoff_);
    auto next = StartServer(args);
    ASSERT_TRUE(next->WaitForOutput("vfio-user-server ready", seconds(20))) << next->Output();
    EXPECT_NE(next->Output().find("took the devices over"), std::string::npos);
    auto code = servers.back()->Wait(seconds(20));
    ASSERT_TRUE(code.has_value()) << "the old server did not exit";
    EXPECT_EQ(*code, 0) << servers.back()->Output();
    EXPECT_NE(servers.back()->Output().find("handoff complete"), std::string::npos);
    servers.push_back(std::move(next));

    // The handoffs are counted over both processes, on the control API of the one serving.
    auto [code_ctl, stats] =
        RunToCompletion(VFU_CTL_BINARY, {"stats", "--control-socket", control_});
    EXPECT_EQ(code_ctl, 0) << stats;
    EXPECT_NE(stats.find("handoffs: " + std::to_string(round) + " "), std::string::npos) << stats;

    // Same connection: what was written reads back, and new I/O works.
    WriteOrVerifyBlocks(*driver_, 0, 16, 1, false);
    WriteOrVerifyBlocks(*driver_, 1024u * round, 16, static_cast<uint8_t>(10 + round), true);
    WriteOrVerifyBlocks(*driver_, 1024u * round, 16, static_cast<uint8_t>(10 + round), false);
  }
  StopServing(servers.back().get());
}

TEST_F(ServerHandoff, ASuccessorThatCannotTakeTheDevicesExitsAndTheServerServesOn) {
  StartServingAClient(8, 3);

  // Another queue count: the device's MSI-X vectors do not match the record.
  std::vector<std::string> args = Args(",queues=2");
  args.push_back("--take-over");
  args.push_back(handoff_);
  auto successor = StartServer(args);
  auto code = successor->Wait(seconds(30));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 1) << successor->Output();
  EXPECT_NE(successor->Output().find("cannot take over"), std::string::npos) << successor->Output();
  EXPECT_TRUE(server_->WaitForOutput("handoff failed; serving on", seconds(10)))
      << server_->Output();
  EXPECT_TRUE(server_->running());

  WriteOrVerifyBlocks(*driver_, 0, 8, 3, false);
  WriteOrVerifyBlocks(*driver_, 512, 8, 4, true);
  WriteOrVerifyBlocks(*driver_, 512, 8, 4, false);
  StopServing(server_.get());
}

// A successor that dies midway: it asks, receives the head of the state, and goes away without
// answering. The running server must resume its devices, and the client must not notice.
TEST_F(ServerHandoff, ASuccessorThatDiesMidwayLeavesTheServerServing) {
  StartServingAClient(8, 6);
  {
    auto successor = UnixConnection::Connect(handoff_);
    ASSERT_TRUE(successor.ok()) << successor.error().message;
    ASSERT_TRUE(successor->SetNonBlocking(false).ok());
    uint8_t hello[6] = {0x56, 0x46, 0x48, 0x4f, 1, 0};  // "VFHO", format 1
    iovec iov{hello, sizeof(hello)};
    ASSERT_TRUE(successor->Send({&iov, 1}).ok());
    uint8_t head[16];
    std::vector<UniqueFd> fds;
    auto got = successor->Receive(head, &fds);
    ASSERT_TRUE(got.ok());
    ASSERT_GE(got->bytes, 4u);
    EXPECT_EQ(head[0], 0) << "the server should have started to hand over";
  }  // the successor "dies": its end of the handoff connection closes
  EXPECT_TRUE(server_->WaitForOutput("handoff failed; serving on", seconds(10)))
      << server_->Output();
  EXPECT_TRUE(server_->WaitForOutput("serving again: the handoff did not complete", seconds(10)));
  WriteOrVerifyBlocks(*driver_, 0, 8, 6, false);
  WriteOrVerifyBlocks(*driver_, 256, 8, 7, true);
  WriteOrVerifyBlocks(*driver_, 256, 8, 7, false);
  StopServing(server_.get());
}

// A successor that reads another state format (an incompatible version) is refused before
// anything is suspended; the running server serves on.
TEST_F(ServerHandoff, ASuccessorOfAnotherStateFormatIsRefusedBeforeAnythingStops) {
  auto server = StartServer(Args());
  ASSERT_TRUE(server->WaitForOutput("vfio-user-server ready", seconds(10))) << server->Output();
  auto successor = UnixConnection::Connect(handoff_);
  ASSERT_TRUE(successor.ok());
  ASSERT_TRUE(successor->SetNonBlocking(false).ok());
  uint8_t hello[6] = {0x56, 0x46, 0x48, 0x4f, 99, 0};  // format 99
  iovec iov{hello, sizeof(hello)};
  ASSERT_TRUE(successor->Send({&iov, 1}).ok());
  uint8_t answer[256];
  std::vector<UniqueFd> fds;
  auto got = successor->Receive(answer, &fds);
  ASSERT_TRUE(got.ok());
  ASSERT_GE(got->bytes, 8u);
  EXPECT_EQ(answer[0], EPROTONOSUPPORT);
  std::string why(reinterpret_cast<char*>(answer + 8), got->bytes - 8);
  EXPECT_NE(why.find("this server writes state format 1, the successor reads 99"),
            std::string::npos)
      << why;
  EXPECT_TRUE(server->WaitForOutput("handoff failed; serving on", seconds(10)));
  EXPECT_EQ(server->Output().find("devices suspended"), std::string::npos);
  auto client = client::Client::Connect(socket_);
  EXPECT_TRUE(client.ok()) << "the device must still serve";
  client->reset();
  server->Signal(SIGTERM);
  EXPECT_EQ(server->Wait(seconds(20)), 0);
}

}  // namespace
}  // namespace vfu::testing
