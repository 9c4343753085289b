// virtio-blk data path: the real server stack (Reactor + DeviceEndpoint + Session +
// VirtioPciDevice + VirtioBlkDevice, on its own thread) driven by the userspace virtio-blk
// driver (server/client/virtio_blk_driver.h) from the benchmark thread, next to baselines
// measured in the same run. One poll thread on the server, one driver thread; on a 2-vCPU
// machine each is pinned to its own CPU (--no-pin turns that off).
//
// Figures (each printed in one table at the end, with the ratios):
//   1. null backend, 4 KiB reads, QD1 and QD32, server poll=busy, driver polls the used ring
//      (interrupts suppressed): IOPS and p50/p99 submit->completion latency.
//   2. "bare" baselines, with the same QD: (a) the same two-thread shape without our stack - one
//      SPSC request ring and one SPSC completion ring in shared memory, a spinning server thread
//      that completes each 4 KiB request without touching data; (b) the same driver and split
//      virtqueue served by a minimal loop (BareVirtqueue: no checks, no reactor, no counters).
//      Ratios ours/bare (target >= 0.8). (a) is the floor of any shared-ring design; (b) that
//      of a virtio split ring, so ours/(b) is what our stack costs over the ring format itself.
//      Rounds of ours and the baselines alternate (the idle side is parked, not spinning).
//   3. RAM backend (256 MiB), 4 KiB random reads at QD32 vs one thread memcpy-ing the same
//      random blocks (same sequence) from a memfd mapping of the same size into slot-shaped
//      buffers. Ratio (target >= 0.8).
//   4. Adaptive polling: (a) CPU time of the server thread (pthread_getcpuclockid) over 2 s
//      with a live driver (DRIVER_OK, queue enabled) and no I/O, as % of one core, for
//      adaptive / busy / interrupt (target for adaptive < 1 %); (b) wake-up latency: sleep 5 ms
//      (longer than the 200 us idle threshold), then submit one read (the driver kicks when
//      the device asks for it) and spin on the used ring until it completes; 200 samples,
//      p50/p99 for adaptive / busy / interrupt (target for adaptive <= 50 us), next to the
//      floor of any sleeping design on this machine: a thread blocked in read() on a unix socket
//      on the other CPU, woken by a 34-byte write, answering through shared memory (its samples
//      alternate with adaptive's, so both see the same machine state).
//
// The machine may be shared: every phase reports the CPU share its threads got (srv/drv) or
// the CPU other processes took ("other %"); round pairs in which a thread got < 95 % of a CPU
// are re-run (bounded) and left out of the ratio medians, and verdicts measured under
// contention say UNRELIABLE instead of MET/MISSED.
//
// Build and run:
//   cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release
//   ninja -C build-bench virtio_blk_bench && build-bench/tests/virtio_blk_bench
// Options: --quick (shorter phases), --no-pin, --profile=null1|null32|ram32 (only "ours" for
// 5 s, for perf, with the server's busy/idle round statistics) or ram32-bare (the bare loop). A
// full run takes 20-25 s on a quiet machine (up to ~50 s when contended rounds are re-run).
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>

#include "server/client/client.h"
#include "server/client/virtio_blk_driver.h"
#include "server/common/log.h"
#include "server/common/mapping.h"
#include "server/devices/device_factory.h"
#include "server/runtime/reactor.h"
#include "server/session/endpoint.h"
#include "server/virtio/virtio_pci.h"
#include "tests/bench/bare_rings.h"

namespace {

using namespace vfu;
using Clock = std::chrono::steady_clock;

constexpr uint32_t kBlock = 4096;
constexpr uint32_t kSectorsPerBlock = kBlock / 512;

bool g_pin = true;
double g_scale = 1.0;  // phase lengths (--quick: 0.4)

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "virtio_blk_bench: %s\n", what.c_str());
  std::exit(1);
}

void PinTo(int cpu) {
  if (g_pin) bench::PinThreadToCpu(cpu);
}

uint64_t ThreadCpuNs(pthread_t thread) {
  clockid_t id;
  if (pthread_getcpuclockid(thread, &id) != 0) return 0;
  timespec ts{};
  clock_gettime(id, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

std::chrono::nanoseconds Phase(double seconds) {
  return std::chrono::nanoseconds(static_cast<int64_t>(seconds * g_scale * 1e9));
}

// --- Latency bookkeeping --------------------------------------------------------------------

struct Stats {
  uint64_t ops = 0;
  double seconds = 0;
  // CPU time the two threads actually got in the measured window (-1: not measured). Below
  // ~95 % of the wall time the machine was contended and the figure is not representative.
  double srv_cpu_s = -1, drv_cpu_s = -1;
  double foreign_pct = -1;  // CPU used by other processes (and the host: steal), % of one CPU

  // Both threads got >= 95 % of a CPU over the window (what was measured of them).
  bool Uncontended() const {
    auto ok = [&](double cpu_s) { return cpu_s < 0 || cpu_s >= 0.95 * seconds; };
    return seconds > 0 && ok(srv_cpu_s) && ok(drv_cpu_s);
  }
  std::vector<uint32_t> lat_ns;  // one per completed request in the measured window

  double iops() const { return seconds > 0 ? static_cast<double>(ops) / seconds : 0; }
  double Pct(double p) {
    if (lat_ns.empty()) return 0;
    size_t i = static_cast<size_t>(p * static_cast<double>(lat_ns.size() - 1) + 0.5);
    std::nth_element(lat_ns.begin(), lat_ns.begin() + static_cast<ptrdiff_t>(i), lat_ns.end());
    return lat_ns[i] / 1000.0;
  }
  void Merge(const Stats& o) {
    ops += o.ops;
    seconds += o.seconds;
    if (o.srv_cpu_s >= 0) srv_cpu_s = (srv_cpu_s < 0 ? 0 : srv_cpu_s) + o.srv_cpu_s;
    if (o.drv_cpu_s >= 0) drv_cpu_s = (drv_cpu_s < 0 ? 0 : drv_cpu_s) + o.drv_cpu_s;
    lat_ns.insert(lat_ns.end(), o.lat_ns.begin(), o.lat_ns.end());
  }
};

uint64_t SelfCpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// CPU time of the server thread (if any) and of this thread over a window.
class CpuWindow {
 public:
  explicit CpuWindow(const pthread_t* server) : server_(server) {}
  void Start() {
    srv0_ = server_ != nullptr ? ThreadCpuNs(*server_) : 0;
    drv0_ = SelfCpuNs();
  }
  void Stop(Stats* st) {
    if (server_ != nullptr)
      st->srv_cpu_s = static_cast<double>(ThreadCpuNs(*server_) - srv0_) / 1e9;
    st->drv_cpu_s = static_cast<double>(SelfCpuNs() - drv0_) / 1e9;
  }

 private:
  const pthread_t* server_;
  uint64_t srv0_ = 0, drv0_ = 0;
};

// CPU time that other processes (and the hypervisor, as steal time) took over a window: the
// machine's non-idle time from /proc/stat minus this process's own CPU time.
class ForeignLoad {
 public:
  void Start() {
    busy0_ = MachineBusySeconds();
    self0_ = SelfSeconds();
    t0_ = Clock::now();
  }
  double StopPercent() const {
    double wall = std::chrono::duration<double>(Clock::now() - t0_).count();
    double other = (MachineBusySeconds() - busy0_) - (SelfSeconds() - self0_);
    return wall > 0 ? std::max(0.0, 100.0 * other / wall) : -1;
  }

 private:
  static double MachineBusySeconds() {
    FILE* f = std::fopen("/proc/stat", "r");
    if (f == nullptr) return 0;
    unsigned long long v[8] = {};
    int n = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                        &v[3], &v[4], &v[5], &v[6], &v[7]);
    std::fclose(f);
    if (n != 8) return 0;
    unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];  // all but idle, iowait
    return static_cast<double>(busy) / static_cast<double>(sysconf(_SC_CLK_TCK));
  }
  static double SelfSeconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
  }
  double busy0_ = 0, self0_ = 0;
  Clock::time_point t0_{};
};

