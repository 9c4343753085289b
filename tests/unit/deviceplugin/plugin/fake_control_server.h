// FakeControlServer: an in-process stand-in for the vfio-user-server control API
// (server/control/control.proto, our own API) on a unix socket. It follows the documented
// contract of that proto: WatchDevices sends the full list at once and again after every
// change; GetStats returns the configured counters. Stop() behaves like a server that exits:
// every open stream breaks and the socket goes away; Start() again is the server's return.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "control.grpc.pb.h"

namespace vfu::testing {

namespace ctl = vfiouser::control::v1alpha1;

// A device as the server reports it; socket under `socket_root/<id>/vfio-user.sock`.
ctl::Device MakeControlDevice(const std::string& id, const std::string& device_class,
                              const std::string& socket_root, int32_t numa_node = -1,
                              uint32_t poll_thread = 0);

class FakeControlServer {
 public:
  explicit FakeControlServer(std::string socket_path);
  ~FakeControlServer();

  bool Start();
  void Stop();

  void SetDevices(std::vector<ctl::Device> devices);
  // Changes one device's health (the server's HEALTHY/UNHEALTHY and reason).
  void SetHealth(const std::string& id, bool healthy, const std::string& reason = {});
  void SetStats(ctl::StatsResponse stats);
  int watch_streams() const;

 private:
  class Service;
  std::string socket_path_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  ctl::DeviceList list_;
  ctl::StatsResponse stats_;
  bool stopping_ = false;
  int watch_streams_ = 0;
};

}  // namespace vfu::testing
