// Extended resource names of vfio-user device classes, shared by the device plugin (class ->
// the name it registers with the kubelet) and the KubeVirt hook (a name a VMI requests -> the
// class whose container socket paths it plans).
//
// By default class C is the resource `<prefix>/C` (prefix vfio-user.io). `--resource-name
// C=NAME`, repeatable and accepted by both programs, gives class C the resource NAME instead
// (a pool's spec.resourceName, e.g. virtio-blk=example.com/fast-disk). The container layout
// stays keyed by class (/var/run/vfio-user/<class>/<i>/), so the hook must be told the same
// mapping as the plugin. Validity follows what the kubelet's Register accepts for an extended
// resource (k8s.io/kubernetes pkg/apis/core/v1/helper IsExtendedResourceName).
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "server/common/status.h"

namespace vfu::deviceplugin {

inline constexpr std::string_view kDefaultResourcePrefix = "vfio-user.io";

// `<prefix>/<class>`.
std::string ResourceName(std::string_view prefix, std::string_view device_class);
// A resource prefix must be a DNS subdomain the kubelet accepts as the domain of an extended
// resource: not kubernetes.io or any name ending in it, not starting with "requests.".
Status ValidateResourcePrefix(std::string_view prefix);
// A device class must be usable as the name part of a resource name and in a file name: a DNS
// label.
Status ValidateDeviceClass(std::string_view device_class);
// A full extended resource name `domain/name`: the domain as for ValidateResourcePrefix, the
// name a qualified-name part (1-63 of A-Z a-z 0-9 - _ ., alphanumeric at both ends).
Status ValidateExtendedResourceName(std::string_view resource);

// The values of repeated `--resource-name CLASS=NAME` flags as class -> name. Checks the form
// only (one '=' with text on both sides, each class once); ResourceNaming::Validate checks the
// names.
Result<std::map<std::string, std::string>> ParseResourceNameFlags(
    const std::vector<std::string>& values);

class ResourceNaming {
 public:
  explicit ResourceNaming(std::string prefix = std::string(kDefaultResourcePrefix),
                          std::map<std::string, std::string> overrides = {});

  // The prefix, every overridden class and name, and that no two classes share a name.
  Status Validate() const;

  // The resource the plugin registers for the class: its override, else `<prefix>/<class>`.
  std::string ResourceFor(std::string_view device_class) const;
  // The class a requested resource stands for: an override's class, else the name part of a
  // `<prefix>/<x>` resource (also for an overridden class: a hook serving VMIs of several pools
  // may see both names), else nothing (not ours).
  std::optional<std::string> ClassFor(std::string_view resource) const;

  const std::string& prefix() const { return prefix_; }
  const std::map<std::string, std::string>& overrides() const { return overrides_; }
  // "virtio-blk=example.com/fast-disk,..." (empty without overrides), for log lines.
  std::string DescribeOverrides() const;

 private:
  std::string prefix_;
  std::map<std::string, std::string> overrides_;                       // class -> resource
  std::map<std::string, std::string, std::less<>> class_of_resource_;  // resource -> class
};

}  // namespace vfu::deviceplugin
