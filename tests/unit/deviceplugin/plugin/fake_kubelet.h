// FakeKubelet: a test double of the kubelet's device manager and pod-resources server, written
// after the kubelet's documented behaviour (kubernetes.io device-plugin docs and
// pkg/kubelet/cm/devicemanager):
//  - serves v1beta1.Registration on <plugin dir>/kubelet.sock; Register checks the version
//    ("v1beta1"), the resource name (domain-prefixed extended resource, not kubernetes.io) and
//    that the endpoint is a file name, then dials <plugin dir>/<endpoint>, calls
//    GetDevicePluginOptions and keeps a ListAndWatch stream open, treating every message as the
//    complete list. A second Register of a resource replaces its endpoint;
//  - Allocate sends exactly one ContainerAllocateRequest and requires exactly one container
//    response; successful allocations are recorded like the kubelet's checkpoint and reported
//    by PodResourcesLister.List on the pod-resources socket;
//  - Restart() is a kubelet restart: the old kubelet's connections die, the new one deletes the
//    sockets in the plugin directory, then serves a new kubelet.sock, knowing no devices until
//    plugins register again (the pod-resources data survives, as the checkpoint does).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "deviceplugin/v1beta1/api.grpc.pb.h"
#include "podresources/v1/api.grpc.pb.h"

namespace vfu::testing {

using DeviceList = std::vector<v1beta1::Device>;

// Polls `condition` until it holds or `timeout` passes (tests wait for conditions, not time).
bool WaitUntil(const std::function<bool()>& condition,
               std::chrono::milliseconds timeout = std::chrono::seconds(10));

class FakeKubelet {
 public:
  FakeKubelet(std::string plugin_dir, std::string pod_resources_socket);
  ~FakeKubelet();

  bool Start();
  void Restart();
  void Stop();

  // Register calls accepted for `resource` since construction.
  int registrations(const std::string& resource) const;
  // The last Register request for `resource` (empty if none) and every rejection message.
  v1beta1::RegisterRequest last_request(const std::string& resource) const;
  std::vector<std::string> rejections() const;
  v1beta1::DevicePluginOptions options(const std::string& resource) const;

  // Waits until the newest list received for `resource` (on the current kubelet) satisfies
  // `pred`; false after `timeout`.
  bool WaitForList(const std::string& resource, const std::function<bool(const DeviceList&)>& pred,
                   std::chrono::milliseconds timeout = std::chrono::seconds(10));
  DeviceList latest(const std::string& resource) const;
  // Whether the ListAndWatch stream of `resource` is open, and whether it ever ended.
  bool stream_open(const std::string& resource) const;
  bool WaitForStreamEnd(const std::string& resource, std::chrono::milliseconds timeout);
  // Lists received over the lifetime of the current stream of `resource`.
  std::vector<DeviceList> history(const std::string& resource) const;

  grpc::Status Allocate(const std::string& resource, const std::vector<std::string>& ids,
                        v1beta1::ContainerAllocateResponse* out, const std::string& pod = "vm-pod",
                        const std::string& container = "compute");
  grpc::Status GetPreferredAllocation(const std::string& resource,
                                      const std::vector<std::string>& available,
                                      const std::vector<std::string>& must_include, int size,
                                      std::vector<std::string>* out);
  grpc::Status PreStartContainer(const std::string& resource, const std::vector<std::string>& ids);

  // Adds an entry to what pod-resources List reports (as restored from the checkpoint).
  void AddPodResources(const std::string& pod, const std::string& ns, const std::string& container,
                       const std::string& resource, const std::vector<std::string>& ids);

 private:
  class RegistrationService;
  class PodResourcesService;
  struct PluginClient {
    std::string resource;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1beta1::DevicePlugin::Stub> stub;
    std::unique_ptr<grpc::ClientContext> watch_context;
    std::thread thread;
    v1beta1::DevicePluginOptions options;
  };

  grpc::Status HandleRegister(const v1beta1::RegisterRequest& request);
  void WatchLoop(PluginClient* client, uint64_t epoch);
  void StopClients();
  bool StartRegistration();
  void StopRegistration();
  v1beta1::DevicePlugin::Stub* StubFor(const std::string& resource);

  std::string plugin_dir_;
  std::string pod_resources_socket_;
  std::unique_ptr<RegistrationService> registration_service_;
  std::unique_ptr<grpc::Server> registration_server_;
  std::unique_ptr<PodResourcesService> pod_resources_service_;
  std::unique_ptr<grpc::Server> pod_resources_server_;

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  uint64_t epoch_ = 0;  // increases with every kubelet (re)start
  std::map<std::string, std::unique_ptr<PluginClient>> clients_;
  std::vector<std::unique_ptr<PluginClient>> retired_;  // replaced clients, joined on Stop
  std::map<std::string, int> registrations_;
  std::map<std::string, v1beta1::RegisterRequest> last_request_;
  std::vector<std::string> rejections_;
  std::map<std::string, std::vector<DeviceList>> history_;
  std::map<std::string, bool> stream_open_;
  std::map<std::string, int> stream_ends_;
  v1::ListPodResourcesResponse pod_resources_;
};

}  // namespace vfu::testing
