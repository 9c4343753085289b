// What a pool renders to: a server configuration the real server accepts, with stable device
// ids, and a DaemonSet whose pod template changes only for settings a reload cannot absorb.
#include "operator/pool/render.h"

#include <gtest/gtest.h>

#include "server/config/server_config.h"

namespace vfu::op {
namespace {

using Json = nlohmann::json;

Json Pool(Json spec, const std::string& name = "fast") {
  return {{"apiVersion", "vfio-user.io/v1alpha1"},
          {"kind", "VfioUserDevicePool"},
          {"metadata", {{"name", name}, {"uid", "uid-7"}}},
          {"spec", spec}};
}

Json FilePoolSpec() {
  return {{"deviceClass", "virtio-blk"},
          {"devicesPerNode", 3},
          {"nodeSelector", {{"vfio-user.io/storage", "ssd"}}},
          {"tolerations", Json::array({{{"key", "k"}, {"operator", "Exists"}}})},
          {"backend", {{"type", "file"}, {"pathTemplate", "/var/lib/vfu/{pool}/disk-{index}.img"}}},
          {"pollMode", "busy"},
          {"pollThreads", 2}};
}

PoolSpec Parse(const Json& pool) {
  auto spec = ParsePoolSpec(pool, "registry/vfio-user:1");
  EXPECT_TRUE(spec.ok()) << spec.error().message;
  return spec.ok() ? *spec : PoolSpec{};
}

TEST(Render, ServerConfigLoadsInTheServerWithStableDeviceIds) {
  Json pool = Pool(FilePoolSpec());
  auto config =
      vfu::config::ParseServerConfig(RenderServerConfig("fast", Parse(pool)), "server.yaml");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->settings.socket_root, "/var/run/vfio-user");
  EXPECT_EQ(config->settings.poll_threads, 2u);
  EXPECT_EQ(config->settings.socket_owner.uid, 107u);
  EXPECT_EQ(config->settings.socket_owner.mode, 0660u);
  ASSERT_EQ(config->devices.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    const auto& device = config->devices[static_cast<size_t>(i)];
    EXPECT_EQ(device.spec.id, "fast-" + std::to_string(i));
    EXPECT_EQ(device.spec.socket,
              "/var/run/vfio-user/fast-" + std::to_string(i) + "/vfio-user.sock");
    EXPECT_EQ(device.spec.params.at("path"),
              "/var/lib/vfu/fast/disk-" + std::to_string(i) + ".img");
    EXPECT_EQ(device.spec.params.at("poll"), "busy");
    EXPECT_EQ(device.poll_thread, static_cast<unsigned>(i % 2));
  }
}

TEST(Render, RamPoolSizesAndSocketOwnerReachTheServerConfig) {
  Json spec = {{"deviceClass", "virtio-blk"},
               {"devicesPerNode", 1},
               {"backend", {{"type", "null"}, {"size", 1048576}}},
               {"socketOwner", {{"uid", 0}, {"gid", 36}, {"mode", "0600"}}}};
  auto config =
      vfu::config::ParseServerConfig(RenderServerConfig("n", Parse(Pool(spec, "n"))), "s");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->devices[0].spec.params.at("backend"), "null");
  EXPECT_EQ(config->devices[0].spec.params.at("size"), "1048576");
  EXPECT_EQ(config->devices[0].socket_owner.gid, 36u);
  EXPECT_EQ(config->devices[0].socket_owner.mode, 0600u);
}

TEST(Render, SampleDevicesNeedNoBackend) {
  Json spec = {{"deviceClass", "sample"}, {"devicesPerNode", 2}};
  auto config =
      vfu::config::ParseServerConfig(RenderServerConfig("s", Parse(Pool(spec, "s"))), "s");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->devices[1].spec.device_class, "sample");
  EXPECT_EQ(config->devices[1].spec.id, "s-1");
}

