#include "deviceplugin/plugin/control_client.h"

#include <algorithm>

#include "server/common/log.h"

namespace vfu::deviceplugin {

namespace ctl = vfiouser::control::v1alpha1;

ServerDevice FromControlDevice(const ctl::Device& d) {
  ServerDevice s;
  s.id = d.id();
  s.device_class = d.device_class();
  s.socket_path = d.socket_path();
  s.server_healthy = d.health() == ctl::HEALTHY;
  s.health_reason = d.health_reason();
  if (d.health() == ctl::HEALTH_UNSPECIFIED && s.health_reason.empty()) {
    s.health_reason = "health not reported";
  }
  s.removal_pending = d.removal_pending();
  s.client_connected = d.client_connected();
  s.poll_thread = d.poll_thread();
  s.numa_node = d.numa_node();
  return s;
}

namespace {
std::shared_ptr<grpc::Channel> NewControlChannel(const std::string& socket) {
  grpc::ChannelArguments args;
  // A fresh channel per attempt already avoids gRPC's reconnect backoff; keep it short anyway.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  // A server that hangs with its socket still open (stopped, deadlocked) never ends the watch
  // stream by itself: HTTP/2 keepalive pings every 500 ms, unanswered for 500 ms, break it, so
  // its devices turn Unhealthy within about a second. The server permits these pings.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 500);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 500);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // The watch stream's client sends no data after its request, and gRPC's keepalive guide
  // documents a 5-minute minimum between pings sent without data (this argument's default):
  // keep it at the keepalive period so that no ping (a BDP probe, say) can delay the next
  // keepalive ping by minutes.
  args.SetInt(GRPC_ARG_HTTP2_MIN_SENT_PING_INTERVAL_WITHOUT_DATA_MS, 500);
  return grpc::CreateCustomChannel("unix:" + socket, grpc::InsecureChannelCredentials(), args);
}
}  // namespace

ControlWatcher::ControlWatcher(ControlWatcherOptions options, DeviceRegistry* registry)
    : options_(std::move(options)), registry_(registry) {}

ControlWatcher::~ControlWatcher() { Stop(); }

void ControlWatcher::Start() {
  std::lock_guard lock(mutex_);
  stopping_ = false;
  thread_ = std::thread([this] { Run(); });
}

void ControlWatcher::Stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    if (active_ != nullptr) active_->TryCancel();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::string ControlWatcher::WatchOnce(bool* received_any) {
  auto stub = ctl::Control::NewStub(NewControlChannel(options_.control_socket));
  grpc::ClientContext context;
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return "stopping";
    active_ = &context;
  }
  std::unique_ptr<grpc::ClientReader<ctl::DeviceList>> reader =
      stub->WatchDevices(&context, ctl::WatchDevicesRequest());
  ctl::DeviceList list;
  while (reader->Read(&list)) {
    if (!*received_any) {
      Log::Write(LogLevel::kInfo, "control: watching the vfio-user-server",
                 {{"socket", options_.control_socket},
                  {"server_version", list.server_version()},
                  {"devices", std::to_string(list.devices_size())}});
    }
    *received_any = true;
    std::vector<ServerDevice> devices;
    devices.reserve(list.devices_size());
    for (const ctl::Device& d : list.devices()) devices.push_back(FromControlDevice(d));
    registry_->ApplySnapshot(std::move(devices), list.server_version());
  }
  grpc::Status status = reader->Finish();
  {
    std::lock_guard lock(mutex_);
    active_ = nullptr;
  }
  if (status.ok()) return "the server ended the watch stream";
  return status.error_message().empty() ? "gRPC status " + std::to_string(status.error_code())
                                        : status.error_message();
}

void ControlWatcher::Run() {
  std::chrono::milliseconds backoff = options_.initial_backoff;
  bool logged_down = false;
  while (true) {
    bool received = false;
    std::string why = WatchOnce(&received);
    {
      std::unique_lock lock(mutex_);
      if (stopping_) return;
    }
    registry_->MarkServerUnreachable(why);
    if (received) {
      backoff = options_.initial_backoff;
      logged_down = false;
    }
    if (!logged_down) {
      Log::Write(LogLevel::kWarn, "control: vfio-user-server unreachable, devices are Unhealthy",
                 {{"socket", options_.control_socket}, {"error", why}});
      logged_down = true;
    }
    std::unique_lock lock(mutex_);
    if (cv_.wait_for(lock, backoff, [this] { return stopping_; })) return;
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

ControlStatsClient::ControlStatsClient(std::string control_socket,
                                       std::chrono::milliseconds timeout)
    : control_socket_(std::move(control_socket)), timeout_(timeout) {}

Result<ctl::StatsResponse> ControlStatsClient::GetStats() {
  auto stub = ctl::Control::NewStub(NewControlChannel(control_socket_));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout_);
  ctl::StatsResponse response;
  grpc::Status status = stub->GetStats(&context, ctl::GetStatsRequest(), &response);
  if (!status.ok()) return MakeError(EIO, "GetStats: " + status.error_message());
  return response;
}

}  // namespace vfu::deviceplugin
