#include "server/service/device_manager.h"

#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>
#include <set>
#include <utility>

#include "server/common/filesystem.h"
#include "server/common/log.h"
#include "server/session/endpoint.h"

namespace vfu::service {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::chrono::milliseconds kRetryFailedEvery{1000};

// The parents of a config-file device's socket; the device's own directory (the one mounted
// into the VM's pod) belongs to the socket's owner and only they may enter it.
Status PrepareSocketDirectory(const std::string& socket_path, const SocketOwnership& owner) {
  std::string dir = ParentDirectory(socket_path);
  VFU_RETURN_IF_ERROR(CreateParentDirectories(socket_path));
  if (::chmod(dir.c_str(), 0750) != 0 || ::chown(dir.c_str(), owner.uid, owner.gid) != 0) {
    return MakeError(errno, "cannot set the owner of " + dir + ": " + std::strerror(errno));
  }
  return Status::Ok();
}

}  // namespace

struct DeviceManager::Managed {
  DevicePlan plan;
  // Owned by the poll thread once started.
  std::unique_ptr<VfioDevice> device;
  std::unique_ptr<DeviceEndpoint> endpoint;
  // The rest under DeviceManager::mutex_.
  std::string start_error;  // could not be created or started: retried every second
  Clock::time_point next_retry{};
  bool removal_pending = false;
  std::string refused_change;
  bool collected = false;  // at least one collection ran since it started
  bool connected = false;
  std::string client;
  std::string health_error;
  DeviceCountersSnapshot counters;
};

bool DeviceStatus::SameStateAs(const DeviceStatus& o) const {
  return id == o.id && device_class == o.device_class && socket_path == o.socket_path &&
         backend == o.backend && size_bytes == o.size_bytes && read_only == o.read_only &&
         poll_thread == o.poll_thread && numa_node == o.numa_node && healthy == o.healthy &&
         health_reason == o.health_reason && client_connected == o.client_connected &&
         client == o.client && removal_pending == o.removal_pending &&
         refused_change == o.refused_change;
}

int NumaNodeOfCpu(int cpu) {
  std::string dir = "/sys/devices/system/cpu/cpu" + std::to_string(cpu);
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return -1;
  int node = -1;
  while (dirent* e = ::readdir(d)) {
    if (std::strncmp(e->d_name, "node", 4) == 0 && e->d_name[4] >= '0' && e->d_name[4] <= '9') {
      node = std::atoi(e->d_name + 4);
      break;
    }
  }
  ::closedir(d);
  return node;
}

void DescribeBackend(const devices::DeviceSpec& spec, std::string* backend, uint64_t* size,
                     bool* read_only) {
  *backend = "";
  *size = 0;
  *read_only = false;
  if (spec.device_class != "virtio-blk") return;
  auto param = [&](const char* key) -> std::string {
    auto it = spec.params.find(key);
    return it == spec.params.end() ? std::string() : it->second;
  };
  std::string kind = param("backend");
  if (kind.empty()) kind = "ram";
  std::string ro = param("readonly");
  *read_only = ro == "on" || ro == "true" || ro == "yes" || ro == "1";
  if (kind == "file") {
    *backend = "file:" + param("path");
    struct stat st {};
    if (::stat(param("path").c_str(), &st) == 0) *size = static_cast<uint64_t>(st.st_size);
  } else {
    *backend = kind;
    auto parsed = devices::ParseSize(param("size"));
    if (parsed) *size = *parsed;
  }
}

DeviceManager::DeviceManager(Options options) : options_(std::move(options)) {
  unsigned n = std::max(1u, options_.poll_threads);
  thread_state_.resize(n);
  thread_round_done_.assign(n, 0);
  for (auto& t : thread_state_) t.last_heartbeat = Clock::now();
  for (unsigned i = 0; i < n; ++i) reactors_.push_back(std::make_unique<Reactor>());
  thread_numa_node_.assign(n, -1);
  for (unsigned i = 0; i < n; ++i) {
    threads_.emplace_back([r = reactors_[i].get()] { r->Run(); });
    if (i < options_.thread_cpus.size() && !options_.thread_cpus[i].empty()) {
      cpu_set_t set;
      CPU_ZERO(&set);
      for (int cpu : options_.thread_cpus[i]) CPU_SET(cpu, &set);
      int rc = pthread_setaffinity_np(threads_.back().native_handle(), sizeof(set), &set);
      if (rc != 0) {
        Log::Write(LogLevel::kWarn, "cannot pin the poll thread; it runs unpinned",
                   {{"poll_thread", std::to_string(i)}, {"error", std::strerror(rc)}});
      } else {
        thread_numa_node_[i] = NumaNodeOfCpu(options_.thread_cpus[i].front());
      }
    }
  }
  monitor_ = std::thread([this] { MonitorLoop(); });
}

