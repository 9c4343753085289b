// KubeletRegistrar: keeps one PluginServer per device class registered with the kubelet, across
// kubelet restarts, without races. Everything happens on one loop thread, so registrations of
// a class never overlap:
//  - a class seen in the DeviceRegistry gets a PluginServer on
//    <kubelet dir>/vfio-user-<class>.sock, then Register on kubelet.sock for the class's
//    resource (options.naming: <prefix>/<class> or the class's --resource-name); a class whose
//    resource another class already has is not served (the kubelet would mix their devices);
//  - inotify on the kubelet dir: kubelet.sock created (a new kubelet) re-registers every class,
//    our own socket deleted or replaced (the new kubelet cleans the directory) re-registers that
//    class. Both build a fresh gRPC server on a fresh socket first. A stat of each own socket on
//    every loop pass (at least every `socket_check_interval`) catches a missed event;
//  - failed Register calls are retried with exponential backoff, reset by every kubelet.sock
//    creation, so a restarted kubelet is served again as soon as it listens.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "deviceplugin/plugin/device_registry.h"
#include "deviceplugin/plugin/metrics.h"
#include "deviceplugin/plugin/plugin_server.h"
#include "deviceplugin/plugin/pod_resources.h"
#include "deviceplugin/plugin/resource_names.h"
#include "server/common/status.h"
#include "server/common/unique_fd.h"

namespace vfu::deviceplugin {

inline constexpr const char* kKubeletSocketName = "kubelet.sock";

struct RegistrarOptions {
  std::string kubelet_dir = "/var/lib/kubelet/device-plugins";
  ResourceNaming naming;
  bool pre_start_required = false;
  std::chrono::milliseconds register_timeout{5000};
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{5000};
  std::chrono::milliseconds socket_check_interval{5000};
  // Called on the loop thread after each successful registration of `resource`.
  std::function<void(const std::string& resource)> on_registered;
};

// Inode and change time of a kubelet.sock (inode numbers alone get reused).
struct KubeletSocketId {
  uint64_t inode = 0;
  int64_t ctime_ns = 0;
  bool operator==(const KubeletSocketId&) const = default;
};

class KubeletRegistrar {
 public:
  // `metrics` and `in_use` may be null.
  KubeletRegistrar(RegistrarOptions options, DeviceRegistry* registry, Metrics* metrics,
                   InUseTracker* in_use);
  ~KubeletRegistrar();
  KubeletRegistrar(const KubeletRegistrar&) = delete;
  KubeletRegistrar& operator=(const KubeletRegistrar&) = delete;

  Status Start();
  // Stops the loop, then every plugin server (with an empty list to the kubelet first when
  // `send_empty_list`).
  void Stop(bool send_empty_list);

  // Whether the class is registered with the current kubelet.
  bool registered(const std::string& device_class) const;
  // Successful registrations of the class since start.
  int registrations(const std::string& device_class) const;

 private:
  struct ClassPlugin {
    std::string device_class;
    std::string resource;
    std::string socket_path;
    std::unique_ptr<PluginServer> server;
    bool needs_fresh_server = true;
    bool registered = false;
    int failures = 0;
    std::chrono::steady_clock::time_point next_attempt;
    // Identity of the kubelet.sock the class last registered with: a creation event for that
    // same socket (seen late) must not cause another registration.
    KubeletSocketId registered_with;
  };

  void Run();
  void AddNewClasses();
  bool WatchDirectory();
  // Reads inotify events and marks what must be re-registered.
  void DrainInotify();
  void CheckOwnSocket(ClassPlugin& p);
  void Advance(ClassPlugin& p);
  Status Register(const ClassPlugin& p);
  // Re-registers every class whose registration is not with `current` (nullptr: all).
  void RestartAll(const char* why, const KubeletSocketId* current = nullptr);
  KubeletSocketId CurrentKubeletSocket() const;
  void Wake();
  void PublishState(const ClassPlugin& p, bool just_registered);

  RegistrarOptions options_;
  DeviceRegistry* registry_;
  Metrics* metrics_;
  InUseTracker* in_use_;
  UniqueFd inotify_fd_;
  UniqueFd wake_fd_;
  int watch_descriptor_ = -1;
  std::thread thread_;
  std::unique_ptr<DeviceRegistry::Subscription> subscription_;
  std::map<std::string, ClassPlugin> plugins_;  // loop thread only (and Stop after the join)

  mutable std::mutex state_mutex_;  // guards the fields below and stopping_
  bool stopping_ = false;
  std::map<std::string, bool> registered_;
  std::map<std::string, int> registration_count_;
};

}  // namespace vfu::deviceplugin
