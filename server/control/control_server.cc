#include "server/control/control_server.h"

#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "control.grpc.pb.h"
#include "server/common/filesystem.h"
#include "server/common/log.h"
#include "server/version.h"

namespace vfu::control {

namespace pb = ::vfiouser::control::v1alpha1;

namespace {

void FillDevice(const service::DeviceStatus& s, pb::Device* d) {
  d->set_id(s.id);
  d->set_device_class(s.device_class);
  d->set_socket_path(s.socket_path);
  d->set_health(s.healthy ? pb::HEALTHY : pb::UNHEALTHY);
  d->set_health_reason(s.health_reason);
  d->set_client_connected(s.client_connected);
  d->set_client(s.client);
  d->set_generation(s.generation);
  d->set_removal_pending(s.removal_pending);
  d->set_poll_thread(s.poll_thread);
  d->set_numa_node(s.numa_node);
  d->set_backend(s.backend);
  d->set_size_bytes(s.size_bytes);
  d->set_read_only(s.read_only);
  d->set_refused_change(s.refused_change);
}

void FillList(const service::DeviceListSnapshot& snapshot, pb::DeviceList* list) {
  list->set_generation(snapshot.generation);
  list->set_server_version(kVersion);
  for (const auto& s : snapshot.devices) FillDevice(s, list->add_devices());
}

// A histogram in the control API's (Prometheus) form: cumulative buckets.
void FillHistogram(const LatencyHistogram& from, pb::LatencyHistogram* h) {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < LatencyHistogram::kUpperBoundsNs.size(); ++i) {
    cumulative += from.counts()[i];
    h->add_upper_bounds_seconds(static_cast<double>(LatencyHistogram::kUpperBoundsNs[i]) / 1e9);
    h->add_bucket_counts(cumulative);
  }
  h->set_count(from.count());
  h->set_sum_seconds(static_cast<double>(from.sum_ns()) / 1e9);
}

void FillStats(const service::DeviceCountersSnapshot& c, pb::DeviceStats* d) {
  d->set_id(c.id);
  d->set_device_class(c.device_class);
  uint64_t errors = 0;
  for (const OperationCounters& op : c.counters.operations) {
    pb::OperationStats* o = d->add_operations();
    o->set_operation(op.name);
    o->set_requests(op.requests);
    o->set_bytes(op.bytes);
    o->set_errors(op.errors);
    errors += op.errors;
    FillHistogram(op.latency, o->mutable_latency());
  }
  d->set_io_errors(errors);
  d->set_poll_busy_ns(c.poll_busy_ns);
  d->set_poll_calls(c.poll_calls);
  d->set_poll_busy_calls(c.poll_busy_calls);
  d->set_dma_regions(c.dma_regions);
  d->set_dma_bytes(c.dma_bytes);
  d->set_connects(c.connects);
  d->set_disconnects(c.disconnects);
  d->set_rejected_clients(c.rejected_clients);
  d->set_protocol_errors(c.protocol_errors);
  d->set_interrupts(c.counters.interrupts);
  d->set_client_connected(c.client_connected);
}

}  // namespace

class ControlService final : public pb::Control::Service {
 public:
  explicit ControlService(service::DeviceManager* manager) : manager_(manager) {}

  void Stop() { stopping_.store(true); }

  grpc::Status ListDevices(grpc::ServerContext*, const pb::ListDevicesRequest*,
                           pb::DeviceList* response) override {
    FillList(manager_->Devices(), response);
    return grpc::Status::OK;
  }

  grpc::Status WatchDevices(grpc::ServerContext* context, const pb::WatchDevicesRequest*,
                            grpc::ServerWriter<pb::DeviceList>* writer) override {
    uint64_t sent = 0;
    while (!context->IsCancelled() && !stopping_.load()) {
      service::DeviceListSnapshot snapshot = manager_->Devices();
      if (sent == 0 || snapshot.generation != sent) {
        pb::DeviceList list;
        FillList(snapshot, &list);
        if (!writer->Write(list)) break;  // the client went away
        sent = snapshot.generation;
      }
      // Wake at least every 200 ms to notice cancellation and shutdown.
      manager_->WaitForChange(sent, std::chrono::milliseconds(200));
      if (manager_->shut_down()) break;
    }
    return grpc::Status::OK;
  }

  grpc::Status GetStats(grpc::ServerContext*, const pb::GetStatsRequest* request,
                        pb::StatsResponse* response) override {
    auto counters = manager_->Counters(request->id());
    if (!request->id().empty() && counters.empty()) {
      return {grpc::StatusCode::NOT_FOUND, "no device with id '" + request->id() + "'"};
    }
    for (const auto& c : counters) FillStats(c, response->add_devices());
    for (const auto& t : manager_->PollThreads()) {
      pb::PollThreadStats* p = response->add_poll_threads();
      p->set_index(t.index);
      p->set_busy_ns(t.stats.busy_ns);
      p->set_idle_ns(t.stats.idle_poll_ns + t.stats.asleep_ns);
      p->set_sleeps(t.stats.sleeps);
      p->set_devices(t.devices);
    }
    service::DeviceManager::HandoffStats handoffs = manager_->handoff_stats();
    response->set_handoffs(handoffs.handoffs);
    FillHistogram(handoffs.pause, response->mutable_handoff_pause());
    return grpc::Status::OK;
  }

 private:
  service::DeviceManager* manager_;
  std::atomic<bool> stopping_{false};
};

ControlServer::ControlServer(service::DeviceManager* manager) : manager_(manager) {}

ControlServer::~ControlServer() { Shutdown(); }

Status ControlServer::Start(const std::string& socket_path) {
  VFU_RETURN_IF_ERROR(CreateParentDirectories(socket_path));
  struct stat st {};
  if (::lstat(socket_path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return MakeError(EEXIST, socket_path + " exists and is not a socket");
    }
    ::unlink(socket_path.c_str());  // left by an earlier run
  }
  service_ = std::make_unique<ControlService>(manager_);
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort("unix:" + socket_path, grpc::InsecureServerCredentials(), &bound);
  builder.RegisterService(service_.get());
  // Watchers (the device plugin) may probe a quiet stream with HTTP/2 pings to notice a hung
  // server quickly; allow pings every 500 ms, also without calls in flight.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  server_ = builder.BuildAndStart();
  if (!server_ || bound == 0) {
    server_.reset();
    return MakeError(EADDRINUSE, "cannot listen on the control socket " + socket_path);
  }
  ::chmod(socket_path.c_str(), 0660);
  socket_path_ = socket_path;
  Log::Write(LogLevel::kInfo, "control API listening", {{"socket", socket_path}});
  return Status::Ok();
}

void ControlServer::Shutdown() {
  if (!server_) return;
  service_->Stop();
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_->Wait();
  server_.reset();
  ::unlink(socket_path_.c_str());
}

}  // namespace vfu::control
