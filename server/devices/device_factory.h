// Device specs and the factory that turns them into devices. A spec is what the quick command
// line form `--device CLASS,id=ID,socket=PATH,key=value...` says; the factory knows every
// device class the server can serve and rejects unknown classes and unknown keys.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "server/common/status.h"
#include "server/session/device.h"

namespace vfu::devices {

struct DeviceSpec {
  std::string device_class;
  std::string id;
  std::string socket;
  std::map<std::string, std::string> params;  // class-specific keys
};

// Parses "CLASS,id=ID,socket=PATH[,key=value...]".
Result<DeviceSpec> ParseDeviceSpec(const std::string& text);

// The device classes the factory can build, for --help.
std::vector<std::string> KnownDeviceClasses();

Result<std::unique_ptr<VfioDevice>> CreateDevice(const DeviceSpec& spec);

// "64M", "1G", "4096", "512K" (binary units) -> bytes.
Result<uint64_t> ParseSize(const std::string& text);

}  // namespace vfu::devices
