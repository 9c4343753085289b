#include "operator/app/metrics.h"

namespace vfu::op {

OperatorMetrics::OperatorMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  reconcile_family_ = &prometheus::BuildCounter()
                           .Name("vfio_user_operator_reconciles_total")
                           .Help("Reconciles of device pools, by result")
                           .Register(*registry_);
  reconcile_ok_ = &reconcile_family_->Add({{"result", "success"}});
  reconcile_error_ = &reconcile_family_->Add({{"result", "error"}});
  errors_ = &prometheus::BuildCounter()
                 .Name("vfio_user_operator_reconcile_errors_total")
                 .Help("Reconciles that failed and were queued again with backoff")
                 .Register(*registry_)
                 .Add({});
  duration_ = &prometheus::BuildHistogram()
                   .Name("vfio_user_operator_reconcile_duration_seconds")
                   .Help("Time one reconcile of one pool took")
                   .Register(*registry_)
                   .Add({}, prometheus::Histogram::BucketBoundaries{0.005, 0.01, 0.025, 0.05, 0.1,
                                                                    0.25, 0.5, 1, 2.5, 5, 10});
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("vfio_user_operator_workqueue_depth")
                      .Help("Pools waiting to be reconciled")
                      .Register(*registry_)
                      .Add({});
  leader_ = &prometheus::BuildGauge()
                 .Name("vfio_user_operator_leader")
                 .Help("1 while this instance holds the leader Lease")
                 .Register(*registry_)
                 .Add({});
  watch_restarts_ = &prometheus::BuildCounter()
                         .Name("vfio_user_operator_watch_restarts_total")
                         .Help(
                             "Watches re-opened or re-listed, by resource and reason "
                             "(expired = 410 Gone, error, closed)")
                         .Register(*registry_);
}

void OperatorMetrics::ReconcileDone(bool ok, double seconds) {
  (ok ? reconcile_ok_ : reconcile_error_)->Increment();
  if (!ok) errors_->Increment();
  duration_->Observe(seconds);
}

void OperatorMetrics::WatchRestart(const std::string& resource, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  watch_restarts_->Add({{"resource", resource}, {"reason", reason}}).Increment();
}

double OperatorMetrics::watch_restarts(const std::string& resource, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  return watch_restarts_->Add({{"resource", resource}, {"reason", reason}}).Value();
}

void OperatorMetrics::SetQueueDepth(size_t depth) { queue_depth_->Set(static_cast<double>(depth)); }

void OperatorMetrics::SetLeader(bool leader) { leader_->Set(leader ? 1 : 0); }

}  // namespace vfu::op
