#include "operator/pool/reconciler.h"

#include <algorithm>
#include <set>

#include "operator/kube/leader_election.h"
#include "operator/pool/render.h"
#include "server/common/log.h"

namespace vfu::op {
namespace {

bool HasFinalizer(const Json& pool) {
  const Json& meta = pool["metadata"];
  if (!meta.contains("finalizers")) return false;
  for (const auto& f : meta["finalizers"]) {
    if (f == kPoolFinalizer) return true;
  }
  return false;
}

const Json* FindCondition(const Json& conditions, const std::string& type) {
  if (!conditions.is_array()) return nullptr;
  for (const auto& c : conditions) {
    if (c.value("type", "") == type) return &c;
  }
  return nullptr;
}

std::string ConditionReason(const Json& pool, const std::string& type) {
  if (!pool.contains("status") || !pool["status"].is_object()) return "";
  const Json conditions = pool["status"].value("conditions", Json::array());
  const Json* c = FindCondition(conditions, type);
  return c && c->value("status", "") == "True" ? c->value("reason", "") : "";
}

int64_t AllocatableOf(const Json& node, const std::string& resource) {
  if (!node.contains("status") || !node["status"].contains("allocatable")) return 0;
  const Json& alloc = node["status"]["allocatable"];
  if (!alloc.contains(resource)) return 0;
  const Json& value = alloc[resource];
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_string()) {
    const std::string& text = value.get_ref<const std::string&>();
    if (!text.empty() && std::all_of(text.begin(), text.end(), ::isdigit)) return std::stoll(text);
  }
  return 0;
}

bool PodUsesResource(const Json& pod, const std::string& resource) {
  const Json& spec = pod.value("spec", Json::object());
  for (const char* list : {"containers", "initContainers"}) {
    if (!spec.contains(list)) continue;
    for (const auto& container : spec[list]) {
      const Json resources = container.value("resources", Json::object());
      for (const char* kind : {"limits", "requests"}) {
        if (resources.contains(kind) && resources[kind].contains(resource)) return true;
      }
    }
  }
  return false;
}

std::string Join(const std::vector<std::string>& items, size_t limit = 5) {
  std::string out;
  for (size_t i = 0; i < items.size() && i < limit; ++i) {
    if (!out.empty()) out += ", ";
    out += items[i];
  }
  if (items.size() > limit) out += " and " + std::to_string(items.size() - limit) + " more";
  return out;
}

}  // namespace

bool SelectorMatches(const std::map<std::string, std::string>& selector, const Json& labels) {
  for (const auto& [key, value] : selector) {
    if (!labels.is_object() || !labels.contains(key) || labels[key] != value) return false;
  }
  return true;
}

Json MakeCondition(const Json& old_conditions, const std::string& type, bool status,
                   const std::string& reason, const std::string& message, int64_t generation) {
  const std::string status_text = status ? "True" : "False";
  std::string transition = FormatTime(std::chrono::system_clock::now(), false);
  if (const Json* old = FindCondition(old_conditions, type);
      old && old->value("status", "") == status_text && old->contains("lastTransitionTime")) {
    transition = (*old)["lastTransitionTime"];
  }
  return {{"type", type},
          {"status", status_text},
          {"reason", reason},
          {"message", message},
          {"observedGeneration", generation},
          {"lastTransitionTime", transition}};
}

Reconciler::Reconciler(KubeClient& client, ReconcilerOptions options, Lister nodes, Lister pools,
                       EventRecorder* events)
    : client_(client),
      options_(std::move(options)),
      nodes_(std::move(nodes)),
      pools_(std::move(pools)),
      events_(events) {}

void Reconciler::Emit(const Json& pool, const std::string& type, const std::string& reason,
                      const std::string& message) {
  if (events_) events_->Record(pool, type, reason, message);
}

std::vector<Json> Reconciler::MatchingNodes(
    const std::map<std::string, std::string>& selector) const {
  std::vector<Json> matched;
  for (auto& node : nodes_()) {
    if (SelectorMatches(selector, node["metadata"].value("labels", Json::object()))) {
      matched.push_back(std::move(node));
    }
  }
  std::sort(matched.begin(), matched.end(), [](const Json& a, const Json& b) {
    return a["metadata"]["name"].get<std::string>() < b["metadata"]["name"].get<std::string>();
  });
  return matched;
}

