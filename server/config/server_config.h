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

// uid/gid of a SocketOwner that leaves the socket's owner or group as the server made it.
inline constexpr uid_t kUnchangedUid = static_cast<uid_t>(-1);
inline constexpr gid_t kUnchangedGid = static_cast<gid_t>(-1);

// One `--device CLASS,id=ID,socket=PATH[,key=value...]` of the quick command line form. Besides
// the class options (the device factory checks those) it takes what socketOwner gives in a file:
//   owner=UID:GID   numbers, e.g. owner=107:107 (QEMU's user in KubeVirt's virt-launcher)
//   mode=OCTAL      the socket's permission bits, e.g. mode=0660
// owner= alone gives mode 0660 (socketOwner's default); mode= alone keeps the owner the server's
// (kUnchangedUid/kUnchangedGid). Only the socket gets them: unlike a config-file device, the
// quick form leaves the socket's directory as it is (it may hold other sockets), so the owner
// must be allowed into that directory already.
struct QuickDevice {
  devices::DeviceSpec spec;                 // without owner= and mode=
  std::optional<SocketOwner> socket_owner;  // set when owner= or mode= is given
};
Result<QuickDevice> ParseQuickDevice(const std::string& text);

}  // namespace vfu::config
