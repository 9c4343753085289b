// vfio-user-ctl: inspects vfio-user devices from a shell.
//
//   vfio-user-ctl info SOCKET    device, regions, IRQs and PCI identity, read over vfio-user
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "server/client/client.h"
#include "server/pci/config_space.h"
#include "server/version.h"

namespace {

using namespace vfu;

const char* RegionName(uint32_t index) {
  static const char* kNames[] = {"BAR0", "BAR1", "BAR2",   "BAR3", "BAR4",
                                 "BAR5", "ROM",  "CONFIG", "VGA"};
  return index < 9 ? kNames[index] : "EXTRA";
}

const char* IrqName(uint32_t index) {
  static const char* kNames[] = {"INTx", "MSI", "MSI-X", "ERR", "REQ"};
  return index < 5 ? kNames[index] : "EXTRA";
}

int Info(const std::string& socket) {
  auto client = client::Client::Connect(socket);
  if (!client) {
    std::fprintf(stderr, "error: %s\n", client.error().message.c_str());
    return 1;
  }
  client::Client& c = **client;
  auto info = c.GetDeviceInfo();
  if (!info) {
    std::fprintf(stderr, "error: %s\n", info.error().message.c_str());
    return 1;
  }
  uint8_t cfg[64] = {};
  auto cfg_status = c.RegionRead(wire::kPciConfigRegionIndex, 0, cfg);
  if (cfg_status.ok()) {
    auto u16 = [&](int off) { return cfg[off] | (cfg[off + 1] << 8); };
    std::printf("%04x:%04x (rev %02x) class %02x%02x%02x subsystem %04x:%04x\n", u16(0), u16(2),
                cfg[8], cfg[11], cfg[10], cfg[9], u16(0x2c), u16(0x2e));
  }
  std::printf("flags:%s%s  regions: %u  irq indexes: %u\n",
              (info->flags & wire::kDeviceFlagPci) ? " PCI" : "",
              (info->flags & wire::kDeviceFlagReset) ? " RESET" : "", info->num_regions,
              info->num_irqs);
  for (uint32_t i = 0; i < info->num_regions; ++i) {
    auto r = c.GetRegionInfo(i);
    if (!r) {
      std::printf("  region %u (%s): error: %s\n", i, RegionName(i), r.error().message.c_str());
      continue;
    }
    if (r->info.size == 0) continue;
    std::printf("  region %u (%s): size %llu%s%s%s\n", i, RegionName(i),
                static_cast<unsigned long long>(r->info.size),
                (r->info.flags & wire::kRegionFlagRead) ? " read" : "",
                (r->info.flags & wire::kRegionFlagWrite) ? " write" : "",
                (r->info.flags & wire::kRegionFlagMmap) ? " mmap" : "");
    for (const auto& a : r->sparse_areas) {
      std::printf("      mmappable [0x%llx, +0x%llx)\n", static_cast<unsigned long long>(a.offset),
                  static_cast<unsigned long long>(a.size));
    }
  }
  for (uint32_t i = 0; i < info->num_irqs; ++i) {
    auto irq = c.GetIrqInfo(i);
    if (!irq || irq->count == 0) continue;
    std::printf("  irq %u (%s): %u vector(s)%s%s%s\n", i, IrqName(i), irq->count,
                (irq->flags & wire::kIrqInfoEventfd) ? " eventfd" : "",
                (irq->flags & wire::kIrqInfoMaskable) ? " maskable" : "",
                (irq->flags & wire::kIrqInfoAutomasked) ? " automasked" : "");
  }
  return 0;
}

}  // namespace

namespace {

int Main(int argc, char** argv) {
  CLI::App app{"vfio-user-ctl: inspect vfio-user devices"};
  app.require_subcommand(1);
  bool show_version = false;
  app.add_flag("--version", show_version, "print the version and exit");
  std::string socket;
  auto* info = app.add_subcommand("info", "describe the device behind a vfio-user socket");
  info->add_option("socket", socket, "the device's vfio-user socket")->required();
  if (argc == 2 && std::string(argv[1]) == "--version") {
    std::printf("vfio-user-ctl %s\n", vfu::kVersion);
    return 0;
  }
  CLI11_PARSE(app, argc, argv);
  if (info->parsed()) return Info(socket);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fatal: %s\n", e.what());
    return 1;
  }
}