DeviceManager::~DeviceManager() { Shutdown(); }

bool DeviceManager::RunOn(unsigned thread, std::function<void()> task) {
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> finished = done->get_future();
  reactors_[thread]->Post([task = std::move(task), done] {
    task();
    done->set_value();
  });
  return finished.wait_for(options_.apply_timeout) == std::future_status::ready;
}

Status DeviceManager::StartDevice(const std::shared_ptr<Managed>& m) {
  const DevicePlan& plan = m->plan;
  if (plan.owner && plan.owner->directory) {
    VFU_RETURN_IF_ERROR(PrepareSocketDirectory(plan.spec.socket, *plan.owner));
  } else {
    VFU_RETURN_IF_ERROR(CreateParentDirectories(plan.spec.socket));
  }
  return StartOnPollThread(m, [&m](DeviceEndpoint& endpoint) {
    if (m->plan.owner) {
      endpoint.SetSocketOwner(m->plan.owner->uid, m->plan.owner->gid, m->plan.owner->mode);
    }
    return endpoint.Start();
  });
}

Status DeviceManager::StartOnPollThread(const std::shared_ptr<Managed>& m,
                                        const std::function<Status(DeviceEndpoint&)>& start) {
  const DevicePlan& plan = m->plan;
  auto device = devices::CreateDevice(plan.spec);
  if (!device) return device.error();
  auto started = std::make_shared<Status>(MakeError(ETIMEDOUT, "the poll thread did not answer"));
  std::unique_ptr<VfioDevice> owned = std::move(*device);
  bool ran = RunOn(plan.poll_thread, [this, m, started, &owned, &start] {
    auto endpoint = std::make_unique<DeviceEndpoint>(
        m->plan.spec.id, m->plan.spec.socket, owned.get(), reactors_[m->plan.poll_thread].get());
    Status s = start(*endpoint);
    if (s.ok()) {
      m->device = std::move(owned);
      m->endpoint = std::move(endpoint);
    }
    *started = s;
  });
  if (!ran) {
    // The task may still run later; `owned` and `start` must outlive it, so it cannot be left
    // behind. Wait for it without a limit: a poll thread that never returns is a stalled server.
    Log::Write(LogLevel::kError, "poll thread did not start the device in time; waiting",
               {{"device", plan.spec.id}, {"poll_thread", std::to_string(plan.poll_thread)}});
    while (!RunOn(plan.poll_thread, [] {})) {
    }
  }
  return *started;
}

bool DeviceManager::StopIfIdle(const std::shared_ptr<Managed>& m) {
  auto stopped = std::make_shared<bool>(false);
  bool ran = RunOn(m->plan.poll_thread, [m, stopped] {
    if (m->endpoint && m->endpoint->client_connected()) return;
    if (m->endpoint) m->endpoint->Stop();
    m->endpoint.reset();
    m->device.reset();
    if (m->plan.owner && m->plan.owner->directory)
      ::rmdir(ParentDirectory(m->plan.spec.socket).c_str());
    *stopped = true;
  });
  return ran && *stopped;
}

