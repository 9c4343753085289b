// MSI-X: the capability's fields, the table and PBA in their BARs, masking (function mask, the
// table's entry mask once written, the session's SET_IRQS mask), pending bits, INTx while
// MSI-X is on, layout validation, and the PBA served through a real session.
#include "server/pci/msix.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include "server/protocol/codec.h"
#include "tests/support/session_harness.h"
#include "tests/unit/pci/pci_test_util.h"

namespace vfu::pci::testing {
namespace {

constexpr uint32_t kVectors = 70;  // two PBA qwords
constexpr int kTableBar = 2;       // 64-bit BAR (2 and 3)
constexpr uint64_t kTableOffset = 0x2000;
constexpr int kPbaBar = 4;
constexpr uint64_t kPbaOffset = 0x0;
constexpr uint32_t kMsix = wire::kPciMsixIrqIndex;

uint64_t Entry(uint32_t vector, uint32_t field) {
  return kTableOffset + uint64_t{vector} * kMsixEntrySize + field;
}

class MsixTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dev_.AddBar(0, {.size = 0x4000, .flags = 0}).ok());
    ASSERT_TRUE(dev_.AddBar(kTableBar, {.size = 0x4000, .flags = kBarMem64}).ok());
    ASSERT_TRUE(dev_.AddBar(kPbaBar, {.size = 0x1000, .flags = 0}).ok());
    Status s = dev_.EnableMsix(kVectors, kTableBar, kTableOffset, kPbaBar, kPbaOffset);
    ASSERT_TRUE(s.ok()) << s.message();
    cap_ = dev_.msix().cap_offset();
    dev_.Attach(&ctx_);
  }
  void TearDown() override { dev_.Detach(); }

  void SetControl(uint16_t bits) { WriteConfig16(dev_, cap_ + kMsixControl, bits); }
  uint64_t ReadPba(uint32_t qword = 0) {
    std::array<uint8_t, 8> b{};
    Status s = dev_.ReadRegion(kPbaBar, kPbaOffset + 8 * qword, b);
    EXPECT_TRUE(s.ok()) << s.message();
    uint64_t v;
    std::memcpy(&v, b.data(), 8);
    return v;
  }
  // Programs an entry the way a driver that uses the table does.
  void Program(uint32_t vector, uint64_t addr, uint32_t data, bool masked) {
    ASSERT_TRUE(
        WriteBar32(dev_, kTableBar, Entry(vector, kMsixEntryAddrLo), static_cast<uint32_t>(addr))
            .ok());
    ASSERT_TRUE(WriteBar32(dev_, kTableBar, Entry(vector, kMsixEntryAddrHi),
                           static_cast<uint32_t>(addr >> 32))
                    .ok());
    ASSERT_TRUE(WriteBar32(dev_, kTableBar, Entry(vector, kMsixEntryData), data).ok());
    ASSERT_TRUE(WriteBar32(dev_, kTableBar, Entry(vector, kMsixEntryVectorControl),
                           masked ? kMsixVectorMasked : 0)
                    .ok());
  }

  TestPciDevice dev_;
  FakeContext ctx_;
  uint32_t cap_ = 0;
};

TEST_F(MsixTest, CapabilityFieldsAsDeclared) {
  EXPECT_EQ(dev_.config().FindCapability(kCapIdMsix), std::optional<uint32_t>(cap_));
  EXPECT_EQ(ReadConfig8(dev_, cap_), kCapIdMsix);
  EXPECT_EQ(ReadConfig16(dev_, cap_ + kMsixControl), kVectors - 1);
  uint32_t table = ReadConfig(dev_, cap_ + kMsixTable);
  uint32_t pba = ReadConfig(dev_, cap_ + kMsixPba);
  EXPECT_EQ(table & kMsixBirMask, static_cast<uint32_t>(kTableBar));
  EXPECT_EQ(table & ~kMsixBirMask, kTableOffset);
  EXPECT_EQ(pba & kMsixBirMask, static_cast<uint32_t>(kPbaBar));
  EXPECT_EQ(pba & ~kMsixBirMask, kPbaOffset);
  EXPECT_EQ(dev_.msix().table_size(), kVectors * 16u);
  EXPECT_EQ(dev_.msix().pba_size(), 16u);

  IrqDescription irq = dev_.DescribeIrq(kMsix);
  EXPECT_EQ(irq.count, kVectors);
  EXPECT_TRUE(irq.flags & wire::kIrqInfoMaskable);
  EXPECT_TRUE(irq.flags & wire::kIrqInfoEventfd);
}

