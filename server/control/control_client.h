// ControlClient: a blocking client of the control API for tools and tests (vfio-user-ctl list,
// stats). Each call has a deadline; errors come back as Status with the gRPC message.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "control.grpc.pb.h"
#include "server/common/status.h"

namespace vfu::control {

class ControlClient {
 public:
  explicit ControlClient(const std::string& socket_path,
                         std::chrono::milliseconds deadline = std::chrono::seconds(5));

  Result<vfiouser::control::v1alpha1::DeviceList> ListDevices();
  Result<vfiouser::control::v1alpha1::StatsResponse> GetStats(const std::string& id = "");
  // Calls `on_list` for every list the server sends until it returns false, the stream ends,
  // or `timeout` passes.
  Status Watch(const std::function<bool(const vfiouser::control::v1alpha1::DeviceList&)>& on_list,
               std::chrono::milliseconds timeout);

 private:
  std::string socket_path_;
  std::chrono::milliseconds deadline_;
  std::unique_ptr<vfiouser::control::v1alpha1::Control::Stub> stub_;
};

}  // namespace vfu::control
