// ServerThread: the real server stack (Reactor + DeviceEndpoints) running on its own thread,
// serving devices built from the same specs as `vfio-user-server --device`, on sockets in a
// temporary directory. Tests talk to it with the client library over the unix sockets.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "server/devices/device_factory.h"
#include "server/runtime/reactor.h"
#include "server/session/endpoint.h"
#include "tests/support/subprocess.h"

namespace vfu::testing {

class ServerThread {
 public:
  ServerThread() = default;
  ~ServerThread() { Stop(); }

  // Adds a device from a spec without socket= (the socket goes into the temp dir as
  // <id>.sock); returns its socket path, or an empty string with a test failure.
  std::string AddDevice(const std::string& spec_without_socket);
  // Serves a device built by the test (e.g. over a fault-injecting backend) as <id>.sock.
  std::string AddDeviceObject(const std::string& id, std::unique_ptr<VfioDevice> device);
  // Serves a device built from `spec` (with socket=) from a saved endpoint instead of binding
  // its socket (the new side of a handoff). Returns the status of StartFromState.
  Status AdoptDevice(const std::string& spec_text, std::span<const uint8_t> record,
                     std::span<const int> fds);
  void Start();
  void Stop();

  // Runs `fn` on the reactor thread and waits for it.
  void RunOnReactor(const std::function<void()>& fn);

  VfioDevice* device(size_t i) { return devices_[i].get(); }
  DeviceEndpoint* endpoint(size_t i) { return endpoints_[i].get(); }
  Reactor& reactor() { return reactor_; }
  const TempDir& dir() const { return dir_; }

 private:
  TempDir dir_;
  Reactor reactor_;
  std::vector<std::unique_ptr<VfioDevice>> devices_;
  std::vector<std::unique_ptr<DeviceEndpoint>> endpoints_;
  std::thread thread_;
  bool running_ = false;
};

}  // namespace vfu::testing