ApplyReport DeviceManager::Apply(const std::vector<DevicePlan>& plans) {
  std::lock_guard<std::mutex> apply_lock(apply_mutex_);
  ApplyReport report;
  std::set<std::string> wanted;
  for (const DevicePlan& p : plans) wanted.insert(p.spec.id);

  std::map<std::string, std::shared_ptr<Managed>> current;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    current = devices_;
  }

  // Removals first, so that a socket freed by one device can be taken by another.
  for (const auto& [id, m] : current) {
    if (wanted.count(id)) continue;
    bool never_started;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      never_started = !m->start_error.empty();
    }
    if (never_started || StopIfIdle(m)) {
      std::lock_guard<std::mutex> lock(mutex_);
      devices_.erase(id);
      report.removed.push_back(id);
      Log::Write(LogLevel::kInfo, "device removed", {{"device", id}});
    } else {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!m->removal_pending) {
        Log::Write(LogLevel::kInfo, "device removal waits for its client to disconnect",
                   {{"device", id}, {"client", m->client}});
      }
      m->removal_pending = true;
      report.removal_deferred.push_back(id);
    }
  }

  for (const DevicePlan& plan : plans) {
    const std::string& id = plan.spec.id;
    auto it = current.find(id);
    if (it != current.end()) {
      const std::shared_ptr<Managed>& m = it->second;
      if (m->plan == plan) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (m->removal_pending) {
          Log::Write(LogLevel::kInfo, "device is in the configuration again; removal cancelled",
                     {{"device", id}});
        }
        m->removal_pending = false;
        m->refused_change.clear();
        continue;
      }
      bool never_started;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        never_started = !m->start_error.empty();
      }
      if (!never_started && !StopIfIdle(m)) {
        std::lock_guard<std::mutex> lock(mutex_);
        m->removal_pending = false;
        m->refused_change =
            "settings changed while a client is connected; not applied (reload again after the "
            "client disconnects, or remove the device and add it under a new id)";
        Log::Write(LogLevel::kWarn, "configuration change refused: a client is connected",
                   {{"device", id}, {"client", m->client}});
        report.refused.push_back(id);
        continue;
      }
      report.recreated.push_back(id);
    }
    auto m = std::make_shared<Managed>();
    m->plan = plan;
    Status s = StartDevice(m);
    std::lock_guard<std::mutex> lock(mutex_);
    devices_[id] = m;
    if (!s.ok()) {
      m->start_error = s.message();
      m->next_retry = Clock::now() + kRetryFailedEvery;
      report.failed.push_back(id + ": " + s.message());
      Log::Write(LogLevel::kError, "cannot start device; retrying every second",
                 {{"device", id}, {"socket", plan.spec.socket}, {"error", s.message()}});
    } else if (it == current.end()) {
      report.added.push_back(id);
    }
    if (it != current.end() && s.ok()) {
      Log::Write(LogLevel::kInfo, "device recreated with its new settings", {{"device", id}});
    }
  }

  std::lock_guard<std::mutex> lock(mutex_);
  Publish();
  return report;
}

uint64_t DeviceManager::PostCollection() {
  std::vector<std::vector<std::shared_ptr<Managed>>> by_thread(reactors_.size());
  uint64_t round;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    round = ++collection_round_;
    for (const auto& [id, m] : devices_) by_thread[m->plan.poll_thread].push_back(m);
  }
  for (unsigned t = 0; t < reactors_.size(); ++t) {
    Reactor* reactor = reactors_[t].get();
    reactor->Post([this, t, round, reactor, list = std::move(by_thread[t])] {
      struct Collected {
        bool connected = false;
        std::string client;
        std::string health_error;
        DeviceCountersSnapshot counters;
      };
      std::vector<Collected> results(list.size());
      auto poller_stats = reactor->poller_stats();
      for (size_t i = 0; i < list.size(); ++i) {
        const Managed& m = *list[i];
        if (!m.endpoint) continue;
        Collected& c = results[i];
        c.connected = m.endpoint->client_connected();
        c.client = m.endpoint->client_description();
        c.health_error = m.device->health_error();
        DeviceCountersSnapshot& s = c.counters;
        s.id = m.plan.spec.id;
        s.device_class = m.plan.spec.device_class;
        m.device->CollectCounters(&s.counters);
        const EndpointStats& es = m.endpoint->stats();
        s.connects = es.connects;
        s.disconnects = es.disconnects;
        s.rejected_clients = es.rejected_clients;
        s.protocol_errors = es.protocol_errors;
        s.client_connected = c.connected;
        if (const Session* session = m.endpoint->session()) {
          s.protocol_errors += session->stats().errors;
          s.dma_regions = static_cast<uint32_t>(session->dma_maps().size());
          s.dma_bytes = session->dma_maps().mapped_bytes();
        }
        for (const auto& [name, ps] : poller_stats) {
          if (name != s.id) continue;
          s.poll_busy_ns = ps.busy_ns;
          s.poll_busy_calls = ps.busy_polls;
          s.poll_calls = ps.busy_polls + ps.idle_polls;
        }
      }
      ReactorStats rs = reactor->stats();
      std::lock_guard<std::mutex> lock(mutex_);
      for (size_t i = 0; i < list.size(); ++i) {
        Managed& m = *list[i];
        if (!m.endpoint) continue;
        m.collected = true;
        m.connected = results[i].connected;
        m.client = std::move(results[i].client);
        m.health_error = std::move(results[i].health_error);
        m.counters = std::move(results[i].counters);
      }
      thread_state_[t].last_heartbeat = Clock::now();
      thread_state_[t].stats = rs;
      thread_round_done_[t] = std::max(thread_round_done_[t], round);
      collected_.notify_all();
    });
  }
  return round;
}

