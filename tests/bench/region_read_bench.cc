// REGION_READ round-trip latency: the real client library against the real server (Reactor +
// DeviceEndpoint + Session + SampleDevice on its own thread, over a unix socket), next to a raw
// AF_UNIX SOCK_STREAM ping-pong between two threads with the same message sizes (32-byte
// request, 36-byte reply) and plain blocking read/write, measured in the same run.
//
// Two mixed variants split the overhead between the two sides:
//   ClientLib_RawEcho   the real client library against a raw blocking echo thread that answers
//                       with a well-formed 36-byte REGION_READ reply
//   RawClient_Server    raw blocking write/read of the 32/36-byte messages against the real server
//
// Every benchmark records each iteration's latency (steady_clock) and reports mean/p50/p99 in
// microseconds as counters; the non-raw ones also report ratio_p50 / ratio_mean against the raw
// ping-pong of the same run (which is registered, and so runs, first). Interleaved runs both
// paths alternately in blocks of 1000 round trips (same machine conditions for both) and
// reports both sets of percentiles and their ratio: the headline figure. A summary table is
// printed at the end. The whole binary takes about 25-35 s.
//
// Build and run (see docs/performance.md): build with the default options (RelWithDebInfo, no
// sanitizers), then `build/tests/region_read_bench`; `taskset -c 0 build/tests/region_read_bench`
// puts all threads on one CPU, which keeps cross-CPU wake-up costs of the VM out of the numbers.
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>

#include "server/client/client.h"
#include "server/common/log.h"
#include "server/devices/sample_device.h"
#include "server/protocol/codec.h"
#include "server/protocol/wire.h"
#include "server/runtime/reactor.h"
#include "server/session/endpoint.h"
#include "server/transport/unix_socket.h"

namespace {

using namespace vfu;
using Clock = std::chrono::steady_clock;

constexpr size_t kRequestSize = sizeof(wire::Header) + sizeof(wire::RegionAccess);  // 32
constexpr size_t kReplySize = kRequestSize + sizeof(uint32_t);                      // 36
static_assert(kRequestSize == 32 && kReplySize == 36);

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "region_read_bench: %s\n", what.c_str());
  std::exit(1);
}

bool ReadExact(int fd, void* buf, size_t len) {
  auto* p = static_cast<uint8_t*>(buf);
  size_t have = 0;
  while (have < len) {
    ssize_t n = ::read(fd, p + have, len - have);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    have += static_cast<size_t>(n);
  }
  return true;
}

