// Reactor: pollers, adaptive sleep, fd handlers and posted tasks, driven one round at a time
// with RunOnce on the test thread.
#include "server/runtime/reactor.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace vfu {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;

// A poller that finds work while `work` is positive and writes what happened into a shared log.
class ScriptedPoller : public Poller {
 public:
  ScriptedPoller(std::vector<std::string>* log, microseconds threshold)
      : log_(log), threshold_(threshold) {}
  PollResult Poll() override {
    log_->push_back("poll");
    if (work > 0) {
      --work;
      return PollResult::kBusy;
    }
    return PollResult::kIdle;
  }
  bool PrepareToSleep() override {
    log_->push_back("prepare");
    return agree_to_sleep;
  }
  void AfterWake() override { log_->push_back("wake"); }
  microseconds IdleThreshold() const override { return threshold_; }

  int work = 0;
  bool agree_to_sleep = true;

 private:
  std::vector<std::string>* log_;
  microseconds threshold_;
};

UniqueFd MakeEventfd() { return UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)); }

void Signal(int fd) {
  uint64_t one = 1;
  ASSERT_EQ(::write(fd, &one, sizeof(one)), static_cast<ssize_t>(sizeof(one)));
}

TEST(Reactor, AfterASleepPollersRunBeforeTheHandlerOfTheFdThatWokeIt) {
  std::vector<std::string> log;
  Reactor reactor;
  ScriptedPoller poller(&log, microseconds(0));  // sleeps as soon as it is idle
  reactor.AddPoller(&poller, "p");
  UniqueFd kick = MakeEventfd();
  ASSERT_TRUE(reactor
                  .Add(kick.get(), EPOLLIN,
                       [&](uint32_t) {
                         uint64_t v;
                         (void)::read(kick.get(), &v, sizeof(v));
                         log.push_back("kick handled");
                       })
                  .ok());
  // While the thread sleeps, a "driver" kicks (it published its work in shared memory first).
  std::thread driver([&] {
    std::this_thread::sleep_for(milliseconds(50));
    Signal(kick.get());
  });
  // Idle: prepares, sleeps, is woken by the kick. A wait can also end early with nothing
  // ready (EINTR: e.g. io_uring task work queued for this thread by an earlier test in the same
  // process); RunOnce then returns and the next round sleeps again.
  for (int round = 0; round < 10; ++round) {
    reactor.RunOnce(milliseconds(5000));
    if (!log.empty() && log.back() == "kick handled") break;
  }
  driver.join();
  ASSERT_GE(log.size(), 5u);
  ASSERT_EQ(log.back(), "kick handled");
  std::vector<std::string> last_round(log.end() - 5, log.end());
  std::vector<std::string> expected = {"poll", "prepare", "wake", "poll", "kick handled"};
  EXPECT_EQ(last_round, expected);
  EXPECT_GE(reactor.sleeps(), 1u);
}

TEST(Reactor, DoesNotSleepWhenAPollerFindsWorkWhilePreparing) {
  std::vector<std::string> log;
  Reactor reactor;
  ScriptedPoller poller(&log, microseconds(0));
  poller.agree_to_sleep = false;
  reactor.AddPoller(&poller, "p");
  reactor.RunOnce(milliseconds(1000));
  EXPECT_EQ(reactor.sleeps(), 0u);
  std::vector<std::string> expected = {"poll", "prepare", "wake"};  // rolled back to polling
  EXPECT_EQ(log, expected);
}

TEST(Reactor, BusyModePollerKeepsTheThreadAwake) {
  std::vector<std::string> log;
  Reactor reactor;
  ScriptedPoller poller(&log, Poller::kNeverSleep);
  reactor.AddPoller(&poller, "p");
  for (int i = 0; i < 100; ++i) reactor.RunOnce(milliseconds(1000));
  EXPECT_EQ(reactor.sleeps(), 0u);
  EXPECT_EQ(std::count(log.begin(), log.end(), "prepare"), 0);
}

