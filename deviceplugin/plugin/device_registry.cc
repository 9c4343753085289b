#include "deviceplugin/plugin/device_registry.h"

#include <algorithm>
#include <utility>

namespace vfu::deviceplugin {

std::string SocketDirectory(const std::string& socket_path) {
  size_t slash = socket_path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return socket_path.substr(0, slash);
}

namespace {
std::map<std::string, int> CountDirectoryUsers(const std::vector<ServerDevice>& devices) {
  std::map<std::string, int> users;
  for (const ServerDevice& d : devices) users[SocketDirectory(d.socket_path)]++;
  return users;
}
}  // namespace

void DeviceRegistry::ApplySnapshot(std::vector<ServerDevice> devices, std::string server_version) {
  std::sort(devices.begin(), devices.end(),
            [](const ServerDevice& a, const ServerDevice& b) { return a.id < b.id; });
  {
    std::lock_guard lock(mutex_);
    if (reachable_ && devices == devices_ && server_version == server_version_) return;
    devices_ = std::move(devices);
    server_version_ = std::move(server_version);
    reachable_ = true;
    unreachable_reason_.clear();
    for (const ServerDevice& d : devices_) {
      auto it = std::lower_bound(classes_.begin(), classes_.end(), d.device_class);
      if (it == classes_.end() || *it != d.device_class) classes_.insert(it, d.device_class);
    }
    ++version_;
  }
  Notify();
}

void DeviceRegistry::MarkServerUnreachable(const std::string& reason) {
  {
    std::lock_guard lock(mutex_);
    if (!reachable_) return;  // already Unhealthy; keep the first reason (no churn on retries)
    reachable_ = false;
    unreachable_reason_ = reason;
    ++version_;
  }
  Notify();
}

bool DeviceRegistry::server_reachable() const {
  std::lock_guard lock(mutex_);
  return reachable_;
}

std::string DeviceRegistry::server_version() const {
  std::lock_guard lock(mutex_);
  return server_version_;
}

std::vector<std::string> DeviceRegistry::Classes() const {
  std::lock_guard lock(mutex_);
  return classes_;
}

AdvertisedDevice DeviceRegistry::Advertise(
    const ServerDevice& d, const std::map<std::string, int>& directory_users) const {
  AdvertisedDevice a{d, false, {}};
  if (!reachable_) {
    a.unhealthy_reason = "vfio-user-server control socket unreachable: " + unreachable_reason_;
  } else if (!d.server_healthy) {
    a.unhealthy_reason = d.health_reason.empty() ? "server reports the device unhealthy"
                                                 : "server: " + d.health_reason;
  } else if (d.removal_pending) {
    a.unhealthy_reason = "removed from the server configuration, waiting for its client to leave";
  } else if (auto it = directory_users.find(SocketDirectory(d.socket_path));
             it != directory_users.end() && it->second > 1) {
    // Allocate mounts the socket's directory: a shared one would hand out other devices too.
    a.unhealthy_reason = "socket directory " + it->first + " is shared with another device";
  } else {
    a.healthy = true;
  }
  return a;
}

std::vector<AdvertisedDevice> DeviceRegistry::DevicesOfClass(
    const std::string& device_class) const {
  std::lock_guard lock(mutex_);
  std::map<std::string, int> users = CountDirectoryUsers(devices_);
  std::vector<AdvertisedDevice> out;
  for (const ServerDevice& d : devices_) {
    if (d.device_class == device_class) out.push_back(Advertise(d, users));
  }
  return out;
}

std::optional<AdvertisedDevice> DeviceRegistry::Find(const std::string& device_class,
                                                     const std::string& id) const {
  std::lock_guard lock(mutex_);
  auto it =
      std::lower_bound(devices_.begin(), devices_.end(), id,
                       [](const ServerDevice& d, const std::string& key) { return d.id < key; });
  if (it == devices_.end() || it->id != id || it->device_class != device_class) return std::nullopt;
  return Advertise(*it, CountDirectoryUsers(devices_));
}

uint64_t DeviceRegistry::version() const {
  std::lock_guard lock(mutex_);
  return version_;
}

std::unique_ptr<DeviceRegistry::Subscription> DeviceRegistry::Subscribe(
    std::function<void()> on_change) {
  std::lock_guard lock(listeners_mutex_);
  uint64_t id = next_listener_++;
  listeners_[id] = std::move(on_change);
  return std::unique_ptr<Subscription>(new Subscription(this, id));
}

DeviceRegistry::Subscription::~Subscription() {
  std::lock_guard lock(registry_->listeners_mutex_);
  registry_->listeners_.erase(id_);
}

void DeviceRegistry::Notify() {
  std::lock_guard lock(listeners_mutex_);
  for (auto& [id, fn] : listeners_) fn();
}

}  // namespace vfu::deviceplugin
