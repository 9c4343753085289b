// PluginServer: the kubelet DevicePlugin service (v1beta1) for one device class, on its own
// gRPC server and unix socket in the kubelet's plugin directory. One object serves one socket
// for its whole life: after a kubelet restart the registrar builds a fresh one on a fresh
// socket instead of reusing it.
//  - ListAndWatch sends the full list at once and again whenever the class's advertised list
//    changes (DeviceRegistry subscription); Stop(true) sends an empty list to every open stream
//    first, so the kubelet drops the devices at once on a clean shutdown.
//  - Allocate / GetPreferredAllocation / PreStartContainer apply the rules of allocation.h.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include <grpcpp/grpcpp.h>

#include "deviceplugin/plugin/device_registry.h"
#include "deviceplugin/plugin/metrics.h"
#include "deviceplugin/plugin/pod_resources.h"
#include "deviceplugin/v1beta1/api.grpc.pb.h"
#include "server/common/status.h"

namespace vfu::deviceplugin {

struct PluginServerOptions {
  std::string device_class;
  std::string resource_name;
  std::string socket_path;  // full path in the kubelet's plugin directory
  bool pre_start_required = false;
};

class PluginServer final : public v1beta1::DevicePlugin::Service {
 public:
  // `metrics` and `in_use` may be null.
  PluginServer(PluginServerOptions options, DeviceRegistry* registry, Metrics* metrics,
               InUseTracker* in_use);
  ~PluginServer() override;

  // Removes a stale file at the socket path and starts serving on it.
  Status Start();
  // Stops serving; with `send_empty_list` every open ListAndWatch stream gets an empty list
  // first. The socket file is removed if it is still ours.
  void Stop(bool send_empty_list);

  const PluginServerOptions& options() const { return options_; }
  // Inode of the socket this server created (to tell it apart from a replacement).
  ino_t socket_inode() const { return socket_inode_; }
  int open_streams() const;

  grpc::Status GetDevicePluginOptions(grpc::ServerContext* context, const v1beta1::Empty* request,
                                      v1beta1::DevicePluginOptions* response) override;
  grpc::Status ListAndWatch(grpc::ServerContext* context, const v1beta1::Empty* request,
                            grpc::ServerWriter<v1beta1::ListAndWatchResponse>* writer) override;
  grpc::Status GetPreferredAllocation(grpc::ServerContext* context,
                                      const v1beta1::PreferredAllocationRequest* request,
                                      v1beta1::PreferredAllocationResponse* response) override;
  grpc::Status Allocate(grpc::ServerContext* context, const v1beta1::AllocateRequest* request,
                        v1beta1::AllocateResponse* response) override;
  grpc::Status PreStartContainer(grpc::ServerContext* context,
                                 const v1beta1::PreStartContainerRequest* request,
                                 v1beta1::PreStartContainerResponse* response) override;

 private:
  PluginServerOptions options_;
  DeviceRegistry* registry_;
  Metrics* metrics_;
  InUseTracker* in_use_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<DeviceRegistry::Subscription> subscription_;
  ino_t socket_inode_ = 0;

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  uint64_t changes_ = 0;  // registry changes seen (wakes ListAndWatch)
  bool stopping_ = false;
  bool send_empty_on_stop_ = false;
  int open_streams_ = 0;
};

}  // namespace vfu::deviceplugin
