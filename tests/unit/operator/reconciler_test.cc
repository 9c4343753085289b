// The running controller (informers, work queue, reconciler, all over cpprestsdk) against the
// fake API server: a pool becomes a ConfigMap and a DaemonSet, spec changes roll out, status
// follows the DaemonSet and the nodes, and deletion waits for pods that still use devices.
#include "operator/app/controller.h"

#include <gtest/gtest.h>

#include <functional>

#include "operator/pool/render.h"
#include "server/config/server_config.h"
#include "tests/unit/operator/test_util.h"

namespace vfu::op::testing {
namespace {

constexpr const char* kNs = "vfio-user";

Json Pool(const std::string& name, Json spec) {
  return {{"apiVersion", "vfio-user.io/v1alpha1"},
          {"kind", "VfioUserDevicePool"},
          {"metadata", {{"name", name}}},
          {"spec", spec}};
}

Json RamSpec(int devices) {
  return {{"deviceClass", "virtio-blk"},
          {"devicesPerNode", devices},
          {"nodeSelector", {{"pool", "fast"}}},
          {"backend", {{"type", "ram"}, {"size", "64Mi"}}}};
}

Json Node(const std::string& name, const std::string& pool_label, int allocatable) {
  return {{"metadata", {{"name", name}, {"labels", {{"pool", pool_label}}}}},
          {"status",
           {{"allocatable",
             {{"cpu", "4"}, {"vfio-user.io/virtio-blk", std::to_string(allocatable)}}}}}};
}

class ControllerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ControllerOptions options;
    options.reconciler.ns = kNs;
    options.reconciler.default_image = "registry/vfio-user:1";
    options.reconciler.deletion_recheck = std::chrono::milliseconds(100);
    options.queue.base_delay = std::chrono::milliseconds(20);
    options.queue.max_delay = std::chrono::milliseconds(200);
    controller_ = std::make_unique<Controller>(*client_, options, &metrics_);
  }
  void Start() {
    controller_->Start();
    ASSERT_TRUE(WaitFor([&] { return controller_->Synced(); }));
  }

  std::optional<Json> DaemonSet(const std::string& pool) {
    return fake_.GetObject("daemonsets", kNs, PoolObjectName(pool));
  }
  std::optional<Json> ConfigMap(const std::string& pool) {
    return fake_.GetObject("configmaps", kNs, PoolObjectName(pool));
  }
  Json PoolObject(const std::string& name) {
    auto pool = fake_.GetObject("vfiouserdevicepools", "", name);
    return pool ? *pool : Json();
  }
  // Read-modify-write of a pool's spec as a user would do it: the controller writes the status
  // concurrently, so an update can meet a newer resourceVersion (409 Conflict); read again and
  // retry, as client-go's RetryOnConflict does. Bounded.
  bool UpdatePoolSpec(const std::string& name, const std::function<void(Json&)>& change) {
    for (int attempt = 0; attempt < 50; ++attempt) {
      Json pool = PoolObject(name);
      change(pool["spec"]);
      if (client_->Update(resources::kDevicePools, "", pool).ok()) return true;
    }
    return false;
  }
  // The condition of `type` as "Status/Reason", or "" if absent.
  std::string Condition(const std::string& pool, const std::string& type) {
    Json object = PoolObject(pool);
    if (!object.contains("status")) return "";
    for (const auto& c : object["status"].value("conditions", Json::array())) {
      if (c["type"] == type)
        return c["status"].get<std::string>() + "/" + c["reason"].get<std::string>();
    }
    return "";
  }
  // What the DaemonSet controller would write once `ready` of `desired` pods run the current
  // generation.
  void DaemonSetControllerReports(const std::string& pool, int desired, int ready) {
    auto ds = DaemonSet(pool);
    ASSERT_TRUE(ds.has_value());
    fake_.SetStatus("daemonsets", kNs, PoolObjectName(pool),
                    {{"observedGeneration", (*ds)["metadata"]["generation"]},
                     {"desiredNumberScheduled", desired},
                     {"currentNumberScheduled", desired},
                     {"updatedNumberScheduled", desired},
                     {"numberReady", ready},
                     {"numberAvailable", ready}});
  }
  std::vector<std::string> EventReasons() {
    std::vector<std::string> reasons;
    for (const auto& e : fake_.ListObjects("events")) reasons.push_back(e["reason"]);
    return reasons;
  }
  bool HasEvent(const std::string& reason) {
    auto reasons = EventReasons();
    return std::find(reasons.begin(), reasons.end(), reason) != reasons.end();
  }