TEST_F(MsixTest, OnlyEnableAndFunctionMaskAreWritable) {
  WriteConfig(dev_, cap_, 0xffffffff);
  EXPECT_EQ(ReadConfig8(dev_, cap_), kCapIdMsix);
  EXPECT_EQ(ReadConfig16(dev_, cap_ + kMsixControl),
            kMsixControlEnable | kMsixControlFunctionMask | (kVectors - 1));
  EXPECT_TRUE(dev_.msix_enabled());
  EXPECT_TRUE(dev_.msix().function_masked());
  WriteConfig(dev_, cap_ + kMsixTable, 0);
  WriteConfig(dev_, cap_ + kMsixPba, 0xffffffff);
  EXPECT_EQ(ReadConfig(dev_, cap_ + kMsixTable), kTableOffset | kTableBar);
  EXPECT_EQ(ReadConfig(dev_, cap_ + kMsixPba), kPbaOffset | kPbaBar);
  SetControl(0);
  EXPECT_EQ(ReadConfig16(dev_, cap_ + kMsixControl), kVectors - 1);
  EXPECT_FALSE(dev_.msix_enabled());
}

TEST_F(MsixTest, TableStartsMaskedAndReadsBack) {
  for (uint32_t v : {0u, 1u, kVectors - 1}) {
    EXPECT_EQ(ReadBar32(dev_, kTableBar, Entry(v, kMsixEntryAddrLo)), 0u);
    EXPECT_EQ(ReadBar32(dev_, kTableBar, Entry(v, kMsixEntryAddrHi)), 0u);
    EXPECT_EQ(ReadBar32(dev_, kTableBar, Entry(v, kMsixEntryData)), 0u);
    EXPECT_EQ(ReadBar32(dev_, kTableBar, Entry(v, kMsixEntryVectorControl)), kMsixVectorMasked);
  }
  Program(5, 0x00000001fee01000ull, 0x4023, false);
  EXPECT_EQ(ReadBar32(dev_, kTableBar, Entry(5, kMsixEntryAddrLo)), 0xfee01000u);
  EXPECT_EQ(ReadBar32(dev_, kTableBar, Entry(5, kMsixEntryAddrHi)), 1u);
  EXPECT_EQ(ReadBar32(dev_, kTableBar, Entry(5, kMsixEntryData)), 0x4023u);
  EXPECT_EQ(ReadBar32(dev_, kTableBar, Entry(5, kMsixEntryVectorControl)), 0u);
  EXPECT_EQ(dev_.msix().message_address(5), 0x00000001fee01000ull);
  EXPECT_EQ(dev_.msix().message_data(5), 0x4023u);
  EXPECT_FALSE(dev_.msix().entry_masked(5));
  EXPECT_TRUE(dev_.msix().entry_written(5));
  EXPECT_FALSE(dev_.msix().entry_written(4));
  // Vector control: only the Mask bit is writable.
  ASSERT_TRUE(WriteBar32(dev_, kTableBar, Entry(5, kMsixEntryVectorControl), 0xffffffff).ok());
  EXPECT_EQ(ReadBar32(dev_, kTableBar, Entry(5, kMsixEntryVectorControl)), kMsixVectorMasked);
  // A 64-bit access to the address works as well.
  std::array<uint8_t, 8> q{};
  ASSERT_TRUE(dev_.ReadRegion(kTableBar, Entry(5, kMsixEntryAddrLo), q).ok());
  uint64_t addr;
  std::memcpy(&addr, q.data(), 8);
  EXPECT_EQ(addr, 0x00000001fee01000ull);
  // None of this reached the device's own BAR handlers.
  EXPECT_TRUE(dev_.bar_reads.empty());
  EXPECT_TRUE(dev_.bar_writes.empty());
}

