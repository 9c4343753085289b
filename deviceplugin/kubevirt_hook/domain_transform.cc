#include "deviceplugin/kubevirt_hook/domain_transform.h"

#include <nlohmann/json.hpp>
#include <pugixml.hpp>
#include <sstream>
#include <vector>

namespace vfu::kubevirt_hook {
namespace {

std::string_view LocalName(std::string_view qualified) {
  size_t colon = qualified.find(':');
  return colon == std::string_view::npos ? qualified : qualified.substr(colon + 1);
}

std::string_view PrefixOf(std::string_view qualified) {
  size_t colon = qualified.find(':');
  return colon == std::string_view::npos ? std::string_view() : qualified.substr(0, colon);
}

// The namespace URI that `prefix` stands for at `node` (declared there or on an ancestor).
std::string_view NamespaceFor(pugi::xml_node node, std::string_view prefix) {
  std::string attr = prefix.empty() ? std::string("xmlns") : "xmlns:" + std::string(prefix);
  for (; node && node.type() == pugi::node_element; node = node.parent()) {
    if (pugi::xml_attribute a = node.attribute(attr.c_str())) return a.value();
  }
  return {};
}

bool IsQemuElement(pugi::xml_node node, std::string_view local) {
  return node.type() == pugi::node_element && LocalName(node.name()) == local &&
         NamespaceFor(node, PrefixOf(node.name())) == kQemuNamespace;
}

// A -device value this hook wrote: vfio-user-pci JSON whose id has our prefix.
bool IsOurDeviceJson(std::string_view value) {
  auto j = nlohmann::json::parse(value.begin(), value.end(), nullptr, false);
  if (!j.is_object()) return false;
  auto driver = j.find("driver");
  auto id = j.find("id");
  return driver != j.end() && driver->is_string() && *driver == "vfio-user-pci" && id != j.end() &&
         id->is_string() && id->get<std::string>().starts_with(kDeviceIdPrefix);
}

std::string DeviceJson(const PlannedDevice& device) {
  nlohmann::ordered_json j;
  j["driver"] = "vfio-user-pci";
  j["id"] = device.id;
  if (device.placement) {
    j["bus"] = device.placement->bus;
    if (!device.placement->addr.empty()) j["addr"] = device.placement->addr;
  }
  j["socket"] = {{"type", "unix"}, {"path", device.socket_path}};
  return j.dump();
}

// Removes the -device pairs this hook added earlier; returns how many devices it removed.
int RemoveOurDevices(pugi::xml_node commandline) {
  std::vector<pugi::xml_node> args;
  for (pugi::xml_node child : commandline.children()) {
    if (IsQemuElement(child, "arg")) args.push_back(child);
  }
  int removed = 0;
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (std::string_view(args[i].attribute("value").value()) == "-device" &&
        IsOurDeviceJson(args[i + 1].attribute("value").value())) {
      commandline.remove_child(args[i]);
      commandline.remove_child(args[i + 1]);
      ++i;
      ++removed;
    }
  }
  return removed;
}

// Makes guest RAM fd-backed and shared, or says why it cannot be.
Status ShareGuestMemory(pugi::xml_node domain) {
  pugi::xml_node backing = domain.child("memoryBacking");
  if (!backing) {
    pugi::xml_node after;
    for (const char* name : {"memory", "currentMemory", "maxMemory"}) {
      if (pugi::xml_node n = domain.child(name)) after = n;
    }
    backing = after ? domain.insert_child_after("memoryBacking", after)
                    : domain.append_child("memoryBacking");
  }
  pugi::xml_node source = backing.child("source");
  std::string_view source_type = source.attribute("type").value();
  if (source && source_type != "memfd" && source_type != "file") {
    return MakeError(ENOTSUP, "guest memory is backed by '" + std::string(source_type) +
                                  "' memory (memoryBacking/source), which cannot be shared with "
                                  "vfio-user devices: they need memfd or file-backed memory");
  }
  // Without a source, hugepages are file-backed (hugetlbfs) already; plain RAM is not.
  if (!source && !backing.child("hugepages")) {
    backing.append_child("source").append_attribute("type") = "memfd";
  }
  pugi::xml_node access = backing.child("access");
  std::string_view mode = access.attribute("mode").value();
  if (access && mode != "shared") {
    return MakeError(ENOTSUP, "guest memory is set to access mode '" + std::string(mode) +
                                  "' (memoryBacking/access); vfio-user devices need it shared");
  }
  if (!access) backing.append_child("access").append_attribute("mode") = "shared";
  for (pugi::xml_node cell : domain.child("cpu").child("numa").children("cell")) {
    std::string_view cell_access = cell.attribute("memAccess").value();
    if (!cell_access.empty() && cell_access != "shared") {
      return MakeError(ENOTSUP, "NUMA cell " + std::string(cell.attribute("id").value()) +
                                    " has memAccess='" + std::string(cell_access) +
                                    "'; vfio-user devices need guest memory shared");
    }
  }
  return Status::Ok();
}

// The qemu:commandline element (created if `create`) and the prefix its children use.
Result<pugi::xml_node> FindCommandline(pugi::xml_node domain, bool create, std::string* prefix) {
  for (pugi::xml_node child : domain.children()) {
    if (IsQemuElement(child, "commandline")) {
      *prefix = std::string(PrefixOf(child.name()));
      return child;
    }
  }
  if (!create) return pugi::xml_node();
  std::string bound;
  for (pugi::xml_attribute a : domain.attributes()) {
    std::string_view name = a.name();
    if (name.starts_with("xmlns:") && std::string_view(a.value()) == kQemuNamespace) {
      bound = std::string(name.substr(6));
      break;
    }
  }
  if (bound.empty()) {
    pugi::xml_attribute existing = domain.attribute("xmlns:qemu");
    if (existing) {
      return MakeError(EINVAL, "the domain binds the prefix qemu to '" +
                                   std::string(existing.value()) + "', not to libvirt's " +
                                   std::string(kQemuNamespace));
    }
    domain.append_attribute("xmlns:qemu") = std::string(kQemuNamespace).c_str();
    bound = "qemu";
  }
  *prefix = bound;
  return domain.append_child((bound + ":commandline").c_str());
}

}  // namespace