uint32_t Ns(Clock::duration d) {
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  return ns > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(ns);
}

// --- The real server on its own thread --------------------------------------------------------

class Server {
 public:
  explicit Server(const std::string& spec) {
    char tmpl[] = "/tmp/vfu-blk-bench-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) Die("mkdtemp failed");
    dir_ = tmpl;
    socket_ = dir_ + "/d.sock";
    auto parsed = devices::ParseDeviceSpec(spec + ",socket=" + socket_);
    if (!parsed) Die("spec " + spec + ": " + parsed.error().message);
    auto device = devices::CreateDevice(*parsed);
    if (!device) Die("device " + spec + ": " + device.error().message);
    device_ = std::move(*device);
    pci_ = dynamic_cast<virtio::VirtioPciDevice*>(device_.get());
    endpoint_ = std::make_unique<DeviceEndpoint>("d", socket_, device_.get(), &reactor_);
    Status s = endpoint_->Start();
    if (!s.ok()) Die("endpoint: " + s.message());
    thread_ = std::thread([this] {
      PinTo(1);
      reactor_.Run();
    });
  }

  ~Server() {
    Resume();
    reactor_.Stop();
    thread_.join();
    endpoint_.reset();
    device_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  const std::string& socket() const { return socket_; }
  uint64_t cpu_ns() { return ThreadCpuNs(thread_.native_handle()); }
  const pthread_t* thread() {
    handle_ = thread_.native_handle();
    return &handle_;
  }

  void RunOnReactor(const std::function<void()>& fn) {
    std::promise<void> done;
    reactor_.Post([&] {
      fn();
      done.set_value();
    });
    done.get_future().wait();
  }

  // Parks the reactor thread in a blocking wait (no CPU) until Resume(), so that a busy-polling
  // server does not compete with a baseline for the two CPUs.
  void Pause() {
    if (paused_) return;
    paused_ = true;
    std::promise<void> parked;
    reactor_.Post([this, &parked] {
      parked.set_value();
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return !paused_flag_; });
      paused_flag_ = true;
      if (on_resume_) std::exchange(on_resume_, {})();
    });
    parked.get_future().wait();
  }
  // `first` (if any) runs on the reactor thread before it polls again.
  void Resume(std::function<void()> first = {}) {
    if (!paused_) return;
    paused_ = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      paused_flag_ = false;
      on_resume_ = std::move(first);
    }
    cv_.notify_all();
  }
  virtio::VirtioPciDevice* pci() { return pci_; }

  struct Counters {
    uint64_t kicks = 0, interrupts = 0, sleeps = 0;
    PollerStats poller;  // the device's poller (busy/idle rounds and time)
  };
  Counters counters() {
    Counters c;
    RunOnReactor([&] {
      if (pci_ != nullptr) {
        c.kicks = pci_->stats().kicks;
        c.interrupts = pci_->stats().interrupts;
      }
      c.sleeps = reactor_.sleeps();
      for (const auto& [name, stats] : reactor_.poller_stats()) c.poller = stats;
    });
    return c;
  }

 private:
  std::string dir_, socket_;
  Reactor reactor_;
  std::unique_ptr<VfioDevice> device_;
  virtio::VirtioPciDevice* pci_ = nullptr;
  std::unique_ptr<DeviceEndpoint> endpoint_;
  std::thread thread_;
  pthread_t handle_{};
  std::mutex mu_;
  std::condition_variable cv_;
  bool paused_ = false;              // benchmark thread's view
  bool paused_flag_ = true;          // guarded by mu_: the parked task waits while true
  std::function<void()> on_resume_;  // guarded by mu_
};

// A client connection with an initialised driver (DRIVER_OK, queue 0 live).
struct Guest {
  std::unique_ptr<client::Client> client;
  std::unique_ptr<client::VirtioBlkDriver> driver;

  // event_idx off + NO_INTERRUPT: the driver polls the used ring and the device never writes
  // the MSI-X eventfd (kept off, as in the figures recorded before the library's Poll stopped
  // re-arming used_event under suppression).
  static Guest Connect(const std::string& socket, bool interrupts_armed = false) {
    Guest g;
    auto c = client::Client::Connect(socket);
    if (!c) Die("connect: " + c.error().message);
    g.client = std::move(*c);
    client::VirtioBlkDriverOptions o;
    o.queues = 1;
    o.queue_size = 128;
    o.event_idx = interrupts_armed;
    auto d = client::VirtioBlkDriver::Create(g.client.get(), o);
    if (!d) Die("driver: " + d.error().message);
    g.driver = std::move(*d);
    if (!interrupts_armed) g.driver->SetInterruptsSuppressed(0, true);
    return g;
  }
};

