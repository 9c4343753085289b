#include "deviceplugin/plugin/metrics.h"

#include <prometheus/metric_family.h>

#include <algorithm>
#include <limits>

#include <map>

#include "deviceplugin/plugin/allocation.h"
#include "server/version.h"

namespace vfu::deviceplugin {

namespace ctl = vfiouser::control::v1alpha1;
using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

namespace {

MetricFamily NewFamily(std::string name, std::string help, MetricType type) {
  MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

// A control API histogram (cumulative buckets) as a Prometheus histogram sample.
ClientMetric HistogramSample(const ctl::LatencyHistogram& lh,
                             std::vector<ClientMetric::Label> labels) {
  ClientMetric h;
  h.label = std::move(labels);
  h.histogram.sample_count = lh.count();
  h.histogram.sample_sum = lh.sum_seconds();
  int n = std::min(lh.upper_bounds_seconds_size(), lh.bucket_counts_size());
  for (int i = 0; i < n; ++i) {
    h.histogram.bucket.push_back({lh.bucket_counts(i), lh.upper_bounds_seconds(i)});
  }
  h.histogram.bucket.push_back({lh.count(), std::numeric_limits<double>::infinity()});
  return h;
}

ClientMetric& AddSample(MetricFamily* family, std::vector<ClientMetric::Label> labels,
                        double value) {
  ClientMetric m;
  m.label = std::move(labels);
  if (family->type == MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  family->metric.push_back(std::move(m));
  return family->metric.back();
}

// Devices by resource and health, devices in use, who holds them, control connection.
class PluginStateCollector : public prometheus::Collectable {
 public:
  PluginStateCollector(const DeviceRegistry* registry, const InUseTracker* in_use,
                       ResourceNaming naming)
      : registry_(registry), in_use_(in_use), naming_(std::move(naming)) {}

  std::vector<MetricFamily> Collect() const override {
    MetricFamily devices =
        NewFamily("vfio_user_devices", "Devices advertised to the kubelet, by resource and health.",
                  MetricType::Gauge);
    MetricFamily in_use = NewFamily(
        "vfio_user_devices_in_use",
        "Devices the kubelet has assigned to containers (rebuilt from the pod-resources API).",
        MetricType::Gauge);
    MetricFamily holder =
        NewFamily("vfio_user_device_allocation_info",
                  "1 for each device assigned to a container, labelled with the pod that holds it.",
                  MetricType::Gauge);
    MetricFamily control =
        NewFamily("vfio_user_server_control_connected",
                  "1 while the plugin's watch on the vfio-user-server control socket is connected.",
                  MetricType::Gauge);
    InUseMap users = in_use_->Snapshot();
    for (const std::string& device_class : registry_->Classes()) {
      std::string resource = naming_.ResourceFor(device_class);
      int healthy = 0, unhealthy = 0;
      for (const AdvertisedDevice& d : registry_->DevicesOfClass(device_class)) {
        (d.healthy ? healthy : unhealthy)++;
      }
      AddSample(&devices, {{"resource", resource}, {"health", "healthy"}}, healthy);
      AddSample(&devices, {{"resource", resource}, {"health", "unhealthy"}}, unhealthy);
      auto it = users.find(resource);
      AddSample(&in_use, {{"resource", resource}},
                it == users.end() ? 0.0 : static_cast<double>(it->second.size()));
      if (it == users.end()) continue;
      for (const auto& [id, user] : it->second) {
        AddSample(&holder,
                  {{"resource", resource},
                   {"device", id},
                   {"pod", user.pod},
                   {"namespace", user.namespace_},
                   {"container", user.container}},
                  1);
      }
    }
    AddSample(&control, {}, registry_->server_reachable() ? 1 : 0);
    return {devices, in_use, holder, control};
  }

 private:
  const DeviceRegistry* registry_;
  const InUseTracker* in_use_;
  ResourceNaming naming_;
};

// The server's statistics, fetched during the scrape.
class ServerStatsCollector : public prometheus::Collectable {
 public:
  explicit ServerStatsCollector(StatsSource* source) : source_(source) {}

  std::vector<MetricFamily> Collect() const override {
    MetricFamily up = NewFamily("vfio_user_server_stats_up",
                                "1 when the last scrape read the server's statistics over the "
                                "control API, 0 when that failed.",
                                MetricType::Gauge);
    Result<ctl::StatsResponse> stats = source_->GetStats();
    AddSample(&up, {}, stats.ok() ? 1 : 0);
    if (!stats.ok()) return {up};

    MetricFamily requests =
        NewFamily("vfio_user_device_requests_total",
                  "Completed device requests (including failed ones).", MetricType::Counter);
    MetricFamily bytes = NewFamily("vfio_user_device_bytes_total",
                                   "Bytes moved by device requests.", MetricType::Counter);
    MetricFamily errors = NewFamily(
        "vfio_user_device_request_errors_total",
        "Device requests completed with an I/O error or as unsupported.", MetricType::Counter);
    MetricFamily latency =
        NewFamily("vfio_user_device_request_duration_seconds",
                  "Time from a request's submission to its completion.", MetricType::Histogram);
    MetricFamily protocol_errors =
        NewFamily("vfio_user_device_protocol_errors_total",
                  "vfio-user requests of the client answered with an error.", MetricType::Counter);
    MetricFamily busy_ratio = NewFamily(
        "vfio_user_device_poll_busy_ratio",
        "Share of the device's poll passes that found work (0-1, since the server started).",
        MetricType::Gauge);
    MetricFamily busy_seconds =
        NewFamily("vfio_user_device_poll_busy_seconds_total",
                  "Time the device's poller spent in passes that found work.", MetricType::Counter);
    MetricFamily connected = NewFamily(
        "vfio_user_device_client_connected",
        "1 while a vfio-user client (e.g. QEMU) is attached to the device.", MetricType::Gauge);
    MetricFamily connects = NewFamily("vfio_user_device_client_connects_total",
                                      "Clients that attached to the device.", MetricType::Counter);
    MetricFamily rejected =
        NewFamily("vfio_user_device_client_rejections_total",
                  "Clients turned away because another client was attached.", MetricType::Counter);
    MetricFamily dma_regions =
        NewFamily("vfio_user_device_dma_regions", "DMA regions the connected client has mapped.",
                  MetricType::Gauge);
    MetricFamily dma_bytes = NewFamily("vfio_user_device_dma_mapped_bytes",
                                       "Bytes of client memory mapped for DMA.", MetricType::Gauge);
    MetricFamily interrupts = NewFamily("vfio_user_device_interrupts_total",
                                        "Interrupts raised to the client.", MetricType::Counter);
    MetricFamily thread_busy = NewFamily(
        "vfio_user_poll_thread_busy_seconds_total",
        "Time a server poll thread spent in passes that found work.", MetricType::Counter);
    MetricFamily thread_idle = NewFamily(
        "vfio_user_poll_thread_idle_seconds_total",
        "Time a server poll thread polled without work or was off the CPU (asleep or preempted).",
        MetricType::Counter);

    for (const ctl::DeviceStats& d : stats->devices()) {
      std::vector<ClientMetric::Label> dev{{"device", d.id()}, {"class", d.device_class()}};
      for (const ctl::OperationStats& op : d.operations()) {
        std::vector<ClientMetric::Label> l = dev;
        l.push_back({"operation", op.operation()});
        AddSample(&requests, l, static_cast<double>(op.requests()));
        AddSample(&bytes, l, static_cast<double>(op.bytes()));
        AddSample(&errors, l, static_cast<double>(op.errors()));
        latency.metric.push_back(HistogramSample(op.latency(), l));
      }
      AddSample(&protocol_errors, dev, static_cast<double>(d.protocol_errors()));
      AddSample(&busy_ratio, dev,
                d.poll_calls() == 0 ? 0.0
                                    : static_cast<double>(d.poll_busy_calls()) /
                                          static_cast<double>(d.poll_calls()));
      AddSample(&busy_seconds, dev, static_cast<double>(d.poll_busy_ns()) / 1e9);
      AddSample(&connected, dev, d.client_connected() ? 1 : 0);
      AddSample(&connects, dev, static_cast<double>(d.connects()));
      AddSample(&rejected, dev, static_cast<double>(d.rejected_clients()));
      AddSample(&dma_regions, dev, d.dma_regions());
      AddSample(&dma_bytes, dev, static_cast<double>(d.dma_bytes()));
      AddSample(&interrupts, dev, static_cast<double>(d.interrupts()));
    }
    for (const ctl::PollThreadStats& t : stats->poll_threads()) {
      std::vector<ClientMetric::Label> l{{"thread", std::to_string(t.index())}};
      AddSample(&thread_busy, l, static_cast<double>(t.busy_ns()) / 1e9);
      AddSample(&thread_idle, l, static_cast<double>(t.idle_ns()) / 1e9);
    }
    MetricFamily handoffs = NewFamily(
        "vfio_user_server_handoffs_total",
        "Planned handoffs of the node's devices to a successor server process (--take-over), "
        "counted over every server process that served them.",
        MetricType::Counter);
    AddSample(&handoffs, {}, static_cast<double>(stats->handoffs()));
    MetricFamily handoff_pause =
        NewFamily("vfio_user_server_handoff_pause_seconds",
                  "How long the devices were not served during a planned handoff (from the "
                  "successor's request to its serving them).",
                  MetricType::Histogram);
    handoff_pause.metric.push_back(HistogramSample(stats->handoff_pause(), {}));
    return {up,         requests,     bytes,       errors,      latency,  protocol_errors,
            busy_ratio, busy_seconds, connected,   connects,    rejected, dma_regions,
            dma_bytes,  interrupts,   thread_busy, thread_idle, handoffs, handoff_pause};
  }

 private:
  StatsSource* source_;
};

}  // namespace

Metrics::Metrics(const DeviceRegistry* registry, const InUseTracker* in_use, StatsSource* stats,
                 ResourceNaming naming)
    : registry_(std::make_shared<prometheus::Registry>()),
      state_collector_(
          std::make_shared<PluginStateCollector>(registry, in_use, std::move(naming))) {
  if (stats != nullptr) stats_collector_ = std::make_shared<ServerStatsCollector>(stats);
  allocations_ = &prometheus::BuildCounter()
                      .Name("vfio_user_allocations_total")
                      .Help("Allocate calls from the kubelet, by resource and result.")
                      .Register(*registry_);
  allocate_duration_ = &prometheus::BuildHistogram()
                            .Name("vfio_user_allocate_duration_seconds")
                            .Help("Time the plugin took to answer an Allocate call.")
                            .Register(*registry_);
  registrations_ = &prometheus::BuildCounter()
                        .Name("vfio_user_kubelet_registrations_total")
                        .Help(
                            "Attempts to register with the kubelet, by resource and result: "
                            "success or failure of the Register call, or socket_error when the "
                            "plugin could not serve its own socket (no Register call made).")
                        .Register(*registry_);
  registered_ = &prometheus::BuildGauge()
                     .Name("vfio_user_kubelet_registered")
                     .Help("1 while the resource is registered with the running kubelet.")
                     .Register(*registry_);
  kubelet_streams_ =
      &prometheus::BuildGauge()
           .Name("vfio_user_kubelet_connected")
           .Help(
               "ListAndWatch streams of the resource the kubelet holds open: 1 normally, 0 "
               "when it is not connected (briefly 2 while a re-registering kubelet replaces "
               "its stream).")
           .Register(*registry_);
  prometheus::BuildGauge()
      .Name("vfio_user_build_info")
      .Help("Always 1; labels say which version of the device plugin runs.")
      .Register(*registry_)
      .Add({{"version", kVersion}, {"component", "vfio-user-device-plugin"}})
      .Set(1);
}

void Metrics::RecordAllocation(const std::string& resource, const std::string& result,
                               double seconds) {
  allocations_->Add({{"resource", resource}, {"result", result}}).Increment();
  static const prometheus::Histogram::BucketBoundaries kBuckets{
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1};
  allocate_duration_->Add({{"resource", resource}}, kBuckets).Observe(seconds);
}

void Metrics::RecordRegistration(const std::string& resource, const std::string& result) {
  registrations_->Add({{"resource", resource}, {"result", result}}).Increment();
}

void Metrics::SetKubeletRegistered(const std::string& resource, bool registered) {
  registered_->Add({{"resource", resource}}).Set(registered ? 1 : 0);
}

void Metrics::AddKubeletStreams(const std::string& resource, int delta) {
  kubelet_streams_->Add({{"resource", resource}}).Increment(delta);
}

std::vector<std::shared_ptr<prometheus::Collectable>> Metrics::collectables() const {
  std::vector<std::shared_ptr<prometheus::Collectable>> out{registry_, state_collector_};
  if (stats_collector_) out.push_back(stats_collector_);
  return out;
}

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& address,
                                                            const Metrics& metrics) {
  std::string bind = address;
  if (bind.starts_with(":")) bind = "0.0.0.0" + bind;
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(bind, 2);
  } catch (const std::exception& e) {
    return MakeError(EADDRINUSE, "metrics: cannot listen on " + address + ": " + e.what());
  }
  server->collectables_ = metrics.collectables();
  for (const auto& c : server->collectables_) server->exposer_->RegisterCollectable(c);
  std::vector<int> ports = server->exposer_->GetListeningPorts();
  server->port_ = ports.empty() ? 0 : ports.front();
  return server;
}

}  // namespace vfu::deviceplugin
