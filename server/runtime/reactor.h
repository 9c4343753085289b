// Reactor: one thread's event loop. It watches fds with epoll, runs pollers, and executes work
// posted from other threads (the only way work crosses threads).
//
// Pollers return kBusy or kIdle. While any poller is busy the reactor keeps polling (checking
// fds without sleeping). When every poller has been idle for the idle threshold, the reactor
// asks each one whether it may sleep (PrepareToSleep: a poller re-arms its notifications and
// re-checks for work to close the race); only if all agree does it block in epoll until an fd
// (socket, eventfd, kick) is ready. Busy and idle time are counted per poller.
#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "server/common/status.h"
#include "server/common/unique_fd.h"

namespace vfu {

enum class PollResult { kIdle, kBusy };

class Poller {
 public:
  virtual ~Poller() = default;
  virtual PollResult Poll() = 0;
  // About to sleep: enable notifications and return false if work arrived meanwhile.
  virtual bool PrepareToSleep() { return true; }
  // Woken up (or the sleep was called off): notifications may be suppressed again.
  virtual void AfterWake() {}
  // How long this poller wants every poller to have been idle before the thread sleeps:
  // zero sleeps at once (interrupt mode), kNeverSleep keeps the thread polling (busy mode).
  virtual std::chrono::microseconds IdleThreshold() const { return kDefaultIdleThreshold; }

  static constexpr std::chrono::microseconds kDefaultIdleThreshold{200};
  static constexpr std::chrono::microseconds kNeverSleep = std::chrono::microseconds::max();
};

struct PollerStats {
  uint64_t busy_ns = 0;
  uint64_t idle_ns = 0;
  uint64_t busy_polls = 0;
  uint64_t idle_polls = 0;
};

// Thread-level time accounting: polling that found work, polling that found none, and time
// off the CPU (asleep in epoll_wait, or waiting to be scheduled).
struct ReactorStats {
  uint64_t busy_ns = 0;
  uint64_t idle_poll_ns = 0;
  uint64_t asleep_ns = 0;
  uint64_t sleeps = 0;
};

// Time off the CPU (wall time minus the thread's CPU time) since Start, as a counter: a reading
// is never below an earlier one. The two clocks are read one after the other, so on a thread that
// stayed on the CPU between two readings the later raw difference can come out a few ns lower;
// the figure feeds idle_ns on the control endpoint and a Prometheus counter downstream, where a
// decrease reads as a reset. A second Start resumes counting from the figure already reached.
class OffCpuTime {
 public:
  void Start(uint64_t wall_ns, uint64_t thread_cpu_ns);
  uint64_t Read(uint64_t wall_ns, uint64_t thread_cpu_ns);
  bool started() const { return started_; }

 private:
  bool started_ = false;
  uint64_t counted_before_start_ns_ = 0;
  uint64_t start_wall_ns_ = 0;
  uint64_t start_cpu_ns_ = 0;
  uint64_t reported_ns_ = 0;
};

class Reactor {
 public:
  using FdHandler = std::function<void(uint32_t events)>;
  using Task = std::function<void()>;

  struct Options {
    // While pollers are busy, sockets and eventfds are checked (epoll_wait without sleeping)
    // at most this often, so the fast path does not pay a syscall per round.
    std::chrono::microseconds fd_check_interval{20};
  };

  Reactor();
  explicit Reactor(Options options);
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  // Watch an fd (EPOLLIN/EPOLLOUT...). The handler runs on the reactor thread.
  Status Add(int fd, uint32_t events, FdHandler handler);
  Status Modify(int fd, uint32_t events);
  void Remove(int fd);

  void AddPoller(Poller* poller, std::string name);
  void RemovePoller(Poller* poller);
  std::vector<std::pair<std::string, PollerStats>> poller_stats() const;

  // Thread-safe: runs `task` on the reactor thread soon.
  void Post(Task task);

  // Runs until Stop(). RunOnce does one round, waiting at most `timeout` (negative: no limit)
  // for fds when it may sleep; it returns whether anything was done.
  void Run();
  bool RunOnce(std::chrono::milliseconds timeout);
  void Stop();  // thread-safe
  bool stopping() const { return stop_.load(); }

  void set_options(Options options) { options_ = options; }
  uint64_t sleeps() const { return sleeps_; }
  // Read on the reactor thread (e.g. from a posted task), or after Run has returned.
  ReactorStats stats() const;

 private:
  struct Watch {
    int fd;
    uint64_t token;
    FdHandler handler;
  };
  struct PollerEntry {
    Poller* poller;
    std::string name;
    PollerStats stats;
  };

  // Time off the CPU is not measured around each epoll_wait (two clock reads per sleep are
  // ~0.01x of a REGION_READ round trip): it is wall time minus the thread's CPU time since the
  // loop started, computed when stats are read.
  void StartTimeAccounting();
  uint64_t OffCpuNs() const;

  bool RunPollers();
  bool PollersAgreeToSleep();
  // epoll_wait into events_ (sleeping up to timeout_ms), then the handlers of those events and
  // the posted tasks.
  int WaitForEvents(int timeout_ms);
  void HandleEvents(int n);
  int DispatchEvents(int timeout_ms);
  void RunPostedTasks();

  static constexpr int kMaxEvents = 64;
  Options options_;
  epoll_event events_[kMaxEvents] = {};
  UniqueFd epoll_fd_;
  UniqueFd wake_fd_;
  std::unordered_map<int, std::unique_ptr<Watch>> watches_;
  std::unordered_map<uint64_t, Watch*> by_token_;
  std::vector<std::unique_ptr<Watch>> retired_;  // removed watches, freed after HandleEvents
  uint64_t next_token_ = 1;
  std::vector<PollerEntry> pollers_;
  std::mutex post_mutex_;
  std::vector<Task> posted_;
  std::atomic<bool> has_posted_{false};  // set with posted_; lets RunPostedTasks skip the mutex
  std::atomic<bool> stop_{false};
  std::chrono::steady_clock::time_point idle_since_{};
  std::chrono::steady_clock::time_point last_fd_check_{};
  bool idle_ = false;
  uint64_t sleeps_ = 0;
  ReactorStats stats_;
  mutable OffCpuTime off_cpu_;      // read (and so advanced) by the const stats()
  bool accounting_frozen_ = false;  // Run has returned: stats_.asleep_ns is final
};

}  // namespace vfu
