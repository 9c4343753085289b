// List-then-watch against the fake API server: events in order, a cut watch resumed from the
// last resourceVersion without missed or repeated events, bookmarks moving the
// resourceVersion, and 410 Gone answered by a re-list whose differences become events.
#include "operator/kube/informer.h"

#include <gtest/gtest.h>

#include <map>
#include <mutex>

#include "tests/unit/operator/test_util.h"

namespace vfu::op::testing {
namespace {

Json Node(const std::string& name, const std::string& zone = "a") {
  return {{"metadata", {{"name", name}, {"labels", {{"zone", zone}}}}}};
}

// Records what the informer reports.
class Recorder {
 public:
  void operator()(EventType type, const Json& object) {
    std::lock_guard<std::mutex> lock(mu_);
    const char* name = type == EventType::kAdded      ? "ADDED"
                       : type == EventType::kModified ? "MODIFIED"
                                                      : "DELETED";
    events_.push_back(std::string(name) + " " + object["metadata"]["name"].get<std::string>());
  }
  std::vector<std::string> events() {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }
  int Count(const std::string& event) {
    auto all = events();
    return static_cast<int>(std::count(all.begin(), all.end(), event));
  }

 private:
  std::mutex mu_;
  std::vector<std::string> events_;
};

struct InformerHarness {
  FakeApiServer fake;
  std::unique_ptr<KubeClient> client = MakeClient(fake);
  Recorder recorder;
  std::map<std::string, int> restarts;
  std::mutex restarts_mu;
  std::unique_ptr<Informer> informer;

