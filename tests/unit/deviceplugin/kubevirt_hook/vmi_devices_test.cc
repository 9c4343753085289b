#include "deviceplugin/kubevirt_hook/vmi_devices.h"

#include <gtest/gtest.h>

namespace vfu::kubevirt_hook {
namespace {

std::string VmiWithResources(const std::string& resources, const std::string& annotations = "{}") {
  return R"({"metadata":{"name":"vm1","namespace":"ns","annotations":)" + annotations +
         R"(},"spec":{"domain":{"resources":)" + resources + "}}}";
}

TEST(VmiDevicesTest, ListsEachRequestedDeviceWithItsDeterministicSocketPath) {
  auto plan = PlanDevicesFromVmi(VmiWithResources(
      R"({"requests":{"memory":"1Gi","vfio-user.io/virtio-blk":"2","vfio-user.io/nvme":"1"}})"));
  ASSERT_TRUE(plan.ok()) << plan.error().message;
  EXPECT_EQ(plan->vmi_name, "ns/vm1");
  ASSERT_EQ(plan->devices.size(), 3u);
  // Classes sorted by name, then index order: the order the device plugin mounts them in.
  EXPECT_EQ(plan->devices[0].id, "vfu-nvme-0");
  EXPECT_EQ(plan->devices[0].socket_path, "/var/run/vfio-user/nvme/0/vfio-user.sock");
  EXPECT_EQ(plan->devices[1].id, "vfu-virtio-blk-0");
  EXPECT_EQ(plan->devices[1].socket_path, "/var/run/vfio-user/virtio-blk/0/vfio-user.sock");
  EXPECT_EQ(plan->devices[2].id, "vfu-virtio-blk-1");
  EXPECT_EQ(plan->devices[2].device_class, "virtio-blk");
  EXPECT_EQ(plan->devices[2].index, 1u);
  EXPECT_EQ(plan->devices[2].socket_path, "/var/run/vfio-user/virtio-blk/1/vfio-user.sock");
}

TEST(VmiDevicesTest, LimitsAloneGiveTheCountAndOtherResourcesAreIgnored) {
  auto plan = PlanDevicesFromVmi(VmiWithResources(
      R"({"limits":{"cpu":"2","example.com/gpu":"1","vfio-user.io/virtio-blk":3}})"));
  ASSERT_TRUE(plan.ok()) << plan.error().message;
  EXPECT_EQ(plan->devices.size(), 3u);
}

TEST(VmiDevicesTest, VmiWithoutVfioUserRequestsGivesAnEmptyPlan) {
  auto plan = PlanDevicesFromVmi(R"({"metadata":{"name":"plain"},"spec":{"domain":{}}})");
  ASSERT_TRUE(plan.ok()) << plan.error().message;
  EXPECT_TRUE(plan->devices.empty());
  auto zero = PlanDevicesFromVmi(VmiWithResources(R"({"limits":{"vfio-user.io/nvme":"0"}})"));
  ASSERT_TRUE(zero.ok());
  EXPECT_TRUE(zero->devices.empty());
}

TEST(VmiDevicesTest, SocketRootIsConfigurable) {
  auto plan =
      PlanDevicesFromVmi(VmiWithResources(R"({"limits":{"vfio-user.io/nvme":"1"}})"), "/run/vfu/");
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->devices[0].socket_path, "/run/vfu/nvme/0/vfio-user.sock");
}

TEST(VmiDevicesTest, RejectsCountsThatAreNotWholeNumbers) {
  for (const char* count : {R"("1.5")", R"("500m")", R"("-1")", R"("")", "true", "2.5"}) {
    auto plan = PlanDevicesFromVmi(
        VmiWithResources(std::string(R"({"limits":{"vfio-user.io/nvme":)") + count + "}}"));
    ASSERT_FALSE(plan.ok()) << count;
    EXPECT_EQ(plan.error().code, EINVAL);
    EXPECT_NE(plan.error().message.find("vfio-user.io/nvme"), std::string::npos);
  }
}

TEST(VmiDevicesTest, RejectsRequestsAndLimitsThatDiffer) {
  auto plan = PlanDevicesFromVmi(VmiWithResources(
      R"({"requests":{"vfio-user.io/nvme":"1"},"limits":{"vfio-user.io/nvme":"2"}})"));
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.error().message.find("differ"), std::string::npos);
}

