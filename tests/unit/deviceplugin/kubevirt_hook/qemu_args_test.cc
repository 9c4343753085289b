#include "deviceplugin/kubevirt_hook/qemu_args.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

namespace vfu::kubevirt_hook {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string ReadTestdata(const std::string& name) {
  std::ifstream in(std::string(VFU_HOOK_TESTDATA) + "/" + name, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

TEST(QemuArgsTest, DomainWithoutNumaGetsOneSharedMemfdBackendForAllRam) {
  QemuArgsOptions options;
  options.socket_root_on_host = "/tmp/e2e/vfu";
  auto args = QemuArgsForDomain(ReadTestdata("plain.expected.xml"), options);
  ASSERT_TRUE(args.ok()) << args.error().message;
  EXPECT_THAT(
      *args,
      ElementsAre(
          "-m", "524288k", "-smp", "1", "-object",
          "memory-backend-memfd,id=pc.ram,size=524288k,share=on", "-machine",
          "memory-backend=pc.ram", "-device",
          R"({"driver":"vfio-user-pci","id":"vfu-virtio-blk-0","socket":{"type":"unix","path":"/tmp/e2e/vfu/virtio-blk/0/vfio-user.sock"}})",
          "-device",
          R"({"driver":"vfio-user-pci","id":"vfu-virtio-blk-1","socket":{"type":"unix","path":"/tmp/e2e/vfu/virtio-blk/1/vfio-user.sock"}})"));
}

TEST(QemuArgsTest, NumaCellsGetOneBackendEachWithHugetlbWhenHugepagesAreUsed) {
  auto args = QemuArgsForDomain(ReadTestdata("hugepages-numa.expected.xml"));
  ASSERT_TRUE(args.ok()) << args.error().message;
  ASSERT_GE(args->size(), 8u);
  EXPECT_EQ((*args)[5], "memory-backend-memfd,id=ram-node0,size=1048576k,share=on,hugetlb=on");
  EXPECT_EQ((*args)[6], "-numa");
  EXPECT_EQ((*args)[7], "node,nodeid=0,cpus=0-1,memdev=ram-node0");
  // Without --socket-root-on-host the container paths stay.
  EXPECT_THAT(args->back(),
              HasSubstr(R"("path":"/var/run/vfio-user/virtio-blk/0/vfio-user.sock")"));
}

TEST(QemuArgsTest, CellAccessOverridesTheDomainDefaultAndCpuListsSplit) {
  auto args = QemuArgsForDomain(
      "<domain><memory unit='GiB'>2</memory><vcpu>4</vcpu><memoryBacking><source type='memfd'/>"
      "</memoryBacking><cpu><numa><cell id='0' cpus='0-1' memory='1' unit='GiB'/>"
      "<cell id='1' cpus='2,3' memory='1048576' memAccess='shared'/></numa></cpu></domain>");
  ASSERT_TRUE(args.ok()) << args.error().message;
  EXPECT_THAT(*args, ElementsAre("-m", "2097152k", "-smp", "4", "-object",
                                 "memory-backend-memfd,id=ram-node0,size=1048576k,share=off",
                                 "-numa", "node,nodeid=0,cpus=0-1,memdev=ram-node0", "-object",
                                 "memory-backend-memfd,id=ram-node1,size=1048576k,share=on",
                                 "-numa", "node,nodeid=1,cpus=2,cpus=3,memdev=ram-node1"));
}

TEST(QemuArgsTest, MemoryThatIsNotMemfdIsNotMappedWithoutLibvirt) {
  auto args = QemuArgsForDomain(ReadTestdata("existing-commandline.expected.xml"));
  ASSERT_FALSE(args.ok());
  EXPECT_EQ(args.error().code, ENOTSUP);
  EXPECT_FALSE(QemuArgsForDomain("<domain><memory unit='parsecs'>1</memory></domain>").ok());
}

}  // namespace
}  // namespace vfu::kubevirt_hook