void DeviceManager::WaitForCollection(uint64_t round, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  collected_.wait_for(lock, timeout, [&] {
    if (shutting_down_) return true;
    for (uint64_t done : thread_round_done_) {
      if (done < round) return false;
    }
    return true;
  });
}

void DeviceManager::Publish() {
  auto now = Clock::now();
  for (unsigned t = 0; t < thread_state_.size(); ++t) {
    ThreadState& ts = thread_state_[t];
    bool stalled = now - ts.last_heartbeat > options_.stall_after;
    if (stalled != ts.stalled) {
      ts.stalled = stalled;
      Log::Write(
          stalled ? LogLevel::kError : LogLevel::kInfo,
          stalled ? "poll thread stalled: its devices are unhealthy" : "poll thread responds again",
          {{"poll_thread", std::to_string(t)}});
    }
  }
  std::vector<DeviceStatus> next;
  next.reserve(devices_.size());
  for (const auto& [id, m] : devices_) {
    DeviceStatus s;
    s.id = id;
    s.device_class = m->plan.spec.device_class;
    s.socket_path = m->plan.spec.socket;
    DescribeBackend(m->plan.spec, &s.backend, &s.size_bytes, &s.read_only);
    s.poll_thread = m->plan.poll_thread;
    s.numa_node = thread_numa_node_[m->plan.poll_thread];
    s.removal_pending = m->removal_pending;
    s.refused_change = m->refused_change;
    s.client_connected = m->connected;
    s.client = m->client;
    const ThreadState& ts = thread_state_[m->plan.poll_thread];
    if (!m->start_error.empty()) {
      s.health_reason = "cannot start: " + m->start_error;
    } else if (ts.stalled) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - ts.last_heartbeat);
      s.health_reason = "poll thread " + std::to_string(m->plan.poll_thread) +
                        " stalled (no heartbeat for " + std::to_string(ms.count()) + " ms)";
    } else if (!m->health_error.empty()) {
      s.health_reason = m->health_error;
    }
    s.healthy = s.health_reason.empty();
    next.push_back(std::move(s));
  }
  bool changed = next.size() != published_.size();
  size_t j = 0;
  for (DeviceStatus& s : next) {
    while (j < published_.size() && published_[j].id < s.id) {
      changed = true;
      ++j;
    }
    if (j < published_.size() && published_[j].id == s.id) {
      if (published_[j].SameStateAs(s)) {
        s.generation = published_[j].generation;
      } else {
        changed = true;
        s.generation = generation_ + 1;
        if (published_[j].healthy != s.healthy) {
          Log::Write(s.healthy ? LogLevel::kInfo : LogLevel::kWarn,
                     s.healthy ? "device healthy again" : "device unhealthy",
                     {{"device", s.id}, {"reason", s.health_reason}});
        }
      }
      ++j;
    } else {
      changed = true;
      s.generation = generation_ + 1;
    }
  }
  if (j < published_.size()) changed = true;
  if (!changed) return;
  ++generation_;
  published_ = std::move(next);
  changed_.notify_all();
}

void DeviceManager::FinishPendingRemovals() {
  std::vector<std::shared_ptr<Managed>> pending;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [id, m] : devices_) {
      if (m->removal_pending && !m->connected) pending.push_back(m);
    }
  }
  for (const auto& m : pending) {
    if (!StopIfIdle(m)) continue;
    std::lock_guard<std::mutex> lock(mutex_);
    devices_.erase(m->plan.spec.id);
    Log::Write(LogLevel::kInfo, "device removed after its client disconnected",
               {{"device", m->plan.spec.id}});
  }
}

