// Prometheus metrics of the device plugin (prefix vfio_user_, base units, _total counters).
// Two kinds:
//  - events the plugin counts itself (allocations, allocate duration, registrations, kubelet
//    connection state), kept in a prometheus::Registry;
//  - state read at scrape time, so it is never stale: devices by resource and health and in use
//    (from the DeviceRegistry and InUseTracker), and the server's per-device statistics, fetched
//    with the control API's GetStats during the scrape (vfio_user_server_stats_up says whether
//    that worked).
// MetricsServer serves all of it on http://<address>/metrics.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "control.pb.h"
#include "deviceplugin/plugin/device_registry.h"
#include "deviceplugin/plugin/pod_resources.h"
#include "deviceplugin/plugin/resource_names.h"
#include "server/common/status.h"

namespace vfu::deviceplugin {

// Where the server's statistics come from (the control API, or a fake in tests).
class StatsSource {
 public:
  virtual ~StatsSource() = default;
  virtual Result<vfiouser::control::v1alpha1::StatsResponse> GetStats() = 0;
};

class Metrics {
 public:
  // `stats` may be null (no server statistics). The pointers must outlive this object.
  Metrics(const DeviceRegistry* registry, const InUseTracker* in_use, StatsSource* stats,
          ResourceNaming naming);
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // result: "success" or the failure kind ("unknown_device", "unhealthy_device",
  // "invalid_request").
  void RecordAllocation(const std::string& resource, const std::string& result, double seconds);
  // `result`: "success" or "failure" (a Register call to the kubelet), or "socket_error" (the
  // plugin could not serve its own socket, so Register was not called).
  void RecordRegistration(const std::string& resource, const std::string& result);
  void SetKubeletRegistered(const std::string& resource, bool registered);
  // Open ListAndWatch streams from the kubelet (a change of `delta`).
  void AddKubeletStreams(const std::string& resource, int delta);

  // Everything, as the exposer would serialize it (the registry plus scrape-time state).
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<prometheus::Collectable> state_collector_;
  std::shared_ptr<prometheus::Collectable> stats_collector_;
  prometheus::Family<prometheus::Counter>* allocations_;
  prometheus::Family<prometheus::Histogram>* allocate_duration_;
  prometheus::Family<prometheus::Counter>* registrations_;
  prometheus::Family<prometheus::Gauge>* registered_;
  prometheus::Family<prometheus::Gauge>* kubelet_streams_;
};

// Serves a Metrics object over HTTP at /metrics.
class MetricsServer {
 public:
  // `address` is "host:port" or ":port" (all interfaces); port 0 picks a free port.
  static Result<std::unique_ptr<MetricsServer>> Start(const std::string& address,
                                                      const Metrics& metrics);
  int port() const { return port_; }

 private:
  MetricsServer() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  int port_ = 0;
};

}  // namespace vfu::deviceplugin
