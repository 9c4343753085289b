#include "operator/net/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cstring>

namespace vfu::op {
namespace {

constexpr size_t kMaxHeaderBytes = 64 * 1024;
constexpr size_t kMaxBodyBytes = 16 * 1024 * 1024;

const char* ReasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 409:
      return "Conflict";
    case 410:
      return "Gone";
    case 411:
      return "Length Required";
    case 413:
      return "Payload Too Large";
    case 415:
      return "Unsupported Media Type";
    case 422:
      return "Unprocessable Entity";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return "Status";
  }
}

std::string Lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

std::string Trim(std::string_view text) {
  size_t begin = 0;
  size_t end = text.size();
  while (begin < end && (text[begin] == ' ' || text[begin] == '\t')) ++begin;
  while (end > begin && (text[end - 1] == ' ' || text[end - 1] == '\t')) --end;
  return std::string(text.substr(begin, end - begin));
}

// Reads from `fd` into `buffer` until it holds `want` bytes. False on EOF or error.
bool ReadAtLeast(int fd, std::string& buffer, size_t want) {
  char chunk[16384];
  while (buffer.size() < want) {
    ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buffer.append(chunk, static_cast<size_t>(n));
  }
  return true;
}

// Reads one request's head and body; leaves any bytes of a pipelined next request in `buffer`.
// Returns false when the connection should close.
bool ReadRequest(int fd, std::string& buffer, HttpServerRequest& request, int* error_status) {
  *error_status = 0;
  size_t head_end;
  char chunk[16384];
  while ((head_end = buffer.find("\r\n\r\n")) == std::string::npos) {
    if (buffer.size() > kMaxHeaderBytes) {
      *error_status = 413;
      return false;
    }
    ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buffer.append(chunk, static_cast<size_t>(n));
  }
  std::string head = buffer.substr(0, head_end);
  buffer.erase(0, head_end + 4);

  size_t line_end = head.find("\r\n");
  std::string request_line = head.substr(0, line_end);
  size_t sp1 = request_line.find(' ');
  size_t sp2 = request_line.rfind(' ');
  if (sp1 == std::string::npos || sp2 == sp1) {
    *error_status = 400;
    return false;
  }
  request.method = request_line.substr(0, sp1);
  std::string target = request_line.substr(sp1 + 1, sp2 - sp1 - 1);
  size_t question = target.find('?');
  request.path = PercentDecode(target.substr(0, question));
  request.query = question == std::string::npos ? "" : target.substr(question + 1);

  size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
  while (pos < head.size()) {
    size_t end = head.find("\r\n", pos);
    if (end == std::string::npos) end = head.size();
    std::string line = head.substr(pos, end - pos);
    size_t colon = line.find(':');
    if (colon != std::string::npos) {
      request.headers[Lower(Trim(line.substr(0, colon)))] = Trim(line.substr(colon + 1));
    }
    pos = end + 2;
  }
  if (Lower(request.Header("transfer-encoding")).find("chunked") != std::string::npos) {
    *error_status = 411;  // bodies must carry a Content-Length
    return false;
  }
  size_t length = 0;
  std::string length_text = request.Header("content-length");
  if (!length_text.empty()) {
    char* end = nullptr;
    unsigned long long value = std::strtoull(length_text.c_str(), &end, 10);
    if (*end != '\0' || value > kMaxBodyBytes) {
      *error_status = 413;
      return false;
    }
    length = static_cast<size_t>(value);
  }
  if (!ReadAtLeast(fd, buffer, length)) return false;
  request.body = buffer.substr(0, length);
  buffer.erase(0, length);
  return true;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string PercentDecode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size()) {
      int hi = HexValue(text[i + 1]);
      int lo = HexValue(text[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
        continue;
      }
    }
    out.push_back(text[i]);
  }
  return out;
}

std::string PercentEncode(std::string_view text) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::string HttpServerRequest::Header(const std::string& lower_name) const {
  auto it = headers.find(lower_name);
  return it == headers.end() ? std::string() : it->second;
}

std::map<std::string, std::string> HttpServerRequest::QueryParams() const {
  std::map<std::string, std::string> params;
  size_t pos = 0;
  while (pos <= query.size() && !query.empty()) {
    size_t end = query.find('&', pos);
    if (end == std::string::npos) end = query.size();
    std::string pair = query.substr(pos, end - pos);
    if (!pair.empty()) {
      size_t eq = pair.find('=');
      if (eq == std::string::npos) {
        params[PercentDecode(pair)] = "";
      } else {
        params[PercentDecode(pair.substr(0, eq))] = PercentDecode(pair.substr(eq + 1));
      }
    }
    pos = end + 1;
  }
  return params;
}

