// vfio-user-ctl: inspects vfio-user devices from a shell.
//
//   vfio-user-ctl list           devices of a server, from its control socket (--watch: follow)
//   vfio-user-ctl stats [ID]     per-device counters from the control socket
//   vfio-user-ctl info SOCKET    device, regions, IRQs and PCI identity, read over vfio-user
//   vfio-user-ctl bench SOCKET   drives a virtio-blk device with the userspace driver and
//                                reports IOPS, bandwidth and latency percentiles
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "server/app/ctl_control.h"
#include "server/app/ctl_info.h"
#include "server/client/client.h"
#include "server/client/virtio_blk_driver.h"
#include "server/pci/config_space.h"
#include "server/version.h"

namespace {

using namespace vfu;

int Info(const std::string& socket) {
  auto client = client::Client::Connect(socket);
  if (!client) {
    std::fprintf(stderr, "error: %s\n", client.error().message.c_str());
    return 1;
  }
  return ctl::PrintDeviceInfo(**client, stdout);
}

struct BenchOptions {
  uint32_t block_size = 4096;
  uint32_t queue_depth = 32;
  std::string pattern = "randread";  // randread, randwrite, read, write, randrw
  uint32_t read_percent = 70;        // randrw
  double seconds = 5;
  uint64_t span_bytes = 0;  // 0: the whole disk
};

int Bench(const std::string& socket, const BenchOptions& o) {
  if (o.block_size == 0 || o.block_size % 512 != 0 || o.block_size > (1u << 20)) {
    std::fprintf(stderr, "error: --bs must be a multiple of 512 up to 1 MiB\n");
    return 2;
  }
  if (o.queue_depth == 0 || o.queue_depth > 256) {
    std::fprintf(stderr, "error: --qd must be 1..256\n");
    return 2;
  }
  bool sequential = o.pattern == "read" || o.pattern == "write";
  bool idle = o.pattern == "idle";
  if (!sequential && !idle && o.pattern != "randread" && o.pattern != "randwrite" &&
      o.pattern != "randrw") {
    std::fprintf(stderr, "error: --rw must be randread, randwrite, read, write, randrw or idle\n");
    return 2;
  }
  auto client = client::Client::Connect(socket);
  if (!client) {
    std::fprintf(stderr, "error: %s\n", client.error().message.c_str());
    return 1;
  }
  client::VirtioBlkDriverOptions dopts;
  dopts.slot_bytes = o.block_size;
  uint32_t qsize = 4;
  while (qsize / 3 < o.queue_depth) qsize *= 2;
  dopts.queue_size = static_cast<uint16_t>(qsize);
  auto driver = client::VirtioBlkDriver::Create(client->get(), dopts);
  if (!driver) {
    std::fprintf(stderr, "error: %s\n", driver.error().message.c_str());
    return 1;
  }
  client::VirtioBlkDriver& d = **driver;
  if (idle) {
    // Attached, queues set up, no I/O (e.g. while the server is replaced: handoff benchmarks),
    // then one read to show that the device still serves this connection.
    std::this_thread::sleep_for(std::chrono::duration<double>(o.seconds));
    Status s = d.Read(0, 0, 0, o.block_size, 1);
    auto got = s.ok() ? d.WaitFor(0, 1, std::chrono::seconds(10))
                      : Result<std::vector<client::BlkCompletion>>(s.error());
    bool ok = got.ok() && got->size() == 1 && (*got)[0].status == 0;
    std::printf("idle for %.1f s; one read afterwards: %s\n", o.seconds,
                ok ? "ok" : (got.ok() ? "failed" : got.error().message.c_str()));
    return ok ? 0 : 1;
  }
  uint64_t disk = d.capacity_sectors() * 512;
  uint64_t span = o.span_bytes != 0 ? std::min(o.span_bytes, disk) : disk;
  uint64_t blocks = span / o.block_size;
  if (blocks == 0) {
    std::fprintf(stderr, "error: the disk is smaller than one block\n");
    return 1;
  }
  bool writes_possible = o.pattern != "randread" && o.pattern != "read";
  if (writes_possible && (d.features() & (1ull << 5))) {
    std::fprintf(stderr, "error: the device is read-only\n");
    return 1;
  }
  std::mt19937_64 rng(42);
  uint64_t next_seq = 0;
  std::vector<std::chrono::steady_clock::time_point> started(o.queue_depth);
  std::vector<double> latencies_us;
  latencies_us.reserve(1 << 20);
  uint64_t reads = 0, writes = 0, errors = 0;
  auto submit = [&](uint16_t slot) -> bool {
    uint64_t block = sequential ? (next_seq++ % blocks) : (rng() % blocks);
    bool write = o.pattern == "write" || o.pattern == "randwrite" ||
                 (o.pattern == "randrw" && rng() % 100 >= o.read_percent);
    uint64_t sector = block * (o.block_size / 512);
    started[slot] = std::chrono::steady_clock::now();
    Status s = write ? d.Write(0, slot, sector, o.block_size, slot)
                     : d.Read(0, slot, sector, o.block_size, slot);
    (write ? writes : reads)++;
    return s.ok();
  };
  for (uint16_t s = 0; s < o.queue_depth; ++s) {
    if (!submit(s)) {
      std::fprintf(stderr, "error: cannot submit\n");
      return 1;
    }
  }
  auto begin = std::chrono::steady_clock::now();
  auto end = begin + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                         std::chrono::duration<double>(o.seconds));
  std::vector<client::BlkCompletion> done;
  uint64_t completed = 0;
  size_t outstanding = o.queue_depth;
  bool stopping = false;
  auto last_progress = begin;
  while (outstanding > 0) {
    done.clear();
    d.Poll(0, &done);
    auto now = std::chrono::steady_clock::now();
    if (done.empty()) {
      if (now - last_progress > std::chrono::seconds(10)) {
        std::fprintf(stderr, "error: no completion for 10 s\n");
        d.Abandon();
        return 1;
      }
      continue;
    }
    last_progress = now;
    if (now >= end) stopping = true;
    for (const auto& c : done) {
      uint16_t slot = static_cast<uint16_t>(c.tag);
      latencies_us.push_back(
          std::chrono::duration<double, std::micro>(now - started[slot]).count());
      if (c.status != 0) ++errors;
      ++completed;
      // Past the deadline (or if a submit fails) the slot retires instead of going again.
      if (stopping || !submit(slot)) --outstanding;
    }
  }
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  std::sort(latencies_us.begin(), latencies_us.end());
  auto pct = [&](double p) {
    return latencies_us.empty()
               ? 0.0
               : latencies_us[std::min(latencies_us.size() - 1,
                                       static_cast<size_t>(p * latencies_us.size()))];
  };
  double iops = completed / elapsed;
  std::printf(
      "%s bs=%u qd=%u: %.0f IOPS, %.1f MiB/s over %.2f s (%llu reads, %llu writes, %llu errors)\n",
      o.pattern.c_str(), o.block_size, o.queue_depth, iops, iops * o.block_size / (1024.0 * 1024.0),
      elapsed, static_cast<unsigned long long>(reads), static_cast<unsigned long long>(writes),
      static_cast<unsigned long long>(errors));
  std::printf("latency us: p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f\n", pct(0.50),
              pct(0.90), pct(0.99), pct(0.999), latencies_us.empty() ? 0.0 : latencies_us.back());
  return errors == 0 ? 0 : 1;
}

}  // namespace

