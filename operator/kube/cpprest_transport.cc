#include "operator/kube/cpprest_transport.h"

#include <cpprest/containerstream.h>
#include <cpprest/http_client.h>

#include <boost/asio/ssl.hpp>

#include "server/version.h"

namespace vfu::op {
namespace {

namespace http = web::http;
namespace client = web::http::client;

class CppRestTransport : public HttpTransport {
 public:
  CppRestTransport(const ClusterConfig& config, CppRestTransportOptions options)
      : token_(config.token),
        requests_(utility::conversions::to_string_t(config.server),
                  MakeClientConfig(config, options.request_timeout)),
        streams_config_(MakeClientConfig(config, options.stream_idle_timeout)),
        server_(config.server) {}

  Result<HttpResponse> Send(const HttpRequest& request) override {
    for (int attempt = 0;; ++attempt) {
      try {
        http::http_response response = requests_.request(MakeRequest(request)).get();
        if (response.status_code() == http::status_codes::Unauthorized && attempt == 0 && token_) {
          token_->Invalidate();  // a rotated token: read the file again and retry once
          continue;
        }
        HttpResponse result;
        result.status = response.status_code();
        result.body = response.extract_utf8string(true).get();
        return result;
      } catch (const std::exception& e) {
        return MakeError(EIO, request.method + " " + request.path + ": " + e.what());
      }
    }
  }

  Result<int> Stream(const HttpRequest& request,
                     const std::function<bool(std::string_view)>& on_line,
                     StreamCanceller& canceller, std::string* error_body) override {
    pplx::cancellation_token_source cts;
    int callback = canceller.OnCancel([&cts] { cts.cancel(); });
    struct Unregister {
      StreamCanceller& canceller;
      int id;
      ~Unregister() { canceller.RemoveCallback(id); }
    } unregister{canceller, callback};
    try {
      // One client per stream: its connection is never shared with short requests.
      client::http_client stream_client(utility::conversions::to_string_t(server_),
                                        streams_config_);
      http::http_response response =
          stream_client.request(MakeRequest(request), cts.get_token()).get();
      if (response.status_code() == http::status_codes::Unauthorized && token_) {
        token_->Invalidate();
      }
      if (response.status_code() != http::status_codes::OK) {
        std::string body = response.extract_utf8string(true).get();
        if (error_body) *error_body = std::move(body);
        return static_cast<int>(response.status_code());
      }
      concurrency::streams::istream body = response.body();
      while (!canceller.cancelled()) {
        concurrency::streams::container_buffer<std::string> line;
        size_t n = body.read_line(line).get();
        if (n == 0 && body.is_eof()) break;
        if (n == 0) continue;
        if (!on_line(line.collection())) break;
      }
      return 200;
    } catch (const std::exception& e) {
      if (canceller.cancelled()) return 200;  // ended on purpose
      return MakeError(EIO, request.method + " " + request.path + ": " + e.what());
    }
  }

 private:
  static client::http_client_config MakeClientConfig(const ClusterConfig& config,
                                                     std::chrono::seconds timeout) {
    client::http_client_config client_config;
    client_config.set_timeout(timeout);
    client_config.set_validate_certificates(!config.insecure_skip_tls_verify);
    std::string ca = config.ca_pem;
    std::string cert = config.client_cert_pem;
    std::string key = config.client_key_pem;
    client_config.set_ssl_context_callback([ca, cert, key](boost::asio::ssl::context& context) {
      if (!ca.empty()) context.add_certificate_authority(boost::asio::buffer(ca));
      if (!cert.empty()) context.use_certificate_chain(boost::asio::buffer(cert));
      if (!key.empty())
        context.use_private_key(boost::asio::buffer(key), boost::asio::ssl::context::pem);
    });
    return client_config;
  }

  http::http_request MakeRequest(const HttpRequest& request) const {
    http::http_request message(utility::conversions::to_string_t(request.method));
    message.set_request_uri(utility::conversions::to_string_t(request.path));
    message.headers().add(U("Accept"), U("application/json"));
    message.headers().add(U("User-Agent"), utility::conversions::to_string_t(
                                               std::string("vfio-user-operator/") + kVersion));
    if (token_) {
      std::string token = token_->Token();
      if (!token.empty()) {
        message.headers().add(U("Authorization"),
                              utility::conversions::to_string_t("Bearer " + token));
      }
    }
    if (!request.body.empty() || request.method == "POST" || request.method == "PUT" ||
        request.method == "PATCH") {
      message.set_body(request.body, request.content_type.empty() ? std::string("application/json")
                                                                  : request.content_type);
    }
    return message;
  }

  std::shared_ptr<TokenSource> token_;
  client::http_client requests_;
  client::http_client_config streams_config_;
  std::string server_;
};

}  // namespace

void StreamCanceller::Cancel() {
  // Callbacks run under the lock so that RemoveCallback() cannot return (and its owner go
  // away) while one of them runs.
  std::lock_guard<std::mutex> lock(mu_);
  if (cancelled_) return;
  cancelled_ = true;
  for (auto& [id, callback] : callbacks_) callback();
}

bool StreamCanceller::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

int StreamCanceller::OnCancel(std::function<void()> callback) {
  std::unique_lock<std::mutex> lock(mu_);
  if (cancelled_) {
    lock.unlock();
    callback();
    return -1;
  }
  int id = next_id_++;
  callbacks_.emplace_back(id, std::move(callback));
  return id;
}

void StreamCanceller::RemoveCallback(int id) {
  std::lock_guard<std::mutex> lock(mu_);
  std::erase_if(callbacks_, [id](const auto& entry) { return entry.first == id; });
}

std::unique_ptr<HttpTransport> MakeCppRestTransport(const ClusterConfig& config,
                                                    CppRestTransportOptions options) {
  return std::make_unique<CppRestTransport>(config, options);
}

}  // namespace vfu::op
