// ConfigSpace register semantics: BAR sizing (32-bit, 64-bit, I/O, prefetchable), read-only
// bytes, the command register's writable bits, RW1C status bits, and reset to power-on values.
#include "server/pci/config_space.h"

#include <cerrno>
#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

namespace vfu::pci {
namespace {

void W32(ConfigSpace& c, uint32_t off, uint32_t v) {
  uint8_t b[4] = {uint8_t(v), uint8_t(v >> 8), uint8_t(v >> 16), uint8_t(v >> 24)};
  c.Write(off, b);
}
void W16(ConfigSpace& c, uint32_t off, uint16_t v) {
  uint8_t b[2] = {uint8_t(v), uint8_t(v >> 8)};
  c.Write(off, b);
}
uint32_t R32(const ConfigSpace& c, uint32_t off) {
  uint8_t b[4];
  c.Read(off, b);
  return uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
}

TEST(ConfigSpaceBarSemantics, Memory32BitSizingReadsBackSizeMask) {
  ConfigSpace c;
  ASSERT_TRUE(c.DeclareBar(0, 4096, 0).ok());
  EXPECT_EQ(c.bar_size(0), 4096u);
  EXPECT_EQ(R32(c, kBar0), 0u);
  W32(c, kBar0, 0xffffffff);
  EXPECT_EQ(R32(c, kBar0), 0xfffff000u);
  W32(c, kBar0, 0xfe000000);
  EXPECT_EQ(R32(c, kBar0), 0xfe000000u);
  W32(c, kBar0, 0xfe000abc);  // bits below the size are read-only zero
  EXPECT_EQ(R32(c, kBar0), 0xfe000000u);
}

TEST(ConfigSpaceBarSemantics, PrefetchableFlagIsReadOnlyAndKept) {
  ConfigSpace c;
  ASSERT_TRUE(c.DeclareBar(1, 1 << 20, kBarPrefetch).ok());
  EXPECT_EQ(R32(c, kBar0 + 4), kBarPrefetch);
  W32(c, kBar0 + 4, 0xffffffff);
  EXPECT_EQ(R32(c, kBar0 + 4), 0xfff00000u | kBarPrefetch);
  W32(c, kBar0 + 4, 0);
  EXPECT_EQ(R32(c, kBar0 + 4), kBarPrefetch);
}

TEST(ConfigSpaceBarSemantics, Memory64BitSizingSpansTwoDwords) {
  ConfigSpace c;
  ASSERT_TRUE(c.DeclareBar(2, 1 << 20, kBarMem64 | kBarPrefetch).ok());
  const uint32_t lo = kBar0 + 8, hi = kBar0 + 12;
  EXPECT_EQ(R32(c, lo), kBarMem64 | kBarPrefetch);
  W32(c, lo, 0xffffffff);
  W32(c, hi, 0xffffffff);
  EXPECT_EQ(R32(c, lo), 0xfff00000u | kBarMem64 | kBarPrefetch);
  EXPECT_EQ(R32(c, hi), 0xffffffffu);
  W32(c, lo, 0x40000000);
  W32(c, hi, 0x00000001);
  EXPECT_EQ(R32(c, lo), 0x40000000u | kBarMem64 | kBarPrefetch);
  EXPECT_EQ(R32(c, hi), 1u);
}

TEST(ConfigSpaceBarSemantics, Memory64BitLargerThan4GiBHasReadOnlyLowAddressBits) {
  ConfigSpace c;
  ASSERT_TRUE(c.DeclareBar(0, 1ull << 33, kBarMem64).ok());
  W32(c, kBar0, 0xffffffff);
  W32(c, kBar0 + 4, 0xffffffff);
  EXPECT_EQ(R32(c, kBar0), kBarMem64);        // all address bits of the low dword are size bits
  EXPECT_EQ(R32(c, kBar0 + 4), 0xfffffffeu);  // 8 GiB
}

TEST(ConfigSpaceBarSemantics, IoBarSizingKeepsTheIoBit) {
  ConfigSpace c;
  ASSERT_TRUE(c.DeclareBar(4, 256, kBarIo).ok());
  EXPECT_EQ(R32(c, kBar0 + 16), kBarIo);
  W32(c, kBar0 + 16, 0xffffffff);
  EXPECT_EQ(R32(c, kBar0 + 16), 0xffffff00u | kBarIo);
}

TEST(ConfigSpaceBarSemantics, UndeclaredBarsReadZeroAfterAllOnes) {
  ConfigSpace c;
  ASSERT_TRUE(c.DeclareBar(0, 4096, 0).ok());
  for (uint32_t i = 1; i < 6; ++i) {
    W32(c, kBar0 + 4 * i, 0xffffffff);
    EXPECT_EQ(R32(c, kBar0 + 4 * i), 0u) << i;
  }
  W32(c, kRomAddress, 0xffffffff);
  EXPECT_EQ(R32(c, kRomAddress), 0u);
}

TEST(ConfigSpaceBarSemantics, InvalidDeclarationsAreEinval) {
  ConfigSpace c;
  EXPECT_EQ(c.DeclareBar(6, 4096, 0).code(), EINVAL);
  EXPECT_EQ(c.DeclareBar(-1, 4096, 0).code(), EINVAL);
  EXPECT_EQ(c.DeclareBar(5, 4096, kBarMem64).code(), EINVAL);  // needs a second dword
  EXPECT_EQ(c.DeclareBar(0, 3000, 0).code(), EINVAL);          // not a power of two
  EXPECT_EQ(c.DeclareBar(0, 8, 0).code(), EINVAL);             // memory BARs are >= 16 bytes
  EXPECT_EQ(c.DeclareBar(0, 2, kBarIo).code(), EINVAL);        // I/O BARs are >= 4 bytes
  EXPECT_EQ(c.DeclareBar(0, 0, 0).code(), EINVAL);
  EXPECT_TRUE(c.DeclareBar(0, 4, kBarIo).ok());
  EXPECT_TRUE(c.DeclareBar(1, 16, 0).ok());
}

TEST(ConfigSpaceRegisterSemantics, IdentityBytesAreReadOnly) {
  ConfigSpace c;
  c.Set16(kVendorId, 0x1b36);
  c.Set16(kDeviceId, 0x10f0);
  c.Set8(kRevisionId, 3);
  c.Set8(kInterruptPin, 1);
  std::vector<uint8_t> ones(64, 0xff);
  c.Write(0, ones);  // the whole header at once
  EXPECT_EQ(c.Get16(kVendorId), 0x1b36);
  EXPECT_EQ(c.Get16(kDeviceId), 0x10f0);
  EXPECT_EQ(c.Get8(kRevisionId), 3);
  EXPECT_EQ(c.Get8(kHeaderType), 0);
  EXPECT_EQ(c.Get8(kInterruptPin), 1);
  EXPECT_EQ(c.Get8(kCapabilitiesPointer), 0);
  // The scratch-like registers are writable.
  EXPECT_EQ(c.Get8(kCacheLineSize), 0xff);
  EXPECT_EQ(c.Get8(kLatencyTimer), 0xff);
  EXPECT_EQ(c.Get8(kInterruptLine), 0xff);
}

TEST(ConfigSpaceRegisterSemantics, CommandRegisterTakesOnlyItsDefinedBits) {
  ConfigSpace c;
  W16(c, kCommand, 0xffff);
  const uint16_t defined = kCommandIo | kCommandMemory | kCommandBusMaster | kCommandParity |
                           kCommandSerr | kCommandIntxDisable;
  EXPECT_EQ(c.Get16(kCommand), defined);
  W16(c, kCommand, kCommandMemory);
  EXPECT_EQ(c.Get16(kCommand), kCommandMemory);
  // A one-byte write to the high byte changes only that byte.
  uint8_t high = kCommandIntxDisable >> 8;
  c.Write(kCommand + 1, {&high, 1});
  EXPECT_EQ(c.Get16(kCommand), kCommandMemory | kCommandIntxDisable);
}

TEST(ConfigSpaceRegisterSemantics, StatusErrorBitsAreWriteOneToClear) {
  ConfigSpace c;
  const uint16_t errors = kStatusErrorBits;
  c.Set16(kStatus, errors | kStatusCapList | kStatusInterrupt);
  W16(c, kStatus, 0);  // writing zeros clears nothing
  EXPECT_EQ(c.Get16(kStatus), errors | kStatusCapList | kStatusInterrupt);
  W16(c, kStatus, 0x0100);  // clears only bit 8
  EXPECT_EQ(c.Get16(kStatus), (errors & ~0x0100) | kStatusCapList | kStatusInterrupt);
  W16(c, kStatus, 0xffff);  // clears every error bit; read-only bits stay
  EXPECT_EQ(c.Get16(kStatus), kStatusCapList | kStatusInterrupt);
  W16(c, kStatus, 0xffff);  // and cannot set them
  EXPECT_EQ(c.Get16(kStatus), kStatusCapList | kStatusInterrupt);
}

TEST(ConfigSpaceRegisterSemantics, DeviceSideSettersBypassTheMasks) {
  ConfigSpace c;
  c.SetWritable32(0x40, 0x0000ffff);
  c.Set32(0x40, 0xaabbccdd);
  EXPECT_EQ(c.Get32(0x40), 0xaabbccddu);
  W32(c, 0x40, 0x11223344);
  EXPECT_EQ(c.Get32(0x40), 0xaabb3344u);
  uint8_t mask[2] = {0xf0, 0x0f};
  c.SetWritable(0x44, mask);
  uint8_t ones[2] = {0xff, 0xff};
  c.Write(0x44, ones);
  EXPECT_EQ(c.Get16(0x44), 0x0ff0);
}

TEST(ConfigSpaceResetSemantics, RestoresPowerOnValuesIncludingBars) {
  ConfigSpace c;
  c.Set16(kVendorId, 0x1234);
  ASSERT_TRUE(c.DeclareBar(0, 4096, 0).ok());
  ASSERT_TRUE(c.DeclareBar(2, 1 << 16, kBarMem64).ok());
  c.SnapshotResetState();
  W32(c, kBar0, 0xfe000000);
  W32(c, kBar0 + 8, 0xffffffff);
  W16(c, kCommand, kCommandMemory | kCommandBusMaster);
  c.Write(kInterruptLine, std::vector<uint8_t>{11});
  c.Reset();
  EXPECT_EQ(R32(c, kBar0), 0u);
  EXPECT_EQ(R32(c, kBar0 + 8), kBarMem64);
  EXPECT_EQ(c.Get16(kCommand), 0);
  EXPECT_EQ(c.Get8(kInterruptLine), 0);
  EXPECT_EQ(c.Get16(kVendorId), 0x1234);
  // The masks survive a reset: sizing still works.
  W32(c, kBar0, 0xffffffff);
  EXPECT_EQ(R32(c, kBar0), 0xfffff000u);
}

TEST(ConfigSpaceSizeSemantics, ConventionalAndExpressSizes) {
  EXPECT_EQ(ConfigSpace().size(), kConventionalConfigSize);
  ConfigSpace express(kExpressConfigSize);
  EXPECT_EQ(express.size(), kExpressConfigSize);
  std::vector<uint8_t> ones(4, 0xff);
  express.Write(0xffc, ones);  // extended space is read-only unless a capability says otherwise
  EXPECT_EQ(express.Get32(0xffc), 0u);
}

}  // namespace
}  // namespace vfu::pci
