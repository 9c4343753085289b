#include "server/config/server_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "server/common/log.h"

namespace vfu::config {
namespace {

// Errors found while walking the document, with the position of the offending node.
class Checker {
 public:
  explicit Checker(std::string source) : source_(std::move(source)) {}

  Error At(const YAML::Node& node, const std::string& what) const {
    int line = node.IsDefined() ? node.Mark().line + 1 : 0;
    return MakeError(EINVAL, source_ + ":" + std::to_string(line) + ": " + what);
  }
  Error AtLine(int line, const std::string& what) const {
    return MakeError(EINVAL, source_ + ":" + std::to_string(line) + ": " + what);
  }

  // Every key of `map` must be in `allowed`.
  Status OnlyKeys(const YAML::Node& map, const std::string& where,
                  const std::set<std::string>& allowed) const {
    for (const auto& kv : map) {
      std::string key = kv.first.as<std::string>();
      if (!allowed.count(key)) {
        std::string list;
        for (const auto& a : allowed) {
          if (!list.empty()) list += ", ";
          list += a;
        }
        return At(kv.first, "unknown field '" + key + "' in " + where + " (known: " + list + ")");
      }
    }
    return Status::Ok();
  }

  Result<std::string> String(const YAML::Node& n, const std::string& name) const {
    if (!n.IsScalar()) return At(n, name + " must be a string");
    return n.as<std::string>();
  }

  Result<uint64_t> Unsigned(const YAML::Node& n, const std::string& name, uint64_t min,
                            uint64_t max) const {
    if (!n.IsScalar()) return At(n, name + " must be a number");
    const std::string& s = n.Scalar();
    if (s.empty() || !std::all_of(s.begin(), s.end(), [](char c) {
          return std::isdigit(static_cast<unsigned char>(c));
        })) {
      return At(n, name + " must be a whole number, not '" + s + "'");
    }
    if (s.size() > 19) return At(n, name + " is too large");
    uint64_t v = std::stoull(s);
    if (v < min || v > max) {
      return At(n, name + " must be between " + std::to_string(min) + " and " +
                       std::to_string(max) + ", not " + s);
    }
    return v;
  }

  Result<bool> Bool(const YAML::Node& n, const std::string& name) const {
    if (!n.IsScalar()) return At(n, name + " must be true or false");
    const std::string& s = n.Scalar();
    if (s == "true") return true;
    if (s == "false") return false;
    return At(n, name + " must be true or false, not '" + s + "'");
  }

  Result<SocketOwner> Owner(const YAML::Node& n, SocketOwner base) const {
    if (!n.IsMap()) return At(n, "socketOwner must be a mapping with uid, gid, mode");
    VFU_RETURN_IF_ERROR(OnlyKeys(n, "socketOwner", {"uid", "gid", "mode"}));
    if (n["uid"]) {
      auto v = Unsigned(n["uid"], "socketOwner.uid", 0, 0xfffffffe);
      if (!v) return v.error();
      base.uid = static_cast<uid_t>(*v);
    }
    if (n["gid"]) {
      auto v = Unsigned(n["gid"], "socketOwner.gid", 0, 0xfffffffe);
      if (!v) return v.error();
      base.gid = static_cast<gid_t>(*v);
    }
    if (n["mode"]) {
      auto s = String(n["mode"], "socketOwner.mode");
      if (!s) return s.error();
      char* end = nullptr;
      unsigned long mode = std::strtoul(s->c_str(), &end, 8);
      if (s->empty() || *end != '\0' || mode > 0777) {
        return At(n["mode"],
                  "socketOwner.mode must be an octal mode like \"0660\", not '" + *s + "'");
      }
      base.mode = static_cast<mode_t>(mode);
    }
    return base;
  }

 private:
  std::string source_;
};

bool ValidId(const std::string& id) {
  if (id.empty() || id.size() > 63) return false;
  if (!std::islower(static_cast<unsigned char>(id[0])) &&
      !std::isdigit(static_cast<unsigned char>(id[0])))
    return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return std::islower(static_cast<unsigned char>(c)) ||
           std::isdigit(static_cast<unsigned char>(c)) || c == '-';
  });
}

