// The QEMU arguments a (transformed) domain implies for guest memory and for the qemu:commandline
// devices, derived the way libvirt's QEMU driver builds them:
//   no NUMA cells:  -m <mem>k -object memory-backend-memfd,id=pc.ram,size=<mem>k,share=on
//                   -machine memory-backend=pc.ram
//   NUMA cells:     -m <mem>k and per cell -object memory-backend-memfd,id=ram-node<N>,...
//                   -numa node,nodeid=<N>,cpus=<cpus>,memdev=ram-node<N>
//   plus -smp <vcpus> and every qemu:commandline argument in order.
// Not a full command line (no machine type, disks, NICs): it is for running a domain's vfio-user
// setup outside libvirt (the e2e test, reproducing a VM's device setup by hand). Only memfd
// memory is supported (what the hook produces); file-backed memory needs libvirt's paths.
// With `socket_root_on_host`, vfio-user-pci socket paths under the container root
// (/var/run/vfio-user) are moved to that directory, where a host-side server listens.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "deviceplugin/kubevirt_hook/vmi_devices.h"
#include "server/common/status.h"

namespace vfu::kubevirt_hook {

struct QemuArgsOptions {
  std::string socket_root = std::string(kDefaultDeviceSocketRoot);
  std::string socket_root_on_host;  // empty: leave socket paths as they are
};

Result<std::vector<std::string>> QemuArgsForDomain(std::string_view domain_xml,
                                                   const QemuArgsOptions& options = {});

}  // namespace vfu::kubevirt_hook
