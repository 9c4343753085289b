// The control API over its unix socket, with a real DeviceManager behind it: list, the watch
// stream (full list at once, then after every change), statistics, errors, and shutdown
// ending streams. The client is the generated gRPC stub behind ControlClient.
#include "server/control/control_server.h"

#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "server/client/client.h"
#include "server/client/virtio_blk_driver.h"
#include "server/control/control_client.h"
#include "tests/support/subprocess.h"

namespace vfu::control {
namespace {

namespace pb = ::vfiouser::control::v1alpha1;
using std::chrono::milliseconds;
using std::chrono::seconds;

class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    service::DeviceManager::Options o;
    o.monitor_interval = milliseconds(50);
    manager_ = std::make_unique<service::DeviceManager>(o);
    manager_->Apply({Plan("disk-b"), Plan("disk-a")});
    server_ = std::make_unique<ControlServer>(manager_.get());
    ASSERT_TRUE(server_->Start(ControlSocket()).ok());
  }

  void TearDown() override {
    server_->Shutdown();
    manager_->Shutdown();
  }

  std::string ControlSocket() { return dir_.File("control.sock"); }
  std::string SocketOf(const std::string& id) { return dir_.File(id) + "/vfio-user.sock"; }

  service::DevicePlan Plan(const std::string& id) {
    auto spec = devices::ParseDeviceSpec("virtio-blk,id=" + id + ",socket=" + SocketOf(id) +
                                         ",backend=ram,size=1M");
    EXPECT_TRUE(spec.ok());
    service::DevicePlan p;
    p.spec = *spec;
    p.owner = service::SocketOwnership{::getuid(), ::getgid(), 0660};
    return p;
  }

  testing::TempDir dir_;
  std::unique_ptr<service::DeviceManager> manager_;
  std::unique_ptr<ControlServer> server_;
};

