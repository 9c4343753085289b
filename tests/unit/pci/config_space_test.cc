// ConfigSpace on its own: BAR sizing by all-ones writes, read-only / writable / RW1C bits, and
// the standard and extended capability lists.
#include "server/pci/config_space.h"

#include <array>
#include <set>
#include <vector>

#include <gtest/gtest.h>

namespace vfu::pci {
namespace {

uint32_t Read32(const ConfigSpace& c, uint32_t off) {
  std::array<uint8_t, 4> b{};
  c.Read(off, b);
  return b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t{b[3]} << 24);
}

uint16_t Read16(const ConfigSpace& c, uint32_t off) {
  std::array<uint8_t, 2> b{};
  c.Read(off, b);
  return static_cast<uint16_t>(b[0] | (b[1] << 8));
}

void Write32(ConfigSpace& c, uint32_t off, uint32_t v) {
  std::array<uint8_t, 4> b = {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8),
                              static_cast<uint8_t>(v >> 16), static_cast<uint8_t>(v >> 24)};
  c.Write(off, b);
}

void Write16(ConfigSpace& c, uint32_t off, uint16_t v) {
  std::array<uint8_t, 2> b = {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8)};
  c.Write(off, b);
}

// Standard chain from 0x34 as offsets.
std::vector<uint32_t> Walk(const ConfigSpace& c) {
  std::vector<uint32_t> offs;
  if (!(c.Get16(kStatus) & kStatusCapList)) return offs;
  for (uint32_t off = c.Get8(kCapabilitiesPointer); off != 0 && offs.size() < 64;
       off = c.Get8(off + kCapNextOffset)) {
    offs.push_back(off);
  }
  return offs;
}

TEST(ConfigSpaceBarSizing, Memory32Bar) {
  ConfigSpace c;
  ASSERT_TRUE(c.DeclareBar(0, 0x4000, 0).ok());
  EXPECT_EQ(Read32(c, kBar0), 0u);  // 32-bit, non-prefetchable memory
  Write32(c, kBar0, 0xffffffff);
  EXPECT_EQ(Read32(c, kBar0), 0xffffc000u);
  // Assigning an address keeps only the bits above the size.
  Write32(c, kBar0, 0xfebf1234);
  EXPECT_EQ(Read32(c, kBar0), 0xfebf0000u);
  EXPECT_EQ(c.bar_size(0), 0x4000u);
}

TEST(ConfigSpaceBarSizing, Memory64BarBothHalves) {
  ConfigSpace c;
  ASSERT_TRUE(c.DeclareBar(2, 0x100000, kBarMem64).ok());
  uint32_t lo = kBar0 + 8, hi = kBar0 + 12;
  EXPECT_EQ(Read32(c, lo), kBarMem64);
  Write32(c, lo, 0xffffffff);
  Write32(c, hi, 0xffffffff);
  EXPECT_EQ(Read32(c, lo), 0xfff00000u | kBarMem64);
  EXPECT_EQ(Read32(c, hi), 0xffffffffu);  // 1 MiB: every upper bit is an address bit
  Write32(c, lo, 0x12300000);
  Write32(c, hi, 0x00000080);
  EXPECT_EQ(Read32(c, lo), 0x12300000u | kBarMem64);
  EXPECT_EQ(Read32(c, hi), 0x80u);
}

TEST(ConfigSpaceBarSizing, Huge64BarSizesTheUpperHalf) {
  ConfigSpace c;
  ASSERT_TRUE(c.DeclareBar(0, uint64_t{1} << 33, kBarMem64 | kBarPrefetch).ok());
  Write32(c, kBar0, 0xffffffff);
  Write32(c, kBar0 + 4, 0xffffffff);
  EXPECT_EQ(Read32(c, kBar0), kBarMem64 | kBarPrefetch);  // no address bits below 8 GiB
  EXPECT_EQ(Read32(c, kBar0 + 4), 0xfffffffeu);
}

TEST(ConfigSpaceBarSizing, PrefetchableBar) {
  ConfigSpace c;
  ASSERT_TRUE(c.DeclareBar(1, 0x1000, kBarPrefetch).ok());
  Write32(c, kBar0 + 4, 0xffffffff);
  EXPECT_EQ(Read32(c, kBar0 + 4), 0xfffff000u | kBarPrefetch);
}

