// The gRPC side of the sidecar: serves KubeVirt's hook API on a unix socket in the hook
// directory (/var/run/kubevirt-hooks/<name>.sock), where virt-launcher finds it.
//
//   kubevirt.hooks.info.Info/Info               name, hook points OnDefineDomain + Shutdown,
//                                               versions ["v1alpha3"]
//   kubevirt.hooks.v1alpha3.Callbacks/OnDefineDomain   the domain edit (domain_transform.h)
//   kubevirt.hooks.v1alpha3.Callbacks/PreCloudInitIso  returns its data unchanged
//   kubevirt.hooks.v1alpha3.Callbacks/Shutdown         asks the process to exit
//
// Shutdown does not stop the server from inside the call (the reply must still go out): it
// makes shutdown_requested_fd() readable, and the owner (main, or a test) then calls Stop().
#pragma once

#include <memory>
#include <string>

#include "deviceplugin/kubevirt_hook/vmi_devices.h"
#include "server/common/status.h"

namespace vfu::kubevirt_hook {

inline constexpr std::string_view kDefaultHookSocketDir = "/var/run/kubevirt-hooks";
inline constexpr std::string_view kDefaultHookName = "vfio-user";
inline constexpr std::string_view kHookApiVersion = "v1alpha3";

struct HookServerOptions {
  std::string socket_path;  // e.g. /var/run/kubevirt-hooks/vfio-user.sock
  std::string name = std::string(kDefaultHookName);
  std::string device_socket_root = std::string(kDefaultDeviceSocketRoot);
  // Which requested resources are vfio-user devices of which class (--resource-prefix,
  // --resource-name); must match the device plugin's.
  deviceplugin::ResourceNaming naming;
};

class HookServer {
 public:
  // Listens on options.socket_path (a stale socket file there is replaced) and serves.
  static Result<std::unique_ptr<HookServer>> Start(HookServerOptions options);
  ~HookServer();
  HookServer(const HookServer&) = delete;
  HookServer& operator=(const HookServer&) = delete;

  // An eventfd that becomes readable once virt-launcher has called Shutdown.
  int shutdown_requested_fd() const;
  bool shutdown_requested() const;
  const std::string& socket_path() const;

  // Stops serving and removes the socket file. Calls in flight, and clients that keep their
  // connection open (virt-launcher closes it after every call), get up to 5 s before they are
  // cut off. Idempotent; the destructor calls it.
  void Stop();

 private:
  struct Impl;
  explicit HookServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vfu::kubevirt_hook