TEST(Reactor, TasksPostedFromAnotherThreadRunOnTheReactorThread) {
  Reactor reactor;
  std::thread::id ran_on;
  std::thread poster([&] { reactor.Post([&] { ran_on = std::this_thread::get_id(); }); });
  poster.join();
  reactor.RunOnce(milliseconds(1000));
  EXPECT_EQ(ran_on, std::this_thread::get_id());
}

TEST(Reactor, RunSleepsUntilWokenByAPostedTaskAndStopsWhenAsked) {
  Reactor reactor;
  std::promise<void> ran;
  std::thread loop([&] { reactor.Run(); });
  std::this_thread::sleep_for(milliseconds(20));  // Run is asleep (it has no timeout)
  reactor.Post([&] { ran.set_value(); });
  EXPECT_EQ(ran.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);
  reactor.Stop();
  loop.join();
  EXPECT_TRUE(reactor.stopping());
}

// Handlers run in place (not copied): one that removes its own watch must still be able to use
// what it captured until it returns (under ASAN a freed handler would be a use after free).
TEST(Reactor, AHandlerThatRemovesItsOwnWatchKeepsItsStateUntilItReturns) {
  Reactor reactor;
  UniqueFd efd = MakeEventfd();
  auto seen = std::make_shared<std::vector<std::string>>();
  const int fd = efd.get();
  ASSERT_TRUE(reactor
                  .Add(fd, EPOLLIN,
                       [&reactor, fd, seen, label = std::string(64, 'x')](uint32_t) {
                         reactor.Remove(fd);
                         seen->push_back(label);  // the captures are still alive
                       })
                  .ok());
  Signal(fd);
  EXPECT_TRUE(reactor.RunOnce(milliseconds(1000)));
  ASSERT_EQ(seen->size(), 1u);
  EXPECT_EQ(seen->front(), std::string(64, 'x'));
  // The watch is gone: the fd can be watched again, and its old handler never runs again.
  ASSERT_TRUE(reactor.Add(fd, EPOLLIN, [](uint32_t) {}).ok());
  reactor.RunOnce(milliseconds(0));
  EXPECT_EQ(seen->size(), 1u);
}

TEST(Reactor, AHandlerMayRemoveTheWatchOfAnotherReadyFdInTheSameBatch) {
  Reactor reactor;
  UniqueFd a = MakeEventfd(), b = MakeEventfd();
  int calls = 0;
  const int fa = a.get(), fb = b.get();
  auto remove_other = [&](int other) {
    return [&reactor, &calls, other](uint32_t) {
      ++calls;
      reactor.Remove(other);
    };
  };
  ASSERT_TRUE(reactor.Add(fa, EPOLLIN, remove_other(fb)).ok());
  ASSERT_TRUE(reactor.Add(fb, EPOLLIN, remove_other(fa)).ok());
  Signal(fa);
  Signal(fb);
  reactor.RunOnce(milliseconds(1000));
  EXPECT_EQ(calls, 1);  // whichever ran first removed the other before its turn
}

// Posted tasks are found without the mutex when nothing is posted; a task posted while tasks
// run (here: by a task) must not be lost by that shortcut.
TEST(Reactor, ATaskPostedByARunningTaskRunsInALaterRound) {
  Reactor reactor;
  std::vector<int> order;
  reactor.Post([&] {
    order.push_back(1);
    reactor.Post([&] { order.push_back(2); });
  });
  reactor.RunOnce(milliseconds(1000));
  EXPECT_EQ(order, std::vector<int>{1});
  reactor.RunOnce(milliseconds(1000));  // woken by the second Post's eventfd write
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
}

