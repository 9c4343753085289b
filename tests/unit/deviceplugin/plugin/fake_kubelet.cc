#include "tests/unit/deviceplugin/plugin/fake_kubelet.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

namespace vfu::testing {

namespace {
constexpr auto kRpcTimeout = std::chrono::seconds(10);

std::chrono::system_clock::time_point Deadline() {
  return std::chrono::system_clock::now() + kRpcTimeout;
}

// The kubelet's checks of a Register request (devicemanager: version supported, extended
// resource name, endpoint relative to the plugin directory).
std::string ValidateRegistration(const v1beta1::RegisterRequest& r) {
  if (r.version() != "v1beta1") return "unsupported version " + r.version();
  size_t slash = r.resource_name().find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == r.resource_name().size()) {
    return "resource name " + r.resource_name() + " is not an extended resource name";
  }
  std::string domain = r.resource_name().substr(0, slash);
  if (domain == "kubernetes.io" || domain.ends_with(".kubernetes.io")) {
    return "resource name " + r.resource_name() + " uses the kubernetes.io domain";
  }
  if (r.endpoint().empty() || r.endpoint().find('/') != std::string::npos) {
    return "endpoint " + r.endpoint() + " is not a file name in the plugin directory";
  }
  return {};
}
}  // namespace

bool WaitUntil(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

class FakeKubelet::RegistrationService final : public v1beta1::Registration::Service {
 public:
  explicit RegistrationService(FakeKubelet* owner) : owner_(owner) {}
  grpc::Status Register(grpc::ServerContext*, const v1beta1::RegisterRequest* request,
                        v1beta1::Empty*) override {
    return owner_->HandleRegister(*request);
  }

 private:
  FakeKubelet* owner_;
};

class FakeKubelet::PodResourcesService final : public v1::PodResourcesLister::Service {
 public:
  explicit PodResourcesService(FakeKubelet* owner) : owner_(owner) {}
  grpc::Status List(grpc::ServerContext*, const v1::ListPodResourcesRequest*,
                    v1::ListPodResourcesResponse* response) override {
    std::lock_guard lock(owner_->mutex_);
    *response = owner_->pod_resources_;
    return grpc::Status::OK;
  }

 private:
  FakeKubelet* owner_;
};

FakeKubelet::FakeKubelet(std::string plugin_dir, std::string pod_resources_socket)
    : plugin_dir_(std::move(plugin_dir)), pod_resources_socket_(std::move(pod_resources_socket)) {
  std::filesystem::create_directories(plugin_dir_);
}

FakeKubelet::~FakeKubelet() { Stop(); }

bool FakeKubelet::Start() {
  pod_resources_service_ = std::make_unique<PodResourcesService>(this);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + pod_resources_socket_, grpc::InsecureServerCredentials());
  builder.RegisterService(pod_resources_service_.get());
  pod_resources_server_ = builder.BuildAndStart();
  return pod_resources_server_ != nullptr && StartRegistration();
}

bool FakeKubelet::StartRegistration() {
  {
    std::lock_guard lock(mutex_);
    epoch_++;
  }
  registration_service_ = std::make_unique<RegistrationService>(this);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + plugin_dir_ + "/kubelet.sock",
                           grpc::InsecureServerCredentials());
  builder.RegisterService(registration_service_.get());
  registration_server_ = builder.BuildAndStart();
  return registration_server_ != nullptr;
}

void FakeKubelet::StopRegistration() {
  if (!registration_server_) return;
  registration_server_->Shutdown(Deadline());
  registration_server_->Wait();
  registration_server_.reset();
  registration_service_.reset();
}

void FakeKubelet::StopClients() {
  std::vector<std::unique_ptr<PluginClient>> all;
  {
    std::lock_guard lock(mutex_);
    for (auto& [resource, client] : clients_) all.push_back(std::move(client));
    for (auto& client : retired_) all.push_back(std::move(client));
    clients_.clear();
    retired_.clear();
    history_.clear();
    for (auto& client : all) client->watch_context->TryCancel();
  }
  for (auto& client : all) {
    if (client->thread.joinable()) client->thread.join();
  }
}

void FakeKubelet::Restart() {
  StopRegistration();
  StopClients();
  // The new kubelet cleans the plugin directory of sockets before serving kubelet.sock.
  for (const auto& entry : std::filesystem::directory_iterator(plugin_dir_)) {
    if (entry.is_socket()) std::filesystem::remove(entry.path());
  }
  StartRegistration();
}

