// The pool controller: informers on pools, the pools' DaemonSets and nodes feed a rate-limited
// work queue of pool names; worker threads reconcile one pool at a time. A DaemonSet event
// queues its pool (label vfio-user.io/pool), a node event queues every pool (allocatable and
// labels decide pool status), a failed reconcile is queued again with backoff. Every pool is
// also re-checked every resync period.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "operator/app/metrics.h"
#include "operator/kube/api_client.h"
#include "operator/kube/event_recorder.h"
#include "operator/kube/informer.h"
#include "operator/kube/work_queue.h"
#include "operator/pool/reconciler.h"

namespace vfu::op {

struct ControllerOptions {
  ReconcilerOptions reconciler;
  int workers = 1;
  int watch_timeout_seconds = 300;
  std::chrono::milliseconds resync{std::chrono::minutes(10)};
  WorkQueueOptions queue;
};

class Controller {
 public:
  Controller(KubeClient& client, ControllerOptions options, OperatorMetrics* metrics);
  ~Controller();
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  void Start();
  void Stop();
  // True when every informer has listed once.
  bool Synced() const;

 private:
  void Work();
  void EnqueueAllPools();

  KubeClient& client_;
  ControllerOptions options_;
  OperatorMetrics* metrics_;
  EventRecorder events_;
  WorkQueue queue_;
  std::unique_ptr<Informer> pools_;
  std::unique_ptr<Informer> daemon_sets_;
  std::unique_ptr<Informer> nodes_;
  std::unique_ptr<Reconciler> reconciler_;
  std::vector<std::thread> workers_;
  std::thread resync_;
  std::mutex mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  bool started_ = false;
};

}  // namespace vfu::op
