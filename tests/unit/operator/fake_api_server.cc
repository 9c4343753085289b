#include "tests/unit/operator/fake_api_server.h"

#include <chrono>
#include <sstream>

namespace vfu::op::testing {
namespace {

using KeyPath = std::vector<std::string>;

std::vector<std::string> Split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, sep)) parts.push_back(part);
  return parts;
}

// Label selector, equality-based subset: "k=v", "k==v", "k!=v", "k", "!k".
bool SelectorMatches(const std::string& selector, const Json& object) {
  if (selector.empty()) return true;
  Json labels = object["metadata"].value("labels", Json::object());
  for (const std::string& requirement : Split(selector, ',')) {
    if (requirement.empty()) continue;
    size_t ne = requirement.find("!=");
    size_t eq = requirement.find('=');
    if (ne != std::string::npos) {
      std::string key = requirement.substr(0, ne);
      if (labels.contains(key) && labels[key] == requirement.substr(ne + 2)) return false;
    } else if (eq != std::string::npos) {
      std::string key = requirement.substr(0, eq);
      std::string value = requirement.substr(requirement[eq + 1] == '=' ? eq + 2 : eq + 1);
      if (!labels.contains(key) || labels[key] != value) return false;
    } else if (requirement[0] == '!') {
      if (labels.contains(requirement.substr(1))) return false;
    } else if (!labels.contains(requirement)) {
      return false;
    }
  }
  return true;
}

// Server-side apply helpers: a field is a path of object keys; arrays and scalars are leaves.
void Leaves(const Json& value, KeyPath& prefix, std::vector<KeyPath>& out) {
  if (value.is_object() && !value.empty()) {
    for (const auto& [key, child] : value.items()) {
      prefix.push_back(key);
      Leaves(child, prefix, out);
      prefix.pop_back();
    }
  } else if (!prefix.empty()) {
    out.push_back(prefix);
  }
}

std::vector<KeyPath> OwnableLeaves(const Json& config) {
  std::vector<KeyPath> all;
  KeyPath prefix;
  Leaves(config, prefix, all);
  std::vector<KeyPath> out;
  for (auto& leaf : all) {
    if (leaf[0] == "apiVersion" || leaf[0] == "kind") continue;
    if (leaf[0] == "metadata" &&
        (leaf.size() < 2 || (leaf[1] != "labels" && leaf[1] != "annotations" &&
                             leaf[1] != "ownerReferences" && leaf[1] != "finalizers"))) {
      continue;
    }
    out.push_back(std::move(leaf));
  }
  return out;
}

const Json* At(const Json& root, const KeyPath& path) {
  const Json* node = &root;
  for (const auto& key : path) {
    if (!node->is_object() || !node->contains(key)) return nullptr;
    node = &(*node)[key];
  }
  return node;
}

void SetAt(Json& root, const KeyPath& path, const Json& value) {
  Json* node = &root;
  for (const auto& key : path) {
    if (!node->is_object()) *node = Json::object();
    node = &(*node)[key];
  }
  *node = value;
}

void EraseAt(Json& root, const KeyPath& path, size_t depth = 0) {
  if (!root.is_object() || !root.contains(path[depth])) return;
  if (depth + 1 == path.size()) {
    root.erase(path[depth]);
    return;
  }
  Json& child = root[path[depth]];
  EraseAt(child, path, depth + 1);
  if (child.is_object() && child.empty()) root.erase(path[depth]);
}

bool Overlaps(const KeyPath& a, const KeyPath& b) {
  size_t n = std::min(a.size(), b.size());
  return std::equal(a.begin(), a.begin() + static_cast<long>(n), b.begin());
}

std::string JoinPath(const KeyPath& path) {
  std::string out;
  for (const auto& key : path) out += (out.empty() ? "" : ".") + key;
  return out;
}

std::string Now() {
  auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

}  // namespace

