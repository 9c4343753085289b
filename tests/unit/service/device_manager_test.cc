// DeviceManager: starting devices from a plan, the reload rules (add, remove, removal deferred
// while a client is connected, changes refused while connected, recreated while idle), health
// (backing file moved away and back, a device that cannot start yet, a stalled poll thread)
// and counters. Clients are real: the client library over the devices' unix sockets.
#include "server/service/device_manager.h"

#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include "server/client/client.h"
#include "server/client/virtio_blk_driver.h"
#include "tests/support/subprocess.h"

namespace vfu::service {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class DeviceManagerTest : public ::testing::Test {
 protected:
  DeviceManager::Options FastOptions(unsigned threads = 1) {
    DeviceManager::Options o;
    o.poll_threads = threads;
    o.monitor_interval = milliseconds(50);
    o.stall_after = milliseconds(400);
    return o;
  }

  DevicePlan Plan(const std::string& id, const std::string& params = "backend=ram,size=1M") {
    auto spec = devices::ParseDeviceSpec("virtio-blk,id=" + id + ",socket=" + SocketOf(id) +
                                         (params.empty() ? "" : "," + params));
    EXPECT_TRUE(spec.ok()) << spec.error().message;
    DevicePlan p;
    p.spec = *spec;
    p.owner = SocketOwnership{::getuid(), ::getgid(), 0660};
    return p;
  }

  std::string SocketOf(const std::string& id) { return dir_.File(id) + "/vfio-user.sock"; }

  static bool Exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
  }

  // Waits (bounded) until `pred` holds for the published device list.
  bool WaitFor(DeviceManager& m, const std::function<bool(const DeviceListSnapshot&)>& pred,
               milliseconds timeout = milliseconds(5000)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      DeviceListSnapshot s = m.Devices();
      if (pred(s)) return true;
      if (std::chrono::steady_clock::now() > deadline) return false;
      m.WaitForChange(s.generation, milliseconds(100));
    }
  }

  static const DeviceStatus* Find(const DeviceListSnapshot& s, const std::string& id) {
    for (const auto& d : s.devices) {
      if (d.id == id) return &d;
    }
    return nullptr;
  }

  testing::TempDir dir_;
};