TEST(Reactor, EveryTaskPostedFromManyThreadsRunsExactlyOnce) {
  Reactor reactor;
  std::atomic<int> ran{0};
  constexpr int kThreads = 4, kTasks = 500;
  std::thread loop([&] { reactor.Run(); });
  std::vector<std::thread> posters;
  for (int t = 0; t < kThreads; ++t) {
    posters.emplace_back([&] {
      for (int i = 0; i < kTasks; ++i) reactor.Post([&] { ran.fetch_add(1); });
    });
  }
  for (auto& p : posters) p.join();
  std::promise<void> done;
  reactor.Post([&] { done.set_value(); });
  EXPECT_EQ(done.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  reactor.Stop();
  loop.join();
  EXPECT_EQ(ran.load(), kThreads * kTasks);
}

// Time off the CPU is wall time minus the loop thread's CPU time, computed when stats are read;
// only lower bounds are checked (a loaded machine adds time off the CPU, never removes it).
TEST(Reactor, ASleepInRunOnceCountsAsTimeOffTheCpu) {
  Reactor reactor;
  // Nothing to do: sleeps until 60 ms have passed (rounds, in case a wait ends early).
  const auto until = std::chrono::steady_clock::now() + milliseconds(60);
  for (int round = 0; round < 100 && std::chrono::steady_clock::now() < until; ++round) {
    reactor.RunOnce(
        std::chrono::duration_cast<milliseconds>(until - std::chrono::steady_clock::now()) +
        milliseconds(1));
  }
  ReactorStats s = reactor.stats();
  EXPECT_GE(s.asleep_ns, 50'000'000u);
  EXPECT_EQ(s.busy_ns, 0u);
}

TEST(Reactor, TimeOffTheCpuOfRunIsReadByATaskAndKeptAfterRunReturns) {
  Reactor reactor;
  std::thread loop([&] { reactor.Run(); });
  // Counting starts when Run does: wait for the loop, so a slow thread start on a loaded machine
  // does not shorten the 60 ms below.
  std::promise<void> running;
  reactor.Post([&] { running.set_value(); });
  ASSERT_EQ(running.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  std::this_thread::sleep_for(milliseconds(60));
  std::promise<ReactorStats> while_running;
  reactor.Post([&] { while_running.set_value(reactor.stats()); });
  auto f = while_running.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  const uint64_t asleep = f.get().asleep_ns;
  EXPECT_GE(asleep, 50'000'000u);
  reactor.Stop();
  loop.join();
  // Read from this thread after Run returned: the final figure, not this thread's clock.
  EXPECT_GE(reactor.stats().asleep_ns, asleep);
}

// Regression: CI saw the figure read after Run returned come out below the one a task had read,
// when the loop thread stayed on the CPU between the two readings (the wall and CPU clocks are
// read one after the other, so their difference jitters by a few ns).
TEST(OffCpuTime, AReadingIsNeverBelowAnEarlierOneWhenTheCpuClockGainsOnTheWallClock) {
  OffCpuTime t;
  t.Start(/*wall_ns=*/1'000, /*thread_cpu_ns=*/500);
  EXPECT_EQ(t.Read(61'000, 1'500), 59'000u);
  // 10 ns of wall time, 40 ns of CPU time: the raw difference drops by 30 ns.
  EXPECT_EQ(t.Read(61'010, 1'540), 59'000u);
  // Time off the CPU resumes counting from there.
  EXPECT_EQ(t.Read(71'010, 1'540), 69'000u - 30u);
}

TEST(OffCpuTime, ASecondStartResumesFromTheFigureReached) {
  OffCpuTime t;
  EXPECT_EQ(t.Read(5'000, 0), 0u);  // not started: nothing counted
  t.Start(0, 0);
  EXPECT_EQ(t.Read(10'000, 2'000), 8'000u);
  t.Start(100'000, 50'000);  // e.g. Run after RunOnce rounds: a new thread's CPU clock
  EXPECT_EQ(t.Read(100'000, 50'000), 8'000u);
  EXPECT_EQ(t.Read(101'000, 50'500), 8'500u);
}

TEST(OffCpuTime, ClocksReadBelowTheirStartCountAsNoTimePassed) {
  OffCpuTime t;
  t.Start(1'000, 1'000);
  EXPECT_EQ(t.Read(900, 900), 0u);
  EXPECT_EQ(t.Read(2'000, 800), 1'000u);
}

}  // namespace
}  // namespace vfu