  FakeApiServer fake_;
  std::unique_ptr<KubeClient> client_ = MakeClient(fake_);
  OperatorMetrics metrics_;
  std::unique_ptr<Controller> controller_;
};

TEST_F(ControllerTest, CreatedPoolGetsFinalizerConfigMapAndDaemonSet) {
  Start();
  fake_.CreateObject("vfiouserdevicepools", "", Pool("fast", RamSpec(2)));
  ASSERT_TRUE(WaitFor([&] { return DaemonSet("fast").has_value(); }));
  auto cm = ConfigMap("fast");
  ASSERT_TRUE(cm.has_value());
  auto config = vfu::config::ParseServerConfig((*cm)["data"]["server.yaml"], "server.yaml");
  ASSERT_TRUE(config.ok()) << config.error().message;
  ASSERT_EQ(config->devices.size(), 2u);
  EXPECT_EQ(config->devices[0].spec.id, "fast-0");
  EXPECT_EQ(config->devices[1].spec.id, "fast-1");
  Json pool = PoolObject("fast");
  EXPECT_EQ(pool["metadata"]["finalizers"], Json({kPoolFinalizer}));
  auto ds = DaemonSet("fast");
  EXPECT_EQ((*ds)["metadata"]["ownerReferences"][0]["uid"], pool["metadata"]["uid"]);
  EXPECT_EQ((*cm)["metadata"]["ownerReferences"][0]["uid"], pool["metadata"]["uid"]);
  EXPECT_EQ((*ds)["spec"]["template"]["spec"]["nodeSelector"], Json({{"pool", "fast"}}));
  EXPECT_EQ((*ds)["spec"]["template"]["spec"]["containers"][0]["image"], "registry/vfio-user:1");
  EXPECT_TRUE(WaitFor([&] { return metrics_.reconciles(true) >= 1; }));
}

TEST_F(ControllerTest, SpecChangeUpdatesTheConfigMapAndRollsOnlyForUnreloadableSettings) {
  Start();
  fake_.CreateObject("vfiouserdevicepools", "", Pool("fast", RamSpec(2)));
  ASSERT_TRUE(WaitFor([&] { return DaemonSet("fast").has_value(); }));
  const Json template_before = (*DaemonSet("fast"))["spec"]["template"];
  const std::string ds_version = (*DaemonSet("fast"))["metadata"]["resourceVersion"];

  ASSERT_TRUE(UpdatePoolSpec("fast", [](Json& spec) { spec["devicesPerNode"] = 4; }));
  ASSERT_TRUE(WaitFor([&] {
    auto cm = ConfigMap("fast");
    return cm &&
           (*cm)["data"]["server.yaml"].get<std::string>().find("fast-3") != std::string::npos;
  }));
  // Devices added: the server reloads its config; the pods are not touched.
  EXPECT_EQ((*DaemonSet("fast"))["spec"]["template"], template_before);
  EXPECT_EQ((*DaemonSet("fast"))["metadata"]["resourceVersion"], ds_version);

  ASSERT_TRUE(UpdatePoolSpec("fast", [](Json& spec) { spec["pollThreads"] = 2; }));
  ASSERT_TRUE(WaitFor([&] {
    return (*DaemonSet("fast"))["spec"]["template"]["metadata"]["annotations"] !=
           template_before["metadata"]["annotations"];
  }));
  EXPECT_EQ((*DaemonSet("fast"))["metadata"]["generation"], 2);
}

