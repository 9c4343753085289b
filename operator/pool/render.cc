#include "operator/pool/render.h"

#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <set>

namespace vfu::op {
namespace {

using Json = nlohmann::json;

Json OwnerReference(const Json& pool) {
  return Json::array({{{"apiVersion", "vfio-user.io/v1alpha1"},
                       {"kind", "VfioUserDevicePool"},
                       {"name", pool["metadata"]["name"]},
                       {"uid", pool["metadata"].value("uid", "")},
                       {"controller", true},
                       {"blockOwnerDeletion", true}}});
}

Json CommonLabels(const std::string& pool) {
  return {{"app.kubernetes.io/name", "vfio-user-node"},
          {"app.kubernetes.io/instance", pool},
          {"app.kubernetes.io/managed-by", kFieldManager},
          {kPoolLabel, pool}};
}

uint64_t Fnv1a(const std::string& text) {
  uint64_t hash = 1469598103934665603ull;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash;
}

void EmitSettings(YAML::Emitter& out, const PoolSpec& spec) {
  out << YAML::Key << "settings" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "socketRoot" << YAML::Value << kSocketRoot;
  out << YAML::Key << "logFormat" << YAML::Value << "json";
  out << YAML::Key << "pollThreads" << YAML::Value << spec.poll_threads;
  out << YAML::Key << "socketOwner" << YAML::Value << YAML::Flow << YAML::BeginMap;
  out << YAML::Key << "uid" << YAML::Value << spec.socket_uid;
  out << YAML::Key << "gid" << YAML::Value << spec.socket_gid;
  out << YAML::Key << "mode" << YAML::Value << YAML::DoubleQuoted << spec.socket_mode;
  out << YAML::EndMap;
  out << YAML::EndMap;
}

// The host directories the file backends live in, each mounted at the same path.
std::set<std::string> BackendDirectories(const std::string& pool, const PoolSpec& spec) {
  std::set<std::string> dirs;
  if (spec.backend_type != "file") return dirs;
  for (int i = 0; i < spec.devices_per_node; ++i) {
    dirs.insert(BackendDirectory(ExpandPathTemplate(spec.path_template, pool, i)));
  }
  return dirs;
}

}  // namespace

std::string PoolObjectName(const std::string& pool) { return "vfio-user-pool-" + pool; }

std::string RenderServerConfig(const std::string& pool, const PoolSpec& spec) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "apiVersion" << YAML::Value << "vfio-user.io/v1alpha1";
  out << YAML::Key << "kind" << YAML::Value << "ServerConfig";
  EmitSettings(out, spec);
  out << YAML::Key << "devices" << YAML::Value << YAML::BeginSeq;
  for (int i = 0; i < spec.devices_per_node; ++i) {
    out << YAML::BeginMap;
    out << YAML::Key << "id" << YAML::Value << DeviceId(pool, i);
    out << YAML::Key << "class" << YAML::Value << spec.device_class;
    if (spec.device_class == "virtio-blk") {
      out << YAML::Key << "backend" << YAML::Value << YAML::Flow << YAML::BeginMap;
      out << YAML::Key << "type" << YAML::Value << YAML::DoubleQuoted << spec.backend_type;
      if (spec.backend_type == "file") {
        out << YAML::Key << "path" << YAML::Value << YAML::DoubleQuoted
            << ExpandPathTemplate(spec.path_template, pool, i);
      } else {
        out << YAML::Key << "size" << YAML::Value << YAML::DoubleQuoted << spec.backend_size;
      }
      out << YAML::EndMap;
      if (!spec.poll_mode.empty()) out << YAML::Key << "pollMode" << YAML::Value << spec.poll_mode;
    }
    out << YAML::Key << "pollThread" << YAML::Value << (i % spec.poll_threads);
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::EndMap;
  return std::string("# Rendered by vfio-user-operator from VfioUserDevicePool ") + pool +
         "; edits are overwritten.\n" + out.c_str() + "\n";
}

std::vector<std::string> DevicePluginArgs(const PoolSpec& spec) {
  // The server's control socket is <socketRoot>/control.sock (no controlSocket in the config).
  std::vector<std::string> args = {std::string("--control-socket=") + kControlSocket};
  if (spec.resource_name != DefaultResourceName(spec.device_class)) {
    args.push_back("--resource-name=" + spec.device_class + "=" + spec.resource_name);
  }
  return args;
}

std::string SettingsHash(const PoolSpec& spec) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  EmitSettings(out, spec);
  out << YAML::EndMap;
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(Fnv1a(out.c_str())));
  return hex;
}

Json RenderConfigMap(const Json& pool, const PoolSpec& spec, const std::string& ns) {
  const std::string name = pool["metadata"]["name"];
  return {{"apiVersion", "v1"},
          {"kind", "ConfigMap"},
          {"metadata",
           {{"name", PoolObjectName(name)},
            {"namespace", ns},
            {"labels", CommonLabels(name)},
            {"ownerReferences", OwnerReference(pool)}}},
          {"data", {{kConfigKey, RenderServerConfig(name, spec)}}}};
}

