// One vfio-user client connected to one device.
//
// The session owns the client's connection (through a MessageStream), its negotiated
// capabilities, DMA map table and IRQ eventfds. It reads requests without ever blocking,
// dispatches each to one handler per command, and answers through ONE reply point
// (Respond) that turns a handler's Status into either the reply payload or an error reply
// carrying the errno. Requests are handled strictly in order; NO_REPLY requests are handled
// and their errors only logged. When the session ends (client EOF or a framing error) it
// unmaps the client's memory, closes its eventfds and detaches the device, whose own state
// is kept for the next client.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "server/common/log.h"
#include "server/common/status.h"
#include "server/protocol/codec.h"
#include "server/session/device.h"
#include "server/session/dma_map_table.h"
#include "server/session/irq_table.h"
#include "server/session/message_stream.h"

namespace vfu {

struct SessionOptions {
  // Messages handled per OnReadable call before yielding to other work on the thread.
  int read_budget = 16;
  // Stop reading requests while this many reply bytes wait for the client to read them, or
  // while queued replies hold this many fds (each a duplicate that counts against the
  // process's fd limit, e.g. the mmap fd of a REGION_INFO reply).
  size_t max_pending_output = 4u << 20;
  size_t max_pending_fds = 64;
  uint32_t max_dma_maps = proto::kMaxDmaMaps;
};

struct SessionStats {
  uint64_t messages = 0;
  uint64_t errors = 0;  // requests answered with an error (or logged, for NO_REPLY)
  uint64_t region_reads = 0;
  uint64_t region_writes = 0;
  uint64_t dma_maps = 0;
  uint64_t dma_unmaps = 0;
};

class Session : public DeviceContext {
 public:
  enum class State { kOpen, kClosed };

  Session(UnixConnection connection, VfioDevice* device, SessionOptions options, LogContext log);
  ~Session() override;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Handles what the socket has to offer, up to the read budget. Returns kClosed when the
  // session is over (client EOF, framing error, fatal socket error).
  State OnReadable();
  // Sends queued replies.
  State OnWritable();
  // True when replies are queued (register for EPOLLOUT) or reading is paused by them.
  bool WantsWrite() const { return stream_.HasPendingOutput(); }
  bool ReadPaused() const {
    return stream_.pending_bytes() >= options_.max_pending_output ||
           stream_.pending_fds() >= options_.max_pending_fds;
  }
  // Requests already read from the socket wait to be handled (the read budget or a pause
  // stopped OnReadable): call OnReadable again without waiting for the socket.
  bool HasBufferedInput() const { return stream_.HasBufferedInput(); }

  // --- handing the session to another process (server/state/record.h) ---
  // Handles the requests already read, finishes reading a message the client is in the middle
  // of sending and sends every queued reply, so that the connection is at a message boundary:
  // what the client sends next is read by whoever holds the socket then. Waits for the client
  // at most `timeout`; fails (ETIMEDOUT, or the session ended) otherwise.
  Status Quiesce(std::chrono::milliseconds timeout);
  // Negotiation, DMA maps (with their fds) and IRQs. The connection's fd is the caller's to
  // send; call after Quiesce.
  Status SaveState(state::Writer& w) const;
  // A session for `connection` (handed over) with the saved state: the device is attached to it
  // as for a new client, then gets the DMA maps and IRQs back. All or nothing.
  static Result<std::unique_ptr<Session>> Restore(UnixConnection connection, VfioDevice* device,
                                                  SessionOptions options, LogContext log,
                                                  state::Reader& r);

  int fd() const { return stream_.fd(); }
  bool negotiated() const { return negotiated_; }
  const SessionStats& stats() const { return stats_; }
  const DmaMapTable& dma_maps() const { return dma_; }
  const IrqTable& irqs() const { return irqs_; }
  const LogContext& log() const { return log_; }

  // DeviceContext
  GuestMemory& guest_memory() override { return dma_; }
  bool TriggerIrq(uint32_t index, uint32_t vector) override { return irqs_.Trigger(index, vector); }
  bool IrqPending(uint32_t index, uint32_t vector) const override {
    return irqs_.Pending(index, vector);
  }

 private:
  // The payload (and fds) of a successful reply, built by a handler.
  struct Reply {
    std::vector<uint8_t>& payload;
    std::vector<int> fds;  // borrowed from the device; sent with the reply
  };

  // Handles one complete message and answers it.
  void Handle(InboundMessage& msg);
  Status Dispatch(InboundMessage& msg, Reply& reply);
  // The one reply point: a success reply with the payload, or an error reply with the errno.
  void Respond(const wire::Header& request, const Status& status, Reply& reply);

  Status HandleVersion(InboundMessage& msg, Reply& reply);
  Status HandleDmaMap(InboundMessage& msg);
  Status HandleDmaUnmap(InboundMessage& msg, Reply& reply);
  Status HandleDeviceGetInfo(InboundMessage& msg, Reply& reply);
  Status HandleRegionInfo(InboundMessage& msg, Reply& reply);
  Status HandleIrqInfo(InboundMessage& msg, Reply& reply);
  Status HandleSetIrqs(InboundMessage& msg);
  Status HandleRegionRead(InboundMessage& msg, Reply& reply);
  Status HandleRegionWrite(InboundMessage& msg, Reply& reply);
  Status HandleWriteMulti(InboundMessage& msg, Reply& reply);
  Status HandleReset();

  Status CheckAccess(uint32_t region, uint64_t offset, uint64_t count, uint32_t needed_flag) const;
  void SendOrClose(std::span<const uint8_t> bytes, std::span<const int> fds);

  MessageStream stream_;
  VfioDevice* device_;
  SessionOptions options_;
  LogContext log_;
  std::vector<RegionDescription> regions_;
  DmaMapTable dma_;
  IrqTable irqs_;
  bool negotiated_ = false;
  bool close_after_reply_ = false;
  bool closed_ = false;
  proto::Capabilities client_caps_;
  InboundMessage inbound_;
  std::vector<uint8_t> reply_buf_;
  std::vector<uint8_t> payload_buf_;
  SessionStats stats_;
};

}  // namespace vfu
