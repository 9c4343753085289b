// The VfioUserDevicePool custom resource (vfio-user.io/v1alpha1, cluster-scoped) as the
// operator reads it: the spec with defaults filled in, after the checks the CRD's OpenAPI
// schema cannot express (which backend fields a backend type needs, a path template that
// gives each device its own file in a directory the server container can mount, a pool name
// short enough for device ids, a resource name the kubelet accepts from the device plugin). A
// spec that fails them is reported in status (reason InvalidSpec) and nothing is rolled out
// for it.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "server/common/status.h"

namespace vfu::op {

inline constexpr const char* kPoolFinalizer = "vfio-user.io/pool-cleanup";
inline constexpr const char* kForceDeleteAnnotation = "vfio-user.io/force-delete";
inline constexpr const char* kSocketRoot = "/var/run/vfio-user";
inline constexpr const char* kDefaultResourceDomain = "vfio-user.io";
inline constexpr size_t kMaxPoolNameLength = 50;  // "<pool>-<index>" must stay <= 63

struct PoolSpec {
  std::map<std::string, std::string> node_selector;
  nlohmann::json tolerations = nlohmann::json::array();
  std::string device_class;  // virtio-blk | sample
  int devices_per_node = 1;
  std::string backend_type;   // file | ram | null (virtio-blk only)
  std::string backend_size;   // ram/null: "64Mi" or a byte count
  std::string path_template;  // file: "/var/lib/vfio-user/{pool}-{index}.img"
  std::string poll_mode;      // busy | adaptive | interrupt; empty: the server's default
  int poll_threads = 1;
  unsigned socket_uid = 107;
  unsigned socket_gid = 107;
  std::string socket_mode = "0660";
  std::string resource_name;  // spec.resourceName or vfio-user.io/<class>
  std::string image;          // spec.image or the operator's --image
};

// Reads and checks the pool object (metadata.name and spec).
Result<PoolSpec> ParsePoolSpec(const nlohmann::json& pool, const std::string& default_image);

// "vfio-user.io/<class>": the resource the device plugin registers unless told otherwise.
std::string DefaultResourceName(const std::string& device_class);

// Why the kubelet would refuse `resource` as an extended resource from a device plugin (the
// rules of the plugin's --resource-name), or nullopt when it is fine.
std::optional<std::string> ExtendedResourceNameProblem(const std::string& resource);

// The host directory a backend file lives in (its parent; "/" for a file in the root).
std::string BackendDirectory(const std::string& path);

// The stable id of a pool's device: "<pool>-<index>".
std::string DeviceId(const std::string& pool, int index);
// The file of device `index`: {pool}, {index} and {id} of the template replaced.
std::string ExpandPathTemplate(const std::string& path_template, const std::string& pool,
                               int index);

}  // namespace vfu::op
