// The HTTP layer under the Kubernetes client, kept behind this small interface because the
// library that implements it (cpprestsdk) is in maintenance mode: requests with a string body,
// and streamed responses read line by line (watches). Authentication, TLS and the server
// address belong to the implementation; callers only give a method, a path with its query,
// and a body.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "server/common/status.h"

namespace vfu::op {

struct HttpRequest {
  std::string method;  // GET, POST, PUT, PATCH, DELETE
  std::string path;    // "/api/v1/nodes?watch=1&..." (already percent-encoded)
  std::string content_type;
  std::string body;
};

struct HttpResponse {
  int status = 0;
  std::string body;
};

// Lets another thread end a streamed request. Cancel() is sticky: callbacks registered after
// it run at once.
class StreamCanceller {
 public:
  void Cancel();
  bool cancelled() const;
  // Runs `callback` on Cancel(); the returned id removes it again.
  int OnCancel(std::function<void()> callback);
  void RemoveCallback(int id);

 private:
  mutable std::mutex mu_;
  bool cancelled_ = false;
  int next_id_ = 0;
  std::vector<std::pair<int, std::function<void()>>> callbacks_;
};

class HttpTransport {
 public:
  virtual ~HttpTransport() = default;
  // One request; a transport failure (no connection, timeout, TLS) is an Error, any HTTP
  // status is a response.
  virtual Result<HttpResponse> Send(const HttpRequest& request) = 0;
  // Sends `request` and, if the status is 200, hands each line of the body to `on_line` until
  // the server ends the body, `on_line` returns false or `canceller` is cancelled. Returns the
  // HTTP status; the body of a non-200 response is returned in `error_body`.
  virtual Result<int> Stream(const HttpRequest& request,
                             const std::function<bool(std::string_view line)>& on_line,
                             StreamCanceller& canceller, std::string* error_body) = 0;
};

}  // namespace vfu::op