TEST_F(ControlServerTest, ListDevicesReturnsEveryDeviceSortedById) {
  ControlClient client(ControlSocket());
  auto list = client.ListDevices();
  ASSERT_TRUE(list.ok()) << list.error().message;
  ASSERT_EQ(list->devices_size(), 2);
  const pb::Device& a = list->devices(0);
  EXPECT_EQ(a.id(), "disk-a");
  EXPECT_EQ(a.device_class(), "virtio-blk");
  EXPECT_EQ(a.socket_path(), SocketOf("disk-a"));
  EXPECT_EQ(a.health(), pb::HEALTHY);
  EXPECT_FALSE(a.client_connected());
  EXPECT_EQ(a.backend(), "ram");
  EXPECT_EQ(a.size_bytes(), 1u << 20);
  EXPECT_GT(a.generation(), 0u);
  EXPECT_EQ(list->devices(1).id(), "disk-b");
  EXPECT_FALSE(list->server_version().empty());
  struct stat st {};
  ASSERT_EQ(::stat(ControlSocket().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
}

TEST_F(ControlServerTest, WatchSendsTheFullListAtOnceAndAgainOnEveryChange) {
  ControlClient client(ControlSocket());
  std::vector<pb::DeviceList> seen;
  std::unique_ptr<client::Client> vm;
  std::thread reloader;
  Status s = client.Watch(
      [&](const pb::DeviceList& list) {
        seen.push_back(list);
        if (seen.size() == 1) {
          // A VM connects to disk-a...
          auto c = client::Client::Connect(SocketOf("disk-a"));
          EXPECT_TRUE(c.ok());
          if (c.ok()) vm = std::move(*c);
          return true;
        }
        if (seen.size() == 2) {
          // ...then a device is added by a reload.
          reloader = std::thread([this] {
            manager_->Apply({Plan("disk-a"), Plan("disk-b"), Plan("disk-c")});
          });
          return true;
        }
        return list.devices_size() != 3;
      },
      seconds(10));
  if (reloader.joinable()) reloader.join();
  ASSERT_TRUE(s.ok()) << s.message();
  ASSERT_GE(seen.size(), 3u);
  EXPECT_EQ(seen[0].devices_size(), 2) << "the first message is the full current list";
  EXPECT_TRUE(seen[1].devices(0).client_connected());
  EXPECT_NE(seen[1].devices(0).client().find("pid " + std::to_string(::getpid())),
            std::string::npos)
      << seen[1].devices(0).client();
  EXPECT_GT(seen[1].generation(), seen[0].generation());
  EXPECT_GT(seen[1].devices(0).generation(), seen[0].devices(0).generation());
  EXPECT_EQ(seen[1].devices(1).generation(), seen[0].devices(1).generation())
      << "an unchanged device keeps its generation";
  EXPECT_EQ(seen.back().devices_size(), 3);
  EXPECT_EQ(seen.back().devices(2).id(), "disk-c");
}

TEST_F(ControlServerTest, StatsCountTrafficAndUnknownIdsAreNotFound) {
  auto c = client::Client::Connect(SocketOf("disk-a"));
  ASSERT_TRUE(c.ok());
  auto driver = client::VirtioBlkDriver::Create(c->get(), {});
  ASSERT_TRUE(driver.ok());
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE((*driver)->Read(0, 0, 0, 4096, 1).ok());
    ASSERT_TRUE((*driver)->WaitFor(0, 1, seconds(5)).ok());
  }
  ControlClient client(ControlSocket());
  auto stats = client.GetStats("disk-a");
  ASSERT_TRUE(stats.ok()) << stats.error().message;
  ASSERT_EQ(stats->devices_size(), 1);
  const pb::DeviceStats& d = stats->devices(0);
  EXPECT_EQ(d.id(), "disk-a");
  EXPECT_TRUE(d.client_connected());
  EXPECT_EQ(d.connects(), 1u);
  EXPECT_GE(d.dma_regions(), 1u);
  const pb::OperationStats* read = nullptr;
  for (const auto& op : d.operations()) {
    if (op.operation() == "read") read = &op;
  }
  ASSERT_NE(read, nullptr);
  EXPECT_EQ(read->requests(), 4u);
  EXPECT_EQ(read->bytes(), 4u * 4096);
  EXPECT_EQ(read->latency().count(), 4u);
  ASSERT_EQ(read->latency().bucket_counts_size(), read->latency().upper_bounds_seconds_size());
  EXPECT_LE(read->latency().bucket_counts(read->latency().bucket_counts_size() - 1), 4u);
  EXPECT_EQ(stats->poll_threads_size(), 1);

  auto all = client.GetStats();
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->devices_size(), 2);

  auto missing = client.GetStats("nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("no device with id 'nope'"), std::string::npos);
}

TEST_F(ControlServerTest, ShutdownEndsOpenWatchStreamsAndRemovesTheSocket) {
  ControlClient client(ControlSocket());
  std::atomic<int> lists{0};
  std::thread watcher([&] {
    (void)client.Watch(
        [&](const pb::DeviceList&) {
          ++lists;
          return true;
        },
        seconds(20));
  });
  auto deadline = std::chrono::steady_clock::now() + seconds(5);
  while (lists.load() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_GE(lists.load(), 1);
  server_->Shutdown();
  watcher.join();  // returns because the stream ended, long before its 20 s deadline
  struct stat st {};
  EXPECT_NE(::stat(ControlSocket().c_str(), &st), 0);
}

TEST(ControlServer, AnUnreachableSocketIsAClearError) {
  testing::TempDir dir;
  ControlClient client(dir.File("nothing.sock"), milliseconds(300));
  auto list = client.ListDevices();
  ASSERT_FALSE(list.ok());
  EXPECT_NE(list.error().message.find("nothing.sock"), std::string::npos);
}

TEST(ControlServer, ARelativeSocketPathInTheCurrentDirectoryWorks) {
  testing::TempDir dir;
  char cwd[4096];
  ASSERT_NE(::getcwd(cwd, sizeof(cwd)), nullptr);
  ASSERT_EQ(::chdir(dir.path().c_str()), 0);
  service::DeviceManager manager({});
  ControlServer server(&manager);
  Status s = server.Start("control.sock");
  bool listed = s.ok() && ControlClient(dir.File("control.sock")).ListDevices().ok();
  server.Shutdown();
  ASSERT_EQ(::chdir(cwd), 0);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(listed);
}

TEST(ControlServer, AFileThatIsNotASocketIsNotReplaced) {
  testing::TempDir dir;
  std::string path = dir.File("control.sock");
  {
    FILE* f = std::fopen(path.c_str(), "w");
    std::fclose(f);
  }
  service::DeviceManager manager({});
  ControlServer server(&manager);
  Status s = server.Start(path);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("not a socket"), std::string::npos);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
}

}  // namespace
}  // namespace vfu::control
