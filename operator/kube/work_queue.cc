#include "operator/kube/work_queue.h"

#include <algorithm>
#include <cmath>

namespace vfu::op {

WorkQueue::WorkQueue(WorkQueueOptions options)
    : options_(options), tokens_(options.bucket_burst), tokens_at_(Clock::now()) {}

void WorkQueue::NotifyDepthLocked() {
  if (depth_observer_) depth_observer_(queue_.size());
}

void WorkQueue::AddLocked(const std::string& key) {
  if (shutting_down_ || dirty_.count(key)) return;
  dirty_.insert(key);
  if (processing_.count(key)) return;  // Done() queues it again
  queue_.push_back(key);
  NotifyDepthLocked();
  ready_.notify_one();
}

void WorkQueue::Add(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  AddLocked(key);
}

void WorkQueue::AddAfter(const std::string& key, std::chrono::milliseconds delay) {
  std::lock_guard<std::mutex> lock(mu_);
  if (shutting_down_) return;
  if (delay.count() <= 0) {
    AddLocked(key);
    return;
  }
  waiting_.emplace(Clock::now() + delay, key);
  ready_.notify_all();  // a Get() may need to wake earlier now
}

std::chrono::milliseconds WorkQueue::BucketDelayLocked() {
  // Token bucket: refill at qps up to burst; a missing token costs 1/qps of waiting.
  auto now = Clock::now();
  double elapsed = std::chrono::duration<double>(now - tokens_at_).count();
  tokens_ = std::min<double>(options_.bucket_burst, tokens_ + elapsed * options_.bucket_qps);
  tokens_at_ = now;
  tokens_ -= 1.0;
  if (tokens_ >= 0) return std::chrono::milliseconds(0);
  return std::chrono::milliseconds(
      static_cast<long long>(std::ceil(-tokens_ / options_.bucket_qps * 1000.0)));
}

void WorkQueue::AddRateLimited(const std::string& key) {
  std::chrono::milliseconds delay;
  {
    std::lock_guard<std::mutex> lock(mu_);
    int failures = failures_[key]++;
    double item =
        static_cast<double>(options_.base_delay.count()) * std::pow(2.0, std::min(failures, 30));
    auto item_delay = std::chrono::milliseconds(
        static_cast<long long>(std::min(item, static_cast<double>(options_.max_delay.count()))));
    delay = std::max(item_delay, BucketDelayLocked());
  }
  AddAfter(key, delay);
}

void WorkQueue::Forget(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  failures_.erase(key);
}

int WorkQueue::Retries(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = failures_.find(key);
  return it == failures_.end() ? 0 : it->second;
}

std::optional<std::string> WorkQueue::Get() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    auto now = Clock::now();
    while (!waiting_.empty() && waiting_.begin()->first <= now) {
      std::string key = waiting_.begin()->second;
      waiting_.erase(waiting_.begin());
      AddLocked(key);
    }
    if (shutting_down_) return std::nullopt;
    if (!queue_.empty()) {
      std::string key = queue_.front();
      queue_.pop_front();
      processing_.insert(key);
      dirty_.erase(key);
      NotifyDepthLocked();
      return key;
    }
    if (waiting_.empty()) {
      ready_.wait(lock);
    } else {
      ready_.wait_until(lock, waiting_.begin()->first);
    }
  }
}

void WorkQueue::Done(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  processing_.erase(key);
  if (dirty_.count(key) && !shutting_down_) {
    queue_.push_back(key);
    NotifyDepthLocked();
    ready_.notify_one();
  }
}

void WorkQueue::ShutDown() {
  std::lock_guard<std::mutex> lock(mu_);
  shutting_down_ = true;
  ready_.notify_all();
}

size_t WorkQueue::Depth() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

void WorkQueue::SetDepthObserver(std::function<void(size_t)> observer) {
  std::lock_guard<std::mutex> lock(mu_);
  depth_observer_ = std::move(observer);
}

}  // namespace vfu::op
