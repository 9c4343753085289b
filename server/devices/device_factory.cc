#include "server/devices/device_factory.h"

#include <sstream>

#include "server/devices/sample_device.h"

namespace vfu::devices {

Result<DeviceSpec> ParseDeviceSpec(const std::string& text) {
  DeviceSpec spec;
  std::stringstream ss(text);
  std::string item;
  bool first = true;
  while (std::getline(ss, item, ',')) {
    if (first) {
      first = false;
      if (item.empty() || item.find('=') != std::string::npos) {
        return MakeError(EINVAL, "device spec '" + text + "' must start with the device class");
      }
      spec.device_class = item;
      continue;
    }
    auto eq = item.find('=');
    if (eq == std::string::npos || eq == 0) {
      return MakeError(EINVAL, "device spec item '" + item + "' is not key=value");
    }
    std::string key = item.substr(0, eq);
    std::string value = item.substr(eq + 1);
    if (key == "id") {
      spec.id = value;
    } else if (key == "socket") {
      spec.socket = value;
    } else if (!spec.params.emplace(key, value).second) {
      return MakeError(EINVAL, "device spec key '" + key + "' given twice");
    }
  }
  if (spec.device_class.empty()) return MakeError(EINVAL, "empty device spec");
  if (spec.id.empty()) return MakeError(EINVAL, "device spec '" + text + "' has no id=");
  if (spec.socket.empty()) return MakeError(EINVAL, "device spec '" + text + "' has no socket=");
  return spec;
}

std::vector<std::string> KnownDeviceClasses() { return {"sample"}; }

Result<std::unique_ptr<VfioDevice>> CreateDevice(const DeviceSpec& spec) {
  if (spec.device_class == "sample") {
    if (!spec.params.empty()) {
      return MakeError(
          EINVAL, "device class 'sample' takes no option '" + spec.params.begin()->first + "'");
    }
    auto dev = SampleDevice::Create();
    if (!dev) return dev.error();
    return std::unique_ptr<VfioDevice>(std::move(*dev));
  }
  std::string known;
  for (const auto& c : KnownDeviceClasses()) known += (known.empty() ? "" : ", ") + c;
  return MakeError(EINVAL,
                   "unknown device class '" + spec.device_class + "' (known: " + known + ")");
}

}  // namespace vfu::devices