TEST_F(MsixTest, AccessesOutsideTheWindowsReachTheDevice) {
  EXPECT_EQ(ReadBar32(dev_, kTableBar, kTableOffset - 4), 0xababababu);
  EXPECT_EQ(ReadBar32(dev_, kTableBar, kTableOffset + kVectors * 16), 0xababababu);
  EXPECT_EQ(ReadBar32(dev_, kPbaBar, 0x10), 0xababababu);  // just past the 16-byte PBA
  ASSERT_TRUE(WriteBar32(dev_, 0, 0x2000, 1).ok());        // same offset, other BAR
  ASSERT_EQ(dev_.bar_reads.size(), 3u);
  EXPECT_EQ(dev_.bar_reads[0].bar, kTableBar);
  EXPECT_EQ(dev_.bar_reads[0].offset, kTableOffset - 4);
  ASSERT_EQ(dev_.bar_writes.size(), 1u);
  EXPECT_EQ(dev_.bar_writes[0].bar, 0);
  // Straddling the edge of the table is refused.
  std::array<uint8_t, 8> b{};
  EXPECT_EQ(dev_.ReadRegion(kTableBar, kTableOffset - 4, b).code(), EINVAL);
  EXPECT_EQ(dev_.WriteRegion(kPbaBar, 0xc, b).code(), EINVAL);
  // PBA writes are ignored.
  ctx_.pending.insert({kMsix, 1});
  ASSERT_TRUE(WriteBar32(dev_, kPbaBar, kPbaOffset, 0).ok());
  EXPECT_EQ(ReadPba(), 0x2u);
}

TEST_F(MsixTest, DisabledMsixDropsTriggers) {
  EXPECT_FALSE(dev_.TriggerMsix(0));
  EXPECT_TRUE(ctx_.fired.empty());
  EXPECT_EQ(ReadPba(), 0u);
  SetControl(kMsixControlEnable);
  EXPECT_TRUE(ctx_.fired.empty());  // nothing was kept for later
}

TEST_F(MsixTest, QemuStyleUnwrittenTableDoesNotMask) {
  // QEMU never writes our table: entries read masked, yet vectors fire once MSI-X is on.
  SetControl(kMsixControlEnable);
  EXPECT_TRUE(dev_.msix().entry_masked(3));
  EXPECT_TRUE(dev_.TriggerMsix(3));
  EXPECT_TRUE(dev_.TriggerMsix(kVectors - 1));
  EXPECT_EQ(ctx_.fired, (std::vector<IrqId>{{kMsix, 3}, {kMsix, kVectors - 1}}));
  EXPECT_FALSE(dev_.TriggerMsix(kVectors));  // out of range
  EXPECT_EQ(ctx_.fired.size(), 2u);
}

TEST_F(MsixTest, FunctionMaskPendsAndDeliversOnClear) {
  SetControl(kMsixControlEnable | kMsixControlFunctionMask);
  EXPECT_FALSE(dev_.TriggerMsix(1));
  EXPECT_FALSE(dev_.TriggerMsix(65));
  EXPECT_FALSE(dev_.TriggerMsix(1));  // still one pending bit
  EXPECT_TRUE(ctx_.fired.empty());
  EXPECT_EQ(ReadPba(0), 0x2u);
  EXPECT_EQ(ReadPba(1), 0x2u);  // vector 65
  EXPECT_TRUE(dev_.msix().pending(65));
  SetControl(kMsixControlEnable);
  EXPECT_EQ(ctx_.fired, (std::vector<IrqId>{{kMsix, 1}, {kMsix, 65}}));
  EXPECT_EQ(ReadPba(0), 0u);
  EXPECT_EQ(ReadPba(1), 0u);
}