FakeApiServer::FakeApiServer() {
  resources_["vfiouserdevicepools"] = {"vfio-user.io/v1alpha1", "VfioUserDevicePool", false, true};
  resources_["daemonsets"] = {"apps/v1", "DaemonSet", true, true};
  resources_["configmaps"] = {"v1", "ConfigMap", true, false};
  resources_["nodes"] = {"v1", "Node", false, true};
  resources_["pods"] = {"v1", "Pod", true, false};
  resources_["events"] = {"v1", "Event", true, false};
  resources_["leases"] = {"coordination.k8s.io/v1", "Lease", true, false};
  auto server = HttpServer::Start(
      "127.0.0.1:0", [this](const HttpServerRequest& r, HttpResponseWriter& w) { Handle(r, w); });
  if (!server) throw std::runtime_error("fake API server: " + server.error().message);
  server_ = std::move(*server);
}

FakeApiServer::~FakeApiServer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  changed_.notify_all();
  server_->Stop();
}

std::string FakeApiServer::url() const {
  return "http://127.0.0.1:" + std::to_string(server_->port());
}

Json FakeApiServer::StatusBody(int code, const std::string& reason, const std::string& message) {
  return {{"kind", "Status"},    {"apiVersion", "v1"}, {"metadata", Json::object()},
          {"status", "Failure"}, {"message", message}, {"reason", reason},
          {"code", code}};
}

std::optional<FakeApiServer::Path> FakeApiServer::ParsePath(const std::string& path) const {
  std::vector<std::string> segments;
  for (auto& s : Split(path, '/')) {
    if (!s.empty()) segments.push_back(s);
  }
  size_t i;
  if (segments.size() >= 2 && segments[0] == "api") {
    i = 2;  // api/v1
  } else if (segments.size() >= 3 && segments[0] == "apis") {
    i = 3;  // apis/group/version
  } else {
    return std::nullopt;
  }
  Path out;
  if (i + 1 < segments.size() && segments[i] == "namespaces" &&
      resources_.count(segments[i + 2 < segments.size() ? i + 2 : i])) {
    out.ns = segments[i + 1];
    i += 2;
  }
  if (i >= segments.size() || !resources_.count(segments[i])) return std::nullopt;
  out.plural = segments[i++];
  if (i < segments.size()) out.name = segments[i++];
  if (i < segments.size()) out.subresource = segments[i++];
  if (i != segments.size()) return std::nullopt;
  return out;
}

void FakeApiServer::Handle(const HttpServerRequest& request, HttpResponseWriter& writer) {
  auto path = ParsePath(request.path);
  if (!path) {
    writer.Send(404, "application/json", StatusBody(404, "NotFound", "no such path").dump());
    return;
  }
  auto params = request.QueryParams();
  {
    std::lock_guard<std::mutex> lock(mu_);
    authorization_.push_back(request.Header("authorization"));
    bool is_watch = params.count("watch") && params["watch"] != "false" && params["watch"] != "0";
    if (!is_watch && fail_count_ > 0) {
      --fail_count_;
      writer.Send(fail_status_, "application/json",
                  StatusBody(fail_status_, "InternalError", "injected failure").dump());
      return;
    }
  }
  if (request.method == "GET" && path->name.empty() && params.count("watch") &&
      params["watch"] != "false" && params["watch"] != "0") {
    HandleWatch(*path, request, writer);
    return;
  }
  Reply reply = Dispatch(*path, request);
  writer.Send(reply.status, "application/json", reply.body.dump());
}