void DeviceManager::RetryFailedDevices() {
  std::vector<std::shared_ptr<Managed>> failed;
  auto now = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [id, m] : devices_) {
      if (!m->start_error.empty() && !m->removal_pending && now >= m->next_retry) {
        failed.push_back(m);
      }
    }
  }
  for (const auto& m : failed) {
    Status s = StartDevice(m);
    std::lock_guard<std::mutex> lock(mutex_);
    if (s.ok()) {
      m->start_error.clear();
      Log::Write(LogLevel::kInfo, "device started after an earlier failure",
                 {{"device", m->plan.spec.id}});
    } else {
      m->start_error = s.message();
      m->next_retry = Clock::now() + kRetryFailedEvery;
    }
  }
}

void DeviceManager::MonitorLoop() {
  while (true) {
    auto started = Clock::now();
    uint64_t round = PostCollection();
    WaitForCollection(round, options_.monitor_interval);
    {
      // Structural work only when no Apply runs: an Apply waiting for a stalled poll thread
      // must not hold up the health report that says the thread stalled.
      std::unique_lock<std::mutex> apply_lock(apply_mutex_, std::try_to_lock);
      if (apply_lock.owns_lock()) {
        FinishPendingRemovals();
        RetryFailedDevices();
      }
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (shutting_down_) return;
      Publish();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    collected_.wait_until(lock, started + options_.monitor_interval,
                          [&] { return shutting_down_; });
    if (shutting_down_) return;
  }
}

// --- planned handoff ---------------------------------------------------------------------------

inline constexpr uint16_t kDeviceSetStateVersion = 1;

Status DeviceManager::SuspendForHandoff(state::Writer* w, std::chrono::milliseconds timeout) {
  apply_mutex_.lock();  // until FinishHandoff
  std::vector<std::shared_ptr<Managed>> running;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [id, m] : devices_) {
      if (m->endpoint) running.push_back(m);
    }
  }
  size_t mark = w->BeginSection(state::Tag::kDeviceSet, kDeviceSetStateVersion);
  w->U32(static_cast<uint32_t>(running.size()));
  Status result;
  for (const auto& m : running) {
    auto status = std::make_shared<Status>(MakeError(ETIMEDOUT, "the poll thread did not answer"));
    w->String(m->plan.spec.id);
    // The wait covers the session's quiesce (at most `timeout`) and the device's drain.
    bool ran = RunOn(m->plan.poll_thread, [m, w, timeout, status] {
      *status = m->endpoint->SuspendAndSave(*w, timeout);
    });
    suspended_.push_back(m);
    if (!ran || !status->ok()) {
      result = MakeError(ran ? status->code() : ETIMEDOUT,
                         "device " + m->plan.spec.id + ": " +
                             (ran ? status->message() : "the poll thread did not answer"));
      break;
    }
  }
  {
    // The counters of every handoff so far go with the devices.
    std::lock_guard<std::mutex> lock(mutex_);
    w->U64(handoff_stats_.handoffs);
    for (uint64_t c : handoff_stats_.pause.counts()) w->U64(c);
    w->U64(handoff_stats_.pause.sum_ns());
  }
  w->EndSection(mark);
  if (!result.ok()) {
    FinishHandoff(false);
    return result;
  }
  Log::Write(LogLevel::kInfo, "handoff: devices suspended and saved",
             {{"devices", std::to_string(running.size())},
              {"fds", std::to_string(w->fds().size())},
              {"bytes", std::to_string(w->bytes().size())}});
  return Status::Ok();
}

void DeviceManager::FinishHandoff(bool succeeded) {
  for (const auto& m : suspended_) {
    bool ran = RunOn(m->plan.poll_thread, [m, succeeded] {
      if (!m->endpoint) return;
      if (succeeded) {
        m->endpoint->Release();
      } else {
        m->endpoint->Resume();
      }
    });
    if (!ran) {
      Log::Write(LogLevel::kError, "handoff: the poll thread did not answer",
                 {{"device", m->plan.spec.id}});
    }
  }
  suspended_.clear();
  apply_mutex_.unlock();
}