Json RenderDaemonSet(const Json& pool, const PoolSpec& spec, const std::string& ns) {
  const std::string name = pool["metadata"]["name"];
  const Json selector = {{"app.kubernetes.io/name", "vfio-user-node"}, {kPoolLabel, name}};
  const std::string config_path = std::string(kConfigDir) + "/" + kConfigKey;

  Json volumes = Json::array({
      {{"name", "config"}, {"configMap", {{"name", PoolObjectName(name)}}}},
      {{"name", "sockets"}, {"hostPath", {{"path", kSocketRoot}, {"type", "DirectoryOrCreate"}}}},
      {{"name", "device-plugins"},
       {"hostPath", {{"path", kKubeletPluginDir}, {"type", "Directory"}}}},
      {{"name", "pod-resources"},
       {"hostPath", {{"path", kKubeletPodResourcesDir}, {"type", "Directory"}}}},
  });
  // The config is mounted as a directory (never with subPath): only then does the kubelet
  // swap in a changed ConfigMap, which the server notices and reloads.
  Json server_mounts = Json::array({
      {{"name", "config"}, {"mountPath", kConfigDir}, {"readOnly", true}},
      {{"name", "sockets"}, {"mountPath", kSocketRoot}},
  });
  int backend_index = 0;
  for (const std::string& dir : BackendDirectories(name, spec)) {
    std::string volume = "backend-" + std::to_string(backend_index++);
    volumes.push_back(
        {{"name", volume}, {"hostPath", {{"path", dir}, {"type", "DirectoryOrCreate"}}}});
    server_mounts.push_back({{"name", volume}, {"mountPath", dir}});
  }

  Json server = {
      {"name", "server"},
      {"image", spec.image},
      {"command", {"vfio-user-server", "--config", config_path}},
      // Root (not privileged) so that the server can chown each socket to qemu (107).
      {"securityContext",
       {{"runAsUser", 0},
        {"privileged", false},
        {"allowPrivilegeEscalation", false},
        {"readOnlyRootFilesystem", true},
        {"capabilities", {{"drop", {"ALL"}}, {"add", {"CHOWN", "FOWNER", "DAC_OVERRIDE"}}}}}},
      {"resources", {{"requests", {{"cpu", "100m"}, {"memory", "64Mi"}}}}},
      {"volumeMounts", server_mounts},
  };
  // The plugin: kubelet's plugin directory (its sockets, kubelet.sock), the pod-resources
  // directory (the socket inside is replaced when the kubelet restarts, so never the file), and
  // the socket root (the control socket, and the device sockets PreStartContainer checks). It
  // reads neither the server config nor any environment.
  Json plugin = {
      {"name", "device-plugin"},
      {"image", spec.image},
      {"command", {"vfio-user-device-plugin"}},
      {"args", DevicePluginArgs(spec)},
      // Root for the root-owned kubelet and control sockets; it changes no ownership and does
      // not look inside the 107:107 device directories (that only --pre-start-container does),
      // so it needs no capabilities.
      {"securityContext",
       {{"runAsUser", 0},
        {"privileged", false},
        {"allowPrivilegeEscalation", false},
        {"readOnlyRootFilesystem", true},
        {"capabilities", {{"drop", {"ALL"}}}}}},
      {"resources", {{"requests", {{"cpu", "50m"}, {"memory", "32Mi"}}}}},
      // Prometheus scrapes the plugin's /metrics (--metrics-address default :9478).
      {"ports", {{{"name", "metrics"}, {"containerPort", 9478}, {"protocol", "TCP"}}}},
      {"volumeMounts",
       {{{"name", "device-plugins"}, {"mountPath", kKubeletPluginDir}},
        {{"name", "pod-resources"}, {"mountPath", kKubeletPodResourcesDir}, {"readOnly", true}},
        {{"name", "sockets"}, {"mountPath", kSocketRoot}}}},
  };

  Json pod_spec = {
      {"priorityClassName", "system-node-critical"},
      {"automountServiceAccountToken", false},
      {"terminationGracePeriodSeconds", 30},
      {"containers", {server, plugin}},
      {"volumes", volumes},
  };
  if (!spec.node_selector.empty()) pod_spec["nodeSelector"] = spec.node_selector;
  if (!spec.tolerations.empty()) pod_spec["tolerations"] = spec.tolerations;

  return {
      {"apiVersion", "apps/v1"},
      {"kind", "DaemonSet"},
      {"metadata",
       {{"name", PoolObjectName(name)},
        {"namespace", ns},
        {"labels", CommonLabels(name)},
        {"ownerReferences", OwnerReference(pool)}}},
      {"spec",
       {{"selector", {{"matchLabels", selector}}},
        // maxSurge 0: two plugin instances for one resource on a node confuse the kubelet.
        {"updateStrategy",
         {{"type", "RollingUpdate"}, {"rollingUpdate", {{"maxUnavailable", 1}, {"maxSurge", 0}}}}},
        {"template",
         {{"metadata",
           {{"labels", CommonLabels(name)},
            {"annotations", {{kSettingsHashAnnotation, SettingsHash(spec)}}}}},
          {"spec", pod_spec}}}}},
  };
}

}  // namespace vfu::op
