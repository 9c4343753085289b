#include "server/protocol/codec.h"

#include <nlohmann/json.hpp>

#include <bit>
#include <string>

#include "server/common/checked_math.h"

namespace vfu::proto {
namespace {

using nlohmann::json;

Error Invalid(std::string what) { return MakeError(EINVAL, std::move(what)); }

std::string Sz(size_t n) { return std::to_string(n); }

// Rejects JSON nested deeper than a small bound before the (recursive) parser sees it.
bool NestingWithin(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"')
      in_string = true;
    else if (c == '{' || c == '[') {
      if (++depth > max_depth) return false;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return true;
}

Status ReadUint(const json& obj, const char* key, std::optional<uint64_t>* out) {
  auto it = obj.find(key);
  if (it == obj.end()) return Status::Ok();
  if (!it->is_number_unsigned())
    return Invalid(std::string("capability ") + key + " is not an unsigned number");
  *out = it->get<uint64_t>();
  return Status::Ok();
}

}  // namespace

Result<wire::Header> DecodeHeader(Bytes bytes, uint32_t max_message_size) {
  if (bytes.size() < sizeof(wire::Header))
    return Invalid("short header: " + Sz(bytes.size()) + " bytes");
  auto h = Load<wire::Header>(bytes);
  if (h.msg_size < sizeof(wire::Header)) {
    return Invalid("msg_size " + Sz(h.msg_size) + " is smaller than the header");
  }
  if (h.msg_size > max_message_size) {
    return MakeError(E2BIG,
                     "msg_size " + Sz(h.msg_size) + " exceeds the maximum " + Sz(max_message_size));
  }
  return h;
}

Result<VersionMessage> DecodeVersion(Bytes payload) {
  if (payload.size() < sizeof(wire::Version)) return Invalid("VERSION payload too short");
  auto v = Load<wire::Version>(payload);
  VersionMessage msg;
  msg.major = v.major;
  msg.minor = v.minor;
  Bytes rest = payload.subspan(sizeof(wire::Version));
  if (rest.empty()) return msg;
  if (rest.size() > kMaxVersionJsonSize) {
    return MakeError(
        E2BIG, "VERSION JSON of " + Sz(rest.size()) + " bytes exceeds " + Sz(kMaxVersionJsonSize));
  }
  if (rest.back() != 0) return Invalid("VERSION JSON is not NUL-terminated");
  std::string_view text(reinterpret_cast<const char*>(rest.data()), rest.size() - 1);
  if (text.find('\0') != std::string_view::npos) return Invalid("VERSION JSON has an embedded NUL");
  msg.has_json = true;
  if (text.empty()) return msg;
  if (!NestingWithin(text, 8)) return Invalid("VERSION JSON nested too deeply");
  json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Invalid("VERSION JSON does not parse");
  if (!doc.is_object()) return Invalid("VERSION JSON is not an object");
  auto caps_it = doc.find("capabilities");
  if (caps_it == doc.end()) return msg;
  if (!caps_it->is_object()) return Invalid("\"capabilities\" is not an object");
  const json& caps = *caps_it;
  VFU_RETURN_IF_ERROR(ReadUint(caps, "max_msg_fds", &msg.caps.max_msg_fds));
  VFU_RETURN_IF_ERROR(ReadUint(caps, "max_data_xfer_size", &msg.caps.max_data_xfer_size));
  VFU_RETURN_IF_ERROR(ReadUint(caps, "pgsizes", &msg.caps.pgsizes));
  VFU_RETURN_IF_ERROR(ReadUint(caps, "max_dma_maps", &msg.caps.max_dma_maps));
  if (auto it = caps.find("write_multiple"); it != caps.end()) {
    if (!it->is_boolean()) return Invalid("capability write_multiple is not a boolean");
    msg.caps.write_multiple = it->get<bool>();
  }
  if (auto it = caps.find("migration"); it != caps.end()) {
    if (!it->is_object()) return Invalid("capability migration is not an object");
    msg.caps.has_migration = true;
  }
  if (auto it = caps.find("twin_socket"); it != caps.end()) {
    if (!it->is_object()) return Invalid("capability twin_socket is not an object");
    msg.caps.has_twin_socket = true;
  }
  for (auto it = caps.begin(); it != caps.end(); ++it) {
    const std::string& k = it.key();
    if (k != "max_msg_fds" && k != "max_data_xfer_size" && k != "pgsizes" && k != "max_dma_maps" &&
        k != "write_multiple" && k != "migration" && k != "twin_socket") {
      msg.caps.unknown_keys.push_back(k);
    }
  }
  return msg;
}

namespace {

std::vector<uint8_t> VersionPayload(uint16_t major, uint16_t minor, const std::string& json_text) {
  std::vector<uint8_t> out;
  Append(out, wire::Version{major, minor});
  if (!json_text.empty()) {
    out.insert(out.end(), json_text.begin(), json_text.end());
    out.push_back(0);
  }
  return out;
}

}  // namespace

std::vector<uint8_t> EncodeVersionReply(const Capabilities& client, const Capabilities& server,
                                        size_t max_payload_size) {
  // Ordered by importance: when the reply must shrink to fit, the tail goes first.
  std::vector<std::pair<std::string, std::string>> entries;
  auto add_uint = [&](const char* key, const std::optional<uint64_t>& proposed,
                      const std::optional<uint64_t>& ours) {
    if (proposed && ours) entries.emplace_back(key, std::to_string(*ours));
  };
  add_uint("max_msg_fds", client.max_msg_fds, server.max_msg_fds);
  add_uint("max_data_xfer_size", client.max_data_xfer_size, server.max_data_xfer_size);
  add_uint("pgsizes", client.pgsizes, server.pgsizes);
  add_uint("max_dma_maps", client.max_dma_maps, server.max_dma_maps);
  if (client.write_multiple && server.write_multiple) {
    entries.emplace_back("write_multiple",
                         *client.write_multiple && *server.write_multiple ? "true" : "false");
  }
  while (true) {
    std::string text;
    if (!entries.empty()) {
      text = "{\"capabilities\":{";
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i) text += ',';
        text += '"' + entries[i].first + "\":" + entries[i].second;
      }
      text += "}}";
    }
    std::vector<uint8_t> payload = VersionPayload(wire::kProtocolMajor, wire::kProtocolMinor, text);
    if (payload.size() <= max_payload_size || entries.empty()) return payload;
    entries.pop_back();
  }
}

