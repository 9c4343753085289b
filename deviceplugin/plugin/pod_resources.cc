#include "deviceplugin/plugin/pod_resources.h"

#include <grpcpp/grpcpp.h>

#include "podresources/v1/api.grpc.pb.h"

namespace vfu::deviceplugin {

Result<InUseMap> ListDevicesInUse(const std::string& pod_resources_socket,
                                  const ResourceNaming& naming, std::chrono::milliseconds timeout) {
  auto channel =
      grpc::CreateChannel("unix:" + pod_resources_socket, grpc::InsecureChannelCredentials());
  auto stub = v1::PodResourcesLister::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  v1::ListPodResourcesResponse response;
  grpc::Status status = stub->List(&context, v1::ListPodResourcesRequest(), &response);
  if (!status.ok()) {
    return MakeError(
        EIO, "pod-resources List on " + pod_resources_socket + ": " + status.error_message());
  }
  InUseMap in_use;
  for (const v1::PodResources& pod : response.pod_resources()) {
    for (const v1::ContainerResources& container : pod.containers()) {
      for (const v1::ContainerDevices& devices : container.devices()) {
        std::optional<std::string> device_class = naming.ClassFor(devices.resource_name());
        // Only what this plugin registers (not the default name of an overridden class).
        if (!device_class || naming.ResourceFor(*device_class) != devices.resource_name()) {
          continue;
        }
        for (const std::string& id : devices.device_ids()) {
          in_use[devices.resource_name()][id] =
              DeviceUser{pod.name(), pod.namespace_(), container.name()};
        }
      }
    }
  }
  return in_use;
}

uint64_t InUseTracker::BeginRefresh() const {
  std::lock_guard lock(mutex_);
  return marks_;
}

void InUseTracker::Replace(InUseMap in_use, uint64_t token) {
  std::lock_guard lock(mutex_);
  for (auto& [resource, marks] : recent_marks_) {
    for (auto it = marks.begin(); it != marks.end();) {
      if (it->second > token) {
        in_use[resource].try_emplace(it->first);
        ++it;
      } else {
        it = marks.erase(it);  // the kubelet's answer covers it from now on
      }
    }
  }
  in_use_ = std::move(in_use);
  rebuilt_ = true;
}

void InUseTracker::MarkAllocated(const std::string& resource, const std::vector<std::string>& ids) {
  std::lock_guard lock(mutex_);
  ++marks_;
  for (const std::string& id : ids) {
    in_use_[resource].try_emplace(id);
    recent_marks_[resource][id] = marks_;
  }
}

InUseMap InUseTracker::Snapshot() const {
  std::lock_guard lock(mutex_);
  return in_use_;
}

size_t InUseTracker::CountInUse(const std::string& resource) const {
  std::lock_guard lock(mutex_);
  auto it = in_use_.find(resource);
  return it == in_use_.end() ? 0 : it->second.size();
}

bool InUseTracker::rebuilt_from_kubelet() const {
  std::lock_guard lock(mutex_);
  return rebuilt_;
}

}  // namespace vfu::deviceplugin
