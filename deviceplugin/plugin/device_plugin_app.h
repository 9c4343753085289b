// DevicePluginApp: the whole vfio-user-device-plugin wired together, usable in-process (tests)
// and by main(). Start: control watch -> DeviceRegistry -> registrar (one PluginServer per
// class) -> kubelet; pod-resources refresh after each registration and periodically; metrics
// HTTP server. Stop: an empty device list to the kubelet on every stream, then everything stops
// and the plugin sockets are removed.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "deviceplugin/plugin/control_client.h"
#include "deviceplugin/plugin/device_registry.h"
#include "deviceplugin/plugin/kubelet_registrar.h"
#include "deviceplugin/plugin/metrics.h"
#include "deviceplugin/plugin/pod_resources.h"
#include "deviceplugin/plugin/resource_names.h"
#include "server/common/status.h"

namespace vfu::deviceplugin {

struct PluginConfig {
  std::string control_socket = "/var/run/vfio-user/control.sock";
  std::string kubelet_dir = "/var/lib/kubelet/device-plugins";
  std::string pod_resources_socket = "/var/lib/kubelet/pod-resources/kubelet.sock";
  std::string resource_prefix = std::string(kDefaultResourcePrefix);
  // class -> extended resource name, replacing <resource_prefix>/<class> for that class
  // (--resource-name CLASS=NAME).
  std::map<std::string, std::string> resource_names;
  std::string metrics_address = ":9478";  // empty: no metrics server
  bool pre_start_container = false;
  std::chrono::milliseconds pod_resources_interval{30000};
  // Tests shorten these.
  std::chrono::milliseconds socket_check_interval{5000};
  std::chrono::milliseconds max_register_backoff{5000};
};

class DevicePluginApp {
 public:
  explicit DevicePluginApp(PluginConfig config);
  ~DevicePluginApp();
  DevicePluginApp(const DevicePluginApp&) = delete;
  DevicePluginApp& operator=(const DevicePluginApp&) = delete;

  Status Start();
  void Stop();

  int metrics_port() const { return metrics_server_ ? metrics_server_->port() : 0; }
  const DeviceRegistry& registry() const { return registry_; }
  const InUseTracker& in_use() const { return in_use_; }
  const KubeletRegistrar& registrar() const { return *registrar_; }
  // Asks the kubelet's pod-resources API now (also done after each registration).
  void RefreshInUse();

 private:
  void RefreshLoop();

  PluginConfig config_;
  ResourceNaming naming_;
  DeviceRegistry registry_;
  InUseTracker in_use_;
  ControlStatsClient stats_;
  Metrics metrics_;
  std::unique_ptr<ControlWatcher> watcher_;
  std::unique_ptr<KubeletRegistrar> registrar_;
  std::unique_ptr<MetricsServer> metrics_server_;

  std::thread refresh_thread_;
  std::mutex refresh_mutex_;
  std::condition_variable refresh_cv_;
  bool refresh_requested_ = false;
  bool stopping_ = false;
  bool started_ = false;
};

}  // namespace vfu::deviceplugin