Status Reconciler::WriteStatus(const Json& pool, Json status) {
  status["observedGeneration"] = pool["metadata"].value("generation", 1);
  if (pool.contains("status") && pool["status"] == status) return Status::Ok();
  Json apply = {{"apiVersion", "vfio-user.io/v1alpha1"},
                {"kind", "VfioUserDevicePool"},
                {"metadata", {{"name", pool["metadata"]["name"]}}},
                {"status", status}};
  auto result = client_.Apply(resources::kDevicePools, "", apply, kFieldManager, true, "status");
  if (!result) return result.error();
  return Status::Ok();
}

ReconcileOutcome Reconciler::Reconcile(const std::string& pool_name) {
  auto fetched = client_.Get(resources::kDevicePools, "", pool_name);
  if (!fetched) {
    if (IsNotFound(fetched.error())) return {};  // gone; owned objects follow their owner
    return {fetched.error(), std::nullopt};
  }
  Json pool = std::move(*fetched);
  if (pool["metadata"].contains("deletionTimestamp")) return Finalize(pool);

  if (!HasFinalizer(pool)) {
    Json finalizers = pool["metadata"].value("finalizers", Json::array());
    finalizers.push_back(kPoolFinalizer);
    auto patched = client_.MergePatch(
        resources::kDevicePools, "", pool_name,
        {{"metadata",
          {{"finalizers", finalizers}, {"resourceVersion", pool["metadata"]["resourceVersion"]}}}});
    if (!patched) return {patched.error(), std::nullopt};
    pool = std::move(*patched);
  }

  const int64_t generation = pool["metadata"].value("generation", 1);
  const Json old_conditions =
      pool.contains("status") ? pool["status"].value("conditions", Json::array()) : Json::array();
  auto spec = ParsePoolSpec(pool, options_.default_image);
  if (!spec) {
    const std::string& message = spec.error().message;
    if (ConditionReason(pool, "Degraded") != "InvalidSpec") {
      Emit(pool, "Warning", "InvalidSpec", message);
    }
    Json status = pool.value("status", Json::object());
    status["conditions"] = {
        MakeCondition(old_conditions, "Ready", false, "InvalidSpec", message, generation),
        MakeCondition(old_conditions, "Progressing", false, "InvalidSpec",
                      "nothing is rolled out for an invalid spec", generation),
        MakeCondition(old_conditions, "Degraded", true, "InvalidSpec", message, generation)};
    return {WriteStatus(pool, status), std::nullopt};
  }

  auto config_map = client_.Apply(resources::kConfigMaps, options_.ns,
                                  RenderConfigMap(pool, *spec, options_.ns), kFieldManager, true);
  Result<Json> daemon_set =
      config_map ? client_.Apply(resources::kDaemonSets, options_.ns,
                                 RenderDaemonSet(pool, *spec, options_.ns), kFieldManager, true)
                 : Result<Json>(config_map.error());
  if (!daemon_set) {
    const std::string message = daemon_set.error().message;
    if (ConditionReason(pool, "Degraded") != "ApplyFailed") {
      Emit(pool, "Warning", "ApplyFailed", message);
    }
    Json status = pool.value("status", Json::object());
    status["conditions"] = {
        MakeCondition(old_conditions, "Ready", false, "ApplyFailed", message, generation),
        MakeCondition(old_conditions, "Progressing", false, "ApplyFailed", message, generation),
        MakeCondition(old_conditions, "Degraded", true, "ApplyFailed", message, generation)};
    (void)WriteStatus(pool, status);  // best effort; the apply error is what gets retried
    return {daemon_set.error(), std::nullopt};
  }

  // What the DaemonSet controller reports.
  const Json ds_status = daemon_set->value("status", Json::object());
  const int64_t desired = ds_status.value("desiredNumberScheduled", 0);
  const int64_t ready = ds_status.value("numberReady", 0);
  const int64_t updated = ds_status.value("updatedNumberScheduled", 0);
  const bool ds_observed = ds_status.value("observedGeneration", int64_t{0}) >=
                           (*daemon_set)["metadata"].value("generation", int64_t{1});

  // What the nodes advertise.
  std::vector<Json> matched = MatchingNodes(spec->node_selector);
  int64_t allocatable = 0;
  Json node_list = Json::array();
  std::vector<std::string> short_nodes;
  std::set<std::string> matched_names;
  for (const auto& node : matched) {
    const std::string node_name = node["metadata"]["name"];
    matched_names.insert(node_name);
    int64_t count = AllocatableOf(node, spec->resource_name);
    allocatable += count;
    node_list.push_back({{"name", node_name}, {"allocatable", count}});
    if (count < spec->devices_per_node) short_nodes.push_back(node_name);
  }

  // One pool per node: an older pool selecting the same nodes wins.
  std::vector<std::string> overlaps;
  const auto created = pool["metadata"].value("creationTimestamp", "");
  for (const auto& other : pools_()) {
    const std::string other_name = other["metadata"]["name"];
    if (other_name == pool_name || other["metadata"].contains("deletionTimestamp")) continue;
    const auto other_created = other["metadata"].value("creationTimestamp", "");
    if (std::tie(other_created, other_name) > std::tie(created, pool_name)) continue;
    std::map<std::string, std::string> other_selector;
    if (other.contains("spec") && other["spec"].contains("nodeSelector")) {
      for (const auto& [k, v] : other["spec"]["nodeSelector"].items()) other_selector[k] = v;
    }
    for (const auto& node : matched) {
      if (SelectorMatches(other_selector, node["metadata"].value("labels", Json::object()))) {
        overlaps.push_back(other_name + " on " + node["metadata"]["name"].get<std::string>());
        break;
      }
    }
  }

  const int64_t expected = spec->devices_per_node * desired;
  const bool progressing = !ds_observed || updated < desired || ready < desired;
  const std::string counts = std::to_string(ready) + " of " + std::to_string(desired) +
                             " nodes ready, " + std::to_string(updated) + " updated";
  Json conditions = Json::array();
  if (!ds_observed) {
    conditions.push_back(MakeCondition(old_conditions, "Ready", false, "RollingOut",
                                       "waiting for the DaemonSet controller", generation));
  } else if (desired == 0) {
    conditions.push_back(MakeCondition(old_conditions, "Ready", false, "NoMatchingNodes",
                                       "no node runs the pool's DaemonSet", generation));
  } else if (progressing) {
    conditions.push_back(
        MakeCondition(old_conditions, "Ready", false, "RollingOut", counts, generation));
  } else if (allocatable < expected) {
    conditions.push_back(MakeCondition(
        old_conditions, "Ready", false, "DevicesNotAdvertised",
        std::to_string(allocatable) + " of " + std::to_string(expected) + " devices allocatable",
        generation));
  } else {
    conditions.push_back(MakeCondition(
        old_conditions, "Ready", true, "AllNodesReady",
        counts + ", " + std::to_string(allocatable) + " devices allocatable", generation));
  }
  conditions.push_back(progressing ? MakeCondition(old_conditions, "Progressing", true,
                                                   "RollingOut", counts, generation)
                                   : MakeCondition(old_conditions, "Progressing", false,
                                                   "RolloutComplete", counts, generation));
  std::string degraded_reason;
  std::string degraded_message;
  if (!overlaps.empty()) {
    degraded_reason = "OverlappingPools";
    degraded_message = "nodes are already served by older pools: " + Join(overlaps);
  } else if (!progressing && desired > 0 && !short_nodes.empty()) {
    degraded_reason = "DevicesMissing";
    degraded_message = "nodes advertising fewer than " + std::to_string(spec->devices_per_node) +
                       " devices: " + Join(short_nodes);
  }
  conditions.push_back(
      degraded_reason.empty()
          ? MakeCondition(old_conditions, "Degraded", false, "AsExpected", "", generation)
          : MakeCondition(old_conditions, "Degraded", true, degraded_reason, degraded_message,
                          generation));
  if (!degraded_reason.empty() && ConditionReason(pool, "Degraded") != degraded_reason) {
    Emit(pool, "Warning", degraded_reason, degraded_message);
  }
  if (conditions[0]["status"] == "True" && ConditionReason(pool, "Ready") != "AllNodesReady") {
    Emit(pool, "Normal", "Ready", conditions[0]["message"]);
  }

  Json status = {{"conditions", conditions},          {"resourceName", spec->resource_name},
                 {"desiredNodes", desired},           {"readyNodes", ready},
                 {"updatedNodes", updated},           {"expectedDevices", expected},
                 {"allocatableDevices", allocatable}, {"nodes", node_list}};
  return {WriteStatus(pool, status), std::nullopt};
}

