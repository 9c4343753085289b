#include "deviceplugin/kubevirt_hook/qemu_args.h"

#include <charconv>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <pugixml.hpp>

namespace vfu::kubevirt_hook {
namespace {

// A libvirt scaled integer (value + unit, default KiB) in KiB, rounded up like libvirt does.
Result<uint64_t> ToKiB(std::string_view value, std::string_view unit, std::string_view what) {
  static const std::map<std::string_view, uint64_t> kUnitBytes = {
      {"b", 1},
      {"bytes", 1},
      {"KB", 1000},
      {"k", 1024},
      {"KiB", 1024},
      {"MB", 1000 * 1000},
      {"M", 1024 * 1024},
      {"MiB", 1024 * 1024},
      {"GB", 1000 * 1000 * 1000},
      {"G", 1024 * 1024 * 1024},
      {"GiB", 1024 * 1024 * 1024},
  };
  auto it = kUnitBytes.find(unit.empty() ? std::string_view("KiB") : unit);
  uint64_t number = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), number);
  if (it == kUnitBytes.end() || value.empty() || ec != std::errc() ||
      end != value.data() + value.size() || number > (UINT64_MAX / it->second)) {
    return MakeError(EINVAL, std::string(what) + ": cannot read size '" + std::string(value) +
                                 "' unit '" + std::string(unit) + "'");
  }
  return (number * it->second + 1023) / 1024;
}

std::string_view LocalName(std::string_view qualified) {
  size_t colon = qualified.find(':');
  return colon == std::string_view::npos ? qualified : qualified.substr(colon + 1);
}

std::string RewriteSocket(const std::string& value, const QemuArgsOptions& options) {
  if (options.socket_root_on_host.empty()) return value;
  auto j = nlohmann::ordered_json::parse(value, nullptr, false);
  if (!j.is_object() || j.value("driver", "") != "vfio-user-pci") return value;
  auto socket = j.find("socket");
  if (socket == j.end() || !socket->is_object() || !socket->contains("path")) return value;
  std::string path = (*socket)["path"].get<std::string>();
  std::string root = options.socket_root + "/";
  if (!path.starts_with(root)) return value;
  (*socket)["path"] = options.socket_root_on_host + "/" + path.substr(root.size());
  return j.dump();
}

}  // namespace

Result<std::vector<std::string>> QemuArgsForDomain(std::string_view domain_xml,
                                                   const QemuArgsOptions& options) {
  pugi::xml_document doc;
  if (!doc.load_buffer(domain_xml.data(), domain_xml.size())) {
    return MakeError(EINVAL, "the domain is not well-formed XML");
  }
  pugi::xml_node domain = doc.child("domain");
  if (!domain) return MakeError(EINVAL, "no <domain> element");

  std::vector<std::string> args;
  pugi::xml_node memory = domain.child("memory");
  auto memory_kib = ToKiB(memory.text().get(), memory.attribute("unit").value(), "<memory>");
  if (!memory_kib) return memory_kib.error();
  args.insert(args.end(), {"-m", std::to_string(*memory_kib) + "k"});
  if (pugi::xml_node vcpu = domain.child("vcpu"))
    args.insert(args.end(), {"-smp", vcpu.text().get()});

  pugi::xml_node backing = domain.child("memoryBacking");
  std::string_view source = backing.child("source").attribute("type").value();
  if (source != "memfd") {
    return MakeError(ENOTSUP, "guest memory is not memfd-backed (memoryBacking/source '" +
                                  std::string(source) + "'); only memfd maps without libvirt");
  }
  bool shared = std::string_view(backing.child("access").attribute("mode").value()) == "shared";
  std::string hugetlb;
  if (pugi::xml_node huge = backing.child("hugepages")) {
    hugetlb = ",hugetlb=on";
    if (pugi::xml_node page = huge.child("page")) {
      auto page_kib =
          ToKiB(page.attribute("size").value(), page.attribute("unit").value(), "hugepage size");
      if (!page_kib) return page_kib.error();
      hugetlb += ",hugetlbsize=" + std::to_string(*page_kib) + "k";
    }
  }
  auto backend = [&](const std::string& id, uint64_t kib, bool share) {
    return "memory-backend-memfd,id=" + id + ",size=" + std::to_string(kib) +
           "k,share=" + (share ? "on" : "off") + hugetlb;
  };

  pugi::xml_node numa = domain.child("cpu").child("numa");
  if (!numa.child("cell")) {
    args.insert(args.end(), {"-object", backend("pc.ram", *memory_kib, shared), "-machine",
                             "memory-backend=pc.ram"});
  }
  for (pugi::xml_node cell : numa.children("cell")) {
    std::string id = cell.attribute("id").value();
    auto cell_kib =
        ToKiB(cell.attribute("memory").value(), cell.attribute("unit").value(), "NUMA cell " + id);
    if (!cell_kib) return cell_kib.error();
    std::string_view access = cell.attribute("memAccess").value();
    bool cell_shared = access.empty() ? shared : access == "shared";
    std::string node = "node,nodeid=" + id;
    std::string_view cpus = cell.attribute("cpus").value();
    while (!cpus.empty()) {
      size_t comma = cpus.find(',');
      node += ",cpus=" + std::string(cpus.substr(0, comma));
      cpus = comma == std::string_view::npos ? std::string_view() : cpus.substr(comma + 1);
    }
    node += ",memdev=ram-node" + id;
    args.insert(args.end(),
                {"-object", backend("ram-node" + id, *cell_kib, cell_shared), "-numa", node});
  }

  for (pugi::xml_node commandline : domain.children()) {
    if (LocalName(commandline.name()) != "commandline") continue;
    for (pugi::xml_node arg : commandline.children()) {
      if (LocalName(arg.name()) != "arg") continue;
      std::string value = arg.attribute("value").value();
      bool after_device = !args.empty() && args.back() == "-device";
      args.push_back(after_device ? RewriteSocket(value, options) : value);
    }
  }
  return args;
}

}  // namespace vfu::kubevirt_hook
