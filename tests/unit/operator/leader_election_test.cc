// Two operator instances electing a leader on one Lease in the fake API server: exactly one
// leads, the other takes over when the leader stops renewing, and a released Lease is taken
// over without waiting for it to expire.
#include "operator/kube/leader_election.h"

#include <gtest/gtest.h>

#include <atomic>

#include "tests/unit/operator/test_util.h"

namespace vfu::op::testing {
namespace {

struct Candidate {
  std::unique_ptr<KubeClient> client;
  std::atomic<int> started{0};
  std::atomic<int> stopped{0};
  std::unique_ptr<LeaderElector> elector;

  Candidate(const FakeApiServer& fake, const std::string& identity,
            std::chrono::seconds lease = std::chrono::seconds(1))
      : client(MakeClient(fake)) {
    LeaderElectionOptions options;
    options.ns = "vfio-user";
    options.identity = identity;
    // Short but ordered as client-go requires: lease > renew deadline > retry period.
    options.lease_duration = lease;
    options.renew_deadline = lease * 7 / 10;
    options.retry_period = std::chrono::milliseconds(100);
    elector = std::make_unique<LeaderElector>(
        *client, options, LeaderCallbacks{[this] { ++started; }, [this] { ++stopped; }});
  }
};

std::string Holder(FakeApiServer& fake) {
  auto lease = fake.GetObject("leases", "vfio-user", "vfio-user-operator-leader");
  return lease ? (*lease)["spec"].value("holderIdentity", "") : "";
}

std::string RenewTime(FakeApiServer& fake) {
  auto lease = fake.GetObject("leases", "vfio-user", "vfio-user-operator-leader");
  return lease ? (*lease)["spec"].value("renewTime", "") : "";
}

TEST(LeaderElection, ExactlyOneOfTwoInstancesLeads) {
  FakeApiServer fake;
  Candidate a(fake, "a");
  Candidate b(fake, "b");
  a.elector->Start();
  b.elector->Start();
  ASSERT_TRUE(WaitFor([&] { return a.elector->IsLeader() || b.elector->IsLeader(); }));
  Candidate& leader = a.elector->IsLeader() ? a : b;
  Candidate& standby = a.elector->IsLeader() ? b : a;
  EXPECT_EQ(Holder(fake), leader.elector->identity());
  // Let the leader renew 25 times (every 100 ms, so well over two lease durations of 1 s)
  // with the standby trying every 100 ms: it must never take over a lease being renewed.
  for (int i = 0; i < 25; ++i) {
    std::string before = RenewTime(fake);
    ASSERT_TRUE(WaitFor([&] { return RenewTime(fake) != before; }));
  }
  auto lease = fake.GetObject("leases", "vfio-user", "vfio-user-operator-leader");
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(standby.started.load(), 0);
  EXPECT_FALSE(standby.elector->IsLeader());
  EXPECT_EQ(leader.started.load(), 1);
  EXPECT_EQ((*lease)["spec"]["leaseDurationSeconds"], 1);
  b.elector->Stop(false);
  a.elector->Stop(false);
}

TEST(LeaderElection, StandbyTakesOverWhenTheLeaderStopsRenewing) {
  FakeApiServer fake;
  Candidate a(fake, "a");
  a.elector->Start();
  ASSERT_TRUE(WaitFor([&] { return a.elector->IsLeader(); }));
  Candidate b(fake, "b");
  b.elector->Start();
  std::string before = RenewTime(fake);
  ASSERT_TRUE(WaitFor([&] { return RenewTime(fake) != before; }));  // b has seen a renew
  a.elector->Stop(/*release=*/false);  // a crashed: the Lease stays with it
  EXPECT_EQ(Holder(fake), "a");
  ASSERT_TRUE(WaitFor([&] { return b.elector->IsLeader(); }));
  EXPECT_EQ(Holder(fake), "b");
  auto lease = fake.GetObject("leases", "vfio-user", "vfio-user-operator-leader");
  EXPECT_EQ((*lease)["spec"]["leaseTransitions"], 1);
  b.elector->Stop(false);
}

TEST(LeaderElection, ReleasedLeaseIsTakenOverWithoutWaitingForExpiry) {
  FakeApiServer fake;
  // A lease of 60 s: without the release, b could not lead within the 10 s wait below.
  Candidate a(fake, "a", std::chrono::seconds(60));
  a.elector->Start();
  ASSERT_TRUE(WaitFor([&] { return a.elector->IsLeader(); }));
  a.elector->Stop(/*release=*/true);
  EXPECT_EQ(a.stopped.load(), 1);
  EXPECT_EQ(Holder(fake), "");
  Candidate b(fake, "b", std::chrono::seconds(60));
  b.elector->Start();
  ASSERT_TRUE(WaitFor([&] { return b.elector->IsLeader(); }, std::chrono::seconds(10)));
  b.elector->Stop(false);
}

TEST(LeaderElection, LeaderThatCannotRenewStopsLeading) {
  FakeApiServer fake;
  Candidate a(fake, "a");
  a.elector->Start();
  ASSERT_TRUE(WaitFor([&] { return a.elector->IsLeader(); }));
  fake.FailNextRequests(1000000, 500);  // the API server is unreachable for a while
  ASSERT_TRUE(WaitFor([&] { return a.stopped.load() == 1; }));
  EXPECT_FALSE(a.elector->IsLeader());
  fake.FailNextRequests(0, 0);
  a.elector->Stop(false);
}

}  // namespace
}  // namespace vfu::op::testing