Result<DeviceConfig> ParseDevice(const Checker& c, const YAML::Node& d, const Settings& settings) {
  DeviceConfig dev;
  dev.line = d.Mark().line + 1;
  if (!d.IsMap()) return c.At(d, "each device must be a mapping");
  VFU_RETURN_IF_ERROR(c.OnlyKeys(d, "a device",
                                 {"id", "class", "backend", "readOnly", "queues", "queueSize",
                                  "pollMode", "pollThread", "serial", "socketOwner"}));
  if (!d["id"]) return c.At(d, "device has no id");
  auto id = c.String(d["id"], "id");
  if (!id) return id.error();
  if (!ValidId(*id)) {
    return c.At(d["id"], "id '" + *id +
                             "' must be lowercase letters, digits and '-', at most 63 characters");
  }
  dev.spec.id = *id;
  if (!d["class"]) return c.At(d, "device " + *id + " has no class");
  auto cls = c.String(d["class"], "class");
  if (!cls) return cls.error();
  dev.spec.device_class = *cls;
  if (*cls != "virtio-blk" && *cls != "sample") {
    return c.At(d["class"],
                "class '" + *cls + "' is not supported (supported: virtio-blk, sample)");
  }
  dev.spec.socket = DeviceSocketPath(settings, *id);
  auto& p = dev.spec.params;
  if (*cls == "virtio-blk") {
    const YAML::Node b = d["backend"];
    if (!b) return c.At(d, "virtio-blk device " + *id + " needs a backend");
    if (!b.IsMap()) return c.At(b, "backend must be a mapping with a type");
    VFU_RETURN_IF_ERROR(c.OnlyKeys(b, "backend", {"type", "path", "size"}));
    if (!b["type"]) return c.At(b, "backend has no type (file, ram or null)");
    // YAML reads a bare `null` as the null value, not as the word.
    auto type = b["type"].IsNull() ? Result<std::string>(std::string("null"))
                                   : c.String(b["type"], "backend.type");
    if (!type) return type.error();
    if (*type == "file") {
      if (!b["path"]) return c.At(b, "a file backend needs a path");
      auto path = c.String(b["path"], "backend.path");
      if (!path) return path.error();
      if (path->empty() || (*path)[0] != '/')
        return c.At(b["path"], "backend.path must be absolute");
      if (b["size"])
        return c.At(b["size"], "a file backend takes its size from the file; remove size");
      p["backend"] = "file";
      p["path"] = *path;
    } else if (*type == "ram" || *type == "null") {
      if (!b["size"]) return c.At(b, "a " + *type + " backend needs a size (e.g. 64Mi)");
      auto size = c.String(b["size"], "backend.size");
      if (!size) return size.error();
      std::string s = *size;
      if (s.size() > 2 && s.substr(s.size() - 2) == "Mi")
        s = s.substr(0, s.size() - 2) + "M";
      else if (s.size() > 2 && s.substr(s.size() - 2) == "Gi")
        s = s.substr(0, s.size() - 2) + "G";
      else if (s.size() > 2 && s.substr(s.size() - 2) == "Ki")
        s = s.substr(0, s.size() - 2) + "K";
      else if (s.size() > 2 && s.substr(s.size() - 2) == "Ti")
        s = s.substr(0, s.size() - 2) + "T";
      auto bytes = devices::ParseSize(s);
      if (!bytes || *bytes == 0 || *bytes % 512 != 0) {
        return c.At(b["size"], "backend.size '" + *size +
                                   "' must be a non-zero multiple of 512 like 64Mi or 1Gi");
      }
      if (b["path"]) return c.At(b["path"], "a " + *type + " backend has no path");
      p["backend"] = *type;
      p["size"] = s;
    } else {
      return c.At(b["type"], "backend.type '" + *type + "' must be file, ram or null");
    }
    if (d["readOnly"]) {
      auto ro = c.Bool(d["readOnly"], "readOnly");
      if (!ro) return ro.error();
      p["readonly"] = *ro ? "on" : "off";
    }
    if (d["queues"]) {
      auto q = c.Unsigned(d["queues"], "queues", 1, 64);
      if (!q) return q.error();
      p["queues"] = std::to_string(*q);
    }
    if (d["queueSize"]) {
      auto q = c.Unsigned(d["queueSize"], "queueSize", 2, 1024);
      if (!q) return q.error();
      if ((*q & (*q - 1)) != 0) return c.At(d["queueSize"], "queueSize must be a power of two");
      p["queue-size"] = std::to_string(*q);
    }
    if (d["pollMode"]) {
      auto m = c.String(d["pollMode"], "pollMode");
      if (!m) return m.error();
      if (*m != "busy" && *m != "adaptive" && *m != "interrupt") {
        return c.At(d["pollMode"], "pollMode '" + *m + "' must be busy, adaptive or interrupt");
      }
      p["poll"] = *m;
    }
    if (d["serial"]) {
      auto s = c.String(d["serial"], "serial");
      if (!s) return s.error();
      if (s->size() > 20) return c.At(d["serial"], "serial is longer than 20 bytes");
      p["serial"] = *s;
    }
  } else {
    for (const char* key : {"backend", "readOnly", "queues", "queueSize", "pollMode", "serial"}) {
      if (d[key]) return c.At(d[key], std::string("class sample has no ") + key);
    }
  }
  if (d["pollThread"]) {
    auto t = c.Unsigned(d["pollThread"], "pollThread", 0, 1023);
    if (!t) return t.error();
    if (*t >= settings.poll_threads) {
      return c.At(d["pollThread"], "pollThread " + std::to_string(*t) +
                                       " but settings.pollThreads is " +
                                       std::to_string(settings.poll_threads));
    }
    dev.poll_thread = static_cast<unsigned>(*t);
  }
  dev.socket_owner = settings.socket_owner;
  if (d["socketOwner"]) {
    auto o = c.Owner(d["socketOwner"], settings.socket_owner);
    if (!o) return o.error();
    dev.socket_owner = *o;
  }
  return dev;
}

}  // namespace