bool WriteExact(int fd, const void* buf, size_t len) {
  const auto* p = static_cast<const uint8_t*>(buf);
  size_t done = 0;
  while (done < len) {
    ssize_t n = ::write(fd, p + done, len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

std::pair<UniqueFd, UniqueFd> BlockingPair() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) Die("socketpair failed");
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

// --- Latency bookkeeping --------------------------------------------------------------------

struct Summary {
  std::string name;
  uint64_t samples = 0;
  double mean_us = 0, p50_us = 0, p99_us = 0;
};
std::vector<Summary> g_summaries;  // last result per benchmark, in run order
const char* const kRawName = "RawPingPong";

const Summary* FindSummary(const std::string& name) {
  for (const Summary& s : g_summaries) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

class Latencies {
 public:
  explicit Latencies(benchmark::State& state) {
    samples_.reserve(
        static_cast<size_t>(std::min<benchmark::IterationCount>(state.max_iterations, 4'000'000)));
  }
  void Add(Clock::duration d) {
    samples_.push_back(
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()));
  }

  // Sets the counters and records the summary (the last run of a benchmark is the reported one).
  void Report(benchmark::State& state, const std::string& name) {
    if (samples_.empty()) return;
    std::sort(samples_.begin(), samples_.end());
    auto pct = [&](double p) {
      size_t i = static_cast<size_t>(p * static_cast<double>(samples_.size() - 1) + 0.5);
      return static_cast<double>(samples_[i]) / 1000.0;
    };
    double sum = 0;
    for (uint64_t v : samples_) sum += static_cast<double>(v);
    Summary s{name, samples_.size(), sum / static_cast<double>(samples_.size()) / 1000.0, pct(0.50),
              pct(0.99)};
    state.counters["mean_us"] = s.mean_us;
    state.counters["p50_us"] = s.p50_us;
    state.counters["p99_us"] = s.p99_us;
    if (name != kRawName) {
      if (const Summary* raw = FindSummary(kRawName)) {
        state.counters["ratio_p50"] = s.p50_us / raw->p50_us;
        state.counters["ratio_mean"] = s.mean_us / raw->mean_us;
      }
    }
    for (Summary& old : g_summaries) {
      if (old.name == name) {
        old = s;
        return;
      }
    }
    g_summaries.push_back(s);
  }

 private:
  std::vector<uint64_t> samples_;
};

// --- Peers ----------------------------------------------------------------------------------

// The real server stack on its own thread, in a fresh temporary directory.
class RealServer {
 public:
  RealServer() {
    char tmpl[] = "/tmp/vfu-bench-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) Die("mkdtemp failed");
    dir_ = tmpl;
    path_ = dir_ + "/sample.sock";
    auto dev = devices::SampleDevice::Create();
    if (!dev) Die("SampleDevice::Create: " + dev.error().message);
    device_ = std::move(*dev);
    reactor_ = std::make_unique<Reactor>();
    endpoint_ = std::make_unique<DeviceEndpoint>("bench0", path_, device_.get(), reactor_.get());
    Status s = endpoint_->Start();
    if (!s.ok()) Die("endpoint start: " + s.message());
    thread_ = std::thread([this] { reactor_->Run(); });
  }
  ~RealServer() {
    reactor_->Stop();
    thread_.join();
    endpoint_.reset();
    reactor_.reset();
    device_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string dir_, path_;
  std::unique_ptr<devices::SampleDevice> device_;
  std::unique_ptr<Reactor> reactor_;
  std::unique_ptr<DeviceEndpoint> endpoint_;
  std::thread thread_;
};

// Answers `kRequestSize`-byte requests with `kReplySize`-byte replies on a blocking socket until
// EOF. With `vfio_user` it first answers a VERSION request and then echoes each request's
// header as a well-formed REGION_READ reply carrying MAGIC; otherwise the reply bytes are fixed.
class EchoThread {
 public:
  EchoThread(UniqueFd fd, bool vfio_user) : fd_(std::move(fd)) {
    thread_ = std::thread([this, vfio_user] { Run(vfio_user); });
  }
  ~EchoThread() {
    ::shutdown(fd_.get(), SHUT_RDWR);
    thread_.join();
  }

 private:
  void Run(bool vfio_user) {
    if (vfio_user && !AnswerVersion()) return;
    uint8_t req[kRequestSize];
    uint8_t reply[kReplySize] = {};
    uint32_t magic = devices::SampleDevice::kMagic;
    std::memcpy(reply + kRequestSize, &magic, sizeof(magic));
    while (ReadExact(fd_.get(), req, sizeof(req))) {
      if (vfio_user) {
        wire::Header h;
        std::memcpy(&h, req, sizeof(h));
        h.msg_size = kReplySize;
        h.flags = wire::kFlagTypeReply;
        h.error_no = 0;
        std::memcpy(reply, &h, sizeof(h));
        std::memcpy(reply + sizeof(h), req + sizeof(h), sizeof(wire::RegionAccess));
      }
      if (!WriteExact(fd_.get(), reply, sizeof(reply))) return;
    }
  }
  bool AnswerVersion() {
    wire::Header h;
    if (!ReadExact(fd_.get(), &h, sizeof(h)) || h.msg_size < sizeof(h)) return false;
    std::vector<uint8_t> payload(h.msg_size - sizeof(h));
    if (!ReadExact(fd_.get(), payload.data(), payload.size())) return false;
    std::vector<uint8_t> out;
    proto::BeginMessage(out, h.msg_id, h.command, wire::kFlagTypeReply);
    proto::Append(out, wire::Version{0, 0});
    const char json[] = "{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":1048576}}";
    out.insert(out.end(), json, json + sizeof(json));
    proto::FinishMessage(out);
    return WriteExact(fd_.get(), out.data(), out.size());
  }

  UniqueFd fd_;
  std::thread thread_;
};

std::unique_ptr<client::Client> MustConnect(const std::string& path) {
  auto c = client::Client::Connect(path);
  if (!c) Die("client connect: " + c.error().message);
  return std::move(*c);
}

std::unique_ptr<client::Client> MustAttach(UniqueFd fd) {
  auto c = client::Client::Attach(UnixConnection(std::move(fd)));
  if (!c) Die("client attach: " + c.error().message);
  return std::move(*c);
}

// A raw REGION_READ request for MAGIC.
std::vector<uint8_t> MagicRequest(uint16_t msg_id) {
  std::vector<uint8_t> out;
  proto::BeginMessage(out, msg_id, static_cast<uint16_t>(wire::Command::kRegionRead), 0);
  proto::Append(out, wire::RegionAccess{devices::SampleDevice::kRegMagic, wire::kPciBar0RegionIndex,
                                        sizeof(uint32_t)});
  proto::FinishMessage(out);
  return out;
}

// --- Benchmarks -----------------------------------------------------------------------------

void BM_RawPingPong(benchmark::State& state) {
  auto [client, server] = BlockingPair();
  EchoThread echo(std::move(server), /*vfio_user=*/false);
  std::vector<uint8_t> req = MagicRequest(1);
  uint8_t reply[kReplySize];
  Latencies lat(state);
  for (auto _ : state) {
    auto t0 = Clock::now();
    if (!WriteExact(client.get(), req.data(), req.size()) ||
        !ReadExact(client.get(), reply, sizeof(reply))) {
      state.SkipWithError("raw ping-pong failed");
      break;
    }
    lat.Add(Clock::now() - t0);
  }
  lat.Report(state, kRawName);
}

void BM_RegionRead(benchmark::State& state) {
  RealServer server;
  auto c = MustConnect(server.path());
  Latencies lat(state);
  for (auto _ : state) {
    auto t0 = Clock::now();
    auto v = c->Read<uint32_t>(wire::kPciBar0RegionIndex, devices::SampleDevice::kRegMagic);
    lat.Add(Clock::now() - t0);
    if (!v || *v != devices::SampleDevice::kMagic) {
      state.SkipWithError("REGION_READ failed");
      break;
    }
  }
  lat.Report(state, "RegionRead");
}

void BM_ClientLib_RawEcho(benchmark::State& state) {
  auto [client_fd, server_fd] = BlockingPair();
  EchoThread echo(std::move(server_fd), /*vfio_user=*/true);
  auto c = MustAttach(std::move(client_fd));
  Latencies lat(state);
  for (auto _ : state) {
    auto t0 = Clock::now();
    auto v = c->Read<uint32_t>(wire::kPciBar0RegionIndex, devices::SampleDevice::kRegMagic);
    lat.Add(Clock::now() - t0);
    if (!v || *v != devices::SampleDevice::kMagic) {
      state.SkipWithError("REGION_READ against the echo thread failed");
      break;
    }
  }
  lat.Report(state, "ClientLib_RawEcho");
}

void BM_RawClient_Server(benchmark::State& state) {
  RealServer server;
  auto conn = UnixConnection::Connect(server.path());
  if (!conn) Die("connect: " + conn.error().message);
  int fd = conn->fd();
  {
    std::vector<uint8_t> payload;
    proto::Append(payload, wire::Version{0, 0});
    const char json[] = "{\"capabilities\":{\"max_msg_fds\":8}}";
    payload.insert(payload.end(), json, json + sizeof(json));
    std::vector<uint8_t> msg;
    proto::BeginMessage(msg, 0, static_cast<uint16_t>(wire::Command::kVersion), 0);
    msg.insert(msg.end(), payload.begin(), payload.end());
    proto::FinishMessage(msg);
    wire::Header h;
    if (!WriteExact(fd, msg.data(), msg.size()) || !ReadExact(fd, &h, sizeof(h))) Die("VERSION");
    std::vector<uint8_t> rest(h.msg_size - sizeof(h));
    if (!ReadExact(fd, rest.data(), rest.size()) || (h.flags & wire::kFlagError)) Die("VERSION");
  }
  std::vector<uint8_t> req = MagicRequest(1);
  uint8_t reply[kReplySize];
  uint16_t id = 1;
  Latencies lat(state);
  for (auto _ : state) {
    std::memcpy(req.data(), &id, sizeof(id));
    ++id;
    auto t0 = Clock::now();
    if (!WriteExact(fd, req.data(), req.size()) || !ReadExact(fd, reply, sizeof(reply))) {
      state.SkipWithError("raw client against the server failed");
      break;
    }
    lat.Add(Clock::now() - t0);
  }
  uint32_t magic;
  std::memcpy(&magic, reply + kRequestSize, sizeof(magic));
  if (magic != devices::SampleDevice::kMagic) state.SkipWithError("wrong MAGIC from the server");
  lat.Report(state, "RawClient_Server");
}

// Both paths in one benchmark, alternating in blocks of kBlock round trips, so that both see
// the same machine conditions over the run (other load on a small VM moves the absolute numbers
// a lot) while each block is a steady ping-pong. The ratio of this pair is the headline figure.
void BM_Interleaved(benchmark::State& state) {
  constexpr int64_t kBlock = 1000;
  auto [raw_client, raw_server] = BlockingPair();
  EchoThread echo(std::move(raw_server), /*vfio_user=*/false);
  std::vector<uint8_t> req = MagicRequest(1);
  uint8_t reply[kReplySize];
  RealServer server;
  auto c = MustConnect(server.path());
  Latencies raw_lat(state);
  Latencies our_lat(state);
  int64_t i = 0;
  for (auto _ : state) {
    bool raw_turn = (i++ / kBlock) % 2 == 0;
    auto t0 = Clock::now();
    if (raw_turn) {
      if (!WriteExact(raw_client.get(), req.data(), req.size()) ||
          !ReadExact(raw_client.get(), reply, sizeof(reply))) {
        state.SkipWithError("raw ping-pong failed");
        break;
      }
      raw_lat.Add(Clock::now() - t0);
    } else {
      auto v = c->Read<uint32_t>(wire::kPciBar0RegionIndex, devices::SampleDevice::kRegMagic);
      our_lat.Add(Clock::now() - t0);
      if (!v || *v != devices::SampleDevice::kMagic) {
        state.SkipWithError("REGION_READ failed");
        break;
      }
    }
  }
  raw_lat.Report(state, "Interleaved_Raw");
  // Report() names its counters generically; keep the raw pair's under their own names.
  double raw_p50 = state.counters["p50_us"], raw_p99 = state.counters["p99_us"];
  double raw_mean = state.counters["mean_us"];
  our_lat.Report(state, "Interleaved_RegionRead");
  state.counters["raw_p50_us"] = raw_p50;
  state.counters["raw_p99_us"] = raw_p99;
  state.counters["raw_mean_us"] = raw_mean;
  state.counters["ratio_p50"] = state.counters["p50_us"] / raw_p50;
  state.counters["ratio_p99"] = state.counters["p99_us"] / raw_p99;
  state.counters["ratio_mean"] = state.counters["mean_us"] / raw_mean;
}

// The raw ping-pong runs first so the others can report their ratio to it.
constexpr double kMinTime = 2.0;
constexpr double kWarmUp = 0.3;
BENCHMARK(BM_RawPingPong)->UseRealTime()->MinTime(kMinTime)->MinWarmUpTime(kWarmUp);
BENCHMARK(BM_RegionRead)->UseRealTime()->MinTime(kMinTime)->MinWarmUpTime(kWarmUp);
BENCHMARK(BM_ClientLib_RawEcho)->UseRealTime()->MinTime(kMinTime)->MinWarmUpTime(kWarmUp);
BENCHMARK(BM_RawClient_Server)->UseRealTime()->MinTime(kMinTime)->MinWarmUpTime(kWarmUp);
BENCHMARK(BM_Interleaved)->UseRealTime()->MinTime(2 * kMinTime)->MinWarmUpTime(kWarmUp);

void PrintSummary() {
  if (g_summaries.empty()) return;
  const Summary* raw = FindSummary(kRawName);
  std::printf("\n%-20s %10s %9s %9s %9s %10s %10s\n", "benchmark", "samples", "mean_us", "p50_us",
              "p99_us", "p50/raw", "mean/raw");
  for (const Summary& s : g_summaries) {
    std::printf("%-20s %10llu %9.2f %9.2f %9.2f", s.name.c_str(),
                static_cast<unsigned long long>(s.samples), s.mean_us, s.p50_us, s.p99_us);
    if (raw != nullptr) {
      std::printf(" %9.3fx %9.3fx\n", s.p50_us / raw->p50_us, s.mean_us / raw->mean_us);
    } else {
      std::printf("\n");
    }
  }
  const Summary* iraw = FindSummary("Interleaved_Raw");
  const Summary* iours = FindSummary("Interleaved_RegionRead");
  if (iraw != nullptr && iours != nullptr) {
    std::printf("\ninterleaved: RegionRead/raw p50 %.3fx, p99 %.3fx, mean %.3fx\n",
                iours->p50_us / iraw->p50_us, iours->p99_us / iraw->p99_us,
                iours->mean_us / iraw->mean_us);
  }
  if (const Summary* ours = FindSummary("RegionRead"); ours != nullptr && raw != nullptr) {
    std::printf("separate runs: RegionRead/raw p50 %.3fx\n", ours->p50_us / raw->p50_us);
  }
  if (iraw != nullptr && iours != nullptr) {
    double r = iours->p50_us / iraw->p50_us;
    std::printf("target (p50, interleaved) <= 1.15x: %s\n", r <= 1.15 ? "met" : "NOT met");
  }
}

}  // namespace

int main(int argc, char** argv) {
  vfu::Log::SetLevel(vfu::LogLevel::kWarn);  // no per-connection info lines in the output
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  PrintSummary();
  return 0;
}
