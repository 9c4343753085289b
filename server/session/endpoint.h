// DeviceEndpoint: one device served on one unix socket. It owns the listener and at most one
// Session (vfio-user allows one client per socket); a second client that connects while one is
// attached is accepted and closed at once, with a log line. When the client goes away the
// session's resources are released and the socket accepts the next client; the device keeps
// its state. Everything runs on the reactor thread the endpoint was started on.
#pragma once

#include <sys/types.h>
#include <cstdint>

#include <memory>
#include <optional>
#include <string>

#include "server/common/log.h"
#include "server/runtime/reactor.h"
#include "server/session/device.h"
#include "server/session/session.h"
#include "server/transport/unix_socket.h"

namespace vfu {

struct EndpointStats {
  uint64_t connects = 0;
  uint64_t disconnects = 0;
  uint64_t rejected_clients = 0;
  uint64_t protocol_errors = 0;  // requests answered with an error, by sessions that ended
};

class DeviceEndpoint {
 public:
  DeviceEndpoint(std::string id, std::string socket_path, VfioDevice* device, Reactor* reactor,
                 SessionOptions options = {});
  ~DeviceEndpoint();
  DeviceEndpoint(const DeviceEndpoint&) = delete;
  DeviceEndpoint& operator=(const DeviceEndpoint&) = delete;

  // Who may connect: after binding, the socket file gets this owner and mode (KubeVirt's
  // virt-launcher runs QEMU as uid/gid 107). Without it the socket keeps the process's umask.
  void SetSocketOwner(uid_t uid, gid_t gid, mode_t mode) { owner_ = SocketOwner{uid, gid, mode}; }

  // Binds the socket and starts accepting (call on the reactor thread, or before Run()).
  Status Start();
  // Stops accepting, ends the session, removes the socket file.
  void Stop();

  // --- handing the endpoint to another process (a planned handoff; server/state/record.h) ---
  // The old process: stops watching the listener and the client and stops polling the
  // device, quiesces the session (waiting for the client at most `timeout`) and the device,
  // and saves the listener and the connection (as fds of the record), the session's state and
  // the device's. On an error the endpoint is as it was before, not yet watched: call Resume.
  Status SuspendAndSave(state::Writer& w, std::chrono::milliseconds timeout);
  // The handoff failed: watch the listener and the client again and poll the device, as before.
  void Resume();
  // The handoff succeeded: drop the client and the listener without unlinking the socket and
  // without touching the connection (another process serves both now).
  void Release();
  // The new process, instead of Start(): serves the listener and, if there was one, the client
  // of a saved endpoint (the record's fds are duplicated). All or nothing.
  Status StartFromState(state::Reader& r);

  const std::string& id() const { return id_; }
  const std::string& socket_path() const { return socket_path_; }
  bool client_connected() const { return session_ != nullptr; }
  const Session* session() const { return session_.get(); }
  const EndpointStats& stats() const { return stats_; }
  // "client 3 (pid 1234, uid 107)" while a client is connected.
  const std::string& client_description() const { return client_description_; }
  VfioDevice* device() const { return device_; }

 private:
  // Watches the listener, the device's poller and wake fd, and the session if there is one
  // (Start, Resume, StartFromState); Unwatch undoes it (Stop, SuspendAndSave).
  Status Watch();
  void Unwatch();
  void OnAccept();
  void OnSessionEvent(uint32_t events);
  void UpdateSessionInterest();
  void EndSession();

  struct SocketOwner {
    uid_t uid;
    gid_t gid;
    mode_t mode;
  };

  std::string id_;
  std::string socket_path_;
  std::optional<SocketOwner> owner_;
  VfioDevice* device_;
  Reactor* reactor_;
  SessionOptions options_;
  LogContext log_;
  UnixListener listener_;
  std::unique_ptr<Session> session_;
  uint32_t session_events_ = 0;  // what the session's fd is registered for
  bool rerun_posted_ = false;    // a task will run the session for input it already read
  // Posted tasks hold a weak reference: one that runs after the endpoint is gone does nothing.
  std::shared_ptr<DeviceEndpoint*> self_ = std::make_shared<DeviceEndpoint*>(this);
  uint64_t client_counter_ = 0;
  std::string client_description_;
  EndpointStats stats_;
  bool suspended_ = false;  // SuspendAndSave ran: nothing is watched until Resume or Release
};

}  // namespace vfu
