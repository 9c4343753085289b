#include "operator/app/controller.h"

#include "operator/pool/render.h"
#include "server/common/log.h"

namespace vfu::op {

Controller::Controller(KubeClient& client, ControllerOptions options, OperatorMetrics* metrics)
    : client_(client),
      options_(std::move(options)),
      metrics_(metrics),
      events_(client, options_.reconciler.ns, kFieldManager),
      queue_(options_.queue) {
  if (metrics_) queue_.SetDepthObserver([this](size_t depth) { metrics_->SetQueueDepth(depth); });
  auto restart_hook = [this](const std::string& resource) {
    return [this, resource](const std::string& reason) {
      if (metrics_) metrics_->WatchRestart(resource, reason);
    };
  };
  InformerOptions pool_options{resources::kDevicePools, "", "", options_.watch_timeout_seconds};
  pools_ = std::make_unique<Informer>(
      client_, pool_options,
      [this](EventType, const Json& pool) { queue_.Add(pool["metadata"]["name"]); },
      restart_hook("vfiouserdevicepools"));
  InformerOptions ds_options{resources::kDaemonSets, options_.reconciler.ns,
                             std::string("app.kubernetes.io/managed-by=") + kFieldManager,
                             options_.watch_timeout_seconds};
  daemon_sets_ = std::make_unique<Informer>(
      client_, ds_options,
      [this](EventType, const Json& ds) {
        const Json labels = ds["metadata"].value("labels", Json::object());
        if (labels.contains(kPoolLabel)) queue_.Add(labels[kPoolLabel]);
      },
      restart_hook("daemonsets"));
  InformerOptions node_options{resources::kNodes, "", "", options_.watch_timeout_seconds};
  nodes_ = std::make_unique<Informer>(
      client_, node_options, [this](EventType, const Json&) { EnqueueAllPools(); },
      restart_hook("nodes"));
  reconciler_ = std::make_unique<Reconciler>(
      client_, options_.reconciler, [this] { return nodes_->List(); },
      [this] { return pools_->List(); }, &events_);
}

Controller::~Controller() { Stop(); }

void Controller::EnqueueAllPools() {
  for (const auto& pool : pools_->List()) queue_.Add(pool["metadata"]["name"]);
}

void Controller::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_) return;
  started_ = true;
  // Nodes first, so that the first reconciles already see them.
  nodes_->Start();
  daemon_sets_->Start();
  pools_->Start();
  for (int i = 0; i < options_.workers; ++i) workers_.emplace_back([this] { Work(); });
  resync_ = std::thread([this] {
    std::unique_lock<std::mutex> resync_lock(mu_);
    while (!stop_cv_.wait_for(resync_lock, options_.resync, [this] { return stopping_; })) {
      resync_lock.unlock();
      EnqueueAllPools();
      resync_lock.lock();
    }
  });
}

void Controller::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_ || stopping_) return;
    stopping_ = true;
  }
  stop_cv_.notify_all();
  queue_.ShutDown();
  pools_->Stop();
  daemon_sets_->Stop();
  nodes_->Stop();
  for (auto& worker : workers_) worker.join();
  if (resync_.joinable()) resync_.join();
}

bool Controller::Synced() const {
  return pools_->HasSynced() && daemon_sets_->HasSynced() && nodes_->HasSynced();
}

void Controller::Work() {
  while (auto key = queue_.Get()) {
    // Reconciling before the node cache is filled would report zero devices.
    while (!nodes_->HasSynced() && !nodes_->WaitForSync(std::chrono::milliseconds(200))) {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) break;
    }
    auto started = std::chrono::steady_clock::now();
    ReconcileOutcome outcome;
    try {
      outcome = reconciler_->Reconcile(*key);
    } catch (const std::exception& e) {
      // A malformed object must not take the operator down; retry it with backoff.
      outcome.status = MakeError(EINVAL, std::string("unexpected object shape: ") + e.what());
    }
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (metrics_) metrics_->ReconcileDone(outcome.status.ok(), seconds);
    if (!outcome.status.ok()) {
      Log::Write(LogLevel::kWarn, "reconcile failed",
                 {{"pool", *key},
                  {"error", outcome.status.message()},
                  {"retries", std::to_string(queue_.Retries(*key))}});
      queue_.AddRateLimited(*key);
    } else {
      queue_.Forget(*key);
      if (outcome.requeue_after) queue_.AddAfter(*key, *outcome.requeue_after);
    }
    queue_.Done(*key);
  }
}

}  // namespace vfu::op
