#include "server/runtime/reactor.h"

#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "server/common/log.h"
#include "server/common/syscalls.h"

namespace vfu {
namespace {

uint64_t NowNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

uint64_t ThreadCpuNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

constexpr uint64_t kWakeToken = 0;
// Run() sleeps without a timeout: whatever must wake it (a posted task, Stop) writes wake_fd_,
// and a timed wait arms a timer on every sleep (about 0.15 us per REGION_READ round trip here,
// docs/performance.md).
constexpr std::chrono::milliseconds kWaitForever{-1};

}  // namespace

Reactor::Reactor() : Reactor(Options{}) {}

Reactor::Reactor(Options options)
    : options_(options),
      epoll_fd_(::epoll_create1(EPOLL_CLOEXEC)),
      wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeToken;
  ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, wake_fd_.get(), &ev);
}

Reactor::~Reactor() = default;

Status Reactor::Add(int fd, uint32_t events, FdHandler handler) {
  if (watches_.count(fd)) return MakeError(EEXIST, "fd already watched");
  auto watch = std::make_unique<Watch>(Watch{fd, next_token_++, std::move(handler)});
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = watch->token;
  if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    return MakeError(errno, std::string("epoll_ctl(ADD): ") + std::strerror(errno));
  }
  by_token_[watch->token] = watch.get();
  watches_[fd] = std::move(watch);
  return Status::Ok();
}

Status Reactor::Modify(int fd, uint32_t events) {
  auto it = watches_.find(fd);
  if (it == watches_.end()) return MakeError(ENOENT, "fd not watched");
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = it->second->token;
  if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) {
    return MakeError(errno, std::string("epoll_ctl(MOD): ") + std::strerror(errno));
  }
  return Status::Ok();
}

void Reactor::Remove(int fd) {
  auto it = watches_.find(fd);
  if (it == watches_.end()) return;
  ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
  by_token_.erase(it->second->token);
  // Kept until the current batch of events is handled: the handler being removed may be the
  // one running (HandleEvents calls handlers in place, without copying them).
  retired_.push_back(std::move(it->second));
  watches_.erase(it);
}

void Reactor::AddPoller(Poller* poller, std::string name) {
  pollers_.push_back({poller, std::move(name), {}});
}

void Reactor::RemovePoller(Poller* poller) {
  pollers_.erase(std::remove_if(pollers_.begin(), pollers_.end(),
                                [&](const PollerEntry& e) { return e.poller == poller; }),
                 pollers_.end());
}

std::vector<std::pair<std::string, PollerStats>> Reactor::poller_stats() const {
  std::vector<std::pair<std::string, PollerStats>> out;
  for (const auto& p : pollers_) out.emplace_back(p.name, p.stats);
  return out;
}

void Reactor::Post(Task task) {
  {
    std::lock_guard<std::mutex> lock(post_mutex_);
    posted_.push_back(std::move(task));
    has_posted_.store(true, std::memory_order_release);
  }
  uint64_t one = 1;
  (void)::write(wake_fd_.get(), &one, sizeof(one));
}

void Reactor::Stop() {
  stop_.store(true);
  uint64_t one = 1;
  (void)::write(wake_fd_.get(), &one, sizeof(one));
}

void Reactor::RunPostedTasks() {
  // Every round ends here: skip the mutex when nothing was posted. A task posted after this
  // check also wrote wake_fd_, so the next round runs it.
  if (!has_posted_.exchange(false, std::memory_order_acquire)) return;
  std::vector<Task> tasks;
  {
    std::lock_guard<std::mutex> lock(post_mutex_);
    tasks.swap(posted_);
  }
  for (Task& t : tasks) t();
}

bool Reactor::RunPollers() {
  bool busy = false;
  // Index loop: a poller may remove itself (or another) while running.
  for (size_t i = 0; i < pollers_.size(); ++i) {
    uint64_t start = NowNs();
    PollResult r = pollers_[i].poller->Poll();
    uint64_t elapsed = NowNs() - start;
    if (i >= pollers_.size()) break;
    PollerStats& s = pollers_[i].stats;
    if (r == PollResult::kBusy) {
      busy = true;
      stats_.busy_ns += elapsed;
      s.busy_ns += elapsed;
      ++s.busy_polls;
    } else {
      stats_.idle_poll_ns += elapsed;
      s.idle_ns += elapsed;
      ++s.idle_polls;
    }
  }
  return busy;
}

bool Reactor::PollersAgreeToSleep() {
  for (size_t i = 0; i < pollers_.size(); ++i) {
    if (!pollers_[i].poller->PrepareToSleep()) {
      // Roll back: the ones that agreed go back to polling mode.
      for (size_t j = 0; j <= i && j < pollers_.size(); ++j) pollers_[j].poller->AfterWake();
      return false;
    }
  }
  return true;
}

