// Shared helpers of the operator tests: a KubeClient on the real cpprestsdk transport pointed
// at the fake API server, and bounded waits for conditions (no sleeps that assume timing).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <thread>

#include "operator/kube/api_client.h"
#include "operator/kube/cpprest_transport.h"
#include "tests/unit/operator/fake_api_server.h"

namespace vfu::op::testing {

inline std::unique_ptr<KubeClient> MakeClient(const FakeApiServer& fake,
                                              std::shared_ptr<TokenSource> token = nullptr) {
  ClusterConfig config;
  config.server = fake.url();
  config.token = token ? token : TokenSource::Static("test-token");
  config.namespace_name = "vfio-user";
  CppRestTransportOptions options;
  options.request_timeout = std::chrono::seconds(10);
  options.stream_idle_timeout = std::chrono::seconds(30);
  RetryPolicy retry;
  retry.backoff =
      BackoffOptions{std::chrono::milliseconds(10), std::chrono::milliseconds(50), 2.0, 0.2};
  return std::make_unique<KubeClient>(
      std::shared_ptr<HttpTransport>(MakeCppRestTransport(config, options)), retry);
}

// Polls `condition` until it holds or `timeout` passes; returns whether it held.
inline bool WaitFor(const std::function<bool()>& condition,
                    std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

}  // namespace vfu::op::testing
