// A planned handoff between two vfio-user-server processes on one node (an upgrade, a setting
// that needs a restart): the running server hands its devices, with their connected clients, to
// a successor, and QEMU never notices (it only sees a short pause).
//
// The running server listens on a handoff socket (--handoff-socket). A successor started with
// --take-over PATH connects and asks; the running server suspends its devices
// (DeviceManager::SuspendForHandoff) and sends the state record and its fds; the successor
// starts the devices from it (DeviceManager::ApplyFromHandoff) and answers. Only when the
// successor says it serves does the running server let go of the devices and exit; if the
// successor refuses, fails or dies midway (EOF, timeout), the running server serves on.
//
// Wire format (one connection, blocking with deadlines, little-endian):
//   successor -> server: u32 magic "VFHO", u16 record format version
//   server -> successor: u32 status (0, or an errno), then on 0: u64 record bytes, u32 fd count,
//                        the record, then the fds in batches (kFdsPerMessage per sendmsg, each
//                        with one byte); otherwise a string (u32 length, bytes): why not
//   successor -> server: u32 status (0: serving now), a string (what went wrong)
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "server/common/status.h"
#include "server/service/device_manager.h"
#include "server/transport/unix_socket.h"

namespace vfu::service {

inline constexpr uint32_t kHandoffMagic = 0x4f484656;     // "VFHO"
inline constexpr size_t kFdsPerMessage = kMaxReceiveFds;  // what a Receive takes at once

struct HandoffTimeouts {
  // How long the running server waits for its clients to reach a message boundary.
  std::chrono::milliseconds quiesce{2000};
  // How long either side waits for the other's next message.
  std::chrono::milliseconds peer{30000};
};

// The running server's side.
class HandoffListener {
 public:
  static Result<HandoffListener> Listen(const std::string& path);
  int fd() const { return listener_.fd(); }
  const std::string& path() const { return listener_.path(); }

  // Serves the successors waiting on the socket (call when it is readable). Returns true when
  // the devices were handed over: the caller then exits without tearing them down (their
  // sockets stay; the successor serves them). False: no handoff happened, everything serves on.
  bool ServePending(DeviceManager* manager, const HandoffTimeouts& timeouts);

 private:
  // The successor that took the devices, kept open until this process exits: it waits for the
  // end of this connection before binding the sockets this server holds. Declared before the
  // listener so that it closes after the listener has unlinked the handoff socket.
  UnixConnection successor_;
  UnixListener listener_;
};

// The successor's side: takes the devices of the server listening on `path`, with `plans` as
// this process's configuration. On success the devices serve here; then wait for the old
// server to exit (WaitForPredecessorExit) before binding the sockets it held (control API,
// handoff socket). On an error nothing serves here and the old server serves on.
class HandoffClient {
 public:
  static Result<HandoffClient> TakeOver(const std::string& path, DeviceManager* manager,
                                        const std::vector<DevicePlan>& plans,
                                        const HandoffTimeouts& timeouts, ApplyReport* report);
  // The old server closes the connection when it exits; waits for that (at most `timeout`).
  bool WaitForPredecessorExit(std::chrono::milliseconds timeout);

 private:
  UnixConnection connection_;
};

}  // namespace vfu::service