std::vector<uint8_t> EncodeVersionRequest(const Capabilities& caps) {
  json c = json::object();
  if (caps.max_msg_fds) c["max_msg_fds"] = *caps.max_msg_fds;
  if (caps.max_data_xfer_size) c["max_data_xfer_size"] = *caps.max_data_xfer_size;
  if (caps.pgsizes) c["pgsizes"] = *caps.pgsizes;
  if (caps.max_dma_maps) c["max_dma_maps"] = *caps.max_dma_maps;
  if (caps.write_multiple) c["write_multiple"] = *caps.write_multiple;
  json doc = {{"capabilities", c}};
  return VersionPayload(wire::kProtocolMajor, wire::kProtocolMinor, doc.dump());
}

Result<wire::DmaMap> DecodeDmaMap(Bytes payload) {
  if (payload.size() < sizeof(wire::DmaMap))
    return Invalid("DMA_MAP payload of " + Sz(payload.size()) + " bytes is short");
  auto m = Load<wire::DmaMap>(payload);
  if (m.argsz < sizeof(wire::DmaMap)) return Invalid("DMA_MAP argsz " + Sz(m.argsz) + " < 32");
  if (m.flags & ~(wire::kDmaFlagRead | wire::kDmaFlagWrite))
    return Invalid("DMA_MAP has unknown flags");
  if (m.size == 0) return Invalid("DMA_MAP of size 0");
  if (!RangeFitsAddressSpace(m.address, m.size))
    return Invalid("DMA_MAP range wraps the address space");
  if (!RangeFitsAddressSpace(m.offset, m.size)) return Invalid("DMA_MAP file range wraps");
  if (m.address % kPageSize || m.size % kPageSize || m.offset % kPageSize) {
    return Invalid("DMA_MAP address/size/offset not aligned to 4 KiB");
  }
  return m;
}

