// `vfio-user-ctl info` against a running vfio-user-server: the lspci -vv style dump must show
// what our devices really expose in config space (identity, class, BARs, the capability chain
// with virtio-pci's vendor capabilities and MSI-X) and what the vfio-user protocol reports
// (region sizes, mmappable areas, IRQ indexes), including state a driver has programmed.
#include <signal.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/client/client.h"
#include "server/pci/config_space.h"
#include "server/pci/msix.h"
#include "server/protocol/wire.h"
#include "tests/support/subprocess.h"

namespace vfu::testing {
namespace {

using std::chrono::seconds;

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// One server with a two-queue virtio-blk device and a sample device, stopped (and checked to
// exit cleanly) at the end of each test.
class CtlInfoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<Subprocess>(
        VFU_SERVER_BINARY,
        std::vector<std::string>{
            "--device",
            "virtio-blk,id=disk,socket=" + disk_socket_ + ",backend=null,size=1G,queues=2",
            "--device", "sample,id=probe,socket=" + sample_socket_});
    ASSERT_TRUE(server_->Start());
    ASSERT_TRUE(server_->WaitForOutput("vfio-user-server ready", seconds(10))) << server_->Output();
  }

  void TearDown() override {
    server_->Signal(SIGTERM);
    auto code = server_->Wait(seconds(10));
    ASSERT_TRUE(code.has_value());
    EXPECT_EQ(*code, 0) << server_->Output();
  }

  std::string Info(const std::string& socket) {
    auto [code, out] = RunToCompletion(VFU_CTL_BINARY, {"info", socket});
    EXPECT_EQ(code, 0) << out;
    return out;
  }

  TempDir dir_;
  std::string disk_socket_ = dir_.File("disk.sock");
  std::string sample_socket_ = dir_.File("probe.sock");
  std::unique_ptr<Subprocess> server_;
};

TEST_F(CtlInfoTest, VirtioBlkShowsIdentityClassAndBarSizes) {
  std::string out = Info(disk_socket_);
  EXPECT_TRUE(Contains(out,
                       "1af4:1042 SCSI storage controller [0100]: Red Hat, Inc. Virtio 1.0 "
                       "block device (rev 01)"))
      << out;
  EXPECT_TRUE(Contains(out, "Class: Mass storage controller [01] / SCSI storage controller [00]"))
      << out;
  EXPECT_TRUE(Contains(out, "Subsystem: Red Hat, Inc. Device 1100 [1af4:1100]")) << out;
  EXPECT_TRUE(Contains(out, "Status: Cap+ ")) << out;
  EXPECT_TRUE(Contains(out, "Interrupt: pin A")) << out;
  // BAR1: MSI-X table and PBA; BAR4: the virtio structures (64-bit, prefetchable).
  EXPECT_TRUE(Contains(out,
                       "Region 1: Memory at <unassigned> (32-bit, non-prefetchable) "
                       "[disabled] [size=4K]"))
      << out;
  EXPECT_TRUE(Contains(out,
                       "Region 4: Memory at <unassigned> (64-bit, prefetchable) [disabled] "
                       "[size=16K]"))
      << out;
  EXPECT_FALSE(Contains(out, "Region 0:")) << out;
  EXPECT_TRUE(Contains(out, "region 4 (BAR4): size 16384 read write")) << out;
}

TEST_F(CtlInfoTest, VirtioBlkCapabilityChainIsDecoded) {
  std::string out = Info(disk_socket_);
  // PCIe devices carry Express and Power Management first, then MSI-X, then virtio's caps.
  size_t express = out.find("Express (v2) Endpoint, MSI 00");
  size_t pm = out.find("Power Management version 3");
  size_t msix = out.find("MSI-X: Enable- Count=3 Masked-");  // config vector + 2 queues
  size_t common = out.find("VirtIO: CommonCfg\n\t\tBAR=4 offset=00000000 size=00000040");
  ASSERT_NE(express, std::string::npos) << out;
  ASSERT_NE(pm, std::string::npos) << out;
  ASSERT_NE(msix, std::string::npos) << out;
  ASSERT_NE(common, std::string::npos) << out;
  EXPECT_LT(express, pm);
  EXPECT_LT(pm, msix);
  EXPECT_LT(msix, common);
  EXPECT_TRUE(Contains(out, "LnkCap:\tPort #0, Speed 2.5GT/s, Width x1")) << out;
  EXPECT_TRUE(Contains(out, "MaxPayload 128 bytes, MaxReadReq 512 bytes")) << out;
  EXPECT_TRUE(Contains(out, "Status: D0 NoSoftRst+ PME-Enable-")) << out;
  EXPECT_TRUE(Contains(out, "Vector table: BAR=1 offset=00000000 size=48\n")) << out;
  EXPECT_TRUE(Contains(out, "PBA: BAR=1 offset=00000800 size=8\n")) << out;
  EXPECT_TRUE(Contains(out, "VirtIO: ISR\n\t\tBAR=4 offset=00001000 size=00000001\n")) << out;
  EXPECT_TRUE(Contains(out, "VirtIO: DeviceCfg\n\t\tBAR=4 offset=00002000 size=")) << out;
  // Two queues, 4 bytes of notify area each.
  EXPECT_TRUE(Contains(out,
                       "VirtIO: Notify\n\t\tBAR=4 offset=00003000 size=00000008 "
                       "multiplier=00000004\n"))
      << out;
  EXPECT_FALSE(Contains(out, "outside BAR")) << out;
  EXPECT_TRUE(Contains(out, "Extended capabilities: none")) << out;
  EXPECT_TRUE(Contains(out, "irq 2 (MSI-X): 3 vector(s) eventfd maskable")) << out;
  EXPECT_FALSE(Contains(out, "!!")) << out;
}