FakeApiServer::Reply FakeApiServer::Dispatch(const Path& path, const HttpServerRequest& request) {
  auto params = request.QueryParams();
  Json body;
  if (!request.body.empty()) {
    body = Json::parse(request.body, nullptr, false);
    if (body.is_discarded()) return {400, StatusBody(400, "BadRequest", "body is not JSON")};
  }
  std::lock_guard<std::mutex> lock(mu_);
  const std::string& method = request.method;
  if (method == "GET" && path.name.empty()) return List(path, params["labelSelector"]);
  if (method == "POST" && path.name.empty()) return Create(path, body);
  if (path.name.empty()) return {405, StatusBody(405, "MethodNotAllowed", "not allowed")};
  if (!path.subresource.empty() &&
      (path.subresource != "status" || !resources_[path.plural].status_subresource)) {
    return {404, StatusBody(404, "NotFound", "no subresource " + path.subresource)};
  }
  if (method == "GET") {
    auto& store = objects_[path.plural];
    auto it = store.find(Key(path.ns, path.name));
    if (it == store.end()) {
      return {404, StatusBody(404, "NotFound", path.plural + " \"" + path.name + "\" not found")};
    }
    return {200, it->second};
  }
  if (method == "PUT") return Update(path, body, path.subresource == "status");
  if (method == "DELETE") return Delete(path);
  if (method == "PATCH") {
    std::string type = request.Header("content-type");
    if (type.starts_with("application/merge-patch+json")) return MergePatch(path, body);
    if (type.starts_with("application/apply-patch+yaml")) {
      if (params["fieldManager"].empty()) {
        return {400, StatusBody(400, "BadRequest", "fieldManager is required for apply requests")};
      }
      return Apply(path, body, params["fieldManager"], params["force"] == "true");
    }
    return {415, StatusBody(415, "UnsupportedMediaType", "unsupported patch type " + type)};
  }
  return {405, StatusBody(405, "MethodNotAllowed", method + " not allowed")};
}

FakeApiServer::Reply FakeApiServer::List(const Path& path, const std::string& selector) {
  ++list_counts_[path.plural];
  const ResourceInfo& info = resources_[path.plural];
  Json items = Json::array();
  for (const auto& [key, object] : objects_[path.plural]) {
    if (info.namespaced && !path.ns.empty() && object["metadata"].value("namespace", "") != path.ns)
      continue;
    if (!SelectorMatches(selector, object)) continue;
    Json item = object;
    item.erase("apiVersion");
    item.erase("kind");
    items.push_back(item);
  }
  return {200,
          {{"apiVersion", info.api_version},
           {"kind", info.kind + "List"},
           {"metadata", {{"resourceVersion", std::to_string(rv_)}}},
           {"items", items}}};
}

FakeApiServer::Reply FakeApiServer::Commit(const Path& path, Json object, const Json* old) {
  const ResourceInfo& info = resources_[path.plural];
  object["apiVersion"] = info.api_version;
  object["kind"] = info.kind;
  Json& meta = object["metadata"];
  meta["name"] = path.name;
  if (info.namespaced) meta["namespace"] = path.ns;
  const std::string key = Key(path.ns, path.name);
  if (!old) {
    meta["uid"] = "uid-" + std::to_string(next_uid_++);
    meta["creationTimestamp"] = Now();
    meta["generation"] = 1;
    meta.erase("deletionTimestamp");
    meta["resourceVersion"] = std::to_string(++rv_);
    objects_[path.plural][key] = object;
    history_.push_back({rv_, path.plural, "ADDED", object});
    changed_.notify_all();
    return {201, object};
  }
  const Json& old_meta = (*old)["metadata"];
  for (const char* field : {"uid", "creationTimestamp", "generation", "deletionTimestamp"}) {
    if (old_meta.contains(field)) {
      meta[field] = old_meta[field];
    } else {
      meta.erase(field);
    }
  }
  if (object.value("spec", Json()) != old->value("spec", Json())) {
    meta["generation"] = old_meta.value("generation", 1) + 1;
  }
  meta["resourceVersion"] = old_meta["resourceVersion"];
  if (meta.contains("finalizers") && meta["finalizers"].empty()) meta.erase("finalizers");
  if (object == *old) return {200, object};  // nothing changed: nothing written
  meta["resourceVersion"] = std::to_string(++rv_);
  if (meta.contains("deletionTimestamp") && !meta.contains("finalizers")) {
    objects_[path.plural].erase(key);
    applied_[path.plural].erase(key);
    history_.push_back({rv_, path.plural, "DELETED", object});
  } else {
    objects_[path.plural][key] = object;
    history_.push_back({rv_, path.plural, "MODIFIED", object});
  }
  changed_.notify_all();
  return {200, object};
}