// --- Ours: the driver against the server ------------------------------------------------------

// Block sequence shared by the RAM benchmark and its memcpy baseline.
std::vector<uint32_t> RandomBlocks(size_t n, uint32_t blocks) {
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<uint32_t> dist(0, blocks - 1);
  std::vector<uint32_t> v(n);
  for (auto& b : v) b = dist(rng);
  return v;
}

// Keeps `qd` reads of 4 KiB outstanding for `duration` (after `warmup`), recording each
// request's submit->completion latency. `blocks`: the block sequence (cycled).
Stats RunOurs(client::VirtioBlkDriver& d, int qd, std::chrono::nanoseconds warmup,
              std::chrono::nanoseconds duration, const std::vector<uint32_t>& blocks,
              const pthread_t* server_thread) {
  Stats st;
  CpuWindow cpu(server_thread);
  st.lat_ns.reserve(8'000'000);
  std::vector<client::BlkCompletion> done;
  done.reserve(256);
  std::vector<Clock::time_point> sent(static_cast<size_t>(qd));
  size_t next = 0;
  auto submit = [&](uint16_t slot) {
    uint32_t b = blocks[next++ % blocks.size()];
    sent[slot] = Clock::now();
    Status s = d.Read(0, slot, uint64_t{b} * kSectorsPerBlock, kBlock, slot);
    if (!s.ok()) Die("read: " + s.message());
  };
  for (int s = 0; s < qd; ++s) submit(static_cast<uint16_t>(s));
  const auto start = Clock::now();
  const auto measure_from = start + warmup;
  const auto end = measure_from + duration;
  bool measuring = false;
  Clock::time_point t_begin{};
  for (;;) {
    done.clear();
    if (d.Poll(0, &done) == 0) continue;
    auto now = Clock::now();
    if (!measuring && now >= measure_from) {
      measuring = true;
      t_begin = now;
      cpu.Start();
    }
    if (now >= end) {
      st.seconds = std::chrono::duration<double>(now - t_begin).count();
      cpu.Stop(&st);
      break;
    }
    for (const auto& c : done) {
      if (c.status != 0) Die("request failed with status " + std::to_string(c.status));
      auto slot = static_cast<uint16_t>(c.tag);
      if (measuring) {
        st.lat_ns.push_back(Ns(now - sent[slot]));
        ++st.ops;
      }
      submit(slot);
    }
  }
  // Drain what is still in flight (the last batch completed and was not resubmitted).
  int outstanding = qd - static_cast<int>(done.size());
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while (outstanding > 0 && Clock::now() < deadline) {
    done.clear();
    outstanding -= static_cast<int>(d.Poll(0, &done));
  }
  if (outstanding > 0) Die("requests did not drain");
  return st;
}

// --- Bare baseline: an SPSC request ring + completion ring between two threads (bare_rings.h) --

Stats RunBare(int qd, std::chrono::nanoseconds warmup, std::chrono::nanoseconds duration) {
  bench::BareRingSetup setup;  // null: the device does not touch data
  setup.on_device_start = [] { PinTo(1); };
  auto ring = std::make_unique<bench::SpscRing>(setup);
  Stats st;
  CpuWindow cpu(ring->thread());
  st.lat_ns.reserve(8'000'000);
  std::vector<Clock::time_point> sent(static_cast<size_t>(qd));
  uint64_t next = 0;
  auto submit = [&](uint64_t slot) {
    sent[slot] = Clock::now();
    ring->Submit(static_cast<uint32_t>(slot), (next++ * kSectorsPerBlock) & 0xfffff);
  };
  for (int s = 0; s < qd; ++s) submit(static_cast<uint64_t>(s));
  const auto start = Clock::now();
  const auto measure_from = start + warmup;
  const auto end = measure_from + duration;
  bool measuring = false;
  Clock::time_point t_begin{};
  std::vector<uint64_t> done;
  done.reserve(256);
  int outstanding = qd;
  for (;;) {
    done.clear();
    if (ring->Poll([&](uint32_t slot) { done.push_back(slot); }) == 0) continue;
    outstanding -= static_cast<int>(done.size());
    auto now = Clock::now();
    if (!measuring && now >= measure_from) {
      measuring = true;
      t_begin = now;
      cpu.Start();
    }
    if (now >= end) {
      st.seconds = std::chrono::duration<double>(now - t_begin).count();
      cpu.Stop(&st);
      break;
    }
    for (uint64_t slot : done) {
      if (measuring) {
        st.lat_ns.push_back(Ns(now - sent[slot]));
        ++st.ops;
      }
      submit(slot);
      ++outstanding;
    }
  }
  while (outstanding > 0) outstanding -= static_cast<int>(ring->Poll([](uint32_t) {}));
  return st;
}

// --- Bare split-virtqueue baseline: the same driver and rings, served by a minimal loop -------

// What any device serving these rings must do per request, and nothing else: read avail->idx
// and the ring entry, walk the three descriptors (header, data, status), read the request
// header, write the status byte, the used element and used->idx. No address checks, no
// request validation, no counters, no reactor: the floor for a split-virtqueue device, against
// which "ours" measures what the stack adds. It serves the rings of a driver whose own server is
// parked, starting from the indices the rings hold at rest.
class BareVirtqueue {
 public:
  // With `disk`, reads copy their blocks from it (a RAM disk); without, nothing moves (null).
  explicit BareVirtqueue(const client::VirtioBlkDriver::RingView& view,
                         const uint8_t* disk = nullptr)
      : v_(view), disk_(disk) {
    used_idx_ = __atomic_load_n(reinterpret_cast<uint16_t*>(v_.used + 2), __ATOMIC_ACQUIRE);
    last_avail_ = used_idx_;  // at rest: everything made available was completed
    server_ = std::thread([this] {
      PinTo(1);
      Serve();
    });
  }
  ~BareVirtqueue() { Stop(); }
  const pthread_t* thread() {
    handle_ = server_.native_handle();
    return &handle_;
  }
  void Stop() {
    stop_.store(true);
    if (server_.joinable()) server_.join();
  }
  // The indices to hand back to the parked device (read after Stop).
  uint16_t last_avail() const { return last_avail_; }
  uint16_t used_idx() const { return used_idx_; }

