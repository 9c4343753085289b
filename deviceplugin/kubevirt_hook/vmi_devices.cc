#include "deviceplugin/kubevirt_hook/vmi_devices.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

namespace vfu::kubevirt_hook {
namespace {

using nlohmann::json;

// A class name as it comes from a requested resource (the name part of a Kubernetes qualified
// name), limited to what is also safe in a path segment and in a QEMU id.
bool IsAlnum(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }
bool IsNameChar(char c) { return IsAlnum(c) || c == '_' || c == '.' || c == '-'; }

bool IsValidClass(std::string_view name) {
  return !name.empty() && name.size() <= 63 && IsAlnum(name.front()) && IsAlnum(name.back()) &&
         std::all_of(name.begin(), name.end(), IsNameChar);
}

// A QEMU bus id: a letter, then letters, digits, '_', '.', '-' (no ',' or '=': no options).
bool IsValidBus(std::string_view bus) {
  return !bus.empty() && bus.size() <= 64 && std::isalpha(static_cast<unsigned char>(bus[0])) &&
         std::all_of(bus.begin(), bus.end(), IsNameChar);
}

// A PCI "slot[.function]" as QEMU's addr= takes it: slot in hex (optional 0x, at most 0x1f
// fits a bus but QEMU reports that itself), function 0-7.
bool IsValidAddr(std::string_view addr) {
  if (addr.starts_with("0x")) addr.remove_prefix(2);
  size_t dot = addr.find('.');
  std::string_view slot = addr.substr(0, dot);
  if (slot.empty() || slot.size() > 2 || !std::all_of(slot.begin(), slot.end(), [](char c) {
        return std::isxdigit(static_cast<unsigned char>(c)) != 0;
      })) {
    return false;
  }
  if (dot == std::string_view::npos) return true;
  std::string_view function = addr.substr(dot + 1);
  return function.size() == 1 && function[0] >= '0' && function[0] <= '7';
}

// A device count as Kubernetes serialises an integer quantity ("2"); plain JSON numbers are
// accepted too (hand-written VMIs). Fractions and suffixes are not device counts.
Result<unsigned> ParseCount(const std::string& resource, const json& value) {
  std::string text;
  if (value.is_number_unsigned()) {
    text = std::to_string(value.get<uint64_t>());
  } else if (value.is_string()) {
    text = value.get<std::string>();
  } else {
    return MakeError(EINVAL, "resource " + resource + ": the count must be a string or number");
  }
  unsigned count = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), count);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) {
    return MakeError(
        EINVAL, "resource " + resource + ": count '" + text + "' is not a whole number of devices");
  }
  return count;
}

// resource name -> count of the vfio-user resources (those `naming` maps to a class), for one
// of spec.domain.resources.{requests,limits}.
Result<std::map<std::string, unsigned>> ReadResourceList(
    const json& list, const deviceplugin::ResourceNaming& naming) {
  std::map<std::string, unsigned> counts;
  if (list.is_null()) return counts;
  if (!list.is_object()) return MakeError(EINVAL, "spec.domain.resources is malformed");
  for (const auto& [name, value] : list.items()) {
    if (!naming.ClassFor(name)) continue;
    auto count = ParseCount(name, value);
    if (!count) return count.error();
    counts[name] = *count;
  }
  return counts;
}

const json& Path(const json& root, std::initializer_list<const char*> keys) {
  static const json kNull;
  const json* node = &root;
  for (const char* key : keys) {
    if (!node->is_object()) return kNull;
    auto it = node->find(key);
    if (it == node->end()) return kNull;
    node = &*it;
  }
  return *node;
}

Result<std::map<std::string, PciPlacement>> ReadPlacements(const json& vmi) {
  std::map<std::string, PciPlacement> placements;
  const json& annotations = Path(vmi, {"metadata", "annotations"});
  if (!annotations.is_object()) return placements;
  auto it = annotations.find(std::string(kPlacementAnnotation));
  if (it == annotations.end()) return placements;
  const std::string where = "annotation " + std::string(kPlacementAnnotation) + ": ";
  if (!it->is_string()) return MakeError(EINVAL, where + "must be a string holding JSON");
  json parsed = json::parse(it->get<std::string>(), nullptr, /*allow_exceptions=*/false);
  if (!parsed.is_object()) {
    return MakeError(EINVAL, where + "must be a JSON object {\"<device id>\": {\"bus\": ...}}");
  }
  for (const auto& [id, value] : parsed.items()) {
    if (!value.is_object() || !value.contains("bus") || !value["bus"].is_string()) {
      return MakeError(EINVAL, where + id + " needs a \"bus\" string");
    }
    PciPlacement placement;
    placement.bus = value["bus"].get<std::string>();
    if (!IsValidBus(placement.bus)) {
      return MakeError(EINVAL, where + id + ": bus '" + placement.bus + "' is not a QEMU bus id");
    }
    if (value.contains("addr")) {
      if (!value["addr"].is_string()) return MakeError(EINVAL, where + id + ": addr is no string");
      placement.addr = value["addr"].get<std::string>();
      if (!IsValidAddr(placement.addr)) {
        return MakeError(EINVAL, where + id + ": addr '" + placement.addr +
                                     "' is not a PCI slot[.function] like 0x10 or 1c.0");
      }
    }
    for (const auto& [key, unused] : value.items()) {
      if (key != "bus" && key != "addr") {
        return MakeError(EINVAL, where + id + ": unknown key '" + key + "'");
      }
    }
    placements[id] = std::move(placement);
  }
  return placements;
}

}  // namespace

