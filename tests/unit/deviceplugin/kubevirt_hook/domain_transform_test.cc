#include "deviceplugin/kubevirt_hook/domain_transform.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <pugixml.hpp>
#include <sstream>

#include "tests/support/subprocess.h"

namespace vfu::kubevirt_hook {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string ReadTestdata(const std::string& name) {
  std::ifstream in(std::string(VFU_HOOK_TESTDATA) + "/" + name, std::ios::binary);
  EXPECT_TRUE(in) << "missing testdata " << name;
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// What a transformed domain tells QEMU about one vfio-user device.
struct DeviceArg {
  std::string id, path, bus, addr;
  bool operator==(const DeviceArg&) const = default;
};
std::ostream& operator<<(std::ostream& os, const DeviceArg& d) {
  return os << "{" << d.id << " " << d.path << " bus=" << d.bus << " addr=" << d.addr << "}";
}

struct Parsed {
  pugi::xml_document doc;
  pugi::xml_node domain;
  pugi::xml_node commandline;
  std::vector<std::string> args;         // every qemu:arg value, in order
  std::vector<std::string> child_kinds;  // "arg"/"env" in document order
  std::vector<DeviceArg> devices;        // the vfio-user-pci -device arguments
};

void Parse(const std::string& xml, Parsed* p) {
  ASSERT_TRUE(p->doc.load_string(xml.c_str())) << xml;
  p->domain = p->doc.child("domain");
  ASSERT_TRUE(p->domain);
  p->commandline = p->domain.child("qemu:commandline");
  for (pugi::xml_node child : p->commandline.children()) {
    std::string name = child.name();
    p->child_kinds.push_back(name.substr(name.find(':') + 1));
    if (name == "qemu:arg") p->args.push_back(child.attribute("value").value());
  }
  for (size_t i = 0; i + 1 < p->args.size(); ++i) {
    if (p->args[i] != "-device") continue;
    auto j = nlohmann::json::parse(p->args[i + 1], nullptr, false);
    if (!j.is_object() || j.value("driver", "") != "vfio-user-pci") continue;
    ASSERT_EQ(j["socket"]["type"], "unix");
    p->devices.push_back({j.value("id", ""), j["socket"].value("path", ""), j.value("bus", ""),
                          j.value("addr", "")});
  }
}

// The document without the parts the hook may change, for "nothing else changed" checks.
std::string WithoutHookedParts(const std::string& xml) {
  pugi::xml_document doc;
  doc.load_string(xml.c_str());
  pugi::xml_node domain = doc.child("domain");
  domain.remove_child("memoryBacking");
  domain.remove_child("qemu:commandline");
  domain.remove_attribute("xmlns:qemu");
  std::ostringstream out;
  doc.save(out, "  ", pugi::format_indent | pugi::format_no_declaration);
  return out.str();
}

void ExpectLibvirtSchemaValid(const std::string& xml, const std::string& label) {
  testing::TempDir dir;
  std::string path = dir.File(label + ".xml");
  std::ofstream(path) << xml;
  auto [code, output] = testing::RunToCompletion(VFU_VIRT_XML_VALIDATE, {path, "domain"});
  EXPECT_EQ(code, 0) << label << ": virt-xml-validate says:\n" << output;
  EXPECT_THAT(output, HasSubstr("validates")) << label;
}

const char kSocket[] = "/var/run/vfio-user/";

// ---- golden domains -----------------------------------------------------------------------

TEST(DomainTransformGoldenTest, PlainDomainGetsMemfdSharedMemoryAndOneDeviceArgumentPerDevice) {
  std::string in = ReadTestdata("plain.domain.xml");
  auto out = OnDefineDomain(in, ReadTestdata("plain.vmi.json"));
  ASSERT_TRUE(out.ok()) << out.error().message;
  EXPECT_EQ(*out, ReadTestdata("plain.expected.xml"));

  Parsed p;
  Parse(*out, &p);
  EXPECT_STREQ(p.domain.attribute("xmlns:qemu").value(), kQemuNamespace.data());
  pugi::xml_node backing = p.domain.child("memoryBacking");
  EXPECT_STREQ(backing.child("source").attribute("type").value(), "memfd");
  EXPECT_STREQ(backing.child("access").attribute("mode").value(), "shared");
  EXPECT_THAT(p.devices,
              ElementsAre(DeviceArg{"vfu-virtio-blk-0",
                                    std::string(kSocket) + "virtio-blk/0/vfio-user.sock", "", ""},
                          DeviceArg{"vfu-virtio-blk-1",
                                    std::string(kSocket) + "virtio-blk/1/vfio-user.sock", "", ""}));
  EXPECT_EQ(p.args.size(), 4u);
  EXPECT_EQ(WithoutHookedParts(*out), WithoutHookedParts(in));
  ExpectLibvirtSchemaValid(in, "plain-input");
  ExpectLibvirtSchemaValid(*out, "plain-output");
}

TEST(DomainTransformGoldenTest, HugepagesWithKubevirtsMemfdKeepHugepagesAndAddSharedAccess) {
  std::string in = ReadTestdata("hugepages-numa.domain.xml");
  auto out = OnDefineDomain(in, ReadTestdata("hugepages-numa.vmi.json"));
  ASSERT_TRUE(out.ok()) << out.error().message;
  EXPECT_EQ(*out, ReadTestdata("hugepages-numa.expected.xml"));

  Parsed p;
  Parse(*out, &p);
  pugi::xml_node backing = p.domain.child("memoryBacking");
  EXPECT_TRUE(backing.child("hugepages"));
  EXPECT_STREQ(backing.child("source").attribute("type").value(), "memfd");
  EXPECT_STREQ(backing.child("access").attribute("mode").value(), "shared");
  EXPECT_EQ(std::distance(backing.children("source").begin(), backing.children("source").end()), 1);
  // The NUMA cell KubeVirt adds for memfd is left alone: it inherits the shared access.
  pugi::xml_node cell = p.domain.child("cpu").child("numa").child("cell");
  EXPECT_STREQ(cell.attribute("memory").value(), "1048576");
  EXPECT_FALSE(cell.attribute("memAccess"));
  // Several resources: classes in name order, each with its own indices.
  EXPECT_THAT(p.devices,
              ElementsAre(DeviceArg{"vfu-nvme-0", std::string(kSocket) + "nvme/0/vfio-user.sock"},
                          DeviceArg{"vfu-nvme-1", std::string(kSocket) + "nvme/1/vfio-user.sock"},
                          DeviceArg{"vfu-virtio-blk-0",
                                    std::string(kSocket) + "virtio-blk/0/vfio-user.sock"}));
  EXPECT_EQ(WithoutHookedParts(*out), WithoutHookedParts(in));
  ExpectLibvirtSchemaValid(in, "hugepages-input");
  ExpectLibvirtSchemaValid(*out, "hugepages-output");
}

TEST(DomainTransformGoldenTest, ExistingCommandlineKeepsForeignArgsAndEnvAndReplacesOldDevices) {
  std::string in = ReadTestdata("existing-commandline.domain.xml");
  auto out = OnDefineDomain(in, ReadTestdata("existing-commandline.vmi.json"));
  ASSERT_TRUE(out.ok()) << out.error().message;
  EXPECT_EQ(*out, ReadTestdata("existing-commandline.expected.xml"));

  Parsed p;
  Parse(*out, &p);
  // The earlier definition had two devices; the VMI now asks for one, placed by annotation.
  EXPECT_THAT(p.devices, ElementsAre(DeviceArg{"vfu-virtio-blk-0",
                                               std::string(kSocket) + "virtio-blk/0/vfio-user.sock",
                                               "pcie.0", "0x1c"}));
  EXPECT_EQ(p.args[0], "-fw_cfg");
  EXPECT_EQ(p.args[1], "name=opt/ovmf/X-PciMmio64Mb,string=262144");
  // libvirt's schema wants every arg before the first env.
  EXPECT_THAT(p.child_kinds, ElementsAre("arg", "arg", "arg", "arg", "env"));
  // memfd disabled by annotation: hugepages stay file-backed (no source added), but shared.
  pugi::xml_node backing = p.domain.child("memoryBacking");
  EXPECT_FALSE(backing.child("source"));
  EXPECT_STREQ(backing.child("hugepages").child("page").attribute("size").value(), "1048576");
  EXPECT_STREQ(backing.child("access").attribute("mode").value(), "shared");
  EXPECT_EQ(WithoutHookedParts(*out), WithoutHookedParts(in));
  ExpectLibvirtSchemaValid(in, "commandline-input");
  ExpectLibvirtSchemaValid(*out, "commandline-output");
}

TEST(DomainTransformGoldenTest, SecondCallReturnsTheSameDomain) {
  for (const char* name : {"plain", "hugepages-numa", "existing-commandline"}) {
    std::string vmi = ReadTestdata(std::string(name) + ".vmi.json");
    auto once = OnDefineDomain(ReadTestdata(std::string(name) + ".domain.xml"), vmi);
    ASSERT_TRUE(once.ok()) << name;
    auto twice = OnDefineDomain(*once, vmi);
    ASSERT_TRUE(twice.ok()) << name;
    EXPECT_EQ(*twice, *once) << name;
  }
}

// ---- behaviour on small domains ------------------------------------------------------------

constexpr char kMinimalDomain[] =
    "<domain type='kvm'><name>d</name><memory unit='KiB'>524288</memory>"
    "<os><type arch='x86_64' machine='q35'>hvm</type></os><vcpu>1</vcpu></domain>";

DevicePlan PlanOf(const std::string& device_class, unsigned count) {
  DevicePlan plan;
  plan.vmi_name = "ns/vm";
  for (unsigned i = 0; i < count; ++i) {
    plan.devices.push_back({device_class,
                            i,
                            DeviceId(device_class, i),
                            DeviceSocketPath(kDefaultDeviceSocketRoot, device_class, i),
                            {}});
  }
  return plan;
}

TEST(DomainTransformTest, VmiWithoutDevicesGetsTheDomainBackByteForByte) {
  auto out = AttachDevicesToDomain(kMinimalDomain, DevicePlan{});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, kMinimalDomain);
}

TEST(DomainTransformTest, DomainWithoutQemuNamespaceGetsItDeclared) {
  auto out = AttachDevicesToDomain(kMinimalDomain, PlanOf("nvme", 1));
  ASSERT_TRUE(out.ok()) << out.error().message;
  Parsed p;
  Parse(*out, &p);
  EXPECT_STREQ(p.domain.attribute("xmlns:qemu").value(), kQemuNamespace.data());
  EXPECT_EQ(p.devices.size(), 1u);
  ExpectLibvirtSchemaValid(*out, "minimal-output");
}

TEST(DomainTransformTest, DevicesRemovedFromTheVmiAreRemovedFromTheDomain) {
  auto with = AttachDevicesToDomain(kMinimalDomain, PlanOf("nvme", 2));
  ASSERT_TRUE(with.ok());
  auto without = AttachDevicesToDomain(*with, DevicePlan{});
  ASSERT_TRUE(without.ok());
  EXPECT_THAT(*without, ::testing::Not(HasSubstr("vfio-user-pci")));
  EXPECT_THAT(*without, ::testing::Not(HasSubstr("commandline")));
}

TEST(DomainTransformTest, OtherPrefixBoundToTheQemuNamespaceIsUsed) {
  std::string in =
      "<domain type='kvm' xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0'><name>d</name>"
      "<memory>524288</memory><os><type>hvm</type></os>"
      "<q:commandline><q:arg value='-S'/></q:commandline></domain>";
  auto out = AttachDevicesToDomain(in, PlanOf("nvme", 1));
  ASSERT_TRUE(out.ok()) << out.error().message;
  pugi::xml_document doc;
  doc.load_string(out->c_str());
  pugi::xml_node commandline = doc.child("domain").child("q:commandline");
  EXPECT_EQ(
      std::distance(commandline.children("q:arg").begin(), commandline.children("q:arg").end()), 3);
  EXPECT_FALSE(doc.child("domain").attribute("xmlns:qemu"));
  ExpectLibvirtSchemaValid(*out, "prefix-q");
}

TEST(DomainTransformTest, UserAddedVfioUserDeviceWithoutOurIdPrefixIsKept) {
  std::string in =
      "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>d</name>"
      "<memory>524288</memory><os><type>hvm</type></os><qemu:commandline>"
      "<qemu:arg value='-device'/><qemu:arg value='{\"driver\":\"vfio-user-pci\",\"id\":\"mine\","
      "\"socket\":{\"type\":\"unix\",\"path\":\"/x.sock\"}}'/></qemu:commandline></domain>";
  auto out = AttachDevicesToDomain(in, PlanOf("nvme", 1));
  ASSERT_TRUE(out.ok());
  Parsed p;
  Parse(*out, &p);
  ASSERT_EQ(p.devices.size(), 2u);
  EXPECT_EQ(p.devices[0].id, "mine");
  EXPECT_EQ(p.devices[1].id, "vfu-nvme-0");
}

TEST(DomainTransformTest, MemoryThatCannotBeSharedIsAClearError) {
  struct Case {
    const char* what;
    const char* domain;
    const char* message;
  } cases[] = {
      {"anonymous source",
       "<domain type='kvm'><name>d</name><memory>1</memory><memoryBacking>"
       "<source type='anonymous'/></memoryBacking></domain>",
       "anonymous"},
      {"private access",
       "<domain type='kvm'><name>d</name><memory>1</memory><memoryBacking>"
       "<access mode='private'/></memoryBacking></domain>",
       "access mode 'private'"},
      {"private NUMA cell",
       "<domain type='kvm'><name>d</name><memory>1</memory><cpu><numa>"
       "<cell id='0' cpus='0' memory='1' memAccess='private'/></numa></cpu></domain>",
       "NUMA cell 0 has memAccess='private'"},
  };
  for (const Case& c : cases) {
    auto out = AttachDevicesToDomain(c.domain, PlanOf("nvme", 1));
    ASSERT_FALSE(out.ok()) << c.what;
    EXPECT_EQ(out.error().code, ENOTSUP) << c.what;
    EXPECT_THAT(out.error().message, HasSubstr(c.message)) << c.what;
    // Without devices the same domains are fine: nothing needs sharing.
    EXPECT_TRUE(AttachDevicesToDomain(c.domain, DevicePlan{}).ok()) << c.what;
  }
}

TEST(DomainTransformTest, ErrorFromOnDefineDomainNamesTheVmi) {
  auto out = OnDefineDomain(
      "<domain><name>d</name><memoryBacking><source type='anonymous'/></memoryBacking></domain>",
      R"({"metadata":{"name":"vm7","namespace":"team"},)"
      R"("spec":{"domain":{"resources":{"limits":{"vfio-user.io/nvme":"1"}}}}})");
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(out.error().message, HasSubstr("VMI team/vm7"));
}

TEST(DomainTransformTest, RejectsDocumentsThatAreNotLibvirtDomains) {
  EXPECT_EQ(AttachDevicesToDomain("<domain><name>", PlanOf("nvme", 1)).error().code, EINVAL);
  EXPECT_EQ(AttachDevicesToDomain("<network/>", PlanOf("nvme", 1)).error().code, EINVAL);
  auto wrong_ns = AttachDevicesToDomain("<domain xmlns:qemu='urn:other'><name>d</name></domain>",
                                        PlanOf("nvme", 1));
  ASSERT_FALSE(wrong_ns.ok());
  EXPECT_THAT(wrong_ns.error().message, HasSubstr("urn:other"));
}

}  // namespace
}  // namespace vfu::kubevirt_hook
