#include "server/session/session.h"

#include <poll.h>

#include <cstring>
#include <string>

#include "server/common/checked_math.h"

namespace vfu {
namespace {

using wire::Command;

std::string Num(uint64_t v) { return std::to_string(v); }

Error Invalid(std::string what) { return MakeError(EINVAL, std::move(what)); }

bool TakesFds(uint16_t command) {
  return command == static_cast<uint16_t>(Command::kDmaMap) ||
         command == static_cast<uint16_t>(Command::kDeviceSetIrqs);
}

std::vector<IrqDescription> DescribeIrqs(const VfioDevice& device) {
  std::vector<IrqDescription> irqs;
  for (uint32_t i = 0; i < device.num_irqs(); ++i) irqs.push_back(device.DescribeIrq(i));
  return irqs;
}

}  // namespace

Session::Session(UnixConnection connection, VfioDevice* device, SessionOptions options,
                 LogContext log)
    : stream_(std::move(connection)),
      device_(device),
      options_(options),
      log_(std::move(log)),
      dma_(options.max_dma_maps),
      irqs_(DescribeIrqs(*device)) {
  for (uint32_t i = 0; i < device_->num_regions(); ++i) {
    regions_.push_back(device_->DescribeRegion(i));
  }
  reply_buf_.reserve(4096);
  stream_.set_speculative_reads(true);
  device_->Attach(this);
}

Session::~Session() {
  device_->Detach();
  // Members release the DMA mappings and IRQ eventfds.
}

Session::State Session::OnReadable() {
  if (closed_) return State::kClosed;
  for (int i = 0; i < options_.read_budget; ++i) {
    if (ReadPaused()) break;
    auto status = stream_.Read(&inbound_);
    if (!status) {
      const Error& e = status.error();
      if (const auto& h = stream_.last_header(); h && e.code != EAGAIN) {
        log_.Warn("closing connection: unrecoverable framing error",
                  {{"msg_id", Num(h->msg_id)},
                   {"command", wire::CommandName(h->command)},
                   {"error", e.message}});
        // Tell the client why, if it is still listening; the stream cannot continue.
        auto reply = proto::EncodeErrorReply(*h, e.code);
        (void)stream_.Send(reply);
      } else {
        log_.Warn("closing connection: socket error", {{"error", e.message}});
      }
      closed_ = true;
      return State::kClosed;
    }
    if (*status == ReadStatus::kWouldBlock) break;
    if (*status == ReadStatus::kClosed) {
      if (stream_.mid_message()) {
        log_.Warn("client closed the connection in the middle of a message");
      } else {
        log_.Info("client disconnected");
      }
      closed_ = true;
      return State::kClosed;
    }
    Handle(inbound_);
    if (closed_) return State::kClosed;
  }
  return State::kOpen;
}

Session::State Session::OnWritable() {
  if (closed_) return State::kClosed;
  Status s = stream_.Flush();
  if (!s.ok()) {
    log_.Warn("closing connection: cannot send replies", {{"error", s.message()}});
    closed_ = true;
    return State::kClosed;
  }
  return State::kOpen;
}

void Session::Handle(InboundMessage& msg) {
  ++stats_.messages;
  const wire::Header& h = msg.header;
  // A reply from the client: we send no server-to-client requests, so nothing awaits it.
  if (proto::MessageType(h) == wire::kFlagTypeReply) {
    log_.Warn("ignoring a reply message from the client",
              {{"msg_id", Num(h.msg_id)}, {"command", wire::CommandName(h.command)}});
    ++stats_.errors;
    msg.fds.clear();  // close whatever fds it carried now, not when the next message arrives
    return;
  }
  reply_buf_.assign(sizeof(wire::Header), 0);
  Reply reply{reply_buf_, {}};
  Status status = Dispatch(msg, reply);
  msg.fds.clear();  // whatever a handler did not take is closed now
  Respond(h, status, reply);
  if (close_after_reply_) {
    closed_ = true;
    (void)stream_.Flush();
  }
}

Status Session::Dispatch(InboundMessage& msg, Reply& reply) {
  const wire::Header& h = msg.header;
  if (proto::MessageType(h) != wire::kFlagTypeCommand) {
    return Invalid("message type " + Num(proto::MessageType(h)) + " is neither command nor reply");
  }
  if (msg.fds_truncated) {
    return Invalid("more than " + Num(kMaxReceiveFds) + " fds were sent with one message");
  }
  if (!msg.fds.empty() && !TakesFds(h.command)) {
    return Invalid(std::string(wire::CommandName(h.command)) + " does not take fds but " +
                   Num(msg.fds.size()) + " were sent");
  }
  auto command = static_cast<Command>(h.command);
  if (!wire::IsKnownCommand(h.command)) {
    return MakeError(ENOSYS, "unknown command " + Num(h.command));
  }
  if (command == Command::kVersion) return HandleVersion(msg, reply);
  if (!negotiated_) {
    return Invalid(std::string(wire::CommandName(h.command)) + " before VERSION negotiation");
  }
  switch (command) {
    case Command::kDmaMap:
      return HandleDmaMap(msg);
    case Command::kDmaUnmap:
      return HandleDmaUnmap(msg, reply);
    case Command::kDeviceGetInfo:
      return HandleDeviceGetInfo(msg, reply);
    case Command::kDeviceGetRegionInfo:
      return HandleRegionInfo(msg, reply);
    case Command::kDeviceGetIrqInfo:
      return HandleIrqInfo(msg, reply);
    case Command::kDeviceSetIrqs:
      return HandleSetIrqs(msg);
    case Command::kRegionRead:
      return HandleRegionRead(msg, reply);
    case Command::kRegionWrite:
      return HandleRegionWrite(msg, reply);
    case Command::kRegionWriteMulti:
      return HandleWriteMulti(msg, reply);
    case Command::kDeviceReset:
      return HandleReset();
    case Command::kDeviceGetRegionIoFds:
      return MakeError(ENOTSUP, "DEVICE_GET_REGION_IO_FDS is not supported");
    case Command::kDeviceFeature:
      return MakeError(ENOTSUP, "DEVICE_FEATURE (migration) is not supported");
    case Command::kMigDataRead:
    case Command::kMigDataWrite:
      return MakeError(ENOTSUP, "migration is not supported");
    case Command::kDmaRead:
    case Command::kDmaWrite:
      return Invalid(std::string(wire::CommandName(h.command)) + " is a server-to-client command");
    case Command::kVersion:
      break;
  }
  return MakeError(ENOSYS, "unknown command " + Num(h.command));
}

void Session::Respond(const wire::Header& request, const Status& status, Reply& reply) {
  if (!status.ok()) {
    ++stats_.errors;
    log_.Warn("request failed",
              {{"msg_id", Num(request.msg_id)},
               {"command", wire::CommandName(request.command)},
               {"errno", Num(status.code())},
               {"error", status.message()},
               {"no_reply", (request.flags & wire::kFlagNoReply) ? "true" : "false"}});
  }
  if (request.flags & wire::kFlagNoReply) return;
  if (!status.ok()) {
    auto bytes = proto::EncodeErrorReply(request, status.code() != 0 ? status.code() : EINVAL);
    SendOrClose(bytes, {});
    return;
  }
  wire::Header h{request.msg_id, request.command, static_cast<uint32_t>(reply.payload.size()),
                 wire::kFlagTypeReply, 0};
  std::memcpy(reply.payload.data(), &h, sizeof(h));
  SendOrClose(reply.payload, reply.fds);
}

void Session::SendOrClose(std::span<const uint8_t> bytes, std::span<const int> fds) {
  Status s = stream_.Send(bytes, fds);
  if (!s.ok()) {
    log_.Warn("closing connection: cannot send reply", {{"error", s.message()}});
    closed_ = true;
  }
}

// --- Handlers -------------------------------------------------------------------------------

Status Session::HandleVersion(InboundMessage& msg, Reply& reply) {
  if (negotiated_) return Invalid("VERSION was already negotiated");
  auto version = proto::DecodeVersion(msg.bytes());
  if (!version) return version.error();
  if (version->major != wire::kProtocolMajor) {
    close_after_reply_ = true;  // the spec: a server that cannot support the major closes
    return MakeError(ENOTSUP, "unsupported protocol major " + Num(version->major));
  }
  const proto::Capabilities& c = version->caps;
  if (c.pgsizes && !(*c.pgsizes & proto::kPageSize)) {
    return Invalid("client pgsizes do not include 4 KiB");
  }
  proto::Capabilities ours;
  ours.max_msg_fds = proto::kAdvertisedMaxMsgFds;
  ours.max_data_xfer_size = proto::kMaxDataXferSize;
  ours.pgsizes = proto::kPageSize;
  ours.max_dma_maps = options_.max_dma_maps;
  ours.write_multiple = true;
  auto payload = proto::EncodeVersionReply(c, ours, msg.payload.size());
  reply.payload.insert(reply.payload.end(), payload.begin(), payload.end());
  client_caps_ = c;
  negotiated_ = true;
  for (const std::string& key : c.unknown_keys) {
    log_.Info("client proposed an unknown capability; ignoring it", {{"capability", key}});
  }
  log_.Info("client negotiated protocol", {{"major", Num(version->major)},
                                           {"minor", Num(version->minor)},
                                           {"reply_minor", Num(wire::kProtocolMinor)}});
  return Status::Ok();
}

Status Session::HandleDmaMap(InboundMessage& msg) {
  auto map = proto::DecodeDmaMap(msg.bytes());
  if (!map) return map.error();
  if (msg.fds.size() > 1)
    return Invalid("DMA_MAP carries " + Num(msg.fds.size()) + " fds; at most 1");
  UniqueFd fd = msg.fds.empty() ? UniqueFd() : std::move(msg.fds[0]);
  VFU_RETURN_IF_ERROR(dma_.Map(map->address, map->size, map->offset, map->flags, std::move(fd)));
  ++stats_.dma_maps;
  log_.Debug("DMA map", {{"iova", Num(map->address)}, {"size", Num(map->size)}});
  return Status::Ok();
}

Status Session::HandleDmaUnmap(InboundMessage& msg, Reply& reply) {
  auto unmap = proto::DecodeDmaUnmap(msg.bytes());
  if (!unmap) return unmap.error();
  if (unmap->flags & wire::kDmaUnmapFlagAll) {
    device_->OnDmaRangeRemoved(0, UINT64_MAX);
    dma_.UnmapAll();
  } else {
    auto it = dma_.regions().find(unmap->address);
    if (it == dma_.regions().end() || it->second.size != unmap->size) {
      return MakeError(ENOENT, "DMA_UNMAP of [" + Num(unmap->address) + ", +" + Num(unmap->size) +
                                   ") matches no earlier map");
    }
    // The device drops its references before the memory goes away (the spec requires that
    // before the reply).
    device_->OnDmaRangeRemoved(unmap->address, unmap->size);
    VFU_RETURN_IF_ERROR(dma_.Unmap(unmap->address, unmap->size));
  }
  ++stats_.dma_unmaps;
  wire::DmaUnmap echo = *unmap;
  echo.argsz = sizeof(wire::DmaUnmap);
  proto::Append(reply.payload, echo);
  return Status::Ok();
}

Status Session::HandleDeviceGetInfo(InboundMessage& msg, Reply& reply) {
  auto req = proto::DecodeDeviceInfoRequest(msg.bytes());
  if (!req) return req.error();
  wire::DeviceInfo info{sizeof(wire::DeviceInfo), device_->device_flags(), device_->num_regions(),
                        device_->num_irqs()};
  proto::Append(reply.payload, info);
  return Status::Ok();
}

Status Session::HandleRegionInfo(InboundMessage& msg, Reply& reply) {
  auto req = proto::DecodeRegionInfoRequest(msg.bytes());
  if (!req) return req.error();
  if (req->index >= regions_.size())
    return Invalid("region index " + Num(req->index) + " out of range");
  const RegionDescription& r = regions_[req->index];
  wire::RegionInfo info{};
  info.index = req->index;
  info.flags = r.flags;
  info.size = r.size;
  bool mmap = (r.flags & wire::kRegionFlagMmap) && r.mmap_fd >= 0;
  if (!mmap) info.flags &= ~wire::kRegionFlagMmap;
  info.offset = mmap ? r.mmap_offset : 0;
  size_t caps_size = 0;
  if (mmap && !r.sparse_areas.empty()) {
    caps_size = sizeof(wire::SparseMmapCap) + r.sparse_areas.size() * sizeof(wire::SparseMmapArea);
  }
  info.argsz = static_cast<uint32_t>(sizeof(wire::RegionInfo) + caps_size);
  // When the client's buffer cannot hold the capabilities, answer with the bare struct and the
  // full argsz (and no CAPS flag or fd, as QEMU rejects CAPS with cap_offset 0): the client
  // retries with a larger argsz.
  bool fits = req->argsz >= info.argsz;
  if (caps_size > 0 && fits) {
    info.flags |= wire::kRegionFlagCaps;
    info.cap_offset = sizeof(wire::RegionInfo);
  }
  proto::Append(reply.payload, info);
  if (caps_size > 0 && fits) {
    wire::SparseMmapCap cap{};
    cap.header = {wire::kCapSparseMmap, wire::kCapSparseMmapVersion, 0};
    cap.nr_areas = static_cast<uint32_t>(r.sparse_areas.size());
    proto::Append(reply.payload, cap);
    for (const wire::SparseMmapArea& a : r.sparse_areas) proto::Append(reply.payload, a);
  }
  if (mmap && fits) reply.fds.push_back(r.mmap_fd);
  return Status::Ok();
}

Status Session::HandleIrqInfo(InboundMessage& msg, Reply& reply) {
  auto req = proto::DecodeIrqInfoRequest(msg.bytes());
  if (!req) return req.error();
  if (req->index >= device_->num_irqs())
    return Invalid("IRQ index " + Num(req->index) + " out of range");
  IrqDescription d = device_->DescribeIrq(req->index);
  wire::IrqInfo info{sizeof(wire::IrqInfo), d.flags, req->index, d.count};
  proto::Append(reply.payload, info);
  return Status::Ok();
}

Status Session::HandleSetIrqs(InboundMessage& msg) {
  auto req = proto::DecodeSetIrqs(msg.bytes(), msg.fds.size());
  if (!req) return req.error();
  std::vector<IrqTable::MaskChange> changes;
  VFU_RETURN_IF_ERROR(irqs_.Apply(*req, std::move(msg.fds), &changes));
  for (const auto& c : changes) device_->OnIrqMaskChanged(c.index, c.vector, c.masked);
  return Status::Ok();
}

Status Session::CheckAccess(uint32_t region, uint64_t offset, uint64_t count,
                            uint32_t needed_flag) const {
  uint64_t size = region < regions_.size() ? regions_[region].size : 0;
  VFU_RETURN_IF_ERROR(proto::CheckRegionAccess(region, offset, count,
                                               static_cast<uint32_t>(regions_.size()), size));
  if (!(regions_[region].flags & needed_flag)) {
    return MakeError(EACCES, "region " + Num(region) + " does not allow this access");
  }
  return Status::Ok();
}

Status Session::HandleRegionRead(InboundMessage& msg, Reply& reply) {
  auto req = proto::DecodeRegionRead(msg.bytes());
  if (!req) return req.error();
  VFU_RETURN_IF_ERROR(CheckAccess(req->region, req->offset, req->count, wire::kRegionFlagRead));
  ++stats_.region_reads;
  proto::Append(reply.payload, *req);
  size_t at = reply.payload.size();
  reply.payload.resize(at + req->count);
  return device_->ReadRegion(req->region, req->offset, {reply.payload.data() + at, req->count});
}

Status Session::HandleRegionWrite(InboundMessage& msg, Reply& reply) {
  auto req = proto::DecodeRegionWrite(msg.bytes());
  if (!req) return req.error();
  const wire::RegionAccess& a = req->access;
  VFU_RETURN_IF_ERROR(CheckAccess(a.region, a.offset, a.count, wire::kRegionFlagWrite));
  ++stats_.region_writes;
  VFU_RETURN_IF_ERROR(device_->WriteRegion(a.region, a.offset, req->data));
  proto::Append(reply.payload, a);
  return Status::Ok();
}

Status Session::HandleWriteMulti(InboundMessage& msg, Reply& reply) {
  auto entries = proto::DecodeWriteMulti(msg.bytes());
  if (!entries) return entries.error();
  // Validate every entry before applying any, so a bad entry changes nothing.
  for (const wire::WriteMultiEntry& e : *entries) {
    VFU_RETURN_IF_ERROR(CheckAccess(e.region, e.offset, e.count, wire::kRegionFlagWrite));
  }
  uint64_t done = 0;
  for (const wire::WriteMultiEntry& e : *entries) {
    ++stats_.region_writes;
    VFU_RETURN_IF_ERROR(device_->WriteRegion(e.region, e.offset, {e.data, e.count}));
    ++done;
  }
  proto::Append(reply.payload, wire::WriteMultiHeader{done});
  return Status::Ok();
}

Status Session::HandleReset() {
  log_.Info("device reset requested by the client");
  return device_->Reset();
}

// --- handing the session to another process ------------------------------------------------

inline constexpr uint16_t kSessionStateVersion = 1;

namespace {

// Waits until `fd` is ready for `events` or the deadline passes (false then).
bool WaitFor(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  if (left.count() <= 0) return false;
  pollfd p{fd, events, 0};
  int n = ::poll(&p, 1, static_cast<int>(left.count()));
  return n > 0;
}

void PutOptional(state::Writer& w, const std::optional<uint64_t>& v) {
  w.Bool(v.has_value());
  w.U64(v.value_or(0));
}

std::optional<uint64_t> GetOptional(state::Reader& r) {
  bool has = r.Bool();
  uint64_t v = r.U64();
  return has ? std::optional<uint64_t>(v) : std::nullopt;
}

}  // namespace

Status Session::Quiesce(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (closed_) return MakeError(ECONNRESET, "the session ended");
    // Requests already read, and the rest of a message the client is sending.
    while (stream_.HasBufferedInput() || stream_.mid_message()) {
      if (stream_.pending_bytes() > 0) (void)stream_.Flush();
      auto status = stream_.Read(&inbound_);
      if (!status) {
        if (status.error().code != EAGAIN) {
          closed_ = true;
          return MakeError(status.error().code, "the connection failed: " + status.error().message);
        }
      } else if (*status == ReadStatus::kMessage) {
        Handle(inbound_);
        if (closed_) return MakeError(ECONNRESET, "the session ended");
        continue;
      } else if (*status == ReadStatus::kClosed) {
        closed_ = true;
        return MakeError(ECONNRESET, "the client closed the connection");
      }
      if (!WaitFor(stream_.fd(), POLLIN, deadline)) {
        return MakeError(ETIMEDOUT, "the client did not finish its message in time");
      }
    }
    if (!stream_.HasPendingOutput()) return Status::Ok();
    if (Status s = stream_.Flush(); !s.ok()) {
      closed_ = true;
      return MakeError(s.code(), "cannot send replies: " + s.message());
    }
    if (stream_.HasPendingOutput() && !WaitFor(stream_.fd(), POLLOUT, deadline)) {
      return MakeError(ETIMEDOUT, "the client did not read its replies in time");
    }
  }
}

