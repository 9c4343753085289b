// The device plugin's allocation rules as pure functions: names, ListAndWatch contents,
// Allocate responses and errors, preferred allocation.
#include "deviceplugin/plugin/allocation.h"

#include <gtest/gtest.h>

namespace vfu::deviceplugin {
namespace {

AdvertisedDevice Dev(const std::string& id, bool healthy = true, int32_t numa = -1,
                     uint32_t poll_thread = 0, const std::string& reason = {}) {
  ServerDevice d;
  d.id = id;
  d.device_class = "virtio-blk";
  d.socket_path = "/var/run/vfio-user/" + id + "/vfio-user.sock";
  d.server_healthy = healthy;
  d.numa_node = numa;
  d.poll_thread = poll_thread;
  return AdvertisedDevice{d, healthy, healthy ? "" : reason};
}

TEST(Names, ResourceSocketAndEnvNamesFollowTheSharedConvention) {
  EXPECT_EQ(ResourceName("vfio-user.io", "virtio-blk"), "vfio-user.io/virtio-blk");
  EXPECT_EQ(PluginSocketName("virtio-blk"), "vfio-user-virtio-blk.sock");
  EXPECT_EQ(EnvVarPrefix("virtio-blk"), "VFIO_USER_VIRTIO_BLK");
  EXPECT_EQ(EnvVarPrefix("nvme"), "VFIO_USER_NVME");
}

TEST(Names, ResourcePrefixMustBeADnsSubdomainOutsideKubernetesIo) {
  EXPECT_TRUE(ValidateResourcePrefix("vfio-user.io").ok());
  EXPECT_TRUE(ValidateResourcePrefix("devices.example.com").ok());
  EXPECT_FALSE(ValidateResourcePrefix("").ok());
  EXPECT_FALSE(ValidateResourcePrefix("Vfio-User.io").ok());
  EXPECT_FALSE(ValidateResourcePrefix("vfio_user.io").ok());
  EXPECT_FALSE(ValidateResourcePrefix("-a.io").ok());
  EXPECT_FALSE(ValidateResourcePrefix("a..io").ok());
  EXPECT_FALSE(ValidateResourcePrefix("kubernetes.io").ok());
  EXPECT_FALSE(ValidateResourcePrefix("node.kubernetes.io").ok());
}

TEST(Names, DeviceClassMustBeADnsLabel) {
  EXPECT_TRUE(ValidateDeviceClass("virtio-blk").ok());
  EXPECT_FALSE(ValidateDeviceClass("virtio/blk").ok());
  EXPECT_FALSE(ValidateDeviceClass("").ok());
}

TEST(DeviceList, CarriesHealthStringsAndNumaTopologyOnlyWhenKnown) {
  v1beta1::ListAndWatchResponse list =
      BuildDeviceList({Dev("disk0", true, 1), Dev("disk1", false, -1)});
  ASSERT_EQ(list.devices_size(), 2);
  EXPECT_EQ(list.devices(0).id(), "disk0");
  EXPECT_EQ(list.devices(0).health(), "Healthy");
  ASSERT_EQ(list.devices(0).topology().nodes_size(), 1);
  EXPECT_EQ(list.devices(0).topology().nodes(0).id(), 1);
  EXPECT_EQ(list.devices(1).health(), "Unhealthy");
  EXPECT_FALSE(list.devices(1).has_topology());
}

TEST(Allocate, MountsEachDeviceDirectoryInSortedOrder) {
  auto r = BuildContainerAllocation("virtio-blk", {"disk2", "disk0"},
                                    {Dev("disk0"), Dev("disk1"), Dev("disk2")});
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->mounts_size(), 2);
  EXPECT_EQ(r->mounts(0).host_path(), "/var/run/vfio-user/disk0");
  EXPECT_EQ(r->mounts(0).container_path(), "/var/run/vfio-user/virtio-blk/0");
  EXPECT_FALSE(r->mounts(0).read_only());
  EXPECT_EQ(r->mounts(1).host_path(), "/var/run/vfio-user/disk2");
  EXPECT_EQ(r->mounts(1).container_path(), "/var/run/vfio-user/virtio-blk/1");
  EXPECT_EQ(r->envs().at("VFIO_USER_VIRTIO_BLK_SOCKETS"),
            "/var/run/vfio-user/virtio-blk/0/vfio-user.sock,"
            "/var/run/vfio-user/virtio-blk/1/vfio-user.sock");
  EXPECT_EQ(r->envs().at("VFIO_USER_VIRTIO_BLK_DEVICE_IDS"), "disk0,disk2");
  EXPECT_EQ(r->devices_size(), 0);  // a socket, not a device node
}

TEST(Allocate, ContainerSocketKeepsTheServersSocketFileName) {
  AdvertisedDevice d = Dev("disk0");
  d.device.socket_path = "/run/custom/disk0/blk.sock";
  auto r = BuildContainerAllocation("virtio-blk", {"disk0"}, {d});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->mounts(0).host_path(), "/run/custom/disk0");
  EXPECT_EQ(r->envs().at("VFIO_USER_VIRTIO_BLK_SOCKETS"),
            "/var/run/vfio-user/virtio-blk/0/blk.sock");
}