TEST_F(MsixTest, WrittenEntryMaskPendsUntilUnmasked) {
  SetControl(kMsixControlEnable);
  Program(2, 0xfee00000, 0x41, /*masked=*/true);
  Program(4, 0xfee00000, 0x42, /*masked=*/false);
  EXPECT_FALSE(dev_.TriggerMsix(2));
  EXPECT_TRUE(dev_.TriggerMsix(4));
  EXPECT_EQ(ctx_.fired, (std::vector<IrqId>{{kMsix, 4}}));
  EXPECT_EQ(ReadPba(), 1u << 2);
  // Unmasking the entry delivers it.
  ASSERT_TRUE(WriteBar32(dev_, kTableBar, Entry(2, kMsixEntryVectorControl), 0).ok());
  EXPECT_EQ(ctx_.fired, (std::vector<IrqId>{{kMsix, 4}, {kMsix, 2}}));
  EXPECT_EQ(ReadPba(), 0u);
  // Function mask wins over an unmasked entry; an entry masked meanwhile keeps its bit.
  SetControl(kMsixControlEnable | kMsixControlFunctionMask);
  EXPECT_FALSE(dev_.TriggerMsix(2));
  EXPECT_FALSE(dev_.TriggerMsix(4));
  ASSERT_TRUE(
      WriteBar32(dev_, kTableBar, Entry(4, kMsixEntryVectorControl), kMsixVectorMasked).ok());
  SetControl(kMsixControlEnable);
  EXPECT_EQ(ctx_.Count(kMsix, 2), 2u);
  EXPECT_EQ(ctx_.Count(kMsix, 4), 1u);
  EXPECT_EQ(ReadPba(), 1u << 4);
}

TEST_F(MsixTest, PbaReflectsSessionPendingVectors) {
  // QEMU masks a vector with SET_IRQS: the session's IRQ table keeps it pending, and a PBA
  // read (forwarded by QEMU) must show it.
  SetControl(kMsixControlEnable);
  ctx_.masked.insert({kMsix, 7});
  ctx_.masked.insert({kMsix, 64});
  EXPECT_FALSE(dev_.TriggerMsix(7));
  EXPECT_FALSE(dev_.TriggerMsix(64));
  EXPECT_EQ(ReadPba(0), 1u << 7);
  EXPECT_EQ(ReadPba(1), 1u);
  // Narrow PBA reads see the same bits.
  std::array<uint8_t, 1> byte{};
  ASSERT_TRUE(dev_.ReadRegion(kPbaBar, kPbaOffset, byte).ok());
  EXPECT_EQ(byte[0], 0x80u);
  ctx_.Unmask(kMsix, 7);
  EXPECT_EQ(ctx_.fired, (std::vector<IrqId>{{kMsix, 7}}));
  EXPECT_EQ(ReadPba(0), 0u);
  EXPECT_EQ(ReadPba(1), 1u);
}

TEST_F(MsixTest, IntxSuppressedWhileMsixEnabled) {
  SetControl(kMsixControlEnable);
  dev_.SetIntx(true);
  EXPECT_EQ(ctx_.Count(wire::kPciIntxIrqIndex, 0), 0u);
  EXPECT_TRUE(ReadConfig16(dev_, kStatus) & kStatusInterrupt);
  // MSI-X off with the line still asserted: INTx fires.
  SetControl(0);
  EXPECT_EQ(ctx_.Count(wire::kPciIntxIrqIndex, 0), 1u);
  dev_.SetIntx(false);
  dev_.SetIntx(true);
  EXPECT_EQ(ctx_.Count(wire::kPciIntxIrqIndex, 0), 2u);
  // A session-side INTx unmask while MSI-X is on does not fire either.
  SetControl(kMsixControlEnable);
  dev_.OnIrqMaskChanged(wire::kPciIntxIrqIndex, 0, false);
  EXPECT_EQ(ctx_.Count(wire::kPciIntxIrqIndex, 0), 2u);
}

TEST_F(MsixTest, ResetMasksEntriesAndClearsPending) {
  SetControl(kMsixControlEnable | kMsixControlFunctionMask);
  Program(0, 0xfee00000, 0x30, false);
  EXPECT_FALSE(dev_.TriggerMsix(0));
  EXPECT_TRUE(dev_.msix().pending(0));
  ASSERT_TRUE(dev_.Reset().ok());
  EXPECT_FALSE(dev_.msix_enabled());
  EXPECT_FALSE(dev_.msix().function_masked());
  EXPECT_FALSE(dev_.msix().pending(0));
  EXPECT_EQ(ReadBar32(dev_, kTableBar, Entry(0, kMsixEntryVectorControl)), kMsixVectorMasked);
  EXPECT_EQ(ReadBar32(dev_, kTableBar, Entry(0, kMsixEntryData)), 0u);
  EXPECT_EQ(ReadConfig16(dev_, cap_ + kMsixControl), kVectors - 1);
  SetControl(kMsixControlEnable);
  EXPECT_TRUE(ctx_.fired.empty());
}

