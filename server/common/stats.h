// Device counters for the control API: requests, bytes and errors per operation, with a latency
// histogram each. Devices update them on their poll thread only (plain integers, no atomics on
// the I/O path); the server copies them out on that same thread when asked.
#pragma once

#include <time.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace vfu {

// Fixed buckets from 10 us to 1 s, roughly 1-2.5-5 per decade (Prometheus style).
class LatencyHistogram {
 public:
  static constexpr std::array<uint64_t, 16> kUpperBoundsNs = {
      10'000,      25'000,      50'000,      100'000,      250'000,    500'000,
      1'000'000,   2'500'000,   5'000'000,   10'000'000,   25'000'000, 50'000'000,
      100'000'000, 250'000'000, 500'000'000, 1'000'000'000};

  void Observe(uint64_t ns) {
    size_t i = 0;
    while (i < kUpperBoundsNs.size() && ns > kUpperBoundsNs[i]) ++i;
    ++counts_[i];
    sum_ns_ += ns;
  }
  // Per bucket (not cumulative); the last entry counts what is above the last bound.
  const std::array<uint64_t, kUpperBoundsNs.size() + 1>& counts() const { return counts_; }
  uint64_t sum_ns() const { return sum_ns_; }
  uint64_t count() const {
    uint64_t n = 0;
    for (uint64_t c : counts_) n += c;
    return n;
  }
  // Back from saved counts (a histogram carried to another process).
  void Restore(const std::array<uint64_t, kUpperBoundsNs.size() + 1>& counts, uint64_t sum_ns) {
    counts_ = counts;
    sum_ns_ = sum_ns;
  }

 private:
  std::array<uint64_t, kUpperBoundsNs.size() + 1> counts_{};
  uint64_t sum_ns_ = 0;
};

struct OperationCounters {
  std::string name;  // "read", "write", ...
  uint64_t requests = 0;
  uint64_t bytes = 0;
  uint64_t errors = 0;
  LatencyHistogram latency;
};

struct DeviceCounters {
  std::vector<OperationCounters> operations;
  uint64_t interrupts = 0;
};

inline uint64_t MonotonicNowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace vfu
