#include "server/app/ctl_info.h"

#include <algorithm>
#include <cstdarg>
#include <cstring>
#include <span>

#include "server/pci/capabilities.h"
#include "server/pci/config_space.h"
#include "server/pci/msix.h"

namespace vfu::ctl {
namespace {

// A misbehaving server could report any count; nothing real has more.
constexpr uint32_t kMaxRegionsShown = 64;
constexpr uint32_t kMaxIrqsShown = 64;
constexpr uint32_t kMaxStandardCaps = (256 - pci::kCapAreaStart) / 4;
constexpr uint32_t kMaxExtendedCaps = (4096 - pci::kExtendedCapStart) / 4;
constexpr uint16_t kVirtioVendorId = 0x1af4;

// --- Names --------------------------------------------------------------------------------

struct ClassName {
  uint8_t base;
  int sub;  // -1: the base class itself
  const char* name;
};

// The common entries of the PCI ID database's class list.
constexpr ClassName kClassNames[] = {
    {0x00, -1, "Unclassified device"},
    {0x00, 0x00, "Non-VGA unclassified device"},
    {0x00, 0x01, "VGA compatible unclassified device"},
    {0x01, -1, "Mass storage controller"},
    {0x01, 0x00, "SCSI storage controller"},
    {0x01, 0x01, "IDE interface"},
    {0x01, 0x02, "Floppy disk controller"},
    {0x01, 0x04, "RAID bus controller"},
    {0x01, 0x05, "ATA controller"},
    {0x01, 0x06, "SATA controller"},
    {0x01, 0x07, "Serial Attached SCSI controller"},
    {0x01, 0x08, "Non-Volatile memory controller"},
    {0x01, 0x80, "Mass storage controller"},
    {0x02, -1, "Network controller"},
    {0x02, 0x00, "Ethernet controller"},
    {0x02, 0x07, "Infiniband controller"},
    {0x02, 0x80, "Network controller"},
    {0x03, -1, "Display controller"},
    {0x03, 0x00, "VGA compatible controller"},
    {0x03, 0x02, "3D controller"},
    {0x03, 0x80, "Display controller"},
    {0x04, -1, "Multimedia controller"},
    {0x04, 0x01, "Multimedia audio controller"},
    {0x04, 0x03, "Audio device"},
    {0x05, -1, "Memory controller"},
    {0x05, 0x00, "RAM memory"},
    {0x06, -1, "Bridge"},
    {0x06, 0x00, "Host bridge"},
    {0x06, 0x01, "ISA bridge"},
    {0x06, 0x04, "PCI bridge"},
    {0x06, 0x80, "Bridge"},
    {0x07, -1, "Communication controller"},
    {0x07, 0x00, "Serial controller"},
    {0x07, 0x80, "Communication controller"},
    {0x08, -1, "Generic system peripheral"},
    {0x08, 0x80, "System peripheral"},
    {0x09, -1, "Input device controller"},
    {0x0c, -1, "Serial bus controller"},
    {0x0c, 0x03, "USB controller"},
    {0x0c, 0x05, "SMBus"},
    {0x0d, -1, "Wireless controller"},
    {0x10, -1, "Encryption controller"},
    {0x11, -1, "Signal processing controller"},
    {0x12, -1, "Processing accelerators"},
    {0xff, -1, "Unassigned class"},
};

const char* LookupClassName(uint8_t base, int sub) {
  for (const ClassName& c : kClassNames) {
    if (c.base == base && c.sub == sub) return c.name;
  }
  return nullptr;
}

const char* VendorName(uint16_t vendor) {
  switch (vendor) {
    case 0x1af4:
    case 0x1b36:
      return "Red Hat, Inc.";
    case 0x8086:
      return "Intel Corporation";
    case 0x144d:
      return "Samsung Electronics Co Ltd";
    case 0x4e58:
      return "Nutanix, Inc.";
    default:
      return nullptr;
  }
}

// Modern virtio devices are 0x1040 + the virtio device type (virtio 1.2, 4.1.2.1).
const char* VirtioDeviceName(uint16_t device_id) {
  switch (device_id) {
    case 0x1041:
      return "Virtio 1.0 network device";
    case 0x1042:
      return "Virtio 1.0 block device";
    case 0x1043:
      return "Virtio 1.0 console";
    case 0x1044:
      return "Virtio 1.0 RNG";
    case 0x1045:
      return "Virtio 1.0 memory balloon";
    case 0x1048:
      return "Virtio 1.0 SCSI";
    case 0x1049:
      return "Virtio 1.0 filesystem";
    case 0x1050:
      return "Virtio 1.0 GPU";
    case 0x1052:
      return "Virtio 1.0 input";
    case 0x1053:
      return "Virtio 1.0 socket";
    default:
      return nullptr;
  }
}

const char* CapabilityName(uint8_t id) {
  switch (id) {
    case 0x02:
      return "AGP";
    case 0x03:
      return "Vital Product Data";
    case 0x04:
      return "Slot ID";
    case 0x06:
      return "CompactPCI hot-swap";
    case 0x07:
      return "PCI-X";
    case 0x08:
      return "HyperTransport";
    case 0x0a:
      return "Debug port";
    case 0x0c:
      return "PCI Hot-plug";
    case 0x0d:
      return "Subsystem";
    case 0x12:
      return "SATA HBA";
    case 0x13:
      return "PCI Advanced Features";
    case 0x14:
      return "Enhanced Allocation";
    default:
      return nullptr;
  }
}

const char* ExtendedCapabilityName(uint16_t id) {
  switch (id) {
    case 0x0001:
      return "Advanced Error Reporting";
    case 0x0002:
      return "Virtual Channel";
    case 0x0003:
      return "Device Serial Number";
    case 0x0004:
      return "Power Budgeting";
    case 0x000b:
      return "Vendor Specific Information";
    case 0x000d:
      return "Access Control Services";
    case 0x000e:
      return "Alternative Routing-ID Interpretation (ARI)";
    case 0x0010:
      return "Single Root I/O Virtualization (SR-IOV)";
    case 0x0015:
      return "Resizable BAR";
    case 0x0017:
      return "Transaction Processing Hints";
    case 0x0018:
      return "Latency Tolerance Reporting";
    case 0x0019:
      return "Secondary PCI Express";
    case 0x001e:
      return "L1 PM Substates";
    case 0x0023:
      return "Designated Vendor-Specific";
    case 0x0025:
      return "Data Link Feature";
    case 0x0026:
      return "Physical Layer 16.0 GT/s";
    default:
      return nullptr;
  }
}

const char* ExpressTypeName(unsigned type) {
  switch (type) {
    case 0x0:
      return "Endpoint";
    case 0x1:
      return "Legacy Endpoint";
    case 0x4:
      return "Root Port";
    case 0x5:
      return "Upstream Port";
    case 0x6:
      return "Downstream Port";
    case 0x7:
      return "PCI-Express to PCI/PCI-X Bridge";
    case 0x8:
      return "PCI/PCI-X to PCI-Express Bridge";
    case 0x9:
      return "Root Complex Integrated Endpoint";
    case 0xa:
      return "Root Complex Event Collector";
    default:
      return "Unknown type";
  }
}

const char* VirtioCapName(uint8_t cfg_type) {
  switch (cfg_type) {
    case 1:
      return "CommonCfg";
    case 2:
      return "Notify";
    case 3:
      return "ISR";
    case 4:
      return "DeviceCfg";
    case 5:
      return "PCICfg";
    case 8:
      return "SharedMemory";
    case 9:
      return "Vendor";
    default:
      return "<unknown>";
  }
}

const char* RegionName(uint32_t index) {
  static const char* kNames[] = {"BAR0", "BAR1", "BAR2",   "BAR3", "BAR4",
                                 "BAR5", "ROM",  "CONFIG", "VGA"};
  return index < 9 ? kNames[index] : "EXTRA";
}

const char* IrqName(uint32_t index) {
  static const char* kNames[] = {"INTx", "MSI", "MSI-X", "ERR", "REQ"};
  return index < 5 ? kNames[index] : "EXTRA";
}

// PCIe link speed encodings (Link Capabilities / Status / Control 2).
const char* LinkSpeed(unsigned code) {
  switch (code) {
    case 1:
      return "2.5GT/s";
    case 2:
      return "5GT/s";
    case 3:
      return "8GT/s";
    case 4:
      return "16GT/s";
    case 5:
      return "32GT/s";
    case 6:
      return "64GT/s";
    default:
      return "unknown";
  }
}

// --- Text helpers ---------------------------------------------------------------------------

class Text {
 public:
  [[gnu::format(printf, 2, 3)]] void Add(const char* fmt, ...) {
    char buf[512];
    va_list args;
    va_start(args, fmt);
    // NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized): va_start above; analyzer false positive
    int n = std::vsnprintf(buf, sizeof buf, fmt, args);
    va_end(args);
    if (n > 0) out_.append(buf, std::min<size_t>(static_cast<size_t>(n), sizeof buf - 1));
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

char Flag(bool on) { return on ? '+' : '-'; }

// lspci's [size=...] with exact units only ("4K", "16K", "1M"; otherwise bytes).
std::string SizeText(uint64_t size) {
  static const char* kUnits[] = {"", "K", "M", "G", "T"};
  int unit = 0;
  while (unit < 4 && size >= 1024 && size % 1024 == 0) {
    size /= 1024;
    ++unit;
  }
  return std::to_string(size) + kUnits[unit];
}

// Little-endian reads from the config image; bytes past its end read as zero.
class ConfigView {
 public:
  explicit ConfigView(std::span<const uint8_t> bytes) : bytes_(bytes) {}
  size_t size() const { return bytes_.size(); }
  uint8_t U8(uint32_t off) const { return off < bytes_.size() ? bytes_[off] : 0; }
  uint16_t U16(uint32_t off) const { return U8(off) | (U8(off + 1) << 8); }
  uint32_t U32(uint32_t off) const { return U16(off) | (uint32_t{U16(off + 2)} << 16); }

 private:
  std::span<const uint8_t> bytes_;
};

const RegionSnapshot* FindRegion(const DeviceSnapshot& s, uint32_t index) {
  for (const RegionSnapshot& r : s.regions) {
    if (r.index == index && r.error.empty()) return &r;
  }
  return nullptr;
}

const IrqSnapshot* FindIrq(const DeviceSnapshot& s, uint32_t index) {
  for (const IrqSnapshot& i : s.irqs) {
    if (i.index == index && i.error.empty()) return &i;
  }
  return nullptr;
}

// " [outside BARn (size S)]" when [offset, offset + length) does not fit in BAR `bar`.
std::string CheckInsideBar(const DeviceSnapshot& s, unsigned bar, uint64_t offset,
                           uint64_t length) {
  if (bar > 5) return " [no such BAR]";
  const RegionSnapshot* r = FindRegion(s, bar);
  if (r == nullptr) return "";
  if (offset > r->info.size || length > r->info.size - offset) {
    return " [outside BAR" + std::to_string(bar) + " of " + SizeText(r->info.size) + "]";
  }
  return "";
}

// --- Decoders -------------------------------------------------------------------------------

void DescribeIdentity(const ConfigView& cfg, Text& t) {
  uint16_t vendor = cfg.U16(pci::kVendorId);
  uint16_t device = cfg.U16(pci::kDeviceId);
  uint8_t base = cfg.U8(pci::kClassProgIf + 2);
  uint8_t sub = cfg.U8(pci::kClassProgIf + 1);
  uint8_t prog_if = cfg.U8(pci::kClassProgIf);
  const char* sub_name = LookupClassName(base, sub);
  const char* base_name = LookupClassName(base, -1);
  const char* vendor_name = VendorName(vendor);
  const char* device_name = vendor == kVirtioVendorId ? VirtioDeviceName(device) : nullptr;
  std::string class_text = sub_name != nullptr    ? sub_name
                           : base_name != nullptr ? base_name
                                                  : "Class";
  t.Add("%04x:%04x %s [%02x%02x]: %s", vendor, device, class_text.c_str(), base, sub,
        vendor_name != nullptr ? vendor_name : "Vendor");
  if (device_name != nullptr) {
    t.Add(" %s", device_name);
  } else {
    t.Add(" Device %04x", device);
  }
  t.Add(" (rev %02x)\n", cfg.U8(pci::kRevisionId));
  t.Add("\tClass: %s [%02x] / %s [%02x], prog-if %02x\n",
        base_name != nullptr ? base_name : "unknown", base,
        sub_name != nullptr ? sub_name : "unknown", sub, prog_if);
  uint16_t sub_vendor = cfg.U16(pci::kSubsystemVendorId);
  const char* sub_vendor_name = VendorName(sub_vendor);
  t.Add("\tSubsystem: %s Device %04x [%04x:%04x]\n",
        sub_vendor_name != nullptr ? sub_vendor_name : "Vendor", cfg.U16(pci::kSubsystemId),
        sub_vendor, cfg.U16(pci::kSubsystemId));
  uint8_t header_type = cfg.U8(pci::kHeaderType);
  if ((header_type & 0x7f) != 0 || (header_type & 0x80) != 0) {
    t.Add("\tHeader type %u%s\n", header_type & 0x7f,
          (header_type & 0x80) ? ", multi-function" : "");
  }
}

void DescribeCommandStatus(const ConfigView& cfg, Text& t) {
  uint16_t cmd = cfg.U16(pci::kCommand);
  t.Add(
      "\tControl: I/O%c Mem%c BusMaster%c SpecCycle%c MemWINV%c VGASnoop%c ParErr%c Stepping%c "
      "SERR%c FastB2B%c DisINTx%c\n",
      Flag(cmd & (1u << 0)), Flag(cmd & (1u << 1)), Flag(cmd & (1u << 2)), Flag(cmd & (1u << 3)),
      Flag(cmd & (1u << 4)), Flag(cmd & (1u << 5)), Flag(cmd & (1u << 6)), Flag(cmd & (1u << 7)),
      Flag(cmd & (1u << 8)), Flag(cmd & (1u << 9)), Flag(cmd & (1u << 10)));
  uint16_t st = cfg.U16(pci::kStatus);
  static const char* kDevsel[] = {"fast", "medium", "slow", "??"};
  t.Add(
      "\tStatus: Cap%c 66MHz%c UDF%c FastB2B%c ParErr%c DEVSEL=%s >TAbort%c <TAbort%c "
      "<MAbort%c >SERR%c <PERR%c INTx%c\n",
      Flag(st & (1u << 4)), Flag(st & (1u << 5)), Flag(st & (1u << 6)), Flag(st & (1u << 7)),
      Flag(st & (1u << 8)), kDevsel[(st >> 9) & 3], Flag(st & (1u << 11)), Flag(st & (1u << 12)),
      Flag(st & (1u << 13)), Flag(st & (1u << 14)), Flag(st & (1u << 15)), Flag(st & (1u << 3)));
  t.Add("\tLatency: %u, Cache Line Size: %u bytes\n", cfg.U8(pci::kLatencyTimer),
        cfg.U8(pci::kCacheLineSize) * 4u);
  uint8_t pin = cfg.U8(pci::kInterruptPin);
  if (pin == 0) {
    t.Add("\tInterrupt: none (no INTx pin)\n");
  } else if (pin <= 4) {
    t.Add("\tInterrupt: pin %c, line %u\n", 'A' + pin - 1, cfg.U8(pci::kInterruptLine));
  } else {
    t.Add("\tInterrupt: pin %u (invalid)\n", pin);
  }
}

void DescribeMmapAreas(const RegionSnapshot& r, Text& t) {
  for (const wire::SparseMmapArea& a : r.sparse_areas) {
    t.Add("\t\tmmappable: [%llx-%llx] (%s)\n", static_cast<unsigned long long>(a.offset),
          static_cast<unsigned long long>(a.offset + a.size - (a.size != 0 ? 1 : 0)),
          SizeText(a.size).c_str());
  }
}

void DescribeBars(const DeviceSnapshot& s, const ConfigView& cfg, Text& t) {
  uint16_t cmd = cfg.U16(pci::kCommand);
  for (uint32_t i = 0; i < 6; ++i) {
    uint32_t bar = cfg.U32(pci::kBar0 + 4 * i);
    const RegionSnapshot* r = FindRegion(s, i);
    uint64_t size = r != nullptr ? r->info.size : 0;
    if (bar == 0 && size == 0) continue;
    if (bar & pci::kBarIo) {
      uint32_t addr = bar & ~0x3u;
      t.Add("\tRegion %u: I/O ports at ", i);
      if (addr != 0) {
        t.Add("%04x", addr);
      } else {
        t.Add("<unassigned>");
      }
      t.Add("%s [size=%s]\n", (cmd & pci::kCommandIo) ? "" : " [disabled]", SizeText(size).c_str());
    } else {
      bool is64 = ((bar >> 1) & 0x3) == 2;
      uint64_t addr = bar & ~0xfull;
      if (is64 && i < 5) addr |= uint64_t{cfg.U32(pci::kBar0 + 4 * (i + 1))} << 32;
      t.Add("\tRegion %u: Memory at ", i);
      if (addr != 0) {
        t.Add("%llx", static_cast<unsigned long long>(addr));
      } else {
        t.Add("<unassigned>");
      }
      t.Add(" (%s, %s)%s [size=%s]\n", is64 ? "64-bit" : "32-bit",
            (bar & pci::kBarPrefetch) ? "prefetchable" : "non-prefetchable",
            (cmd & pci::kCommandMemory) ? "" : " [disabled]", SizeText(size).c_str());
      if (r != nullptr) DescribeMmapAreas(*r, t);
      if (is64) ++i;  // the upper half of this BAR
      continue;
    }
    if (r != nullptr) DescribeMmapAreas(*r, t);
  }
  if (const RegionSnapshot* rom = FindRegion(s, wire::kPciRomRegionIndex);
      rom != nullptr && rom->info.size != 0) {
    uint32_t reg = cfg.U32(pci::kRomAddress);
    t.Add("\tExpansion ROM at ");
    if ((reg & ~0x7ffu) != 0) {
      t.Add("%08x", reg & ~0x7ffu);
    } else {
      t.Add("<unassigned>");
    }
    t.Add("%s [size=%s]\n", (reg & 1) ? "" : " [disabled]", SizeText(rom->info.size).c_str());
  }
}

void DescribePowerManagement(const ConfigView& cfg, uint32_t p, Text& t) {
  uint16_t pmc = cfg.U16(p + pci::kPmPmc);
  static const unsigned kAuxCurrentMa[] = {0, 55, 100, 160, 220, 270, 320, 375};
  t.Add("Power Management version %u\n", pmc & 0x7);
  t.Add(
      "\t\tFlags: PMEClk%c DSI%c D1%c D2%c AuxCurrent=%umA "
      "PME(D0%c,D1%c,D2%c,D3hot%c,D3cold%c)\n",
      Flag(pmc & (1u << 3)), Flag(pmc & (1u << 5)), Flag(pmc & (1u << 9)), Flag(pmc & (1u << 10)),
      kAuxCurrentMa[(pmc >> 6) & 0x7], Flag(pmc & (1u << 11)), Flag(pmc & (1u << 12)),
      Flag(pmc & (1u << 13)), Flag(pmc & (1u << 14)), Flag(pmc & (1u << 15)));
  uint16_t csr = cfg.U16(p + pci::kPmPmcsr);
  t.Add("\t\tStatus: D%u NoSoftRst%c PME-Enable%c DSel=%u DScale=%u PME%c\n", csr & 0x3,
        Flag(csr & pci::kPmcsrNoSoftReset), Flag(csr & (1u << 8)), (csr >> 9) & 0xf,
        (csr >> 13) & 0x3, Flag(csr & (1u << 15)));
}

void DescribeMsi(const ConfigView& cfg, uint32_t p, Text& t) {
  uint16_t ctl = cfg.U16(p + 2);
  bool is64 = ctl & (1u << 7);
  t.Add("MSI: Enable%c Count=%u/%u Maskable%c 64bit%c\n", Flag(ctl & 1), 1u << ((ctl >> 4) & 7),
        1u << ((ctl >> 1) & 7), Flag(ctl & (1u << 8)), Flag(is64));
  uint64_t addr = cfg.U32(p + 4);
  uint16_t data;
  if (is64) {
    addr |= uint64_t{cfg.U32(p + 8)} << 32;
    data = cfg.U16(p + 12);
  } else {
    data = cfg.U16(p + 8);
  }
  t.Add("\t\tAddress: %016llx  Data: %04x\n", static_cast<unsigned long long>(addr), data);
}

void DescribeMsix(const DeviceSnapshot& s, const ConfigView& cfg, uint32_t p, Text& t) {
  uint16_t ctl = cfg.U16(p + pci::kMsixControl);
  uint32_t count = (ctl & pci::kMsixControlTableSizeMask) + 1u;
  t.Add("MSI-X: Enable%c Count=%u Masked%c\n", Flag(ctl & pci::kMsixControlEnable), count,
        Flag(ctl & pci::kMsixControlFunctionMask));
  uint32_t table = cfg.U32(p + pci::kMsixTable);
  uint32_t pba = cfg.U32(p + pci::kMsixPba);
  unsigned table_bar = table & pci::kMsixBirMask;
  unsigned pba_bar = pba & pci::kMsixBirMask;
  uint32_t table_off = table & ~pci::kMsixBirMask;
  uint32_t pba_off = pba & ~pci::kMsixBirMask;
  t.Add("\t\tVector table: BAR=%u offset=%08x size=%s%s\n", table_bar, table_off,
        SizeText(uint64_t{count} * pci::kMsixEntrySize).c_str(),
        CheckInsideBar(s, table_bar, table_off, uint64_t{count} * pci::kMsixEntrySize).c_str());
  uint64_t pba_size = (uint64_t{count} + 63) / 64 * 8;
  t.Add("\t\tPBA: BAR=%u offset=%08x size=%s%s\n", pba_bar, pba_off, SizeText(pba_size).c_str(),
        CheckInsideBar(s, pba_bar, pba_off, pba_size).c_str());
  if (const IrqSnapshot* irq = FindIrq(s, wire::kPciMsixIrqIndex);
      irq != nullptr && irq->info.count != count) {
    t.Add("\t\t!! the MSI-X IRQ index reports %u vectors, the capability %u\n", irq->info.count,
          count);
  }
}

void DescribeExpress(const ConfigView& cfg, uint32_t p, Text& t) {
  uint16_t flags = cfg.U16(p + pci::kExpFlags);
  unsigned version = flags & 0xf;
  unsigned type = (flags & pci::kExpFlagsTypeMask) >> 4;
  t.Add("Express (v%u) %s", version, ExpressTypeName(type));
  if (type == 0x4) t.Add(" (Slot%c)", Flag(flags & (1u << 8)));
  t.Add(", MSI %02x\n", (flags >> 9) & 0x1f);

  bool endpoint = type == 0x0 || type == 0x1 || type == 0x9;
  bool has_link = type != 0x9 && type != 0xa;

  static const char* kL0s[] = {"<64ns", "<128ns", "<256ns", "<512ns",
                               "<1us",  "<2us",   "<4us",   "unlimited"};
  static const char* kL1[] = {"<1us",  "<2us",  "<4us",  "<8us",
                              "<16us", "<32us", "<64us", "unlimited"};
  uint32_t dc = cfg.U32(p + pci::kExpDevCap);
  t.Add("\t\tDevCap:\tMaxPayload %u bytes, PhantFunc %u", 128u << (dc & 0x7), (dc >> 3) & 0x3);
  if (endpoint) t.Add(", Latency L0s %s, L1 %s", kL0s[(dc >> 6) & 0x7], kL1[(dc >> 9) & 0x7]);
  t.Add("\n\t\t\tExtTag%c AttnBtn%c AttnInd%c PwrInd%c RBE%c FLReset%c\n", Flag(dc & (1u << 5)),
        Flag(dc & (1u << 12)), Flag(dc & (1u << 13)), Flag(dc & (1u << 14)), Flag(dc & (1u << 15)),
        Flag(dc & (1u << 28)));

  uint16_t ctl = cfg.U16(p + pci::kExpDevCtl);
  t.Add("\t\tDevCtl:\tCorrErr%c NonFatalErr%c FatalErr%c UnsupReq%c\n", Flag(ctl & (1u << 0)),
        Flag(ctl & (1u << 1)), Flag(ctl & (1u << 2)), Flag(ctl & (1u << 3)));
  t.Add("\t\t\tRlxdOrd%c ExtTag%c PhantFunc%c AuxPwr%c NoSnoop%c\n", Flag(ctl & (1u << 4)),
        Flag(ctl & (1u << 8)), Flag(ctl & (1u << 9)), Flag(ctl & (1u << 10)),
        Flag(ctl & (1u << 11)));
  t.Add("\t\t\tMaxPayload %u bytes, MaxReadReq %u bytes\n", 128u << ((ctl >> 5) & 0x7),
        128u << ((ctl >> 12) & 0x7));
  uint16_t sta = cfg.U16(p + pci::kExpDevSta);
  t.Add("\t\tDevSta:\tCorrErr%c NonFatalErr%c FatalErr%c UnsupReq%c AuxPwr%c TransPend%c\n",
        Flag(sta & (1u << 0)), Flag(sta & (1u << 1)), Flag(sta & (1u << 2)), Flag(sta & (1u << 3)),
        Flag(sta & (1u << 4)), Flag(sta & (1u << 5)));

  if (has_link) {
    static const char* kAspmSupport[] = {"not supported", "L0s", "L1", "L0s L1"};
    static const char* kAspmControl[] = {"Disabled", "L0s Enabled", "L1 Enabled", "L0s L1 Enabled"};
    uint32_t lc = cfg.U32(p + pci::kExpLnkCap);
    t.Add("\t\tLnkCap:\tPort #%u, Speed %s, Width x%u, ASPM %s\n", lc >> 24, LinkSpeed(lc & 0xf),
          (lc >> 4) & 0x3f, kAspmSupport[(lc >> 10) & 0x3]);
    t.Add("\t\t\tClockPM%c Surprise%c LLActRep%c BwNot%c ASPMOptComp%c\n", Flag(lc & (1u << 18)),
          Flag(lc & (1u << 19)), Flag(lc & (1u << 20)), Flag(lc & (1u << 21)),
          Flag(lc & (1u << 22)));
    uint16_t lctl = cfg.U16(p + pci::kExpLnkCtl);
    t.Add("\t\tLnkCtl:\tASPM %s; RCB %u bytes, Disabled%c CommClk%c\n", kAspmControl[lctl & 0x3],
          (lctl & (1u << 3)) ? 128u : 64u, Flag(lctl & (1u << 4)), Flag(lctl & (1u << 6)));
    t.Add("\t\t\tExtSynch%c ClockPM%c AutWidDis%c BWInt%c AutBWInt%c\n", Flag(lctl & (1u << 7)),
          Flag(lctl & (1u << 8)), Flag(lctl & (1u << 9)), Flag(lctl & (1u << 10)),
          Flag(lctl & (1u << 11)));
    uint16_t ls = cfg.U16(p + pci::kExpLnkSta);
    t.Add("\t\tLnkSta:\tSpeed %s, Width x%u\n", LinkSpeed(ls & 0xf), (ls >> 4) & 0x3f);
    t.Add("\t\t\tTrErr%c Train%c SlotClk%c DLActive%c BWMgmt%c ABWMgmt%c\n", Flag(ls & (1u << 10)),
          Flag(ls & (1u << 11)), Flag(ls & (1u << 12)), Flag(ls & (1u << 13)),
          Flag(ls & (1u << 14)), Flag(ls & (1u << 15)));
  }
  if (version < 2) return;

  uint32_t dc2 = cfg.U32(p + pci::kExpDevCap2);
  std::string ranges;
  for (int i = 0; i < 4; ++i) {
    if (dc2 & (1u << i)) ranges += static_cast<char>('A' + i);
  }
  t.Add("\t\tDevCap2: Completion Timeout: %s%s, TimeoutDis%c ARIFwd%c LTR%c 10BitTagComp%c\n",
        ranges.empty() ? "Not Supported" : "Range ", ranges.c_str(), Flag(dc2 & (1u << 4)),
        Flag(dc2 & (1u << 5)), Flag(dc2 & (1u << 11)), Flag(dc2 & (1u << 16)));
  uint16_t ctl2 = cfg.U16(p + pci::kExpDevCtl2);
  t.Add("\t\tDevCtl2: Completion Timeout: %s, TimeoutDis%c ARIFwd%c LTR%c 10BitTagReq%c\n",
        (ctl2 & 0xf) == 0 ? "50us to 50ms" : "programmed", Flag(ctl2 & (1u << 4)),
        Flag(ctl2 & (1u << 5)), Flag(ctl2 & (1u << 10)), Flag(ctl2 & (1u << 12)));
  if (!has_link) return;
  uint32_t lc2 = cfg.U32(p + pci::kExpLnkCap2);
  std::string speeds;
  for (unsigned code = 1; code <= 7; ++code) {
    if (!(lc2 & (1u << code))) continue;
    if (!speeds.empty()) speeds += ", ";
    speeds += LinkSpeed(code);
  }
  t.Add("\t\tLnkCap2: Supported Link Speeds: %s, Crosslink%c\n",
        speeds.empty() ? "none reported" : speeds.c_str(), Flag(lc2 & (1u << 8)));
  uint16_t lctl2 = cfg.U16(p + pci::kExpLnkCtl2);
  t.Add("\t\tLnkCtl2: Target Link Speed: %s, EnterCompliance%c SpeedDis%c\n",
        LinkSpeed(lctl2 & 0xf), Flag(lctl2 & (1u << 4)), Flag(lctl2 & (1u << 5)));
  uint16_t ls2 = cfg.U16(p + pci::kExpLnkSta2);
  t.Add("\t\tLnkSta2: Current De-emphasis Level: %s, EqualizationComplete%c\n",
        (ls2 & 1) ? "-3.5dB" : "-6dB", Flag(ls2 & (1u << 1)));
}

// Vendor-specific capability; for virtio devices a virtio_pci_cap (virtio 1.2, 4.1.4):
// cap_len (2), cfg_type (3), bar (4), id (5), offset (8, le32), length (12, le32), and for
// Notify notify_off_multiplier (16, le32).
void DescribeVendor(const DeviceSnapshot& s, const ConfigView& cfg, uint32_t p, Text& t) {
  uint8_t len = cfg.U8(p + pci::kVendorCapLengthOffset);
  if (cfg.U16(pci::kVendorId) != kVirtioVendorId || len < 16) {
    t.Add("Vendor Specific Information: Len=%02x <?>\n", len);
    return;
  }
  uint8_t cfg_type = cfg.U8(p + 3);
  unsigned bar = cfg.U8(p + 4);
  uint32_t offset = cfg.U32(p + 8);
  uint32_t length = cfg.U32(p + 12);
  t.Add("Vendor Specific Information: VirtIO: %s\n", VirtioCapName(cfg_type));
  t.Add("\t\tBAR=%u offset=%08x size=%08x", bar, offset, length);
  if (cfg_type == 2 && len >= 20) t.Add(" multiplier=%08x", cfg.U32(p + 16));
  if (cfg_type == 5) {
    // PCICfg's BAR/offset/length are a window the driver programs, not a layout.
    t.Add(" (access window)\n");
    return;
  }
  if (cfg.U8(p + 5) != 0) t.Add(" id=%u", cfg.U8(p + 5));
  t.Add("%s\n", CheckInsideBar(s, bar, offset, length).c_str());
}

void DescribeCapabilities(const DeviceSnapshot& s, const ConfigView& cfg, Text& t) {
  if (!(cfg.U16(pci::kStatus) & pci::kStatusCapList)) {
    t.Add("\tCapabilities: none (Status.Cap-)\n");
    return;
  }
  bool seen[256] = {};
  uint32_t p = cfg.U8(pci::kCapabilitiesPointer) & ~0x3u;
  for (uint32_t n = 0; p != 0; ++n) {
    if (n >= kMaxStandardCaps || p < pci::kCapAreaStart || p > 0xfc) {
      t.Add("\tCapabilities: [%02x] <chain broken: pointer outside 40..fc>\n", p);
      return;
    }
    if (seen[p]) {
      t.Add("\tCapabilities: [%02x] <chain loops back>\n", p);
      return;
    }
    seen[p] = true;
    uint8_t id = cfg.U8(p);
    t.Add("\tCapabilities: [%02x] ", p);
    switch (id) {
      case pci::kCapIdPowerManagement:
        DescribePowerManagement(cfg, p, t);
        break;
      case pci::kCapIdMsi:
        DescribeMsi(cfg, p, t);
        break;
      case pci::kCapIdVendor:
        DescribeVendor(s, cfg, p, t);
        break;
      case pci::kCapIdExpress:
        DescribeExpress(cfg, p, t);
        break;
      case pci::kCapIdMsix:
        DescribeMsix(s, cfg, p, t);
        break;
      default:
        if (const char* name = CapabilityName(id)) {
          t.Add("%s\n", name);
        } else {
          t.Add("#%02x [unknown]\n", id);
        }
    }
    p = cfg.U8(p + pci::kCapNextOffset) & ~0x3u;
  }
}

void DescribeExtendedCapabilities(const ConfigView& cfg, Text& t) {
  uint32_t p = pci::kExtendedCapStart;
  std::vector<bool> seen(cfg.size(), false);
  for (uint32_t n = 0;; ++n) {
    uint32_t header = cfg.U32(p);
    if (header == 0 || header == 0xffffffff) {
      if (n == 0) t.Add("\tExtended capabilities: none (header at [100] is %08x)\n", header);
      return;
    }
    if (n >= kMaxExtendedCaps || seen[p]) {
      t.Add("\tCapabilities: [%03x] <extended chain loops back>\n", p);
      return;
    }
    seen[p] = true;
    uint16_t id = header & 0xffff;
    unsigned version = (header >> 16) & 0xf;
    t.Add("\tCapabilities: [%03x v%u] ", p, version);
    switch (id) {
      case 0x0003:
        t.Add("Device Serial Number %02x-%02x-%02x-%02x-%02x-%02x-%02x-%02x\n", cfg.U8(p + 11),
              cfg.U8(p + 10), cfg.U8(p + 9), cfg.U8(p + 8), cfg.U8(p + 7), cfg.U8(p + 6),
              cfg.U8(p + 5), cfg.U8(p + 4));
        break;
      case 0x000b: {
        uint32_t vsec = cfg.U32(p + 4);
        t.Add("Vendor Specific Information: ID=%04x Rev=%u Len=%03x <?>\n", vsec & 0xffff,
              (vsec >> 16) & 0xf, vsec >> 20);
        break;
      }
      case 0x0023: {
        uint32_t h1 = cfg.U32(p + 4);
        t.Add("Designated Vendor-Specific: Vendor=%04x ID=%04x Rev=%u Len=%u\n", h1 & 0xffff,
              cfg.U16(p + 8), (h1 >> 16) & 0xf, h1 >> 20);
        break;
      }
      default:
        if (const char* name = ExtendedCapabilityName(id)) {
          t.Add("%s\n", name);
        } else {
          t.Add("Extended Capability ID %#x\n", id);
        }
    }
    uint32_t next = header >> 20;
    if (next == 0) return;
    if (next < pci::kExtendedCapStart || next + 4 > cfg.size() || (next & 0x3) != 0) {
      t.Add("\tCapabilities: [%03x] <extended chain broken>\n", next);
      return;
    }
    p = next;
  }
}

void DescribeVfioUser(const DeviceSnapshot& s, Text& t) {
  t.Add("vfio-user:\n");
  const proto::Capabilities& caps = s.server_caps;
  t.Add("\tServer: max_data_xfer_size=%llu max_msg_fds=%llu max_dma_maps=%llu pgsizes=%#llx%s\n",
        static_cast<unsigned long long>(caps.max_data_xfer_size.value_or(0)),
        static_cast<unsigned long long>(caps.max_msg_fds.value_or(0)),
        static_cast<unsigned long long>(caps.max_dma_maps.value_or(0)),
        static_cast<unsigned long long>(caps.pgsizes.value_or(0)),
        caps.write_multiple.value_or(false) ? " write_multiple" : "");
  t.Add("\tflags:%s%s  regions: %u  irq indexes: %u\n",
        (s.device.flags & wire::kDeviceFlagPci) ? " PCI" : "",
        (s.device.flags & wire::kDeviceFlagReset) ? " RESET" : "", s.device.num_regions,
        s.device.num_irqs);
  std::string unused;
  for (const RegionSnapshot& r : s.regions) {
    if (!r.error.empty()) {
      t.Add("\tregion %u (%s): error: %s\n", r.index, RegionName(r.index), r.error.c_str());
      continue;
    }
    if (r.info.size == 0) {
      unused += std::string(" ") + RegionName(r.index);
      continue;
    }
    t.Add("\tregion %u (%s): size %llu%s%s%s%s [%s]\n", r.index, RegionName(r.index),
          static_cast<unsigned long long>(r.info.size),
          (r.info.flags & wire::kRegionFlagRead) ? " read" : "",
          (r.info.flags & wire::kRegionFlagWrite) ? " write" : "",
          (r.info.flags & wire::kRegionFlagMmap) ? " mmap" : "",
          (r.info.flags & wire::kRegionFlagCaps) ? " caps" : "", SizeText(r.info.size).c_str());
    for (const wire::SparseMmapArea& a : r.sparse_areas) {
      t.Add("\t    mmappable [0x%llx, +0x%llx)\n", static_cast<unsigned long long>(a.offset),
            static_cast<unsigned long long>(a.size));
    }
  }
  if (!unused.empty()) t.Add("\tregions of size 0:%s\n", unused.c_str());
  std::string absent;
  for (const IrqSnapshot& i : s.irqs) {
    if (!i.error.empty()) {
      t.Add("\tirq %u (%s): error: %s\n", i.index, IrqName(i.index), i.error.c_str());
      continue;
    }
    if (i.info.count == 0) {
      absent += std::string(" ") + IrqName(i.index);
      continue;
    }
    t.Add("\tirq %u (%s): %u vector(s)%s%s%s%s\n", i.index, IrqName(i.index), i.info.count,
          (i.info.flags & wire::kIrqInfoEventfd) ? " eventfd" : "",
          (i.info.flags & wire::kIrqInfoMaskable) ? " maskable" : "",
          (i.info.flags & wire::kIrqInfoAutomasked) ? " automasked" : "",
          (i.info.flags & wire::kIrqInfoNoResize) ? " noresize" : "");
  }
  if (!absent.empty()) t.Add("\tirq indexes without vectors:%s\n", absent.c_str());
  if (s.device.num_regions > s.regions.size() || s.device.num_irqs > s.irqs.size()) {
    t.Add("\t(only the first %u regions and %u IRQ indexes are shown)\n", kMaxRegionsShown,
          kMaxIrqsShown);
  }
}

}  // namespace

Result<DeviceSnapshot> ReadDeviceSnapshot(client::Client& client) {
  DeviceSnapshot s;
  auto info = client.GetDeviceInfo();
  if (!info) return info.error();
  s.device = *info;
  s.server_caps = client.server_caps();
  for (uint32_t i = 0; i < std::min(s.device.num_regions, kMaxRegionsShown); ++i) {
    RegionSnapshot r;
    r.index = i;
    auto region = client.GetRegionInfo(i);
    if (region) {
      r.info = region->info;
      r.sparse_areas = region->sparse_areas;
    } else {
      r.error = region.error().message;
    }
    s.regions.push_back(std::move(r));
  }
  for (uint32_t i = 0; i < std::min(s.device.num_irqs, kMaxIrqsShown); ++i) {
    IrqSnapshot irq;
    irq.index = i;
    auto got = client.GetIrqInfo(i);
    if (got) {
      irq.info = *got;
    } else {
      irq.error = got.error().message;
    }
    s.irqs.push_back(std::move(irq));
  }
  if (!(s.device.flags & wire::kDeviceFlagPci)) {
    s.config_error = "not a PCI device";
    return s;
  }
  const RegionSnapshot* config = FindRegion(s, wire::kPciConfigRegionIndex);
  if (config == nullptr || config->info.size == 0) {
    s.config_error = "no config space region";
    return s;
  }
  // At most a PCI Express config space, read in pieces the server accepts.
  size_t size = std::min<uint64_t>(config->info.size, pci::kExpressConfigSize);
  size_t chunk = std::clamp<size_t>(client.max_data_xfer_size(), 4, 1024);
  std::vector<uint8_t> bytes(size);
  for (size_t off = 0; off < size; off += chunk) {
    size_t n = std::min(chunk, size - off);
    Status st = client.RegionRead(wire::kPciConfigRegionIndex, off,
                                  std::span<uint8_t>(bytes.data() + off, n));
    if (!st.ok()) {
      s.config_error = st.message();
      return s;
    }
  }
  s.config = std::move(bytes);
  return s;
}

std::string FormatDeviceInfo(const DeviceSnapshot& s) {
  Text t;
  if (s.config.empty()) {
    t.Add("PCI config space: unavailable (%s)\n", s.config_error.c_str());
  } else {
    ConfigView cfg(s.config);
    DescribeIdentity(cfg, t);
    DescribeCommandStatus(cfg, t);
    DescribeBars(s, cfg, t);
    DescribeCapabilities(s, cfg, t);
    if (cfg.size() >= pci::kExpressConfigSize) DescribeExtendedCapabilities(cfg, t);
  }
  DescribeVfioUser(s, t);
  return t.Take();
}

int PrintDeviceInfo(client::Client& client, FILE* out) {
  auto snapshot = ReadDeviceSnapshot(client);
  if (!snapshot) {
    std::fprintf(stderr, "error: %s\n", snapshot.error().message.c_str());
    return 1;
  }
  std::string text = FormatDeviceInfo(*snapshot);
  std::fwrite(text.data(), 1, text.size(), out);
  return std::fflush(out) == 0 ? 0 : 1;
}

}  // namespace vfu::ctl
