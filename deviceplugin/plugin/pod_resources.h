// Which devices are in use, and by whom. The kubelet is the source of truth: after every
// (re-)registration and periodically the plugin asks the kubelet's pod-resources API (List) and
// replaces what it knows, so a restarted plugin rebuilds its "in use" state from the kubelet
// instead of from private state that could be stale. Successful Allocate calls are added in
// between. Used for metrics (devices in use, which pod holds which device) and logs.
#pragma once

#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "deviceplugin/plugin/resource_names.h"
#include "server/common/status.h"

namespace vfu::deviceplugin {

struct DeviceUser {
  std::string pod;
  std::string namespace_;
  std::string container;
  bool operator==(const DeviceUser&) const = default;
};

// resource name -> device ID -> who holds it.
using InUseMap = std::map<std::string, std::map<std::string, DeviceUser>>;

// Lists the devices of the resources the plugin registers (naming.ResourceFor of some class)
// that the kubelet has assigned to containers, over the pod-resources socket.
Result<InUseMap> ListDevicesInUse(const std::string& pod_resources_socket,
                                  const ResourceNaming& naming, std::chrono::milliseconds timeout);

class InUseTracker {
 public:
  // Call before asking the kubelet; pass the token to Replace.
  uint64_t BeginRefresh() const;
  // From the kubelet: replaces everything known, except devices allocated after `token` was
  // taken (the kubelet's answer may predate them).
  void Replace(InUseMap in_use, uint64_t token);
  // A successful Allocate (the pod is not known yet at that point).
  void MarkAllocated(const std::string& resource, const std::vector<std::string>& ids);
  InUseMap Snapshot() const;
  size_t CountInUse(const std::string& resource) const;
  bool rebuilt_from_kubelet() const;

 private:
  mutable std::mutex mutex_;
  InUseMap in_use_;
  bool rebuilt_ = false;
  uint64_t marks_ = 0;
  // resource -> device -> mark number of the Allocate that added it.
  std::map<std::string, std::map<std::string, uint64_t>> recent_marks_;
};

}  // namespace vfu::deviceplugin