TEST(ConfigSpaceBarSizing, IoBar) {
  ConfigSpace c;
  ASSERT_TRUE(c.DeclareBar(3, 0x20, kBarIo).ok());
  EXPECT_EQ(Read32(c, kBar0 + 12), kBarIo);
  Write32(c, kBar0 + 12, 0xffffffff);
  EXPECT_EQ(Read32(c, kBar0 + 12), 0xffffffe0u | kBarIo);  // bit 1 reserved, reads zero
}

TEST(ConfigSpaceBarSizing, UnusedBarsAndRomReadZeroAfterAllOnes) {
  ConfigSpace c;
  ASSERT_TRUE(c.DeclareBar(0, 0x1000, 0).ok());
  for (uint32_t off : {kBar0 + 4, kBar0 + 8, kBar0 + 12, kBar0 + 16, kBar0 + 20, kRomAddress}) {
    Write32(c, off, 0xffffffff);
    EXPECT_EQ(Read32(c, off), 0u) << "offset " << off;
  }
}

TEST(ConfigSpaceBarSizing, RejectsBadDeclarations) {
  ConfigSpace c;
  EXPECT_EQ(c.DeclareBar(0, 0x1800, 0).code(), EINVAL);          // not a power of two
  EXPECT_EQ(c.DeclareBar(0, 8, 0).code(), EINVAL);               // memory BARs are >= 16 bytes
  EXPECT_EQ(c.DeclareBar(5, 0x1000, kBarMem64).code(), EINVAL);  // needs BAR 6
  EXPECT_EQ(c.DeclareBar(6, 0x1000, 0).code(), EINVAL);
  EXPECT_EQ(c.DeclareBar(-1, 0x1000, 0).code(), EINVAL);
  EXPECT_TRUE(c.DeclareBar(0, 4, kBarIo).ok());  // I/O BARs may be 4 bytes
}

TEST(ConfigSpaceBits, CommandRegisterWritableBits) {
  ConfigSpace c;
  Write16(c, kCommand, 0xffff);
  EXPECT_EQ(Read16(c, kCommand), kCommandIo | kCommandMemory | kCommandBusMaster | kCommandParity |
                                     kCommandSerr | kCommandIntxDisable);
  Write16(c, kCommand, 0);
  EXPECT_EQ(Read16(c, kCommand), 0u);
}

TEST(ConfigSpaceBits, StatusErrorBitsAreWriteOneToClear) {
  ConfigSpace c;
  c.Set16(kStatus, kStatusErrorBits | kStatusCapList);
  Write16(c, kStatus, 0x8000);  // clear Detected Parity Error only
  EXPECT_EQ(Read16(c, kStatus), (kStatusErrorBits & ~0x8000) | kStatusCapList);
  Write16(c, kStatus, 0);  // writing zeros changes nothing
  EXPECT_EQ(Read16(c, kStatus), (kStatusErrorBits & ~0x8000) | kStatusCapList);
  Write16(c, kStatus, 0xffff);  // CAP_LIST is read-only
  EXPECT_EQ(Read16(c, kStatus), kStatusCapList);
}

TEST(ConfigSpaceBits, HeaderFieldsAreReadOnly) {
  ConfigSpace c;
  c.Set16(kVendorId, 0x1af4);
  c.Set16(kDeviceId, 0x1042);
  c.Set32(kRevisionId, 0x01000001);
  c.Set8(kHeaderType, 0);
  c.Set8(kInterruptPin, 1);
  Write32(c, kVendorId, 0);
  Write32(c, kRevisionId, 0xffffffff);
  Write32(c, kSubsystemVendorId, 0xffffffff);
  Write32(c, kCacheLineSize, 0xffffffff);  // cache line + latency writable, header type + BIST not
  EXPECT_EQ(Read16(c, kVendorId), 0x1af4u);
  EXPECT_EQ(Read16(c, kDeviceId), 0x1042u);
  EXPECT_EQ(Read32(c, kRevisionId), 0x01000001u);
  EXPECT_EQ(Read32(c, kSubsystemVendorId), 0u);
  EXPECT_EQ(Read32(c, kCacheLineSize), 0x0000ffffu);
  // Interrupt line is writable, the pin is not.
  Write16(c, kInterruptLine, 0x050b);
  EXPECT_EQ(c.Get8(kInterruptLine), 0x0bu);
  EXPECT_EQ(c.Get8(kInterruptPin), 1u);
}

