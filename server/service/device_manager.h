// DeviceManager: the node service's set of devices. It owns the poll threads (one Reactor
// each), creates devices and their endpoints from a plan (the configuration), applies new
// plans on reload, watches health, and publishes snapshots for the control API.
//
// Threads: devices and endpoints live on their poll thread and are only touched there (work is
// posted). Apply() runs on the caller's thread and waits for the poll threads. A monitor thread
// collects status and counters from every poll thread each `monitor_interval`; the collection
// doubles as the watchdog heartbeat: a poll thread that has not run it for `stall_after` makes
// its devices Unhealthy. Snapshots are read under a mutex from any thread.
//
// Reload rules: a new id is added; a missing id is removed, but never while a client is
// connected (it is marked removal-pending and goes when the client leaves); a changed device
// is recreated if no client is connected, otherwise the change is refused (logged, shown in its
// status) and the device keeps running unchanged.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "server/common/stats.h"
#include "server/devices/device_factory.h"
#include "server/runtime/reactor.h"
#include "server/state/record.h"

namespace vfu {
class DeviceEndpoint;
class VfioDevice;
}  // namespace vfu

namespace vfu::service {

struct SocketOwnership {
  uid_t uid = 107;  // (uid_t)-1 / (gid_t)-1: left as the server made it
  gid_t gid = 107;
  mode_t mode = 0660;
  // true (a config-file device): the socket's own directory is made 0750 for this owner and
  // removed with the device. false (--device owner=/mode=): the socket alone; the directory,
  // which may hold other sockets, is left as it is.
  bool directory = true;
  bool operator==(const SocketOwnership&) const = default;
};

// One device as the configuration describes it.
struct DevicePlan {
  devices::DeviceSpec spec;
  unsigned poll_thread = 0;
  // Set for config-file devices (socket and its directory) and for --device with owner= or
  // mode= (the socket alone, see SocketOwnership::directory).
  std::optional<SocketOwnership> owner;
  bool operator==(const DevicePlan& other) const {
    return spec.device_class == other.spec.device_class && spec.id == other.spec.id &&
           spec.socket == other.spec.socket && spec.params == other.spec.params &&
           poll_thread == other.poll_thread && owner == other.owner;
  }
};

struct DeviceStatus {
  std::string id;
  std::string device_class;
  std::string socket_path;
  std::string backend;  // "file:/path", "ram", "null", "" for classes without one
  uint64_t size_bytes = 0;
  bool read_only = false;
  unsigned poll_thread = 0;
  int numa_node = -1;  // of the poll thread's CPUs; -1 when not pinned or unknown
  bool healthy = false;
  std::string health_reason;
  bool client_connected = false;
  std::string client;
  bool removal_pending = false;
  std::string refused_change;  // why the last reload could not apply a change to it
  uint64_t generation = 0;

  bool SameStateAs(const DeviceStatus& o) const;
};

struct DeviceListSnapshot {
  uint64_t generation = 0;
  std::vector<DeviceStatus> devices;  // sorted by id
};

struct DeviceCountersSnapshot {
  std::string id;
  std::string device_class;
  DeviceCounters counters;
  uint64_t poll_busy_ns = 0;
  uint64_t poll_calls = 0;
  uint64_t poll_busy_calls = 0;
  uint32_t dma_regions = 0;
  uint64_t dma_bytes = 0;
  uint64_t connects = 0;
  uint64_t disconnects = 0;
  uint64_t rejected_clients = 0;
  uint64_t protocol_errors = 0;
  bool client_connected = false;
};

struct PollThreadSnapshot {
  unsigned index = 0;
  ReactorStats stats;
  size_t devices = 0;
};

struct ApplyReport {
  std::vector<std::string> added;
  std::vector<std::string> removed;
  std::vector<std::string> removal_deferred;  // connected: removed when the client leaves
  std::vector<std::string> recreated;         // changed while no client was connected
  std::vector<std::string> refused;           // changed while a client was connected
  std::vector<std::string> failed;            // "id: error"
  bool changed() const {
    return !added.empty() || !removed.empty() || !removal_deferred.empty() || !recreated.empty() ||
           !refused.empty() || !failed.empty();
  }
};

class DeviceManager {
 public:
  struct Options {
    unsigned poll_threads = 1;
    // Optional CPU list per poll thread: the thread is pinned there, and the NUMA node of its
    // first CPU is reported for its devices (for NUMA-aware allocation by the device plugin).
    std::vector<std::vector<int>> thread_cpus;
    std::chrono::milliseconds monitor_interval{200};
    std::chrono::milliseconds stall_after{1000};
    // How long Apply waits for a poll thread to start or stop a device.
    std::chrono::milliseconds apply_timeout{5000};
  };

  explicit DeviceManager(Options options);
  ~DeviceManager();  // Shutdown()
  DeviceManager(const DeviceManager&) = delete;
  DeviceManager& operator=(const DeviceManager&) = delete;