Result<std::string> AttachDevicesToDomain(std::string_view domain_xml, const DevicePlan& plan) {
  pugi::xml_document doc;
  pugi::xml_parse_result parsed =
      doc.load_buffer(domain_xml.data(), domain_xml.size(),
                      pugi::parse_default | pugi::parse_comments, pugi::encoding_utf8);
  if (!parsed) {
    return MakeError(EINVAL, std::string("the domain is not well-formed XML: ") +
                                 parsed.description() + " at offset " +
                                 std::to_string(parsed.offset));
  }
  pugi::xml_node domain = doc.document_element();
  if (std::string_view(domain.name()) != "domain") {
    return MakeError(EINVAL, "the document is not a libvirt domain (root element <" +
                                 std::string(domain.name()) + ">)");
  }

  std::string prefix;
  auto commandline = FindCommandline(domain, !plan.devices.empty(), &prefix);
  if (!commandline) return commandline.error();
  int removed = *commandline ? RemoveOurDevices(*commandline) : 0;
  if (plan.devices.empty()) {
    if (removed == 0) return std::string(domain_xml);  // nothing of ours: leave it untouched
    if (!commandline->first_child()) domain.remove_child(*commandline);
  } else {
    VFU_RETURN_IF_ERROR(ShareGuestMemory(domain));
    // Arguments come before env entries in libvirt's schema.
    pugi::xml_node first_env;
    for (pugi::xml_node child : commandline->children()) {
      if (IsQemuElement(child, "env")) {
        first_env = child;
        break;
      }
    }
    const std::string arg_name = prefix + ":arg";
    auto add_arg = [&](const std::string& value) {
      pugi::xml_node arg = first_env ? commandline->insert_child_before(arg_name.c_str(), first_env)
                                     : commandline->append_child(arg_name.c_str());
      arg.append_attribute("value") = value.c_str();
    };
    for (const PlannedDevice& device : plan.devices) {
      add_arg("-device");
      add_arg(DeviceJson(device));
    }
  }

  std::ostringstream out;
  doc.save(out, "  ", pugi::format_indent | pugi::format_no_declaration, pugi::encoding_utf8);
  return out.str();
}

Result<std::string> OnDefineDomain(std::string_view domain_xml, std::string_view vmi_json,
                                   std::string_view device_socket_root,
                                   const deviceplugin::ResourceNaming& naming) {
  auto plan = PlanDevicesFromVmi(vmi_json, device_socket_root, naming);
  if (!plan) return plan.error();
  auto domain = AttachDevicesToDomain(domain_xml, *plan);
  if (!domain) {
    return MakeError(domain.error().code, "VMI " + plan->vmi_name + ": " + domain.error().message);
  }
  return domain;
}

}  // namespace vfu::kubevirt_hook