Status Session::SaveState(state::Writer& w) const {
  size_t mark = w.BeginSection(state::Tag::kSession, kSessionStateVersion);
  w.Bool(negotiated_);
  PutOptional(w, client_caps_.max_msg_fds);
  PutOptional(w, client_caps_.max_data_xfer_size);
  PutOptional(w, client_caps_.pgsizes);
  PutOptional(w, client_caps_.max_dma_maps);
  w.Bool(client_caps_.write_multiple.has_value());
  w.Bool(client_caps_.write_multiple.value_or(false));
  w.EndSection(mark);
  VFU_RETURN_IF_ERROR(dma_.SaveState(w));
  irqs_.SaveState(w);
  return Status::Ok();
}

Result<std::unique_ptr<Session>> Session::Restore(UnixConnection connection, VfioDevice* device,
                                                  SessionOptions options, LogContext log,
                                                  state::Reader& r) {
  state::Reader s = r.Section(state::Tag::kSession, kSessionStateVersion, nullptr);
  bool negotiated = s.Bool();
  proto::Capabilities caps;
  caps.max_msg_fds = GetOptional(s);
  caps.max_data_xfer_size = GetOptional(s);
  caps.pgsizes = GetOptional(s);
  caps.max_dma_maps = GetOptional(s);
  bool has_write_multiple = s.Bool();
  bool write_multiple = s.Bool();
  if (has_write_multiple) caps.write_multiple = write_multiple;
  s.ExpectEnd();
  if (!s.ok()) return s.status().error();
  if (!r.ok()) return r.status().error();
  auto session = std::make_unique<Session>(std::move(connection), device, options, std::move(log));
  VFU_RETURN_IF_ERROR(session->dma_.RestoreState(r));
  VFU_RETURN_IF_ERROR(session->irqs_.RestoreState(r));
  session->negotiated_ = negotiated;
  session->client_caps_ = std::move(caps);
  return session;
}

}  // namespace vfu
