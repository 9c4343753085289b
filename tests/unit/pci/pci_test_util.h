// Shared pieces of the PCI model tests: a fake DeviceContext that records interrupts (and can
// mask vectors the way a session's IRQ table does after SET_IRQS), a small PciDevice subclass
// with trapped BARs, and config-space accessors that go through VfioDevice::Read/WriteRegion
// exactly as the session does.
#pragma once

#include <cstdint>
#include <cstring>
#include <set>
#include <span>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "server/pci/pci_device.h"
#include "server/session/dma_map_table.h"

namespace vfu::pci::testing {

using IrqId = std::pair<uint32_t, uint32_t>;  // (index, vector)

// Records TriggerIrq calls; vectors in `masked` become pending instead (as IrqTable does).
class FakeContext : public DeviceContext {
 public:
  GuestMemory& guest_memory() override { return memory_; }
  bool TriggerIrq(uint32_t index, uint32_t vector) override {
    if (masked.count({index, vector})) {
      pending.insert({index, vector});
      return false;
    }
    fired.push_back({index, vector});
    return true;
  }
  bool IrqPending(uint32_t index, uint32_t vector) const override {
    return pending.count({index, vector}) != 0;
  }
  // Session-side unmask: a pending vector fires.
  void Unmask(uint32_t index, uint32_t vector) {
    masked.erase({index, vector});
    if (pending.erase({index, vector})) fired.push_back({index, vector});
  }
  size_t Count(uint32_t index, uint32_t vector) const {
    size_t n = 0;
    for (const IrqId& f : fired) n += f == IrqId{index, vector};
    return n;
  }

  std::vector<IrqId> fired;
  std::set<IrqId> masked;
  std::set<IrqId> pending;

 private:
  DmaMapTable memory_{0};
};

inline constexpr PciIdentity kTestIdentity{.vendor_id = 0x1af4,
                                           .device_id = 0x1042,
                                           .subsystem_vendor_id = 0x1af4,
                                           .subsystem_id = 0x0002,
                                           .revision = 1,
                                           .class_code = 0x010000};

// A device with trapped BARs that records what reaches BarRead/BarWrite.
class TestPciDevice : public PciDevice {
 public:
  explicit TestPciDevice(size_t config_size = kExpressConfigSize, bool has_intx = true)
      : PciDevice(kTestIdentity, config_size, has_intx) {}

  using PciDevice::AddBar;
  using PciDevice::AddPowerManagement;
  using PciDevice::EnableMsix;
  using PciDevice::intx_asserted;
  using PciDevice::SetIntx;

  struct Access {
    int bar;
    uint64_t offset;
    size_t len;
  };
  std::vector<Access> bar_reads;
  std::vector<Access> bar_writes;
  int device_resets = 0;
  std::vector<std::pair<uint32_t, size_t>> config_writes;

 protected:
  Status BarRead(int bar, uint64_t offset, std::span<uint8_t> out) override {
    bar_reads.push_back({bar, offset, out.size()});
    std::memset(out.data(), 0xab, out.size());
    return Status::Ok();
  }
  Status BarWrite(int bar, uint64_t offset, std::span<const uint8_t> data) override {
    bar_writes.push_back({bar, offset, data.size()});
    return Status::Ok();
  }
  Status ResetDevice() override {
    ++device_resets;
    return Status::Ok();
  }
  void OnConfigWrite(uint32_t offset, size_t len) override {
    config_writes.push_back({offset, len});
  }
};

// Config space through the region interface (little-endian values of 1, 2 or 4 bytes).
inline uint32_t ReadConfig(VfioDevice& dev, uint32_t off, size_t len = 4) {
  uint8_t buf[4] = {};
  Status s = dev.ReadRegion(wire::kPciConfigRegionIndex, off, {buf, len});
  EXPECT_TRUE(s.ok()) << s.message();
  uint32_t v = 0;
  for (size_t i = 0; i < len; ++i) v |= uint32_t{buf[i]} << (8 * i);
  return v;
}
inline uint16_t ReadConfig16(VfioDevice& dev, uint32_t off) {
  return static_cast<uint16_t>(ReadConfig(dev, off, 2));
}
inline uint8_t ReadConfig8(VfioDevice& dev, uint32_t off) {
  return static_cast<uint8_t>(ReadConfig(dev, off, 1));
}
inline void WriteConfig(VfioDevice& dev, uint32_t off, uint32_t value, size_t len = 4) {
  uint8_t buf[4];
  for (size_t i = 0; i < 4; ++i) buf[i] = static_cast<uint8_t>(value >> (8 * i));
  Status s = dev.WriteRegion(wire::kPciConfigRegionIndex, off, {buf, len});
  EXPECT_TRUE(s.ok()) << s.message();
}
inline void WriteConfig16(VfioDevice& dev, uint32_t off, uint16_t value) {
  WriteConfig(dev, off, value, 2);
}

// BAR accesses through the region interface.
inline uint32_t ReadBar32(VfioDevice& dev, int bar, uint64_t off) {
  uint8_t buf[4] = {};
  Status s = dev.ReadRegion(static_cast<uint32_t>(bar), off, buf);
  EXPECT_TRUE(s.ok()) << s.message();
  uint32_t v;
  std::memcpy(&v, buf, 4);
  return v;
}
inline Status WriteBar32(VfioDevice& dev, int bar, uint64_t off, uint32_t value) {
  uint8_t buf[4];
  std::memcpy(buf, &value, 4);
  return dev.WriteRegion(static_cast<uint32_t>(bar), off, buf);
}

// Walks the standard capability chain from 0x34; returns the offsets in order (stops after 64
// hops so a looping chain fails the test instead of hanging it).
inline std::vector<uint32_t> WalkCapabilities(VfioDevice& dev) {
  std::vector<uint32_t> offs;
  if (!(ReadConfig16(dev, kStatus) & kStatusCapList)) return offs;
  uint32_t off = ReadConfig8(dev, kCapabilitiesPointer);
  while (off != 0 && offs.size() < 64) {
    offs.push_back(off);
    off = ReadConfig8(dev, off + kCapNextOffset);
  }
  return offs;
}

// Walks the extended chain from 0x100 (empty when the header there is zero).
inline std::vector<uint32_t> WalkExtendedCapabilities(VfioDevice& dev) {
  std::vector<uint32_t> offs;
  uint32_t off = kExtendedCapStart;
  while (off != 0 && offs.size() < 64) {
    uint32_t header = ReadConfig(dev, off);
    if (header == 0) break;
    offs.push_back(off);
    off = header >> 20;
  }
  return offs;
}

}  // namespace vfu::pci::testing