void FakeKubelet::Stop() {
  StopRegistration();
  StopClients();
  if (pod_resources_server_) {
    pod_resources_server_->Shutdown(Deadline());
    pod_resources_server_->Wait();
    pod_resources_server_.reset();
  }
  pod_resources_service_.reset();
  ::unlink((plugin_dir_ + "/kubelet.sock").c_str());
  ::unlink(pod_resources_socket_.c_str());
}

grpc::Status FakeKubelet::HandleRegister(const v1beta1::RegisterRequest& request) {
  if (std::string error = ValidateRegistration(request); !error.empty()) {
    std::lock_guard lock(mutex_);
    rejections_.push_back(error);
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, error);
  }
  auto client = std::make_unique<PluginClient>();
  client->resource = request.resource_name();
  client->channel = grpc::CreateChannel("unix:" + plugin_dir_ + "/" + request.endpoint(),
                                        grpc::InsecureChannelCredentials());
  client->stub = v1beta1::DevicePlugin::NewStub(client->channel);
  {
    // The kubelet dials the endpoint (blocking, bounded) and asks for the options first.
    grpc::ClientContext context;
    context.set_deadline(Deadline());
    context.set_wait_for_ready(true);
    grpc::Status s =
        client->stub->GetDevicePluginOptions(&context, v1beta1::Empty(), &client->options);
    if (!s.ok()) {
      std::lock_guard lock(mutex_);
      rejections_.push_back("cannot reach plugin endpoint: " + s.error_message());
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, s.error_message());
    }
  }
  client->watch_context = std::make_unique<grpc::ClientContext>();
  PluginClient* raw = client.get();
  {
    std::lock_guard lock(mutex_);
    auto it = clients_.find(request.resource_name());
    if (it != clients_.end()) {
      it->second->watch_context->TryCancel();
      retired_.push_back(std::move(it->second));
    }
    clients_[request.resource_name()] = std::move(client);
    registrations_[request.resource_name()]++;
    last_request_[request.resource_name()] = request;
    history_[request.resource_name()].clear();
    raw->thread = std::thread([this, raw, epoch = epoch_] { WatchLoop(raw, epoch); });
  }
  cv_.notify_all();
  return grpc::Status::OK;
}

void FakeKubelet::WatchLoop(PluginClient* client, uint64_t epoch) {
  auto reader = client->stub->ListAndWatch(client->watch_context.get(), v1beta1::Empty());
  auto is_current = [&] {
    auto it = clients_.find(client->resource);
    return epoch == epoch_ && it != clients_.end() && it->second.get() == client;
  };
  {
    std::lock_guard lock(mutex_);
    if (is_current()) stream_open_[client->resource] = true;
  }
  cv_.notify_all();
  v1beta1::ListAndWatchResponse response;
  while (reader->Read(&response)) {
    std::lock_guard lock(mutex_);
    if (!is_current()) continue;
    history_[client->resource].emplace_back(response.devices().begin(), response.devices().end());
    cv_.notify_all();
  }
  reader->Finish();
  {
    std::lock_guard lock(mutex_);
    if (is_current()) stream_open_[client->resource] = false;
    stream_ends_[client->resource]++;
  }
  cv_.notify_all();
}

int FakeKubelet::registrations(const std::string& resource) const {
  std::lock_guard lock(mutex_);
  auto it = registrations_.find(resource);
  return it == registrations_.end() ? 0 : it->second;
}

v1beta1::RegisterRequest FakeKubelet::last_request(const std::string& resource) const {
  std::lock_guard lock(mutex_);
  auto it = last_request_.find(resource);
  return it == last_request_.end() ? v1beta1::RegisterRequest() : it->second;
}

std::vector<std::string> FakeKubelet::rejections() const {
  std::lock_guard lock(mutex_);
  return rejections_;
}

v1beta1::DevicePluginOptions FakeKubelet::options(const std::string& resource) const {
  std::lock_guard lock(mutex_);
  auto it = clients_.find(resource);
  return it == clients_.end() ? v1beta1::DevicePluginOptions() : it->second->options;
}

bool FakeKubelet::WaitForList(const std::string& resource,
                              const std::function<bool(const DeviceList&)>& pred,
                              std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return cv_.wait_for(lock, timeout, [&] {
    auto it = history_.find(resource);
    return it != history_.end() && !it->second.empty() && pred(it->second.back());
  });
}