TEST(Render, DaemonSetRunsServerAndDevicePluginFromTheSameImageWithHostPaths) {
  Json pool = Pool(FilePoolSpec());
  Json ds = RenderDaemonSet(pool, Parse(pool), "vfio-user");
  EXPECT_EQ(ds["metadata"]["name"], "vfio-user-pool-fast");
  EXPECT_EQ(ds["metadata"]["namespace"], "vfio-user");
  EXPECT_EQ(ds["metadata"]["ownerReferences"][0]["uid"], "uid-7");
  EXPECT_EQ(ds["metadata"]["ownerReferences"][0]["controller"], true);
  const Json& pod = ds["spec"]["template"]["spec"];
  EXPECT_EQ(pod["nodeSelector"], Json({{"vfio-user.io/storage", "ssd"}}));
  EXPECT_EQ(pod["tolerations"][0]["key"], "k");
  EXPECT_EQ(pod["priorityClassName"], "system-node-critical");
  EXPECT_EQ(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"], 0);
  ASSERT_EQ(pod["containers"].size(), 2u);
  const Json& server = pod["containers"][0];
  const Json& plugin = pod["containers"][1];
  EXPECT_EQ(server["command"],
            Json({"vfio-user-server", "--config", "/etc/vfio-user/server.yaml"}));
  EXPECT_EQ(server["securityContext"]["runAsUser"], 0);
  EXPECT_EQ(server["securityContext"]["privileged"], false);
  EXPECT_EQ(plugin["command"], Json({"vfio-user-device-plugin"}));
  EXPECT_EQ(server["image"], "registry/vfio-user:1");
  EXPECT_EQ(plugin["image"], "registry/vfio-user:1");
  std::map<std::string, std::string> host_paths;
  for (const auto& v : pod["volumes"]) {
    if (v.contains("hostPath")) host_paths[v["name"]] = v["hostPath"]["path"];
    if (v.contains("configMap"))
      host_paths[v["name"]] = "configmap:" + v["configMap"]["name"].get<std::string>();
  }
  EXPECT_EQ(host_paths["sockets"], "/var/run/vfio-user");
  EXPECT_EQ(host_paths["device-plugins"], "/var/lib/kubelet/device-plugins");
  EXPECT_EQ(host_paths["pod-resources"], "/var/lib/kubelet/pod-resources");
  EXPECT_EQ(host_paths["backend-0"], "/var/lib/vfu/fast");
  EXPECT_EQ(host_paths["config"], "configmap:vfio-user-pool-fast");
  // The config directory is mounted whole (no subPath), so ConfigMap updates reach the file.
  for (const auto& m : server["volumeMounts"]) EXPECT_FALSE(m.contains("subPath"));
}

const Json& Container(const Json& ds, const std::string& name) {
  for (const Json& c : ds["spec"]["template"]["spec"]["containers"]) {
    if (c["name"] == name) return c;
  }
  static const Json kNone;
  ADD_FAILURE() << "no container " << name;
  return kNone;
}

// mountPath -> host path of the hostPath volume behind it ("configmap:<name>" for the config).
std::map<std::string, std::string> MountedHostPaths(const Json& ds, const Json& container) {
  std::map<std::string, std::string> volumes;
  for (const Json& v : ds["spec"]["template"]["spec"]["volumes"]) {
    volumes[v["name"]] = v.contains("hostPath")
                             ? v["hostPath"]["path"].get<std::string>()
                             : "configmap:" + v["configMap"]["name"].get<std::string>();
  }
  std::map<std::string, std::string> mounts;
  for (const Json& m : container["volumeMounts"]) {
    const std::string name = m["name"];
    EXPECT_TRUE(volumes.count(name)) << "mount of an undeclared volume " << name;
    EXPECT_TRUE(mounts.emplace(m["mountPath"], volumes[name]).second)
        << "mountPath used twice: " << m["mountPath"];
  }
  return mounts;
}

TEST(Render, DevicePluginIsConfiguredWithFlagsItUnderstandsAndNoEnvironment) {
  Json pool = Pool(FilePoolSpec());
  const PoolSpec spec = Parse(pool);
  Json ds = RenderDaemonSet(pool, spec, "ns");
  const Json& plugin = Container(ds, "device-plugin");
  EXPECT_EQ(plugin["command"], Json({"vfio-user-device-plugin"}));
  EXPECT_EQ(plugin["args"], Json({"--control-socket=/var/run/vfio-user/control.sock"}));
  // The plugin reads no environment (no NODE_NAME, no VFIO_USER_* settings).
  EXPECT_FALSE(plugin.contains("env"));
  // The control socket the plugin dials is the one the rendered server config implies.
  auto config = vfu::config::ParseServerConfig(RenderServerConfig("fast", spec), "server.yaml");
  ASSERT_TRUE(config.ok()) << config.error().message;
  std::string server_control = config->settings.control_socket.empty()
                                   ? config->settings.socket_root + "/control.sock"
                                   : config->settings.control_socket;
  EXPECT_EQ("--control-socket=" + server_control, plugin["args"][0]);
  // The server container is unchanged: its config file from the mounted ConfigMap.
  EXPECT_EQ(Container(ds, "server")["command"],
            Json({"vfio-user-server", "--config", "/etc/vfio-user/server.yaml"}));
}

TEST(Render, DevicePluginExposesItsMetricsPortByName) {
  Json pool = Pool(FilePoolSpec());
  Json ds = RenderDaemonSet(pool, Parse(pool), "ns");
  const Json& ports = Container(ds, "device-plugin")["ports"];
  ASSERT_EQ(ports.size(), 1u);
  EXPECT_EQ(ports[0]["name"], "metrics");
  EXPECT_EQ(ports[0]["containerPort"], 9478);  // the plugin's --metrics-address default
}

TEST(Render, OverriddenResourceNameReachesThePluginAsResourceNameFlag) {
  Json spec = FilePoolSpec();
  spec["resourceName"] = "example.com/fast-disk";
  Json ds = RenderDaemonSet(Pool(spec), Parse(Pool(spec)), "ns");
  EXPECT_EQ(Container(ds, "device-plugin")["args"],
            Json({"--control-socket=/var/run/vfio-user/control.sock",
                  "--resource-name=virtio-blk=example.com/fast-disk"}));

  // The default name, even when written out, needs no flag.
  spec["resourceName"] = "vfio-user.io/virtio-blk";
  Json same = RenderDaemonSet(Pool(spec), Parse(Pool(spec)), "ns");
  EXPECT_EQ(Container(same, "device-plugin")["args"].size(), 1u);

  Json sample = {{"deviceClass", "sample"}, {"resourceName", "example.com/demo"}};
  Json sample_ds = RenderDaemonSet(Pool(sample, "s"), Parse(Pool(sample, "s")), "ns");
  EXPECT_EQ(Container(sample_ds, "device-plugin")["args"][1],
            "--resource-name=sample=example.com/demo");
}

TEST(Render, EachContainerMountsExactlyTheHostPathsItUses) {
  Json spec = FilePoolSpec();
  spec["backend"]["pathTemplate"] = "/var/lib/vfu/{pool}/{index}/disk.img";
  Json ds = RenderDaemonSet(Pool(spec), Parse(Pool(spec)), "ns");
  // Host paths appear at the same path in the containers: the server reports its socket paths,
  // and the plugin hands them to the kubelet as host paths.
  EXPECT_EQ(MountedHostPaths(ds, Container(ds, "device-plugin")),
            (std::map<std::string, std::string>{
                {"/var/lib/kubelet/device-plugins", "/var/lib/kubelet/device-plugins"},
                {"/var/lib/kubelet/pod-resources", "/var/lib/kubelet/pod-resources"},
                {"/var/run/vfio-user", "/var/run/vfio-user"}}));
  EXPECT_EQ(MountedHostPaths(ds, Container(ds, "server")),
            (std::map<std::string, std::string>{{"/etc/vfio-user", "configmap:vfio-user-pool-fast"},
                                                {"/var/run/vfio-user", "/var/run/vfio-user"},
                                                {"/var/lib/vfu/fast/0", "/var/lib/vfu/fast/0"},
                                                {"/var/lib/vfu/fast/1", "/var/lib/vfu/fast/1"},
                                                {"/var/lib/vfu/fast/2", "/var/lib/vfu/fast/2"}}));
  for (const Json& m : Container(ds, "server")["volumeMounts"]) {
    if (m["mountPath"] == "/etc/vfio-user") {
      EXPECT_EQ(m["readOnly"], true);
    }
  }
  // The plugin only connects to the pod-resources socket (allowed on a read-only mount).
  for (const Json& m : Container(ds, "device-plugin")["volumeMounts"]) {
    EXPECT_EQ(m.value("readOnly", false), m["name"] == "pod-resources") << m["name"];
  }
  // The pod-resources socket is replaced on kubelet restarts: the directory is mounted.
  for (const Json& v : ds["spec"]["template"]["spec"]["volumes"]) {
    if (v["name"] == "pod-resources") {
      EXPECT_EQ(v["hostPath"]["type"], "Directory");
    }
  }
  // RAM-backed devices need no backend mounts.
  Json ram = {{"deviceClass", "virtio-blk"}, {"backend", {{"type", "ram"}, {"size", "64Mi"}}}};
  Json ram_ds = RenderDaemonSet(Pool(ram, "r"), Parse(Pool(ram, "r")), "ns");
  EXPECT_EQ(MountedHostPaths(ram_ds, Container(ram_ds, "server")).size(), 2u);
}

TEST(Render, DevicePluginNeedsNoCapabilities) {
  Json ds = RenderDaemonSet(Pool(FilePoolSpec()), Parse(Pool(FilePoolSpec())), "ns");
  const Json& security = Container(ds, "device-plugin")["securityContext"];
  EXPECT_EQ(security["capabilities"], Json({{"drop", {"ALL"}}}));
  EXPECT_EQ(security["readOnlyRootFilesystem"], true);
  EXPECT_EQ(security["allowPrivilegeEscalation"], false);
}

TEST(Render, BackendDirectoriesMustNotCollideWithTheServersOtherMounts) {
  for (const char* bad :
       {"/{id}.img", "/var/run/vfio-user/{id}.img", "/var/run/vfio-user/disks/{id}.img",
        "/var/run/{id}.img", "/run/vfio-user/{id}.img", "/etc/vfio-user/{id}.img", "/etc/{id}.img",
        "/var/{id}.img"}) {
    Json spec = FilePoolSpec();
    spec["backend"]["pathTemplate"] = bad;
    auto parsed = ParsePoolSpec(Pool(spec), "img");
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_NE(parsed.error().message.find("pathTemplate"), std::string::npos)
        << parsed.error().message;
  }
  for (const char* good : {"/var/lib/vfio-user/{id}.img", "/var/run/vfio-user-disks/{id}.img",
                           "/etc/vfio-user-data/{id}.img", "/srv/{pool}/{index}/disk.img"}) {
    Json spec = FilePoolSpec();
    spec["backend"]["pathTemplate"] = good;
    auto parsed = ParsePoolSpec(Pool(spec), "img");
    EXPECT_TRUE(parsed.ok()) << good << ": " << parsed.error().message;
  }
}

TEST(Render, DeviceChangesKeepThePodTemplateSoServersReloadInsteadOfRestarting) {
  Json spec = FilePoolSpec();
  Json before = RenderDaemonSet(Pool(spec), Parse(Pool(spec)), "ns");
  spec["devicesPerNode"] = 5;
  spec["pollMode"] = "adaptive";
  Json after = RenderDaemonSet(Pool(spec), Parse(Pool(spec)), "ns");
  EXPECT_EQ(before["spec"]["template"], after["spec"]["template"]);
  EXPECT_NE(RenderConfigMap(Pool(spec), Parse(Pool(spec)), "ns")["data"],
            RenderConfigMap(Pool(FilePoolSpec()), Parse(Pool(FilePoolSpec())), "ns")["data"]);
}

TEST(Render, SettingsTheServerCannotReloadChangeThePodTemplate) {
  Json spec = FilePoolSpec();
  Json before = RenderDaemonSet(Pool(spec), Parse(Pool(spec)), "ns");
  spec["pollThreads"] = 4;
  Json after = RenderDaemonSet(Pool(spec), Parse(Pool(spec)), "ns");
  const char* key = kSettingsHashAnnotation;
  EXPECT_NE(before["spec"]["template"]["metadata"]["annotations"][key],
            after["spec"]["template"]["metadata"]["annotations"][key]);
}

TEST(Render, PathTemplateMustGiveEachDeviceItsOwnFile) {
  Json spec = FilePoolSpec();
  spec["backend"]["pathTemplate"] = "/var/lib/vfu/shared.img";
  auto parsed = ParsePoolSpec(Pool(spec), "img");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.error().message.find("{index}"), std::string::npos);
}

TEST(Render, ResourceNamesTheKubeletWouldRefuseAreRefused) {
  Json spec = FilePoolSpec();
  // The device plugin's --resource-name rejects these (exit 2), so the pool must not roll out.
  const std::string long_name = "example.com/" + std::string(64, 'd');
  for (const std::string& bad :
       {std::string("kubernetes.io/disk"), std::string("node.kubernetes.io/disk"),
        std::string("xkubernetes.io/disk"), std::string("requests.example.com/disk"),
        std::string("disk"), std::string("example.com/"), std::string("a..b/disk"),
        std::string("example.com/-disk"), long_name}) {
    spec["resourceName"] = bad;
    auto parsed = ParsePoolSpec(Pool(spec), "img");
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_NE(parsed.error().message.find("resourceName"), std::string::npos);
  }
  spec["resourceName"] = "example.com/disk";
  auto parsed = ParsePoolSpec(Pool(spec), "img");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->resource_name, "example.com/disk");
}

}  // namespace
}  // namespace vfu::op
