#include "server/client/client.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

namespace vfu::client {
namespace {

std::string Num(uint64_t v) { return std::to_string(v); }

template <typename T>
std::span<const uint8_t> AsBytes(const T& v) {
  return {reinterpret_cast<const uint8_t*>(&v), sizeof(T)};
}

}  // namespace

proto::Capabilities ClientOptions::DefaultCaps() {
  proto::Capabilities c;
  c.max_msg_fds = 16;
  c.max_data_xfer_size = proto::kMaxDataXferSize;
  c.pgsizes = proto::kPageSize;
  c.max_dma_maps = proto::kMaxDmaMaps;
  c.write_multiple = true;
  return c;
}

Result<DmaBuffer> DmaBuffer::Create(size_t size, const char* name) {
  DmaBuffer b;
  b.fd_.Reset(::memfd_create(name, MFD_CLOEXEC));
  if (!b.fd_) return MakeError(errno, "memfd_create failed");
  if (::ftruncate(b.fd_.get(), static_cast<off_t>(size)) != 0) {
    return MakeError(errno, "ftruncate of the DMA memfd failed");
  }
  auto m = MemoryMapping::Map(b.fd_.get(), 0, size, PROT_READ | PROT_WRITE);
  if (!m) return m.error();
  b.mapping_ = std::move(*m);
  return b;
}

Client::Client(UnixConnection connection, ClientOptions options)
    : stream_(std::move(connection)), options_(std::move(options)) {}

Result<std::unique_ptr<Client>> Client::Connect(const std::string& socket_path,
                                                ClientOptions options) {
  auto conn = UnixConnection::Connect(socket_path);
  if (!conn) return conn.error();
  return Attach(std::move(*conn), std::move(options));
}

Result<std::unique_ptr<Client>> Client::Attach(UnixConnection connection, ClientOptions options) {
  VFU_RETURN_IF_ERROR(connection.SetNonBlocking(false));
  VFU_RETURN_IF_ERROR(connection.SetReceiveTimeout(options.timeout));
  std::unique_ptr<Client> c(new Client(std::move(connection), std::move(options)));
  VFU_RETURN_IF_ERROR(c->Negotiate());
  return c;
}

Status Client::Negotiate() {
  auto payload = proto::EncodeVersionRequest(options_.proposed_caps);
  auto reply = Call(static_cast<uint16_t>(wire::Command::kVersion), payload);
  if (!reply) return reply.error();
  VFU_RETURN_IF_ERROR(CheckReply(*reply, static_cast<uint16_t>(wire::Command::kVersion)));
  auto version = proto::DecodeVersion(reply->payload);
  if (!version) return version.error();
  if (version->major != wire::kProtocolMajor || version->minor > wire::kProtocolMinor) {
    return MakeError(
        EPROTO, "incompatible server version " + Num(version->major) + "." + Num(version->minor));
  }
  server_caps_ = version->caps;
  if (server_caps_.max_data_xfer_size) {
    // Region accesses go in chunks of this size: 0 would never make progress.
    if (*server_caps_.max_data_xfer_size == 0) {
      return MakeError(EPROTO, "server announced max_data_xfer_size 0");
    }
    max_xfer_ = static_cast<uint32_t>(
        std::min<uint64_t>(*server_caps_.max_data_xfer_size, proto::kMaxDataXferSize));
  }
  if (server_caps_.max_msg_fds) {
    max_fds_ = static_cast<uint32_t>(std::clamp<uint64_t>(*server_caps_.max_msg_fds, 1, 16));
  }
  return Status::Ok();
}

Result<uint16_t> Client::Send(uint16_t command, std::span<const uint8_t> payload,
                              std::span<const int> fds, uint32_t flags) {
  uint16_t id = next_id_++;
  proto::BeginMessage(buf_, id, command, flags);
  buf_.insert(buf_.end(), payload.begin(), payload.end());
  proto::FinishMessage(buf_);
  VFU_RETURN_IF_ERROR(stream_.Send(buf_, fds));
  // The socket is blocking, so a queued remainder means a short write: finish it now.
  while (stream_.HasPendingOutput()) VFU_RETURN_IF_ERROR(stream_.Flush());
  if (!(flags & wire::kFlagNoReply)) ++outstanding_;
  return id;
}

Result<RawReply> Client::Receive() { return ReceiveExpecting(0); }

Result<InboundMessage*> Client::ReceiveInPlace(size_t expected_reply_size, bool fds_allowed) {
  // inbound_ persists across calls: after a timeout in the middle of a reply, the stream's
  // partial state refers to its buffer and the next call finishes that reply.
  InboundMessage& msg = inbound_;
  // One read for the whole reply only when nothing but that reply can be in flight.
  bool single = expected_reply_size > 0 && outstanding_ == 1 && in_step_;
  auto st =
      single ? stream_.ReadExpected(&msg, expected_reply_size, fds_allowed) : stream_.Read(&msg);
  if (!st) {
    in_step_ = false;
    return st.error();
  }
  if (*st == ReadStatus::kWouldBlock) {
    in_step_ = false;  // the late reply may still arrive
    return MakeError(ETIMEDOUT, "timed out waiting for a reply");
  }
  if (*st == ReadStatus::kClosed) return MakeError(ECONNRESET, "server closed the connection");
  if (outstanding_ > 0) --outstanding_;
  return &msg;
}

Result<RawReply> Client::ReceiveExpecting(size_t expected_reply_size) {
  auto msg = ReceiveInPlace(expected_reply_size, /*fds_allowed=*/true);
  if (!msg) return msg.error();
  RawReply r;
  r.header = (*msg)->header;
  r.payload = std::exchange((*msg)->payload, {});
  r.fds = std::exchange((*msg)->fds, {});
  return r;
}

Result<RawReply> Client::Call(uint16_t command, std::span<const uint8_t> payload,
                              std::span<const int> fds, uint32_t flags) {
  return CallExpecting(0, command, payload, fds, flags);
}

Result<RawReply> Client::CallExpecting(size_t expected_reply_size, uint16_t command,
                                       std::span<const uint8_t> payload, std::span<const int> fds,
                                       uint32_t flags) {
  auto id = Send(command, payload, fds, flags);
  if (!id) return id.error();
  auto reply = ReceiveExpecting(expected_reply_size);
  if (!reply) return reply.error();
  VFU_RETURN_IF_ERROR(CheckReplyMatches(reply->header, *id, command));
  return reply;
}

Status Client::CheckReplyMatches(const wire::Header& header, uint16_t id, uint16_t command) {
  if (header.msg_id != id || header.command != command) {
    return MakeError(EPROTO, "reply " + Num(header.msg_id) + "/" + Num(header.command) +
                                 " does not match request " + Num(id) + "/" + Num(command));
  }
  return Status::Ok();
}

Status Client::CheckReply(const RawReply& reply, uint16_t command) const {
  return CheckReplyHeader(reply.header, command);
}

Status Client::CheckReplyHeader(const wire::Header& header, uint16_t command) const {
  if (proto::MessageType(header) != wire::kFlagTypeReply) {
    return MakeError(EPROTO, "expected a reply to " + std::string(wire::CommandName(command)));
  }
  if (header.flags & wire::kFlagError) {
    int err = header.error_no != 0 ? static_cast<int>(header.error_no) : EIO;
    return MakeError(err,
                     std::string(wire::CommandName(command)) + " failed: " + std::strerror(err));
  }
  return Status::Ok();
}

Result<wire::DeviceInfo> Client::GetDeviceInfo() {
  wire::DeviceInfo req{sizeof(wire::DeviceInfo), 0, 0, 0};
  auto cmd = static_cast<uint16_t>(wire::Command::kDeviceGetInfo);
  auto reply = Call(cmd, AsBytes(req));
  if (!reply) return reply.error();
  VFU_RETURN_IF_ERROR(CheckReply(*reply, cmd));
  if (reply->payload.size() < sizeof(wire::DeviceInfo))
    return MakeError(EPROTO, "short DEVICE_GET_INFO reply");
  return proto::Load<wire::DeviceInfo>(reply->payload);
}

Result<RegionInfo> Client::GetRegionInfo(uint32_t index) {
  auto cmd = static_cast<uint16_t>(wire::Command::kDeviceGetRegionInfo);
  uint32_t argsz = sizeof(wire::RegionInfo);
  for (int attempt = 0; attempt < 2; ++attempt) {
    wire::RegionInfo req{};
    req.argsz = argsz;
    req.index = index;
    auto reply = Call(cmd, AsBytes(req));
    if (!reply) return reply.error();
    VFU_RETURN_IF_ERROR(CheckReply(*reply, cmd));
    if (reply->payload.size() < sizeof(wire::RegionInfo))
      return MakeError(EPROTO, "short REGION_INFO reply");
    auto head = proto::Load<wire::RegionInfo>(reply->payload);
    if (head.argsz > argsz) {  // truncated: retry with the size the server needs
      if (head.argsz > 65536) return MakeError(EPROTO, "REGION_INFO argsz is implausible");
      argsz = head.argsz;
      continue;
    }
    auto decoded = proto::DecodeRegionInfoReply(reply->payload);
    if (!decoded) return decoded.error();
    RegionInfo out;
    out.info = decoded->info;
    out.sparse_areas = std::move(decoded->sparse_areas);
    if (!reply->fds.empty()) out.fd = std::move(reply->fds[0]);
    return out;
  }
  return MakeError(EPROTO, "REGION_INFO still truncated after a retry");
}

Result<wire::IrqInfo> Client::GetIrqInfo(uint32_t index) {
  wire::IrqInfo req{sizeof(wire::IrqInfo), 0, index, 0};
  auto cmd = static_cast<uint16_t>(wire::Command::kDeviceGetIrqInfo);
  auto reply = Call(cmd, AsBytes(req));
  if (!reply) return reply.error();
  VFU_RETURN_IF_ERROR(CheckReply(*reply, cmd));
  if (reply->payload.size() < sizeof(wire::IrqInfo))
    return MakeError(EPROTO, "short IRQ_INFO reply");
  return proto::Load<wire::IrqInfo>(reply->payload);
}

Result<const InboundMessage*> Client::CallRegionAccess(uint16_t command,
                                                       std::span<const uint8_t> payload,
                                                       size_t reply_data) {
  auto id = Send(command, payload);
  if (!id) return id.error();
  const size_t reply_payload = sizeof(wire::RegionAccess) + reply_data;
  auto reply = ReceiveInPlace(sizeof(wire::Header) + reply_payload, /*fds_allowed=*/false);
  if (!reply) return reply.error();
  const InboundMessage& m = **reply;
  VFU_RETURN_IF_ERROR(CheckReplyMatches(m.header, *id, command));
  VFU_RETURN_IF_ERROR(CheckReplyHeader(m.header, command));
  if (m.payload.size() != reply_payload) {
    return MakeError(EPROTO, std::string(wire::CommandName(command)) + " reply has " +
                                 Num(m.payload.size()) + " bytes");
  }
  return &m;
}

Status Client::RegionRead(uint32_t region, uint64_t offset, std::span<uint8_t> out) {
  auto cmd = static_cast<uint16_t>(wire::Command::kRegionRead);
  size_t done = 0;
  while (done < out.size()) {
    uint32_t chunk = static_cast<uint32_t>(std::min<size_t>(out.size() - done, max_xfer_));
    wire::RegionAccess req{offset + done, region, chunk};
    auto reply = CallRegionAccess(cmd, AsBytes(req), chunk);
    if (!reply) return reply.error();
    std::memcpy(out.data() + done, (*reply)->payload.data() + sizeof(wire::RegionAccess), chunk);
    done += chunk;
  }
  return Status::Ok();
}

Status Client::RegionWrite(uint32_t region, uint64_t offset, std::span<const uint8_t> data) {
  auto cmd = static_cast<uint16_t>(wire::Command::kRegionWrite);
  size_t done = 0;
  std::vector<uint8_t> payload;
  while (done < data.size()) {
    uint32_t chunk = static_cast<uint32_t>(std::min<size_t>(data.size() - done, max_xfer_));
    payload.clear();
    proto::Append(payload, wire::RegionAccess{offset + done, region, chunk});
    payload.insert(payload.end(), data.begin() + static_cast<ptrdiff_t>(done),
                   data.begin() + static_cast<ptrdiff_t>(done + chunk));
    auto reply = CallRegionAccess(cmd, payload, 0);
    if (!reply) return reply.error();
    done += chunk;
  }
  return Status::Ok();
}

Status Client::RegionWritePosted(uint32_t region, uint64_t offset, std::span<const uint8_t> data) {
  if (data.size() > max_xfer_)
    return MakeError(E2BIG, "posted write larger than max_data_xfer_size");
  std::vector<uint8_t> payload;
  proto::Append(payload, wire::RegionAccess{offset, region, static_cast<uint32_t>(data.size())});
  payload.insert(payload.end(), data.begin(), data.end());
  auto id =
      Send(static_cast<uint16_t>(wire::Command::kRegionWrite), payload, {}, wire::kFlagNoReply);
  return id ? Status::Ok() : Status(id.error());
}

Result<MemoryMapping> Client::MapArea(const RegionInfo& region, const wire::SparseMmapArea& area) {
  if (!region.fd.valid()) return MakeError(EINVAL, "region is not mmappable");
  return MemoryMapping::Map(region.fd.get(), region.info.offset + area.offset, area.size,
                            PROT_READ | PROT_WRITE);
}

Status Client::DmaMap(uint64_t iova, uint64_t size, int fd, uint64_t fd_offset, uint32_t flags) {
  wire::DmaMap req{sizeof(wire::DmaMap), flags, fd_offset, iova, size};
  auto cmd = static_cast<uint16_t>(wire::Command::kDmaMap);
  int fds[1] = {fd};
  auto reply =
      Call(cmd, AsBytes(req), fd >= 0 ? std::span<const int>(fds, 1) : std::span<const int>());
  if (!reply) return reply.error();
  return CheckReply(*reply, cmd);
}

Status Client::DmaUnmap(uint64_t iova, uint64_t size) {
  wire::DmaUnmap req{sizeof(wire::DmaUnmap), 0, iova, size};
  auto cmd = static_cast<uint16_t>(wire::Command::kDmaUnmap);
  auto reply = Call(cmd, AsBytes(req));
  if (!reply) return reply.error();
  return CheckReply(*reply, cmd);
}

Status Client::DmaUnmapAll() {
  wire::DmaUnmap req{sizeof(wire::DmaUnmap), wire::kDmaUnmapFlagAll, 0, 0};
  auto cmd = static_cast<uint16_t>(wire::Command::kDmaUnmap);
  auto reply = Call(cmd, AsBytes(req));
  if (!reply) return reply.error();
  return CheckReply(*reply, cmd);
}

Status Client::SetIrqs(const wire::IrqSet& set, std::span<const int> fds,
                       std::span<const uint8_t> bools) {
  std::vector<uint8_t> payload;
  proto::Append(payload, set);
  payload.insert(payload.end(), bools.begin(), bools.end());
  auto cmd = static_cast<uint16_t>(wire::Command::kDeviceSetIrqs);
  auto reply = Call(cmd, payload, fds);
  if (!reply) return reply.error();
  return CheckReply(*reply, cmd);
}

Status Client::SetIrqEventfds(uint32_t index, uint32_t start, std::span<const int> fds) {
  // Like QEMU: runs of valid fds go in chunks of max_msg_fds; each run of -1 goes as one
  // message without fds (de-assign).
  size_t i = 0;
  while (i < fds.size()) {
    size_t j = i;
    bool assign = fds[i] >= 0;
    while (j < fds.size() && (fds[j] >= 0) == assign && (!assign || j - i < max_fds_)) ++j;
    wire::IrqSet set{sizeof(wire::IrqSet), wire::kIrqSetDataEventfd | wire::kIrqSetActionTrigger,
                     index, start + static_cast<uint32_t>(i), static_cast<uint32_t>(j - i)};
    VFU_RETURN_IF_ERROR(SetIrqs(set, assign ? fds.subspan(i, j - i) : std::span<const int>()));
    i = j;
  }
  return Status::Ok();
}

Status Client::DisableIrqs(uint32_t index) {
  wire::IrqSet set{sizeof(wire::IrqSet), wire::kIrqSetDataNone | wire::kIrqSetActionTrigger, index,
                   0, 0};
  return SetIrqs(set, {});
}

Status Client::MaskIrq(uint32_t index, uint32_t vector, bool masked) {
  wire::IrqSet set{
      sizeof(wire::IrqSet),
      wire::kIrqSetDataNone | (masked ? wire::kIrqSetActionMask : wire::kIrqSetActionUnmask), index,
      vector, 1};
  return SetIrqs(set, {});
}

Status Client::Reset() {
  auto cmd = static_cast<uint16_t>(wire::Command::kDeviceReset);
  auto reply = Call(cmd, {});
  if (!reply) return reply.error();
  return CheckReply(*reply, cmd);
}

}  // namespace vfu::client
