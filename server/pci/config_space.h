// PCI configuration space as registers plus masks: the bytes a guest reads, a writable-bits
// mask (everything else is read-only) and a write-1-to-clear mask (status error bits). BAR
// sizing falls out of the mask: the address bits below the BAR size are read-only zero, so an
// all-ones write reads back as the size mask with the type flags. Little-endian, as PCI is.
//
// Capabilities: standard ones live in 0x40..0xff, dword aligned, linked from the capability
// pointer (0x34) through each one's next byte in the order they were added (Status.CAP_LIST is
// set with the first). Extended ones (4 KiB config spaces only) start at 0x100 with a 32-bit
// header: ID (15:0), version (19:16), next offset (31:20); a config space without any keeps an
// all-zero header at 0x100, which ends the walk for Linux and QEMU.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "server/common/status.h"
#include "server/state/record.h"

namespace vfu::pci {

// Standard type-0 header offsets and bits.
inline constexpr uint32_t kVendorId = 0x00;
inline constexpr uint32_t kDeviceId = 0x02;
inline constexpr uint32_t kCommand = 0x04;
inline constexpr uint32_t kStatus = 0x06;
inline constexpr uint32_t kRevisionId = 0x08;
inline constexpr uint32_t kClassProgIf = 0x09;
inline constexpr uint32_t kCacheLineSize = 0x0c;
inline constexpr uint32_t kLatencyTimer = 0x0d;
inline constexpr uint32_t kHeaderType = 0x0e;
inline constexpr uint32_t kBar0 = 0x10;
inline constexpr uint32_t kSubsystemVendorId = 0x2c;
inline constexpr uint32_t kSubsystemId = 0x2e;
inline constexpr uint32_t kRomAddress = 0x30;
inline constexpr uint32_t kCapabilitiesPointer = 0x34;
inline constexpr uint32_t kInterruptLine = 0x3c;
inline constexpr uint32_t kInterruptPin = 0x3d;

inline constexpr uint16_t kCommandIo = 1u << 0;
inline constexpr uint16_t kCommandMemory = 1u << 1;
inline constexpr uint16_t kCommandBusMaster = 1u << 2;
inline constexpr uint16_t kCommandParity = 1u << 6;
inline constexpr uint16_t kCommandSerr = 1u << 8;
inline constexpr uint16_t kCommandIntxDisable = 1u << 10;

inline constexpr uint16_t kStatusInterrupt = 1u << 3;
inline constexpr uint16_t kStatusCapList = 1u << 4;
inline constexpr uint16_t kStatusErrorBits = 0xf900;  // RW1C error bits

inline constexpr uint32_t kBarIo = 0x1;
inline constexpr uint32_t kBarMem64 = 0x4;
inline constexpr uint32_t kBarPrefetch = 0x8;

inline constexpr size_t kConventionalConfigSize = 256;
inline constexpr size_t kExpressConfigSize = 4096;

// Capability IDs.
inline constexpr uint8_t kCapIdPowerManagement = 0x01;
inline constexpr uint8_t kCapIdMsi = 0x05;
inline constexpr uint8_t kCapIdVendor = 0x09;
inline constexpr uint8_t kCapIdExpress = 0x10;
inline constexpr uint8_t kCapIdMsix = 0x11;

inline constexpr uint32_t kCapAreaStart = 0x40;        // first standard capability
inline constexpr uint32_t kExtendedCapStart = 0x100;   // first extended capability
inline constexpr uint32_t kCapNextOffset = 1;          // next pointer within a standard cap
inline constexpr uint32_t kVendorCapLengthOffset = 2;  // cap_len byte of a vendor cap

class ConfigSpace {
 public:
  explicit ConfigSpace(size_t size = kConventionalConfigSize);

  size_t size() const { return bytes_.size(); }

  // Device-side setup and state (no masks applied).
  void Set8(uint32_t off, uint8_t v) { bytes_[off] = v; }
  void Set16(uint32_t off, uint16_t v);
  void Set32(uint32_t off, uint32_t v);
  uint8_t Get8(uint32_t off) const { return bytes_[off]; }
  uint16_t Get16(uint32_t off) const;
  uint32_t Get32(uint32_t off) const;
  void SetWritable(uint32_t off, std::span<const uint8_t> mask);
  void SetWritable16(uint32_t off, uint16_t mask);
  void SetWritable32(uint32_t off, uint32_t mask);
  void SetWriteOneToClear16(uint32_t off, uint16_t mask);

  // Capabilities are device setup: each call also makes the current bytes the reset values
  // (as DeclareBar does). All return the capability's offset in config space.
  //
  // A standard capability: `body` is everything after the two header bytes (ID, next pointer);
  // `writable` is the writable-bit mask for `body` (empty: all read-only; otherwise exactly
  // body.size() bytes). ENOSPC when it does not fit below 0x100.
  Result<uint32_t> AddCapability(uint8_t id, std::span<const uint8_t> body,
                                 std::span<const uint8_t> writable = {});
  // A vendor-specific capability (ID 0x09). The byte after the header is the capability length
  // (3 + body.size()), filled in here; `body` and `writable` cover what follows it (for
  // virtio-pci: cfg_type, bar, id, padding[2], offset, length, and any extra fields).
  Result<uint32_t> AddVendorCapability(std::span<const uint8_t> body,
                                       std::span<const uint8_t> writable = {});
  // An extended capability (4 KiB config spaces only): `body` follows the 4-byte header.
  Result<uint32_t> AddExtendedCapability(uint16_t id, uint8_t version,
                                         std::span<const uint8_t> body,
                                         std::span<const uint8_t> writable = {});
  // The first capability with `id` (walking the chain from 0x34 / 0x100), if any.
  std::optional<uint32_t> FindCapability(uint8_t id) const;
  std::optional<uint32_t> FindExtendedCapability(uint16_t id) const;

  // Declares BAR `index` (0-5) of `size` bytes (a power of two, >= 16 for memory, >= 4 for
  // I/O) with kBarIo / kBarMem64 / kBarPrefetch flags. A 64-bit BAR also takes index + 1.
  Status DeclareBar(int index, uint64_t size, uint32_t flags);
  uint64_t bar_size(int index) const { return bar_sizes_[index]; }

  // Guest accesses (within [0, size), checked by the caller): reads return the bytes; writes
  // change only writable bits and clear write-1-to-clear bits.
  void Read(uint32_t off, std::span<uint8_t> out) const;
  void Write(uint32_t off, std::span<const uint8_t> data);

  // Back to the power-on values recorded by SnapshotResetState().
  void SnapshotResetState() { reset_bytes_ = bytes_; }
  void Reset() { bytes_ = reset_bytes_; }

  // State that can leave the process (server/state/record.h): the live bytes. Masks, reset
  // values, capabilities and BAR sizes are device setup, which the device's constructor
  // rebuilds; a record of a config space of another size is refused. All or nothing.
  void SaveState(state::Writer& w) const;
  Status RestoreState(state::Reader& r);

 private:
  std::vector<uint8_t> bytes_;
  std::vector<uint8_t> writable_;
  std::vector<uint8_t> w1c_;
  std::vector<uint8_t> reset_bytes_;
  uint64_t bar_sizes_[6] = {};
  uint32_t next_cap_ = kCapAreaStart;          // where the next standard cap goes
  uint32_t last_cap_ = 0;                      // offset of the last standard cap (0: none)
  uint32_t next_ext_cap_ = kExtendedCapStart;  // where the next extended cap goes
  uint32_t last_ext_cap_ = 0;                  // offset of the last extended cap (0: none)
};

}  // namespace vfu::pci
