// The plugin's side of the vfio-user-server control API (server/control/control.proto):
//  - ControlWatcher keeps a WatchDevices stream open on its own thread and feeds every
//    snapshot into the DeviceRegistry. When the stream breaks or cannot be opened, the registry
//    is told at once (devices turn Unhealthy), and the watcher reconnects on a fresh channel
//    with a short capped backoff, so devices recover within about a second of the server's
//    return.
//  - ControlStatsClient answers GetStats for the metrics scrape.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "control.grpc.pb.h"
#include "deviceplugin/plugin/device_registry.h"
#include "deviceplugin/plugin/metrics.h"

namespace vfu::deviceplugin {

ServerDevice FromControlDevice(const vfiouser::control::v1alpha1::Device& d);

struct ControlWatcherOptions {
  std::string control_socket;
  std::chrono::milliseconds initial_backoff{50};
  std::chrono::milliseconds max_backoff{500};
};

class ControlWatcher {
 public:
  ControlWatcher(ControlWatcherOptions options, DeviceRegistry* registry);
  ~ControlWatcher();
  ControlWatcher(const ControlWatcher&) = delete;
  ControlWatcher& operator=(const ControlWatcher&) = delete;

  void Start();
  void Stop();

 private:
  void Run();
  // One connection: returns when the stream ends (or Stop cancels it), with a description.
  std::string WatchOnce(bool* received_any);

  ControlWatcherOptions options_;
  DeviceRegistry* registry_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false;
  grpc::ClientContext* active_ = nullptr;  // the open stream's context, for cancelling
};

class ControlStatsClient : public StatsSource {
 public:
  explicit ControlStatsClient(std::string control_socket,
                              std::chrono::milliseconds timeout = std::chrono::seconds(2));
  Result<vfiouser::control::v1alpha1::StatsResponse> GetStats() override;

 private:
  std::string control_socket_;
  std::chrono::milliseconds timeout_;
};

}  // namespace vfu::deviceplugin
