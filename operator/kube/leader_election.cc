#include "operator/kube/leader_election.h"

#include <cstdio>

#include <ctime>

#include "server/common/log.h"

namespace vfu::op {

std::string FormatTime(std::chrono::system_clock::time_point t, bool micro) {
  auto seconds = std::chrono::time_point_cast<std::chrono::seconds>(t);
  std::time_t tt = std::chrono::system_clock::to_time_t(seconds);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char text[64];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &tm);
  std::string out = text;
  if (micro) {
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(t - seconds).count();
    char frac[24];  // room for any long long, so -Wformat-truncation stays quiet
    std::snprintf(frac, sizeof(frac), ".%06lld", static_cast<long long>(us));
    out += frac;
  }
  return out + "Z";
}

LeaderElector::LeaderElector(KubeClient& client, LeaderElectionOptions options,
                             LeaderCallbacks callbacks)
    : client_(client), options_(std::move(options)), callbacks_(std::move(callbacks)) {}

LeaderElector::~LeaderElector() {
  try {
    Stop(false);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "leader election: stopping failed: %s\n", e.what());
  }
}

void LeaderElector::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { Run(); });
}

void LeaderElector::Stop(bool release) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (leader_.exchange(false)) {
    if (release) Release();
    if (callbacks_.stopped_leading) callbacks_.stopped_leading();
  }
}

bool LeaderElector::SleepFor(std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> lock(mu_);
  return !wake_.wait_for(lock, wait, [this] { return stopping_; });
}

void LeaderElector::Run() {
  auto last_renew = std::chrono::steady_clock::now();
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
    }
    bool ok = TryAcquireOrRenew();
    auto now = std::chrono::steady_clock::now();
    if (ok) {
      last_renew = now;
      if (!leader_.exchange(true)) {
        Log::Write(LogLevel::kInfo, "became leader",
                   {{"lease", options_.ns + "/" + options_.name}, {"identity", options_.identity}});
        if (callbacks_.started_leading) callbacks_.started_leading();
      }
    } else if (leader_.load() && now - last_renew > options_.renew_deadline) {
      leader_.store(false);
      Log::Write(LogLevel::kWarn, "lost leadership: could not renew the lease in time",
                 {{"lease", options_.ns + "/" + options_.name}, {"identity", options_.identity}});
      if (callbacks_.stopped_leading) callbacks_.stopped_leading();
    }
    if (!SleepFor(options_.retry_period)) return;
  }
}

bool LeaderElector::TryAcquireOrRenew() {
  const auto now = std::chrono::system_clock::now();
  const std::string now_text = FormatTime(now, true);
  const int duration_seconds = static_cast<int>((options_.lease_duration.count() + 999) / 1000);
  auto lease = client_.Get(resources::kLeases, options_.ns, options_.name);
  if (!lease) {
    if (!IsNotFound(lease.error())) return false;
    Json fresh = {{"apiVersion", "coordination.k8s.io/v1"},
                  {"kind", "Lease"},
                  {"metadata", {{"name", options_.name}, {"namespace", options_.ns}}},
                  {"spec",
                   {{"holderIdentity", options_.identity},
                    {"leaseDurationSeconds", duration_seconds},
                    {"acquireTime", now_text},
                    {"renewTime", now_text},
                    {"leaseTransitions", 0}}}};
    auto created = client_.Create(resources::kLeases, options_.ns, fresh);
    if (!created) return false;  // 409: another candidate created it first
    observed_ = Record{options_.identity, now_text, 0};
    observed_at_ = std::chrono::steady_clock::now();
    return true;
  }
  Json& spec = (*lease)["spec"];
  Record record{spec.value("holderIdentity", ""), spec.value("renewTime", ""),
                spec.value("leaseTransitions", 0)};
  if (!(record == observed_)) {
    observed_ = record;
    observed_at_ = std::chrono::steady_clock::now();
  }
  const bool held_by_me = record.holder == options_.identity;
  if (!record.holder.empty() && !held_by_me) {
    auto held_for = std::chrono::seconds(spec.value("leaseDurationSeconds", duration_seconds));
    if (std::chrono::steady_clock::now() < observed_at_ + held_for) return false;
  }
  if (!held_by_me) {
    spec["acquireTime"] = now_text;
    spec["leaseTransitions"] = record.transitions + 1;
  }
  spec["holderIdentity"] = options_.identity;
  spec["leaseDurationSeconds"] = duration_seconds;
  spec["renewTime"] = now_text;
  // metadata.resourceVersion from the GET stays in the object: the update is conditional.
  auto updated = client_.Update(resources::kLeases, options_.ns, *lease);
  if (!updated) return false;
  observed_ = Record{options_.identity, now_text, spec.value("leaseTransitions", 0)};
  observed_at_ = std::chrono::steady_clock::now();
  return true;
}

void LeaderElector::Release() {
  auto lease = client_.Get(resources::kLeases, options_.ns, options_.name);
  if (!lease || (*lease)["spec"].value("holderIdentity", "") != options_.identity) return;
  Json& spec = (*lease)["spec"];
  const std::string now_text = FormatTime(std::chrono::system_clock::now(), true);
  spec["holderIdentity"] = "";
  spec["leaseDurationSeconds"] = 1;
  spec["renewTime"] = now_text;
  spec["acquireTime"] = now_text;
  auto updated = client_.Update(resources::kLeases, options_.ns, *lease);
  Log::Write(updated ? LogLevel::kInfo : LogLevel::kWarn,
             updated ? "released the lease" : "could not release the lease",
             {{"lease", options_.ns + "/" + options_.name}});
}

}  // namespace vfu::op
