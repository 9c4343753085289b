// The work queue's controller guarantees: deduplication, one worker per key, per-key
// exponential backoff, delayed adds, shutdown.
#include "operator/kube/work_queue.h"

#include <gtest/gtest.h>

#include <thread>

namespace vfu::op {
namespace {

TEST(WorkQueue, AKeyAddedTwiceBeforeItIsTakenIsQueuedOnce) {
  WorkQueue queue;
  queue.Add("a");
  queue.Add("b");
  queue.Add("a");
  EXPECT_EQ(queue.Depth(), 2u);
  EXPECT_EQ(queue.Get(), "a");
  EXPECT_EQ(queue.Get(), "b");
  EXPECT_EQ(queue.Depth(), 0u);
}

TEST(WorkQueue, AKeyAddedWhileBeingProcessedComesBackOnlyAfterDone) {
  WorkQueue queue;
  queue.Add("a");
  ASSERT_EQ(queue.Get(), "a");
  queue.Add("a");
  EXPECT_EQ(queue.Depth(), 0u);  // a second worker must not get it now
  queue.Done("a");
  EXPECT_EQ(queue.Depth(), 1u);
  EXPECT_EQ(queue.Get(), "a");
}

TEST(WorkQueue, RateLimitedAddsBackOffExponentiallyUntilForgotten) {
  WorkQueueOptions options;
  options.base_delay = std::chrono::milliseconds(20);
  WorkQueue queue(options);
  queue.AddRateLimited("a");
  queue.AddRateLimited("a");
  queue.AddRateLimited("a");
  EXPECT_EQ(queue.Retries("a"), 3);
  EXPECT_EQ(queue.Depth(), 0u);  // waiting for its backoff
  auto started = std::chrono::steady_clock::now();
  EXPECT_EQ(queue.Get(), "a");
  // The first of the three delays (20 ms) had to pass before the key became ready.
  EXPECT_GE(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(15));
  queue.Forget("a");
  EXPECT_EQ(queue.Retries("a"), 0);
}

TEST(WorkQueue, AddAfterQueuesTheKeyOnceTheDelayPassed) {
  WorkQueue queue;
  queue.AddAfter("later", std::chrono::milliseconds(30));
  EXPECT_EQ(queue.Depth(), 0u);
  EXPECT_EQ(queue.Get(), "later");
}

TEST(WorkQueue, ShutDownWakesBlockedWorkers) {
  WorkQueue queue;
  std::optional<std::string> got = "unset";
  std::thread worker([&] { got = queue.Get(); });
  queue.ShutDown();
  worker.join();
  EXPECT_FALSE(got.has_value());
}

TEST(WorkQueue, DepthObserverSeesEveryChange) {
  WorkQueue queue;
  std::vector<size_t> depths;
  queue.SetDepthObserver([&](size_t d) { depths.push_back(d); });
  queue.Add("a");
  queue.Add("b");
  ASSERT_TRUE(queue.Get().has_value());
  EXPECT_EQ(depths, (std::vector<size_t>{1, 2, 1}));
}

}  // namespace
}  // namespace vfu::op