TEST(ConfigSpaceCapabilities, ChainLinksInOrderAndSetsCapList) {
  ConfigSpace c;
  EXPECT_FALSE(c.Get16(kStatus) & kStatusCapList);
  EXPECT_EQ(c.Get8(kCapabilitiesPointer), 0u);
  std::vector<uint8_t> body5(5, 0x11), body8(8, 0x22), body2(2, 0x33);
  auto a = c.AddCapability(0x05, body5);
  auto b = c.AddCapability(0x10, body8);
  auto d = c.AddCapability(0x01, body2);
  ASSERT_TRUE(a && b && d);
  EXPECT_EQ(*a, 0x40u);
  EXPECT_EQ(*b, 0x48u);  // 0x40 + 7 bytes, rounded up to a dword
  EXPECT_EQ(*d, 0x54u);
  EXPECT_TRUE(c.Get16(kStatus) & kStatusCapList);
  EXPECT_EQ(Walk(c), (std::vector<uint32_t>{0x40, 0x48, 0x54}));
  EXPECT_EQ(c.Get8(*b), 0x10u);
  EXPECT_EQ(c.Get8(*b + 2), 0x22u);
  EXPECT_EQ(c.Get8(*d + kCapNextOffset), 0u);
  EXPECT_EQ(c.FindCapability(0x10), std::optional<uint32_t>(0x48));
  EXPECT_EQ(c.FindCapability(0x11), std::nullopt);
}

TEST(ConfigSpaceCapabilities, HeaderIsReadOnlyAndBodyFollowsItsMask) {
  ConfigSpace c;
  std::vector<uint8_t> body = {0x00, 0x00, 0x12, 0x34};
  std::vector<uint8_t> mask = {0xff, 0x0f, 0x00, 0x00};
  auto off = c.AddCapability(0x09, body, mask);
  ASSERT_TRUE(off);
  Write32(c, kCapabilitiesPointer, 0);
  Write32(c, *off, 0xffffffff);
  Write32(c, *off + 4, 0xffffffff);
  EXPECT_EQ(c.Get8(kCapabilitiesPointer), *off);
  EXPECT_EQ(c.Get8(*off), 0x09u);
  EXPECT_EQ(c.Get8(*off + 1), 0u);
  EXPECT_EQ(c.Get8(*off + 2), 0xffu);
  EXPECT_EQ(c.Get8(*off + 3), 0x0fu);
  EXPECT_EQ(c.Get8(*off + 4), 0x12u);
  EXPECT_EQ(c.Get8(*off + 5), 0x34u);
  EXPECT_EQ(c.AddCapability(0x09, body, std::vector<uint8_t>(3)).status().code(), EINVAL);
}

