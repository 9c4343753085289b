// Allocation rules of the device plugin as pure functions (no I/O, no locks), so that every
// rule is testable on its own:
//  - names: plugin socket `vfio-user-<class>.sock`, env variables `VFIO_USER_<CLASS>_SOCKETS` /
//    `VFIO_USER_<CLASS>_DEVICE_IDS` (resource names: resource_names.h);
//  - Allocate: the i-th device (in sorted ID order) has its socket DIRECTORY mounted at
//    `/var/run/vfio-user/<class>/<i>` (a server restart replaces the socket inode, a directory
//    mount survives that), and the env variables list the container socket paths and IDs in
//    the same order;
//  - GetPreferredAllocation: keep a container's devices on one NUMA node when topology is
//    known, and on one poll thread, using the best-fitting group.
#pragma once

#include <string>
#include <vector>

#include "deviceplugin/plugin/device_registry.h"
#include "deviceplugin/plugin/resource_names.h"
#include "deviceplugin/v1beta1/api.pb.h"
#include "server/common/status.h"

namespace vfu::deviceplugin {

inline constexpr const char* kDevicePluginApiVersion = "v1beta1";
inline constexpr const char* kContainerSocketRoot = "/var/run/vfio-user";
inline constexpr const char* kHealthy = "Healthy";
inline constexpr const char* kUnhealthy = "Unhealthy";
inline constexpr size_t kMaxDeviceIdLength = 63;

std::string PluginSocketName(const std::string& device_class);
// "virtio-blk" -> "VFIO_USER_VIRTIO_BLK" (upper case, every other character than [A-Z0-9] -> _).
std::string EnvVarPrefix(const std::string& device_class);

// The ListAndWatch message for these devices.
v1beta1::ListAndWatchResponse BuildDeviceList(const std::vector<AdvertisedDevice>& devices);

// The answer for one container that was given `requested_ids` of `device_class`. Errors
// (errno-coded): EINVAL for an empty or duplicated request, ENOENT for an unknown ID,
// EAGAIN for an unhealthy device (the message says why).
Result<v1beta1::ContainerAllocateResponse> BuildContainerAllocation(
    const std::string& device_class, const std::vector<std::string>& requested_ids,
    const std::vector<AdvertisedDevice>& known_devices);

// Which `size` devices of `available` to take: all of `must_include`, then the rest from as
// few NUMA nodes (when every candidate's node is known) and poll threads as possible, choosing
// the smallest group that still fits and IDs in sorted order. Unknown IDs come last.
std::vector<std::string> PreferredAllocation(const std::vector<std::string>& available,
                                             const std::vector<std::string>& must_include, int size,
                                             const std::vector<AdvertisedDevice>& known_devices);

}  // namespace vfu::deviceplugin
