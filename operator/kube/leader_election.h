// Leader election on a coordination.k8s.io/v1 Lease, with the semantics of client-go's
// leaderelection package: a candidate takes the Lease when it is free or when its holder has
// not renewed it for leaseDurationSeconds, measured on the candidate's own clock from the
// moment it last saw the Lease change (clocks of different machines are never compared).
// Every write carries the resourceVersion that was read, so two candidates racing for the
// same Lease cannot both win: the API server answers the slower one with 409 Conflict.
// A leader that cannot renew within the renew deadline stops leading. Stop(release=true)
// hands the Lease back (empty holder, 1 s duration) so a standby takes over at once.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "operator/kube/api_client.h"

namespace vfu::op {

struct LeaderElectionOptions {
  std::string ns;
  std::string name = "vfio-user-operator-leader";
  std::string identity;
  std::chrono::milliseconds lease_duration{std::chrono::seconds(15)};
  std::chrono::milliseconds renew_deadline{std::chrono::seconds(10)};
  std::chrono::milliseconds retry_period{std::chrono::seconds(2)};
};

struct LeaderCallbacks {
  std::function<void()> started_leading;
  std::function<void()> stopped_leading;
};

class LeaderElector {
 public:
  LeaderElector(KubeClient& client, LeaderElectionOptions options, LeaderCallbacks callbacks);
  ~LeaderElector();
  LeaderElector(const LeaderElector&) = delete;
  LeaderElector& operator=(const LeaderElector&) = delete;

  void Start();
  // Stops campaigning and renewing. With `release`, a held Lease is given back.
  void Stop(bool release);
  bool IsLeader() const { return leader_.load(); }
  const std::string& identity() const { return options_.identity; }

 private:
  struct Record {
    std::string holder;
    std::string renew_time;
    int transitions = 0;
    bool operator==(const Record&) const = default;
  };

  void Run();
  bool TryAcquireOrRenew();
  void Release();
  bool SleepFor(std::chrono::milliseconds wait);  // false when stopping

  KubeClient& client_;
  LeaderElectionOptions options_;
  LeaderCallbacks callbacks_;
  std::atomic<bool> leader_{false};

  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;  // guarded by mu_
  std::thread thread_;

  // Only the election thread touches these.
  Record observed_;
  std::chrono::steady_clock::time_point observed_at_;
};

// RFC 3339 time of `t`, as metav1.Time (seconds) or metav1.MicroTime (microseconds).
std::string FormatTime(std::chrono::system_clock::time_point t, bool micro);

}  // namespace vfu::op
