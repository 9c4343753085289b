#include "server/pci/capabilities.h"

#include <array>

namespace vfu::pci {
namespace {

// A capability image (header included) with its writable mask, filled with little-endian
// register values at capability-relative offsets.
template <size_t N>
struct CapImage {
  std::array<uint8_t, N> bytes{};
  std::array<uint8_t, N> writable{};

  void Put16(uint32_t off, uint16_t v, uint16_t mask) {
    for (int i = 0; i < 2; ++i) {
      bytes[off + i] = static_cast<uint8_t>(v >> (8 * i));
      writable[off + i] = static_cast<uint8_t>(mask >> (8 * i));
    }
  }
  void Put32(uint32_t off, uint32_t v, uint32_t mask) {
    for (int i = 0; i < 4; ++i) {
      bytes[off + i] = static_cast<uint8_t>(v >> (8 * i));
      writable[off + i] = static_cast<uint8_t>(mask >> (8 * i));
    }
  }
  // The part after the two header bytes, as AddCapability takes it.
  std::span<const uint8_t> body() const { return std::span(bytes).subspan(2); }
  std::span<const uint8_t> body_mask() const { return std::span(writable).subspan(2); }
};

}  // namespace

Result<uint32_t> AddExpressCapability(ConfigSpace& config) {
  CapImage<kExpCapSize> cap;
  cap.Put16(kExpFlags, kExpFlagsVersion2, 0);  // endpoint, no slot, message number 0
  cap.Put32(kExpDevCap,
            kExpDevCapPayload256 | kExpDevCapExtTag | kExpDevCapL0sNoLimit | kExpDevCapL1NoLimit |
                kExpDevCapRber,
            0);
  cap.Put16(kExpDevCtl, kExpDevCtlReset, kExpDevCtlWritable);
  cap.Put16(kExpDevSta, 0, 0);
  cap.Put32(kExpLnkCap, kExpLnkCapSpeed2_5GT | kExpLnkCapWidthX1, 0);
  cap.Put16(kExpLnkCtl, 0, kExpLnkCtlWritable);
  cap.Put16(kExpLnkSta, kExpLnkStaSpeed2_5GT | kExpLnkStaWidthX1, 0);
  cap.Put32(kExpDevCap2, kExpDevCap2CompletionTimeoutDisable, 0);
  cap.Put16(kExpDevCtl2, 0, kExpDevCtl2CompletionTimeoutDisable);
  cap.Put32(kExpLnkCap2, kExpLnkCap2Speeds2_5GT, 0);
  cap.Put16(kExpLnkCtl2, kExpLnkCtl2Target2_5GT, 0);
  cap.Put16(kExpLnkSta2, 0, 0);
  auto off = config.AddCapability(kCapIdExpress, cap.body(), cap.body_mask());
  if (!off) return off.error();
  config.SetWriteOneToClear16(*off + kExpDevSta, kExpDevStaErrors);
  return *off;
}

Result<uint32_t> AddPowerManagementCapability(ConfigSpace& config) {
  CapImage<kPmCapSize> cap;
  cap.Put16(kPmPmc, kPmPmcVersion3, 0);  // no D1/D2, no PME, no aux current
  cap.Put16(kPmPmcsr, kPmcsrNoSoftReset | kPowerStateD0, kPmcsrStateMask);
  return config.AddCapability(kCapIdPowerManagement, cap.body(), cap.body_mask());
}

}  // namespace vfu::pci
