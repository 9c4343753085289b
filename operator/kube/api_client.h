// The Kubernetes API verbs the operator uses, on JSON objects (nlohmann::json), over an
// HttpTransport: get, list, create, update (PUT, guarded by metadata.resourceVersion), status
// update, server-side apply (PATCH application/apply-patch+yaml with fieldManager), JSON merge
// patch, delete, and watch (newline-delimited JSON events). Errors carry the HTTP status in
// Error::code (kTransportError when no response came back) and the API's Status message.
// Transport failures, 429 and 5xx answers are retried with exponential backoff.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "operator/kube/backoff.h"
#include "operator/kube/http_transport.h"
#include "server/common/status.h"

namespace vfu::op {

using Json = nlohmann::json;

// Error::code of a request that got no HTTP response at all.
inline constexpr int kTransportError = -1;

inline bool IsNotFound(const Error& e) { return e.code == 404; }
inline bool IsConflict(const Error& e) { return e.code == 409; }
inline bool IsGone(const Error& e) { return e.code == 410; }

// A resource type as the API paths name it.
struct ResourceType {
  std::string group;  // "" for the core group
  std::string version;
  std::string plural;
  std::string kind;
  bool namespaced = true;

  std::string ApiVersion() const { return group.empty() ? version : group + "/" + version; }
};

namespace resources {
extern const ResourceType kDevicePools;
extern const ResourceType kDaemonSets;
extern const ResourceType kConfigMaps;
extern const ResourceType kNodes;
extern const ResourceType kPods;
extern const ResourceType kEvents;
extern const ResourceType kLeases;
}  // namespace resources

// `ns` empty: cluster-scoped, or all namespaces for a namespaced list/watch.
std::string CollectionPath(const ResourceType& type, const std::string& ns);
std::string ObjectPath(const ResourceType& type, const std::string& ns, const std::string& name,
                       const std::string& subresource = "");

struct ListOptions {
  std::string label_selector;
  std::string field_selector;
};

struct WatchOptions {
  std::string resource_version;
  std::string label_selector;
  int timeout_seconds = 300;
  bool allow_bookmarks = true;
};

struct WatchEvent {
  std::string type;  // ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
  Json object;
};

struct RetryPolicy {
  int attempts = 4;
  BackoffOptions backoff{std::chrono::milliseconds(200), std::chrono::seconds(5), 2.0, 0.2};
};

class KubeClient {
 public:
  explicit KubeClient(std::shared_ptr<HttpTransport> transport, RetryPolicy retry = {});

  Result<Json> Get(const ResourceType& type, const std::string& ns, const std::string& name);
  Result<Json> List(const ResourceType& type, const std::string& ns,
                    const ListOptions& options = {});
  Result<Json> Create(const ResourceType& type, const std::string& ns, const Json& object);
  // PUT; a metadata.resourceVersion in `object` makes it conditional (409 when stale).
  Result<Json> Update(const ResourceType& type, const std::string& ns, const Json& object);
  Result<Json> UpdateStatus(const ResourceType& type, const std::string& ns, const Json& object);
  // Server-side apply of `object` (apiVersion, kind, metadata.name and the owned fields).
  Result<Json> Apply(const ResourceType& type, const std::string& ns, const Json& object,
                     const std::string& field_manager, bool force,
                     const std::string& subresource = "");
  Result<Json> MergePatch(const ResourceType& type, const std::string& ns, const std::string& name,
                          const Json& patch);
  Status Delete(const ResourceType& type, const std::string& ns, const std::string& name);

  // Streams events until the server ends the watch, `on_event` returns false or `canceller`
  // is cancelled. Returns the HTTP status of the watch request (200, or e.g. 410).
  Result<int> Watch(const ResourceType& type, const std::string& ns, const WatchOptions& options,
                    const std::function<bool(const WatchEvent&)>& on_event,
                    StreamCanceller& canceller);

 private:
  Result<Json> Call(const std::string& method, const std::string& path,
                    const std::string& content_type, const std::string& body);

  std::shared_ptr<HttpTransport> transport_;
  RetryPolicy retry_;
};

}  // namespace vfu::op