  // Makes the served devices match `plans` (see the reload rules above). Plans must have unique
  // ids and sockets and poll_thread < poll_threads (the config parser checks this).
  ApplyReport Apply(const std::vector<DevicePlan>& plans);

  // Ends every session (in-flight I/O completes first), removes the sockets, stops the threads.
  void Shutdown();

  DeviceListSnapshot Devices() const;
  // Waits until the generation passes `after` or `timeout` passes or Shutdown; returns whether
  // it passed.
  bool WaitForChange(uint64_t after, std::chrono::milliseconds timeout) const;
  bool shut_down() const;
  // Fresh counters (collected now from the poll threads, waiting at most 1 s) of one device,
  // or of all when `id` is empty.
  std::vector<DeviceCountersSnapshot> Counters(const std::string& id);
  std::vector<PollThreadSnapshot> PollThreads();

  // --- a planned handoff to a successor process (server/service/handoff.h) ---
  // The old server: suspends every running device on its poll thread (the session quiesced,
  // waiting for the client at most `timeout`, the device's in-flight requests completed) and
  // saves them into *w. Until FinishHandoff, nothing is served and Apply waits. On an error
  // every device serves on and nothing was saved.
  Status SuspendForHandoff(state::Writer* w, std::chrono::milliseconds timeout);
  // succeeded: the successor serves now; the devices are let go without unlinking their
  // sockets (Shutdown then only frees this process's resources). Otherwise they serve on.
  void FinishHandoff(bool succeeded);
  // The successor: starts the devices of the record from their saved endpoints (each must be in
  // `plans`, with the same settings), then the rest of `plans` as Apply does. All or nothing for
  // the record: on an error, what was adopted is let go again (the old server still serves it)
  // and nothing else is started.
  Result<ApplyReport> ApplyFromHandoff(const std::vector<DevicePlan>& plans, state::Reader& r);

  // Handoffs this server's devices went through, over every process generation (the count and
  // the pauses travel with the devices): the pause is the time from the successor's request
  // to its serving the devices, during which nothing was served.
  struct HandoffStats {
    uint64_t handoffs = 0;
    LatencyHistogram pause;
  };
  HandoffStats handoff_stats() const;
  // The successor: one more handoff, with the pause it measured.
  void RecordHandoff(std::chrono::nanoseconds pause);

  unsigned poll_threads() const { return static_cast<unsigned>(reactors_.size()); }
  // Runs `task` on a poll thread (diagnostics and tests, e.g. simulating a stall).
  void PostToPollThread(unsigned thread, std::function<void()> task) {
    reactors_.at(thread)->Post(std::move(task));
  }

 private:
  struct Managed;
  struct ThreadState {
    std::chrono::steady_clock::time_point last_heartbeat;
    ReactorStats stats;
    bool stalled = false;
  };

  Status StartDevice(const std::shared_ptr<Managed>& m);
  // Creates m's device and, on its poll thread, an endpoint for it that `start` starts (Start,
  // or StartFromState); on success both go into m. Waits for a stalled poll thread.
  Status StartOnPollThread(const std::shared_ptr<Managed>& m,
                           const std::function<Status(DeviceEndpoint&)>& start);
  // Runs `task` on poll thread `thread` and waits for it (false on timeout).
  bool RunOn(unsigned thread, std::function<void()> task);
  // On the poll thread: stops and destroys the device if no client is connected.
  bool StopIfIdle(const std::shared_ptr<Managed>& m);
  void MonitorLoop();
  // Posts a collection to every poll thread; returns the round number.
  uint64_t PostCollection();
  void WaitForCollection(uint64_t round, std::chrono::milliseconds timeout);
  void Publish();  // recomputes statuses, bumps the generation on change (mutex_ held)
  void RetryFailedDevices();
  void FinishPendingRemovals();

  Options options_;
  std::vector<std::unique_ptr<Reactor>> reactors_;
  std::vector<std::thread> threads_;
  std::thread monitor_;

  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  std::condition_variable collected_;
  std::map<std::string, std::shared_ptr<Managed>> devices_;
  std::vector<DeviceStatus> published_;  // sorted by id
  std::vector<ThreadState> thread_state_;
  std::vector<int> thread_numa_node_;
  std::vector<uint64_t> thread_round_done_;
  uint64_t collection_round_ = 0;
  uint64_t generation_ = 1;
  bool shutting_down_ = false;
  bool stopped_ = false;
  std::mutex apply_mutex_;  // one Apply at a time (held from SuspendForHandoff to FinishHandoff)
  std::vector<std::shared_ptr<Managed>> suspended_;  // by SuspendForHandoff
  HandoffStats handoff_stats_;                       // under mutex_
};

// The NUMA node of a CPU from sysfs, or -1.
int NumaNodeOfCpu(int cpu);

// Describes a spec's backend for status: ("file:/path" | "ram" | "null", size, read-only).
void DescribeBackend(const devices::DeviceSpec& spec, std::string* backend, uint64_t* size,
                     bool* read_only);

}  // namespace vfu::service
