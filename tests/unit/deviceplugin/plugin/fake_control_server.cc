#include "tests/unit/deviceplugin/plugin/fake_control_server.h"

#include <unistd.h>

#include <chrono>

namespace vfu::testing {

ctl::Device MakeControlDevice(const std::string& id, const std::string& device_class,
                              const std::string& socket_root, int32_t numa_node,
                              uint32_t poll_thread) {
  ctl::Device d;
  d.set_id(id);
  d.set_device_class(device_class);
  d.set_socket_path(socket_root + "/" + id + "/vfio-user.sock");
  d.set_health(ctl::HEALTHY);
  d.set_numa_node(numa_node);
  d.set_poll_thread(poll_thread);
  d.set_backend("ram");
  return d;
}

class FakeControlServer::Service final : public ctl::Control::Service {
 public:
  explicit Service(FakeControlServer* owner) : owner_(owner) {}

  grpc::Status ListDevices(grpc::ServerContext*, const ctl::ListDevicesRequest*,
                           ctl::DeviceList* response) override {
    std::lock_guard lock(owner_->mutex_);
    *response = owner_->list_;
    return grpc::Status::OK;
  }

  grpc::Status WatchDevices(grpc::ServerContext* context, const ctl::WatchDevicesRequest*,
                            grpc::ServerWriter<ctl::DeviceList>* writer) override {
    uint64_t sent = ~uint64_t{0};
    std::unique_lock lock(owner_->mutex_);
    owner_->watch_streams_++;
    while (!owner_->stopping_ && !context->IsCancelled()) {
      if (owner_->list_.generation() != sent) {
        ctl::DeviceList copy = owner_->list_;
        sent = copy.generation();
        lock.unlock();
        bool ok = writer->Write(copy);
        lock.lock();
        if (!ok) break;
        continue;
      }
      owner_->cv_.wait_for(lock, std::chrono::milliseconds(50));
    }
    owner_->watch_streams_--;
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server shutting down");
  }

  grpc::Status GetStats(grpc::ServerContext*, const ctl::GetStatsRequest*,
                        ctl::StatsResponse* response) override {
    std::lock_guard lock(owner_->mutex_);
    *response = owner_->stats_;
    return grpc::Status::OK;
  }

 private:
  FakeControlServer* owner_;
};

FakeControlServer::FakeControlServer(std::string socket_path)
    : socket_path_(std::move(socket_path)) {
  list_.set_server_version("fake-0.1.0");
  list_.set_generation(1);
}

FakeControlServer::~FakeControlServer() { Stop(); }

bool FakeControlServer::Start() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = false;
  }
  ::unlink(socket_path_.c_str());
  service_ = std::make_unique<Service>(this);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + socket_path_, grpc::InsecureServerCredentials());
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  return server_ != nullptr;
}

void FakeControlServer::Stop() {
  if (!server_) return;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_->Wait();
  server_.reset();
  service_.reset();
  ::unlink(socket_path_.c_str());
}

void FakeControlServer::SetDevices(std::vector<ctl::Device> devices) {
  {
    std::lock_guard lock(mutex_);
    list_.clear_devices();
    for (ctl::Device& d : devices) *list_.add_devices() = std::move(d);
    list_.set_generation(list_.generation() + 1);
  }
  cv_.notify_all();
}

void FakeControlServer::SetHealth(const std::string& id, bool healthy, const std::string& reason) {
  {
    std::lock_guard lock(mutex_);
    for (ctl::Device& d : *list_.mutable_devices()) {
      if (d.id() != id) continue;
      d.set_health(healthy ? ctl::HEALTHY : ctl::UNHEALTHY);
      d.set_health_reason(reason);
      d.set_generation(d.generation() + 1);
    }
    list_.set_generation(list_.generation() + 1);
  }
  cv_.notify_all();
}

void FakeControlServer::SetStats(ctl::StatsResponse stats) {
  std::lock_guard lock(mutex_);
  stats_ = std::move(stats);
}

int FakeControlServer::watch_streams() const {
  std::lock_guard lock(mutex_);
  return watch_streams_;
}

}  // namespace vfu::testing