 private:
  struct Desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
  };
  uint8_t* Host(uint64_t iova) const { return v_.memory + (iova - v_.iova_base); }

  void Serve() {
    const uint16_t mask = static_cast<uint16_t>(v_.size - 1);
    while (!stop_.load(std::memory_order_relaxed)) {
      const uint16_t avail =
          __atomic_load_n(reinterpret_cast<uint16_t*>(v_.avail + 2), __ATOMIC_ACQUIRE);
      while (last_avail_ != avail) {
        uint16_t head;
        std::memcpy(&head, v_.avail + 4 + 2 * (last_avail_ & mask), 2);
        Desc d[3];
        std::memcpy(&d[0], v_.desc + 16 * head, 16);
        std::memcpy(&d[1], v_.desc + 16 * d[0].next, 16);
        std::memcpy(&d[2], v_.desc + 16 * d[1].next, 16);
        bench::ServeBlkRead(disk_, Host(d[0].addr), Host(d[1].addr), d[1].len, Host(d[2].addr));
        uint8_t* elem = v_.used + 4 + 8 * (used_idx_ & mask);
        const uint32_t id = head, len = d[1].len + 1;
        std::memcpy(elem, &id, 4);
        std::memcpy(elem + 4, &len, 4);
        ++used_idx_;
        __atomic_store_n(reinterpret_cast<uint16_t*>(v_.used + 2), used_idx_, __ATOMIC_RELEASE);
        ++last_avail_;
      }
    }
  }

  client::VirtioBlkDriver::RingView v_;
  const uint8_t* disk_;
  uint16_t last_avail_ = 0;
  uint16_t used_idx_ = 0;
  std::atomic<bool> stop_{false};
  std::thread server_;
  pthread_t handle_{};
};

// A driver for BareVirtqueue: set up against a real server, which is then parked so that only
// the bare loop serves the rings; on destruction the device takes the rings back at the indices
// the bare loop left.
class BareVirtqueueDriver {
 public:
  explicit BareVirtqueueDriver(const std::string& spec)
      : server_(spec), guest_(Guest::Connect(server_.socket())) {
    server_.Pause();
  }
  ~BareVirtqueueDriver() {
    server_.Resume([this] {
      if (virtio::SplitVirtqueue* vq = server_.pci()->queue(0)) vq->set_indices(last_avail_, used_);
    });
  }

  // One RunOurs of the bare loop over this driver's rings (`disk`: copy reads from this RAM
  // disk; none: the null backend's work).
  Stats Run(int qd, std::chrono::nanoseconds warmup, std::chrono::nanoseconds duration,
            const std::vector<uint32_t>& blocks, const uint8_t* disk = nullptr) {
    BareVirtqueue loop(guest_.driver->ring_view(0), disk);
    Stats st = RunOurs(*guest_.driver, qd, warmup, duration, blocks, loop.thread());
    loop.Stop();
    last_avail_ = loop.last_avail();
    used_ = loop.used_idx();
    return st;
  }

 private:
  Server server_;
  Guest guest_;
  uint16_t last_avail_ = 0, used_ = 0;
};

// --- memcpy baseline for the RAM backend ------------------------------------------------------

struct MemfdMapping {
  uint8_t* data = nullptr;
  size_t size = 0;
  explicit MemfdMapping(size_t bytes) : size(bytes) {
    int fd = ::memfd_create("vfu-bench", MFD_CLOEXEC);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(bytes)) != 0) Die("memfd");
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) Die("mmap");
    data = static_cast<uint8_t*>(p);
  }
  ~MemfdMapping() { ::munmap(data, size); }
};

// Writes the whole disk (128 KiB writes) so that reads do not fault pages in (or, in a RAM
// backend, read the shared zero page).
void PopulateDisk(client::VirtioBlkDriver& driver, uint64_t disk_bytes) {
  for (uint64_t off = 0; off < disk_bytes; off += 128 * 1024) {
    std::memset(driver.slot_buffer(0, 0), static_cast<int>(off >> 17), 128 * 1024);
    if (!driver.Write(0, 0, off / 512, 128 * 1024, 0).ok()) Die("write");
    if (!driver.WaitFor(0, 1, std::chrono::seconds(5)).ok()) Die("write timeout");
  }
}

// A RAM disk for the baselines: the same kind of memory as the `ram` backend's (anonymous, advised
// for transparent huge pages), with one byte written per 4 KiB so that every page is populated.
struct RamDisk {
  MemoryMapping memory;
  explicit RamDisk(size_t bytes) {
    auto m = MemoryMapping::MapAnonymous(bytes, /*prefer_huge_pages=*/true);
    if (!m) Die("anonymous mapping for a RAM disk");
    memory = std::move(*m);
    for (size_t i = 0; i < bytes; i += 4096) memory.data()[i] = static_cast<uint8_t>(i >> 12);
  }
  const uint8_t* data() const { return memory.data(); }
};

// One thread copies the same 4 KiB blocks (same sequence) from a memfd "disk" of the same size
// into 32 slot buffers laid out like the driver's (stride 132 KiB, 64-byte meta before each).
Stats RunMemcpy(uint64_t disk_bytes, int qd, std::chrono::nanoseconds warmup,
                std::chrono::nanoseconds duration, const std::vector<uint32_t>& blocks) {
  RamDisk disk(disk_bytes);
  constexpr size_t kStride = 135168;  // RoundUp(64 + 128 KiB, 4096), as in the driver
  MemfdMapping slots(kStride * static_cast<size_t>(qd));
  std::memset(slots.data, 0, slots.size);
  Stats st;
  CpuWindow cpu(nullptr);
  size_t next = 0;
  const auto start = Clock::now();
  const auto measure_from = start + warmup;
  const auto end = measure_from + duration;
  Clock::time_point t_begin{};
  bool measuring = false;
  for (;;) {
    // Check the clock once per 64 copies.
    for (int i = 0; i < 64; ++i) {
      uint32_t b = blocks[next % blocks.size()];
      uint8_t* dst = slots.data + (next % static_cast<size_t>(qd)) * kStride + 64;
      std::memcpy(dst, disk.data() + uint64_t{b} * kBlock, kBlock);
      benchmark::ClobberMemory();
      ++next;
      if (measuring) ++st.ops;
    }
    auto now = Clock::now();
    if (!measuring && now >= measure_from) {
      measuring = true;
      t_begin = now;
      cpu.Start();
    }
    if (now >= end) {
      st.seconds = std::chrono::duration<double>(now - t_begin).count();
      cpu.Stop(&st);
      break;
    }
  }
  return st;
}

