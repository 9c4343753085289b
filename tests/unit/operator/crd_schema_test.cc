// The CRD in deploy/crds accepts every example pool in deploy/examples and rejects invalid
// pools, checked with the structural-schema validator; the examples also pass the operator's
// own checks (the CEL rules' counterpart) and render to server configs the server accepts.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "operator/pool/pool_spec.h"
#include "operator/pool/render.h"
#include "server/config/server_config.h"
#include "tests/unit/operator/structural_schema.h"

namespace vfu::op::testing {
namespace {

using Json = nlohmann::json;

std::string ReadText(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Json Crd() {
  return YamlToJson(ReadText(std::filesystem::path(VFU_SOURCE_DIR) /
                             "deploy/crds/vfio-user.io_vfiouserdevicepools.yaml"));
}

Json Schema() { return Crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]; }

std::vector<std::filesystem::path> ExamplePools() {
  std::vector<std::filesystem::path> out;
  for (const auto& entry : std::filesystem::directory_iterator(
           std::filesystem::path(VFU_SOURCE_DIR) / "deploy/examples")) {
    std::string name = entry.path().filename().string();
    if (name.starts_with("pool-") && name.ends_with(".yaml")) out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

Json ValidPool() {
  return YamlToJson(R"(
apiVersion: vfio-user.io/v1alpha1
kind: VfioUserDevicePool
metadata: {name: p}
spec:
  deviceClass: virtio-blk
  devicesPerNode: 2
  backend: {type: ram, size: 64Mi}
)");
}

TEST(CrdSchema, DescribesAClusterScopedPoolWithStatusSubresourceAndPrintColumns) {
  Json crd = Crd();
  EXPECT_EQ(crd["spec"]["group"], "vfio-user.io");
  EXPECT_EQ(crd["spec"]["scope"], "Cluster");
  EXPECT_EQ(crd["spec"]["names"]["kind"], "VfioUserDevicePool");
  const Json& version = crd["spec"]["versions"][0];
  EXPECT_EQ(version["name"], "v1alpha1");
  EXPECT_TRUE(version["subresources"].contains("status"));
  std::vector<std::string> columns;
  for (const auto& c : version["additionalPrinterColumns"]) columns.push_back(c["name"]);
  EXPECT_EQ(columns, (std::vector<std::string>{"Class", "Per-Node", "Desired", "Ready-Nodes",
                                               "Allocatable", "Ready", "Reason", "Age"}));
}

TEST(CrdSchema, IsStructural) { EXPECT_TRUE(NonStructuralNodes(Schema()).empty()); }

TEST(CrdSchema, AcceptsEveryExamplePool) {
  auto examples = ExamplePools();
  ASSERT_GE(examples.size(), 3u);
  for (const auto& path : examples) {
    Json pool = YamlToJson(ReadText(path));
    auto errors = ValidateAgainstSchema(Schema(), pool);
    EXPECT_TRUE(errors.empty()) << path << ": " << (errors.empty() ? "" : errors[0]);
    // The operator's checks too, and the rendered config must load in the server.
    auto spec = ParsePoolSpec(pool, "image:tag");
    ASSERT_TRUE(spec.ok()) << path << ": " << spec.error().message;
    const std::string name = pool["metadata"]["name"];
    auto config = vfu::config::ParseServerConfig(RenderServerConfig(name, *spec), path.string());
    EXPECT_TRUE(config.ok()) << path << ": " << config.error().message;
  }
}

TEST(CrdSchema, AcceptsAMinimalValidPool) {
  EXPECT_TRUE(ValidateAgainstSchema(Schema(), ValidPool()).empty());
}

struct InvalidCase {
  const char* name;
  const char* path;  // JSON pointer into the pool
  Json value;
  const char* expected_error;
};

class CrdSchemaRejects : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(CrdSchemaRejects, InvalidPool) {
  const InvalidCase& c = GetParam();
  Json pool = ValidPool();
  if (c.value.is_null()) {
    pool.erase(pool.find(std::string(c.path).substr(1)));  // top-level removal
  } else {
    pool[Json::json_pointer(c.path)] = c.value;
  }
  auto errors = ValidateAgainstSchema(Schema(), pool);
  ASSERT_FALSE(errors.empty()) << c.name;
  bool mentioned = false;
  for (const auto& e : errors)
    mentioned = mentioned || e.find(c.expected_error) != std::string::npos;
  EXPECT_TRUE(mentioned) << c.name << ": " << errors[0];
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CrdSchemaRejects,
    ::testing::Values(
        InvalidCase{"UnknownDeviceClass", "/spec/deviceClass", "nvme-magic", "spec.deviceClass"},
        InvalidCase{"ZeroDevices", "/spec/devicesPerNode", 0, "must be >= 1"},
        InvalidCase{"TooManyDevices", "/spec/devicesPerNode", 1000, "must be <= 128"},
        InvalidCase{"DevicesAsString", "/spec/devicesPerNode", "two", "must be an integer"},
        InvalidCase{"MissingSpec", "/spec", nullptr, "required field spec"},
        InvalidCase{"UnknownSpecField", "/spec/replicas", 3, "spec.replicas: unknown field"},
        InvalidCase{"UnknownBackendType", "/spec/backend/type", "nfs", "spec.backend.type"},
        InvalidCase{"SizeWithDecimalUnit", "/spec/backend/size", "64MB", "does not match"},
        InvalidCase{"SizeAsBoolean", "/spec/backend/size", true, "integer or a string"},
        InvalidCase{"RelativePathTemplate", "/spec/backend/pathTemplate", "disks/{index}.img",
                    "does not match"},
        InvalidCase{"BadPollMode", "/spec/pollMode", "sometimes", "spec.pollMode"},
        InvalidCase{"TooManyPollThreads", "/spec/pollThreads", 65, "must be <= 64"},
        InvalidCase{"SocketModeNotOctal", "/spec/socketOwner/mode", "0999", "does not match"},
        InvalidCase{"NegativeUid", "/spec/socketOwner/uid", -1, "must be >= 0"},
        InvalidCase{"ResourceNameWithoutDomain", "/spec/resourceName", "disk", "does not match"},
        InvalidCase{"NodeSelectorValueNotString", "/spec/nodeSelector", Json{{"ssd", 1}},
                    "spec.nodeSelector.ssd: must be a string"},
        InvalidCase{"TolerationBadOperator", "/spec/tolerations",
                    Json::array({{{"key", "k"}, {"operator", "Maybe"}}}), "operator"},
        InvalidCase{"EmptyImage", "/spec/image", "", "at least 1"}),
    [](const ::testing::TestParamInfo<InvalidCase>& param_info) {
      return std::string(param_info.param.name);
    });

// The CRD's CEL rules are not evaluated by the test validator; the operator enforces the same
// rules (and reports InvalidSpec), so they are checked here on ParsePoolSpec.
TEST(CrdSchema, CrossFieldRulesAreEnforcedByTheOperator) {
  Json file_with_size = ValidPool();
  file_with_size["spec"]["backend"] = {
      {"type", "file"}, {"pathTemplate", "/d/{index}"}, {"size", "1Mi"}};
  EXPECT_FALSE(ParsePoolSpec(file_with_size, "img").ok());
  Json ram_without_size = ValidPool();
  ram_without_size["spec"]["backend"] = {{"type", "ram"}};
  EXPECT_FALSE(ParsePoolSpec(ram_without_size, "img").ok());
  Json sample_with_backend = ValidPool();
  sample_with_backend["spec"]["deviceClass"] = "sample";
  EXPECT_FALSE(ParsePoolSpec(sample_with_backend, "img").ok());
  Json long_name = ValidPool();
  long_name["metadata"]["name"] = std::string(51, 'a');
  EXPECT_FALSE(ParsePoolSpec(long_name, "img").ok());
}

}  // namespace
}  // namespace vfu::op::testing