TEST_F(MsixTest, NoClientNoInterrupt) {
  SetControl(kMsixControlEnable);
  dev_.Detach();
  EXPECT_FALSE(dev_.TriggerMsix(0));
  EXPECT_FALSE(dev_.msix().pending(0));
  dev_.Attach(&ctx_);
  EXPECT_TRUE(dev_.TriggerMsix(0));
}

TEST(MsixLayout, Validation) {
  auto make = [] {
    auto dev = std::make_unique<TestPciDevice>();
    EXPECT_TRUE(dev->AddBar(0, {.size = 0x4000, .flags = 0}).ok());
    EXPECT_TRUE(dev->AddBar(1, {.size = 0x40, .flags = kBarIo}).ok());
    EXPECT_TRUE(dev->AddBar(2, {.size = 0x4000, .flags = kBarMem64}).ok());
    return dev;
  };
  auto dev = make();
  EXPECT_EQ(dev->EnableMsix(0, 0, 0, 0, 0x1000).code(), EINVAL);
  EXPECT_EQ(dev->EnableMsix(2049, 0, 0, 2, 0).code(), EINVAL);
  EXPECT_EQ(dev->EnableMsix(4, 5, 0, 0, 0x1000).code(), EINVAL);     // BAR 5 undeclared
  EXPECT_EQ(dev->EnableMsix(4, 3, 0, 0, 0x1000).code(), EINVAL);     // upper half of BAR 2
  EXPECT_EQ(dev->EnableMsix(4, 1, 0, 0, 0x1000).code(), EINVAL);     // I/O BAR
  EXPECT_EQ(dev->EnableMsix(4, 0, 0x4, 0, 0x1000).code(), EINVAL);   // misaligned table
  EXPECT_EQ(dev->EnableMsix(4, 0, 0, 0, 0x1004).code(), EINVAL);     // misaligned PBA
  EXPECT_EQ(dev->EnableMsix(4, 0, 0x3fc8, 2, 0).code(), EINVAL);     // table past the end
  EXPECT_EQ(dev->EnableMsix(4, 0, 0, 0, 0x4000).code(), EINVAL);     // PBA past the end
  EXPECT_EQ(dev->EnableMsix(4, 0, 0x100, 0, 0x130).code(), EINVAL);  // overlap
  EXPECT_FALSE(dev->config().FindCapability(kCapIdMsix));            // nothing half-added
  EXPECT_EQ(dev->DescribeIrq(wire::kPciMsixIrqIndex).count, 0u);
  EXPECT_TRUE(dev->EnableMsix(4, 0, 0x100, 0, 0x140).ok());
}

TEST(MsixLayout, LimitsAndMmapAreas) {
  {
    TestPciDevice dev;
    ASSERT_TRUE(dev.AddBar(0, {.size = 0x8000, .flags = 0}).ok());
    ASSERT_TRUE(dev.AddBar(2, {.size = 0x1000, .flags = 0}).ok());
    EXPECT_TRUE(dev.EnableMsix(2048, 0, 0, 2, 0).ok());  // 32 KiB table fills BAR 0
    EXPECT_EQ(dev.DescribeIrq(wire::kPciMsixIrqIndex).count, 2048u);
    EXPECT_EQ(dev.EnableMsix(1, 2, 0x800, 2, 0x900).code(), EEXIST);
  }
  {
    // The table may not share a page with a mmappable area; a separate page is fine.
    TestPciDevice dev;
    ASSERT_TRUE(dev.AddBar(0, {.size = 0x4000,
                               .flags = 0,
                               .mmap_fd = 0,
                               .mmap_offset = 0,
                               .mmap_areas = {{0x1000, 0x1000}}})
                    .ok());
    EXPECT_EQ(dev.EnableMsix(4, 0, 0x1f00, 0, 0x3000).code(), EINVAL);
    EXPECT_EQ(dev.EnableMsix(4, 0, 0x2000, 0, 0x1800).code(), EINVAL);
    EXPECT_TRUE(dev.EnableMsix(4, 0, 0x2000, 0, 0x2800).ok());
    // Nor can a BAR declared afterwards map over it.
    EXPECT_EQ(dev.AddBar(0, {.size = 0x4000,
                             .flags = 0,
                             .mmap_fd = 0,
                             .mmap_offset = 0,
                             .mmap_areas = {{0x2000, 0x1000}}})
                  .code(),
              EINVAL);
  }
}

