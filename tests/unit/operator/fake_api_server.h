// An in-process fake of the Kubernetes API server, served over HTTP on 127.0.0.1 (ephemeral
// port) so that the operator's real client stack (cpprestsdk) is exercised. It follows the
// API conventions [kubernetes/community contributors/devel/sig-architecture/
// api-conventions.md, and the API server's documented behaviour] for the verbs the operator
// uses, and documents where it is simpler:
//
// - resourceVersion: one counter for the whole store (as etcd's revision); every write bumps
//   it and stamps the object. A write that changes nothing is not written and bumps nothing.
// - LIST returns the items and metadata.resourceVersion = the current counter. Items carry no
//   apiVersion/kind (as typed lists). labelSelector supports "k=v", "k!=v" and "k".
// - WATCH ?watch=1&resourceVersion=RV streams every change after RV as newline-delimited
//   JSON {type, object}. No RV (or "0"): synthetic ADDED events for the current objects
//   first. RV older than the compacted history: an ERROR event whose object is a Status with
//   code 410 (reason Expired), then the stream ends — what the API server does for an expired
//   watch. allowWatchBookmarks=true: BOOKMARK events (object = kind + metadata.resourceVersion)
//   when the test calls SendBookmarks(). timeoutSeconds ends the stream cleanly. With a
//   labelSelector, events are filtered on the object's current labels (the real server also
//   turns "stopped matching" into DELETED; the fake does not).
// - GET/POST/PUT/DELETE: 404 NotFound, 409 AlreadyExists on create, 409 Conflict when a PUT or
//   PATCH carries a stale metadata.resourceVersion (optimistic concurrency). Create sets uid,
//   creationTimestamp, generation 1 and drops status for kinds with a status subresource
//   (pools, DaemonSets). metadata.generation grows when spec changes, and when
//   deletionTimestamp is set.
// - Status subresource (pools, DaemonSets, nodes): writes to the main resource keep the old
//   status; writes to /status change only status.
// - Finalizers: DELETE of an object with finalizers only sets deletionTimestamp; the object
//   goes away (DELETED event) when an update leaves it with no finalizers.
// - PATCH application/merge-patch+json: RFC 7386.
// - PATCH application/apply-patch+yaml (server-side apply): fieldManager is required (400
//   otherwise); the body must be JSON (JSON is YAML). Each manager owns the leaf fields of its
//   last applied configuration; lists are atomic (the real server merges lists with merge
//   keys, e.g. containers by name). Fields the manager applied before and dropped now are
//   removed; a field owned by another manager with a different value is a 409 Conflict unless
//   force=true, which moves the ownership. Only apply records ownership (updates do not).
// - Not implemented: garbage collection of dependents (ownerReferences are stored, nothing
//   is cascaded), admission, defaulting, CRD schema validation (tested separately),
//   pagination (limit/continue), fieldSelector.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "operator/net/http_server.h"

namespace vfu::op::testing {

using Json = nlohmann::json;

class FakeApiServer {
 public:
  FakeApiServer();
  ~FakeApiServer();

  std::string url() const;

  // Direct access for tests, acting as other controllers would (same rules, no HTTP).
  Json CreateObject(const std::string& plural, const std::string& ns, Json object);
  // Replaces status as a controller's PUT .../status would (the DaemonSet controller, the
  // kubelet's node status).
  void SetStatus(const std::string& plural, const std::string& ns, const std::string& name,
                 const Json& status);
  std::optional<Json> GetObject(const std::string& plural, const std::string& ns,
                                const std::string& name);
  std::vector<Json> ListObjects(const std::string& plural);
  void DeleteObject(const std::string& plural, const std::string& ns, const std::string& name);
  int64_t resource_version();

  // Forgets the event history: watches from any earlier resourceVersion get 410.
  void CompactHistory();
  // Cuts every open watch connection abruptly (truncated body), as an API server restart would.
  void DropWatches();
  // Sends a BOOKMARK with the current resourceVersion on every watch that allowed bookmarks.
  void SendBookmarks();
  // The resourceVersion each watch on `plural` was opened with, in order.
  std::vector<std::string> WatchResourceVersions(const std::string& plural);
  int OpenWatches(const std::string& plural);
  int ListCount(const std::string& plural);
  // The next `count` requests (any verb, watches excepted) fail with `status`.
  void FailNextRequests(int count, int status);
  std::vector<std::string> AuthorizationHeaders();

 private:
  struct ResourceInfo {
    std::string api_version;
    std::string kind;
    bool namespaced;
    bool status_subresource;
  };
  struct Path {
    std::string plural;
    std::string ns;
    std::string name;
    std::string subresource;
  };
  struct Event {
    int64_t rv;
    std::string plural;
    std::string type;
    Json object;
  };
  struct Reply {
    int status;
    Json body;
  };

  void Handle(const HttpServerRequest& request, HttpResponseWriter& writer);
  void HandleWatch(const Path& path, const HttpServerRequest& request, HttpResponseWriter& writer);
  Reply Dispatch(const Path& path, const HttpServerRequest& request);
  std::optional<Path> ParsePath(const std::string& path) const;

  // All below run with mu_ held.
  Reply List(const Path& path, const std::string& selector);
  Reply Create(const Path& path, Json object);
  Reply Update(const Path& path, Json object, bool status_only);
  Reply MergePatch(const Path& path, const Json& patch);
  Reply Apply(const Path& path, const Json& config, const std::string& manager, bool force);
  Reply Delete(const Path& path);
  // Writes `object` (a new version of path's object) if it differs from the stored one.
  Reply Commit(const Path& path, Json object, const Json* old);

  static Json StatusBody(int code, const std::string& reason, const std::string& message);
  static std::string Key(const std::string& ns, const std::string& name) { return ns + "/" + name; }

  std::map<std::string, ResourceInfo> resources_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::map<std::string, std::map<std::string, Json>> objects_;  // plural -> key -> object
  // plural -> key -> manager -> applied configuration
  std::map<std::string, std::map<std::string, std::map<std::string, Json>>> applied_;
  std::vector<Event> history_;
  int64_t rv_ = 100;
  int64_t compacted_rv_ = 0;
  int64_t next_uid_ = 1;
  uint64_t drop_generation_ = 0;
  uint64_t bookmark_generation_ = 0;
  bool stopping_ = false;
  std::map<std::string, std::vector<std::string>> watch_rvs_;
  std::map<std::string, int> open_watches_;
  std::map<std::string, int> list_counts_;
  int fail_count_ = 0;
  int fail_status_ = 0;
  std::vector<std::string> authorization_;
  std::unique_ptr<HttpServer> server_;
};

}  // namespace vfu::op::testing