TEST(VmiDevicesTest, RejectsTooManyDevicesAndBadClassNames) {
  EXPECT_FALSE(
      PlanDevicesFromVmi(VmiWithResources(R"({"limits":{"vfio-user.io/nvme":"65"}})")).ok());
  EXPECT_FALSE(
      PlanDevicesFromVmi(VmiWithResources(R"({"limits":{"vfio-user.io/-bad":"1"}})")).ok());
  EXPECT_FALSE(PlanDevicesFromVmi(VmiWithResources(R"({"limits":{"vfio-user.io/a/b":"1"}})")).ok());
}

TEST(VmiDevicesTest, RejectsInputThatIsNotAVmiObject) {
  EXPECT_FALSE(PlanDevicesFromVmi("not json").ok());
  EXPECT_FALSE(PlanDevicesFromVmi("[1,2]").ok());
  EXPECT_FALSE(PlanDevicesFromVmi(R"({"spec":{"domain":{"resources":{"limits":[]}}}})").ok());
}

TEST(VmiDevicesTest, PlacementAnnotationPlacesTheNamedDevice) {
  auto plan = PlanDevicesFromVmi(VmiWithResources(
      R"({"limits":{"vfio-user.io/nvme":"2"}})",
      R"({"vfio-user.io/pci-placement":"{\"vfu-nvme-1\":{\"bus\":\"pci.3\",\"addr\":\"0x0\"}}"})"));
  ASSERT_TRUE(plan.ok()) << plan.error().message;
  EXPECT_FALSE(plan->devices[0].placement.has_value());
  ASSERT_TRUE(plan->devices[1].placement.has_value());
  EXPECT_EQ(plan->devices[1].placement->bus, "pci.3");
  EXPECT_EQ(plan->devices[1].placement->addr, "0x0");
}

TEST(VmiDevicesTest, PlacementAddrTakesSlotDotFunctionWithOrWithoutHexPrefix) {
  for (std::string addr : {"1c.0", "0x1f.7", "3", "0x0a"}) {
    std::string annotation =
        R"({"vfio-user.io/pci-placement":"{\"vfu-nvme-0\":{\"bus\":\"pcie.0\",\"addr\":\")" + addr +
        R"(\"}}"})";
    auto plan =
        PlanDevicesFromVmi(VmiWithResources(R"({"limits":{"vfio-user.io/nvme":"1"}})", annotation));
    ASSERT_TRUE(plan.ok()) << addr << ": " << plan.error().message;
    EXPECT_EQ(plan->devices[0].placement->addr, addr);
  }
}

TEST(VmiDevicesTest, RejectsPlacementsThatCannotBeRight) {
  const char* bad[] = {
      R"("not json")",
      R"("{\"vfu-nvme-0\":{\"addr\":\"0x3\"}}")",                       // no bus
      R"("{\"vfu-nvme-0\":{\"bus\":\"pcie.0\",\"addr\":\"0x100\"}}")",  // slot too big
      R"("{\"vfu-nvme-0\":{\"bus\":\"pcie.0\",\"addr\":\"1c.8\"}}")",   // function > 7
      R"("{\"vfu-nvme-0\":{\"bus\":\"0pcie\"}}")",                      // not a bus id
      R"("{\"vfu-nvme-0\":{\"bus\":\"pcie.0,x=1\"}}")",                 // option injection
      R"("{\"vfu-nvme-0\":{\"bus\":\"pcie.0\",\"slot\":\"1\"}}")",      // unknown key
      R"("{\"vfu-nvme-7\":{\"bus\":\"pcie.0\"}}")",                     // not requested
      R"("{\"vfu-nvme-0\":{\"bus\":\"pcie.0\",\"addr\":\"3\"},)"
      R"(\"vfu-nvme-1\":{\"bus\":\"pcie.0\",\"addr\":\"3\"}}")",  // same slot
  };
  for (const char* annotation : bad) {
    auto plan = PlanDevicesFromVmi(
        VmiWithResources(R"({"limits":{"vfio-user.io/nvme":"2"}})",
                         std::string(R"({"vfio-user.io/pci-placement":)") + annotation + "}"));
    ASSERT_FALSE(plan.ok()) << annotation;
    EXPECT_NE(plan.error().message.find("vfio-user.io/pci-placement"), std::string::npos)
        << plan.error().message;
  }
}

// ---- resource names overridden per class (--resource-name) ---------------------------------

using deviceplugin::ResourceNaming;

const ResourceNaming kFastDiskNaming("vfio-user.io", {{"virtio-blk", "example.com/fast-disk"}});

