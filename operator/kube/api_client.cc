#include "operator/kube/api_client.h"

#include <thread>

#include "operator/net/http_server.h"

namespace vfu::op {

namespace resources {
const ResourceType kDevicePools{"vfio-user.io", "v1alpha1", "vfiouserdevicepools",
                                "VfioUserDevicePool", false};
const ResourceType kDaemonSets{"apps", "v1", "daemonsets", "DaemonSet", true};
const ResourceType kConfigMaps{"", "v1", "configmaps", "ConfigMap", true};
const ResourceType kNodes{"", "v1", "nodes", "Node", false};
const ResourceType kPods{"", "v1", "pods", "Pod", true};
const ResourceType kEvents{"", "v1", "events", "Event", true};
const ResourceType kLeases{"coordination.k8s.io", "v1", "leases", "Lease", true};
}  // namespace resources

namespace {

bool Retryable(int code) {
  return code == kTransportError || code == 429 || code == 500 || code == 502 || code == 503 ||
         code == 504;
}

Error ErrorFromResponse(const std::string& method, const std::string& path, int status,
                        const std::string& body) {
  std::string message;
  auto parsed = Json::parse(body, nullptr, false);
  if (!parsed.is_discarded() && parsed.is_object() && parsed.contains("message")) {
    message = parsed["message"].get<std::string>();
  } else {
    message = body.substr(0, 200);
  }
  return MakeError(status, method + " " + path + ": " + std::to_string(status) + " " + message);
}

std::string AddQuery(std::string path, const std::string& key, const std::string& value) {
  path += path.find('?') == std::string::npos ? '?' : '&';
  return path + key + "=" + PercentEncode(value);
}

}  // namespace

std::string CollectionPath(const ResourceType& type, const std::string& ns) {
  std::string path =
      type.group.empty() ? "/api/" + type.version : "/apis/" + type.group + "/" + type.version;
  if (type.namespaced && !ns.empty()) path += "/namespaces/" + ns;
  return path + "/" + type.plural;
}

std::string ObjectPath(const ResourceType& type, const std::string& ns, const std::string& name,
                       const std::string& subresource) {
  std::string path = CollectionPath(type, ns) + "/" + PercentEncode(name);
  if (!subresource.empty()) path += "/" + subresource;
  return path;
}

KubeClient::KubeClient(std::shared_ptr<HttpTransport> transport, RetryPolicy retry)
    : transport_(std::move(transport)), retry_(retry) {}

Result<Json> KubeClient::Call(const std::string& method, const std::string& path,
                              const std::string& content_type, const std::string& body) {
  Backoff backoff(retry_.backoff);
  for (int attempt = 1;; ++attempt) {
    auto response = transport_->Send(HttpRequest{method, path, content_type, body});
    Error error;
    if (!response) {
      error = MakeError(kTransportError, response.error().message);
    } else if (response->status >= 200 && response->status < 300) {
      if (response->body.empty()) return Json::object();
      auto parsed = Json::parse(response->body, nullptr, false);
      if (parsed.is_discarded()) {
        return MakeError(kTransportError, method + " " + path + ": the answer is not JSON");
      }
      return parsed;
    } else {
      error = ErrorFromResponse(method, path, response->status, response->body);
    }
    if (!Retryable(error.code) || attempt >= retry_.attempts) return error;
    std::this_thread::sleep_for(backoff.Next());
  }
}

Result<Json> KubeClient::Get(const ResourceType& type, const std::string& ns,
                             const std::string& name) {
  return Call("GET", ObjectPath(type, ns, name), "", "");
}

Result<Json> KubeClient::List(const ResourceType& type, const std::string& ns,
                              const ListOptions& options) {
  std::string path = CollectionPath(type, ns);
  if (!options.label_selector.empty())
    path = AddQuery(path, "labelSelector", options.label_selector);
  if (!options.field_selector.empty())
    path = AddQuery(path, "fieldSelector", options.field_selector);
  return Call("GET", path, "", "");
}

Result<Json> KubeClient::Create(const ResourceType& type, const std::string& ns,
                                const Json& object) {
  return Call("POST", CollectionPath(type, ns), "application/json", object.dump());
}

Result<Json> KubeClient::Update(const ResourceType& type, const std::string& ns,
                                const Json& object) {
  return Call("PUT", ObjectPath(type, ns, object["metadata"]["name"].get<std::string>()),
              "application/json", object.dump());
}

Result<Json> KubeClient::UpdateStatus(const ResourceType& type, const std::string& ns,
                                      const Json& object) {
  return Call("PUT", ObjectPath(type, ns, object["metadata"]["name"].get<std::string>(), "status"),
              "application/json", object.dump());
}

Result<Json> KubeClient::Apply(const ResourceType& type, const std::string& ns, const Json& object,
                               const std::string& field_manager, bool force,
                               const std::string& subresource) {
  std::string path =
      ObjectPath(type, ns, object["metadata"]["name"].get<std::string>(), subresource);
  path = AddQuery(path, "fieldManager", field_manager);
  if (force) path = AddQuery(path, "force", "true");
  // JSON is YAML, so the apply body can be the JSON text.
  return Call("PATCH", path, "application/apply-patch+yaml", object.dump());
}

Result<Json> KubeClient::MergePatch(const ResourceType& type, const std::string& ns,
                                    const std::string& name, const Json& patch) {
  return Call("PATCH", ObjectPath(type, ns, name), "application/merge-patch+json", patch.dump());
}

Status KubeClient::Delete(const ResourceType& type, const std::string& ns,
                          const std::string& name) {
  auto result = Call("DELETE", ObjectPath(type, ns, name), "", "");
  if (!result) return result.error();
  return Status::Ok();
}

Result<int> KubeClient::Watch(const ResourceType& type, const std::string& ns,
                              const WatchOptions& options,
                              const std::function<bool(const WatchEvent&)>& on_event,
                              StreamCanceller& canceller) {
  std::string path = AddQuery(CollectionPath(type, ns), "watch", "1");
  if (!options.resource_version.empty()) {
    path = AddQuery(path, "resourceVersion", options.resource_version);
  }
  if (options.allow_bookmarks) path = AddQuery(path, "allowWatchBookmarks", "true");
  if (!options.label_selector.empty())
    path = AddQuery(path, "labelSelector", options.label_selector);
  if (options.timeout_seconds > 0) {
    path = AddQuery(path, "timeoutSeconds", std::to_string(options.timeout_seconds));
  }
  std::optional<Error> decode_error;
  auto on_line = [&](std::string_view line) {
    auto parsed = Json::parse(line, nullptr, false);
    if (parsed.is_discarded() || !parsed.is_object() || !parsed.contains("type")) {
      decode_error = MakeError(kTransportError, "watch " + path + ": undecodable event");
      return false;
    }
    WatchEvent event{parsed["type"].get<std::string>(), std::move(parsed["object"])};
    return on_event(event);
  };
  std::string error_body;
  auto status =
      transport_->Stream(HttpRequest{"GET", path, "", ""}, on_line, canceller, &error_body);
  if (!status) return MakeError(kTransportError, status.error().message);
  if (decode_error) return *decode_error;
  return *status;
}

}  // namespace vfu::op
