// vfio-user-ctl's control-API commands: `list` (devices, health, clients; --watch follows the
// server's watch stream) and `stats` (per-device counters with latency percentiles estimated
// from the histograms). Output as a table for people or JSON for scripts.
#pragma once

#include <string>

namespace vfu {

struct ControlOptions {
  std::string output = "table";  // table | json
  bool watch = false;
  double watch_seconds = 0;  // 0: until interrupted
};

int ListDevices(const std::string& control_socket, const ControlOptions& options);
int ShowStats(const std::string& control_socket, const std::string& id,
              const ControlOptions& options);

}  // namespace vfu
