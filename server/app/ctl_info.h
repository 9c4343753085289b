// `vfio-user-ctl info`: describes the device behind a vfio-user socket the way `lspci -vv`
// describes a PCI function, from what a vfio-user client can see: config space (identity,
// Control/Status, BARs, the capability chain and the extended capabilities of a 4 KiB config
// space) read through the config region, BAR sizes and mmappable areas from REGION_INFO, and
// the IRQ indexes from IRQ_INFO. It never touches BAR contents (reading virtio's ISR would
// clear it), so looking at a device in use does not disturb its driver.
//
// Reading and formatting are apart: ReadDeviceSnapshot does every round trip, FormatDeviceInfo
// is a pure function of the snapshot.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "server/client/client.h"
#include "server/common/status.h"

namespace vfu::ctl {

struct RegionSnapshot {
  uint32_t index = 0;
  std::string error;  // non-empty when REGION_INFO failed
  wire::RegionInfo info{};
  std::vector<wire::SparseMmapArea> sparse_areas;
};

struct IrqSnapshot {
  uint32_t index = 0;
  std::string error;  // non-empty when IRQ_INFO failed
  wire::IrqInfo info{};
};

struct DeviceSnapshot {
  wire::DeviceInfo device{};
  proto::Capabilities server_caps;
  std::vector<RegionSnapshot> regions;
  std::vector<IrqSnapshot> irqs;
  std::vector<uint8_t> config;  // the whole config region; empty when it could not be read
  std::string config_error;
};

// Asks the server for everything `info` shows. Fails only when DEVICE_GET_INFO fails; a
// region, IRQ index or config space that cannot be read is recorded in the snapshot.
Result<DeviceSnapshot> ReadDeviceSnapshot(client::Client& client);

// The lspci -vv style text for a snapshot.
std::string FormatDeviceInfo(const DeviceSnapshot& snapshot);

// Reads and prints; returns the process exit code (0, or 1 with a message on stderr).
int PrintDeviceInfo(client::Client& client, FILE* out);

}  // namespace vfu::ctl
