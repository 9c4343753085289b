// What a pool becomes on the cluster, as pure functions of the pool object and its parsed
// spec (no API calls, so the output is tested as is):
//   - the server configuration (ServerConfig YAML) with devices "<pool>-<i>";
//   - a ConfigMap "vfio-user-pool-<pool>" holding it as server.yaml;
//   - a DaemonSet "vfio-user-pool-<pool>" with the server and device plugin containers. The
//     plugin is configured by flags only (it reads no environment and not the server config):
//     the server's control socket, and --resource-name when the pool renames its resource.
//     Each container mounts exactly the host paths it uses (see RenderDaemonSet).
// The ConfigMap is mounted as a directory, so the kubelet updates the file in place and the
// server reloads it (devices added or removed need no restart). Settings the server cannot
// reload (its global settings block) are hashed into a pod template annotation: changing
// them, or the image, rolls the DaemonSet; changing devices does not.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "operator/pool/pool_spec.h"

namespace vfu::op {

inline constexpr const char* kFieldManager = "vfio-user-operator";
inline constexpr const char* kPoolLabel = "vfio-user.io/pool";
inline constexpr const char* kSettingsHashAnnotation = "vfio-user.io/server-settings-hash";
inline constexpr const char* kConfigKey = "server.yaml";
inline constexpr const char* kConfigDir = "/etc/vfio-user";
inline constexpr const char* kControlSocket = "/var/run/vfio-user/control.sock";
inline constexpr const char* kKubeletPluginDir = "/var/lib/kubelet/device-plugins";
inline constexpr const char* kKubeletPodResourcesDir = "/var/lib/kubelet/pod-resources";

// "vfio-user-pool-<pool>", the name of the ConfigMap and the DaemonSet.
std::string PoolObjectName(const std::string& pool);

std::string RenderServerConfig(const std::string& pool, const PoolSpec& spec);
// Hash (hex) of the parts of the configuration a running server cannot take over by reload.
std::string SettingsHash(const PoolSpec& spec);
// The device plugin's command-line arguments for the pool.
std::vector<std::string> DevicePluginArgs(const PoolSpec& spec);

// Apply configurations (apiVersion, kind, metadata with owner reference, and the fields the
// operator owns) for server-side apply.
nlohmann::json RenderConfigMap(const nlohmann::json& pool, const PoolSpec& spec,
                               const std::string& ns);
nlohmann::json RenderDaemonSet(const nlohmann::json& pool, const PoolSpec& spec,
                               const std::string& ns);

}  // namespace vfu::op
