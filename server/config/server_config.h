// The server's configuration file: a versioned YAML document listing global settings and the
// devices to serve. Loading it checks every field and reports the first problem with the
// file, line and what is wrong; nothing starts from a file with an error.
//
//   apiVersion: vfio-user.io/v1alpha1
//   kind: ServerConfig
//   settings:                      # all optional
//     socketRoot: /var/run/vfio-user   # each device listens on <socketRoot>/<id>/vfio-user.sock
//     controlSocket: /var/run/vfio-user/control.sock
//     logLevel: info               # debug | info | warn | error
//     logFormat: text              # text | json
//     pollThreads: 1
//     pollThreadCpus: ["2"]        # optional: CPU list per poll thread (pins it; NUMA node)
//     socketOwner: {uid: 107, gid: 107, mode: "0660"}   # qemu in KubeVirt's virt-launcher
//   devices:
//     - id: disk0                  # [a-z0-9][a-z0-9-]*, at most 63 characters
//       class: virtio-blk          # virtio-blk | sample (nvme, virtio-net: later)
//       backend: {type: file, path: /var/lib/vfu/disk0.img}   # or {type: ram|null, size: 64Mi}
//       readOnly: false
//       queues: 1
//       queueSize: 256
//       pollMode: adaptive         # busy | adaptive | interrupt
//       pollThread: 0              # which of settings.pollThreads serves it
//       serial: disk0
//       socketOwner: {uid: 107, gid: 107, mode: "0660"}   # overrides settings.socketOwner
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "server/common/status.h"
#include "server/devices/device_factory.h"

namespace vfu::config {

inline constexpr const char* kApiVersion = "vfio-user.io/v1alpha1";
inline constexpr const char* kKind = "ServerConfig";

struct SocketOwner {
  uid_t uid = 107;
  gid_t gid = 107;
  mode_t mode = 0660;
};

struct Settings {
  std::string socket_root = "/var/run/vfio-user";
  std::string control_socket;  // empty: <socket_root>/control.sock
  std::string log_level = "info";
  std::string log_format = "text";
  unsigned poll_threads = 1;
  // Optional CPU affinity of each poll thread (one CPU list per thread); empty: not pinned.
  std::vector<std::vector<int>> poll_thread_cpus;
  SocketOwner socket_owner;
};

struct DeviceConfig {
  devices::DeviceSpec spec;  // class, id, socket and class options as the factory takes them
  unsigned poll_thread = 0;
  SocketOwner socket_owner;
  int line = 0;  // where the device is declared, for messages
};

struct ServerConfig {
  Settings settings;
  std::vector<DeviceConfig> devices;
};

// Parses a configuration document. `source_name` prefixes every error ("FILE:LINE: ...").
Result<ServerConfig> ParseServerConfig(const std::string& text, const std::string& source_name);
Result<ServerConfig> LoadServerConfig(const std::string& path);

inline constexpr int kMaxCpus = 4096;
// "2", "0-3", "1,5-6" -> the CPUs.
Result<std::vector<int>> ParseCpuList(const std::string& text);

// The socket path of a device: <socket_root>/<id>/vfio-user.sock.
std::string DeviceSocketPath(const Settings& settings, const std::string& id);

}  // namespace vfu::config
