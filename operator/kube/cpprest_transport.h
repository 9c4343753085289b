// HttpTransport on cpprestsdk's http_client: TLS verified against the cluster CA (or not, if
// the kubeconfig says insecure-skip-tls-verify), client certificates, and a bearer token taken
// from the TokenSource on every request (re-read once after a 401, for rotated tokens).
// Streams (watches) get their own client so that a long watch never waits behind requests.
#pragma once

#include <chrono>
#include <memory>

#include "operator/kube/cluster_config.h"
#include "operator/kube/http_transport.h"

namespace vfu::op {

struct CppRestTransportOptions {
  std::chrono::seconds request_timeout{30};
  // Streams end when idle this long; watches ask the server for a shorter timeoutSeconds.
  std::chrono::seconds stream_idle_timeout{600};
};

std::unique_ptr<HttpTransport> MakeCppRestTransport(const ClusterConfig& config,
                                                    CppRestTransportOptions options = {});

}  // namespace vfu::op
