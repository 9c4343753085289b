// ControlServer: the control API (server/control/control.proto) over gRPC on a unix socket.
// It only reads DeviceManager snapshots; nothing a client sends can change a device. The
// socket gets mode 0660 (root and the socket's group: the device plugin runs as root).
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

#include "server/common/status.h"
#include "server/service/device_manager.h"

namespace grpc {
class Server;
}

namespace vfu::control {

class ControlService;

class ControlServer {
 public:
  explicit ControlServer(service::DeviceManager* manager);
  ~ControlServer();  // Shutdown()
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Listens on `socket_path` (a stale socket file there is replaced; parents are created).
  Status Start(const std::string& socket_path);
  // Ends watch streams and in-flight calls (waiting at most a second), removes the socket.
  void Shutdown();

 private:
  service::DeviceManager* manager_;
  std::unique_ptr<ControlService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string socket_path_;
};

}  // namespace vfu::control
