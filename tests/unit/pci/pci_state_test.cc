// PCI function state that can leave the process: after random guest writes to config space and
// the MSI-X table, INTx changes and MSI-X triggers, a device saved and restored into a new
// object behaves exactly like the original on the next random accesses (config reads, table and
// PBA reads, interrupts delivered). A record for another device layout is refused and changes
// nothing.
#include <cstdint>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "server/state/record.h"
#include "tests/unit/pci/pci_test_util.h"

namespace vfu::pci::testing {
namespace {

constexpr uint32_t kVectors = 70;
constexpr int kTableBar = 2;
constexpr uint64_t kTableOffset = 0x2000;
constexpr int kPbaBar = 4;
constexpr uint64_t kPbaOffset = 0x0;

struct Device {
  explicit Device(uint32_t vectors = kVectors) {
    EXPECT_TRUE(dev.AddBar(0, {.size = 0x4000, .flags = 0}).ok());
    EXPECT_TRUE(dev.AddBar(kTableBar, {.size = 0x4000, .flags = kBarMem64}).ok());
    EXPECT_TRUE(dev.AddBar(kPbaBar, {.size = 0x1000, .flags = 0}).ok());
    Status s = dev.EnableMsix(vectors, kTableBar, kTableOffset, kPbaBar, kPbaOffset);
    EXPECT_TRUE(s.ok()) << s.message();
    dev.Attach(&ctx);
  }
  ~Device() { dev.Detach(); }
  TestPciDevice dev;
  FakeContext ctx;
};

// What a guest (or the device) can do next; `rng` decides, so that two devices given the same
// seed see the same sequence.
void RandomStep(std::mt19937& rng, Device& d) {
  std::uniform_int_distribution<uint32_t> pick(0, 99);
  uint32_t what = pick(rng);
  uint32_t value = rng();
  if (what < 45) {
    // A config-space write anywhere, of 1, 2 or 4 bytes, mostly into the header and the
    // capabilities (where the writable bits are).
    static constexpr size_t kLens[] = {1, 2, 4};
    size_t len = kLens[rng() % 3];
    uint32_t limit = (rng() % 4 == 0) ? kExpressConfigSize : 0x100;
    uint32_t off = static_cast<uint32_t>(rng() % (limit - len + 1)) & ~uint32_t(len - 1);
    WriteConfig(d.dev, off, value, len);
  } else if (what < 55) {
    // Enable/disable MSI-X and its function mask directly (the random writes above rarely hit
    // the right bits).
    uint32_t cap = d.dev.msix().cap_offset();
    WriteConfig16(d.dev, cap + kMsixControl, static_cast<uint16_t>(value & 0xc000));
  } else if (what < 80) {
    uint32_t vector = value % kVectors;
    uint32_t field = (rng() % 4) * 4;
    (void)WriteBar32(d.dev, kTableBar, kTableOffset + vector * kMsixEntrySize + field,
                     field == kMsixEntryVectorControl ? (rng() & 1) : rng());
  } else if (what < 90) {
    d.dev.TriggerMsix(value % kVectors);
  } else {
    d.dev.SetIntx(value & 1);
  }
}

// Everything the guest can observe of the PCI function, plus its interrupts so far.
struct Observed {
  std::vector<uint8_t> config;
  std::vector<uint32_t> table_and_pba;
  bool intx = false;
  std::vector<IrqId> fired;
  bool operator==(const Observed&) const = default;
};

Observed Observe(Device& d) {
  Observed o;
  for (uint32_t off = 0; off < kExpressConfigSize; off += 4) {
    uint32_t v = ReadConfig(d.dev, off);
    for (int i = 0; i < 4; ++i) o.config.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  for (uint64_t off = 0; off < uint64_t{kVectors} * kMsixEntrySize; off += 4) {
    o.table_and_pba.push_back(ReadBar32(d.dev, kTableBar, kTableOffset + off));
  }
  for (uint64_t off = 0; off < 16; off += 4) {
    o.table_and_pba.push_back(ReadBar32(d.dev, kPbaBar, kPbaOffset + off));
  }
  o.intx = d.dev.intx_asserted();
  o.fired = d.ctx.fired;
  return o;
}

TEST(PciState, RestoredDeviceBehavesLikeTheOriginalAfterRandomWrites) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Device original;
    std::mt19937 rng(seed);
    for (int i = 0; i < 400; ++i) RandomStep(rng, original);

    state::Writer w;
    original.dev.SavePciState(w);
    auto r = state::Reader::Open(w.bytes(), w.fds());
    ASSERT_TRUE(r.ok()) << r.error().message;
    Device restored;
    Status s = restored.dev.RestorePciState(*r);
    ASSERT_TRUE(s.ok()) << s.message();
    r->ExpectEnd();
    ASSERT_TRUE(r->ok());

    original.ctx.fired.clear();  // compare what happens from here on
    ASSERT_EQ(Observe(restored), Observe(original));
    std::mt19937 next_a(seed * 1000);
    std::mt19937 next_b(seed * 1000);
    for (int i = 0; i < 200; ++i) {
      RandomStep(next_a, original);
      RandomStep(next_b, restored);
      if (i % 20 == 0) {
        ASSERT_EQ(Observe(restored), Observe(original)) << "step " << i;
      }
    }
    EXPECT_EQ(Observe(restored), Observe(original));
  }
}

TEST(PciState, ARecordForAnotherMsixTableIsRefusedAndChangesNothing) {
  Device original;
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) RandomStep(rng, original);
  state::Writer w;
  original.dev.SavePciState(w);

  Device other(kVectors - 1);
  WriteConfig(other.dev, kCommand, kCommandMemory | kCommandBusMaster, 2);
  Observed before = Observe(other);
  auto r = state::Reader::Open(w.bytes(), w.fds());
  ASSERT_TRUE(r.ok());
  Status s = other.dev.RestorePciState(*r);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("MSI-X state: a table of 70 vectors, this device has 69"),
            std::string::npos)
      << s.message();
  EXPECT_EQ(Observe(other), before);
}

TEST(PciState, ATruncatedRecordIsRefusedAndChangesNothing) {
  Device original;
  std::mt19937 rng(3);
  for (int i = 0; i < 300; ++i) RandomStep(rng, original);
  state::Writer w;
  original.dev.SavePciState(w);
  std::vector<uint8_t> bytes = w.bytes();
  bytes.resize(bytes.size() - 5);  // inside the MSI-X section

  Device fresh;
  Observed before = Observe(fresh);
  auto r = state::Reader::Open(bytes, w.fds());
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(fresh.dev.RestorePciState(*r).ok());
  EXPECT_EQ(Observe(fresh), before);
}

}  // namespace
}  // namespace vfu::pci::testing
