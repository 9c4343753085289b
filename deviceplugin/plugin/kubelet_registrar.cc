#include "deviceplugin/plugin/kubelet_registrar.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <grpcpp/grpcpp.h>

#include "deviceplugin/plugin/allocation.h"
#include "deviceplugin/v1beta1/api.grpc.pb.h"
#include "server/common/log.h"

namespace vfu::deviceplugin {

using Clock = std::chrono::steady_clock;

KubeletRegistrar::KubeletRegistrar(RegistrarOptions options, DeviceRegistry* registry,
                                   Metrics* metrics, InUseTracker* in_use)
    : options_(std::move(options)), registry_(registry), metrics_(metrics), in_use_(in_use) {}

KubeletRegistrar::~KubeletRegistrar() { Stop(false); }

Status KubeletRegistrar::Start() {
  inotify_fd_.Reset(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!inotify_fd_) return MakeError(errno, std::string("inotify_init1: ") + std::strerror(errno));
  wake_fd_.Reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake_fd_) return MakeError(errno, std::string("eventfd: ") + std::strerror(errno));
  if (!WatchDirectory()) {
    Log::Write(LogLevel::kWarn, "registrar: kubelet plugin directory not there yet, will retry",
               {{"dir", options_.kubelet_dir}});
  }
  subscription_ = registry_->Subscribe([this] { Wake(); });
  thread_ = std::thread([this] { Run(); });
  return Status::Ok();
}

void KubeletRegistrar::Stop(bool send_empty_list) {
  {
    std::lock_guard lock(state_mutex_);
    stopping_ = true;
  }
  subscription_.reset();
  if (thread_.joinable()) {
    Wake();
    thread_.join();
  }
  for (auto& [device_class, p] : plugins_) {
    if (p.server) p.server->Stop(send_empty_list);
    p.server.reset();
    p.registered = false;
    PublishState(p, false);
  }
}

bool KubeletRegistrar::registered(const std::string& device_class) const {
  std::lock_guard lock(state_mutex_);
  auto it = registered_.find(device_class);
  return it != registered_.end() && it->second;
}

int KubeletRegistrar::registrations(const std::string& device_class) const {
  std::lock_guard lock(state_mutex_);
  auto it = registration_count_.find(device_class);
  return it == registration_count_.end() ? 0 : it->second;
}

void KubeletRegistrar::Wake() {
  uint64_t one = 1;
  if (wake_fd_) (void)!::write(wake_fd_.get(), &one, sizeof(one));
}

void KubeletRegistrar::PublishState(const ClassPlugin& p, bool just_registered) {
  {
    std::lock_guard lock(state_mutex_);
    registered_[p.device_class] = p.registered;
    if (just_registered) registration_count_[p.device_class]++;
  }
  if (metrics_) metrics_->SetKubeletRegistered(p.resource, p.registered);
}

bool KubeletRegistrar::WatchDirectory() {
  watch_descriptor_ = ::inotify_add_watch(
      inotify_fd_.get(), options_.kubelet_dir.c_str(),
      IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF);
  return watch_descriptor_ >= 0;
}

void KubeletRegistrar::AddNewClasses() {
  for (const std::string& device_class : registry_->Classes()) {
    if (plugins_.count(device_class)) continue;
    ClassPlugin p;
    p.device_class = device_class;
    p.resource = options_.naming.ResourceFor(device_class);
    p.socket_path = options_.kubelet_dir + "/" + PluginSocketName(device_class);
    p.next_attempt = Clock::now();
    if (Status s = ValidateDeviceClass(device_class); !s.ok()) {
      Log::Write(LogLevel::kError, "registrar: device class cannot be a resource, not served",
                 {{"class", device_class}, {"error", s.message()}});
      p.next_attempt = Clock::time_point::max();
    }
    // Possible when a --resource-name override equals <prefix>/<another class>.
    for (const auto& [other_class, other] : plugins_) {
      if (other.resource == p.resource && other.next_attempt != Clock::time_point::max()) {
        Log::Write(LogLevel::kError,
                   "registrar: another device class already has this resource name, not served",
                   {{"class", device_class}, {"resource", p.resource}, {"other", other_class}});
        p.next_attempt = Clock::time_point::max();
      }
    }
    plugins_.emplace(device_class, std::move(p));
  }
}

KubeletSocketId KubeletRegistrar::CurrentKubeletSocket() const {
  struct stat st {};
  std::string path = options_.kubelet_dir + "/" + kKubeletSocketName;
  if (::stat(path.c_str(), &st) != 0) return {};
  return {static_cast<uint64_t>(st.st_ino),
          static_cast<int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 + st.st_ctim.tv_nsec};
}

void KubeletRegistrar::RestartAll(const char* why, const KubeletSocketId* current) {
  bool logged = false;
  for (auto& [device_class, p] : plugins_) {
    if (p.next_attempt == Clock::time_point::max()) continue;
    if (current != nullptr && p.registered && p.registered_with == *current) continue;
    if (!logged) {
      Log::Write(LogLevel::kInfo, "registrar: re-registering with the kubelet", {{"reason", why}});
      logged = true;
    }
    p.needs_fresh_server = true;
    p.registered = false;
    p.failures = 0;
    p.next_attempt = Clock::now();
    PublishState(p, false);
  }
}