Result<wire::DmaUnmap> DecodeDmaUnmap(Bytes payload) {
  if (payload.size() < sizeof(wire::DmaUnmap))
    return Invalid("DMA_UNMAP payload of " + Sz(payload.size()) + " bytes is short");
  auto u = Load<wire::DmaUnmap>(payload);
  if (u.argsz < sizeof(wire::DmaUnmap)) return Invalid("DMA_UNMAP argsz " + Sz(u.argsz) + " < 24");
  if (u.flags & wire::kDmaUnmapFlagGetDirtyBitmap)
    return MakeError(ENOTSUP, "DMA_UNMAP dirty bitmap is not supported");
  if (u.flags & ~wire::kDmaUnmapFlagAll) return Invalid("DMA_UNMAP has unknown flags");
  if (u.flags & wire::kDmaUnmapFlagAll) {
    if (u.address != 0 || u.size != 0) return Invalid("DMA_UNMAP ALL with a non-zero range");
  } else if (u.size == 0 || !RangeFitsAddressSpace(u.address, u.size)) {
    return Invalid("DMA_UNMAP range is empty or wraps");
  }
  return u;
}

Result<wire::DeviceInfo> DecodeDeviceInfoRequest(Bytes payload) {
  if (payload.size() < sizeof(wire::DeviceInfo)) return Invalid("DEVICE_GET_INFO payload is short");
  auto d = Load<wire::DeviceInfo>(payload);
  if (d.argsz < sizeof(wire::DeviceInfo))
    return Invalid("DEVICE_GET_INFO argsz " + Sz(d.argsz) + " < 16");
  return d;
}

Result<wire::RegionInfo> DecodeRegionInfoRequest(Bytes payload) {
  if (payload.size() < sizeof(wire::RegionInfo))
    return Invalid("DEVICE_GET_REGION_INFO payload is short");
  auto r = Load<wire::RegionInfo>(payload);
  if (r.argsz < sizeof(wire::RegionInfo))
    return Invalid("DEVICE_GET_REGION_INFO argsz " + Sz(r.argsz) + " < 32");
  return r;
}

Result<wire::IrqInfo> DecodeIrqInfoRequest(Bytes payload) {
  if (payload.size() < sizeof(wire::IrqInfo))
    return Invalid("DEVICE_GET_IRQ_INFO payload is short");
  auto i = Load<wire::IrqInfo>(payload);
  if (i.argsz < sizeof(wire::IrqInfo))
    return Invalid("DEVICE_GET_IRQ_INFO argsz " + Sz(i.argsz) + " < 16");
  return i;
}

Result<SetIrqsRequest> DecodeSetIrqs(Bytes payload, size_t num_fds) {
  if (payload.size() < sizeof(wire::IrqSet)) return Invalid("DEVICE_SET_IRQS payload is short");
  SetIrqsRequest req{Load<wire::IrqSet>(payload), {}};
  const wire::IrqSet& s = req.set;
  // argsz is the request size here; QEMU sends 20 even with eventfds attached, so the number of
  // eventfds is taken from the control message, never from argsz.
  if (s.argsz < sizeof(wire::IrqSet))
    return Invalid("DEVICE_SET_IRQS argsz " + Sz(s.argsz) + " < 20");
  if (s.flags & ~(wire::kIrqSetDataMask | wire::kIrqSetActionMaskAll)) {
    return Invalid("DEVICE_SET_IRQS has unknown flags");
  }
  uint32_t data = s.flags & wire::kIrqSetDataMask;
  uint32_t action = s.flags & wire::kIrqSetActionMaskAll;
  if (std::popcount(data) != 1) return Invalid("DEVICE_SET_IRQS needs exactly one DATA flag");
  if (std::popcount(action) != 1) return Invalid("DEVICE_SET_IRQS needs exactly one ACTION flag");
  if (s.count == 0 && data != wire::kIrqSetDataNone) {
    return Invalid("DEVICE_SET_IRQS count 0 is only valid with DATA_NONE");
  }
  if (s.count == 0 && s.start != 0) return Invalid("DEVICE_SET_IRQS count 0 needs start 0");
  if (data != wire::kIrqSetDataEventfd && num_fds != 0) {
    return Invalid("DEVICE_SET_IRQS carries fds without DATA_EVENTFD");
  }
  if (data == wire::kIrqSetDataEventfd && num_fds != 0 && num_fds != s.count) {
    return Invalid("DEVICE_SET_IRQS has " + Sz(num_fds) + " eventfds for count " + Sz(s.count));
  }
  if (data == wire::kIrqSetDataBool) {
    Bytes rest = payload.subspan(sizeof(wire::IrqSet));
    if (rest.size() < s.count)
      return Invalid("DEVICE_SET_IRQS DATA_BOOL has fewer bools than count");
    req.bools = rest.first(s.count);
  }
  return req;
}

