#include "server/control/control_client.h"

#include <grpcpp/grpcpp.h>

namespace vfu::control {

namespace pb = ::vfiouser::control::v1alpha1;

namespace {

Error FromGrpc(const grpc::Status& s, const std::string& socket_path) {
  int code = s.error_code() == grpc::StatusCode::NOT_FOUND           ? ENOENT
             : s.error_code() == grpc::StatusCode::UNAVAILABLE       ? ECONNREFUSED
             : s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ? ETIMEDOUT
                                                                     : EIO;
  return Error{code, "control socket " + socket_path + ": " + s.error_message()};
}

}  // namespace

ControlClient::ControlClient(const std::string& socket_path, std::chrono::milliseconds deadline)
    : socket_path_(socket_path),
      deadline_(deadline),
      stub_(pb::Control::NewStub(
          grpc::CreateChannel("unix:" + socket_path, grpc::InsecureChannelCredentials()))) {}

Result<pb::DeviceList> ControlClient::ListDevices() {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + deadline_);
  pb::DeviceList list;
  grpc::Status s = stub_->ListDevices(&context, pb::ListDevicesRequest(), &list);
  if (!s.ok()) return FromGrpc(s, socket_path_);
  return list;
}

Result<pb::StatsResponse> ControlClient::GetStats(const std::string& id) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + deadline_);
  pb::GetStatsRequest request;
  request.set_id(id);
  pb::StatsResponse response;
  grpc::Status s = stub_->GetStats(&context, request, &response);
  if (!s.ok()) return FromGrpc(s, socket_path_);
  return response;
}

Status ControlClient::Watch(const std::function<bool(const pb::DeviceList&)>& on_list,
                            std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  auto reader = stub_->WatchDevices(&context, pb::WatchDevicesRequest());
  pb::DeviceList list;
  while (reader->Read(&list)) {
    if (!on_list(list)) {
      context.TryCancel();
      break;
    }
  }
  grpc::Status s = reader->Finish();
  if (!s.ok() && s.error_code() != grpc::StatusCode::CANCELLED &&
      s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
    return FromGrpc(s, socket_path_);
  }
  return Status::Ok();
}

}  // namespace vfu::control
