// PciDevice's config space as a client sees it through Read/WriteRegion: identity and
// read-only fields, the automatic PCI Express and Power Management capabilities, the full
// capability chain of a device with MSI-X and vendor capabilities, INTx rules and reset.
#include "server/pci/pci_device.h"

#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "server/pci/capabilities.h"
#include "tests/unit/pci/pci_test_util.h"

namespace vfu::pci::testing {
namespace {

TEST(PciDeviceConfig, IdentityAndReadOnlyHeader) {
  TestPciDevice dev;
  EXPECT_EQ(ReadConfig16(dev, kVendorId), kTestIdentity.vendor_id);
  EXPECT_EQ(ReadConfig16(dev, kDeviceId), kTestIdentity.device_id);
  EXPECT_EQ(ReadConfig(dev, kRevisionId), 0x01000001u);  // class 01:00:00, revision 1
  EXPECT_EQ(ReadConfig16(dev, kSubsystemVendorId), kTestIdentity.subsystem_vendor_id);
  EXPECT_EQ(ReadConfig16(dev, kSubsystemId), kTestIdentity.subsystem_id);
  EXPECT_EQ(ReadConfig8(dev, kHeaderType), 0u);

  uint8_t cap_ptr = ReadConfig8(dev, kCapabilitiesPointer);
  WriteConfig(dev, kVendorId, 0xffffffff);
  WriteConfig(dev, kRevisionId, 0);
  WriteConfig(dev, kCacheLineSize, 0xffffffff);
  WriteConfig(dev, kSubsystemVendorId, 0);
  WriteConfig(dev, kCapabilitiesPointer, 0);
  EXPECT_EQ(ReadConfig16(dev, kVendorId), kTestIdentity.vendor_id);
  EXPECT_EQ(ReadConfig16(dev, kDeviceId), kTestIdentity.device_id);
  EXPECT_EQ(ReadConfig(dev, kRevisionId), 0x01000001u);
  EXPECT_EQ(ReadConfig8(dev, kHeaderType), 0u);
  EXPECT_EQ(ReadConfig16(dev, kSubsystemVendorId), kTestIdentity.subsystem_vendor_id);
  EXPECT_EQ(ReadConfig8(dev, kCapabilitiesPointer), cap_ptr);
}

TEST(PciDeviceConfig, InterruptLineWritablePinReadOnly) {
  TestPciDevice dev;
  EXPECT_EQ(ReadConfig8(dev, kInterruptPin), 1u);
  WriteConfig16(dev, kInterruptLine, 0x040a);
  EXPECT_EQ(ReadConfig8(dev, kInterruptLine), 0x0au);
  EXPECT_EQ(ReadConfig8(dev, kInterruptPin), 1u);
  TestPciDevice no_intx(kExpressConfigSize, /*has_intx=*/false);
  EXPECT_EQ(ReadConfig8(no_intx, kInterruptPin), 0u);
  EXPECT_EQ(no_intx.DescribeIrq(wire::kPciIntxIrqIndex).count, 0u);
}

TEST(PciDeviceConfig, CommandAndStatusRegisters) {
  TestPciDevice dev;
  WriteConfig16(dev, kCommand, 0xffff);
  EXPECT_EQ(ReadConfig16(dev, kCommand), kCommandIo | kCommandMemory | kCommandBusMaster |
                                             kCommandParity | kCommandSerr | kCommandIntxDisable);
  dev.config().Set16(kStatus, dev.config().Get16(kStatus) | 0x4000);  // Signaled System Error
  uint16_t status = ReadConfig16(dev, kStatus);
  EXPECT_TRUE(status & kStatusCapList);
  EXPECT_TRUE(status & 0x4000);
  WriteConfig16(dev, kStatus, 0x4000 | kStatusCapList | kStatusInterrupt);
  EXPECT_EQ(ReadConfig16(dev, kStatus), status & ~0x4000);
}

TEST(PciDeviceConfig, BarSizingThroughTheRegion) {
  TestPciDevice dev;
  ASSERT_TRUE(dev.AddBar(0, {.size = 0x4000, .flags = 0}).ok());
  ASSERT_TRUE(dev.AddBar(2, {.size = 0x10000, .flags = kBarMem64 | kBarPrefetch}).ok());
  ASSERT_TRUE(dev.AddBar(4, {.size = 0x40, .flags = kBarIo}).ok());
  WriteConfig(dev, kBar0, 0xffffffff);
  WriteConfig(dev, kBar0 + 8, 0xffffffff);
  WriteConfig(dev, kBar0 + 12, 0xffffffff);
  WriteConfig(dev, kBar0 + 16, 0xffffffff);
  WriteConfig(dev, kBar0 + 20, 0xffffffff);
  EXPECT_EQ(ReadConfig(dev, kBar0), 0xffffc000u);
  EXPECT_EQ(ReadConfig(dev, kBar0 + 4), 0u);
  EXPECT_EQ(ReadConfig(dev, kBar0 + 8), 0xffff0000u | kBarMem64 | kBarPrefetch);
  EXPECT_EQ(ReadConfig(dev, kBar0 + 12), 0xffffffffu);
  EXPECT_EQ(ReadConfig(dev, kBar0 + 16), 0xffffffc0u | kBarIo);
  EXPECT_EQ(ReadConfig(dev, kBar0 + 20), 0u);
  EXPECT_EQ(dev.DescribeRegion(2).size, 0x10000u);
  EXPECT_EQ(dev.DescribeRegion(3).size, 0u);  // upper half of BAR 2
  EXPECT_EQ(dev.DescribeRegion(wire::kPciConfigRegionIndex).size, kExpressConfigSize);
}

TEST(PciDeviceCapabilities, ConventionalDeviceHasNone) {
  TestPciDevice dev(kConventionalConfigSize);
  EXPECT_FALSE(ReadConfig16(dev, kStatus) & kStatusCapList);
  EXPECT_TRUE(WalkCapabilities(dev).empty());
  EXPECT_EQ(dev.express_cap_offset(), 0u);
  EXPECT_EQ(dev.pm_cap_offset(), 0u);
  ASSERT_TRUE(dev.AddPowerManagement().ok());
  EXPECT_EQ(WalkCapabilities(dev), std::vector<uint32_t>{dev.pm_cap_offset()});
  EXPECT_EQ(dev.AddPowerManagement().code(), EEXIST);
}

TEST(PciDeviceCapabilities, ExpressCapabilityV2Endpoint) {
  TestPciDevice dev;
  uint32_t cap = dev.express_cap_offset();
  ASSERT_NE(cap, 0u);
  EXPECT_EQ(dev.config().FindCapability(kCapIdExpress), std::optional<uint32_t>(cap));
  EXPECT_EQ(ReadConfig8(dev, cap), kCapIdExpress);
  uint16_t flags = ReadConfig16(dev, cap + kExpFlags);
  EXPECT_EQ(flags & 0xf, 2u);                // version 2
  EXPECT_EQ(flags & kExpFlagsTypeMask, 0u);  // PCI Express endpoint
  uint32_t devcap = ReadConfig(dev, cap + kExpDevCap);
  EXPECT_LE(devcap & 0x7, 1u);                                  // max payload 128 or 256 bytes
  EXPECT_EQ(ReadConfig(dev, cap + kExpLnkCap) & 0x3ff, 0x11u);  // 2.5 GT/s, x1
  EXPECT_EQ(ReadConfig16(dev, cap + kExpLnkSta) & 0x3ff, 0x11u);
  EXPECT_EQ(ReadConfig16(dev, cap + kExpDevCtl), kExpDevCtlReset);
  // The whole capability is read-only except the control registers' bits.
  for (uint32_t reg : {kExpFlags, kExpDevCap, kExpLnkCap, kExpLnkSta, kExpDevCap2, kExpLnkCap2}) {
    uint32_t before = ReadConfig(dev, cap + reg);
    WriteConfig(dev, cap + reg, ~before, reg % 4 == 0 ? 4 : 2);
    EXPECT_EQ(ReadConfig(dev, cap + reg), before) << "register " << reg;
  }
}

TEST(PciDeviceCapabilities, ExpressDeviceControlAsLinuxProgramsIt) {
  TestPciDevice dev;
  uint32_t cap = dev.express_cap_offset();
  // Linux: error reporting enables, relaxed ordering, MPS 256 (001), extended tag, no snoop,
  // MRRS 4096 (101).
  uint16_t value = kExpDevCtlCere | kExpDevCtlNfere | kExpDevCtlFere | kExpDevCtlUrre |
                   kExpDevCtlRelaxedOrdering | (1u << 5) | kExpDevCtlExtTag | kExpDevCtlNoSnoop |
                   (5u << 12);
  WriteConfig16(dev, cap + kExpDevCtl, value);
  EXPECT_EQ(ReadConfig16(dev, cap + kExpDevCtl), value);
  // Phantom functions, aux power and bridge-retry/FLR bits are not writable.
  WriteConfig16(dev, cap + kExpDevCtl, 0xffff);
  EXPECT_EQ(ReadConfig16(dev, cap + kExpDevCtl), kExpDevCtlWritable);
  WriteConfig16(dev, cap + kExpDevCtl, 0);
  EXPECT_EQ(ReadConfig16(dev, cap + kExpDevCtl), 0u);
  // Device status error bits are RW1C.
  dev.config().Set16(cap + kExpDevSta, 0x0005);
  WriteConfig16(dev, cap + kExpDevSta, 0x0001);
  EXPECT_EQ(ReadConfig16(dev, cap + kExpDevSta), 0x0004u);
  // Link control: the endpoint bits stick, the others do not.
  WriteConfig16(dev, cap + kExpLnkCtl, 0xffff);
  EXPECT_EQ(ReadConfig16(dev, cap + kExpLnkCtl), kExpLnkCtlWritable);
}

TEST(PciDeviceCapabilities, PowerManagementD0AndD3Hot) {
  TestPciDevice dev;
  uint32_t pm = dev.pm_cap_offset();
  ASSERT_NE(pm, 0u);
  EXPECT_EQ(ReadConfig8(dev, pm), kCapIdPowerManagement);
  EXPECT_EQ(ReadConfig16(dev, pm + kPmPmc) & 0x7, 3u);  // version 3
  uint16_t pmcsr = ReadConfig16(dev, pm + kPmPmcsr);
  EXPECT_EQ(pmcsr & kPmcsrStateMask, 0u);  // D0
  EXPECT_TRUE(pmcsr & kPmcsrNoSoftReset);
  WriteConfig16(dev, pm + kPmPmcsr, kPowerStateD3Hot);
  EXPECT_EQ(dev.power_state(), kPowerStateD3Hot);
  EXPECT_EQ(ReadConfig16(dev, pm + kPmPmcsr), kPmcsrNoSoftReset | kPowerStateD3Hot);
  // D1 and D2 are not supported: the write changes nothing.
  WriteConfig16(dev, pm + kPmPmcsr, 1);
  EXPECT_EQ(dev.power_state(), kPowerStateD3Hot);
  WriteConfig16(dev, pm + kPmPmcsr, 2);
  EXPECT_EQ(dev.power_state(), kPowerStateD3Hot);
  // Back to D0 without a soft reset: device state is kept.
  WriteConfig16(dev, kCommand, kCommandMemory);
  WriteConfig16(dev, pm + kPmPmcsr, 0xffff & ~kPmcsrStateMask);
  EXPECT_EQ(dev.power_state(), kPowerStateD0);
  EXPECT_EQ(ReadConfig16(dev, pm + kPmPmcsr), kPmcsrNoSoftReset);  // PME bits stay zero
  EXPECT_EQ(ReadConfig16(dev, kCommand), kCommandMemory);
  EXPECT_EQ(dev.device_resets, 0);
}

TEST(PciDeviceCapabilities, ExpressDeviceHasZeroExtendedHeader) {
  TestPciDevice dev;
  EXPECT_EQ(ReadConfig(dev, kExtendedCapStart), 0u);
  EXPECT_TRUE(WalkExtendedCapabilities(dev).empty());
}

// A virtio-like device: PCIe + PM (automatic), MSI-X, five vendor capabilities and two
// extended capabilities. The walk from 0x34 sees each exactly once and ends at 0.
TEST(PciDeviceCapabilities, ChainWalkVisitsEveryCapabilityOnce) {
  TestPciDevice dev;
  ASSERT_TRUE(dev.AddBar(1, {.size = 0x1000, .flags = 0}).ok());
  ASSERT_TRUE(dev.AddBar(4, {.size = 0x4000, .flags = kBarMem64 | kBarPrefetch}).ok());
  ASSERT_TRUE(dev.EnableMsix(8, 1, 0x0, 1, 0x800).ok());
  std::vector<uint32_t> vendor;
  for (uint8_t type = 1; type <= 5; ++type) {
    std::vector<uint8_t> body = {type, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0};
    if (type == 2) body.resize(17);  // notify_off_multiplier
    if (type == 5) body.resize(17);  // pci_cfg_data
    auto off = dev.config().AddVendorCapability(body);
    ASSERT_TRUE(off) << off.error().message;
    vendor.push_back(*off);
  }
  auto ext1 = dev.config().AddExtendedCapability(0x000b, 1, std::vector<uint8_t>(8, 0));
  auto ext2 = dev.config().AddExtendedCapability(0x0023, 1, std::vector<uint8_t>(4, 0));
  ASSERT_TRUE(ext1 && ext2);

  std::vector<uint32_t> walk = WalkCapabilities(dev);
  std::vector<uint32_t> expected = {dev.express_cap_offset(), dev.pm_cap_offset(),
                                    dev.msix().cap_offset()};
  expected.insert(expected.end(), vendor.begin(), vendor.end());
  EXPECT_EQ(walk, expected);
  std::set<uint32_t> unique(walk.begin(), walk.end());
  EXPECT_EQ(unique.size(), walk.size());
  for (uint32_t off : walk) {
    EXPECT_GE(off, 0x40u);
    EXPECT_LT(off, 0x100u);
    EXPECT_EQ(off % 4, 0u);
  }
  std::vector<uint8_t> ids;
  for (uint32_t off : walk) ids.push_back(ReadConfig8(dev, off));
  EXPECT_EQ(ids,
            (std::vector<uint8_t>{kCapIdExpress, kCapIdPowerManagement, kCapIdMsix, kCapIdVendor,
                                  kCapIdVendor, kCapIdVendor, kCapIdVendor, kCapIdVendor}));
  EXPECT_EQ(ReadConfig8(dev, walk.back() + kCapNextOffset), 0u);
  EXPECT_EQ(WalkExtendedCapabilities(dev), (std::vector<uint32_t>{*ext1, *ext2}));
  EXPECT_EQ(ReadConfig(dev, *ext1) & 0xffff, 0x000bu);
  EXPECT_EQ(ReadConfig(dev, *ext2) >> 20, 0u);
}

TEST(PciDeviceIntx, FiresOnlyWhenAllowed) {
  TestPciDevice dev;
  FakeContext ctx;
  dev.Attach(&ctx);
  dev.SetIntx(true);
  EXPECT_EQ(ctx.Count(wire::kPciIntxIrqIndex, 0), 1u);
  EXPECT_TRUE(ReadConfig16(dev, kStatus) & kStatusInterrupt);
  dev.SetIntx(false);
  EXPECT_FALSE(ReadConfig16(dev, kStatus) & kStatusInterrupt);

  // Interrupt Disable: the status bit still follows the line, nothing is signalled; clearing
  // the bit with the line asserted fires it.
  WriteConfig16(dev, kCommand, kCommandIntxDisable);
  dev.SetIntx(true);
  EXPECT_EQ(ctx.Count(wire::kPciIntxIrqIndex, 0), 1u);
  EXPECT_TRUE(ReadConfig16(dev, kStatus) & kStatusInterrupt);
  WriteConfig16(dev, kCommand, 0);
  EXPECT_EQ(ctx.Count(wire::kPciIntxIrqIndex, 0), 2u);
  dev.Detach();
}

TEST(PciDeviceReset, RestoresConfigSpaceAndCallsTheDevice) {
  TestPciDevice dev;
  ASSERT_TRUE(dev.AddBar(0, {.size = 0x1000, .flags = 0}).ok());
  ASSERT_TRUE(dev.EnableMsix(4, 0, 0x800, 0, 0xc00).ok());
  std::vector<uint8_t> before(kExpressConfigSize);
  ASSERT_TRUE(dev.ReadRegion(wire::kPciConfigRegionIndex, 0, before).ok());

  WriteConfig(dev, kBar0, 0xfe000000);
  WriteConfig16(dev, kCommand, kCommandMemory | kCommandBusMaster);
  WriteConfig(dev, kInterruptLine, 0x0b, 1);
  WriteConfig16(dev, dev.express_cap_offset() + kExpDevCtl, 0);
  WriteConfig16(dev, dev.pm_cap_offset() + kPmPmcsr, kPowerStateD3Hot);
  WriteConfig16(dev, dev.msix().cap_offset() + kMsixControl,
                kMsixControlEnable | kMsixControlFunctionMask);
  ASSERT_TRUE(WriteBar32(dev, 0, 0x800 + kMsixEntryVectorControl, 0).ok());
  EXPECT_TRUE(dev.msix_enabled());

  ASSERT_TRUE(dev.Reset().ok());
  EXPECT_EQ(dev.device_resets, 1);
  std::vector<uint8_t> after(kExpressConfigSize);
  ASSERT_TRUE(dev.ReadRegion(wire::kPciConfigRegionIndex, 0, after).ok());
  EXPECT_EQ(after, before);
  EXPECT_FALSE(dev.msix_enabled());
  EXPECT_EQ(dev.power_state(), kPowerStateD0);
  EXPECT_TRUE(dev.msix().entry_masked(0));
  EXPECT_FALSE(dev.msix().entry_written(0));
}

TEST(PciDeviceConfig, ConfigWriteHookSeesEveryWrite) {
  TestPciDevice dev;
  WriteConfig16(dev, kCommand, kCommandBusMaster);
  WriteConfig(dev, 0x200, 0x1234);
  EXPECT_EQ(dev.config_writes,
            (std::vector<std::pair<uint32_t, size_t>>{{kCommand, 2}, {0x200, 4}}));
}

}  // namespace
}  // namespace vfu::pci::testing