Result<ApplyReport> DeviceManager::ApplyFromHandoff(const std::vector<DevicePlan>& plans,
                                                    state::Reader& r) {
  std::vector<std::shared_ptr<Managed>> adopted;
  auto let_go = [&] {
    for (const auto& m : adopted) {
      RunOn(m->plan.poll_thread, [m] {
        if (m->endpoint) m->endpoint->Release();
        m->endpoint.reset();
        m->device.reset();
      });
      std::lock_guard<std::mutex> lock(mutex_);
      devices_.erase(m->plan.spec.id);
    }
  };
  state::Reader s = r.Section(state::Tag::kDeviceSet, kDeviceSetStateVersion, nullptr);
  uint32_t count = s.U32();
  for (uint32_t i = 0; i < count && s.ok(); ++i) {
    std::string id = s.String(4096);
    if (!s.ok()) break;
    auto plan = std::find_if(plans.begin(), plans.end(),
                             [&](const DevicePlan& p) { return p.spec.id == id; });
    if (plan == plans.end()) {
      let_go();
      return MakeError(ENOENT, "the running server has device " + id +
                                   ", which this configuration does not have");
    }
    auto m = std::make_shared<Managed>();
    m->plan = *plan;
    Status started =
        StartOnPollThread(m, [&s](DeviceEndpoint& endpoint) { return endpoint.StartFromState(s); });
    if (!started.ok()) {
      let_go();
      return MakeError(started.code(), "device " + id + ": " + started.message());
    }
    adopted.push_back(m);
    std::lock_guard<std::mutex> lock(mutex_);
    devices_[id] = m;
  }
  HandoffStats carried;
  carried.handoffs = s.U64();
  std::array<uint64_t, LatencyHistogram::kUpperBoundsNs.size() + 1> counts{};
  for (uint64_t& c : counts) c = s.U64();
  carried.pause.Restore(counts, s.U64());
  s.ExpectEnd();
  if (!s.ok() || !r.ok()) {
    let_go();
    return (!s.ok() ? s.status() : r.status()).error();
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    handoff_stats_ = carried;
  }
  Log::Write(LogLevel::kInfo, "handoff: devices taken over",
             {{"devices", std::to_string(adopted.size())}});
  // The devices of the configuration that the old server did not run start as usual.
  return Apply(plans);
}

DeviceManager::HandoffStats DeviceManager::handoff_stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return handoff_stats_;
}

void DeviceManager::RecordHandoff(std::chrono::nanoseconds pause) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++handoff_stats_.handoffs;
  handoff_stats_.pause.Observe(static_cast<uint64_t>(pause.count()));
}

void DeviceManager::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopped_) return;
    shutting_down_ = true;
    collected_.notify_all();
    changed_.notify_all();
  }
  if (monitor_.joinable()) monitor_.join();
  std::lock_guard<std::mutex> apply_lock(apply_mutex_);
  for (auto& r : reactors_) r->Stop();
  for (auto& t : threads_) t.join();
  threads_.clear();
  // The poll threads are gone: tear down here. Ending a session waits for its in-flight I/O.
  std::map<std::string, std::shared_ptr<Managed>> devices;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    devices.swap(devices_);
  }
  for (auto& [id, m] : devices) {
    if (m->endpoint) m->endpoint->Stop();
    m->endpoint.reset();
  }
  for (auto& [id, m] : devices) {
    m->device.reset();
    if (m->plan.owner && m->plan.owner->directory)
      ::rmdir(ParentDirectory(m->plan.spec.socket).c_str());
  }
  std::lock_guard<std::mutex> lock(mutex_);
  stopped_ = true;
  changed_.notify_all();
}

DeviceListSnapshot DeviceManager::Devices() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return {generation_, published_};
}

bool DeviceManager::WaitForChange(uint64_t after, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] { return generation_ > after || shutting_down_; }) &&
         generation_ > after;
}

bool DeviceManager::shut_down() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return shutting_down_;
}

std::vector<DeviceCountersSnapshot> DeviceManager::Counters(const std::string& id) {
  WaitForCollection(PostCollection(), std::chrono::milliseconds(1000));
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<DeviceCountersSnapshot> out;
  for (const auto& [device_id, m] : devices_) {
    if (!id.empty() && device_id != id) continue;
    DeviceCountersSnapshot s = m->counters;
    s.id = device_id;
    s.device_class = m->plan.spec.device_class;
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<PollThreadSnapshot> DeviceManager::PollThreads() {
  WaitForCollection(PostCollection(), std::chrono::milliseconds(1000));
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<PollThreadSnapshot> out;
  for (unsigned t = 0; t < thread_state_.size(); ++t) {
    PollThreadSnapshot s;
    s.index = t;
    s.stats = thread_state_[t].stats;
    for (const auto& [id, m] : devices_) s.devices += m->plan.poll_thread == t ? 1 : 0;
    out.push_back(s);
  }
  return out;
}

}  // namespace vfu::service
