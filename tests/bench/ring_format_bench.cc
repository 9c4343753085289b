// Floors of shared-ring formats on this machine: how fast two pinned threads (a driver keeping
// 4 KiB block reads outstanding, a spinning device serving them) can go when nothing but the
// ring format's own work sits between them. It answers "could any device using this format meet
// a target?" for the virtio-blk benchmark's baselines (tests/bench/virtio_blk_bench.cc):
//   null (no data moves), QD1 and QD32: the SPSC ring, the virtio split ring (used->idx stored
//     per request, or once per batch), the virtio packed ring; ratios to the SPSC ring;
//   RAM, QD32: the same formats with the device copying each block from a 256 MiB RAM disk,
//     next to one thread memcpy-ing the same block sequence; ratios to memcpy.
// The formats are in tests/bench/bare_rings.h. Within a round every variant runs once, in turn,
// so all see the same machine state; the figures are medians over rounds. Nothing here checks
// addresses or validates requests: a real device can only be slower than its format's floor.
//
// Build and run (docs/performance.md):
//   cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release
//   ninja -C build-bench ring_format_bench && build-bench/tests/ring_format_bench
// Options: --rounds=N (default 7), --seconds=S per measurement (default 0.3), --no-pin. A run
// takes about 30 s with the defaults.
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "server/common/mapping.h"
#include "tests/bench/bare_rings.h"

namespace {

using vfu::MemoryMapping;
using vfu::bench::BarePackedRing;
using vfu::bench::BareRingSetup;
using vfu::bench::BareSplitRing;
using vfu::bench::kBareBlockBytes;
using vfu::bench::SpscRing;
using Clock = std::chrono::steady_clock;

constexpr size_t kDiskBytes = size_t{256} << 20;
constexpr size_t kSlotStride = 135168;  // as in the userspace driver: 64-byte meta + 128 KiB
constexpr int kMaxQueueDepth = 32;

bool g_pin = true;
double g_seconds = 0.3;

void PinTo(int cpu) {
  if (g_pin) vfu::bench::PinThreadToCpu(cpu);
}

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "ring_format_bench: %s\n", what);
  std::exit(1);
}

struct Workload {
  MemoryMapping disk;            // populated, huge pages preferred (like the ram backend's memory)
  MemoryMapping slots;           // kMaxQueueDepth slot buffers
  std::vector<uint32_t> blocks;  // random block sequence, shared by every variant
};

Workload MakeWorkload() {
  Workload w;
  auto disk = MemoryMapping::MapAnonymous(kDiskBytes, /*prefer_huge_pages=*/true);
  auto slots = MemoryMapping::MapAnonymous(kSlotStride * kMaxQueueDepth, false);
  if (!disk || !slots) Die("cannot map the RAM disk or the slot buffers");
  w.disk = std::move(*disk);
  w.slots = std::move(*slots);
  for (size_t i = 0; i < kDiskBytes; i += 4096) w.disk.data()[i] = static_cast<uint8_t>(i >> 12);
  std::memset(w.slots.data(), 0, kSlotStride * kMaxQueueDepth);
  std::mt19937 rng(7);
  w.blocks.resize(size_t{1} << 20);
  for (uint32_t& b : w.blocks) b = static_cast<uint32_t>(rng() % (kDiskBytes / kBareBlockBytes));
  return w;
}

// Runs `Ring` at `qd` for g_seconds after a 100 ms warm-up; returns requests per second.
template <typename Ring>
double RunRing(const Workload& w, int qd, bool ram) {
  BareRingSetup setup;
  setup.slots = w.slots.data();
  setup.slot_stride = kSlotStride;
  setup.disk = ram ? w.disk.data() : nullptr;
  setup.on_device_start = [] { PinTo(1); };
  auto ring = std::make_unique<Ring>(setup);
  size_t next = 0;
  auto submit = [&](uint32_t slot) {
    ring->Submit(slot, uint64_t{w.blocks[next++ % w.blocks.size()]} * (kBareBlockBytes / 512));
  };
  for (int s = 0; s < qd; ++s) submit(static_cast<uint32_t>(s));
  const auto measure_from = Clock::now() + std::chrono::milliseconds(100);
  const auto end = measure_from + std::chrono::duration<double>(g_seconds);
  Clock::time_point begin{};
  bool measuring = false;
  uint64_t ops = 0;
  double rate = 0;
  uint32_t done[kMaxQueueDepth];
  int outstanding = qd;
  for (;;) {
    size_t n = 0;
    if (ring->Poll([&](uint32_t slot) { done[n++] = slot; }) == 0) continue;
    outstanding -= static_cast<int>(n);
    const auto now = Clock::now();
    if (!measuring && now >= measure_from) {
      measuring = true;
      begin = now;
    }
    if (now >= end) {
      rate = static_cast<double>(ops) / std::chrono::duration<double>(now - begin).count();
      break;
    }
    for (size_t i = 0; i < n; ++i) {
      if (measuring) ++ops;
      submit(done[i]);
      ++outstanding;
    }
  }
  // Bounded: the device thread is spinning and completes what is outstanding within µs.
  const auto drain_deadline = Clock::now() + std::chrono::seconds(5);
  while (outstanding > 0 && Clock::now() < drain_deadline) {
    outstanding -= static_cast<int>(ring->Poll([](uint32_t) {}));
  }
  if (outstanding > 0) Die("the device thread stopped completing requests");
  return rate;
}

