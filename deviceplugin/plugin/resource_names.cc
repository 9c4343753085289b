#include "deviceplugin/plugin/resource_names.h"

#include <cctype>
#include <cerrno>

namespace vfu::deviceplugin {
namespace {

// The kubelet checks "requests." + resource as a qualified name, whose domain may have 253
// characters, so the domain itself may have 244.
constexpr size_t kMaxDomainLength = 253 - std::string_view("requests.").size();
constexpr size_t kMaxNameLength = 63;

bool IsLowerAlnum(char c) {
  return std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c));
}
bool IsAlnum(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

bool IsDnsLabel(std::string_view label) {
  if (label.empty() || label.size() > 63) return false;
  for (char c : label) {
    if (!IsLowerAlnum(c) && c != '-') return false;
  }
  return label.front() != '-' && label.back() != '-';
}

// A DNS-1123 subdomain as Kubernetes checks it: dot-separated labels of a-z, 0-9, '-' with an
// alphanumeric at both ends (only the total length is limited, by the caller).
bool IsDnsSubdomain(std::string_view text) {
  if (text.empty()) return false;
  size_t start = 0;
  while (true) {
    size_t dot = text.find('.', start);
    std::string_view label = text.substr(start, dot == std::string_view::npos ? dot : dot - start);
    if (label.empty() || label.front() == '-' || label.back() == '-') return false;
    for (char c : label) {
      if (!IsLowerAlnum(c) && c != '-') return false;
    }
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

// The name part of a Kubernetes qualified name.
bool IsQualifiedNamePart(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  for (char c : name) {
    if (!IsAlnum(c) && c != '-' && c != '_' && c != '.') return false;
  }
  return IsAlnum(name.front()) && IsAlnum(name.back());
}

// The domain rules shared by prefixes and full names; `what` names the checked text.
Status ValidateDomain(std::string_view domain, const std::string& what) {
  if (domain.empty() || domain.size() > kMaxDomainLength || !IsDnsSubdomain(domain)) {
    return MakeError(EINVAL, what + " is not a DNS subdomain of 1-" +
                                 std::to_string(kMaxDomainLength) +
                                 " characters (lower-case labels of a-z, 0-9, '-')");
  }
  // The kubelet treats every name containing "kubernetes.io/" as a native resource.
  if (domain.ends_with("kubernetes.io")) {
    return MakeError(EINVAL, what + " is reserved: the kubelet refuses kubernetes.io resources");
  }
  if (domain.starts_with("requests.")) {
    return MakeError(EINVAL,
                     what + " starts with 'requests.', which the kubelet reserves for quotas");
  }
  return Status::Ok();
}

}  // namespace

std::string ResourceName(std::string_view prefix, std::string_view device_class) {
  std::string out(prefix);
  out += '/';
  out += device_class;
  return out;
}

Status ValidateResourcePrefix(std::string_view prefix) {
  return ValidateDomain(prefix, "resource prefix '" + std::string(prefix) + "'");
}

Status ValidateDeviceClass(std::string_view device_class) {
  if (!IsDnsLabel(device_class)) {
    return MakeError(EINVAL, "device class '" + std::string(device_class) +
                                 "' is not a DNS label (a-z, 0-9, '-', at most 63 characters)");
  }
  return Status::Ok();
}

Status ValidateExtendedResourceName(std::string_view resource) {
  const std::string quoted = "'" + std::string(resource) + "'";
  size_t slash = resource.find('/');
  if (slash == std::string_view::npos) {
    return MakeError(EINVAL, "resource name " + quoted +
                                 " has no domain: an extended resource is <domain>/<name>");
  }
  std::string_view domain = resource.substr(0, slash);
  std::string_view name = resource.substr(slash + 1);
  VFU_RETURN_IF_ERROR(ValidateDomain(
      domain, "the domain '" + std::string(domain) + "' of resource name " + quoted));
  if (!IsQualifiedNamePart(name)) {
    return MakeError(EINVAL, "the name part '" + std::string(name) + "' of resource name " +
                                 quoted +
                                 " must be 1-63 characters of A-Z, a-z, 0-9, '-', '_', '.', "
                                 "starting and ending with a letter or digit");
  }
  return Status::Ok();
}

Result<std::map<std::string, std::string>> ParseResourceNameFlags(
    const std::vector<std::string>& values) {
  std::map<std::string, std::string> overrides;
  for (const std::string& value : values) {
    size_t equals = value.find('=');
    if (equals == std::string::npos || equals == 0 || equals + 1 == value.size()) {
      return MakeError(EINVAL,
                       "'" + value + "' is not CLASS=NAME (e.g. virtio-blk=example.com/fast-disk)");
    }
    std::string device_class = value.substr(0, equals);
    if (!overrides.emplace(device_class, value.substr(equals + 1)).second) {
      return MakeError(EINVAL, "class '" + device_class + "' is given more than once");
    }
  }
  return overrides;
}

ResourceNaming::ResourceNaming(std::string prefix, std::map<std::string, std::string> overrides)
    : prefix_(std::move(prefix)), overrides_(std::move(overrides)) {
  for (const auto& [device_class, resource] : overrides_) {
    class_of_resource_.emplace(resource, device_class);
  }
}

Status ResourceNaming::Validate() const {
  VFU_RETURN_IF_ERROR(ValidateResourcePrefix(prefix_));
  std::map<std::string, std::string> seen;  // resource -> first class
  for (const auto& [device_class, resource] : overrides_) {
    VFU_RETURN_IF_ERROR(ValidateDeviceClass(device_class));
    VFU_RETURN_IF_ERROR(ValidateExtendedResourceName(resource));
    auto [it, inserted] = seen.emplace(resource, device_class);
    if (!inserted) {
      return MakeError(EINVAL, "resource name '" + resource + "' is given to two classes, '" +
                                   it->second + "' and '" + device_class + "'");
    }
  }
  return Status::Ok();
}

std::string ResourceNaming::ResourceFor(std::string_view device_class) const {
  auto it = overrides_.find(std::string(device_class));
  return it != overrides_.end() ? it->second : ResourceName(prefix_, device_class);
}

std::optional<std::string> ResourceNaming::ClassFor(std::string_view resource) const {
  if (auto it = class_of_resource_.find(resource); it != class_of_resource_.end()) {
    return it->second;
  }
  if (resource.size() > prefix_.size() + 1 && resource.starts_with(prefix_) &&
      resource[prefix_.size()] == '/') {
    return std::string(resource.substr(prefix_.size() + 1));
  }
  return std::nullopt;
}

std::string ResourceNaming::DescribeOverrides() const {
  std::string out;
  for (const auto& [device_class, resource] : overrides_) {
    if (!out.empty()) out += ',';
    out += device_class + "=" + resource;
  }
  return out;
}

}  // namespace vfu::deviceplugin