TEST(VmiDevicesTest, OverriddenResourceNameIsCountedUnderItsClass) {
  const std::string vmi =
      VmiWithResources(R"({"requests":{"example.com/fast-disk":"2","vfio-user.io/nvme":"1"},)"
                       R"("limits":{"example.com/fast-disk":"2"}})");
  auto plan = PlanDevicesFromVmi(vmi, kDefaultDeviceSocketRoot, kFastDiskNaming);
  ASSERT_TRUE(plan.ok()) << plan.error().message;
  ASSERT_EQ(plan->devices.size(), 3u);
  EXPECT_EQ(plan->devices[0].id, "vfu-nvme-0");
  EXPECT_EQ(plan->devices[1].id, "vfu-virtio-blk-0");
  EXPECT_EQ(plan->devices[1].device_class, "virtio-blk");
  EXPECT_EQ(plan->devices[1].socket_path, "/var/run/vfio-user/virtio-blk/0/vfio-user.sock");
  EXPECT_EQ(plan->devices[2].socket_path, "/var/run/vfio-user/virtio-blk/1/vfio-user.sock");

  // Without the mapping the name says nothing about a class: not a vfio-user request.
  auto unmapped = PlanDevicesFromVmi(vmi);
  ASSERT_TRUE(unmapped.ok()) << unmapped.error().message;
  ASSERT_EQ(unmapped->devices.size(), 1u);
  EXPECT_EQ(unmapped->devices[0].id, "vfu-nvme-0");
}

TEST(VmiDevicesTest, DefaultNameOfAnOverriddenClassStillCounts) {
  // One hook configuration can serve VMIs of a pool with the override and of one without it.
  auto plan = PlanDevicesFromVmi(VmiWithResources(R"({"limits":{"vfio-user.io/virtio-blk":"1"}})"),
                                 kDefaultDeviceSocketRoot, kFastDiskNaming);
  ASSERT_TRUE(plan.ok()) << plan.error().message;
  ASSERT_EQ(plan->devices.size(), 1u);
  EXPECT_EQ(plan->devices[0].id, "vfu-virtio-blk-0");
}

TEST(VmiDevicesTest, TwoRequestedNamesOfOneClassAreRefused) {
  // Both would be mounted at /var/run/vfio-user/virtio-blk/<i> in the same container.
  auto plan = PlanDevicesFromVmi(
      VmiWithResources(R"({"limits":{"vfio-user.io/virtio-blk":"1","example.com/fast-disk":"1"}})"),
      kDefaultDeviceSocketRoot, kFastDiskNaming);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.error().code, EINVAL);
  EXPECT_NE(plan.error().message.find("example.com/fast-disk"), std::string::npos);
  EXPECT_NE(plan.error().message.find("vfio-user.io/virtio-blk"), std::string::npos);
  // A zero count requests nothing, so it does not collide.
  auto zero = PlanDevicesFromVmi(
      VmiWithResources(R"({"limits":{"vfio-user.io/virtio-blk":"0","example.com/fast-disk":"1"}})"),
      kDefaultDeviceSocketRoot, kFastDiskNaming);
  ASSERT_TRUE(zero.ok()) << zero.error().message;
  EXPECT_EQ(zero->devices.size(), 1u);
}

TEST(VmiDevicesTest, CountChecksNameTheOverriddenResource) {
  auto plan = PlanDevicesFromVmi(
      VmiWithResources(
          R"({"requests":{"example.com/fast-disk":"1"},"limits":{"example.com/fast-disk":"2"}})"),
      kDefaultDeviceSocketRoot, kFastDiskNaming);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.error().message.find("example.com/fast-disk"), std::string::npos);
  EXPECT_NE(plan.error().message.find("differ"), std::string::npos);
}

TEST(VmiDevicesTest, ResourcePrefixSelectsWhichDomainMeansAClass) {
  const std::string vmi = VmiWithResources(
      R"({"limits":{"devices.example.com/virtio-blk":"1","vfio-user.io/nvme":"1"}})");
  auto plan =
      PlanDevicesFromVmi(vmi, kDefaultDeviceSocketRoot, ResourceNaming("devices.example.com"));
  ASSERT_TRUE(plan.ok()) << plan.error().message;
  ASSERT_EQ(plan->devices.size(), 1u);
  EXPECT_EQ(plan->devices[0].id, "vfu-virtio-blk-0");
}

}  // namespace
}  // namespace vfu::kubevirt_hook
