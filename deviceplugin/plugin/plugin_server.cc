#include "deviceplugin/plugin/plugin_server.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <optional>

#include "deviceplugin/plugin/allocation.h"
#include "server/common/log.h"

namespace vfu::deviceplugin {

namespace {
std::string JoinIds(const google::protobuf::RepeatedPtrField<std::string>& ids) {
  std::string out;
  for (const std::string& id : ids) out += (out.empty() ? "" : ",") + id;
  return out;
}

struct FailureKind {
  grpc::StatusCode code;
  const char* result_label;
};

FailureKind ClassifyAllocationError(int code) {
  switch (code) {
    case ENOENT:
      return {grpc::StatusCode::NOT_FOUND, "unknown_device"};
    case EAGAIN:
      return {grpc::StatusCode::FAILED_PRECONDITION, "unhealthy_device"};
    default:
      return {grpc::StatusCode::INVALID_ARGUMENT, "invalid_request"};
  }
}
}  // namespace

PluginServer::PluginServer(PluginServerOptions options, DeviceRegistry* registry, Metrics* metrics,
                           InUseTracker* in_use)
    : options_(std::move(options)), registry_(registry), metrics_(metrics), in_use_(in_use) {}

PluginServer::~PluginServer() { Stop(false); }

Status PluginServer::Start() {
  subscription_ = registry_->Subscribe([this] {
    {
      std::lock_guard lock(mutex_);
      ++changes_;
    }
    cv_.notify_all();
  });
  // A socket left by an earlier instance (or a crash) would make bind fail.
  ::unlink(options_.socket_path.c_str());
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + options_.socket_path, grpc::InsecureServerCredentials());
  builder.RegisterService(this);
  server_ = builder.BuildAndStart();
  if (!server_) {
    subscription_.reset();
    return MakeError(EADDRINUSE, "cannot serve the device plugin on " + options_.socket_path);
  }
  struct stat st {};
  if (::stat(options_.socket_path.c_str(), &st) == 0) socket_inode_ = st.st_ino;
  Log::Write(LogLevel::kInfo, "plugin: serving",
             {{"resource", options_.resource_name}, {"socket", options_.socket_path}});
  return Status::Ok();
}

void PluginServer::Stop(bool send_empty_list) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || !server_) {
      stopping_ = true;
      return;
    }
    stopping_ = true;
    send_empty_on_stop_ = send_empty_list;
  }
  cv_.notify_all();
  // Streams see stopping_ at once; the deadline only bounds a kubelet that stopped reading.
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  server_->Wait();
  subscription_.reset();
  struct stat st {};
  if (::stat(options_.socket_path.c_str(), &st) == 0 && st.st_ino == socket_inode_) {
    ::unlink(options_.socket_path.c_str());
  }
  Log::Write(LogLevel::kInfo, "plugin: stopped",
             {{"resource", options_.resource_name},
              {"sent_empty_list", send_empty_list ? "true" : "false"}});
}

int PluginServer::open_streams() const {
  std::lock_guard lock(mutex_);
  return open_streams_;
}

grpc::Status PluginServer::GetDevicePluginOptions(grpc::ServerContext*, const v1beta1::Empty*,
                                                  v1beta1::DevicePluginOptions* response) {
  response->set_pre_start_required(options_.pre_start_required);
  response->set_get_preferred_allocation_available(true);
  return grpc::Status::OK;
}

grpc::Status PluginServer::ListAndWatch(grpc::ServerContext* context, const v1beta1::Empty*,
                                        grpc::ServerWriter<v1beta1::ListAndWatchResponse>* writer) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "plugin is stopping");
    ++open_streams_;
  }
  if (metrics_) metrics_->AddKubeletStreams(options_.resource_name, 1);
  Log::Write(LogLevel::kInfo, "plugin: kubelet opened ListAndWatch",
             {{"resource", options_.resource_name}});

  std::optional<std::string> last_sent;
  uint64_t seen = ~uint64_t{0};
  const char* ended_by = "kubelet closed the stream";
  while (true) {
    bool stop = false;
    bool send_empty = false;
    {
      std::unique_lock lock(mutex_);
      // The timeout only bounds how late a cancelled stream (kubelet gone) is noticed.
      cv_.wait_for(lock, std::chrono::milliseconds(200),
                   [&] { return stopping_ || changes_ != seen; });
      stop = stopping_;
      send_empty = send_empty_on_stop_;
      seen = changes_;
    }
    if (context->IsCancelled()) break;
    if (stop) {
      if (send_empty) writer->Write(v1beta1::ListAndWatchResponse());
      ended_by = send_empty ? "plugin stopped (sent an empty list)" : "plugin stopped";
      break;
    }
    v1beta1::ListAndWatchResponse list =
        BuildDeviceList(registry_->DevicesOfClass(options_.device_class));
    std::string bytes = list.SerializeAsString();
    if (last_sent == bytes) continue;
    if (!writer->Write(list)) break;
    last_sent = std::move(bytes);
    if (Log::Enabled(LogLevel::kDebug)) {
      std::string summary;
      for (const v1beta1::Device& d : list.devices()) {
        summary += (summary.empty() ? "" : ",") + d.id() + "=" + d.health();
      }
      Log::Write(LogLevel::kDebug, "plugin: sent device list",
                 {{"resource", options_.resource_name}, {"devices", summary}});
    }
  }
  {
    std::lock_guard lock(mutex_);
    --open_streams_;
  }
  if (metrics_) metrics_->AddKubeletStreams(options_.resource_name, -1);
  Log::Write(LogLevel::kInfo, "plugin: ListAndWatch ended",
             {{"resource", options_.resource_name}, {"reason", ended_by}});
  return grpc::Status::OK;
}

