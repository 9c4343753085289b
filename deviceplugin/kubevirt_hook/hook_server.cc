#include "deviceplugin/kubevirt_hook/hook_server.h"

#include <grpcpp/grpcpp.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "deviceplugin/kubevirt_hook/domain_transform.h"
#include "info/api_info.grpc.pb.h"
#include "server/common/log.h"
#include "server/common/unique_fd.h"
#include "v1alpha3/api_v1alpha3.grpc.pb.h"

namespace vfu::kubevirt_hook {
namespace {

namespace info = ::kubevirt::hooks::info;
namespace v1alpha3 = ::kubevirt::hooks::v1alpha3;

// Hook point names as virt-launcher matches them (KubeVirt pkg/hooks/info/info.go).
constexpr const char* kOnDefineDomainHookPoint = "OnDefineDomain";
constexpr const char* kShutdownHookPoint = "Shutdown";

grpc::Status ToGrpc(const Error& error) {
  grpc::StatusCode code = grpc::StatusCode::INTERNAL;
  if (error.code == EINVAL) code = grpc::StatusCode::INVALID_ARGUMENT;
  if (error.code == ENOTSUP) code = grpc::StatusCode::FAILED_PRECONDITION;
  return grpc::Status(code, error.message);
}

class InfoService final : public info::Info::Service {
 public:
  explicit InfoService(std::string name) : name_(std::move(name)) {}

  grpc::Status Info(grpc::ServerContext*, const info::InfoParams*,
                    info::InfoResult* result) override {
    Log::Write(LogLevel::kInfo, "info requested", {{"hook", name_}});
    result->set_name(name_);
    result->add_versions(std::string(kHookApiVersion));
    for (const char* point : {kOnDefineDomainHookPoint, kShutdownHookPoint}) {
      info::HookPoint* hook_point = result->add_hookpoints();
      hook_point->set_name(point);
      hook_point->set_priority(0);
    }
    return grpc::Status::OK;
  }

 private:
  std::string name_;
};

class CallbacksService final : public v1alpha3::Callbacks::Service {
 public:
  CallbacksService(std::string device_socket_root, deviceplugin::ResourceNaming naming,
                   int shutdown_fd, std::atomic<bool>* requested)
      : device_socket_root_(std::move(device_socket_root)),
        naming_(std::move(naming)),
        shutdown_fd_(shutdown_fd),
        requested_(requested) {}

  grpc::Status OnDefineDomain(grpc::ServerContext*, const v1alpha3::OnDefineDomainParams* params,
                              v1alpha3::OnDefineDomainResult* result) override {
    auto plan = PlanDevicesFromVmi(params->vmi(), device_socket_root_, naming_);
    if (!plan) {
      Log::Write(LogLevel::kError, "cannot read the VMI", {{"error", plan.error().message}});
      return ToGrpc(plan.error());
    }
    auto domain = AttachDevicesToDomain(params->domainxml(), *plan);
    if (!domain) {
      Log::Write(LogLevel::kError, "cannot attach the devices",
                 {{"vmi", plan->vmi_name}, {"error", domain.error().message}});
      return ToGrpc(
          Error{domain.error().code, "VMI " + plan->vmi_name + ": " + domain.error().message});
    }
    std::string ids;
    for (const auto& device : plan->devices) ids += (ids.empty() ? "" : ",") + device.id;
    Log::Write(
        LogLevel::kInfo, "domain defined",
        {{"vmi", plan->vmi_name}, {"devices", std::to_string(plan->devices.size())}, {"ids", ids}});
    result->set_domainxml(std::move(*domain));
    return grpc::Status::OK;
  }

  // Not a subscribed hook point; answered anyway, with the data unchanged (virt-launcher parses
  // cloudInitData of the reply, so it must not come back empty).
  grpc::Status PreCloudInitIso(grpc::ServerContext*, const v1alpha3::PreCloudInitIsoParams* params,
                               v1alpha3::PreCloudInitIsoResult* result) override {
    result->set_cloudinitdata(params->cloudinitdata());
    result->set_cloudinitnocloudsource(params->cloudinitnocloudsource());
    return grpc::Status::OK;
  }

  grpc::Status Shutdown(grpc::ServerContext*, const v1alpha3::ShutdownParams*,
                        v1alpha3::ShutdownResult*) override {
    Log::Write(LogLevel::kInfo, "shutdown requested by virt-launcher");
    requested_->store(true);
    uint64_t one = 1;
    if (::write(shutdown_fd_, &one, sizeof(one)) != sizeof(one)) {
      return grpc::Status(grpc::StatusCode::INTERNAL, std::strerror(errno));
    }
    return grpc::Status::OK;
  }

 private:
  std::string device_socket_root_;
  deviceplugin::ResourceNaming naming_;
  int shutdown_fd_;
  std::atomic<bool>* requested_;
};

}  // namespace

struct HookServer::Impl {
  HookServerOptions options;
  UniqueFd shutdown_fd;
  std::atomic<bool> shutdown_requested{false};
  std::unique_ptr<InfoService> info;
  std::unique_ptr<CallbacksService> callbacks;
  std::unique_ptr<grpc::Server> server;
};

Result<std::unique_ptr<HookServer>> HookServer::Start(HookServerOptions options) {
  VFU_RETURN_IF_ERROR(options.naming.Validate());
  if (options.socket_path.empty() || options.socket_path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return MakeError(EINVAL, "socket path '" + options.socket_path + "' is empty or too long");
  }
  std::string dir = options.socket_path.substr(0, options.socket_path.rfind('/'));
  if (!dir.empty() && ::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return MakeError(errno, "cannot create " + dir + ": " + std::strerror(errno));
  }
  struct stat st {};
  if (::lstat(options.socket_path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return MakeError(EEXIST, options.socket_path + " exists and is not a socket");
    }
    ::unlink(options.socket_path.c_str());  // left over from an earlier run
  }

  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->shutdown_fd = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!impl->shutdown_fd) return MakeError(errno, std::string("eventfd: ") + std::strerror(errno));
  impl->info = std::make_unique<InfoService>(impl->options.name);
  impl->callbacks =
      std::make_unique<CallbacksService>(impl->options.device_socket_root, impl->options.naming,
                                         impl->shutdown_fd.get(), &impl->shutdown_requested);

  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + impl->options.socket_path, grpc::InsecureServerCredentials());
  builder.RegisterService(impl->info.get());
  builder.RegisterService(impl->callbacks.get());
  impl->server = builder.BuildAndStart();
  if (!impl->server) {
    return MakeError(EADDRINUSE, "cannot serve gRPC on unix:" + impl->options.socket_path);
  }
  return std::unique_ptr<HookServer>(new HookServer(std::move(impl)));
}

HookServer::HookServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HookServer::~HookServer() { Stop(); }

int HookServer::shutdown_requested_fd() const { return impl_->shutdown_fd.get(); }

bool HookServer::shutdown_requested() const { return impl_->shutdown_requested.load(); }

const std::string& HookServer::socket_path() const { return impl_->options.socket_path; }

void HookServer::Stop() {
  if (!impl_->server) return;
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  impl_->server->Wait();
  impl_->server.reset();
  ::unlink(impl_->options.socket_path.c_str());
}

}  // namespace vfu::kubevirt_hook