std::string DeviceId(std::string_view device_class, unsigned index) {
  return std::string(kDeviceIdPrefix) + std::string(device_class) + "-" + std::to_string(index);
}

std::string DeviceSocketPath(std::string_view socket_root, std::string_view device_class,
                             unsigned index) {
  std::string root(socket_root);
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  return root + "/" + std::string(device_class) + "/" + std::to_string(index) + "/" +
         std::string(kDeviceSocketName);
}

Result<DevicePlan> PlanDevicesFromVmi(std::string_view vmi_json, std::string_view socket_root,
                                      const deviceplugin::ResourceNaming& naming) {
  json vmi = json::parse(vmi_json.begin(), vmi_json.end(), nullptr, /*allow_exceptions=*/false);
  if (!vmi.is_object()) return MakeError(EINVAL, "the VMI is not a JSON object");

  DevicePlan plan;
  const json& ns = Path(vmi, {"metadata", "namespace"});
  const json& name = Path(vmi, {"metadata", "name"});
  plan.vmi_name = (ns.is_string() ? ns.get<std::string>() + "/" : std::string()) +
                  (name.is_string() ? name.get<std::string>() : std::string("<unnamed>"));

  const json& resources = Path(vmi, {"spec", "domain", "resources"});
  auto requests = ReadResourceList(Path(resources, {"requests"}), naming);
  if (!requests) return requests.error();
  auto limits = ReadResourceList(Path(resources, {"limits"}), naming);
  if (!limits) return limits.error();

  // As for every extended resource: limits and requests must agree where both are given, and
  // either one alone is the count.
  std::map<std::string, unsigned> counts = *limits;
  for (const auto& [resource, count] : *requests) {
    auto it = counts.find(resource);
    if (it != counts.end() && it->second != count) {
      return MakeError(EINVAL, "resource " + resource + ": requests (" + std::to_string(count) +
                                   ") and limits (" + std::to_string(it->second) + ") differ");
    }
    counts[resource] = count;
  }

  // class -> count, sorted by class name. The plugin mounts a class's devices at
  // <root>/<class>/<i> whatever the resource is called, so one class may come from one
  // resource only.
  std::map<std::string, unsigned> class_counts;
  std::map<std::string, std::string> resource_of_class;
  for (const auto& [resource, count] : counts) {
    std::string device_class = *naming.ClassFor(resource);
    if (!IsValidClass(device_class)) {
      return MakeError(EINVAL, "resource " + resource + ": '" + device_class +
                                   "' is not a valid device class name");
    }
    if (count == 0) continue;
    auto [it, inserted] = resource_of_class.emplace(device_class, resource);
    if (!inserted) {
      return MakeError(EINVAL, "resources " + it->second + " and " + resource +
                                   " are both device class " + device_class +
                                   "; a VMI can request devices of a class under one name only");
    }
    class_counts[device_class] = count;
  }

  unsigned total = 0;
  for (const auto& [device_class, count] : class_counts) {
    total += std::min(count, kMaxDevicesPerVmi + 1);
  }
  if (total > kMaxDevicesPerVmi) {
    return MakeError(EINVAL, "the VMI requests " + std::to_string(total) +
                                 " vfio-user devices; at most " +
                                 std::to_string(kMaxDevicesPerVmi) + " are supported");
  }

  auto placements = ReadPlacements(vmi);
  if (!placements) return placements.error();

  std::set<std::string> ids;
  for (const auto& [device_class, count] : class_counts) {  // std::map: sorted by class name
    for (unsigned i = 0; i < count; ++i) {
      PlannedDevice device;
      device.device_class = device_class;
      device.index = i;
      device.id = DeviceId(device_class, i);
      device.socket_path = DeviceSocketPath(socket_root, device_class, i);
      auto placed = placements->find(device.id);
      if (placed != placements->end()) device.placement = placed->second;
      ids.insert(device.id);
      plan.devices.push_back(std::move(device));
    }
  }
  std::set<std::pair<std::string, std::string>> slots;
  for (const auto& [id, placement] : *placements) {
    if (!placement.addr.empty() && !slots.insert({placement.bus, placement.addr}).second) {
      return MakeError(EINVAL, "annotation " + std::string(kPlacementAnnotation) + ": " + id +
                                   " is placed at " + placement.bus + " " + placement.addr +
                                   " like another device");
    }
    if (!ids.contains(id)) {
      return MakeError(EINVAL, "annotation " + std::string(kPlacementAnnotation) + " places '" +
                                   id + "', which the VMI does not request");
    }
  }
  return plan;
}

}  // namespace vfu::kubevirt_hook