Result<wire::RegionAccess> DecodeRegionRead(Bytes payload, uint32_t max_xfer) {
  if (payload.size() < sizeof(wire::RegionAccess)) return Invalid("REGION_READ payload is short");
  auto a = Load<wire::RegionAccess>(payload);
  if (a.count == 0) return Invalid("REGION_READ of 0 bytes");
  if (a.count > max_xfer)
    return MakeError(E2BIG, "REGION_READ count " + Sz(a.count) + " exceeds " + Sz(max_xfer));
  return a;
}

Result<RegionWriteRequest> DecodeRegionWrite(Bytes payload, uint32_t max_xfer) {
  if (payload.size() < sizeof(wire::RegionAccess)) return Invalid("REGION_WRITE payload is short");
  RegionWriteRequest w{Load<wire::RegionAccess>(payload), {}};
  if (w.access.count == 0) return Invalid("REGION_WRITE of 0 bytes");
  if (w.access.count > max_xfer)
    return MakeError(E2BIG,
                     "REGION_WRITE count " + Sz(w.access.count) + " exceeds " + Sz(max_xfer));
  Bytes data = payload.subspan(sizeof(wire::RegionAccess));
  if (data.size() != w.access.count) {
    return Invalid("REGION_WRITE count " + Sz(w.access.count) + " but " + Sz(data.size()) +
                   " data bytes");
  }
  w.data = data;
  return w;
}

Result<std::vector<wire::WriteMultiEntry>> DecodeWriteMulti(Bytes payload) {
  if (payload.size() < sizeof(wire::WriteMultiHeader))
    return Invalid("REGION_WRITE_MULTI payload is short");
  uint64_t n = Load<wire::WriteMultiHeader>(payload).wr_cnt;
  if (n == 0 || n > kMaxWriteMultiEntries)
    return Invalid("REGION_WRITE_MULTI wr_cnt " + Sz(n) + " out of range");
  if (payload.size() != sizeof(wire::WriteMultiHeader) + n * sizeof(wire::WriteMultiEntry)) {
    return Invalid("REGION_WRITE_MULTI payload size does not match wr_cnt");
  }
  std::vector<wire::WriteMultiEntry> entries(n);
  for (uint64_t i = 0; i < n; ++i) {
    entries[i] = Load<wire::WriteMultiEntry>(
        payload, sizeof(wire::WriteMultiHeader) + i * sizeof(wire::WriteMultiEntry));
    if (entries[i].count == 0 || entries[i].count > wire::kMaxWriteMultiData) {
      return Invalid("REGION_WRITE_MULTI entry count " + Sz(entries[i].count) + " not in 1..8");
    }
  }
  return entries;
}

Status CheckRegionAccess(uint32_t region, uint64_t offset, uint64_t count, uint32_t num_regions,
                         uint64_t region_size) {
  if (region >= num_regions) return Invalid("region index " + Sz(region) + " out of range");
  if (!RangeWithin(offset, count, region_size)) {
    return Invalid("access [" + Sz(offset) + ", +" + Sz(count) + ") outside region " + Sz(region) +
                   " of size " + Sz(region_size));
  }
  return Status::Ok();
}