void KubeletRegistrar::DrainInotify() {
  alignas(struct inotify_event) char buf[4096];
  while (true) {
    ssize_t n = ::read(inotify_fd_.get(), buf, sizeof(buf));
    if (n <= 0) return;
    for (ssize_t off = 0; off < n;) {
      auto* ev = reinterpret_cast<const struct inotify_event*>(buf + off);
      off += static_cast<ssize_t>(sizeof(struct inotify_event) + ev->len);
      std::string name = ev->len ? std::string(ev->name) : std::string();
      if (ev->mask & IN_Q_OVERFLOW) {
        RestartAll("inotify queue overflow");
      } else if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) {
        watch_descriptor_ = -1;
        RestartAll("kubelet plugin directory replaced");
      } else if ((ev->mask & (IN_CREATE | IN_MOVED_TO)) && name == kKubeletSocketName) {
        KubeletSocketId current = CurrentKubeletSocket();
        RestartAll("kubelet.sock created (kubelet restarted)", &current);
      }
      // Deletions of our own sockets are picked up by CheckOwnSocket on this pass.
    }
  }
}

void KubeletRegistrar::CheckOwnSocket(ClassPlugin& p) {
  if (p.needs_fresh_server || !p.server) return;
  struct stat st {};
  bool intact = ::stat(p.socket_path.c_str(), &st) == 0 && st.st_ino == p.server->socket_inode();
  if (intact) return;
  Log::Write(LogLevel::kInfo, "registrar: own socket deleted or replaced, re-registering",
             {{"resource", p.resource}, {"socket", p.socket_path}});
  p.needs_fresh_server = true;
  p.registered = false;
  p.failures = 0;
  p.next_attempt = Clock::now();
  PublishState(p, false);
}

Status KubeletRegistrar::Register(const ClassPlugin& p) {
  auto channel = grpc::CreateChannel("unix:" + options_.kubelet_dir + "/" + kKubeletSocketName,
                                     grpc::InsecureChannelCredentials());
  auto stub = v1beta1::Registration::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + options_.register_timeout);
  v1beta1::RegisterRequest request;
  request.set_version(kDevicePluginApiVersion);
  request.set_endpoint(PluginSocketName(p.device_class));
  request.set_resource_name(p.resource);
  request.mutable_options()->set_pre_start_required(options_.pre_start_required);
  request.mutable_options()->set_get_preferred_allocation_available(true);
  v1beta1::Empty reply;
  grpc::Status status = stub->Register(&context, request, &reply);
  if (!status.ok()) return MakeError(EIO, status.error_message());
  return Status::Ok();
}

void KubeletRegistrar::Advance(ClassPlugin& p) {
  if (p.registered || Clock::now() < p.next_attempt) return;
  auto fail = [&](const char* result, const std::string& what, const std::string& error) {
    p.failures++;
    auto backoff = options_.initial_backoff * (1 << std::min(p.failures - 1, 16));
    backoff = std::min(backoff, options_.max_backoff);
    p.next_attempt = Clock::now() + backoff;
    if (metrics_) metrics_->RecordRegistration(p.resource, result);
    // The first failures are expected while a kubelet starts; say more only when it persists.
    Log::Write(p.failures >= 3 ? LogLevel::kWarn : LogLevel::kDebug, what,
               {{"resource", p.resource},
                {"error", error},
                {"attempt", std::to_string(p.failures)},
                {"retry_in_ms", std::to_string(backoff.count())}});
  };
  if (p.needs_fresh_server) {
    if (p.server) p.server->Stop(false);
    PluginServerOptions o{p.device_class, p.resource, p.socket_path, options_.pre_start_required};
    p.server = std::make_unique<PluginServer>(o, registry_, metrics_, in_use_);
    if (Status s = p.server->Start(); !s.ok()) {
      p.server.reset();
      fail("socket_error", "registrar: cannot serve the plugin socket", s.message());
      return;
    }
    p.needs_fresh_server = false;
  }
  KubeletSocketId kubelet_socket = CurrentKubeletSocket();
  if (Status s = Register(p); !s.ok()) {
    fail("failure", "registrar: Register with the kubelet failed", s.message());
    return;
  }
  p.registered = true;
  p.registered_with = kubelet_socket;
  p.failures = 0;
  if (metrics_) metrics_->RecordRegistration(p.resource, "success");
  PublishState(p, true);
  Log::Write(LogLevel::kInfo, "registrar: registered with the kubelet",
             {{"resource", p.resource}, {"endpoint", PluginSocketName(p.device_class)}});
  if (options_.on_registered) options_.on_registered(p.resource);
}

void KubeletRegistrar::Run() {
  auto last_dir_check = Clock::now();
  while (true) {
    {
      std::lock_guard lock(state_mutex_);
      if (stopping_) return;
    }
    if (watch_descriptor_ < 0 && Clock::now() - last_dir_check >= options_.socket_check_interval) {
      last_dir_check = Clock::now();
      if (WatchDirectory()) RestartAll("kubelet plugin directory appeared");
    }
    AddNewClasses();
    auto wake_at = Clock::now() + options_.socket_check_interval;
    for (auto& [device_class, p] : plugins_) {
      CheckOwnSocket(p);
      Advance(p);
      if (!p.registered) wake_at = std::min(wake_at, p.next_attempt);
    }
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(wake_at - Clock::now());
    int timeout_ms = static_cast<int>(
        std::clamp<int64_t>(wait.count(), 0, options_.socket_check_interval.count()));
    struct pollfd fds[2] = {{inotify_fd_.get(), POLLIN, 0}, {wake_fd_.get(), POLLIN, 0}};
    int n = ::poll(fds, 2, timeout_ms);
    if (n < 0 && errno != EINTR) {
      Log::Write(LogLevel::kError, "registrar: poll failed", {{"error", std::strerror(errno)}});
      return;
    }
    if (n > 0 && (fds[1].revents & POLLIN)) {
      uint64_t count;
      (void)!::read(wake_fd_.get(), &count, sizeof(count));
    }
    if (n > 0 && (fds[0].revents & POLLIN)) DrainInotify();
  }
}

}  // namespace vfu::deviceplugin
