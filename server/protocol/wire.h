// vfio-user wire format: the packed structs and constants of QEMU's docs/interop/vfio-user.rst,
// each size pinned with static_assert. Host endianness, as the spec says. This header has no
// behaviour; codec.h decodes and encodes these with validation, and nothing here does I/O.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vfu::wire {

// --- Commands -------------------------------------------------------------------------------
enum class Command : uint16_t {
  kVersion = 1,
  kDmaMap = 2,
  kDmaUnmap = 3,
  kDeviceGetInfo = 4,
  kDeviceGetRegionInfo = 5,
  kDeviceGetRegionIoFds = 6,
  kDeviceGetIrqInfo = 7,
  kDeviceSetIrqs = 8,
  kRegionRead = 9,
  kRegionWrite = 10,
  kDmaRead = 11,
  kDmaWrite = 12,
  kDeviceReset = 13,
  kRegionWriteMulti = 15,
  kDeviceFeature = 16,
  kMigDataRead = 17,
  kMigDataWrite = 18,
};

const char* CommandName(uint16_t command);
// True for the command ids the spec defines (1-13, 15-18).
bool IsKnownCommand(uint16_t command);

// --- Header ---------------------------------------------------------------------------------
inline constexpr uint32_t kFlagTypeMask = 0xf;
inline constexpr uint32_t kFlagTypeCommand = 0x0;
inline constexpr uint32_t kFlagTypeReply = 0x1;
inline constexpr uint32_t kFlagNoReply = 0x10;
inline constexpr uint32_t kFlagError = 0x20;

struct [[gnu::packed]] Header {
  uint16_t msg_id;
  uint16_t command;
  uint32_t msg_size;  // whole message including this header
  uint32_t flags;
  uint32_t error_no;
};
static_assert(sizeof(Header) == 16);

// --- VERSION --------------------------------------------------------------------------------
struct [[gnu::packed]] Version {
  uint16_t major;
  uint16_t minor;
  // followed by optional NUL-terminated JSON
};
static_assert(sizeof(Version) == 4);

inline constexpr uint16_t kProtocolMajor = 0;
inline constexpr uint16_t kProtocolMinor = 0;

// --- DMA_MAP / DMA_UNMAP --------------------------------------------------------------------
inline constexpr uint32_t kDmaFlagRead = 1u << 0;
inline constexpr uint32_t kDmaFlagWrite = 1u << 1;
inline constexpr uint32_t kDmaUnmapFlagGetDirtyBitmap = 1u << 0;
inline constexpr uint32_t kDmaUnmapFlagAll = 1u << 1;

struct [[gnu::packed]] DmaMap {
  uint32_t argsz;
  uint32_t flags;
  uint64_t offset;   // offset into the passed fd
  uint64_t address;  // IOVA
  uint64_t size;
};
static_assert(sizeof(DmaMap) == 32);

struct [[gnu::packed]] DmaUnmap {
  uint32_t argsz;
  uint32_t flags;
  uint64_t address;
  uint64_t size;
};
static_assert(sizeof(DmaUnmap) == 24);

// --- DEVICE_GET_INFO ------------------------------------------------------------------------
inline constexpr uint32_t kDeviceFlagReset = 1u << 0;
inline constexpr uint32_t kDeviceFlagPci = 1u << 1;

struct [[gnu::packed]] DeviceInfo {
  uint32_t argsz;
  uint32_t flags;
  uint32_t num_regions;
  uint32_t num_irqs;
};
static_assert(sizeof(DeviceInfo) == 16);

// --- DEVICE_GET_REGION_INFO -----------------------------------------------------------------
inline constexpr uint32_t kRegionFlagRead = 1u << 0;
inline constexpr uint32_t kRegionFlagWrite = 1u << 1;
inline constexpr uint32_t kRegionFlagMmap = 1u << 2;
inline constexpr uint32_t kRegionFlagCaps = 1u << 3;

struct [[gnu::packed]] RegionInfo {
  uint32_t argsz;
  uint32_t flags;
  uint32_t index;
  uint32_t cap_offset;
  uint64_t size;
  uint64_t offset;
};
static_assert(sizeof(RegionInfo) == 32);

struct [[gnu::packed]] CapHeader {
  uint16_t id;
  uint16_t version;
  uint32_t next;
};
static_assert(sizeof(CapHeader) == 8);

inline constexpr uint16_t kCapSparseMmap = 1;
inline constexpr uint16_t kCapSparseMmapVersion = 1;

struct [[gnu::packed]] SparseMmapCap {
  CapHeader header;
  uint32_t nr_areas;
  uint32_t reserved;
  // followed by SparseMmapArea[nr_areas]
};
static_assert(sizeof(SparseMmapCap) == 16);

