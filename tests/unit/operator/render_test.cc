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
  std::set<std::string> plugin_mounts;
  for (const auto& m : plugin["volumeMounts"]) plugin_mounts.insert(m["mountPath"]);
  EXPECT_TRUE(plugin_mounts.count("/var/lib/kubelet/device-plugins"));
  EXPECT_TRUE(plugin_mounts.count("/var/lib/kubelet/pod-resources"));
  EXPECT_TRUE(plugin_mounts.count("/var/run/vfio-user"));
  std::map<std::string, std::string> env;
  for (const auto& e : plugin["env"]) {
    if (e.contains("value")) env[e["name"]] = e["value"];
  }
  EXPECT_EQ(env["VFIO_USER_RESOURCE_NAME"], "vfio-user.io/virtio-blk");
  // The config directory is mounted whole (no subPath), so ConfigMap updates reach the file.
  for (const auto& m : server["volumeMounts"]) EXPECT_FALSE(m.contains("subPath"));
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

TEST(Render, ResourceNamesInTheKubernetesDomainAreRefused) {
  Json spec = FilePoolSpec();
  spec["resourceName"] = "kubernetes.io/disk";
  EXPECT_FALSE(ParsePoolSpec(Pool(spec), "img").ok());
  spec["resourceName"] = "example.com/disk";
  auto parsed = ParsePoolSpec(Pool(spec), "img");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->resource_name, "example.com/disk");
}

}  // namespace
}  // namespace vfu::op
