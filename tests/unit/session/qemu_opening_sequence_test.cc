// Replays the exact opening sequence of QEMU 11.1's vfio-user-pci client (see
// shared/reference/vfio-user-wire.md) and checks every reply the way QEMU does.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "server/protocol/codec.h"
#include "tests/support/fd_count.h"
#include "tests/support/session_harness.h"

namespace vfu::testing {
namespace {

using wire::Command;

UniqueFd MakeMemfd(size_t size) {
  UniqueFd fd(::memfd_create("guest-ram", MFD_CLOEXEC));
  EXPECT_TRUE(fd.valid());
  EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  return fd;
}

TEST(QemuOpeningSequence, VersionRequestIs214BytesAndReplyIsNoLonger) {
  SessionHarness h;
  std::vector<uint8_t> payload;
  proto::Append(payload, wire::Version{0, 0});
  payload.insert(payload.end(), kQemuVersionJson, kQemuVersionJson + sizeof(kQemuVersionJson));
  auto request = BuildMessage(1, 1, payload);
  ASSERT_EQ(request.size(), 214u);
  h.SendRaw(request);
  h.RunServer();
  auto reply = h.ReadReply();
  ASSERT_TRUE(reply);
  EXPECT_FALSE(reply->is_error());
  EXPECT_LE(reply->header.msg_size, request.size());
  auto version = proto::DecodeVersion(reply->payload);
  ASSERT_TRUE(version.ok()) << version.error().message;
  EXPECT_EQ(version->major, 0);
  EXPECT_EQ(version->minor, 0);
  // QEMU's checks on the capabilities.
  ASSERT_TRUE(version->caps.max_msg_fds);
  EXPECT_LE(*version->caps.max_msg_fds, 16u);
  ASSERT_TRUE(version->caps.max_data_xfer_size);
  EXPECT_LE(*version->caps.max_data_xfer_size, 64u << 20);
  ASSERT_TRUE(version->caps.pgsizes);
  EXPECT_EQ(*version->caps.pgsizes % 4096, 0u);
  ASSERT_TRUE(version->caps.max_dma_maps);
  EXPECT_LE(*version->caps.max_dma_maps, 65535u);
  ASSERT_TRUE(version->caps.write_multiple);
  // NUL-terminated JSON object.
  EXPECT_EQ(reply->payload.back(), 0);
  EXPECT_FALSE(version->caps.has_migration);  // we did not accept migration
}

TEST(QemuOpeningSequence, FullSequenceAsQemuSendsIt) {
  size_t fds_before = OpenFdCount();
  {
    SessionHarness h;
    h.Negotiate();

    // Pipelined DMA_MAPs with memfds, before GET_INFO, without waiting for replies.
    constexpr size_t kRam = 2 << 20;
    UniqueFd low = MakeMemfd(kRam);
    UniqueFd high = MakeMemfd(kRam);
    wire::DmaMap map1{32, wire::kDmaFlagRead | wire::kDmaFlagWrite, 0, 0x0, 1 << 20};
    wire::DmaMap map2{32, wire::kDmaFlagRead | wire::kDmaFlagWrite, 1 << 20, 0x100000, 1 << 20};
    wire::DmaMap map3{32, wire::kDmaFlagRead, 0, 0x100000000ull, kRam};
    int fd_low = low.get();
    int fd_high = high.get();
    uint16_t id1 = h.SendStruct(Command::kDmaMap, map1, {&fd_low, 1});
    uint16_t id2 = h.SendStruct(Command::kDmaMap, map2, {&fd_low, 1});
    uint16_t id3 = h.SendStruct(Command::kDmaMap, map3, {&fd_high, 1});
    h.RunServer();
    for (uint16_t id : {id1, id2, id3}) {
      auto r = h.ReadReply();
      ASSERT_TRUE(r);
      EXPECT_EQ(r->header.msg_id, id);
      EXPECT_FALSE(r->is_error()) << r->error_no();
      EXPECT_EQ(r->header.msg_size, 16u);
    }
    EXPECT_EQ(h.session()->dma_maps().size(), 3u);

    // GET_INFO: PCI + RESET, >= 8 regions (<= 100), >= 3 IRQ indexes (<= 50).
    wire::DeviceInfo info_req{16, 0, 0, 0};
    auto info = h.CallStruct(Command::kDeviceGetInfo, info_req);
    ASSERT_FALSE(info.is_error());
    auto di = proto::Load<wire::DeviceInfo>(info.payload);
    EXPECT_EQ(di.argsz, 16u);
    EXPECT_TRUE(di.flags & wire::kDeviceFlagPci);
    EXPECT_TRUE(di.flags & wire::kDeviceFlagReset);
    EXPECT_GE(di.num_regions, 8u);
    EXPECT_LE(di.num_regions, 100u);
    EXPECT_GE(di.num_irqs, 3u);
    EXPECT_LE(di.num_irqs, 50u);

    // REGION_INFO for BAR0-5 and CONFIG, first with argsz 32, then the retry QEMU makes.
    for (uint32_t index : {0u, 1u, 2u, 3u, 4u, 5u, 7u}) {
      wire::RegionInfo req{};
      req.argsz = 32;
      req.index = index;
      auto first = h.CallStruct(Command::kDeviceGetRegionInfo, req);
      ASSERT_FALSE(first.is_error()) << index;
      ASSERT_GE(first.payload.size(), 32u);
      auto ri = proto::Load<wire::RegionInfo>(first.payload);
      EXPECT_EQ(ri.index, index);
      // What QEMU checks: a CAPS flag needs cap_offset in [32, argsz].
      if (ri.flags & wire::kRegionFlagCaps) {
        EXPECT_GE(ri.cap_offset, 32u);
        EXPECT_LE(ri.cap_offset, ri.argsz);
      }
      if (ri.argsz > 32) {
        // Truncated: only the struct came, and no fd (QEMU would close it anyway).
        EXPECT_EQ(first.payload.size(), 32u);
        EXPECT_TRUE(first.fds.empty());
        req.argsz = ri.argsz;
        auto second = h.CallStruct(Command::kDeviceGetRegionInfo, req);
        ASSERT_FALSE(second.is_error());
        EXPECT_EQ(second.payload.size(), ri.argsz);
        auto full = proto::DecodeRegionInfoReply(second.payload);
        ASSERT_TRUE(full.ok()) << full.error().message;
        EXPECT_TRUE(full->info.flags & wire::kRegionFlagCaps);
        EXPECT_EQ(full->info.cap_offset, 32u);
        EXPECT_TRUE(full->info.flags & wire::kRegionFlagMmap);
        ASSERT_EQ(second.fds.size(), 1u);
        ASSERT_EQ(full->sparse_areas.size(), 1u);
        // The fd really maps the region.
        void* p = ::mmap(nullptr, full->sparse_areas[0].size, PROT_READ | PROT_WRITE, MAP_SHARED,
                         second.fds[0].get(),
                         static_cast<off_t>(full->info.offset + full->sparse_areas[0].offset));
        ASSERT_NE(p, MAP_FAILED);
        ::munmap(p, full->sparse_areas[0].size);
      }
      if (index == wire::kPciConfigRegionIndex) {
        EXPECT_EQ(ri.size, 256u);
      }
    }

    // IRQ_INFO for each index.
    for (uint32_t index = 0; index < di.num_irqs; ++index) {
      wire::IrqInfo req{16, 0, index, 0};
      auto r = h.CallStruct(Command::kDeviceGetIrqInfo, req);
      ASSERT_FALSE(r.is_error());
      auto ii = proto::Load<wire::IrqInfo>(r.payload);
      EXPECT_EQ(ii.index, index);
      EXPECT_EQ(ii.argsz, 16u);
    }

    // One REGION_READ of the whole config space.
    wire::RegionAccess cfg_read{0, wire::kPciConfigRegionIndex, 256};
    auto cfg = h.CallStruct(Command::kRegionRead, cfg_read);
    ASSERT_FALSE(cfg.is_error());
    ASSERT_EQ(cfg.payload.size(), 16u + 256u);
    auto echoed = proto::Load<wire::RegionAccess>(cfg.payload);
    EXPECT_EQ(echoed.count, 256u);
    uint16_t vendor;
    std::memcpy(&vendor, cfg.payload.data() + 16, 2);
    EXPECT_EQ(vendor, devices::SampleDevice::kVendorId);

    // SET_IRQS for INTx with argsz 20 and an eventfd attached (QEMU's exact shape).
    UniqueFd efd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    int raw = efd.get();
    wire::IrqSet set{20, wire::kIrqSetDataEventfd | wire::kIrqSetActionTrigger,
                     wire::kPciIntxIrqIndex, 0, 1};
    auto sr = h.CallStruct(Command::kDeviceSetIrqs, set, {&raw, 1});
    EXPECT_FALSE(sr.is_error()) << sr.error_no();
    EXPECT_EQ(sr.header.msg_size, 16u);
    EXPECT_EQ(h.session()->irqs().eventfd_count(), 1u);

    // DEVICE_RESET as on reboot.
    auto reset = h.Call(Command::kDeviceReset, {});
    EXPECT_FALSE(reset.is_error());
  }
  EXPECT_EQ(OpenFdCount(), fds_before);
}

}  // namespace
}  // namespace vfu::testing