TEST(ConfigSpaceCapabilities, VendorCapabilitiesCarryTheirLength) {
  ConfigSpace c;
  // Four virtio-pci style caps: cfg_type, bar, id, padding[2], offset, length (13 bytes).
  std::vector<uint32_t> offs;
  for (uint8_t type = 1; type <= 4; ++type) {
    std::vector<uint8_t> body = {type, 4, 0, 0, 0, 0x00, 0x10, 0, 0, 0x00, 0x10, 0, 0};
    if (type == 2) body.resize(17);  // notify_off_multiplier
    auto off = c.AddVendorCapability(body);
    ASSERT_TRUE(off) << off.error().message;
    offs.push_back(*off);
    EXPECT_EQ(c.Get8(*off), kCapIdVendor);
    EXPECT_EQ(c.Get8(*off + kVendorCapLengthOffset), 3 + body.size());
    EXPECT_EQ(c.Get8(*off + 3), type);
  }
  EXPECT_EQ(offs, (std::vector<uint32_t>{0x40, 0x50, 0x64, 0x74}));
  EXPECT_EQ(Walk(c), offs);
  // The length byte is read-only even when the body is writable.
  std::vector<uint8_t> body = {5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  std::vector<uint8_t> mask(body.size(), 0xff);
  auto cfg = c.AddVendorCapability(body, mask);
  ASSERT_TRUE(cfg);
  Write32(c, *cfg, 0xffffffff);
  EXPECT_EQ(c.Get8(*cfg + kVendorCapLengthOffset), 20u);
  EXPECT_EQ(c.Get8(*cfg + 3), 0xffu);
}

TEST(ConfigSpaceCapabilities, RunsOutOfRoomBelow0x100) {
  ConfigSpace c;
  std::vector<uint8_t> big(150, 0);
  ASSERT_TRUE(c.AddCapability(0x09, big));  // 0x40..0xd8
  auto too_big = c.AddCapability(0x09, std::vector<uint8_t>(60, 0));
  ASSERT_FALSE(too_big);
  EXPECT_EQ(too_big.error().code, ENOSPC);
  ASSERT_TRUE(c.AddCapability(0x09, std::vector<uint8_t>(38, 0)));  // exactly fills 0xd8..0xff
  EXPECT_EQ(Walk(c).size(), 2u);
  EXPECT_EQ(c.AddVendorCapability(std::vector<uint8_t>(253, 0)).status().code(), EINVAL);
}

TEST(ConfigSpaceCapabilities, ExtendedChainFrom0x100) {
  ConfigSpace conventional;
  EXPECT_EQ(conventional.AddExtendedCapability(0x0b, 1, {}).status().code(), EINVAL);

  ConfigSpace c(kExpressConfigSize);
  EXPECT_EQ(c.Get32(kExtendedCapStart), 0u);  // no extended caps: zero header
  EXPECT_EQ(c.FindExtendedCapability(0x0b), std::nullopt);
  std::vector<uint8_t> body(6, 0x5a);
  auto a = c.AddExtendedCapability(0x0b, 1, body);    // vendor-specific extended
  auto b = c.AddExtendedCapability(0x0023, 1, body);  // DVSEC
  ASSERT_TRUE(a && b);
  EXPECT_EQ(*a, 0x100u);
  EXPECT_EQ(*b, 0x10cu);
  EXPECT_EQ(c.Get32(*a), 0x000bu | (1u << 16) | (0x10cu << 20));
  EXPECT_EQ(c.Get32(*b), 0x0023u | (1u << 16));
  EXPECT_EQ(c.Get8(*b + 4), 0x5au);
  EXPECT_EQ(c.FindExtendedCapability(0x23), std::optional<uint32_t>(0x10c));
  Write32(c, *a, 0);  // headers are read-only
  EXPECT_EQ(c.Get32(*a) & 0xffff, 0x0bu);
  EXPECT_EQ(c.AddExtendedCapability(1, 16, {}).status().code(), EINVAL);
}

TEST(ConfigSpaceReset, RestoresPowerOnValuesIncludingCapabilities) {
  ConfigSpace c;
  ASSERT_TRUE(c.DeclareBar(0, 0x1000, 0).ok());
  std::vector<uint8_t> body = {0x77, 0x00};
  std::vector<uint8_t> mask = {0xff, 0x00};
  auto off = c.AddCapability(0x09, body, mask);
  ASSERT_TRUE(off);
  c.SnapshotResetState();
  Write32(c, kBar0, 0xffffffff);
  Write16(c, kCommand, kCommandMemory);
  c.Write(*off + 2, std::vector<uint8_t>{0x01});
  ASSERT_EQ(c.Get8(*off + 2), 0x01u);
  c.Reset();
  EXPECT_EQ(Read32(c, kBar0), 0u);
  EXPECT_EQ(Read16(c, kCommand), 0u);
  EXPECT_EQ(c.Get8(*off + 2), 0x77u);
  EXPECT_EQ(Walk(c), std::vector<uint32_t>{*off});
}

}  // namespace
}  // namespace vfu::pci
