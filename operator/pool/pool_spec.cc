#include "operator/pool/pool_spec.h"

#include <regex>
#include <set>

namespace vfu::op {
namespace {

using Json = nlohmann::json;

Error Invalid(const std::string& message) { return MakeError(EINVAL, message); }

bool IsDnsLabel(const std::string& text) {
  static const std::regex kLabel("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$");
  return std::regex_match(text, kLabel);
}

// "64Mi", "1Gi", "4096" -> bytes; 0 when malformed.
uint64_t SizeBytes(const std::string& text) {
  static const std::regex kSize("^([0-9]{1,15})(Ki|Mi|Gi|Ti)?$");
  std::smatch m;
  if (!std::regex_match(text, m, kSize)) return 0;
  uint64_t value = std::stoull(m[1].str());
  std::string unit = m[2].str();
  int shift = unit == "Ki" ? 10 : unit == "Mi" ? 20 : unit == "Gi" ? 30 : unit == "Ti" ? 40 : 0;
  if (value > (UINT64_MAX >> shift)) return 0;
  return value << shift;
}

// Whether `path` is `dir` or lies below it.
bool IsSameOrInside(const std::string& path, const std::string& dir) {
  return path == dir || (path.size() > dir.size() && path.starts_with(dir) &&
                         (dir == "/" || path[dir.size()] == '/'));
}

// Directories the server container mounts besides the backends: a backend directory must not
// be one of them, contain one, or lie inside one (duplicate or shadowing mounts). /var/run is
// a symlink to /run on current distributions, so /run/vfio-user is the socket root too.
constexpr const char* kReservedMountPaths[] = {kSocketRoot, "/run/vfio-user", "/etc/vfio-user"};

std::optional<std::string> BackendDirectoryProblem(const std::string& dir) {
  if (dir == "/") return "a backend file cannot be in / (the directory is mounted into the server)";
  for (const char* reserved : kReservedMountPaths) {
    if (IsSameOrInside(dir, reserved) || IsSameOrInside(reserved, dir)) {
      return "the backend directory " + dir + " overlaps " + reserved +
             ", which the server container mounts for other purposes";
    }
  }
  return std::nullopt;
}

}  // namespace

std::string DefaultResourceName(const std::string& device_class) {
  return std::string(kDefaultResourceDomain) + "/" + device_class;
}

std::optional<std::string> ExtendedResourceNameProblem(const std::string& resource) {
  // The kubelet's IsExtendedResourceName: "requests.<resource>" must be a qualified name (so
  // the domain may have 253 - 9 characters), nothing containing "kubernetes.io/", nothing
  // starting with "requests.".
  static const std::regex kDomain(
      "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$");
  static const std::regex kName("^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$");
  size_t slash = resource.find('/');
  if (slash == std::string::npos) return "must be <domain>/<name>";
  std::string domain = resource.substr(0, slash);
  std::string name = resource.substr(slash + 1);
  if (domain.empty() || domain.size() > 244 || !std::regex_match(domain, kDomain)) {
    return "the domain must be a DNS subdomain of at most 244 characters";
  }
  if (domain.ends_with("kubernetes.io")) return "must be outside kubernetes.io";
  if (domain.starts_with("requests.")) return "the domain must not start with 'requests.'";
  if (name.empty() || name.size() > 63 || !std::regex_match(name, kName)) {
    return "the name must be 1-63 characters of A-Z, a-z, 0-9, '-', '_', '.', alphanumeric at "
           "both ends";
  }
  return std::nullopt;
}

std::string BackendDirectory(const std::string& path) {
  std::string dir = path.substr(0, path.rfind('/'));
  return dir.empty() ? "/" : dir;
}

std::string DeviceId(const std::string& pool, int index) {
  return pool + "-" + std::to_string(index);
}

std::string ExpandPathTemplate(const std::string& path_template, const std::string& pool,
                               int index) {
  std::string out;
  for (size_t i = 0; i < path_template.size();) {
    if (path_template.compare(i, 6, "{pool}") == 0) {
      out += pool;
      i += 6;
    } else if (path_template.compare(i, 7, "{index}") == 0) {
      out += std::to_string(index);
      i += 7;
    } else if (path_template.compare(i, 4, "{id}") == 0) {
      out += DeviceId(pool, index);
      i += 4;
    } else {
      out += path_template[i++];
    }
  }
  return out;
}

Result<PoolSpec> ParsePoolSpec(const Json& pool, const std::string& default_image) {
  try {
    const std::string name = pool.at("metadata").value("name", "");
    if (!IsDnsLabel(name) || name.size() > kMaxPoolNameLength) {
      return Invalid("the pool name '" + name + "' must be a DNS label of at most " +
                     std::to_string(kMaxPoolNameLength) +
                     " characters (it prefixes the device ids)");
    }
    if (!pool.contains("spec") || !pool["spec"].is_object()) return Invalid("the pool has no spec");
    const Json& spec = pool["spec"];
    PoolSpec out;
    if (spec.contains("nodeSelector")) {
      for (const auto& [key, value] : spec["nodeSelector"].items()) {
        out.node_selector[key] = value.get<std::string>();
      }
    }
    if (spec.contains("tolerations")) out.tolerations = spec["tolerations"];
    out.device_class = spec.value("deviceClass", "");
    if (out.device_class != "virtio-blk" && out.device_class != "sample") {
      return Invalid("deviceClass '" + out.device_class +
                     "' is not supported (virtio-blk, sample)");
    }
    out.devices_per_node = spec.value("devicesPerNode", 1);
    if (out.devices_per_node < 1 || out.devices_per_node > 128) {
      return Invalid("devicesPerNode must be between 1 and 128");
    }
    const Json backend = spec.value("backend", Json::object());
    if (out.device_class == "sample") {
      if (!backend.empty()) return Invalid("deviceClass sample takes no backend");
      if (spec.contains("pollMode")) return Invalid("deviceClass sample takes no pollMode");
    } else {
      out.backend_type = backend.value("type", "");
      if (out.backend_type == "file") {
        out.path_template = backend.value("pathTemplate", "");
        if (out.path_template.empty() || out.path_template[0] != '/') {
          return Invalid("a file backend needs an absolute backend.pathTemplate");
        }
        if (out.path_template.find("..") != std::string::npos) {
          return Invalid("backend.pathTemplate must not contain '..'");
        }
        if (backend.contains("size")) {
          return Invalid("a file backend takes its size from the file; remove backend.size");
        }
        std::set<std::string> paths;
        for (int i = 0; i < out.devices_per_node; ++i) {
          std::string path = ExpandPathTemplate(out.path_template, name, i);
          if (auto problem = BackendDirectoryProblem(BackendDirectory(path))) {
            return Invalid("backend.pathTemplate: " + *problem);
          }
          paths.insert(std::move(path));
        }
        if (static_cast<int>(paths.size()) != out.devices_per_node) {
          return Invalid(
              "backend.pathTemplate must contain {index} or {id} so that each device has its "
              "own file");
        }
      } else if (out.backend_type == "ram" || out.backend_type == "null") {
        if (!backend.contains("size")) {
          return Invalid("a " + out.backend_type + " backend needs backend.size (e.g. 64Mi)");
        }
        const Json& size = backend["size"];
        out.backend_size = size.is_number_integer() ? std::to_string(size.get<int64_t>())
                                                    : size.get<std::string>();
        uint64_t bytes = SizeBytes(out.backend_size);
        if (bytes == 0 || bytes % 512 != 0) {
          return Invalid("backend.size '" + out.backend_size +
                         "' must be a non-zero multiple of 512 bytes like 64Mi");
        }
        if (backend.contains("pathTemplate")) {
          return Invalid("a " + out.backend_type + " backend has no pathTemplate");
        }
      } else {
        return Invalid("backend.type '" + out.backend_type + "' must be file, ram or null");
      }
      out.poll_mode = spec.value("pollMode", "");
    }
    out.poll_threads = spec.value("pollThreads", 1);
    if (out.poll_threads < 1 || out.poll_threads > 64) return Invalid("pollThreads must be 1..64");
    if (spec.contains("socketOwner")) {
      const Json& owner = spec["socketOwner"];
      out.socket_uid = owner.value("uid", 107u);
      out.socket_gid = owner.value("gid", 107u);
      out.socket_mode = owner.value("mode", std::string("0660"));
    }
    out.resource_name = spec.value("resourceName", DefaultResourceName(out.device_class));
    if (auto problem = ExtendedResourceNameProblem(out.resource_name)) {
      return Invalid("resourceName '" + out.resource_name +
                     "' is not an extended resource name the kubelet accepts: " + *problem);
    }
    out.image = spec.value("image", default_image);
    if (out.image.empty()) return Invalid("no image: set spec.image or the operator's --image");
    return out;
  } catch (const Json::exception& e) {
    return Invalid(std::string("malformed pool: ") + e.what());
  }
}

}  // namespace vfu::op