TEST_F(ControllerTest, StatusFollowsTheDaemonSetAndTheNodesAllocatable) {
  fake_.CreateObject("nodes", "", Node("n1", "fast", 2));
  fake_.CreateObject("nodes", "", Node("n2", "fast", 0));
  fake_.CreateObject("nodes", "", Node("other", "slow", 8));
  Start();
  fake_.CreateObject("vfiouserdevicepools", "", Pool("fast", RamSpec(2)));
  ASSERT_TRUE(WaitFor([&] { return DaemonSet("fast").has_value(); }));
  ASSERT_TRUE(WaitFor([&] { return Condition("fast", "Ready") == "False/RollingOut"; }));
  // The DaemonSet controller found no node to run on (yet).
  DaemonSetControllerReports("fast", 0, 0);
  ASSERT_TRUE(WaitFor([&] { return Condition("fast", "Ready") == "False/NoMatchingNodes"; }));

  DaemonSetControllerReports("fast", 2, 1);
  ASSERT_TRUE(WaitFor([&] { return Condition("fast", "Ready") == "False/RollingOut"; }));
  EXPECT_EQ(Condition("fast", "Progressing"), "True/RollingOut");

  DaemonSetControllerReports("fast", 2, 2);
  // n2's plugin has not advertised its devices yet.
  ASSERT_TRUE(WaitFor([&] { return Condition("fast", "Degraded") == "True/DevicesMissing"; }));
  EXPECT_EQ(Condition("fast", "Ready"), "False/DevicesNotAdvertised");
  EXPECT_EQ(Condition("fast", "Progressing"), "False/RolloutComplete");
  EXPECT_TRUE(HasEvent("DevicesMissing"));

  fake_.SetStatus("nodes", "", "n2", {{"allocatable", {{"vfio-user.io/virtio-blk", "2"}}}});
  ASSERT_TRUE(WaitFor([&] { return Condition("fast", "Ready") == "True/AllNodesReady"; }));
  EXPECT_EQ(Condition("fast", "Degraded"), "False/AsExpected");
  Json status = PoolObject("fast")["status"];
  EXPECT_EQ(status["observedGeneration"], PoolObject("fast")["metadata"]["generation"]);
  EXPECT_EQ(status["desiredNodes"], 2);
  EXPECT_EQ(status["readyNodes"], 2);
  EXPECT_EQ(status["allocatableDevices"], 4);  // the "other" node is not in the pool
  EXPECT_EQ(status["nodes"],
            Json::parse(R"([{"name":"n1","allocatable":2},{"name":"n2","allocatable":2}])"));
  EXPECT_TRUE(HasEvent("Ready"));
}

TEST_F(ControllerTest, InvalidSpecIsReportedAndNothingIsRolledOut) {
  Start();
  Json spec = RamSpec(2);
  spec["backend"] = {{"type", "file"}, {"pathTemplate", "/same/file.img"}};
  fake_.CreateObject("vfiouserdevicepools", "", Pool("broken", spec));
  ASSERT_TRUE(WaitFor([&] { return Condition("broken", "Degraded") == "True/InvalidSpec"; }));
  EXPECT_EQ(Condition("broken", "Ready"), "False/InvalidSpec");
  EXPECT_FALSE(DaemonSet("broken").has_value());
  EXPECT_TRUE(HasEvent("InvalidSpec"));
}

TEST_F(ControllerTest, DeletionWaitsForPodsUsingTheDevicesAndSaysSo) {
  fake_.CreateObject("nodes", "", Node("n1", "fast", 2));
  Start();
  fake_.CreateObject("vfiouserdevicepools", "", Pool("fast", RamSpec(2)));
  ASSERT_TRUE(WaitFor([&] { return DaemonSet("fast").has_value(); }));
  ASSERT_TRUE(WaitFor([&] { return PoolObject("fast")["metadata"].contains("finalizers"); }));
  // A VM's virt-launcher pod holding one of the pool's devices on n1.
  fake_.CreateObject("pods", "vms",
                     {{"metadata", {{"name", "virt-launcher-vm1"}, {"namespace", "vms"}}},
                      {"spec",
                       {{"nodeName", "n1"},
                        {"containers",
                         {{{"name", "compute"},
                           {"resources", {{"limits", {{"vfio-user.io/virtio-blk", "1"}}}}}}}}}},
                      {"status", {{"phase", "Running"}}}});
  ASSERT_TRUE(client_->Delete(resources::kDevicePools, "", "fast").ok());
  ASSERT_TRUE(WaitFor([&] { return Condition("fast", "Degraded") == "True/DeletionBlocked"; }));
  EXPECT_TRUE(HasEvent("DeletionBlocked"));
  EXPECT_TRUE(DaemonSet("fast").has_value());  // the server keeps serving the VM
  std::string message = PoolObject("fast")["status"]["conditions"][2]["message"];
  EXPECT_NE(message.find("vms/virt-launcher-vm1"), std::string::npos);

  // The VM stops; the pool is cleaned up and goes away.
  fake_.SetStatus("pods", "vms", "virt-launcher-vm1", {{"phase", "Succeeded"}});
  ASSERT_TRUE(WaitFor([&] { return !fake_.GetObject("vfiouserdevicepools", "", "fast"); }));
  EXPECT_FALSE(DaemonSet("fast").has_value());
  EXPECT_FALSE(ConfigMap("fast").has_value());
  EXPECT_TRUE(HasEvent("CleanedUp"));
}

