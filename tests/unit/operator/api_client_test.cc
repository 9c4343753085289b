// The Kubernetes client verbs over cpprestsdk against the fake API server: optimistic
// concurrency, status subresource, server-side apply with field managers, merge patch,
// finalizers, retries, and the bearer token re-read after rotation.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/unit/operator/test_util.h"

namespace vfu::op::testing {
namespace {

Json Pool(const std::string& name) {
  return {{"apiVersion", "vfio-user.io/v1alpha1"},
          {"kind", "VfioUserDevicePool"},
          {"metadata", {{"name", name}}},
          {"spec", {{"deviceClass", "sample"}, {"devicesPerNode", 1}}}};
}

TEST(KubeClient, CreateThenGetReturnsTheStoredObjectWithServerFields) {
  FakeApiServer fake;
  auto client = MakeClient(fake);
  auto created = client->Create(resources::kDevicePools, "", Pool("a"));
  ASSERT_TRUE(created.ok()) << created.error().message;
  auto got = client->Get(resources::kDevicePools, "", "a");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ((*got)["metadata"]["uid"], (*created)["metadata"]["uid"]);
  EXPECT_EQ((*got)["metadata"]["generation"], 1);
  EXPECT_FALSE((*got)["metadata"].value("resourceVersion", "").empty());
}

TEST(KubeClient, GetOfAMissingObjectIsNotFound) {
  FakeApiServer fake;
  auto client = MakeClient(fake);
  auto got = client->Get(resources::kNodes, "", "nope");
  ASSERT_FALSE(got.ok());
  EXPECT_TRUE(IsNotFound(got.error()));
}

TEST(KubeClient, UpdateWithAStaleResourceVersionIsAConflict) {
  FakeApiServer fake;
  auto client = MakeClient(fake);
  Json lease = {{"metadata", {{"name", "l"}}}, {"spec", {{"holderIdentity", "a"}}}};
  auto created = client->Create(resources::kLeases, "ns", lease);
  ASSERT_TRUE(created.ok());
  Json first = *created;
  first["spec"]["holderIdentity"] = "b";
  ASSERT_TRUE(client->Update(resources::kLeases, "ns", first).ok());
  Json stale = *created;  // still carries the old resourceVersion
  stale["spec"]["holderIdentity"] = "c";
  auto conflict = client->Update(resources::kLeases, "ns", stale);
  ASSERT_FALSE(conflict.ok());
  EXPECT_TRUE(IsConflict(conflict.error()));
  EXPECT_EQ((*fake.GetObject("leases", "ns", "l"))["spec"]["holderIdentity"], "b");
}

TEST(KubeClient, StatusIsWrittenOnlyThroughTheStatusSubresource) {
  FakeApiServer fake;
  auto client = MakeClient(fake);
  auto created = client->Create(resources::kDevicePools, "", Pool("a"));
  ASSERT_TRUE(created.ok());
  Json with_status = *created;
  with_status["status"] = {{"readyNodes", 3}};
  auto main = client->Update(resources::kDevicePools, "", with_status);
  ASSERT_TRUE(main.ok());
  EXPECT_FALSE(main->contains("status"));
  auto status = client->UpdateStatus(resources::kDevicePools, "", with_status);
  ASSERT_TRUE(status.ok()) << status.error().message;
  EXPECT_EQ((*status)["status"]["readyNodes"], 3);
  EXPECT_EQ((*status)["metadata"]["generation"], 1);  // status writes leave generation alone
}

TEST(KubeClient, SpecChangeIncrementsGeneration) {
  FakeApiServer fake;
  auto client = MakeClient(fake);
  auto created = client->Create(resources::kDevicePools, "", Pool("a"));
  ASSERT_TRUE(created.ok());
  Json changed = *created;
  changed["spec"]["devicesPerNode"] = 2;
  auto updated = client->Update(resources::kDevicePools, "", changed);
  ASSERT_TRUE(updated.ok());
  EXPECT_EQ((*updated)["metadata"]["generation"], 2);
}

TEST(KubeClient, ApplyNeedsAFieldManager) {
  FakeApiServer fake;
  auto client = MakeClient(fake);
  Json cm = {{"apiVersion", "v1"},
             {"kind", "ConfigMap"},
             {"metadata", {{"name", "c"}}},
             {"data", {{"k", "v"}}}};
  auto applied = client->Apply(resources::kConfigMaps, "ns", cm, "", false);
  ASSERT_FALSE(applied.ok());
  EXPECT_EQ(applied.error().code, 400);
}

TEST(KubeClient, ApplyCreatesThenRemovesFieldsTheManagerNoLongerApplies) {
  FakeApiServer fake;
  auto client = MakeClient(fake);
  Json cm = {{"apiVersion", "v1"},
             {"kind", "ConfigMap"},
             {"metadata", {{"name", "c"}}},
             {"data", {{"a", "1"}, {"b", "2"}}}};
  auto first = client->Apply(resources::kConfigMaps, "ns", cm, "op", true);
  ASSERT_TRUE(first.ok()) << first.error().message;
  cm["data"].erase("b");
  auto second = client->Apply(resources::kConfigMaps, "ns", cm, "op", true);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ((*second)["data"], Json({{"a", "1"}}));
  // The same configuration again changes nothing, so the resourceVersion stays.
  auto third = client->Apply(resources::kConfigMaps, "ns", cm, "op", true);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ((*third)["metadata"]["resourceVersion"], (*second)["metadata"]["resourceVersion"]);
}

TEST(KubeClient, ApplyOfAFieldOwnedByAnotherManagerConflictsUnlessForced) {
  FakeApiServer fake;
  auto client = MakeClient(fake);
  Json cm = {{"apiVersion", "v1"},
             {"kind", "ConfigMap"},
             {"metadata", {{"name", "c"}}},
             {"data", {{"a", "1"}}}};
  ASSERT_TRUE(client->Apply(resources::kConfigMaps, "ns", cm, "kubectl", false).ok());
  cm["data"]["a"] = "2";
  auto conflict = client->Apply(resources::kConfigMaps, "ns", cm, "op", false);
  ASSERT_FALSE(conflict.ok());
  EXPECT_TRUE(IsConflict(conflict.error()));
  auto forced = client->Apply(resources::kConfigMaps, "ns", cm, "op", true);
  ASSERT_TRUE(forced.ok());
  EXPECT_EQ((*forced)["data"]["a"], "2");
}

TEST(KubeClient, MergePatchWithAStaleResourceVersionIsAConflict) {
  FakeApiServer fake;
  auto client = MakeClient(fake);
  auto created = client->Create(resources::kDevicePools, "", Pool("a"));
  ASSERT_TRUE(created.ok());
  Json patch = {{"metadata", {{"finalizers", {"x/y"}}, {"resourceVersion", "1"}}}};
  auto stale = client->MergePatch(resources::kDevicePools, "", "a", patch);
  ASSERT_FALSE(stale.ok());
  EXPECT_TRUE(IsConflict(stale.error()));
  patch["metadata"]["resourceVersion"] = (*created)["metadata"]["resourceVersion"];
  auto ok = client->MergePatch(resources::kDevicePools, "", "a", patch);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ((*ok)["metadata"]["finalizers"], Json({"x/y"}));
}

TEST(KubeClient, DeleteOfAnObjectWithFinalizersOnlyMarksItUntilTheyAreRemoved) {
  FakeApiServer fake;
  auto client = MakeClient(fake);
  Json pool = Pool("a");
  pool["metadata"]["finalizers"] = {"x/y"};
  ASSERT_TRUE(client->Create(resources::kDevicePools, "", pool).ok());
  ASSERT_TRUE(client->Delete(resources::kDevicePools, "", "a").ok());
  auto marked = client->Get(resources::kDevicePools, "", "a");
  ASSERT_TRUE(marked.ok());
  EXPECT_TRUE((*marked)["metadata"].contains("deletionTimestamp"));
  auto cleared = client->MergePatch(resources::kDevicePools, "", "a",
                                    {{"metadata", {{"finalizers", Json::array()}}}});
  ASSERT_TRUE(cleared.ok());
  EXPECT_TRUE(IsNotFound(client->Get(resources::kDevicePools, "", "a").error()));
}

TEST(KubeClient, ServerErrorsAreRetriedWithBackoff) {
  FakeApiServer fake;
  auto client = MakeClient(fake);
  fake.FailNextRequests(2, 503);
  auto list = client->List(resources::kNodes, "");
  ASSERT_TRUE(list.ok()) << list.error().message;
  EXPECT_EQ(fake.ListCount("nodes"), 1);  // the two failures never reached the handler
}

TEST(KubeClient, ClientErrorsAreNotRetried) {
  FakeApiServer fake;
  auto client = MakeClient(fake);
  fake.FailNextRequests(1, 422);
  auto list = client->List(resources::kNodes, "");
  ASSERT_FALSE(list.ok());
  EXPECT_EQ(list.error().code, 422);
}

TEST(KubeClient, NoResponseIsATransportError) {
  std::string url;
  {
    FakeApiServer gone;
    url = gone.url();
  }
  ClusterConfig config;
  config.server = url;
  RetryPolicy retry;
  retry.attempts = 2;
  retry.backoff = BackoffOptions{std::chrono::milliseconds(1), std::chrono::milliseconds(2), 2, 0};
  KubeClient client(std::shared_ptr<HttpTransport>(MakeCppRestTransport(config)), retry);
  auto got = client.Get(resources::kNodes, "", "n");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().code, kTransportError);
}

TEST(KubeClient, RotatedServiceAccountTokenIsReadAgain) {
  FakeApiServer fake;
  auto dir =
      std::filesystem::temp_directory_path() /
      ("vfu-token-" + std::to_string(::getpid()) + "-" + std::to_string(fake.resource_version()));
  std::filesystem::create_directories(dir);
  struct Cleanup {
    std::filesystem::path dir;
    ~Cleanup() { std::filesystem::remove_all(dir); }
  } cleanup{dir};
  auto token_file = dir / "token";
  std::ofstream(token_file) << "first-token\n";
  auto client =
      MakeClient(fake, TokenSource::File(token_file.string(), std::chrono::milliseconds(0)));
  ASSERT_TRUE(client->List(resources::kNodes, "").ok());
  // The kubelet swaps in a new token file.
  std::ofstream(dir / "token.new") << "second-token\n";
  std::filesystem::rename(dir / "token.new", token_file);
  ASSERT_TRUE(client->List(resources::kNodes, "").ok());
  auto headers = fake.AuthorizationHeaders();
  ASSERT_EQ(headers.size(), 2u);
  EXPECT_EQ(headers[0], "Bearer first-token");
  EXPECT_EQ(headers[1], "Bearer second-token");
}

}  // namespace
}  // namespace vfu::op::testing