std::string DeviceSocketPath(const Settings& settings, const std::string& id) {
  return settings.socket_root + "/" + id + "/vfio-user.sock";
}

Result<ServerConfig> ParseServerConfig(const std::string& text, const std::string& source) {
  Checker c(source);
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    return c.AtLine(e.mark.line + 1, "not valid YAML: " + e.msg);
  }
  try {
    if (!root.IsMap())
      return c.AtLine(1, "the document must be a mapping with apiVersion, kind, settings, devices");
    VFU_RETURN_IF_ERROR(
        c.OnlyKeys(root, "the document", {"apiVersion", "kind", "settings", "devices"}));
    if (!root["apiVersion"])
      return c.AtLine(1, std::string("apiVersion is missing (use ") + kApiVersion + ")");
    auto version = c.String(root["apiVersion"], "apiVersion");
    if (!version) return version.error();
    if (*version != kApiVersion) {
      return c.At(root["apiVersion"], "apiVersion '" + *version +
                                          "' is not supported (supported: " + kApiVersion + ")");
    }
    if (root["kind"]) {
      auto kind = c.String(root["kind"], "kind");
      if (!kind) return kind.error();
      if (*kind != kKind) return c.At(root["kind"], "kind must be " + std::string(kKind));
    }
    ServerConfig cfg;
    Settings& s = cfg.settings;
    if (const YAML::Node st = root["settings"]) {
      if (!st.IsMap()) return c.At(st, "settings must be a mapping");
      VFU_RETURN_IF_ERROR(c.OnlyKeys(st, "settings",
                                     {"socketRoot", "controlSocket", "logLevel", "logFormat",
                                      "pollThreads", "pollThreadCpus", "socketOwner"}));
      if (st["socketRoot"]) {
        auto v = c.String(st["socketRoot"], "socketRoot");
        if (!v) return v.error();
        if (v->empty() || (*v)[0] != '/')
          return c.At(st["socketRoot"], "socketRoot must be an absolute path");
        s.socket_root = *v;
      }
      if (st["controlSocket"]) {
        auto v = c.String(st["controlSocket"], "controlSocket");
        if (!v) return v.error();
        if (v->empty() || (*v)[0] != '/')
          return c.At(st["controlSocket"], "controlSocket must be an absolute path");
        s.control_socket = *v;
      }
      if (st["logLevel"]) {
        auto v = c.String(st["logLevel"], "logLevel");
        if (!v) return v.error();
        LogLevel level;
        if (!Log::ParseLevel(*v, &level))
          return c.At(st["logLevel"], "logLevel must be debug, info, warn or error");
        s.log_level = *v;
      }
      if (st["logFormat"]) {
        auto v = c.String(st["logFormat"], "logFormat");
        if (!v) return v.error();
        if (*v != "text" && *v != "json")
          return c.At(st["logFormat"], "logFormat must be text or json");
        s.log_format = *v;
      }
      if (st["pollThreads"]) {
        auto v = c.Unsigned(st["pollThreads"], "pollThreads", 1, 64);
        if (!v) return v.error();
        s.poll_threads = static_cast<unsigned>(*v);
      }
      if (const YAML::Node cpus = st["pollThreadCpus"]) {
        if (!cpus.IsSequence())
          return c.At(cpus, "pollThreadCpus must be a list of CPU lists, one per poll thread");
        if (cpus.size() != s.poll_threads)
          return c.At(cpus, "pollThreadCpus has " + std::to_string(cpus.size()) +
                                " entries but pollThreads is " + std::to_string(s.poll_threads) +
                                " (pollThreads must come first and match)");
        for (const YAML::Node& entry : cpus) {
          auto cpu_list = c.String(entry, "pollThreadCpus entry");
          if (!cpu_list) return cpu_list.error();
          auto parsed = ParseCpuList(*cpu_list);
          if (!parsed) return c.At(entry, "pollThreadCpus: " + parsed.error().message);
          s.poll_thread_cpus.push_back(std::move(*parsed));
        }
      }
      if (st["socketOwner"]) {
        auto o = c.Owner(st["socketOwner"], s.socket_owner);
        if (!o) return o.error();
        s.socket_owner = *o;
      }
    }
    if (s.control_socket.empty()) s.control_socket = s.socket_root + "/control.sock";
    const YAML::Node devs = root["devices"];
    if (devs && !devs.IsNull()) {
      if (!devs.IsSequence()) return c.At(devs, "devices must be a list");
      std::set<std::string> ids;
      for (const YAML::Node& d : devs) {
        auto dev = ParseDevice(c, d, s);
        if (!dev) return dev.error();
        if (!ids.insert(dev->spec.id).second) {
          return c.AtLine(dev->line, "device id '" + dev->spec.id + "' is used twice");
        }
        cfg.devices.push_back(std::move(*dev));
      }
    }
    return cfg;
  } catch (const YAML::Exception& e) {
    return c.AtLine(e.mark.line + 1, e.msg);
  }
}

