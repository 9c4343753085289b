#include "server/devices/device_factory.h"

#include <cctype>
#include <cstdlib>
#include <optional>
#include <sstream>

#include "server/block/backend.h"
#include "server/devices/sample_device.h"
#include "server/devices/virtio_blk.h"
#include "server/virtio/virtio_pci.h"

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

std::vector<std::string> KnownDeviceClasses() { return {"sample", "virtio-blk"}; }

Result<uint64_t> ParseSize(const std::string& text) {
  if (text.empty()) return MakeError(EINVAL, "empty size");
  size_t pos = 0;
  uint64_t value = 0;
  while (pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]))) {
    uint64_t digit = static_cast<uint64_t>(text[pos] - '0');
    if (value > (UINT64_MAX - digit) / 10) return MakeError(EINVAL, "size " + text + " overflows");
    value = value * 10 + digit;
    ++pos;
  }
  if (pos == 0) return MakeError(EINVAL, "size '" + text + "' does not start with a number");
  std::string suffix = text.substr(pos);
  uint64_t mult = 1;
  if (suffix.empty() || suffix == "B")
    mult = 1;
  else if (suffix == "K" || suffix == "KiB")
    mult = 1ull << 10;
  else if (suffix == "M" || suffix == "MiB")
    mult = 1ull << 20;
  else if (suffix == "G" || suffix == "GiB")
    mult = 1ull << 30;
  else if (suffix == "T" || suffix == "TiB")
    mult = 1ull << 40;
  else
    return MakeError(EINVAL, "size '" + text + "' has an unknown unit (use K, M, G, T)");
  if (value > UINT64_MAX / mult) return MakeError(EINVAL, "size " + text + " overflows");
  return value * mult;
}

namespace {

// Reads and removes the keys a device class understands; leftovers are errors.
class Params {
 public:
  explicit Params(const DeviceSpec& spec) : spec_(spec), left_(spec.params) {}
  std::optional<std::string> Take(const std::string& key) {
    auto it = left_.find(key);
    if (it == left_.end()) return std::nullopt;
    std::string v = it->second;
    left_.erase(it);
    return v;
  }
  Status CheckAllUsed() const {
    if (left_.empty()) return Status::Ok();
    return MakeError(EINVAL, "device class '" + spec_.device_class + "' has no option '" +
                                 left_.begin()->first + "'");
  }
  Result<uint64_t> Number(const std::string& key, uint64_t fallback, uint64_t min, uint64_t max) {
    auto v = Take(key);
    if (!v) return fallback;
    char* end = nullptr;
    errno = 0;
    unsigned long long n = std::strtoull(v->c_str(), &end, 10);
    if (v->empty() || *end != '\0' || errno != 0 || n < min || n > max) {
      return MakeError(EINVAL, key + "=" + *v + " must be a number in " + std::to_string(min) +
                                   ".." + std::to_string(max));
    }
    return static_cast<uint64_t>(n);
  }
  Result<bool> Bool(const std::string& key, bool fallback) {
    auto v = Take(key);
    if (!v) return fallback;
    if (*v == "on" || *v == "true" || *v == "1" || *v == "yes") return true;
    if (*v == "off" || *v == "false" || *v == "0" || *v == "no") return false;
    return MakeError(EINVAL, key + "=" + *v + " must be on or off");
  }

 private:
  const DeviceSpec& spec_;
  std::map<std::string, std::string> left_;
};

Result<std::unique_ptr<VfioDevice>> CreateVirtioBlk(const DeviceSpec& spec) {
  Params p(spec);
  VirtioBlkOptions blk;
  auto queues = p.Number("queues", 1, 1, 64);
  if (!queues) return queues.error();
  blk.num_queues = static_cast<uint16_t>(*queues);
  auto qsize = p.Number("queue-size", 256, 2, 1024);
  if (!qsize) return qsize.error();
  if ((*qsize & (*qsize - 1)) != 0) return MakeError(EINVAL, "queue-size must be a power of two");
  blk.queue_size = static_cast<uint16_t>(*qsize);
  auto ro = p.Bool("readonly", false);
  if (!ro) return ro.error();
  blk.read_only = *ro;
  if (auto serial = p.Take("serial")) {
    if (serial->size() > kBlkIdBytes) return MakeError(EINVAL, "serial is longer than 20 bytes");
    blk.serial = *serial;
  } else {
    blk.serial = spec.id.substr(0, kBlkIdBytes);
  }
  virtio::VirtioPciOptions pci;
  if (auto mode = p.Take("poll")) {
    if (!virtio::ParsePollMode(*mode, &pci.poll_mode)) {
      return MakeError(EINVAL, "poll=" + *mode + " must be busy, adaptive or interrupt");
    }
  }
  std::string backend_kind = p.Take("backend").value_or("ram");
  unsigned depth = static_cast<unsigned>(blk.num_queues) * blk.queue_size;
  std::unique_ptr<block::Backend> backend;
  if (backend_kind == "file") {
    auto path = p.Take("path");
    if (!path) return MakeError(EINVAL, "backend=file needs path=FILE");
    block::FileBackendOptions fo;
    fo.path = *path;
    fo.read_only = blk.read_only;
    fo.queue_depth = depth;
    if (auto engine = p.Take("aio")) {
      if (*engine == "io_uring")
        fo.engine = block::FileBackendOptions::Engine::kIoUring;
      else if (*engine == "threads")
        fo.engine = block::FileBackendOptions::Engine::kThreadPool;
      else if (*engine != "auto")
        return MakeError(EINVAL, "aio=" + *engine + " must be auto, io_uring or threads");
    }
    auto b = block::CreateFileBackend(fo);
    if (!b) return b.error();
    backend = std::move(*b);
  } else if (backend_kind == "ram" || backend_kind == "null") {
    auto size_text = p.Take("size");
    if (!size_text) return MakeError(EINVAL, "backend=" + backend_kind + " needs size= (e.g. 64M)");
    auto size = ParseSize(*size_text);
    if (!size) return size.error();
    if (*size == 0 || *size % kSectorSize != 0)
      return MakeError(EINVAL, "size must be a non-zero multiple of 512");
    if (backend_kind == "null") {
      backend = block::CreateNullBackend(*size, depth);
    } else {
      auto b = block::CreateRamBackend(*size, depth);
      if (!b) return b.error();
      backend = std::move(*b);
    }
  } else {
    return MakeError(EINVAL, "backend=" + backend_kind + " must be file, ram or null");
  }
  VFU_RETURN_IF_ERROR(p.CheckAllUsed());
  auto device = std::make_unique<VirtioBlkDevice>(std::move(backend), blk);
  auto pci_device = virtio::VirtioPciDevice::Create(std::move(device), pci);
  if (!pci_device) return pci_device.error();
  return std::unique_ptr<VfioDevice>(std::move(*pci_device));
}

}  // namespace

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
  if (spec.device_class == "virtio-blk") return CreateVirtioBlk(spec);
  std::string known;
  for (const auto& c : KnownDeviceClasses()) known += (known.empty() ? "" : ", ") + c;
  return MakeError(EINVAL,
                   "unknown device class '" + spec.device_class + "' (known: " + known + ")");
}

}  // namespace vfu::devices
