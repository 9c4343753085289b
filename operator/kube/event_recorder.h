// Writes core/v1 Events about an object (kubectl describe shows them), the way client-go's
// recorder names them: "<object>.<hex time>" in the operator's namespace, with the object as
// involvedObject, a reason in CamelCase and a human message. Failures are logged, never fatal.
#pragma once

#include <string>

#include "operator/kube/api_client.h"

namespace vfu::op {

class EventRecorder {
 public:
  EventRecorder(KubeClient& client, std::string ns, std::string component)
      : client_(client), ns_(std::move(ns)), component_(std::move(component)) {}

  // `type` is "Normal" or "Warning".
  void Record(const Json& object, const std::string& type, const std::string& reason,
              const std::string& message);

 private:
  KubeClient& client_;
  std::string ns_;
  std::string component_;
};

}  // namespace vfu::op