Result<RegionInfoReply> DecodeRegionInfoReply(Bytes payload) {
  if (payload.size() < sizeof(wire::RegionInfo)) return Invalid("REGION_INFO reply is short");
  RegionInfoReply reply{Load<wire::RegionInfo>(payload), {}};
  if (!(reply.info.flags & wire::kRegionFlagCaps) || reply.info.cap_offset == 0) return reply;
  // The chain must stay inside the payload and move forward, so it ends.
  uint32_t off = reply.info.cap_offset;
  for (int hops = 0; off != 0; ++hops) {
    if (hops > 16) return Invalid("REGION_INFO capability chain too long");
    if (off < sizeof(wire::RegionInfo) ||
        !RangeWithin(off, sizeof(wire::CapHeader), payload.size())) {
      return Invalid("REGION_INFO capability offset out of range");
    }
    auto cap = Load<wire::CapHeader>(payload, off);
    if (cap.id == wire::kCapSparseMmap) {
      if (!RangeWithin(off, sizeof(wire::SparseMmapCap), payload.size()))
        return Invalid("sparse mmap cap is short");
      auto sparse = Load<wire::SparseMmapCap>(payload, off);
      uint64_t areas_off = off + sizeof(wire::SparseMmapCap);
      if (sparse.nr_areas > 1024 ||
          !RangeWithin(areas_off, uint64_t{sparse.nr_areas} * sizeof(wire::SparseMmapArea),
                       payload.size())) {
        return Invalid("sparse mmap areas out of range");
      }
      for (uint32_t i = 0; i < sparse.nr_areas; ++i) {
        reply.sparse_areas.push_back(
            Load<wire::SparseMmapArea>(payload, areas_off + i * sizeof(wire::SparseMmapArea)));
      }
    }
    if (cap.next != 0 && cap.next <= off)
      return Invalid("REGION_INFO capability chain goes backwards");
    off = cap.next;
  }
  return reply;
}

void BeginMessage(std::vector<uint8_t>& out, uint16_t msg_id, uint16_t command, uint32_t flags,
                  uint32_t error_no) {
  out.clear();
  Append(out, wire::Header{msg_id, command, sizeof(wire::Header), flags, error_no});
}

void FinishMessage(std::vector<uint8_t>& out) {
  uint32_t size = static_cast<uint32_t>(out.size());
  std::memcpy(out.data() + offsetof(wire::Header, msg_size), &size, sizeof(size));
}

std::vector<uint8_t> EncodeErrorReply(const wire::Header& request, int error_no) {
  std::vector<uint8_t> out;
  BeginMessage(out, request.msg_id, request.command, wire::kFlagTypeReply | wire::kFlagError,
               static_cast<uint32_t>(error_no));
  return out;
}

}  // namespace vfu::proto

namespace vfu::wire {

const char* CommandName(uint16_t command) {
  switch (static_cast<Command>(command)) {
    case Command::kVersion:
      return "VERSION";
    case Command::kDmaMap:
      return "DMA_MAP";
    case Command::kDmaUnmap:
      return "DMA_UNMAP";
    case Command::kDeviceGetInfo:
      return "DEVICE_GET_INFO";
    case Command::kDeviceGetRegionInfo:
      return "DEVICE_GET_REGION_INFO";
    case Command::kDeviceGetRegionIoFds:
      return "DEVICE_GET_REGION_IO_FDS";
    case Command::kDeviceGetIrqInfo:
      return "DEVICE_GET_IRQ_INFO";
    case Command::kDeviceSetIrqs:
      return "DEVICE_SET_IRQS";
    case Command::kRegionRead:
      return "REGION_READ";
    case Command::kRegionWrite:
      return "REGION_WRITE";
    case Command::kDmaRead:
      return "DMA_READ";
    case Command::kDmaWrite:
      return "DMA_WRITE";
    case Command::kDeviceReset:
      return "DEVICE_RESET";
    case Command::kRegionWriteMulti:
      return "REGION_WRITE_MULTI";
    case Command::kDeviceFeature:
      return "DEVICE_FEATURE";
    case Command::kMigDataRead:
      return "MIG_DATA_READ";
    case Command::kMigDataWrite:
      return "MIG_DATA_WRITE";
  }
  return "UNKNOWN";
}

bool IsKnownCommand(uint16_t command) {
  return command >= static_cast<uint16_t>(Command::kVersion) &&
         command <= static_cast<uint16_t>(Command::kMigDataWrite) && command != 14;
}

}  // namespace vfu::wire