namespace {

int Main(int argc, char** argv) {
  CLI::App app{"vfio-user-ctl: inspect vfio-user devices"};
  app.require_subcommand(1);
  bool show_version = false;
  app.add_flag("--version", show_version, "print the version and exit");
  std::string socket;
  auto* info = app.add_subcommand("info", "describe the device behind a vfio-user socket");
  info->add_option("socket", socket, "the device's vfio-user socket")->required();
  std::string bench_socket;
  BenchOptions bench;
  auto* bench_cmd = app.add_subcommand("bench", "drive a virtio-blk device and measure it");
  bench_cmd->add_option("socket", bench_socket, "the device's vfio-user socket")->required();
  bench_cmd->add_option("--bs", bench.block_size, "block size in bytes")->capture_default_str();
  bench_cmd->add_option("--qd", bench.queue_depth, "queue depth (1..256)")->capture_default_str();
  bench_cmd
      ->add_option("--rw", bench.pattern,
                   "randread, randwrite, read, write, randrw, or idle (attach, do no I/O for "
                   "--duration, then one read)")
      ->capture_default_str();
  bench_cmd->add_option("--read-percent", bench.read_percent, "reads in % with --rw randrw")
      ->capture_default_str();
  bench_cmd->add_option("--duration", bench.seconds, "seconds to run")->capture_default_str();
  bench_cmd->add_option("--span", bench.span_bytes, "bytes of the disk to use (0: all)")
      ->capture_default_str();
  std::string control_socket = "/var/run/vfio-user/control.sock";
  ControlOptions control;
  auto* list_cmd = app.add_subcommand("list", "list a server's devices (control API)");
  list_cmd->add_option("--control-socket", control_socket, "the server's control socket")
      ->capture_default_str();
  list_cmd->add_option("--output,-o", control.output, "table or json")->capture_default_str();
  list_cmd->add_flag("--watch,-w", control.watch, "print the list again on every change");
  list_cmd
      ->add_option("--watch-seconds", control.watch_seconds,
                   "stop watching after this many seconds (0: until interrupted)")
      ->capture_default_str();
  std::string stats_id;
  auto* stats_cmd = app.add_subcommand("stats", "per-device counters (control API)");
  stats_cmd->add_option("id", stats_id, "one device (default: all)");
  stats_cmd->add_option("--control-socket", control_socket, "the server's control socket")
      ->capture_default_str();
  stats_cmd->add_option("--output,-o", control.output, "table or json")->capture_default_str();
  if (argc == 2 && std::string(argv[1]) == "--version") {
    std::printf("vfio-user-ctl %s\n", vfu::kVersion);
    return 0;
  }
  CLI11_PARSE(app, argc, argv);
  if (info->parsed()) return Info(socket);
  if (bench_cmd->parsed()) return Bench(bench_socket, bench);
  if (list_cmd->parsed()) return ListDevices(control_socket, control);
  if (stats_cmd->parsed()) return ShowStats(control_socket, stats_id, control);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fatal: %s\n", e.what());
    return 1;
  }
}