TEST(Allocate, UnknownDeviceIsNotFoundAndNamed) {
  auto r = BuildContainerAllocation("virtio-blk", {"disk0", "disk9"}, {Dev("disk0")});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ENOENT);
  EXPECT_NE(r.error().message.find("disk9"), std::string::npos) << r.error().message;
}

TEST(Allocate, UnhealthyDeviceIsRefusedWithTheReason) {
  auto r = BuildContainerAllocation("virtio-blk", {"disk0"},
                                    {Dev("disk0", false, -1, 0, "backend file missing")});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, EAGAIN);
  EXPECT_NE(r.error().message.find("backend file missing"), std::string::npos);
}

TEST(Allocate, EmptyOrDuplicatedRequestIsInvalid) {
  EXPECT_EQ(BuildContainerAllocation("virtio-blk", {}, {Dev("disk0")}).error().code, EINVAL);
  EXPECT_EQ(BuildContainerAllocation("virtio-blk", {"disk0", "disk0"}, {Dev("disk0")}).error().code,
            EINVAL);
}

TEST(PreferredAllocation, KeepsDevicesOnOneNumaNodeChoosingTheBestFit) {
  std::vector<AdvertisedDevice> known{Dev("a0", true, 0), Dev("a1", true, 0), Dev("a2", true, 0),
                                      Dev("b0", true, 1), Dev("b1", true, 1)};
  std::vector<std::string> all{"a0", "a1", "a2", "b0", "b1"};
  // Two fit on node 1 exactly: node 0 stays free for a request of three.
  EXPECT_EQ(PreferredAllocation(all, {}, 2, known), (std::vector<std::string>{"b0", "b1"}));
  EXPECT_EQ(PreferredAllocation(all, {}, 3, known), (std::vector<std::string>{"a0", "a1", "a2"}));
  // Four do not fit on one node: the larger node first, then the rest.
  auto four = PreferredAllocation(all, {}, 4, known);
  ASSERT_EQ(four.size(), 4u);
  EXPECT_EQ(std::vector<std::string>(four.begin(), four.begin() + 3),
            (std::vector<std::string>{"a0", "a1", "a2"}));
}

TEST(PreferredAllocation, MustIncludeComesFirstAndPullsItsNumaNode) {
  std::vector<AdvertisedDevice> known{Dev("a0", true, 0), Dev("a1", true, 0), Dev("b0", true, 1),
                                      Dev("b1", true, 1), Dev("b2", true, 1)};
  auto r = PreferredAllocation({"a0", "a1", "b0", "b1", "b2"}, {"b2"}, 2, known);
  EXPECT_EQ(r, (std::vector<std::string>{"b2", "b0"}));
}

TEST(PreferredAllocation, WithoutTopologyKeepsDevicesOfOnePollThreadTogether) {
  std::vector<AdvertisedDevice> known{Dev("d0", true, -1, 0), Dev("d1", true, -1, 1),
                                      Dev("d2", true, -1, 0), Dev("d3", true, -1, 1),
                                      Dev("d4", true, -1, 1)};
  auto r = PreferredAllocation({"d0", "d1", "d2", "d3", "d4"}, {}, 2, known);
  EXPECT_EQ(r, (std::vector<std::string>{"d0", "d2"}));
  auto with_must = PreferredAllocation({"d0", "d1", "d2", "d3", "d4"}, {"d4"}, 2, known);
  EXPECT_EQ(with_must, (std::vector<std::string>{"d4", "d1"}));
}

TEST(PreferredAllocation, UnknownIdsAreUsedLastAndSizeIsRespected) {
  std::vector<AdvertisedDevice> known{Dev("d0", true, -1, 0)};
  EXPECT_EQ(PreferredAllocation({"zz", "d0"}, {}, 2, known),
            (std::vector<std::string>{"d0", "zz"}));
  EXPECT_EQ(PreferredAllocation({"d0"}, {"d0"}, 1, known), (std::vector<std::string>{"d0"}));
  EXPECT_TRUE(PreferredAllocation({"d0"}, {}, 0, known).empty());
}

}  // namespace
}  // namespace vfu::deviceplugin