Result<std::vector<int>> ParseCpuList(const std::string& text) {
  std::vector<int> cpus;
  size_t pos = 0;
  auto number = [&](int* out) {
    size_t start = pos;
    long value = 0;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9' && pos - start < 5) {
      value = value * 10 + (text[pos] - '0');
      ++pos;
    }
    *out = static_cast<int>(value);
    return pos > start && value < kMaxCpus;
  };
  while (pos < text.size()) {
    int first = 0;
    int last = 0;
    if (!number(&first)) break;
    last = first;
    if (pos < text.size() && text[pos] == '-') {
      ++pos;
      if (!number(&last) || last < first) break;
    }
    for (int cpu = first; cpu <= last; ++cpu) cpus.push_back(cpu);
    if (pos == text.size()) return cpus;
    if (text[pos] != ',') break;
    ++pos;
  }
  return MakeError(EINVAL, "'" + text +
                               "' is not a CPU list like \"2\", \"0-3\" or \"1,5-6\" (CPUs below " +
                               std::to_string(kMaxCpus) + ")");
}

namespace {

// A uid or gid of owner=: 0 to 4294967294 (-1 means "unchanged" to chown).
bool ParseOwnerId(const std::string& text, uint32_t* out) {
  if (text.empty() || text.size() > 10 || !std::all_of(text.begin(), text.end(), [](char c) {
        return std::isdigit(static_cast<unsigned char>(c));
      })) {
    return false;
  }
  uint64_t value = std::stoull(text);
  if (value > 0xfffffffeu) return false;
  *out = static_cast<uint32_t>(value);
  return true;
}

}  // namespace

Result<QuickDevice> ParseQuickDevice(const std::string& text) {
  auto spec = devices::ParseDeviceSpec(text);
  if (!spec) return spec.error();
  QuickDevice quick;
  quick.spec = std::move(*spec);
  auto& params = quick.spec.params;
  auto owner = params.find("owner");
  auto mode = params.find("mode");
  if (owner == params.end() && mode == params.end()) return quick;
  SocketOwner socket_owner;  // mode 0660 unless mode= says otherwise
  socket_owner.uid = kUnchangedUid;
  socket_owner.gid = kUnchangedGid;
  if (owner != params.end()) {
    const std::string& value = owner->second;
    size_t colon = value.find(':');
    uint32_t uid = 0;
    uint32_t gid = 0;
    if (colon == std::string::npos || !ParseOwnerId(value.substr(0, colon), &uid) ||
        !ParseOwnerId(value.substr(colon + 1), &gid)) {
      return MakeError(EINVAL, "owner=" + value +
                                   " must be UID:GID, two numbers from 0 to 4294967294 "
                                   "(like owner=107:107)");
    }
    socket_owner.uid = static_cast<uid_t>(uid);
    socket_owner.gid = static_cast<gid_t>(gid);
    params.erase(owner);
  }
  if (mode != params.end()) {
    const std::string& value = mode->second;
    bool octal =
        !value.empty() && value.size() <= 4 &&
        std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '7'; });
    unsigned long bits = octal ? std::strtoul(value.c_str(), nullptr, 8) : 0;
    if (!octal || bits > 0777) {
      return MakeError(EINVAL, "mode=" + value +
                                   " must be the socket's permission bits in octal, from 0000 to "
                                   "0777 (like mode=0660)");
    }
    socket_owner.mode = static_cast<mode_t>(bits);
    params.erase(mode);
  }
  quick.socket_owner = socket_owner;
  return quick;
}

Result<ServerConfig> LoadServerConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return MakeError(ENOENT, path + ": cannot open the configuration file");
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseServerConfig(ss.str(), path);
}

}  // namespace vfu::config