FakeApiServer::Reply FakeApiServer::Create(const Path& path, Json object) {
  if (!object.is_object() || !object.contains("metadata") ||
      object["metadata"].value("name", "").empty()) {
    return {422, StatusBody(422, "Invalid", "metadata.name is required")};
  }
  Path target = path;
  target.name = object["metadata"]["name"];
  if (objects_[path.plural].count(Key(path.ns, target.name))) {
    return {409, StatusBody(409, "AlreadyExists",
                            path.plural + " \"" + target.name + "\" already exists")};
  }
  const ResourceInfo& info = resources_[path.plural];
  if (info.status_subresource && path.plural != "nodes") object.erase("status");
  return Commit(target, std::move(object), nullptr);
}

FakeApiServer::Reply FakeApiServer::Update(const Path& path, Json object, bool status_only) {
  auto& store = objects_[path.plural];
  auto it = store.find(Key(path.ns, path.name));
  if (it == store.end()) return {404, StatusBody(404, "NotFound", path.name + " not found")};
  const Json old = it->second;
  std::string rv = object["metadata"].value("resourceVersion", "");
  if (!rv.empty() && rv != old["metadata"]["resourceVersion"]) {
    return {409, StatusBody(409, "Conflict",
                            "Operation cannot be fulfilled on " + path.plural + " \"" + path.name +
                                "\": the object has been modified; please apply your changes "
                                "to the latest version and try again")};
  }
  const ResourceInfo& info = resources_[path.plural];
  if (status_only) {
    Json updated = old;
    if (object.contains("status")) {
      updated["status"] = object["status"];
    } else {
      updated.erase("status");
    }
    object = updated;
  } else if (info.status_subresource) {
    if (old.contains("status")) {
      object["status"] = old["status"];
    } else {
      object.erase("status");
    }
  }
  return Commit(path, std::move(object), &old);
}

FakeApiServer::Reply FakeApiServer::MergePatch(const Path& path, const Json& patch) {
  auto& store = objects_[path.plural];
  auto it = store.find(Key(path.ns, path.name));
  if (it == store.end()) return {404, StatusBody(404, "NotFound", path.name + " not found")};
  const Json old = it->second;
  Json effective = patch;
  if (patch.contains("metadata") && patch["metadata"].contains("resourceVersion")) {
    if (patch["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"]) {
      return {409, StatusBody(409, "Conflict", "the object has been modified")};
    }
    effective["metadata"].erase("resourceVersion");
  }
  Json object = old;
  object.merge_patch(effective);
  const ResourceInfo& info = resources_[path.plural];
  if (info.status_subresource) {
    if (path.subresource == "status") {
      Json status = object.value("status", Json());
      object = old;
      object["status"] = status;
    } else if (old.contains("status")) {
      object["status"] = old["status"];
    } else {
      object.erase("status");
    }
  }
  return Commit(path, std::move(object), &old);
}

FakeApiServer::Reply FakeApiServer::Apply(const Path& path, const Json& config_in,
                                          const std::string& manager, bool force) {
  if (!config_in.is_object())
    return {400, StatusBody(400, "BadRequest", "apply body must be an object")};
  const ResourceInfo& info = resources_[path.plural];
  Json config = config_in;
  if (info.status_subresource) {
    if (path.subresource == "status") {
      config = {{"status", config_in.value("status", Json::object())}};
    } else {
      config.erase("status");
    }
  }
  const std::string key = Key(path.ns, path.name);
  auto& store = objects_[path.plural];
  auto it = store.find(key);
  std::optional<Json> old;
  if (it != store.end()) old = it->second;
  if (!old && path.subresource == "status") return {404, StatusBody(404, "NotFound", path.name)};
  Json object = old ? *old : Json{{"metadata", Json::object()}};
  auto& managers = applied_[path.plural][key];
  const std::vector<KeyPath> fields = OwnableLeaves(config);

  std::vector<std::string> conflicts;
  for (auto& [other, other_config] : managers) {
    if (other == manager) continue;
    for (const KeyPath& owned : OwnableLeaves(other_config)) {
      for (const KeyPath& field : fields) {
        if (!Overlaps(owned, field)) continue;
        const Json* current = At(object, field);
        const Json* wanted = At(config, field);
        if (current && wanted && *current == *wanted) continue;
        if (force) {
          EraseAt(other_config, owned);
        } else {
          conflicts.push_back(JoinPath(field) + " (owned by " + other + ")");
        }
      }
    }
  }
  if (!conflicts.empty()) {
    std::string message =
        "Apply failed with " + std::to_string(conflicts.size()) + " conflict(s): ";
    for (const auto& c : conflicts) message += c + "; ";
    return {409, StatusBody(409, "Conflict", message)};
  }
  if (managers.count(manager)) {
    for (const KeyPath& previous : OwnableLeaves(managers[manager])) {
      bool kept = std::any_of(fields.begin(), fields.end(),
                              [&](const KeyPath& f) { return Overlaps(f, previous); });
      bool shared = false;
      for (auto& [other, other_config] : managers) {
        if (other != manager && At(other_config, previous)) shared = true;
      }
      if (!kept && !shared) EraseAt(object, previous);
    }
  }
  for (const KeyPath& field : fields) SetAt(object, field, *At(config, field));
  managers[manager] = config;
  if (!old) return Commit(path, std::move(object), nullptr);
  return Commit(path, std::move(object), &*old);
}