  explicit InformerHarness(std::string selector = "") {
    InformerOptions options{
        resources::kNodes, "", std::move(selector), 60,
        BackoffOptions{std::chrono::milliseconds(10), std::chrono::milliseconds(100), 2.0, 0.2}};
    informer = std::make_unique<Informer>(
        *client, options, [this](EventType t, const Json& o) { recorder(t, o); },
        [this](const std::string& reason) {
          std::lock_guard<std::mutex> lock(restarts_mu);
          ++restarts[reason];
        });
  }
  int Restarts(const std::string& reason) {
    std::lock_guard<std::mutex> lock(restarts_mu);
    return restarts[reason];
  }
};

TEST(Informer, ListsExistingObjectsThenWatchesChanges) {
  InformerHarness h;
  h.fake.CreateObject("nodes", "", Node("n1"));
  h.informer->Start();
  ASSERT_TRUE(h.informer->WaitForSync(std::chrono::seconds(10)));
  ASSERT_TRUE(WaitFor([&] { return h.fake.OpenWatches("nodes") == 1; }));
  h.fake.CreateObject("nodes", "", Node("n2"));
  h.fake.DeleteObject("nodes", "", "n1");
  ASSERT_TRUE(WaitFor([&] { return h.recorder.events().size() == 3; }));
  EXPECT_EQ(h.recorder.events(), (std::vector<std::string>{"ADDED n1", "ADDED n2", "DELETED n1"}));
  EXPECT_FALSE(h.informer->Get("", "n1").has_value());
  ASSERT_TRUE(h.informer->Get("", "n2").has_value());
  // The watch started where the list ended.
  auto rvs = h.fake.WatchResourceVersions("nodes");
  ASSERT_FALSE(rvs.empty());
  EXPECT_NE(rvs[0], "");
  EXPECT_NE(rvs[0], "0");
}

TEST(Informer, CutWatchResumesFromTheLastResourceVersionWithoutMissingEvents) {
  InformerHarness h;
  h.informer->Start();
  ASSERT_TRUE(h.informer->WaitForSync(std::chrono::seconds(10)));
  h.fake.CreateObject("nodes", "", Node("n1"));
  ASSERT_TRUE(WaitFor([&] { return h.recorder.Count("ADDED n1") == 1; }));
  const std::string last_seen = h.informer->resource_version();
  h.fake.DropWatches();
  // Changes while no watch is open.
  h.fake.CreateObject("nodes", "", Node("n2"));
  h.fake.CreateObject("nodes", "", Node("n3"));
  ASSERT_TRUE(WaitFor([&] { return h.recorder.Count("ADDED n3") == 1; }));
  EXPECT_EQ(h.recorder.events(),
            (std::vector<std::string>{"ADDED n1", "ADDED n2", "ADDED n3"}));  // none repeated
  EXPECT_EQ(h.informer->list_count(), 1);  // resumed by watching, not by listing again
  auto rvs = h.fake.WatchResourceVersions("nodes");
  ASSERT_GE(rvs.size(), 2u);
  EXPECT_EQ(rvs[1], last_seen);
  EXPECT_GE(h.Restarts("error") + h.Restarts("closed"), 1);
}

TEST(Informer, BookmarkMovesTheResourceVersionTheNextWatchStartsFrom) {
  InformerHarness h("zone=a");
  h.informer->Start();
  ASSERT_TRUE(h.informer->WaitForSync(std::chrono::seconds(10)));
  ASSERT_TRUE(WaitFor([&] { return h.fake.OpenWatches("nodes") == 1; }));
  // Changes the informer does not select still move the store's resourceVersion.
  h.fake.CreateObject("nodes", "", Node("other", "b"));
  const std::string current = std::to_string(h.fake.resource_version());
  h.fake.SendBookmarks();
  ASSERT_TRUE(WaitFor([&] { return h.informer->resource_version() == current; }));
  h.fake.DropWatches();
  ASSERT_TRUE(WaitFor([&] { return h.fake.WatchResourceVersions("nodes").size() >= 2; }));
  EXPECT_EQ(h.fake.WatchResourceVersions("nodes")[1], current);
  EXPECT_TRUE(h.recorder.events().empty());
}

TEST(Informer, ExpiredResourceVersionIsAnsweredByARelistThatReportsTheDifferences) {
  InformerHarness h;
  h.fake.CreateObject("nodes", "", Node("stays"));
  h.fake.CreateObject("nodes", "", Node("goes"));
  h.fake.CreateObject("nodes", "", Node("changes"));
  h.informer->Start();
  ASSERT_TRUE(h.informer->WaitForSync(std::chrono::seconds(10)));
  ASSERT_TRUE(WaitFor([&] { return h.recorder.events().size() == 3; }));
  ASSERT_TRUE(WaitFor([&] { return h.fake.OpenWatches("nodes") == 1; }));
  // Cut the watch, change things, and forget the history so that resuming gets 410.
  h.fake.DropWatches();
  ASSERT_TRUE(WaitFor([&] { return h.fake.OpenWatches("nodes") == 0; }));
  h.fake.FailNextRequests(0, 0);
  h.fake.DeleteObject("nodes", "", "goes");
  h.fake.SetStatus("nodes", "", "changes", {{"allocatable", {{"cpu", "2"}}}});
  h.fake.CreateObject("nodes", "", Node("new"));
  h.fake.CompactHistory();
  ASSERT_TRUE(WaitFor([&] { return h.informer->list_count() >= 2; }));
  ASSERT_TRUE(WaitFor([&] { return h.recorder.events().size() == 6; }));
  auto events = h.recorder.events();
  std::vector<std::string> after(events.begin() + 3, events.end());
  std::sort(after.begin(), after.end());
  EXPECT_EQ(after, (std::vector<std::string>{"ADDED new", "DELETED goes", "MODIFIED changes"}));
  EXPECT_GE(h.Restarts("expired"), 1);
  EXPECT_FALSE(h.informer->Get("", "goes").has_value());
  // And it keeps watching from the new list's resourceVersion.
  h.fake.CreateObject("nodes", "", Node("later"));
  ASSERT_TRUE(WaitFor([&] { return h.recorder.Count("ADDED later") == 1; }));
}

TEST(Informer, StopEndsAnOpenWatchPromptly) {
  InformerHarness h;
  h.informer->Start();
  ASSERT_TRUE(h.informer->WaitForSync(std::chrono::seconds(10)));
  ASSERT_TRUE(WaitFor([&] { return h.fake.OpenWatches("nodes") == 1; }));
  h.informer->Stop();  // the watch has 60 s left; Stop must not wait for it
  EXPECT_TRUE(WaitFor([&] { return h.fake.OpenWatches("nodes") == 0; }));
}

}  // namespace
}  // namespace vfu::op::testing