TEST_F(DeviceManagerTest, ApplyStartsEveryPlannedDeviceOnItsOwnSocketDirectory) {
  DeviceManager m(FastOptions(2));
  DevicePlan b = Plan("b");
  b.poll_thread = 1;
  ApplyReport r = m.Apply({Plan("a"), b});
  EXPECT_EQ(r.added, (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(r.failed.empty());
  DeviceListSnapshot s = m.Devices();
  ASSERT_EQ(s.devices.size(), 2u);
  EXPECT_EQ(s.devices[0].id, "a");
  EXPECT_TRUE(s.devices[0].healthy);
  EXPECT_EQ(s.devices[0].backend, "ram");
  EXPECT_EQ(s.devices[0].size_bytes, 1u << 20);
  EXPECT_EQ(s.devices[1].poll_thread, 1u);
  struct stat st {};
  ASSERT_EQ(::stat(dir_.File("a").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0750u);
  for (const char* id : {"a", "b"}) {
    auto c = client::Client::Connect(SocketOf(id));
    EXPECT_TRUE(c.ok()) << id;
  }
}

TEST_F(DeviceManagerTest, QuickFormDeviceGetsTheParentDirectoriesOfItsSocket) {
  DeviceManager m(FastOptions());
  DevicePlan p = Plan("a");
  p.owner.reset();  // --device: no ownership settings
  p.spec.socket = dir_.File("deep/er/a.sock");
  ApplyReport r = m.Apply({p});
  EXPECT_TRUE(r.failed.empty()) << r.failed.front();
  EXPECT_TRUE(client::Client::Connect(p.spec.socket).ok());
}

// --device ...,owner=UID:GID,mode=OCTAL: the socket gets them; its directory, which the quick
// form may share with other sockets, keeps its mode and is not removed with the device.
TEST_F(DeviceManagerTest, QuickFormOwnerAppliesToTheSocketAloneNotItsDirectory) {
  DeviceManager m(FastOptions());
  const std::string shared = dir_.File("shared");
  ASSERT_EQ(::mkdir(shared.c_str(), 0755), 0);
  DevicePlan p = Plan("a");
  p.spec.socket = shared + "/a.sock";
  p.owner = SocketOwnership{::getuid(), ::getgid(), 0604, /*directory=*/false};
  ApplyReport r = m.Apply({p});
  ASSERT_TRUE(r.failed.empty()) << r.failed.front();
  struct stat st {};
  ASSERT_EQ(::stat(p.spec.socket.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0604u);
  EXPECT_EQ(st.st_uid, ::getuid());
  ASSERT_EQ(::stat(shared.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0755u) << "the socket's directory was changed";
  EXPECT_TRUE(client::Client::Connect(p.spec.socket).ok());
  m.Apply({});
  EXPECT_FALSE(Exists(p.spec.socket));
  EXPECT_TRUE(Exists(shared)) << "the socket's directory was removed with the device";
}

TEST_F(DeviceManagerTest, ReloadAddsNewDevicesAndRemovesIdleOnesWithTheirSockets) {
  DeviceManager m(FastOptions());
  m.Apply({Plan("a"), Plan("b")});
  uint64_t before = m.Devices().generation;
  ApplyReport r = m.Apply({Plan("b"), Plan("c")});
  EXPECT_EQ(r.added, std::vector<std::string>{"c"});
  EXPECT_EQ(r.removed, std::vector<std::string>{"a"});
  EXPECT_FALSE(Exists(SocketOf("a")));
  EXPECT_FALSE(Exists(dir_.File("a")));
  EXPECT_TRUE(Exists(SocketOf("c")));
  DeviceListSnapshot s = m.Devices();
  EXPECT_GT(s.generation, before);
  ASSERT_EQ(s.devices.size(), 2u);
  EXPECT_EQ(s.devices[0].id, "b");
  EXPECT_EQ(s.devices[1].id, "c");
}

TEST_F(DeviceManagerTest, UnchangedPlanChangesNothing) {
  DeviceManager m(FastOptions());
  m.Apply({Plan("a")});
  uint64_t generation = m.Devices().generation;
  auto c = client::Client::Connect(SocketOf("a"));
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(WaitFor(m, [](const auto& s) { return s.devices[0].client_connected; }));
  ApplyReport r = m.Apply({Plan("a")});
  EXPECT_FALSE(r.changed());
  EXPECT_TRUE((*c)->GetDeviceInfo().ok()) << "the session survives a no-op reload";
  EXPECT_GT(m.Devices().generation, generation);  // only the client connected
}

TEST_F(DeviceManagerTest, RemovingAConnectedDeviceWaitsForItsClientToLeave) {
  DeviceManager m(FastOptions());
  m.Apply({Plan("a"), Plan("b")});
  auto c = client::Client::Connect(SocketOf("a"));
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(WaitFor(m, [](const auto& s) { return Find(s, "a")->client_connected; }));

  ApplyReport r = m.Apply({Plan("b")});
  EXPECT_EQ(r.removal_deferred, std::vector<std::string>{"a"});
  EXPECT_TRUE(r.removed.empty());
  DeviceListSnapshot after = m.Devices();
  const DeviceStatus* a = Find(after, "a");
  ASSERT_NE(a, nullptr);
  EXPECT_TRUE(a->removal_pending);
  EXPECT_TRUE((*c)->GetDeviceInfo().ok()) << "the connected VM keeps its device";

  c->reset();  // the client disconnects
  EXPECT_TRUE(WaitFor(m, [](const auto& s) { return Find(s, "a") == nullptr; }));
  EXPECT_FALSE(Exists(SocketOf("a")));
  EXPECT_TRUE(Exists(SocketOf("b")));
}

TEST_F(DeviceManagerTest, ReAddingADeviceWhoseRemovalIsPendingCancelsTheRemoval) {
  DeviceManager m(FastOptions());
  m.Apply({Plan("a")});
  auto c = client::Client::Connect(SocketOf("a"));
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(WaitFor(m, [](const auto& s) { return s.devices[0].client_connected; }));
  m.Apply({});
  EXPECT_TRUE(m.Devices().devices[0].removal_pending);
  m.Apply({Plan("a")});
  EXPECT_FALSE(m.Devices().devices[0].removal_pending);
  c->reset();
  // Stays after the disconnect.
  ASSERT_TRUE(WaitFor(m, [](const auto& s) { return !s.devices[0].client_connected; }));
  EXPECT_EQ(m.Devices().devices.size(), 1u);
  EXPECT_TRUE(Exists(SocketOf("a")));
}

TEST_F(DeviceManagerTest, ChangedSettingsOfAConnectedDeviceAreRefusedAndNotHalfApplied) {
  DeviceManager m(FastOptions());
  m.Apply({Plan("a", "backend=ram,size=1M")});
  auto c = client::Client::Connect(SocketOf("a"));
  ASSERT_TRUE(c.ok());
  auto driver = client::VirtioBlkDriver::Create(c->get(), {});
  ASSERT_TRUE(driver.ok());
  ASSERT_TRUE(WaitFor(m, [](const auto& s) { return s.devices[0].client_connected; }));

  ApplyReport r = m.Apply({Plan("a", "backend=ram,size=2M")});
  EXPECT_EQ(r.refused, std::vector<std::string>{"a"});
  DeviceStatus a = m.Devices().devices[0];
  EXPECT_NE(a.refused_change.find("client is connected"), std::string::npos);
  EXPECT_EQ(a.size_bytes, 1u << 20) << "the old settings stay in force";
  // The VM's device still works, with its old capacity.
  EXPECT_EQ((*driver)->capacity_sectors(), (1u << 20) / 512);
  ASSERT_TRUE((*driver)->Write(0, 0, 0, 512, 1).ok());
  EXPECT_TRUE((*driver)->WaitFor(0, 1, seconds(5)).ok());

  // After the client leaves, the same reload applies.
  (*driver)->Abandon();
  driver->reset();
  c->reset();
  ASSERT_TRUE(WaitFor(m, [](const auto& s) { return !s.devices[0].client_connected; }));
  r = m.Apply({Plan("a", "backend=ram,size=2M")});
  EXPECT_EQ(r.recreated, std::vector<std::string>{"a"});
  EXPECT_EQ(m.Devices().devices[0].size_bytes, 2u << 20);
  EXPECT_EQ(m.Devices().devices[0].refused_change, "");
}

TEST_F(DeviceManagerTest, DeviceThatCannotStartIsUnhealthyAndStartsOnceItsFileAppears) {
  DeviceManager m(FastOptions());
  std::string image = dir_.File("later.img");
  ApplyReport r = m.Apply({Plan("a", "backend=file,path=" + image), Plan("b")});
  ASSERT_EQ(r.failed.size(), 1u);
  DeviceListSnapshot first = m.Devices();
  const DeviceStatus* a = Find(first, "a");
  ASSERT_NE(a, nullptr);
  EXPECT_FALSE(a->healthy);
  EXPECT_NE(a->health_reason.find("later.img"), std::string::npos) << a->health_reason;
  EXPECT_TRUE(Find(m.Devices(), "b")->healthy) << "other devices are unaffected";

  { std::ofstream(image).write(std::string(1 << 20, '\0').data(), 1 << 20); }
  EXPECT_TRUE(WaitFor(m, [](const auto& s) { return Find(s, "a")->healthy; }));
  EXPECT_TRUE(client::Client::Connect(SocketOf("a")).ok());
}

TEST_F(DeviceManagerTest, BackingFileMovedAwayMakesTheDeviceUnhealthyUntilItIsBack) {
  DeviceManager m(FastOptions());
  std::string image = dir_.File("disk.img");
  { std::ofstream(image).write(std::string(1 << 20, '\0').data(), 1 << 20); }
  m.Apply({Plan("a", "backend=file,path=" + image)});
  ASSERT_TRUE(m.Devices().devices[0].healthy);

  ASSERT_EQ(std::rename(image.c_str(), (image + ".moved").c_str()), 0);
  ASSERT_TRUE(WaitFor(m, [](const auto& s) { return !s.devices[0].healthy; }));
  EXPECT_NE(m.Devices().devices[0].health_reason.find("missing"), std::string::npos)
      << m.Devices().devices[0].health_reason;

  ASSERT_EQ(std::rename((image + ".moved").c_str(), image.c_str()), 0);
  EXPECT_TRUE(WaitFor(m, [](const auto& s) { return s.devices[0].healthy; }));
  EXPECT_EQ(m.Devices().devices[0].health_reason, "");
}

TEST_F(DeviceManagerTest, StalledPollThreadMakesOnlyItsDevicesUnhealthyUntilItRecovers) {
  DeviceManager m(FastOptions(2));
  DevicePlan b = Plan("b");
  b.poll_thread = 1;
  m.Apply({Plan("a"), b});
  std::atomic<bool> release{false};
  m.PostToPollThread(1, [&] {
    auto deadline = std::chrono::steady_clock::now() + seconds(10);
    while (!release.load() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(milliseconds(5));
    }
  });
  bool went_unhealthy = WaitFor(m, [](const auto& s) { return !Find(s, "b")->healthy; });
  release.store(true);
  ASSERT_TRUE(went_unhealthy);
  DeviceListSnapshot s = m.Devices();
  EXPECT_NE(Find(s, "b")->health_reason.find("poll thread 1 stalled"), std::string::npos)
      << Find(s, "b")->health_reason;
  EXPECT_TRUE(Find(s, "a")->healthy);
  EXPECT_TRUE(WaitFor(m, [](const auto& now) { return Find(now, "b")->healthy; }));
}

TEST_F(DeviceManagerTest, StallIsReportedEvenWhileAReloadWaitsForTheStalledThread) {
  DeviceManager::Options o = FastOptions(2);
  o.apply_timeout = milliseconds(200);
  DeviceManager m(o);
  DevicePlan b = Plan("b");
  b.poll_thread = 1;
  m.Apply({Plan("a"), b});
  std::atomic<bool> release{false};
  m.PostToPollThread(1, [&] {
    auto deadline = std::chrono::steady_clock::now() + seconds(10);
    while (!release.load() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(milliseconds(5));
    }
  });
  DevicePlan c = Plan("c");
  c.poll_thread = 1;
  // The reload must start c on the stalled thread, so it waits until the thread runs again.
  std::thread reload([&] { m.Apply({Plan("a"), b, c}); });
  bool reported = WaitFor(m, [](const auto& s) {
    const DeviceStatus* stalled = Find(s, "b");
    return stalled != nullptr && !stalled->healthy;
  });
  release.store(true);
  reload.join();
  EXPECT_TRUE(reported) << "the stall was not published while the reload waited";
  EXPECT_TRUE(WaitFor(m, [](const auto& s) {
    return s.devices.size() == 3 && Find(s, "b")->healthy && Find(s, "c")->healthy;
  }));
}

TEST_F(DeviceManagerTest, CountersShowTrafficDmaRegionsAndConnections) {
  DeviceManager m(FastOptions());
  m.Apply({Plan("a")});
  auto c = client::Client::Connect(SocketOf("a"));
  ASSERT_TRUE(c.ok());
  auto driver = client::VirtioBlkDriver::Create(c->get(), {});
  ASSERT_TRUE(driver.ok());
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE((*driver)->Write(0, 0, static_cast<uint64_t>(i), 512, 1).ok());
    ASSERT_TRUE((*driver)->WaitFor(0, 1, seconds(5)).ok());
  }
  auto counters = m.Counters("a");
  ASSERT_EQ(counters.size(), 1u);
  const DeviceCountersSnapshot& s = counters[0];
  EXPECT_EQ(s.connects, 1u);
  EXPECT_TRUE(s.client_connected);
  EXPECT_GE(s.dma_regions, 1u);
  EXPECT_GT(s.dma_bytes, 0u);
  EXPECT_GT(s.poll_calls, 0u);
  bool found = false;
  for (const auto& op : s.counters.operations) {
    if (op.name != "write") continue;
    found = true;
    EXPECT_EQ(op.requests, 5u);
    EXPECT_EQ(op.bytes, 5u * 512);
  }
  EXPECT_TRUE(found);
  EXPECT_TRUE(m.Counters("nope").empty());
  auto threads = m.PollThreads();
  ASSERT_EQ(threads.size(), 1u);
  EXPECT_EQ(threads[0].devices, 1u);
}

TEST_F(DeviceManagerTest, PinnedPollThreadReportsTheNumaNodeOfItsCpu) {
  DeviceManager::Options o = FastOptions(2);
  o.thread_cpus = {{0}, {}};
  DeviceManager m(o);
  DevicePlan b = Plan("b");
  b.poll_thread = 1;
  m.Apply({Plan("a"), b});
  DeviceListSnapshot s = m.Devices();
  EXPECT_EQ(s.devices[0].numa_node, NumaNodeOfCpu(0));
  EXPECT_EQ(s.devices[1].numa_node, -1) << "an unpinned thread has no NUMA node";
  cpu_set_t set;
  CPU_ZERO(&set);
  m.PostToPollThread(0, [&] { (void)sched_getaffinity(0, sizeof(set), &set); });
  m.Counters("");  // runs after the posted task on every thread
  EXPECT_TRUE(CPU_ISSET(0, &set));
  EXPECT_EQ(CPU_COUNT(&set), 1);
}

TEST_F(DeviceManagerTest, ShutdownEndsSessionsAndRemovesEverySocket) {
  auto m = std::make_unique<DeviceManager>(FastOptions());
  m->Apply({Plan("a"), Plan("b")});
  auto c = client::Client::Connect(SocketOf("a"));
  ASSERT_TRUE(c.ok());
  m->Shutdown();
  EXPECT_FALSE(Exists(SocketOf("a")));
  EXPECT_FALSE(Exists(dir_.File("b")));
  EXPECT_FALSE((*c)->GetDeviceInfo().ok()) << "the session is closed";
  EXPECT_TRUE(m->shut_down());
}

}  // namespace
}  // namespace vfu::service