int Reactor::WaitForEvents(int timeout_ms) {
  int n = sys::EpollWait(epoll_fd_.get(), events_, kMaxEvents, timeout_ms);
  return n < 0 ? 0 : n;
}

void OffCpuTime::Start(uint64_t wall_ns, uint64_t thread_cpu_ns) {
  started_ = true;
  counted_before_start_ns_ = reported_ns_;
  start_wall_ns_ = wall_ns;
  start_cpu_ns_ = thread_cpu_ns;
}

uint64_t OffCpuTime::Read(uint64_t wall_ns, uint64_t thread_cpu_ns) {
  if (!started_) return reported_ns_;
  const uint64_t wall = wall_ns > start_wall_ns_ ? wall_ns - start_wall_ns_ : 0;
  const uint64_t cpu = thread_cpu_ns > start_cpu_ns_ ? thread_cpu_ns - start_cpu_ns_ : 0;
  const uint64_t now = counted_before_start_ns_ + (wall > cpu ? wall - cpu : 0);
  reported_ns_ = std::max(reported_ns_, now);
  return reported_ns_;
}

void Reactor::StartTimeAccounting() { off_cpu_.Start(NowNs(), ThreadCpuNs()); }

uint64_t Reactor::OffCpuNs() const {
  if (!off_cpu_.started()) return 0;
  return off_cpu_.Read(NowNs(), ThreadCpuNs());
}

ReactorStats Reactor::stats() const {
  ReactorStats s = stats_;
  if (!accounting_frozen_) s.asleep_ns = OffCpuNs();
  s.sleeps = sleeps_;
  return s;
}

void Reactor::HandleEvents(int n) {
  for (int i = 0; i < n; ++i) {
    uint64_t token = events_[i].data.u64;
    if (token == kWakeToken) {
      uint64_t v;
      (void)::read(wake_fd_.get(), &v, sizeof(v));
      continue;
    }
    // A handler may have removed this watch (or another) earlier in this batch.
    auto it = by_token_.find(token);
    if (it == by_token_.end()) continue;
    it->second->handler(events_[i].events);  // Remove() keeps the watch alive until below
  }
  RunPostedTasks();
  retired_.clear();
}

int Reactor::DispatchEvents(int timeout_ms) {
  int n = WaitForEvents(timeout_ms);
  HandleEvents(n);
  return n;
}

bool Reactor::RunOnce(std::chrono::milliseconds timeout) {
  if (!off_cpu_.started()) StartTimeAccounting();
  if (pollers_.empty()) return DispatchEvents(static_cast<int>(timeout.count())) > 0;
  bool busy = RunPollers();
  auto now = std::chrono::steady_clock::now();
  if (busy) {
    idle_ = false;
  } else if (!idle_) {
    idle_ = true;
    idle_since_ = now;
  }
  std::chrono::microseconds threshold{0};
  for (const auto& p : pollers_) threshold = std::max(threshold, p.poller->IdleThreshold());
  bool may_sleep = idle_ && threshold != Poller::kNeverSleep && (now - idle_since_) >= threshold;
  if (!may_sleep) {
    // Polling: look at fds only every fd_check_interval.
    if (now - last_fd_check_ < options_.fd_check_interval) return busy;
    last_fd_check_ = now;
    return DispatchEvents(0) > 0 || busy;
  }
  if (!PollersAgreeToSleep()) {
    idle_ = false;
    last_fd_check_ = now;
    DispatchEvents(0);
    return true;
  }
  ++sleeps_;
  int n = WaitForEvents(static_cast<int>(timeout.count()));
  for (auto& p : pollers_) p.poller->AfterWake();
  // Pollers first: a driver publishes its work in shared memory before it kicks, so the rings
  // already hold what woke us, and serving them now keeps reading and decoding the kick
  // message (and the other fds' handlers) off the wake-up latency.
  if (n > 0) RunPollers();
  HandleEvents(n);
  idle_ = false;
  last_fd_check_ = std::chrono::steady_clock::now();
  return n > 0;
}

void Reactor::Run() {
  StartTimeAccounting();  // on this thread: its CPU clock is the one subtracted
  accounting_frozen_ = false;
  while (!stop_.load(std::memory_order_relaxed)) {
    RunOnce(kWaitForever);
  }
  RunPostedTasks();
  // This thread's CPU clock goes away with it: keep the final figure.
  stats_.asleep_ns = OffCpuNs();
  accounting_frozen_ = true;
}

}  // namespace vfu
