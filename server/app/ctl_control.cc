#include "server/app/ctl_control.h"

#include <google/protobuf/util/json_util.h>

#include <chrono>
#include <cstdio>

#include "server/control/control_client.h"

namespace vfu {

namespace pb = ::vfiouser::control::v1alpha1;

namespace {

std::string ToJson(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

void PrintTable(const pb::DeviceList& list) {
  std::printf("%-20s %-11s %-9s %-32s %s\n", "ID", "CLASS", "HEALTH", "CLIENT", "SOCKET");
  for (const pb::Device& d : list.devices()) {
    std::string client = d.client_connected() ? d.client() : "-";
    std::printf("%-20s %-11s %-9s %-32s %s\n", d.id().c_str(), d.device_class().c_str(),
                d.health() == pb::HEALTHY ? "healthy" : "UNHEALTHY", client.c_str(),
                d.socket_path().c_str());
    if (!d.health_reason().empty()) std::printf("    reason: %s\n", d.health_reason().c_str());
    if (d.removal_pending()) std::printf("    removal pending: waits for the client to leave\n");
    if (!d.refused_change().empty()) {
      std::printf("    change refused: %s\n", d.refused_change().c_str());
    }
  }
  std::printf("(%d devices, generation %llu, server %s)\n", list.devices_size(),
              static_cast<unsigned long long>(list.generation()), list.server_version().c_str());
}

// The latency below which a fraction `q` of the requests finished, from cumulative buckets
// (the bucket's upper bound: an upper estimate, as Prometheus' histogram_quantile would give
// without interpolation).
std::string Quantile(const pb::LatencyHistogram& h, double q) {
  if (h.count() == 0) return "-";
  double target = q * static_cast<double>(h.count());
  for (int i = 0; i < h.bucket_counts_size(); ++i) {
    if (static_cast<double>(h.bucket_counts(i)) >= target) {
      double us = h.upper_bounds_seconds(i) * 1e6;
      char text[32];
      if (us >= 1000) {
        std::snprintf(text, sizeof(text), "<=%.0fms", us / 1000);
      } else {
        std::snprintf(text, sizeof(text), "<=%.0fus", us);
      }
      return text;
    }
  }
  return ">1s";
}

}  // namespace

int ListDevices(const std::string& control_socket, const ControlOptions& options) {
  control::ControlClient client(control_socket);
  if (options.output != "table" && options.output != "json") {
    std::fprintf(stderr, "error: --output must be table or json\n");
    return 2;
  }
  auto print = [&](const pb::DeviceList& list) {
    if (options.output == "json") {
      std::printf("%s\n", ToJson(list).c_str());
    } else {
      PrintTable(list);
    }
    std::fflush(stdout);
  };
  if (!options.watch) {
    auto list = client.ListDevices();
    if (!list) {
      std::fprintf(stderr, "error: %s\n", list.error().message.c_str());
      return 1;
    }
    print(*list);
    return 0;
  }
  auto timeout = options.watch_seconds > 0
                     ? std::chrono::milliseconds(static_cast<int64_t>(options.watch_seconds * 1000))
                     : std::chrono::hours(24 * 365);
  Status s = client.Watch(
      [&](const pb::DeviceList& list) {
        print(list);
        return true;
      },
      timeout);
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", s.message().c_str());
    return 1;
  }
  return 0;
}

int ShowStats(const std::string& control_socket, const std::string& id,
              const ControlOptions& options) {
  if (options.output != "table" && options.output != "json") {
    std::fprintf(stderr, "error: --output must be table or json\n");
    return 2;
  }
  control::ControlClient client(control_socket);
  auto stats = client.GetStats(id);
  if (!stats) {
    std::fprintf(stderr, "error: %s\n", stats.error().message.c_str());
    return 1;
  }
  if (options.output == "json") {
    std::printf("%s\n", ToJson(*stats).c_str());
    return 0;
  }
  for (const pb::DeviceStats& d : stats->devices()) {
    std::printf("%s (%s): client %s, connects %llu, disconnects %llu, rejected %llu\n",
                d.id().c_str(), d.device_class().c_str(),
                d.client_connected() ? "connected" : "none",
                static_cast<unsigned long long>(d.connects()),
                static_cast<unsigned long long>(d.disconnects()),
                static_cast<unsigned long long>(d.rejected_clients()));
    std::printf(
        "  dma regions %u (%llu bytes), interrupts %llu, protocol errors %llu, "
        "poll busy %.3f s in %llu of %llu passes\n",
        d.dma_regions(), static_cast<unsigned long long>(d.dma_bytes()),
        static_cast<unsigned long long>(d.interrupts()),
        static_cast<unsigned long long>(d.protocol_errors()),
        static_cast<double>(d.poll_busy_ns()) / 1e9,
        static_cast<unsigned long long>(d.poll_busy_calls()),
        static_cast<unsigned long long>(d.poll_calls()));
    if (d.operations_size() == 0) continue;
    std::printf("  %-13s %12s %16s %8s %10s %10s %10s\n", "operation", "requests", "bytes",
                "errors", "p50", "p99", "mean");
    for (const pb::OperationStats& o : d.operations()) {
      if (o.requests() == 0) continue;
      double mean_us = o.latency().count() == 0 ? 0
                                                : o.latency().sum_seconds() * 1e6 /
                                                      static_cast<double>(o.latency().count());
      std::printf("  %-13s %12llu %16llu %8llu %10s %10s %8.1fus\n", o.operation().c_str(),
                  static_cast<unsigned long long>(o.requests()),
                  static_cast<unsigned long long>(o.bytes()),
                  static_cast<unsigned long long>(o.errors()), Quantile(o.latency(), 0.5).c_str(),
                  Quantile(o.latency(), 0.99).c_str(), mean_us);
    }
  }
  for (const pb::PollThreadStats& t : stats->poll_threads()) {
    double total = static_cast<double>(t.busy_ns() + t.idle_ns());
    std::printf("poll thread %u: %llu devices, busy %.1f%%, slept %llu times\n", t.index(),
                static_cast<unsigned long long>(t.devices()),
                total > 0 ? 100.0 * static_cast<double>(t.busy_ns()) / total : 0.0,
                static_cast<unsigned long long>(t.sleeps()));
  }
  if (stats->handoffs() > 0) {
    std::printf("handoffs: %llu (pause p50 %s, p99 %s)\n",
                static_cast<unsigned long long>(stats->handoffs()),
                Quantile(stats->handoff_pause(), 0.5).c_str(),
                Quantile(stats->handoff_pause(), 0.99).c_str());
  }
  return 0;
}

}  // namespace vfu
