#include "operator/kube/event_recorder.h"

#include <atomic>
#include <cstdio>

#include "operator/kube/leader_election.h"
#include "server/common/log.h"

namespace vfu::op {

void EventRecorder::Record(const Json& object, const std::string& type, const std::string& reason,
                           const std::string& message) {
  static std::atomic<unsigned> sequence{0};
  const auto now = std::chrono::system_clock::now();
  char suffix[40];
  std::snprintf(
      suffix, sizeof(suffix), "%llx%04x",
      static_cast<unsigned long long>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count()),
      sequence.fetch_add(1) & 0xffff);
  const Json& meta = object["metadata"];
  Json involved = {{"apiVersion", object.value("apiVersion", "")},
                   {"kind", object.value("kind", "")},
                   {"name", meta.value("name", "")},
                   {"uid", meta.value("uid", "")}};
  if (meta.contains("namespace")) involved["namespace"] = meta["namespace"];
  if (meta.contains("resourceVersion")) involved["resourceVersion"] = meta["resourceVersion"];
  const std::string time = FormatTime(now, false);
  Json event = {{"apiVersion", "v1"},
                {"kind", "Event"},
                {"metadata", {{"name", meta.value("name", "") + "." + suffix}, {"namespace", ns_}}},
                {"involvedObject", involved},
                {"type", type},
                {"reason", reason},
                {"message", message},
                {"source", {{"component", component_}}},
                {"reportingComponent", component_},
                {"firstTimestamp", time},
                {"lastTimestamp", time},
                {"count", 1}};
  auto created = client_.Create(resources::kEvents, ns_, event);
  Log::Write(type == "Warning" ? LogLevel::kWarn : LogLevel::kInfo, message,
             {{"object", meta.value("name", "")}, {"reason", reason}});
  if (!created) {
    Log::Write(LogLevel::kWarn, "could not record an event", {{"error", created.error().message}});
  }
}

}  // namespace vfu::op