struct [[gnu::packed]] SparseMmapArea {
  uint64_t offset;
  uint64_t size;
};
static_assert(sizeof(SparseMmapArea) == 16);

// --- DEVICE_GET_REGION_IO_FDS ---------------------------------------------------------------
struct [[gnu::packed]] RegionIoFdsRequest {
  uint32_t argsz;
  uint32_t flags;
  uint32_t index;
  uint32_t count;
};
static_assert(sizeof(RegionIoFdsRequest) == 16);

// --- DEVICE_GET_IRQ_INFO --------------------------------------------------------------------
inline constexpr uint32_t kIrqInfoEventfd = 1u << 0;
inline constexpr uint32_t kIrqInfoMaskable = 1u << 1;
inline constexpr uint32_t kIrqInfoAutomasked = 1u << 2;
inline constexpr uint32_t kIrqInfoNoResize = 1u << 3;

struct [[gnu::packed]] IrqInfo {
  uint32_t argsz;
  uint32_t flags;
  uint32_t index;
  uint32_t count;
};
static_assert(sizeof(IrqInfo) == 16);

// --- DEVICE_SET_IRQS ------------------------------------------------------------------------
inline constexpr uint32_t kIrqSetDataNone = 1u << 0;
inline constexpr uint32_t kIrqSetDataBool = 1u << 1;
inline constexpr uint32_t kIrqSetDataEventfd = 1u << 2;
inline constexpr uint32_t kIrqSetActionMask = 1u << 3;
inline constexpr uint32_t kIrqSetActionUnmask = 1u << 4;
inline constexpr uint32_t kIrqSetActionTrigger = 1u << 5;
inline constexpr uint32_t kIrqSetDataMask = kIrqSetDataNone | kIrqSetDataBool | kIrqSetDataEventfd;
inline constexpr uint32_t kIrqSetActionMaskAll =
    kIrqSetActionMask | kIrqSetActionUnmask | kIrqSetActionTrigger;

struct [[gnu::packed]] IrqSet {
  uint32_t argsz;
  uint32_t flags;
  uint32_t index;
  uint32_t start;
  uint32_t count;
  // followed by u8 bools[count] with DATA_BOOL
};
static_assert(sizeof(IrqSet) == 20);

// --- REGION_READ / REGION_WRITE -------------------------------------------------------------
struct [[gnu::packed]] RegionAccess {
  uint64_t offset;
  uint32_t region;
  uint32_t count;
  // followed by data (REGION_WRITE request, REGION_READ reply)
};
static_assert(sizeof(RegionAccess) == 16);

// --- DMA_READ / DMA_WRITE (server -> client) ------------------------------------------------
struct [[gnu::packed]] DmaAccess {
  uint64_t address;
  uint64_t count;
};
static_assert(sizeof(DmaAccess) == 16);

// --- REGION_WRITE_MULTI ---------------------------------------------------------------------
inline constexpr uint32_t kMaxWriteMultiData = 8;

struct [[gnu::packed]] WriteMultiHeader {
  uint64_t wr_cnt;
};
static_assert(sizeof(WriteMultiHeader) == 8);

struct [[gnu::packed]] WriteMultiEntry {
  uint64_t offset;
  uint32_t region;
  uint32_t count;
  uint8_t data[kMaxWriteMultiData];
};
static_assert(sizeof(WriteMultiEntry) == 24);

// --- DEVICE_FEATURE -------------------------------------------------------------------------
struct [[gnu::packed]] DeviceFeature {
  uint32_t argsz;
  uint32_t flags;
};
static_assert(sizeof(DeviceFeature) == 8);

// --- PCI layout of regions and IRQs (as in <linux/vfio.h>) ----------------------------------
inline constexpr uint32_t kPciBar0RegionIndex = 0;
inline constexpr uint32_t kPciBar5RegionIndex = 5;
inline constexpr uint32_t kPciRomRegionIndex = 6;
inline constexpr uint32_t kPciConfigRegionIndex = 7;
inline constexpr uint32_t kPciVgaRegionIndex = 8;
inline constexpr uint32_t kPciNumRegions = 9;

inline constexpr uint32_t kPciIntxIrqIndex = 0;
inline constexpr uint32_t kPciMsiIrqIndex = 1;
inline constexpr uint32_t kPciMsixIrqIndex = 2;
inline constexpr uint32_t kPciErrIrqIndex = 3;
inline constexpr uint32_t kPciReqIrqIndex = 4;
inline constexpr uint32_t kPciNumIrqs = 5;

}  // namespace vfu::wire