FakeApiServer::Reply FakeApiServer::Delete(const Path& path) {
  auto& store = objects_[path.plural];
  auto it = store.find(Key(path.ns, path.name));
  if (it == store.end()) return {404, StatusBody(404, "NotFound", path.name + " not found")};
  const Json old = it->second;
  Json object = old;
  Json& meta = object["metadata"];
  if (meta.contains("finalizers") && !meta["finalizers"].empty()) {
    if (meta.contains("deletionTimestamp")) return {200, old};
    meta["deletionTimestamp"] = Now();
    meta["generation"] = meta.value("generation", 1) + 1;
    meta["resourceVersion"] = std::to_string(++rv_);
    store[Key(path.ns, path.name)] = object;
    history_.push_back({rv_, path.plural, "MODIFIED", object});
    changed_.notify_all();
    return {200, object};
  }
  meta["resourceVersion"] = std::to_string(++rv_);
  store.erase(it);
  applied_[path.plural].erase(Key(path.ns, path.name));
  history_.push_back({rv_, path.plural, "DELETED", object});
  changed_.notify_all();
  return {200, object};
}

void FakeApiServer::HandleWatch(const Path& path, const HttpServerRequest& request,
                                HttpResponseWriter& writer) {
  auto params = request.QueryParams();
  const std::string selector = params["labelSelector"];
  const bool bookmarks = params["allowWatchBookmarks"] == "true";
  const int timeout = params.count("timeoutSeconds") ? std::stoi(params["timeoutSeconds"]) : 1800;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout);
  const std::string rv_param = params["resourceVersion"];
  const ResourceInfo info = [&] {
    std::lock_guard<std::mutex> lock(mu_);
    return resources_[path.plural];
  }();
  auto in_scope = [&](const Json& object) {
    if (info.namespaced && !path.ns.empty() && object["metadata"].value("namespace", "") != path.ns)
      return false;
    return SelectorMatches(selector, object);
  };
  auto line = [](const std::string& type, const Json& object) {
    return Json{{"type", type}, {"object", object}}.dump() + "\n";
  };

  std::unique_lock<std::mutex> lock(mu_);
  watch_rvs_[path.plural].push_back(rv_param);
  std::string initial;
  int64_t cursor;
  if (rv_param.empty() || rv_param == "0") {
    for (const auto& [key, object] : objects_[path.plural]) {
      if (in_scope(object)) initial += line("ADDED", object);
    }
    cursor = rv_;
  } else {
    cursor = std::stoll(rv_param);
    if (cursor < compacted_rv_) {
      lock.unlock();
      // The API server answers 200 and reports the expiry in the stream.
      writer.BeginStream(200, "application/json");
      writer.WriteChunk(line("ERROR", StatusBody(410, "Expired",
                                                 "too old resource version: " + rv_param + " (" +
                                                     std::to_string(compacted_rv_) + ")")));
      writer.EndStream();
      return;
    }
  }
  ++open_watches_[path.plural];
  const uint64_t drop_generation = drop_generation_;
  uint64_t bookmark_generation = bookmark_generation_;
  lock.unlock();
  bool alive = writer.BeginStream(200, "application/json") && writer.WriteChunk(initial);
  lock.lock();
  while (alive) {
    if (stopping_ || drop_generation_ != drop_generation) {
      lock.unlock();
      writer.Abort();
      lock.lock();
      break;
    }
    std::string out;
    for (const Event& event : history_) {
      if (event.rv <= cursor) continue;
      if (event.plural == path.plural && in_scope(event.object))
        out += line(event.type, event.object);
    }
    cursor = rv_;
    if (bookmark_generation_ != bookmark_generation) {
      bookmark_generation = bookmark_generation_;
      if (bookmarks) {
        out += line("BOOKMARK", {{"apiVersion", info.api_version},
                                 {"kind", info.kind},
                                 {"metadata", {{"resourceVersion", std::to_string(rv_)}}}});
      }
    }
    if (!out.empty()) {
      lock.unlock();
      alive = writer.WriteChunk(out);
      lock.lock();
      continue;
    }
    if (writer.PeerClosed()) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      lock.unlock();
      writer.EndStream();
      lock.lock();
      break;
    }
    changed_.wait_until(lock, std::min(deadline, std::chrono::steady_clock::now() +
                                                     std::chrono::milliseconds(200)));
  }
  --open_watches_[path.plural];
}