DeviceList FakeKubelet::latest(const std::string& resource) const {
  std::lock_guard lock(mutex_);
  auto it = history_.find(resource);
  return it == history_.end() || it->second.empty() ? DeviceList() : it->second.back();
}

bool FakeKubelet::stream_open(const std::string& resource) const {
  std::lock_guard lock(mutex_);
  auto it = stream_open_.find(resource);
  return it != stream_open_.end() && it->second;
}

bool FakeKubelet::WaitForStreamEnd(const std::string& resource, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return cv_.wait_for(lock, timeout, [&] { return stream_ends_[resource] > 0; });
}

std::vector<DeviceList> FakeKubelet::history(const std::string& resource) const {
  std::lock_guard lock(mutex_);
  auto it = history_.find(resource);
  return it == history_.end() ? std::vector<DeviceList>() : it->second;
}

v1beta1::DevicePlugin::Stub* FakeKubelet::StubFor(const std::string& resource) {
  std::lock_guard lock(mutex_);
  auto it = clients_.find(resource);
  return it == clients_.end() ? nullptr : it->second->stub.get();
}

grpc::Status FakeKubelet::Allocate(const std::string& resource, const std::vector<std::string>& ids,
                                   v1beta1::ContainerAllocateResponse* out, const std::string& pod,
                                   const std::string& container) {
  v1beta1::DevicePlugin::Stub* stub = StubFor(resource);
  if (stub == nullptr) return grpc::Status(grpc::StatusCode::NOT_FOUND, "resource not registered");
  v1beta1::AllocateRequest request;
  v1beta1::ContainerAllocateRequest* c = request.add_container_requests();
  for (const std::string& id : ids) c->add_devicesids(id);
  v1beta1::AllocateResponse response;
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  grpc::Status status = stub->Allocate(&context, request, &response);
  if (!status.ok()) return status;
  // The kubelet uses container_responses[0] and treats anything else as a plugin error.
  if (response.container_responses_size() != 1) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        "plugin returned " + std::to_string(response.container_responses_size()) +
                            " container responses");
  }
  *out = response.container_responses(0);
  AddPodResources(pod, "default", container, resource, ids);
  return grpc::Status::OK;
}

grpc::Status FakeKubelet::GetPreferredAllocation(const std::string& resource,
                                                 const std::vector<std::string>& available,
                                                 const std::vector<std::string>& must_include,
                                                 int size, std::vector<std::string>* out) {
  v1beta1::DevicePlugin::Stub* stub = StubFor(resource);
  if (stub == nullptr) return grpc::Status(grpc::StatusCode::NOT_FOUND, "resource not registered");
  v1beta1::PreferredAllocationRequest request;
  v1beta1::ContainerPreferredAllocationRequest* c = request.add_container_requests();
  for (const std::string& id : available) c->add_available_deviceids(id);
  for (const std::string& id : must_include) c->add_must_include_deviceids(id);
  c->set_allocation_size(size);
  v1beta1::PreferredAllocationResponse response;
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  grpc::Status status = stub->GetPreferredAllocation(&context, request, &response);
  if (!status.ok()) return status;
  if (response.container_responses_size() != 1) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "expected one container response");
  }
  out->assign(response.container_responses(0).deviceids().begin(),
              response.container_responses(0).deviceids().end());
  return grpc::Status::OK;
}

grpc::Status FakeKubelet::PreStartContainer(const std::string& resource,
                                            const std::vector<std::string>& ids) {
  v1beta1::DevicePlugin::Stub* stub = StubFor(resource);
  if (stub == nullptr) return grpc::Status(grpc::StatusCode::NOT_FOUND, "resource not registered");
  v1beta1::PreStartContainerRequest request;
  for (const std::string& id : ids) request.add_devicesids(id);
  v1beta1::PreStartContainerResponse response;
  grpc::ClientContext context;
  // The kubelet bounds PreStartContainer by 30 s.
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return stub->PreStartContainer(&context, request, &response);
}

void FakeKubelet::AddPodResources(const std::string& pod, const std::string& ns,
                                  const std::string& container, const std::string& resource,
                                  const std::vector<std::string>& ids) {
  std::lock_guard lock(mutex_);
  v1::PodResources* p = pod_resources_.add_pod_resources();
  p->set_name(pod);
  p->set_namespace_(ns);
  v1::ContainerResources* c = p->add_containers();
  c->set_name(container);
  v1::ContainerDevices* d = c->add_devices();
  d->set_resource_name(resource);
  for (const std::string& id : ids) d->add_device_ids(id);
}

}  // namespace vfu::testing
