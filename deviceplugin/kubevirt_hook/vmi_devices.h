// What a VirtualMachineInstance asks of the hook: the vfio-user devices it requests.
//
// A VMI requests devices like any extended resource, `vfio-user.io/<class>: N` under
// spec.domain.resources (KubeVirt copies them to the compute container, so the kubelet asks our
// device plugin to allocate N devices of that class). A pool may give a class another resource
// name (the plugin's and the hook's `--resource-name CLASS=NAME`): a ResourceNaming maps the
// requested names back to classes, and two names of one class in one VMI are refused (both
// would be mounted at the same container paths). The sidecar never sees the compute
// container's mounts or env, so the device plugin makes socket paths deterministic: the i-th
// device of a class is at `<root>/<class>/<i>/vfio-user.sock` in the container (root
// /var/run/vfio-user). A DevicePlan lists those devices in a stable order (classes sorted by
// name, then i = 0..N-1), each with a stable QEMU device id `vfu-<class>-<i>` and an optional PCI
// placement from the annotation `vfio-user.io/pci-placement`
// (`{"vfu-virtio-blk-0": {"bus": "pcie.0", "addr": "0x10"}}`).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "deviceplugin/plugin/resource_names.h"
#include "server/common/status.h"

namespace vfu::kubevirt_hook {

inline constexpr std::string_view kDefaultDeviceSocketRoot = "/var/run/vfio-user";
inline constexpr std::string_view kDeviceSocketName = "vfio-user.sock";
inline constexpr std::string_view kPlacementAnnotation = "vfio-user.io/pci-placement";
inline constexpr std::string_view kDeviceIdPrefix = "vfu-";
// More devices than this in one VMI is a typo in the request, not a real configuration.
inline constexpr unsigned kMaxDevicesPerVmi = 64;

struct PciPlacement {
  std::string bus;   // a QEMU bus id, e.g. "pcie.0" or a root port's "pci.7"
  std::string addr;  // "slot[.function]" in hex, e.g. "0x10" or "1c.0"; empty: QEMU picks
};

struct PlannedDevice {
  std::string device_class;  // e.g. "virtio-blk"
  unsigned index = 0;        // i-th allocated device of the class
  std::string id;            // QEMU device id, e.g. "vfu-virtio-blk-0"
  std::string socket_path;   // e.g. "/var/run/vfio-user/virtio-blk/0/vfio-user.sock"
  std::optional<PciPlacement> placement;
};

struct DevicePlan {
  std::string vmi_name;  // namespace/name, for log lines
  std::vector<PlannedDevice> devices;
};

// The QEMU device id of the index-th device of a class.
std::string DeviceId(std::string_view device_class, unsigned index);

// The container socket path of the index-th device of a class under socket_root.
std::string DeviceSocketPath(std::string_view socket_root, std::string_view device_class,
                             unsigned index);

// Reads the requested vfio-user devices from a VMI (JSON): the resources `naming` maps to a
// class. A VMI without such requests gives an empty plan. Errors (EINVAL): not JSON, a count
// that is not a whole number, requests and limits that disagree, two requested resources of
// one class, an invalid class name or placement annotation.
Result<DevicePlan> PlanDevicesFromVmi(
    std::string_view vmi_json, std::string_view socket_root = kDefaultDeviceSocketRoot,
    const deviceplugin::ResourceNaming& naming = deviceplugin::ResourceNaming());

}  // namespace vfu::kubevirt_hook