bool HttpResponseWriter::WriteAll(std::string_view data) {
  if (failed_) return false;
  while (!data.empty()) {
    ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      failed_ = true;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

bool HttpResponseWriter::Send(int status, std::string_view content_type, std::string_view body) {
  if (started_) return false;
  started_ = true;
  std::string head = "HTTP/1.1 " + std::to_string(status) + " " + ReasonPhrase(status) +
                     "\r\nContent-Type: " + std::string(content_type) +
                     "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  return WriteAll(head) && WriteAll(body);
}

bool HttpResponseWriter::BeginStream(int status, std::string_view content_type) {
  if (started_) return false;
  started_ = true;
  std::string head = "HTTP/1.1 " + std::to_string(status) + " " + ReasonPhrase(status) +
                     "\r\nContent-Type: " + std::string(content_type) +
                     "\r\nTransfer-Encoding: chunked\r\n\r\n";
  return WriteAll(head);
}

bool HttpResponseWriter::WriteChunk(std::string_view data) {
  if (data.empty()) return !failed_;
  char size[32];
  std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
  return WriteAll(size) && WriteAll(data) && WriteAll("\r\n");
}

bool HttpResponseWriter::EndStream() { return WriteAll("0\r\n\r\n"); }

bool HttpResponseWriter::PeerClosed() const {
  pollfd pfd{fd_, POLLRDHUP, 0};
  return ::poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

void HttpResponseWriter::Abort() {
  ::shutdown(fd_, SHUT_RDWR);
  started_ = true;
  failed_ = true;
}

Result<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& address,
                                                      HttpHandler handler) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos) return MakeError(EINVAL, "address '" + address + "' has no port");
  std::string host = address.substr(0, colon);
  if (host.empty()) host = "0.0.0.0";
  char* end = nullptr;
  unsigned long port = std::strtoul(address.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port > 65535) return MakeError(EINVAL, "bad port in '" + address + "'");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (host == "localhost") host = "127.0.0.1";
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return MakeError(EINVAL, "address '" + address + "' needs an IPv4 host");
  }
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return MakeError(errno, std::string("socket: ") + std::strerror(errno));
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return MakeError(errno, "bind " + address + ": " + std::strerror(errno));
  }
  if (::listen(fd.get(), 64) != 0)
    return MakeError(errno, std::string("listen: ") + std::strerror(errno));
  socklen_t len = sizeof(addr);
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  return std::unique_ptr<HttpServer>(
      new HttpServer(std::move(fd), ntohs(addr.sin_port), std::move(handler)));
}

HttpServer::HttpServer(UniqueFd listen_fd, uint16_t port, HttpHandler handler)
    : listen_fd_(std::move(listen_fd)), port_(port), handler_(std::move(handler)) {
  accept_thread_ = std::thread([this] { AcceptLoop(); });
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Stop() {
  if (stopping_.exchange(true)) return;
  ::shutdown(listen_fd_.get(), SHUT_RDWR);
  if (accept_thread_.joinable()) accept_thread_.join();
  std::vector<std::unique_ptr<Connection>> connections;
  {
    std::lock_guard<std::mutex> lock(mu_);
    connections.swap(connections_);
  }
  for (auto& c : connections) ::shutdown(c->fd.get(), SHUT_RDWR);
  for (auto& c : connections) {
    if (c->thread.joinable()) c->thread.join();
  }
}

void HttpServer::ReapFinished() {
  std::vector<std::unique_ptr<Connection>> finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::partition(connections_.begin(), connections_.end(),
                             [](const auto& c) { return !c->done.load(); });
    std::move(it, connections_.end(), std::back_inserter(finished));
    connections_.erase(it, connections_.end());
  }
  for (auto& c : finished) c->thread.join();
}

void HttpServer::AcceptLoop() {
  while (!stopping_.load()) {
    pollfd pfd{listen_fd_.get(), POLLIN, 0};
    int ready = ::poll(&pfd, 1, 500);
    ReapFinished();
    if (ready <= 0) continue;
    int fd = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (stopping_.load()) break;
      continue;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    auto connection = std::make_unique<Connection>();
    connection->fd = UniqueFd(fd);
    Connection* raw = connection.get();
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_.load()) break;  // Stop() already took the list; `connection` closes here
    connection->thread = std::thread([this, raw] { Serve(raw); });
    connections_.push_back(std::move(connection));
  }
}

void HttpServer::Serve(Connection* connection) {
  std::string buffer;
  const int fd = connection->fd.get();
  while (!stopping_.load()) {
    HttpServerRequest request;
    int error_status = 0;
    if (!ReadRequest(fd, buffer, request, &error_status)) {
      if (error_status != 0) {
        HttpResponseWriter writer(fd);
        writer.Send(error_status, "text/plain", "bad request\n");
      }
      break;
    }
    HttpResponseWriter writer(fd);
    handler_(request, writer);
    if (!writer.started()) writer.Send(500, "text/plain", "no response\n");
    if (writer.failed() || Lower(request.Header("connection")) == "close") break;
  }
  ::shutdown(fd, SHUT_RDWR);
  connection->done.store(true);
}

}  // namespace vfu::op
