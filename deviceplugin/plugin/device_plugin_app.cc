#include "deviceplugin/plugin/device_plugin_app.h"

#include "deviceplugin/plugin/allocation.h"
#include "server/common/log.h"

namespace vfu::deviceplugin {

DevicePluginApp::DevicePluginApp(PluginConfig config)
    : config_(std::move(config)),
      naming_(config_.resource_prefix, config_.resource_names),
      stats_(config_.control_socket),
      metrics_(&registry_, &in_use_, &stats_, naming_) {}

DevicePluginApp::~DevicePluginApp() { Stop(); }

Status DevicePluginApp::Start() {
  VFU_RETURN_IF_ERROR(naming_.Validate());
  if (!config_.metrics_address.empty()) {
    Result<std::unique_ptr<MetricsServer>> server =
        MetricsServer::Start(config_.metrics_address, metrics_);
    if (!server.ok()) return server.error();
    metrics_server_ = std::move(*server);
    Log::Write(
        LogLevel::kInfo, "metrics: serving /metrics",
        {{"address", config_.metrics_address}, {"port", std::to_string(metrics_server_->port())}});
  }
  started_ = true;
  refresh_thread_ = std::thread([this] { RefreshLoop(); });

  ControlWatcherOptions watch;
  watch.control_socket = config_.control_socket;
  watcher_ = std::make_unique<ControlWatcher>(watch, &registry_);

  RegistrarOptions reg;
  reg.kubelet_dir = config_.kubelet_dir;
  reg.naming = naming_;
  reg.pre_start_required = config_.pre_start_container;
  reg.socket_check_interval = config_.socket_check_interval;
  reg.max_backoff = config_.max_register_backoff;
  reg.on_registered = [this](const std::string&) { RefreshInUse(); };
  registrar_ = std::make_unique<KubeletRegistrar>(reg, &registry_, &metrics_, &in_use_);
  VFU_RETURN_IF_ERROR(registrar_->Start());
  watcher_->Start();
  return Status::Ok();
}

void DevicePluginApp::Stop() {
  if (!started_) return;
  started_ = false;
  // The kubelet first: it must see the empty list while the plugin still serves.
  if (registrar_) registrar_->Stop(/*send_empty_list=*/true);
  if (watcher_) watcher_->Stop();
  {
    std::lock_guard lock(refresh_mutex_);
    stopping_ = true;
  }
  refresh_cv_.notify_all();
  if (refresh_thread_.joinable()) refresh_thread_.join();
  metrics_server_.reset();
  Log::Write(LogLevel::kInfo, "device plugin stopped");
}

void DevicePluginApp::RefreshInUse() {
  {
    std::lock_guard lock(refresh_mutex_);
    refresh_requested_ = true;
  }
  refresh_cv_.notify_all();
}

void DevicePluginApp::RefreshLoop() {
  bool first = true;
  while (true) {
    {
      std::unique_lock lock(refresh_mutex_);
      refresh_cv_.wait_for(lock, config_.pod_resources_interval,
                           [this] { return stopping_ || refresh_requested_; });
      if (stopping_) return;
      refresh_requested_ = false;
    }
    uint64_t token = in_use_.BeginRefresh();
    Result<InUseMap> in_use =
        ListDevicesInUse(config_.pod_resources_socket, naming_, std::chrono::seconds(2));
    if (!in_use.ok()) {
      Log::Write(first ? LogLevel::kWarn : LogLevel::kDebug,
                 "pod-resources: cannot list devices in use", {{"error", in_use.error().message}});
      continue;
    }
    size_t count = 0;
    for (const auto& [resource, devices] : *in_use) count += devices.size();
    if (first) {
      Log::Write(LogLevel::kInfo, "pod-resources: rebuilt devices in use from the kubelet",
                 {{"devices", std::to_string(count)}});
    }
    first = false;
    in_use_.Replace(std::move(*in_use), token);
  }
}

}  // namespace vfu::deviceplugin