ReconcileOutcome Reconciler::Finalize(const Json& pool) {
  if (!HasFinalizer(pool)) return {};
  const std::string name = pool["metadata"]["name"];
  const int64_t generation = pool["metadata"].value("generation", 1);
  const Json old_conditions =
      pool.contains("status") ? pool["status"].value("conditions", Json::array()) : Json::array();

  // Which pods still hold devices of this pool. The resource name and node selector come
  // from the spec as it is now; a spec too broken to parse falls back to the defaults.
  std::string resource = "vfio-user.io/" + pool["spec"].value("deviceClass", std::string());
  std::map<std::string, std::string> selector;
  if (auto spec =
          ParsePoolSpec(pool, options_.default_image.empty() ? "-" : options_.default_image)) {
    resource = spec->resource_name;
    selector = spec->node_selector;
  } else if (pool["spec"].contains("resourceName")) {
    resource = pool["spec"]["resourceName"];
  }
  std::set<std::string> node_names;
  for (const auto& node : MatchingNodes(selector)) node_names.insert(node["metadata"]["name"]);
  auto pods = client_.List(resources::kPods, "");
  if (!pods) return {pods.error(), std::nullopt};
  std::vector<std::string> consumers;
  for (const auto& pod : (*pods)["items"]) {
    const std::string phase = pod.value("status", Json::object()).value("phase", "");
    if (phase == "Succeeded" || phase == "Failed") continue;
    const std::string node = pod.value("spec", Json::object()).value("nodeName", "");
    if (!node_names.count(node) || !PodUsesResource(pod, resource)) continue;
    consumers.push_back(pod["metadata"].value("namespace", "") + "/" +
                        pod["metadata"].value("name", "") + " on " + node);
  }
  const bool force =
      pool["metadata"].value("annotations", Json::object()).value(kForceDeleteAnnotation, "") ==
      "true";
  if (!consumers.empty() && !force) {
    const std::string message = std::to_string(consumers.size()) + " pod(s) still use " + resource +
                                ": " + Join(consumers) + "; stop them or annotate the pool " +
                                kForceDeleteAnnotation + "=true";
    if (ConditionReason(pool, "Degraded") != "DeletionBlocked") {
      Emit(pool, "Warning", "DeletionBlocked", message);
    }
    Json status = pool.value("status", Json::object());
    status["conditions"] = {
        MakeCondition(old_conditions, "Ready", false, "Deleting", "the pool is being deleted",
                      generation),
        MakeCondition(old_conditions, "Progressing", false, "DeletionBlocked", message, generation),
        MakeCondition(old_conditions, "Degraded", true, "DeletionBlocked", message, generation)};
    Status written = WriteStatus(pool, status);
    if (!written.ok()) return {written, std::nullopt};
    return {Status::Ok(), options_.deletion_recheck};
  }
  if (!consumers.empty()) {
    Emit(
        pool, "Warning", "ForcedDeletion",
        "deleting the pool's servers although pods still use " + resource + ": " + Join(consumers));
  }
  for (const ResourceType* type : {&resources::kDaemonSets, &resources::kConfigMaps}) {
    Status deleted = client_.Delete(*type, options_.ns, PoolObjectName(name));
    if (!deleted.ok() && !IsNotFound(deleted.error())) return {deleted, std::nullopt};
  }
  Emit(pool, "Normal", "CleanedUp",
       "deleted DaemonSet and ConfigMap " + options_.ns + "/" + PoolObjectName(name));
  Json finalizers = Json::array();
  for (const auto& f : pool["metadata"]["finalizers"]) {
    if (f != kPoolFinalizer) finalizers.push_back(f);
  }
  auto patched = client_.MergePatch(
      resources::kDevicePools, "", name,
      {{"metadata",
        {{"finalizers", finalizers}, {"resourceVersion", pool["metadata"]["resourceVersion"]}}}});
  if (!patched && !IsNotFound(patched.error())) return {patched.error(), std::nullopt};
  return {};
}

}  // namespace vfu::op