// The whole path through a real session: IRQ info, SET_IRQS eventfd and mask, a config write
// that enables MSI-X, and REGION_READ of the PBA.
TEST(MsixSession, PbaReadThroughTheSessionShowsMaskedVector) {
  TestPciDevice dev;
  ASSERT_TRUE(dev.AddBar(0, {.size = 0x1000, .flags = 0}).ok());
  ASSERT_TRUE(dev.AddBar(1, {.size = 0x1000, .flags = 0}).ok());
  ASSERT_TRUE(dev.EnableMsix(4, 1, 0x0, 1, 0x800).ok());
  vfu::testing::SessionHarness h(&dev);
  h.Negotiate();

  auto info = h.CallStruct(wire::Command::kDeviceGetIrqInfo,
                           wire::IrqInfo{sizeof(wire::IrqInfo), 0, kMsix, 0});
  ASSERT_FALSE(info.is_error());
  ASSERT_EQ(info.payload.size(), sizeof(wire::IrqInfo));
  auto irq = proto::Load<wire::IrqInfo>(info.payload);
  EXPECT_EQ(irq.count, 4u);
  EXPECT_TRUE(irq.flags & wire::kIrqInfoMaskable);

  UniqueFd efd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  ASSERT_TRUE(efd.valid());
  int fds[1] = {efd.get()};
  auto set =
      h.CallStruct(wire::Command::kDeviceSetIrqs,
                   wire::IrqSet{sizeof(wire::IrqSet),
                                wire::kIrqSetDataEventfd | wire::kIrqSetActionTrigger, kMsix, 3, 1},
                   fds);
  ASSERT_FALSE(set.is_error()) << set.error_no();

  // Guest enables MSI-X: QEMU forwards the config write.
  std::vector<uint8_t> write;
  proto::Append(write, wire::RegionAccess{dev.msix().cap_offset() + kMsixControl,
                                          wire::kPciConfigRegionIndex, 2});
  write.push_back(0);
  write.push_back(0x80);
  ASSERT_FALSE(h.Call(wire::Command::kRegionWrite, write).is_error());
  EXPECT_TRUE(dev.msix_enabled());

  // Guest masks vector 3 in QEMU's emulated table: QEMU sends SET_IRQS MASK.
  auto mask =
      h.CallStruct(wire::Command::kDeviceSetIrqs,
                   wire::IrqSet{sizeof(wire::IrqSet),
                                wire::kIrqSetDataNone | wire::kIrqSetActionMask, kMsix, 3, 1});
  ASSERT_FALSE(mask.is_error());
  EXPECT_FALSE(dev.TriggerMsix(3));

  auto read = h.CallStruct(wire::Command::kRegionRead, wire::RegionAccess{0x800, 1, 8});
  ASSERT_FALSE(read.is_error()) << read.error_no();
  ASSERT_EQ(read.payload.size(), sizeof(wire::RegionAccess) + 8);
  EXPECT_EQ(read.payload[sizeof(wire::RegionAccess)], 1u << 3);

  // Unmask: the session delivers the pending vector and the PBA bit clears.
  auto unmask =
      h.CallStruct(wire::Command::kDeviceSetIrqs,
                   wire::IrqSet{sizeof(wire::IrqSet),
                                wire::kIrqSetDataNone | wire::kIrqSetActionUnmask, kMsix, 3, 1});
  ASSERT_FALSE(unmask.is_error());
  uint64_t count = 0;
  EXPECT_EQ(::read(efd.get(), &count, sizeof(count)), static_cast<ssize_t>(sizeof(count)));
  EXPECT_EQ(count, 1u);
  read = h.CallStruct(wire::Command::kRegionRead, wire::RegionAccess{0x800, 1, 8});
  ASSERT_FALSE(read.is_error());
  EXPECT_EQ(read.payload[sizeof(wire::RegionAccess)], 0u);
  EXPECT_TRUE(dev.TriggerMsix(3));
}

}  // namespace
}  // namespace vfu::pci::testing
