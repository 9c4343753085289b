#include "tests/unit/deviceplugin/plugin/metrics_scrape.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <limits>
#include <sstream>

namespace vfu::testing {

std::optional<std::string> HttpGet(int port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::nullopt;
  struct timeval tv {
    10, 0
  };
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    std::string request = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
        static_cast<ssize_t>(request.size())) {
      char buf[8192];
      ssize_t n;
      while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0)
        response.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  size_t body = response.find("\r\n\r\n");
  if (response.rfind("HTTP/1.", 0) != 0 || body == std::string::npos) return std::nullopt;
  if (response.find(" 200 ") == std::string::npos) return std::nullopt;
  return response.substr(body + 4);
}

namespace {
// Parses `name{a="x",b="y"} value` into its labels; false when the line is not `name`.
bool ParseSample(const std::string& line, const std::string& name,
                 std::map<std::string, std::string>* labels, double* value) {
  if (line.rfind(name, 0) != 0) return false;
  size_t pos = name.size();
  if (pos < line.size() && line[pos] == '{') {
    size_t end = line.find('}', pos);
    if (end == std::string::npos) return false;
    std::string body = line.substr(pos + 1, end - pos - 1);
    size_t i = 0;
    while (i < body.size()) {
      size_t eq = body.find('=', i);
      if (eq == std::string::npos || eq + 1 >= body.size() || body[eq + 1] != '"') return false;
      size_t close = body.find('"', eq + 2);
      if (close == std::string::npos) return false;
      (*labels)[body.substr(i, eq - i)] = body.substr(eq + 2, close - eq - 2);
      i = close + 1;
      if (i < body.size() && body[i] == ',') ++i;
    }
    pos = end + 1;
  }
  if (pos >= line.size() || line[pos] != ' ') return false;
  std::string rest = line.substr(pos + 1);
  if (rest == "+Inf") {
    *value = std::numeric_limits<double>::infinity();
    return true;
  }
  try {
    *value = std::stod(rest);
  } catch (...) {
    return false;
  }
  return true;
}
}  // namespace

std::optional<double> FindSample(const std::string& exposition, const std::string& name,
                                 const std::map<std::string, std::string>& labels) {
  std::istringstream in(exposition);
  std::string line;
  while (std::getline(in, line)) {
    std::map<std::string, std::string> got;
    double value = 0;
    if (!ParseSample(line, name, &got, &value)) continue;
    bool match = true;
    for (const auto& [k, v] : labels) {
      auto it = got.find(k);
      if (it == got.end() || it->second != v) match = false;
    }
    if (match) return value;
  }
  return std::nullopt;
}

std::string FamilyType(const std::string& exposition, const std::string& name) {
  std::string prefix = "# TYPE " + name + " ";
  size_t at = exposition.find(prefix);
  if (at == std::string::npos) return {};
  size_t end = exposition.find('\n', at);
  return exposition.substr(at + prefix.size(), end - at - prefix.size());
}

}  // namespace vfu::testing
