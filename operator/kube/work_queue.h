// A rate-limited work queue of keys (pool names), with the guarantees controllers rely on:
//   - a key is queued at most once, however often it is added before a worker takes it;
//   - a key is never processed by two workers at once: added while being processed, it is
//     queued again when the worker calls Done();
//   - AddRateLimited() delays a failing key by an exponential per-key backoff, and by a token
//     bucket shared by all keys, whichever is longer; Forget() resets the key's backoff;
//   - AddAfter() queues a key later (periodic re-checks).
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

namespace vfu::op {

struct WorkQueueOptions {
  std::chrono::milliseconds base_delay{100};
  std::chrono::milliseconds max_delay{std::chrono::minutes(5)};
  double bucket_qps = 10.0;
  int bucket_burst = 100;
};

class WorkQueue {
 public:
  using Clock = std::chrono::steady_clock;

  explicit WorkQueue(WorkQueueOptions options = {});

  void Add(const std::string& key);
  void AddAfter(const std::string& key, std::chrono::milliseconds delay);
  void AddRateLimited(const std::string& key);
  void Forget(const std::string& key);
  int Retries(const std::string& key) const;

  // Blocks until a key is ready or the queue shuts down (nullopt).
  std::optional<std::string> Get();
  void Done(const std::string& key);
  void ShutDown();

  size_t Depth() const;  // keys ready now
  // Called with the depth whenever it changes (for the metric).
  void SetDepthObserver(std::function<void(size_t)> observer);

 private:
  void AddLocked(const std::string& key);
  std::chrono::milliseconds BucketDelayLocked();
  void NotifyDepthLocked();

  WorkQueueOptions options_;
  mutable std::mutex mu_;
  std::condition_variable ready_;
  std::deque<std::string> queue_;
  std::set<std::string> dirty_;
  std::set<std::string> processing_;
  std::multimap<Clock::time_point, std::string> waiting_;
  std::map<std::string, int> failures_;
  double tokens_;
  Clock::time_point tokens_at_;
  bool shutting_down_ = false;
  std::function<void(size_t)> depth_observer_;
};

}  // namespace vfu::op
