// Resource names of device classes: the default <prefix>/<class>, --resource-name overrides in
// both directions (class -> name for the plugin, name -> class for the hook), and the kubelet's
// rules for extended resource names. The binary: bad --resource-name values exit with code 2.
#include "deviceplugin/plugin/resource_names.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/support/subprocess.h"

namespace vfu::deviceplugin {
namespace {

using ::testing::HasSubstr;

TEST(ResourceNaming, ClassesAreUnderThePrefixUnlessOverridden) {
  ResourceNaming naming("vfio-user.io", {{"virtio-blk", "example.com/fast-disk"}});
  ASSERT_TRUE(naming.Validate().ok());
  EXPECT_EQ(naming.ResourceFor("virtio-blk"), "example.com/fast-disk");
  EXPECT_EQ(naming.ResourceFor("sample"), "vfio-user.io/sample");
  EXPECT_EQ(ResourceNaming().ResourceFor("virtio-blk"), "vfio-user.io/virtio-blk");
  EXPECT_EQ(ResourceNaming("devices.example.com").ResourceFor("nvme"), "devices.example.com/nvme");
}

TEST(ResourceNaming, RequestedNamesMapBackToTheirClass) {
  ResourceNaming naming("vfio-user.io",
                        {{"virtio-blk", "example.com/fast-disk"}, {"sample", "vfio-user.io/demo"}});
  EXPECT_EQ(naming.ClassFor("example.com/fast-disk"), "virtio-blk");
  EXPECT_EQ(naming.ClassFor("vfio-user.io/nvme"), "nvme");
  // An override in the prefix's domain names its class, not a class called "demo".
  EXPECT_EQ(naming.ClassFor("vfio-user.io/demo"), "sample");
  // The default name of an overridden class still means that class (another pool may use it).
  EXPECT_EQ(naming.ClassFor("vfio-user.io/virtio-blk"), "virtio-blk");
  EXPECT_EQ(naming.ClassFor("example.com/gpu"), std::nullopt);
  EXPECT_EQ(naming.ClassFor("vfio-user.io/"), std::nullopt);
  EXPECT_EQ(naming.ClassFor("vfio-user.iox/virtio-blk"), std::nullopt);
  EXPECT_EQ(naming.ClassFor("memory"), std::nullopt);
}

TEST(ResourceNaming, FlagValuesAreClassEqualsName) {
  auto parsed = ParseResourceNameFlags({"virtio-blk=example.com/fast-disk", "sample=a.io/b"});
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_EQ(*parsed, (std::map<std::string, std::string>{{"sample", "a.io/b"},
                                                         {"virtio-blk", "example.com/fast-disk"}}));
  for (const char* bad : {"virtio-blk", "=example.com/x", "virtio-blk=", ""}) {
    auto r = ParseResourceNameFlags({bad});
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_THAT(r.error().message, HasSubstr("CLASS=NAME")) << bad;
  }
  auto twice = ParseResourceNameFlags({"a=example.com/x", "a=example.com/y"});
  ASSERT_FALSE(twice.ok());
  EXPECT_THAT(twice.error().message, HasSubstr("more than once"));
}

TEST(ResourceNaming, OverridesMustBeExtendedResourceNamesTheKubeletAccepts) {
  for (const char* good :
       {"example.com/fast-disk", "a.b.c/X_y.z-1", "example.com/a", "vfio-user.io/fast-disk"}) {
    EXPECT_TRUE(ValidateExtendedResourceName(good).ok()) << good;
    EXPECT_TRUE(ResourceNaming("vfio-user.io", {{"virtio-blk", good}}).Validate().ok()) << good;
  }
  const std::string long_name = "example.com/" + std::string(64, 'a');
  const std::string long_domain = std::string(245, 'a') + "/disk";
  for (const std::string& bad :
       {std::string("fast-disk"), std::string("example.com/"), std::string("/disk"),
        std::string("Example.com/disk"), std::string("example_com/disk"),
        std::string("example.com/-disk"), std::string("example.com/disk."),
        std::string("example.com/a/b"), std::string("kubernetes.io/disk"),
        std::string("node.kubernetes.io/disk"), std::string("xkubernetes.io/disk"),
        std::string("requests.example.com/disk"), std::string("a..b/disk"), long_name,
        long_domain}) {
    EXPECT_FALSE(ValidateExtendedResourceName(bad).ok()) << bad;
    Status s = ResourceNaming("vfio-user.io", {{"virtio-blk", bad}}).Validate();
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_THAT(s.message(), HasSubstr("'" + bad + "'"));
  }
  EXPECT_TRUE(ValidateExtendedResourceName("example.com/" + std::string(63, 'a')).ok());
  EXPECT_TRUE(ValidateExtendedResourceName(std::string(244, 'a') + "/disk").ok());
}

TEST(ResourceNaming, OverriddenClassesMustBeDnsLabelsAndNamesUnique) {
  Status bad_class = ResourceNaming("vfio-user.io", {{"Virtio_Blk", "example.com/d"}}).Validate();
  ASSERT_FALSE(bad_class.ok());
  EXPECT_THAT(bad_class.message(), HasSubstr("Virtio_Blk"));
  Status shared =
      ResourceNaming("vfio-user.io", {{"virtio-blk", "example.com/d"}, {"sample", "example.com/d"}})
          .Validate();
  ASSERT_FALSE(shared.ok());
  EXPECT_THAT(shared.message(), HasSubstr("two classes"));
  Status prefix = ResourceNaming("kubernetes.io", {}).Validate();
  ASSERT_FALSE(prefix.ok());
  EXPECT_THAT(prefix.message(), HasSubstr("kubernetes.io"));
}

TEST(ResourceNaming, DescribeOverridesListsThemForLogLines) {
  EXPECT_EQ(ResourceNaming().DescribeOverrides(), "");
  EXPECT_EQ(ResourceNaming("vfio-user.io", {{"virtio-blk", "example.com/d"}, {"sample", "a.io/s"}})
                .DescribeOverrides(),
            "sample=a.io/s,virtio-blk=example.com/d");
}

// ---- the binary --------------------------------------------------------------------------

TEST(DevicePluginCli, HelpDocumentsTheResourceNameFlag) {
  auto [code, help] = testing::RunToCompletion(VFU_DEVICE_PLUGIN_BINARY, {"--help"});
  EXPECT_EQ(code, 0);
  EXPECT_THAT(help, HasSubstr("--resource-name CLASS=NAME"));
  EXPECT_THAT(help, HasSubstr("repeatable"));
}

TEST(DevicePluginCli, BadResourceNamesExitWithCodeTwoAndSayWhy) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--resource-name", "virtio-blk"}, "is not CLASS=NAME"},
      {{"--resource-name=virtio-blk=fast-disk"}, "has no domain"},
      {{"--resource-name", "virtio-blk=kubernetes.io/disk"}, "kubernetes.io"},
      {{"--resource-name", "Virtio=example.com/d"}, "not a DNS label"},
      {{"--resource-name", "a=example.com/x", "--resource-name", "a=example.com/y"},
       "more than once"},
      {{"--resource-name", "a=example.com/x", "--resource-name", "b=example.com/x"}, "two classes"},
      // One value per occurrence: a second value is an unexpected argument.
      {{"--resource-name", "a=example.com/x", "b=example.com/y"}, "b=example.com/y"},
  };
  for (const Case& c : cases) {
    // The checks run before anything starts, so no kubelet or server is needed.
    auto [code, output] = testing::RunToCompletion(VFU_DEVICE_PLUGIN_BINARY, c.args);
    EXPECT_EQ(code, 2) << c.args[0] << " " << output;
    EXPECT_THAT(output, HasSubstr(c.message));
  }
}

}  // namespace
}  // namespace vfu::deviceplugin
