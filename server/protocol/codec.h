// Decoding and encoding of vfio-user messages, with every validation rule that does not need
// device state: msg_size against payload, argsz rules, flag combinations, data lengths, and
// overflow-safe offset/count arithmetic. Pure functions over byte spans; no I/O, no state.
//
// Convention: "payload" is the message body after the 16-byte header; its size always comes
// from msg_size, never from argsz.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "server/common/status.h"
#include "server/protocol/wire.h"

namespace vfu::proto {

// Limits this implementation enforces on what a peer sends.
inline constexpr uint32_t kMaxDataXferSize = 1u << 20;  // advertised max_data_xfer_size
inline constexpr uint32_t kMaxMessageSize =
    sizeof(wire::Header) + sizeof(wire::RegionAccess) + kMaxDataXferSize;
inline constexpr size_t kMaxVersionJsonSize = 4096;
inline constexpr uint32_t kAdvertisedMaxMsgFds = 8;  // what we tell clients
inline constexpr size_t kMaxFdsPerMessage = 32;      // what we accept (>= 16 as QEMU may send)
inline constexpr uint32_t kMaxDmaMaps = 65535;
inline constexpr uint64_t kPageSize = 4096;
inline constexpr uint64_t kMaxWriteMultiEntries = 1024;

using Bytes = std::span<const uint8_t>;

// Copies a packed struct out of a byte span (which must be at least sizeof(T)).
template <typename T>
T Load(Bytes bytes, size_t offset = 0) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

// Appends a packed struct's bytes.
template <typename T>
void Append(std::vector<uint8_t>& out, const T& value) {
  size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &value, sizeof(T));
}

// --- Header ---------------------------------------------------------------------------------
// Validates the framing fields of a header: msg_size within [16, max_message_size].
Result<wire::Header> DecodeHeader(Bytes bytes, uint32_t max_message_size = kMaxMessageSize);

inline uint32_t MessageType(const wire::Header& h) { return h.flags & wire::kFlagTypeMask; }

// --- Capabilities (VERSION JSON) ------------------------------------------------------------
struct Capabilities {
  std::optional<uint64_t> max_msg_fds;
  std::optional<uint64_t> max_data_xfer_size;
  std::optional<uint64_t> pgsizes;
  std::optional<uint64_t> max_dma_maps;
  std::optional<bool> write_multiple;
  bool has_migration = false;
  bool has_twin_socket = false;
  std::vector<std::string> unknown_keys;
};

struct VersionMessage {
  uint16_t major = 0;
  uint16_t minor = 0;
  bool has_json = false;
  Capabilities caps;
};

// Decodes a VERSION payload (request or reply). JSON must be NUL-terminated, at most
// kMaxVersionJsonSize, an object whose optional "capabilities" member is an object.
Result<VersionMessage> DecodeVersion(Bytes payload);

// Builds the server's VERSION reply payload: our values for the capabilities the client
// proposed (a subset, as the spec requires), compact JSON, never longer than max_payload_size.
std::vector<uint8_t> EncodeVersionReply(const Capabilities& client_caps,
                                        const Capabilities& server_caps, size_t max_payload_size);

// Builds a client's VERSION request payload (what our client library proposes).
std::vector<uint8_t> EncodeVersionRequest(const Capabilities& caps);

// --- Client -> server requests --------------------------------------------------------------
Result<wire::DmaMap> DecodeDmaMap(Bytes payload);
Result<wire::DmaUnmap> DecodeDmaUnmap(Bytes payload);
Result<wire::DeviceInfo> DecodeDeviceInfoRequest(Bytes payload);
Result<wire::RegionInfo> DecodeRegionInfoRequest(Bytes payload);
Result<wire::IrqInfo> DecodeIrqInfoRequest(Bytes payload);

struct SetIrqsRequest {
  wire::IrqSet set;
  Bytes bools;  // DATA_BOOL only: one byte per interrupt in [start, start + count)
};
// Checks exactly-one DATA and exactly-one ACTION flag, no unknown bits, bool data length, and
// the fd count: fds only with DATA_EVENTFD, and then either none (de-assign) or one per
// interrupt. Index/start/count against the device's IRQ counts is the session's job.
Result<SetIrqsRequest> DecodeSetIrqs(Bytes payload, size_t num_fds);

// REGION_READ: count <= max_xfer; no data.
Result<wire::RegionAccess> DecodeRegionRead(Bytes payload, uint32_t max_xfer = kMaxDataXferSize);

struct RegionWriteRequest {
  wire::RegionAccess access;
  Bytes data;
};
// REGION_WRITE: count <= max_xfer and exactly count bytes of data follow.
Result<RegionWriteRequest> DecodeRegionWrite(Bytes payload, uint32_t max_xfer = kMaxDataXferSize);

// REGION_WRITE_MULTI: 1..kMaxWriteMultiEntries entries, each with count 1..8, payload exact.
Result<std::vector<wire::WriteMultiEntry>> DecodeWriteMulti(Bytes payload);

// Region index and [offset, offset + count) against a region of region_size bytes.
Status CheckRegionAccess(uint32_t region, uint64_t offset, uint64_t count, uint32_t num_regions,
                         uint64_t region_size);

// --- Replies (decoded by the client side) ---------------------------------------------------
struct RegionInfoReply {
  wire::RegionInfo info;
  std::vector<wire::SparseMmapArea> sparse_areas;  // from the sparse-mmap capability, if any
};
// Walks the capability chain with bounds and loop checks.
Result<RegionInfoReply> DecodeRegionInfoReply(Bytes payload);

// --- Encoding -------------------------------------------------------------------------------
// Writes a header for a message with `payload_size` bytes after it into out (cleared first).
void BeginMessage(std::vector<uint8_t>& out, uint16_t msg_id, uint16_t command, uint32_t flags,
                  uint32_t error_no = 0);
// Patches msg_size in a message begun with BeginMessage once the payload is appended.
void FinishMessage(std::vector<uint8_t>& out);

std::vector<uint8_t> EncodeErrorReply(const wire::Header& request, int error_no);

}  // namespace vfu::proto
