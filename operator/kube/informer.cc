#include "operator/kube/informer.h"

#include "server/common/log.h"

namespace vfu::op {

Informer::Informer(KubeClient& client, InformerOptions options, Handler handler,
                   RestartHook on_restart)
    : client_(client),
      options_(std::move(options)),
      handler_(std::move(handler)),
      on_restart_(std::move(on_restart)) {}

Informer::~Informer() { Stop(); }

std::string Informer::Key(const Json& object) {
  const Json& meta = object["metadata"];
  std::string ns = meta.contains("namespace") ? meta["namespace"].get<std::string>() : "";
  return ns + "/" + meta.value("name", "");
}

void Informer::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { Run(); });
}

void Informer::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    if (active_watch_) active_watch_->Cancel();
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool Informer::WaitForSync(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!synced_.load()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::unique_lock<std::mutex> lock(mu_);
    wake_.wait_for(lock, std::chrono::milliseconds(20));
  }
  return true;
}

std::optional<Json> Informer::Get(const std::string& ns, const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = store_.find(ns + "/" + name);
  if (it == store_.end()) return std::nullopt;
  return it->second;
}

std::vector<Json> Informer::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Json> items;
  items.reserve(store_.size());
  for (const auto& [key, object] : store_) items.push_back(object);
  return items;
}

std::string Informer::resource_version() const {
  std::lock_guard<std::mutex> lock(mu_);
  return resource_version_;
}

void Informer::SleepFor(std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> lock(mu_);
  wake_.wait_for(lock, wait, [this] { return stopping_; });
}

bool Informer::ListAndReplace() {
  auto list = client_.List(options_.type, options_.ns, ListOptions{options_.label_selector, ""});
  if (!list) {
    Log::Write(LogLevel::kWarn, "list failed",
               {{"resource", options_.type.plural}, {"error", list.error().message}});
    return false;
  }
  std::map<std::string, Json> fresh;
  for (auto& item : (*list)["items"]) {
    // List items carry no apiVersion/kind; add them so handlers see whole objects.
    item["apiVersion"] = options_.type.ApiVersion();
    item["kind"] = options_.type.kind;
    fresh[Key(item)] = item;
  }
  std::vector<std::pair<EventType, Json>> changes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, object] : store_) {
      if (!fresh.count(key)) changes.emplace_back(EventType::kDeleted, object);
    }
    for (const auto& [key, object] : fresh) {
      auto old = store_.find(key);
      if (old == store_.end()) {
        changes.emplace_back(EventType::kAdded, object);
      } else if (old->second["metadata"].value("resourceVersion", "") !=
                 object["metadata"].value("resourceVersion", "")) {
        changes.emplace_back(EventType::kModified, object);
      }
    }
    store_ = std::move(fresh);
    resource_version_ = (*list)["metadata"].value("resourceVersion", "");
  }
  ++list_count_;
  for (const auto& [type, object] : changes) handler_(type, object);
  synced_.store(true);
  wake_.notify_all();
  return true;
}

bool Informer::WatchOnce(bool* progressed) {
  StreamCanceller canceller;
  WatchOptions watch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;
    watch.resource_version = resource_version_;
    active_watch_ = &canceller;
  }
  watch.label_selector = options_.label_selector;
  watch.timeout_seconds = options_.watch_timeout_seconds;
  bool expired = false;
  auto started = std::chrono::steady_clock::now();
  auto status = client_.Watch(
      options_.type, options_.ns, watch,
      [&](const WatchEvent& event) {
        if (!event.object.is_object() ||
            (event.type != "ERROR" && !event.object.contains("metadata"))) {
          Log::Write(LogLevel::kWarn, "malformed watch event",
                     {{"resource", options_.type.plural}});
          return false;  // re-watch from the last good resourceVersion
        }
        if (event.type == "ERROR") {
          // The object of an ERROR event is a metav1.Status; 410 means the RV is too old.
          expired = event.object.value("code", 0) == 410;
          return false;
        }
        std::string rv = event.object["metadata"].value("resourceVersion", "");
        if (event.type == "BOOKMARK") {
          std::lock_guard<std::mutex> lock(mu_);
          resource_version_ = rv;
          *progressed = true;
          return true;
        }
        Json object = event.object;
        EventType type;
        {
          std::lock_guard<std::mutex> lock(mu_);
          std::string key = Key(object);
          if (event.type == "ADDED") {
            type = EventType::kAdded;
            store_[key] = object;
          } else if (event.type == "MODIFIED") {
            type = EventType::kModified;
            store_[key] = object;
          } else if (event.type == "DELETED") {
            type = EventType::kDeleted;
            store_.erase(key);
          } else {
            return true;  // unknown event types are skipped, as client-go does
          }
          resource_version_ = rv;
          *progressed = true;
        }
        handler_(type, object);
        return true;
      },
      canceller);
  {
    std::lock_guard<std::mutex> lock(mu_);
    active_watch_ = nullptr;
    if (stopping_) return false;
  }
  if (expired || (status && *status == 410)) {
    Log::Write(LogLevel::kInfo, "watch expired, listing again",
               {{"resource", options_.type.plural}});
    if (on_restart_) on_restart_("expired");
    return true;
  }
  if (!status || *status != 200) {
    Log::Write(LogLevel::kWarn, "watch failed",
               {{"resource", options_.type.plural},
                {"error", status ? "HTTP " + std::to_string(*status) : status.error().message}});
    if (on_restart_) on_restart_("error");
    *progressed = false;
    return false;
  }
  // A watch that ends well before its timeout was cut by the server or the network.
  if (std::chrono::steady_clock::now() - started <
      std::chrono::seconds(options_.watch_timeout_seconds) - std::chrono::seconds(1)) {
    if (on_restart_) on_restart_("closed");
  }
  return false;
}

void Informer::Run() {
  Backoff backoff(options_.backoff);
  bool need_list = true;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
    }
    if (need_list) {
      if (!ListAndReplace()) {
        if (on_restart_) on_restart_("error");
        SleepFor(backoff.Next());
        continue;
      }
      backoff.Reset();
    }
    bool progressed = false;
    need_list = WatchOnce(&progressed);
    if (progressed) backoff.Reset();
    if (!need_list && !progressed) SleepFor(backoff.Next());
  }
}

}  // namespace vfu::op
