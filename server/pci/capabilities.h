// Builders for the standard capabilities every PCI Express function carries: the PCI Express
// capability (ID 0x10, version 2, endpoint) and the Power Management capability (ID 0x01,
// version 3). Each appends itself to a ConfigSpace's chain with the read-only values and the
// writable / write-1-to-clear bits that Linux and QEMU expect, and returns its offset.
#pragma once

#include <cstdint>

#include "server/common/status.h"
#include "server/pci/config_space.h"

namespace vfu::pci {

// PCI Express capability register offsets (relative to the capability) and bits.
inline constexpr uint32_t kExpFlags = 0x02;    // PCIe Capabilities register (16)
inline constexpr uint32_t kExpDevCap = 0x04;   // Device Capabilities (32)
inline constexpr uint32_t kExpDevCtl = 0x08;   // Device Control (16)
inline constexpr uint32_t kExpDevSta = 0x0a;   // Device Status (16)
inline constexpr uint32_t kExpLnkCap = 0x0c;   // Link Capabilities (32)
inline constexpr uint32_t kExpLnkCtl = 0x10;   // Link Control (16)
inline constexpr uint32_t kExpLnkSta = 0x12;   // Link Status (16)
inline constexpr uint32_t kExpDevCap2 = 0x24;  // Device Capabilities 2 (32)
inline constexpr uint32_t kExpDevCtl2 = 0x28;  // Device Control 2 (16)
inline constexpr uint32_t kExpLnkCap2 = 0x2c;  // Link Capabilities 2 (32)
inline constexpr uint32_t kExpLnkCtl2 = 0x30;  // Link Control 2 (16)
inline constexpr uint32_t kExpLnkSta2 = 0x32;  // Link Status 2 (16)
inline constexpr uint32_t kExpCapSize = 0x3c;  // v2 endpoint capability, header included

inline constexpr uint16_t kExpFlagsVersion2 = 0x0002;
inline constexpr uint16_t kExpFlagsTypeMask = 0x00f0;  // device/port type; 0 = endpoint

inline constexpr uint32_t kExpDevCapPayload256 = 0x1;        // max payload size supported
inline constexpr uint32_t kExpDevCapExtTag = 1u << 5;        // 8-bit tags supported
inline constexpr uint32_t kExpDevCapL0sNoLimit = 0x7u << 6;  // acceptable L0s latency
inline constexpr uint32_t kExpDevCapL1NoLimit = 0x7u << 9;   // acceptable L1 latency
inline constexpr uint32_t kExpDevCapRber = 1u << 15;         // role-based error reporting

inline constexpr uint16_t kExpDevCtlCere = 1u << 0;   // correctable error reporting
inline constexpr uint16_t kExpDevCtlNfere = 1u << 1;  // non-fatal error reporting
inline constexpr uint16_t kExpDevCtlFere = 1u << 2;   // fatal error reporting
inline constexpr uint16_t kExpDevCtlUrre = 1u << 3;   // unsupported request reporting
inline constexpr uint16_t kExpDevCtlRelaxedOrdering = 1u << 4;
inline constexpr uint16_t kExpDevCtlPayloadMask = 0x7u << 5;  // 000 = 128 bytes, 001 = 256
inline constexpr uint16_t kExpDevCtlExtTag = 1u << 8;
inline constexpr uint16_t kExpDevCtlNoSnoop = 1u << 11;
inline constexpr uint16_t kExpDevCtlReadRequestMask = 0x7u << 12;  // 010 = 512 bytes
inline constexpr uint16_t kExpDevCtlWritable =
    kExpDevCtlCere | kExpDevCtlNfere | kExpDevCtlFere | kExpDevCtlUrre | kExpDevCtlRelaxedOrdering |
    kExpDevCtlPayloadMask | kExpDevCtlExtTag | kExpDevCtlNoSnoop | kExpDevCtlReadRequestMask;
// Power-on value: relaxed ordering and no snoop enabled, 128-byte payload, 512-byte reads.
inline constexpr uint16_t kExpDevCtlReset =
    kExpDevCtlRelaxedOrdering | kExpDevCtlNoSnoop | (0x2u << 12);
inline constexpr uint16_t kExpDevStaErrors = 0x000f;  // RW1C error-detected bits

inline constexpr uint32_t kExpLnkCapSpeed2_5GT = 0x1;     // max link speed: gen1
inline constexpr uint32_t kExpLnkCapWidthX1 = 0x1u << 4;  // max link width: x1
// Link Control bits an endpoint lets software write: ASPM control, read completion boundary,
// common clock configuration, extended synch.
inline constexpr uint16_t kExpLnkCtlWritable = 0x0003 | 0x0008 | 0x0040 | 0x0080;
inline constexpr uint16_t kExpLnkStaSpeed2_5GT = 0x1;
inline constexpr uint16_t kExpLnkStaWidthX1 = 0x1u << 4;
inline constexpr uint32_t kExpDevCap2CompletionTimeoutDisable = 1u << 4;
inline constexpr uint16_t kExpDevCtl2CompletionTimeoutDisable = 1u << 4;
inline constexpr uint32_t kExpLnkCap2Speeds2_5GT = 0x1u << 1;  // supported link speeds vector
inline constexpr uint16_t kExpLnkCtl2Target2_5GT = 0x1;

// Power Management capability register offsets (relative to the capability) and bits.
inline constexpr uint32_t kPmPmc = 0x02;    // Power Management Capabilities (16)
inline constexpr uint32_t kPmPmcsr = 0x04;  // Control/Status (16)
inline constexpr uint32_t kPmCapSize = 0x08;
inline constexpr uint16_t kPmPmcVersion3 = 0x0003;
inline constexpr uint16_t kPmcsrStateMask = 0x0003;  // 0 = D0, 3 = D3hot
inline constexpr uint16_t kPmcsrNoSoftReset = 1u << 3;
inline constexpr uint8_t kPowerStateD0 = 0;
inline constexpr uint8_t kPowerStateD3Hot = 3;

// Appends a PCI Express capability v2 for an endpoint (device/port type 0): 256-byte max
// payload supported, link reported as 2.5 GT/s x1, Device Control writable as Linux programs it
// (error reporting enables, relaxed ordering, max payload, extended tag, no snoop, max read
// request), Device Status error bits RW1C, Link Control's endpoint bits writable.
Result<uint32_t> AddExpressCapability(ConfigSpace& config);

// Appends a Power Management capability v3: only D0 and D3hot (the PowerState field is
// writable; PciDevice discards writes of the unsupported D1/D2), No_Soft_Reset set (D3hot ->
// D0 keeps the device's state), no PME.
Result<uint32_t> AddPowerManagementCapability(ConfigSpace& config);

}  // namespace vfu::pci