TEST_F(CtlInfoTest, ShowsWhatADriverProgrammedInConfigSpace) {
  {
    auto client = client::Client::Connect(disk_socket_);
    ASSERT_TRUE(client.ok()) << client.error().message;
    client::Client& c = **client;
    constexpr uint32_t kConfig = wire::kPciConfigRegionIndex;
    ASSERT_TRUE(c.Write<uint32_t>(kConfig, pci::kBar0 + 4 * 4, 0xfe000000u).ok());
    ASSERT_TRUE(c.Write<uint32_t>(kConfig, pci::kBar0 + 5 * 4, 0x1u).ok());
    ASSERT_TRUE(
        c.Write<uint16_t>(kConfig, pci::kCommand, pci::kCommandMemory | pci::kCommandBusMaster)
            .ok());
    auto msix = c.Read<uint8_t>(kConfig, pci::kCapabilitiesPointer);
    ASSERT_TRUE(msix.ok());
    // Find MSI-X by walking the chain as a driver does.
    uint32_t p = *msix;
    for (int n = 0; p != 0 && n < 48; ++n) {
      auto id = c.Read<uint8_t>(kConfig, p);
      ASSERT_TRUE(id.ok());
      if (*id == pci::kCapIdMsix) break;
      auto next = c.Read<uint8_t>(kConfig, p + 1);
      ASSERT_TRUE(next.ok());
      p = *next;
    }
    ASSERT_NE(p, 0u);
    ASSERT_TRUE(c.Write<uint16_t>(kConfig, p + pci::kMsixControl,
                                  pci::kMsixControlEnable | pci::kMsixControlFunctionMask)
                    .ok());
  }  // the client disconnects; the device keeps its config space
  std::string out = Info(disk_socket_);
  EXPECT_TRUE(Contains(out, "Control: I/O- Mem+ BusMaster+ ")) << out;
  EXPECT_TRUE(Contains(out, "Region 4: Memory at 1fe000000 (64-bit, prefetchable) [size=16K]"))
      << out;
  EXPECT_TRUE(Contains(out, "MSI-X: Enable+ Count=3 Masked+")) << out;
}

TEST_F(CtlInfoTest, SampleDeviceShowsItsMmappableBarAndNoCapabilities) {
  std::string out = Info(sample_socket_);
  EXPECT_TRUE(Contains(out,
                       "1b36:10f0 Unassigned class [ff00]: Red Hat, Inc. Device 10f0 "
                       "(rev 01)"))
      << out;
  EXPECT_TRUE(Contains(out,
                       "Region 0: Memory at <unassigned> (32-bit, non-prefetchable) "
                       "[disabled] [size=4K]\n"))
      << out;
  EXPECT_TRUE(Contains(out,
                       "Region 2: Memory at <unassigned> (32-bit, non-prefetchable) "
                       "[disabled] [size=4K]\n\t\tmmappable: [0-fff] (4K)\n"))
      << out;
  EXPECT_TRUE(Contains(out, "Capabilities: none (Status.Cap-)")) << out;
  // A conventional (256-byte) config space has no extended capabilities to walk.
  EXPECT_FALSE(Contains(out, "Extended capabilities")) << out;
  EXPECT_TRUE(Contains(out, "region 7 (CONFIG): size 256 read write")) << out;
  EXPECT_TRUE(Contains(out, "irq indexes without vectors: MSI MSI-X")) << out;
}

}  // namespace
}  // namespace vfu::testing
