// Reconciles one VfioUserDevicePool: brings the cluster to what the pool asks for and writes
// back what is really there.
//   1. Finalizer vfio-user.io/pool-cleanup first, before anything is created for the pool.
//   2. ConfigMap and DaemonSet by server-side apply (fieldManager vfio-user-operator, force),
//      both owned by the pool (ownerReferences, controller=true).
//   3. Status through the /status subresource: observedGeneration, conditions Ready,
//      Progressing and Degraded (with reasons), desired/ready/updated node counts from the
//      DaemonSet, and the devices the matching nodes advertise (status.allocatable of the
//      pool's resource). Unchanged status is not written again.
//   4. Deletion: a pool whose devices are still allocated to pods ("connected VMs": pods not
//      yet Succeeded/Failed, on the pool's nodes, whose containers request the pool's
//      resource) is not torn down: Degraded=True reason DeletionBlocked and a Warning event
//      name the pods, and the pool is checked again later. The annotation
//      vfio-user.io/force-delete: "true" tears it down anyway (Warning event ForcedDeletion).
//      Then DaemonSet and ConfigMap are deleted and the finalizer removed.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "operator/kube/api_client.h"
#include "operator/kube/event_recorder.h"
#include "operator/pool/pool_spec.h"

namespace vfu::op {

struct ReconcilerOptions {
  std::string ns;  // where DaemonSets and ConfigMaps go
  std::string default_image;
  std::chrono::milliseconds deletion_recheck{std::chrono::seconds(30)};
};

struct ReconcileOutcome {
  Status status;
  std::optional<std::chrono::milliseconds> requeue_after;
};

class Reconciler {
 public:
  // Where the reconciler reads nodes and pools from: an informer cache in the operator, the
  // API directly in some tests.
  using Lister = std::function<std::vector<Json>()>;

  Reconciler(KubeClient& client, ReconcilerOptions options, Lister nodes, Lister pools,
             EventRecorder* events);

  ReconcileOutcome Reconcile(const std::string& pool_name);

 private:
  ReconcileOutcome Finalize(const Json& pool);
  Status WriteStatus(const Json& pool, Json status);
  std::vector<Json> MatchingNodes(const std::map<std::string, std::string>& selector) const;
  void Emit(const Json& pool, const std::string& type, const std::string& reason,
            const std::string& message);

  KubeClient& client_;
  ReconcilerOptions options_;
  Lister nodes_;
  Lister pools_;
  EventRecorder* events_;
};

// Kubernetes condition helper: keeps lastTransitionTime when the status did not change.
Json MakeCondition(const Json& old_conditions, const std::string& type, bool status,
                   const std::string& reason, const std::string& message, int64_t generation);
bool SelectorMatches(const std::map<std::string, std::string>& selector, const Json& labels);

}  // namespace vfu::op
