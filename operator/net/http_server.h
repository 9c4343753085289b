// A small HTTP/1.1 server on a TCP address, one thread per connection. The operator serves its
// /healthz and /readyz probes with it, and the tests build the fake Kubernetes API server on
// it. It keeps connections alive between requests, reads Content-Length bodies, and lets a
// handler either send one response or stream a chunked body (a Kubernetes watch) for as long
// as it likes. Port 0 picks an ephemeral port; port() tells which.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "server/common/status.h"
#include "server/common/unique_fd.h"

namespace vfu::op {

struct HttpServerRequest {
  std::string method;
  std::string path;                            // without the query string, percent-decoded
  std::string query;                           // raw, without '?'
  std::map<std::string, std::string> headers;  // keys lower-cased
  std::string body;

  std::string Header(const std::string& lower_name) const;
  // Query parameters, percent-decoded; a repeated key keeps its last value.
  std::map<std::string, std::string> QueryParams() const;
};

// Writes the response of one request: either Send() once, or BeginStream(), WriteChunk()...,
// EndStream(). A handler that writes nothing gets a 500.
class HttpResponseWriter {
 public:
  explicit HttpResponseWriter(int fd) : fd_(fd) {}
  bool Send(int status, std::string_view content_type, std::string_view body);
  bool BeginStream(int status, std::string_view content_type);
  bool WriteChunk(std::string_view data);  // false once the peer is gone
  bool EndStream();
  // Cuts the connection without ending the body, as a crashing server or a broken network
  // would; the peer sees a truncated response.
  void Abort();
  // True once the peer has closed or reset the connection (checked without blocking).
  bool PeerClosed() const;
  bool started() const { return started_; }
  bool failed() const { return failed_; }

 private:
  bool WriteAll(std::string_view data);
  int fd_;
  bool started_ = false;
  bool failed_ = false;
};

using HttpHandler = std::function<void(const HttpServerRequest&, HttpResponseWriter&)>;

class HttpServer {
 public:
  // `address` is "HOST:PORT" (":PORT" or "0.0.0.0:PORT" for all IPv4 addresses).
  static Result<std::unique_ptr<HttpServer>> Start(const std::string& address, HttpHandler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  uint16_t port() const { return port_; }
  // Stops accepting, shuts every connection down and joins all threads. Handlers that block
  // (streams) must be woken by their owner first; their writes fail once the socket is shut.
  void Stop();

 private:
  struct Connection {
    UniqueFd fd;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  HttpServer(UniqueFd listen_fd, uint16_t port, HttpHandler handler);
  void AcceptLoop();
  void Serve(Connection* connection);
  void ReapFinished();

  UniqueFd listen_fd_;
  uint16_t port_;
  HttpHandler handler_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::vector<std::unique_ptr<Connection>> connections_;  // guarded by mu_
  std::thread accept_thread_;
};

std::string PercentDecode(std::string_view text);
std::string PercentEncode(std::string_view text);

}  // namespace vfu::op