// --- Adaptive polling: idle CPU and wake-up latency ---------------------------------------------

double IdleCpuPercent(const std::string& mode, double seconds, Server::Counters* counters,
                      double* foreign_pct) {
  Server server("virtio-blk,id=d,backend=null,size=1G,poll=" + mode);
  Guest g = Guest::Connect(server.socket());
  // One request so that the queue has seen traffic, then let it settle.
  if (!g.driver->Read(0, 0, 0, kBlock, 1).ok()) Die("read");
  if (!g.driver->WaitFor(0, 1, std::chrono::seconds(5)).ok()) Die("no completion");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto before = server.counters();
  ForeignLoad foreign;
  foreign.Start();
  uint64_t c0 = server.cpu_ns();
  auto t0 = Clock::now();
  std::this_thread::sleep_for(Phase(seconds));
  uint64_t c1 = server.cpu_ns();
  auto t1 = Clock::now();
  *foreign_pct = foreign.StopPercent();
  auto after = server.counters();
  counters->sleeps = after.sleeps - before.sleeps;
  counters->kicks = after.kicks - before.kicks;
  double wall = std::chrono::duration<double>(t1 - t0).count();
  return 100.0 * static_cast<double>(c1 - c0) / 1e9 / wall;
}

// The floor for any design that sleeps: a thread on the other CPU blocked in read() on a unix
// socket is sent a 34-byte message (the size of a posted virtio kick) after an idle period, and
// answers through shared memory, which the sending thread spins on.
class SocketWakeFloor {
 public:
  SocketWakeFloor() {
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv_) != 0) Die("socketpair");
    responder_ = std::thread([this] {
      PinTo(1);
      uint8_t msg[34];
      for (;;) {
        size_t have = 0;
        while (have < sizeof(msg)) {
          ssize_t n = ::read(sv_[1], msg + have, sizeof(msg) - have);
          if (n <= 0) return;
          have += static_cast<size_t>(n);
        }
        if (msg[0] == 'q') return;
        answered_.fetch_add(1, std::memory_order_release);
      }
    });
  }
  ~SocketWakeFloor() {
    uint8_t msg[34] = {'q'};
    (void)!::write(sv_[0], msg, sizeof(msg));
    responder_.join();
    ::close(sv_[0]);
    ::close(sv_[1]);
  }
  // One wake-up, recorded in stats(): the time from the write until the answer is seen.
  void Sample() {
    uint8_t msg[34] = {'k'};
    const uint32_t expected = ++sent_;
    auto t0 = Clock::now();
    if (::write(sv_[0], msg, sizeof(msg)) != static_cast<ssize_t>(sizeof(msg))) Die("write");
    while (answered_.load(std::memory_order_acquire) != expected) {
    }
    stats_.lat_ns.push_back(Ns(Clock::now() - t0));
    ++stats_.ops;
  }
  Stats& stats() { return stats_; }

 private:
  Stats stats_;
  int sv_[2] = {-1, -1};
  std::atomic<uint32_t> answered_{0};
  uint32_t sent_ = 0;
  std::thread responder_;
};

// Wake-up latency of our stack in `mode`: sleep `idle`, submit one read, spin until it
// completes. With `floor`, each sample of ours is followed by one of the floor (after the same
// idle time), so that both see the same machine state: on this VM the cost of waking an idle
// vCPU drifts between runs (p90 from ~70 us to ~220 us for the same bare program).
Stats WakeLatency(const std::string& mode, int samples, std::chrono::microseconds idle,
                  Server::Counters* counters, SocketWakeFloor* floor = nullptr) {
  Server server("virtio-blk,id=d,backend=null,size=1G,poll=" + mode);
  Guest g = Guest::Connect(server.socket());
  std::vector<client::BlkCompletion> done;
  done.reserve(16);
  Stats st;
  auto before = server.counters();
  ForeignLoad foreign;
  foreign.Start();
  auto t_all = Clock::now();
  for (int i = 0; i < samples; ++i) {
    std::this_thread::sleep_for(idle);
    auto t0 = Clock::now();
    if (!g.driver->Read(0, 0, static_cast<uint64_t>(i) * kSectorsPerBlock, kBlock, 1).ok())
      Die("read");
    done.clear();
    auto deadline = t0 + std::chrono::seconds(5);
    while (g.driver->Poll(0, &done) == 0) {
      if (Clock::now() > deadline) Die("no completion after idle (" + mode + ")");
    }
    st.lat_ns.push_back(Ns(Clock::now() - t0));
    ++st.ops;
    if (floor != nullptr) {
      std::this_thread::sleep_for(idle);
      floor->Sample();
    }
  }
  st.seconds = std::chrono::duration<double>(Clock::now() - t_all).count();
  st.foreign_pct = foreign.StopPercent();
  if (floor != nullptr) {
    floor->stats().seconds = st.seconds;
    floor->stats().foreign_pct = st.foreign_pct;
  }
  auto after = server.counters();
  counters->sleeps = after.sleeps - before.sleeps;
  counters->kicks = after.kicks - before.kicks;
  return st;
}

// --- Table ---------------------------------------------------------------------------------------

bool g_contended = false;

void Row(const char* name, Stats& s) {
  char srv[16] = "-", drv[16] = "-";
  auto share = [&](double cpu_s, char* out) {
    if (cpu_s < 0 || s.seconds <= 0) return;
    double pct = 100.0 * cpu_s / s.seconds;
    if (pct < 95) g_contended = true;
    std::snprintf(out, 16, "%.0f%%", pct);
  };
  share(s.srv_cpu_s, srv);
  share(s.drv_cpu_s, drv);
  std::printf("  %-44s %10.0f %9.2f %9.2f %10llu %5s %5s\n", name, s.iops(), s.Pct(0.50),
              s.Pct(0.99), static_cast<unsigned long long>(s.ops), srv, drv);
}

// A target's verdict; figures measured while other processes took the CPUs say so instead.
const char* Verdict(bool ok, bool reliable = true) {
  if (!reliable) return "UNRELIABLE (contended)";
  return ok ? "MET" : "MISSED";
}

