// An informer keeps a local copy of one resource type (optionally one namespace and label
// selector) and reports every change to a handler, following the list-then-watch contract of
// the Kubernetes API:
//   1. LIST; the list's metadata.resourceVersion is the point the watch starts from.
//   2. WATCH ?resourceVersion=RV&allowWatchBookmarks=true; every event (BOOKMARK included)
//      moves RV forward, so a watch that ends (timeout, dropped connection, API server
//      restart) is re-opened from the last RV and no event is missed or repeated.
//   3. If the RV is too old (HTTP 410 Gone, or an ERROR event with code 410), LIST again and
//      compare with the local copy: what appeared, changed or vanished in between is reported
//      as ADDED, MODIFIED or DELETED, so handlers still see every difference.
// Failures back off exponentially; each re-list or failed watch counts as a watch restart.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "operator/kube/api_client.h"

namespace vfu::op {

enum class EventType { kAdded, kModified, kDeleted };

struct InformerOptions {
  ResourceType type;
  std::string ns;  // empty: cluster-scoped or all namespaces
  std::string label_selector;
  int watch_timeout_seconds = 300;
  BackoffOptions backoff{std::chrono::milliseconds(100), std::chrono::seconds(30), 2.0, 0.2};
};

class Informer {
 public:
  using Handler = std::function<void(EventType, const Json& object)>;
  // Called with "expired" (410), "error" (failed list/watch) or "closed" (the server ended a
  // watch before its timeout).
  using RestartHook = std::function<void(const std::string& reason)>;

  Informer(KubeClient& client, InformerOptions options, Handler handler,
           RestartHook on_restart = {});
  ~Informer();
  Informer(const Informer&) = delete;
  Informer& operator=(const Informer&) = delete;

  void Start();
  void Stop();

  // True once the first LIST was delivered.
  bool HasSynced() const { return synced_.load(); }
  bool WaitForSync(std::chrono::milliseconds timeout);
  std::optional<Json> Get(const std::string& ns, const std::string& name) const;
  std::vector<Json> List() const;
  std::string resource_version() const;
  // Number of LISTs done (1 after the first sync); tests use it to see a re-list.
  int list_count() const { return list_count_.load(); }

  static std::string Key(const Json& object);

 private:
  void Run();
  bool ListAndReplace();
  // Returns true when a re-list is needed.
  bool WatchOnce(bool* progressed);
  void SleepFor(std::chrono::milliseconds wait);

  KubeClient& client_;
  InformerOptions options_;
  Handler handler_;
  RestartHook on_restart_;

  mutable std::mutex mu_;
  std::map<std::string, Json> store_;  // key: ns/name; guarded by mu_
  std::string resource_version_;       // guarded by mu_
  std::condition_variable wake_;
  bool stopping_ = false;                    // guarded by mu_
  StreamCanceller* active_watch_ = nullptr;  // guarded by mu_

  std::atomic<bool> synced_{false};
  std::atomic<int> list_count_{0};
  std::thread thread_;
};

}  // namespace vfu::op
