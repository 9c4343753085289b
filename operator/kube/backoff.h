// Exponential backoff with jitter, for retried requests and re-opened watches: each failure
// doubles the wait (up to a cap), success resets it. Jitter spreads the retries of many
// clients so that they do not hit a recovering API server at the same instant.
#pragma once

#include <algorithm>
#include <chrono>
#include <random>

namespace vfu::op {

struct BackoffOptions {
  std::chrono::milliseconds initial{200};
  std::chrono::milliseconds max{std::chrono::seconds(30)};
  double factor = 2.0;
  double jitter = 0.2;  // up to +20 % of each wait
};

class Backoff {
 public:
  explicit Backoff(BackoffOptions options = {})
      : options_(options), next_(options.initial), random_(std::random_device{}()) {}

  // The wait before the next attempt; grows for the one after.
  std::chrono::milliseconds Next() {
    auto wait = next_;
    next_ = std::min(options_.max, std::chrono::milliseconds(static_cast<long long>(
                                       static_cast<double>(next_.count()) * options_.factor)));
    std::uniform_real_distribution<double> spread(0.0, options_.jitter);
    return wait + std::chrono::milliseconds(
                      static_cast<long long>(static_cast<double>(wait.count()) * spread(random_)));
  }
  void Reset() { next_ = options_.initial; }

 private:
  BackoffOptions options_;
  std::chrono::milliseconds next_;
  std::mt19937 random_;
};

}  // namespace vfu::op