// Per-round ratio of ours to its baseline, and whether both sides had their CPUs.
struct RoundRatio {
  double ratio;
  bool clean;
};

// Median over the clean rounds (over all of them when none was clean).
double MedianRatio(const std::vector<RoundRatio>& rounds, bool* reliable) {
  std::vector<double> v;
  for (const auto& r : rounds)
    if (r.clean) v.push_back(r.ratio);
  *reliable = !v.empty();
  if (v.empty())
    for (const auto& r : rounds) v.push_back(r.ratio);
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

std::string RoundList(const std::vector<RoundRatio>& rounds) {
  std::string out;
  for (const auto& r : rounds) {
    char b[24];
    std::snprintf(b, sizeof(b), " %.2f%s", r.ratio, r.clean ? "" : "*");
    out += b;
  }
  return out;
}

// Share of all CPUs that were busy (any process) over `seconds`, from /proc/stat.
double MachineBusyPercent(double seconds) {
  auto sample = [](uint64_t* total, uint64_t* idle) {
    FILE* f = std::fopen("/proc/stat", "r");
    unsigned long long v[8] = {};
    if (f == nullptr || std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
                                    &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) != 8) {
      if (f != nullptr) std::fclose(f);
      *total = *idle = 0;
      return;
    }
    std::fclose(f);
    *total = 0;
    for (unsigned long long x : v) *total += x;
    *idle = v[3] + v[4];
  };
  uint64_t t0, i0, t1, i1;
  sample(&t0, &i0);
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  sample(&t1, &i1);
  if (t1 <= t0) return -1;
  return 100.0 * (1.0 - static_cast<double>(i1 - i0) / static_cast<double>(t1 - t0));
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--no-pin") {
      g_pin = false;
    } else if (a == "--quick") {
      g_scale = 0.4;
    } else if (a.rfind("--profile=", 0) == 0) {
      // Only "ours" for 5 s, for perf: --profile=null1|null32|ram32; ram32-bare runs the bare
      // split-virtqueue loop with its RAM disk instead, to compare profiles.
      std::string what = a.substr(10);
      Log::SetLevel(LogLevel::kError);
      PinTo(0);
      if (what == "ram32-bare") {
        BareVirtqueueDriver bare_driver("virtio-blk,id=d,backend=null,size=256M,poll=busy");
        RamDisk disk(256u << 20);
        auto blocks = RandomBlocks(1 << 20, (256u << 20) / kBlock);
        Stats st = bare_driver.Run(32, Phase(0.1), Phase(5), blocks, disk.data());
        Row("ram32-bare", st);
        return 0;
      }
      bool ram_disk = what == "ram32";
      Server server(ram_disk ? "virtio-blk,id=d,backend=ram,size=256M,poll=busy"
                             : "virtio-blk,id=d,backend=null,size=1G,poll=busy");
      Guest g = Guest::Connect(server.socket());
      if (ram_disk) PopulateDisk(*g.driver, 256u << 20);
      auto blocks = RandomBlocks(1 << 20, (256u << 20) / kBlock);
      auto before = server.counters();
      Stats st = RunOurs(*g.driver, what == "null1" ? 1 : 32, Phase(0.1), Phase(5), blocks,
                         server.thread());
      Row(what.c_str(), st);
      std::printf("  requests per server-thread CPU second: %.0f\n",
                  static_cast<double>(st.ops) / st.srv_cpu_s);
      auto after = server.counters();
      const PollerStats& pa = after.poller;
      const PollerStats& pb = before.poller;
      double busy_rounds = static_cast<double>(pa.busy_polls - pb.busy_polls);
      double idle_rounds = static_cast<double>(pa.idle_polls - pb.idle_polls);
      std::printf(
          "  server rounds: %.0f busy (%.1f ns each), %.0f idle (%.1f ns each); "
          "time in Poll busy %.1f %%\n",
          busy_rounds, static_cast<double>(pa.busy_ns - pb.busy_ns) / busy_rounds, idle_rounds,
          static_cast<double>(pa.idle_ns - pb.idle_ns) / idle_rounds,
          100.0 * static_cast<double>(pa.busy_ns - pb.busy_ns) /
              static_cast<double>(pa.busy_ns - pb.busy_ns + pa.idle_ns - pb.idle_ns));
      return 0;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--quick] [--no-pin] [--profile=null1|null32|ram32|ram32-bare]\n",
                   argv[0]);
      return 2;
    }
  }
  Log::SetLevel(LogLevel::kError);
  const double busy_before = MachineBusyPercent(0.5);
  PinTo(0);
  const auto t_start = Clock::now();
  // Ours and its baseline alternate in short rounds, so that both see the same machine state
  // (on this VM the host moves the vCPUs around, which shifts cross-CPU latency several-fold);
  // the per-round ratios are printed and their median is the reported ratio.
  constexpr int kRounds = 6;
  // The machine is shared: a round pair in which a thread got < 95 % of a CPU is run again
  // (at most twice per round, kMaxRetries in all), and the table shows the CPU shares.
  constexpr int kMaxRetries = 24;
  int retries = 0;
  const auto warm = Phase(0.05);
  const auto round = Phase(0.25);

  // 1 + 2: null backend, busy polling, QD1 and QD32, against the bare SPSC ring and against a
  // bare loop over the same split virtqueue (a second driver, whose server stays parked while
  // the bare loop serves its rings).
  Stats ours[2], bare[2], bare_vq[2];
  std::vector<RoundRatio> null_ratios[2], vq_ratios[2];
  const int qds[2] = {1, 32};
  {
    auto null_blocks = RandomBlocks(1 << 16, (1u << 30) / kBlock);
    Server server("virtio-blk,id=d,backend=null,size=1G,poll=busy");
    Guest g = Guest::Connect(server.socket());
    BareVirtqueueDriver bare_driver("virtio-blk,id=d,backend=null,size=1G,poll=busy");
    for (int q = 0; q < 2; ++q) {
      for (int r = 0; r < kRounds; ++r) {
        Stats o, b, v;
        for (int attempt = 0;; ++attempt) {
          server.Resume();
          o = RunOurs(*g.driver, qds[q], warm, round, null_blocks, server.thread());
          server.Pause();
          b = RunBare(qds[q], warm, round);
          v = bare_driver.Run(qds[q], warm, round, null_blocks);
          bool clean = o.Uncontended() && b.Uncontended() && v.Uncontended();
          if (clean || attempt >= 2 || retries >= kMaxRetries) break;
          ++retries;
        }
        null_ratios[q].push_back({o.iops() / b.iops(), o.Uncontended() && b.Uncontended()});
        vq_ratios[q].push_back({o.iops() / v.iops(), o.Uncontended() && v.Uncontended()});
        ours[q].Merge(o);
        bare[q].Merge(b);
        bare_vq[q].Merge(v);
      }
    }
    server.Resume();
  }
  // Informational: EVENT_IDX negotiated and interrupts armed (the device writes the MSI-X
  // eventfd on each completion; the driver still polls), QD1.
  Stats armed;
  uint64_t armed_interrupts = 0;
  {
    auto null_blocks = RandomBlocks(1 << 16, (1u << 30) / kBlock);
    Server server("virtio-blk,id=d,backend=null,size=1G,poll=busy");
    Guest g = Guest::Connect(server.socket(), /*interrupts_armed=*/true);
    auto before = server.counters();
    armed = RunOurs(*g.driver, 1, warm, Phase(0.5), null_blocks, server.thread());
    armed_interrupts = server.counters().interrupts - before.interrupts;
  }

  // 3: RAM backend, random 4 KiB reads at QD32, against memcpy of the same blocks.
  constexpr uint64_t kDisk = 256ull << 20;
  Stats ram, copy, ram_vq;
  std::vector<RoundRatio> ram_ratios, ram_vq_ratios;
  {
    auto blocks = RandomBlocks(1 << 20, static_cast<uint32_t>(kDisk / kBlock));
    Server server("virtio-blk,id=d,backend=ram,size=256M,poll=busy");
    Guest g = Guest::Connect(server.socket());
    // The bare split-virtqueue loop with a RAM disk of its own (the backend's kind of memory).
    BareVirtqueueDriver bare_driver("virtio-blk,id=d,backend=null,size=256M,poll=busy");
    RamDisk vq_disk(kDisk);
    PopulateDisk(*g.driver, kDisk);
    for (int r = 0; r < kRounds; ++r) {
      Stats o, c, v;
      for (int attempt = 0;; ++attempt) {
        server.Resume();
        o = RunOurs(*g.driver, 32, warm, round, blocks, server.thread());
        server.Pause();
        c = RunMemcpy(kDisk, 32, warm, round, blocks);
        v = bare_driver.Run(32, warm, round, blocks, vq_disk.data());
        bool clean = o.Uncontended() && c.Uncontended() && v.Uncontended();
        if (clean || attempt >= 2 || retries >= kMaxRetries) break;
        ++retries;
      }
      ram_ratios.push_back({o.iops() / c.iops(), o.Uncontended() && c.Uncontended()});
      ram_vq_ratios.push_back({o.iops() / v.iops(), o.Uncontended() && v.Uncontended()});
      ram.Merge(o);
      copy.Merge(c);
      ram_vq.Merge(v);
    }
    server.Resume();
  }

  // 4a: idle CPU.
  const char* modes[3] = {"adaptive", "busy", "interrupt"};
  double idle_cpu[3], idle_foreign[3];
  Server::Counters idle_counters[3];
  for (int m = 0; m < 3; ++m)
    idle_cpu[m] = IdleCpuPercent(modes[m], m == 0 ? 2.0 : 1.0, &idle_counters[m], &idle_foreign[m]);

  // 4b: wake-up latency after 5 ms idle.
  Stats wake[3];
  Server::Counters wake_counters[3];
  const int wake_samples = g_scale < 1 ? 100 : 200;
  Stats wake_floor;  // sampled alternately with adaptive
  {
    SocketWakeFloor floor;
    for (int m = 0; m < 3; ++m) {
      wake[m] = WakeLatency(modes[m], wake_samples, std::chrono::microseconds(5000),
                            &wake_counters[m], m == 0 ? &floor : nullptr);
    }
    wake_floor = std::move(floor.stats());
  }

  // --- Report ---
  std::printf("\nvirtio-blk benchmark (%s, %u CPUs, pinned: %s), 4 KiB reads\n",
              g_scale < 1 ? "quick" : "full", std::thread::hardware_concurrency(),
              g_pin ? "yes" : "no");
  std::printf("  %-44s %10s %9s %9s %10s %5s %5s\n", "", "IOPS", "p50 us", "p99 us", "samples",
              "srv", "drv");
  Row("null QD1   ours (busy poll)", ours[0]);
  Row("null QD1   bare SPSC ring", bare[0]);
  Row("null QD32  ours (busy poll)", ours[1]);
  Row("null QD32  bare SPSC ring", bare[1]);
  Row("null QD1   bare split-virtqueue loop", bare_vq[0]);
  Row("null QD32  bare split-virtqueue loop", bare_vq[1]);
  Row("null QD1   ours, EVENT_IDX + irq armed (info)", armed);
  Row("ram QD32   ours random read (256 MiB)", ram);
  Row("ram QD32   memcpy same blocks, 1 thread", copy);
  Row("ram QD32   bare split-virtqueue loop + memcpy", ram_vq);
  std::printf(
      "\n  wake-up after 5 ms idle, %d samples (submit -> completion seen by the driver):\n",
      wake_samples);
  std::printf("  %-10s %9s %9s %9s %9s %7s %7s %8s\n", "mode", "p50 us", "p90 us", "p99 us",
              "max us", "kicks", "sleeps", "other %");
  for (int m = 0; m < 3; ++m) {
    std::printf("  %-10s %9.2f %9.2f %9.2f %9.2f %7llu %7llu %7.1f%%\n", modes[m], wake[m].Pct(0.5),
                wake[m].Pct(0.9), wake[m].Pct(0.99), wake[m].Pct(1.0),
                static_cast<unsigned long long>(wake_counters[m].kicks),
                static_cast<unsigned long long>(wake_counters[m].sleeps), wake[m].foreign_pct);
  }
  std::printf("  %-10s %9.2f %9.2f %9.2f %9.2f %7s %7s %7.1f%%\n", "floor*", wake_floor.Pct(0.5),
              wake_floor.Pct(0.9), wake_floor.Pct(0.99), wake_floor.Pct(1.0), "-", "-",
              wake_floor.foreign_pct);
  std::printf(
      "  (* no server stack: a thread blocked in read() on a unix socket on the other CPU,\n"
      "     woken by a 34-byte write, answers through shared memory; its samples alternate\n"
      "     with adaptive's)\n");
  std::printf(
      "\n  idle server thread CPU (driver live, no I/O; adaptive over %.1f s, others %.1f s):\n",
      2.0 * g_scale, 1.0 * g_scale);
  for (int m = 0; m < 3; ++m) {
    std::printf(
        "  %-10s %9.3f %% of a core (reactor sleeps %llu; other processes %.1f %% of a CPU)\n",
        modes[m], idle_cpu[m], static_cast<unsigned long long>(idle_counters[m].sleeps),
        idle_foreign[m]);
  }
  std::printf(
      "  (\"other %%\": CPU time of other processes and steal, %% of one CPU; srv/drv: CPU\n"
      "   share of the server / driver thread; rounds re-run for contention: %d)\n",
      retries);
  std::printf("  (armed-interrupt run: %llu MSI-X eventfd writes for %llu requests)\n",
              static_cast<unsigned long long>(armed_interrupts),
              static_cast<unsigned long long>(armed.ops));

  bool ok_qd1, ok_qd32, ok_ram, ok_vq1, ok_vq32, ok_ram_vq;
  double r_ram_vq = MedianRatio(ram_vq_ratios, &ok_ram_vq);
  double r_qd1 = MedianRatio(null_ratios[0], &ok_qd1);
  double r_qd32 = MedianRatio(null_ratios[1], &ok_qd32);
  double r_vq1 = MedianRatio(vq_ratios[0], &ok_vq1);
  double r_vq32 = MedianRatio(vq_ratios[1], &ok_vq32);
  double r_ram = MedianRatio(ram_ratios, &ok_ram);
  double spdk = ours[1].iops() / 1.8e6;
  std::printf(
      "\n  ratios (median of the per-round ratios; rounds in brackets, * = contended round,"
      " left out of the median) and targets:\n");
  std::printf("  %-44s %8.3f  target >= 0.8: %-6s [%s ]\n", "null QD1  IOPS ours/bare", r_qd1,
              Verdict(r_qd1 >= 0.8, ok_qd1), RoundList(null_ratios[0]).c_str());
  std::printf("  %-44s %8.3f  target >= 0.8: %-6s [%s ]\n", "null QD32 IOPS ours/bare", r_qd32,
              Verdict(r_qd32 >= 0.8, ok_qd32), RoundList(null_ratios[1]).c_str());
  std::printf("  %-44s %8.3f  target >= 0.8: %-6s [%s ]\n", "null QD1  IOPS ours/bare virtqueue",
              r_vq1, Verdict(r_vq1 >= 0.8, ok_vq1), RoundList(vq_ratios[0]).c_str());
  std::printf("  %-44s %8.3f  target >= 0.8: %-6s [%s ]\n", "null QD32 IOPS ours/bare virtqueue",
              r_vq32, Verdict(r_vq32 >= 0.8, ok_vq32), RoundList(vq_ratios[1]).c_str());
  std::printf("  %-44s %8.3f  (p50 latency, all rounds)\n", "null QD1  p50 bare/ours",
              bare[0].Pct(0.5) / ours[0].Pct(0.5));
  std::printf("  %-44s %8.3f  (p50 latency, all rounds)\n", "null QD32 p50 bare/ours",
              bare[1].Pct(0.5) / ours[1].Pct(0.5));
  std::printf("  %-44s %8.3f  (SPDK vfio-user anchor ~1.8 M IOPS/core; informational)\n",
              "null QD32 IOPS ours / 1.8 M", spdk);
  std::printf("  %-44s %8.3f  target >= 0.8: %-6s [%s ]\n", "ram QD32 IOPS ours/memcpy", r_ram,
              Verdict(r_ram >= 0.8, ok_ram), RoundList(ram_ratios).c_str());
  std::printf("  %-44s %8.3f  target >= 0.8: %-6s [%s ]\n", "ram QD32 IOPS ours/bare virtqueue",
              r_ram_vq, Verdict(r_ram_vq >= 0.8, ok_ram_vq), RoundList(ram_vq_ratios).c_str());
  const bool wake_ok = wake[0].foreign_pct >= 0 && wake[0].foreign_pct < 10;
  std::printf("  %-44s %8.3f %%  target < 1 %%: %s   (busy %.1f %%)\n", "adaptive idle CPU",
              idle_cpu[0], Verdict(idle_cpu[0] < 1.0), idle_cpu[1]);
  std::printf("  %-44s %8.2f us target <= 50 us: %s   (busy %.2f, interrupt %.2f, floor %.2f)\n",
              "adaptive wake-up p50", wake[0].Pct(0.5), Verdict(wake[0].Pct(0.5) <= 50, wake_ok),
              wake[1].Pct(0.5), wake[2].Pct(0.5), wake_floor.Pct(0.5));
  std::printf("  %-44s %8.2f us target <= 50 us: %s   (busy %.2f, interrupt %.2f, floor %.2f)\n",
              "adaptive wake-up p99", wake[0].Pct(0.99), Verdict(wake[0].Pct(0.99) <= 50, wake_ok),
              wake[1].Pct(0.99), wake[2].Pct(0.99), wake_floor.Pct(0.99));
  std::printf("  %-44s %8.2f us (p90 %.2f us; informational: what the stack adds to the floor)\n",
              "adaptive wake-up p50 minus floor p50", wake[0].Pct(0.5) - wake_floor.Pct(0.5),
              wake[0].Pct(0.9) - wake_floor.Pct(0.9));
  if (wake_floor.Pct(0.5) > 50) {
    std::printf(
        "  (the floor sampled with adaptive, %.2f us p50, is above the 50 us target: no design\n"
        "   that sleeps can meet it on this machine; busy polling answers in %.2f us)\n",
        wake_floor.Pct(0.5), wake[1].Pct(0.5));
  }
  std::printf("\n  machine busy before the run: %.0f %% of all CPUs (other processes)\n",
              busy_before);
  if (g_contended) {
    std::printf(
        "  WARNING: a benchmark thread got < 95 %% of a CPU in some phase (srv/drv columns):"
        " the machine was contended and those figures are not representative.\n");
  }
  std::printf("\n  total run time %.1f s\n",
              std::chrono::duration<double>(Clock::now() - t_start).count());
  return 0;
}