// One thread copies the same block sequence into the slots' data areas.
double RunMemcpy(const Workload& w, int qd) {
  size_t next = 0;
  uint64_t ops = 0;
  const auto measure_from = Clock::now() + std::chrono::milliseconds(100);
  const auto end = measure_from + std::chrono::duration<double>(g_seconds);
  Clock::time_point begin{};
  bool measuring = false;
  for (;;) {
    for (int i = 0; i < 64; ++i, ++next) {  // the clock is read once per 64 copies
      const uint32_t b = w.blocks[next % w.blocks.size()];
      uint8_t* dst = w.slots.data() + (next % static_cast<size_t>(qd)) * kSlotStride + 64;
      std::memcpy(dst, w.disk.data() + uint64_t{b} * kBareBlockBytes, kBareBlockBytes);
      asm volatile("" : : : "memory");
      if (measuring) ++ops;
    }
    const auto now = Clock::now();
    if (!measuring && now >= measure_from) {
      measuring = true;
      begin = now;
    }
    if (now >= end) {
      return static_cast<double>(ops) / std::chrono::duration<double>(now - begin).count();
    }
  }
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct Series {
  std::string name;
  std::vector<double> rate;   // requests per second, one per round
  std::vector<double> ratio;  // to the row's baseline, one per round
};

void PrintRow(const std::string& label, const std::vector<Series>& series) {
  std::printf("%-10s", label.c_str());
  for (const Series& s : series) {
    std::printf("  %-13s %6.2f M (x%.2f, %.2f-%.2f)", s.name.c_str(), Median(s.rate) / 1e6,
                Median(s.ratio), *std::min_element(s.ratio.begin(), s.ratio.end()),
                *std::max_element(s.ratio.begin(), s.ratio.end()));
  }
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 7;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--no-pin") {
      g_pin = false;
    } else if (arg.rfind("--rounds=", 0) == 0) {
      rounds = std::max(1, std::atoi(arg.c_str() + 9));
    } else if (arg.rfind("--seconds=", 0) == 0) {
      g_seconds = std::max(0.05, std::atof(arg.c_str() + 10));
    } else {
      std::printf(
          "usage: ring_format_bench [--rounds=N] [--seconds=S] [--no-pin]\n"
          "Floors of the SPSC, virtio split and virtio packed ring formats between two pinned\n"
          "threads (null and RAM-disk 4 KiB reads), next to a one-thread memcpy.\n");
      return arg == "--help" ? 0 : 2;
    }
  }
  PinTo(0);
  const Workload w = MakeWorkload();
  std::printf(
      "ring_format_bench: %d rounds of %.2f s per variant; driver on CPU 0, device on CPU 1%s\n",
      rounds, g_seconds, g_pin ? "" : " (not pinned)");

  struct Row {
    std::string label;
    int qd;
    bool ram;
    std::vector<Series> series;
  };
  std::vector<Row> rows = {
      {"null QD1", 1, false, {}}, {"null QD32", 32, false, {}}, {"RAM QD32", 32, true, {}}};
  for (Row& row : rows) {
    if (row.ram) row.series.push_back({"memcpy", {}, {}});
    row.series.push_back({"spsc", {}, {}});
    row.series.push_back({"split", {}, {}});
    row.series.push_back({"split-batch", {}, {}});
    row.series.push_back({"packed", {}, {}});
  }
  for (int r = 0; r < rounds; ++r) {
    for (Row& row : rows) {
      std::vector<double> rates;
      if (row.ram) rates.push_back(RunMemcpy(w, row.qd));
      rates.push_back(RunRing<SpscRing>(w, row.qd, row.ram));
      rates.push_back(RunRing<BareSplitRing<false>>(w, row.qd, row.ram));
      rates.push_back(RunRing<BareSplitRing<true>>(w, row.qd, row.ram));
      rates.push_back(RunRing<BarePackedRing>(w, row.qd, row.ram));
      std::printf("round %d %-10s", r + 1, row.label.c_str());
      for (size_t i = 0; i < rates.size(); ++i) {
        row.series[i].rate.push_back(rates[i]);
        row.series[i].ratio.push_back(rates[i] / rates[0]);
        std::printf("  %s %.2f M", row.series[i].name.c_str(), rates[i] / 1e6);
      }
      std::printf("\n");
      std::fflush(stdout);
    }
  }
  std::printf(
      "\nMedians over %d rounds: requests/s (ratio to the row's first column: median, range)\n",
      rounds);
  for (const Row& row : rows) PrintRow(row.label, row.series);
  return 0;
}