Json FakeApiServer::CreateObject(const std::string& plural, const std::string& ns, Json object) {
  std::lock_guard<std::mutex> lock(mu_);
  Reply reply = Create(Path{plural, ns, "", ""}, std::move(object));
  if (reply.status >= 300) throw std::runtime_error("CreateObject: " + reply.body.dump());
  return reply.body;
}

void FakeApiServer::SetStatus(const std::string& plural, const std::string& ns,
                              const std::string& name, const Json& status) {
  std::lock_guard<std::mutex> lock(mu_);
  Reply reply = Update(Path{plural, ns, name, "status"},
                       Json{{"metadata", Json::object()}, {"status", status}}, true);
  if (reply.status >= 300) throw std::runtime_error("SetStatus: " + reply.body.dump());
}

std::optional<Json> FakeApiServer::GetObject(const std::string& plural, const std::string& ns,
                                             const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& store = objects_[plural];
  auto it = store.find(Key(ns, name));
  if (it == store.end()) return std::nullopt;
  return it->second;
}

std::vector<Json> FakeApiServer::ListObjects(const std::string& plural) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Json> out;
  for (const auto& [key, object] : objects_[plural]) out.push_back(object);
  return out;
}

void FakeApiServer::DeleteObject(const std::string& plural, const std::string& ns,
                                 const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  Delete(Path{plural, ns, name, ""});
}

int64_t FakeApiServer::resource_version() {
  std::lock_guard<std::mutex> lock(mu_);
  return rv_;
}

void FakeApiServer::CompactHistory() {
  std::lock_guard<std::mutex> lock(mu_);
  history_.clear();
  compacted_rv_ = rv_;
}

void FakeApiServer::DropWatches() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++drop_generation_;
  }
  changed_.notify_all();
}

void FakeApiServer::SendBookmarks() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++bookmark_generation_;
  }
  changed_.notify_all();
}

std::vector<std::string> FakeApiServer::WatchResourceVersions(const std::string& plural) {
  std::lock_guard<std::mutex> lock(mu_);
  return watch_rvs_[plural];
}

int FakeApiServer::OpenWatches(const std::string& plural) {
  std::lock_guard<std::mutex> lock(mu_);
  return open_watches_[plural];
}

int FakeApiServer::ListCount(const std::string& plural) {
  std::lock_guard<std::mutex> lock(mu_);
  return list_counts_[plural];
}

void FakeApiServer::FailNextRequests(int count, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_count_ = count;
  fail_status_ = status;
}

std::vector<std::string> FakeApiServer::AuthorizationHeaders() {
  std::lock_guard<std::mutex> lock(mu_);
  return authorization_;
}

}  // namespace vfu::op::testing