TEST_F(ControllerTest, ForceDeleteAnnotationTearsDownDespiteConsumersWithAWarning) {
  fake_.CreateObject("nodes", "", Node("n1", "fast", 2));
  Start();
  Json pool = Pool("fast", RamSpec(1));
  pool["metadata"]["annotations"] = {{kForceDeleteAnnotation, "true"}};
  fake_.CreateObject("vfiouserdevicepools", "", pool);
  ASSERT_TRUE(WaitFor([&] { return DaemonSet("fast").has_value(); }));
  ASSERT_TRUE(WaitFor([&] { return PoolObject("fast")["metadata"].contains("finalizers"); }));
  fake_.CreateObject("pods", "vms",
                     {{"metadata", {{"name", "vm"}}},
                      {"spec",
                       {{"nodeName", "n1"},
                        {"containers",
                         {{{"name", "compute"},
                           {"resources", {{"limits", {{"vfio-user.io/virtio-blk", "1"}}}}}}}}}},
                      {"status", {{"phase", "Running"}}}});
  ASSERT_TRUE(client_->Delete(resources::kDevicePools, "", "fast").ok());
  ASSERT_TRUE(WaitFor([&] { return !fake_.GetObject("vfiouserdevicepools", "", "fast"); }));
  EXPECT_TRUE(HasEvent("ForcedDeletion"));
  EXPECT_FALSE(DaemonSet("fast").has_value());
}

TEST_F(ControllerTest, PoolsCreatedWhileTheWatchWasDownAreReconciledAfterA410) {
  Start();
  ASSERT_TRUE(WaitFor([&] { return fake_.OpenWatches("vfiouserdevicepools") == 1; }));
  fake_.DropWatches();
  fake_.CreateObject("vfiouserdevicepools", "", Pool("late", RamSpec(1)));
  fake_.CompactHistory();  // the pool's ADDED event is gone from the history
  ASSERT_TRUE(WaitFor([&] { return DaemonSet("late").has_value(); }));
  EXPECT_GE(metrics_.watch_restarts("vfiouserdevicepools", "expired"), 1);
}

TEST_F(ControllerTest, FailedReconcilesAreRetriedAndCounted) {
  Start();
  fake_.FailNextRequests(8, 500);  // more than the client's own retries
  fake_.CreateObject("vfiouserdevicepools", "", Pool("fast", RamSpec(1)));
  ASSERT_TRUE(WaitFor([&] { return DaemonSet("fast").has_value(); }));
  EXPECT_GE(metrics_.errors(), 1);
}

TEST_F(ControllerTest, SecondPoolOnTheSameNodesIsReportedAsOverlapping) {
  fake_.CreateObject("nodes", "", Node("n1", "fast", 2));
  Start();
  fake_.CreateObject("vfiouserdevicepools", "", Pool("first", RamSpec(1)));
  ASSERT_TRUE(WaitFor([&] { return DaemonSet("first").has_value(); }));
  fake_.CreateObject("vfiouserdevicepools", "", Pool("second", RamSpec(1)));
  ASSERT_TRUE(WaitFor([&] { return Condition("second", "Degraded") == "True/OverlappingPools"; }));
  EXPECT_NE(Condition("first", "Degraded"), "True/OverlappingPools");
}

}  // namespace
}  // namespace vfu::op::testing
