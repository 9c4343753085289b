// SessionHarness: "send one message, run the server once, read the reply" over a real
// socketpair. The server end is a real Session serving a SampleDevice (or any VfioDevice); the
// test end writes raw bytes and fds and reads raw replies, so tests see exactly the wire.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "server/devices/sample_device.h"
#include "server/protocol/codec.h"
#include "server/session/session.h"
#include "server/transport/unix_socket.h"

namespace vfu::testing {

struct WireReply {
  wire::Header header{};
  std::vector<uint8_t> payload;
  std::vector<UniqueFd> fds;
  bool is_error() const { return header.flags & wire::kFlagError; }
  int error_no() const { return static_cast<int>(header.error_no); }
};

// QEMU 11.1's VERSION request payload: major 0, minor 0 and this JSON (214 bytes in all).
inline constexpr char kQemuVersionJson[] =
    "{\"capabilities\": {\"max_msg_fds\": 16, \"max_data_xfer_size\": 1048576, \"pgsizes\": "
    "4096, \"max_dma_maps\": 65535, \"migration\": {\"pgsize\": 4096, \"max_bitmap_size\": "
    "268435456}, \"write_multiple\": true}}";

class SessionHarness {
 public:
  // Serves a new SampleDevice.
  SessionHarness();
  // Serves `device` (not owned).
  explicit SessionHarness(VfioDevice* device);
  ~SessionHarness();

  // Sends raw bytes (a whole message, or any prefix/garbage) with optional fds.
  void SendRaw(std::span<const uint8_t> bytes, std::span<const int> fds = {});
  // Sends a message with a correct header; returns its msg_id.
  uint16_t Send(wire::Command command, std::span<const uint8_t> payload,
                std::span<const int> fds = {}, uint32_t flags = 0);
  template <typename T>
  uint16_t SendStruct(wire::Command command, const T& body, std::span<const int> fds = {},
                      uint32_t flags = 0) {
    return Send(command, {reinterpret_cast<const uint8_t*>(&body), sizeof(T)}, fds, flags);
  }

  // Runs the session until it has nothing more to read; returns its state.
  Session::State RunServer();
  // Reads one reply (waits at most 2 s). nullopt when none arrives.
  std::optional<WireReply> ReadReply();
  // Send + run + read.
  WireReply Call(wire::Command command, std::span<const uint8_t> payload,
                 std::span<const int> fds = {}, uint32_t flags = 0);
  template <typename T>
  WireReply CallStruct(wire::Command command, const T& body, std::span<const int> fds = {}) {
    return Call(command, {reinterpret_cast<const uint8_t*>(&body), sizeof(T)}, fds);
  }
  // True when no reply is waiting on the client end.
  bool NoReplyPending();
  // True when the server closed its end (the client sees EOF).
  bool ServerClosed();

  // VERSION with QEMU's exact request; asserts success.
  WireReply Negotiate();

  Session* session() { return session_.get(); }
  bool session_closed() const { return closed_; }
  devices::SampleDevice* sample() { return sample_.get(); }
  int client_fd() const { return client_.fd(); }
  void CloseClient() { client_.Close(); }

 private:
  void Init(VfioDevice* device);

  std::unique_ptr<devices::SampleDevice> sample_;
  UnixConnection client_;
  std::unique_ptr<Session> session_;
  bool closed_ = false;
  uint16_t next_id_ = 1;
};

// Builds the raw bytes of a message.
std::vector<uint8_t> BuildMessage(uint16_t msg_id, uint16_t command,
                                  std::span<const uint8_t> payload, uint32_t flags = 0);

}  // namespace vfu::testing
