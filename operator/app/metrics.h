// The operator's Prometheus metrics (prefix vfio_user_operator_), kept in one registry that
// the binary exposes on --metrics-address: reconciles by result, reconcile errors and
// duration, work queue depth, watch restarts by resource and reason, and leadership.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <mutex>
#include <string>

namespace vfu::op {

class OperatorMetrics {
 public:
  OperatorMetrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }
  void ReconcileDone(bool ok, double seconds);
  void WatchRestart(const std::string& resource, const std::string& reason);
  void SetQueueDepth(size_t depth);
  void SetLeader(bool leader);

  double reconciles(bool ok) const {
    return ok ? reconcile_ok_->Value() : reconcile_error_->Value();
  }
  double errors() const { return errors_->Value(); }
  double queue_depth() const { return queue_depth_->Value(); }
  double watch_restarts(const std::string& resource, const std::string& reason);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* reconcile_family_;
  prometheus::Counter* reconcile_ok_;
  prometheus::Counter* reconcile_error_;
  prometheus::Counter* errors_;
  prometheus::Histogram* duration_;
  prometheus::Gauge* queue_depth_;
  prometheus::Gauge* leader_;
  std::mutex mu_;
  prometheus::Family<prometheus::Counter>* watch_restarts_;  // Add() under mu_
};

}  // namespace vfu::op
