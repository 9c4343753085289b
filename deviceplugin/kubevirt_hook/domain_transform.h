// The domain edit of OnDefineDomain: attaches the planned vfio-user devices to a libvirt
// domain XML the way QEMU's vfio-user-pci client needs them.
//
// libvirt has no vfio-user device model, so each device becomes a QEMU argument pair in
// <qemu:commandline> (namespace http://libvirt.org/schemas/domain/qemu/1.0):
//   -device {"driver":"vfio-user-pci","id":"vfu-<class>-<i>",["bus":..,"addr":..,]
//            "socket":{"type":"unix","path":"<root>/<class>/<i>/vfio-user.sock"}}
// The server reaches guest RAM through the fds QEMU passes with DMA_MAP, so guest memory must
// be fd-backed and shared: <memoryBacking> gets <source type='memfd'/> (unless KubeVirt already
// chose memfd, a file, or file-backed hugepages) and <access mode='shared'/>. NUMA cells
// without memAccess inherit that. Explicitly private or anonymous memory is an error: the
// devices could not work there.
//
// The edit is idempotent: devices this hook added before (vfio-user-pci with an id starting
// "vfu-") are replaced, never duplicated; other qemu:commandline arguments and env entries stay
// as they are (ours go after the existing arguments, before any qemu:env, as libvirt's schema
// orders them).
#pragma once

#include <string>
#include <string_view>

#include "deviceplugin/kubevirt_hook/vmi_devices.h"
#include "server/common/status.h"

namespace vfu::kubevirt_hook {

inline constexpr std::string_view kQemuNamespace = "http://libvirt.org/schemas/domain/qemu/1.0";

// Error codes: EINVAL for a domain that is not libvirt domain XML, ENOTSUP for memory that
// cannot be shared with the devices.
Result<std::string> AttachDevicesToDomain(std::string_view domain_xml, const DevicePlan& plan);

// OnDefineDomain as a function: plans from the VMI JSON (resource names mapped to classes by
// `naming`) and edits the domain. A VMI without vfio-user requests (and a domain without
// devices of ours) gets the domain back unchanged.
Result<std::string> OnDefineDomain(
    std::string_view domain_xml, std::string_view vmi_json,
    std::string_view device_socket_root = kDefaultDeviceSocketRoot,
    const deviceplugin::ResourceNaming& naming = deviceplugin::ResourceNaming());

}  // namespace vfu::kubevirt_hook
