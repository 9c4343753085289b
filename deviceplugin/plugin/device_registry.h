// DeviceRegistry: what the device plugin knows about the server's devices. Fed by the control
// API watch stream (ControlWatcher), read by the per-class plugin servers, the registrar and the
// metrics. It decides the health each device is advertised with: a device is Healthy only while
// the server's control socket is reachable, the server says HEALTHY, the device is not waiting
// for removal and its socket directory is its own. When the control connection is lost the last
// known list is kept with every device Unhealthy (same IDs), and the next snapshot from the
// server replaces it, so devices always recover.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace vfu::deviceplugin {

// One device as the server's control API describes it.
struct ServerDevice {
  std::string id;
  std::string device_class;
  std::string socket_path;  // host path of the device's vfio-user socket
  bool server_healthy = false;
  std::string health_reason;
  bool removal_pending = false;
  bool client_connected = false;
  uint32_t poll_thread = 0;
  int32_t numa_node = -1;  // -1: unknown

  bool operator==(const ServerDevice&) const = default;
};

// One device as the plugin advertises it to the kubelet.
struct AdvertisedDevice {
  ServerDevice device;
  bool healthy = false;
  std::string unhealthy_reason;  // empty when healthy

  bool operator==(const AdvertisedDevice&) const = default;
};

class DeviceRegistry {
 public:
  DeviceRegistry() = default;
  DeviceRegistry(const DeviceRegistry&) = delete;
  DeviceRegistry& operator=(const DeviceRegistry&) = delete;

  // Replaces the known devices with the server's latest full list; the server is reachable.
  void ApplySnapshot(std::vector<ServerDevice> devices, std::string server_version = {});
  // The control connection was lost (`reason` says how): every known device turns Unhealthy.
  void MarkServerUnreachable(const std::string& reason);

  bool server_reachable() const;
  std::string server_version() const;
  // Device classes seen since start, sorted (a class stays known when its devices go away, so
  // its plugin keeps serving an empty list instead of disappearing).
  std::vector<std::string> Classes() const;
  // Devices of one class, sorted by ID, with their advertised health.
  std::vector<AdvertisedDevice> DevicesOfClass(const std::string& device_class) const;
  std::optional<AdvertisedDevice> Find(const std::string& device_class,
                                       const std::string& id) const;

  // Increases on every change of anything the accessors return.
  uint64_t version() const;

  // Calls `on_change` (on the updating thread, without registry locks held) after every change.
  // The returned handle unsubscribes when destroyed, and waits for a running call to finish.
  class Subscription {
   public:
    ~Subscription();
    Subscription(const Subscription&) = delete;
    Subscription& operator=(const Subscription&) = delete;

   private:
    friend class DeviceRegistry;
    Subscription(DeviceRegistry* registry, uint64_t id) : registry_(registry), id_(id) {}
    DeviceRegistry* registry_;
    uint64_t id_;
  };
  [[nodiscard]] std::unique_ptr<Subscription> Subscribe(std::function<void()> on_change);

 private:
  AdvertisedDevice Advertise(const ServerDevice& d,
                             const std::map<std::string, int>& directory_users) const;
  void Notify();

  mutable std::mutex mutex_;
  std::vector<ServerDevice> devices_;  // sorted by id
  std::vector<std::string> classes_;   // sorted
  bool reachable_ = false;
  std::string unreachable_reason_ = "control socket not connected yet";
  std::string server_version_;
  uint64_t version_ = 0;

  std::mutex listeners_mutex_;  // held while listeners run, so unsubscribing waits for them
  std::map<uint64_t, std::function<void()>> listeners_;
  uint64_t next_listener_ = 1;
};

// The directory holding a socket path ("/a/b/vfio-user.sock" -> "/a/b").
std::string SocketDirectory(const std::string& socket_path);

}  // namespace vfu::deviceplugin