grpc::Status PluginServer::GetPreferredAllocation(
    grpc::ServerContext*, const v1beta1::PreferredAllocationRequest* request,
    v1beta1::PreferredAllocationResponse* response) {
  std::vector<AdvertisedDevice> devices = registry_->DevicesOfClass(options_.device_class);
  for (const v1beta1::ContainerPreferredAllocationRequest& c : request->container_requests()) {
    std::vector<std::string> available(c.available_deviceids().begin(),
                                       c.available_deviceids().end());
    std::vector<std::string> must(c.must_include_deviceids().begin(),
                                  c.must_include_deviceids().end());
    v1beta1::ContainerPreferredAllocationResponse* r = response->add_container_responses();
    for (std::string& id : PreferredAllocation(available, must, c.allocation_size(), devices)) {
      r->add_deviceids(std::move(id));
    }
  }
  return grpc::Status::OK;
}

grpc::Status PluginServer::Allocate(grpc::ServerContext*, const v1beta1::AllocateRequest* request,
                                    v1beta1::AllocateResponse* response) {
  auto started = std::chrono::steady_clock::now();
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  };
  if (request->container_requests_size() == 0) {
    if (metrics_) metrics_->RecordAllocation(options_.resource_name, "invalid_request", seconds());
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "Allocate without container request");
  }
  std::vector<AdvertisedDevice> devices = registry_->DevicesOfClass(options_.device_class);
  std::vector<std::string> allocated;
  for (const v1beta1::ContainerAllocateRequest& c : request->container_requests()) {
    std::vector<std::string> ids(c.devicesids().begin(), c.devicesids().end());
    Result<v1beta1::ContainerAllocateResponse> r =
        BuildContainerAllocation(options_.device_class, ids, devices);
    if (!r.ok()) {
      FailureKind kind = ClassifyAllocationError(r.error().code);
      if (metrics_)
        metrics_->RecordAllocation(options_.resource_name, kind.result_label, seconds());
      Log::Write(LogLevel::kWarn, "plugin: Allocate refused",
                 {{"resource", options_.resource_name},
                  {"devices", JoinIds(c.devicesids())},
                  {"error", r.error().message}});
      return grpc::Status(kind.code, options_.resource_name + ": " + r.error().message);
    }
    *response->add_container_responses() = std::move(*r);
    allocated.insert(allocated.end(), ids.begin(), ids.end());
  }
  if (in_use_) in_use_->MarkAllocated(options_.resource_name, allocated);
  if (metrics_) metrics_->RecordAllocation(options_.resource_name, "success", seconds());
  std::string joined;
  for (const std::string& id : allocated) joined += (joined.empty() ? "" : ",") + id;
  Log::Write(LogLevel::kInfo, "plugin: allocated",
             {{"resource", options_.resource_name}, {"devices", joined}});
  return grpc::Status::OK;
}

grpc::Status PluginServer::PreStartContainer(grpc::ServerContext*,
                                             const v1beta1::PreStartContainerRequest* request,
                                             v1beta1::PreStartContainerResponse*) {
  // Checks what can be checked without touching the device: a vfio-user socket must never be
  // probed by connecting (that could take the device's only client slot).
  for (const std::string& id : request->devicesids()) {
    std::optional<AdvertisedDevice> d = registry_->Find(options_.device_class, id);
    if (!d) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          options_.resource_name + ": unknown device '" + id + "'");
    }
    if (!d->healthy) {
      return grpc::Status(
          grpc::StatusCode::FAILED_PRECONDITION,
          options_.resource_name + ": device '" + id + "' is unhealthy: " + d->unhealthy_reason);
    }
    struct stat st {};
    if (::stat(d->device.socket_path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          options_.resource_name + ": device '" + id + "' has no socket at " +
                              d->device.socket_path);
    }
  }
  return grpc::Status::OK;
}

}  // namespace vfu::deviceplugin
