// vfio-user-server as a node service, as a process: reload on SIGHUP and on file change,
// a broken file on reload changes nothing, settings that need a restart are refused, health
// over the control API's watch stream when the backing file goes and comes back, and
// `vfio-user-ctl list/stats` against the running server.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include "server/client/client.h"
#include "server/client/virtio_blk_driver.h"
#include "server/control/control_client.h"
#include "tests/support/subprocess.h"

namespace vfu::testing {
namespace {

namespace pb = ::vfiouser::control::v1alpha1;
using std::chrono::milliseconds;
using std::chrono::seconds;

class NodeService : public ::testing::Test {
 protected:
  // Writes the config atomically (write + rename), as editors and ConfigMap updates do.
  void WriteConfig(const std::vector<std::string>& device_yaml, const std::string& extra = "") {
    std::string text =
        "apiVersion: vfio-user.io/v1alpha1\nkind: ServerConfig\nsettings:\n"
        "  socketRoot: " +
        dir_.File("run") + "\n" + "  socketOwner: {uid: " + std::to_string(::getuid()) +
        ", gid: " + std::to_string(::getgid()) + ", mode: \"0660\"}\n" + extra + "devices:\n";
    for (const auto& d : device_yaml) text += d;
    if (device_yaml.empty()) text += "  []\n";
    std::string tmp = dir_.File("cfg/.server.yaml.tmp");
    ::mkdir(dir_.File("cfg").c_str(), 0755);
    { std::ofstream(tmp) << text; }
    ASSERT_EQ(std::rename(tmp.c_str(), Config().c_str()), 0);
  }

  static std::string Ram(const std::string& id, const std::string& size = "1Mi") {
    return "  - id: " + id + "\n    class: virtio-blk\n    backend: {type: ram, size: " + size +
           "}\n";
  }
  std::string File(const std::string& id, const std::string& path) {
    return "  - id: " + id + "\n    class: virtio-blk\n    backend: {type: file, path: " + path +
           "}\n";
  }

  std::string Config() { return dir_.File("cfg/server.yaml"); }
  std::string Control() { return dir_.File("run/control.sock"); }
  std::string SocketOf(const std::string& id) { return dir_.File("run/" + id + "/vfio-user.sock"); }

  void StartServer() {
    server_ = std::make_unique<Subprocess>(VFU_SERVER_BINARY,
                                           std::vector<std::string>{"--config", Config()});
    ASSERT_TRUE(server_->Start());
    ASSERT_TRUE(server_->WaitForOutput("vfio-user-server ready", seconds(10))) << server_->Output();
  }

  void StopServer() {
    server_->Signal(SIGTERM);
    auto code = server_->Wait(seconds(10));
    EXPECT_EQ(code, 0) << server_->Output();
  }

  std::vector<std::string> Ids() {
    control::ControlClient client(Control());
    auto list = client.ListDevices();
    EXPECT_TRUE(list.ok()) << (list.ok() ? "" : list.error().message);
    std::vector<std::string> ids;
    if (list.ok()) {
      for (const auto& d : list->devices()) ids.push_back(d.id());
    }
    return ids;
  }

  // Polls the device list (bounded) until `pred` holds.
  bool WaitForList(const std::function<bool(const pb::DeviceList&)>& pred,
                   milliseconds timeout = milliseconds(10000)) {
    control::ControlClient client(Control());
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      auto list = client.ListDevices();
      if (list.ok() && pred(*list)) return true;
      std::this_thread::sleep_for(milliseconds(20));
    }
    return false;
  }

  TempDir dir_;
  std::unique_ptr<Subprocess> server_;
};

TEST_F(NodeService, SighupReloadAddsAndRemovesDevices) {
  WriteConfig({Ram("a"), Ram("b")});
  StartServer();
  EXPECT_EQ(Ids(), (std::vector<std::string>{"a", "b"}));
  WriteConfig({Ram("b"), Ram("c")});
  server_->Signal(SIGHUP);
  EXPECT_TRUE(WaitForList([](const pb::DeviceList& l) {
    return l.devices_size() == 2 && l.devices(0).id() == "b" && l.devices(1).id() == "c";
  })) << server_->Output();
  EXPECT_TRUE(client::Client::Connect(SocketOf("c")).ok());
  struct stat st {};
  EXPECT_NE(::stat(SocketOf("a").c_str(), &st), 0) << "a's socket is gone";
  StopServer();
}

TEST_F(NodeService, ChangingTheFileReloadsWithoutASignal) {
  WriteConfig({Ram("a")});
  StartServer();
  WriteConfig({Ram("a"), Ram("z")});
  EXPECT_TRUE(WaitForList([](const pb::DeviceList& l) { return l.devices_size() == 2; }))
      << server_->Output();
  EXPECT_TRUE(server_->WaitForOutput("trigger=\"file change\"", seconds(5)) ||
              server_->WaitForOutput("trigger=file change", seconds(1)))
      << server_->Output();
  StopServer();
}

TEST_F(NodeService, ABrokenFileOnReloadIsReportedWithItsLineAndChangesNothing) {
  WriteConfig({Ram("a")});
  StartServer();
  auto c = client::Client::Connect(SocketOf("a"));
  ASSERT_TRUE(c.ok());
  WriteConfig({Ram("a"), "  - id: Bad_Id\n    class: virtio-blk\n"});
  server_->Signal(SIGHUP);
  ASSERT_TRUE(server_->WaitForOutput("reload failed", seconds(10))) << server_->Output();
  EXPECT_NE(server_->Output().find("server.yaml:"), std::string::npos) << server_->Output();
  EXPECT_EQ(Ids(), std::vector<std::string>{"a"});
  EXPECT_TRUE((*c)->GetDeviceInfo().ok()) << "the connected client is undisturbed";
  StopServer();
}

TEST_F(NodeService, ChangingPollThreadsNeedsARestartAndTheReloadIsRefusedWhole) {
  WriteConfig({Ram("a")});
  StartServer();
  WriteConfig({Ram("a"), Ram("b")}, "  pollThreads: 2\n");
  server_->Signal(SIGHUP);
  ASSERT_TRUE(server_->WaitForOutput("needs a restart", seconds(10))) << server_->Output();
  EXPECT_EQ(Ids(), std::vector<std::string>{"a"}) << "nothing of that reload was applied";
  StopServer();
}

TEST_F(NodeService, ConnectedDeviceRemovedByReloadStaysUntilItsClientLeaves) {
  WriteConfig({Ram("a"), Ram("b")});
  StartServer();
  auto c = client::Client::Connect(SocketOf("a"));
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(WaitForList([](const pb::DeviceList& l) { return l.devices(0).client_connected(); }));
  WriteConfig({Ram("b")});
  server_->Signal(SIGHUP);
  ASSERT_TRUE(WaitForList([](const pb::DeviceList& l) {
    return l.devices_size() == 2 && l.devices(0).removal_pending();
  })) << server_->Output();
  EXPECT_TRUE((*c)->GetDeviceInfo().ok());
  c->reset();
  EXPECT_TRUE(WaitForList([](const pb::DeviceList& l) { return l.devices_size() == 1; }))
      << server_->Output();
  StopServer();
}

TEST_F(NodeService, WatchStreamReportsAMissingBackingFileAndItsReturn) {
  std::string image = dir_.File("disk.img");
  { std::ofstream(image).write(std::string(1 << 20, '\0').data(), 1 << 20); }
  WriteConfig({File("disk", image), Ram("other")});
  StartServer();
  control::ControlClient client(Control());
  enum { kInitial, kMovedAway, kBack, kDone } phase = kInitial;
  std::chrono::steady_clock::time_point moved_at;
  std::chrono::milliseconds unhealthy_after{0};
  std::string reason;
  Status s = client.Watch(
      [&](const pb::DeviceList& list) {
        const pb::Device& disk = list.devices(0);
        EXPECT_EQ(list.devices(1).health(), pb::HEALTHY) << "the other device is unaffected";
        if (phase == kInitial && disk.health() == pb::HEALTHY) {
          moved_at = std::chrono::steady_clock::now();
          EXPECT_EQ(std::rename(image.c_str(), (image + ".away").c_str()), 0);
          phase = kMovedAway;
        } else if (phase == kMovedAway && disk.health() == pb::UNHEALTHY) {
          unhealthy_after =
              std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - moved_at);
          reason = disk.health_reason();
          EXPECT_EQ(std::rename((image + ".away").c_str(), image.c_str()), 0);
          phase = kBack;
        } else if (phase == kBack && disk.health() == pb::HEALTHY) {
          phase = kDone;
          return false;
        }
        return true;
      },
      seconds(20));
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(phase, kDone) << server_->Output();
  EXPECT_NE(reason.find("disk.img is missing"), std::string::npos) << reason;
  // Reported, not asserted (the design bound is the 200 ms health interval).
  std::printf("unhealthy reported %lld ms after the file went away\n",
              static_cast<long long>(unhealthy_after.count()));
  StopServer();
}

TEST_F(NodeService, WatchStreamReportsRepeatedIoErrorsAndRecoveryAfterASuccess) {
  // The backing file shrinks under the device (an operator mistake or a failing volume): reads
  // past its new end fail with EIO. After 8 failures in a row the device is Unhealthy; once the
  // file is whole again, one successful request heals it.
  std::string image = dir_.File("disk.img");
  { std::ofstream(image).write(std::string(1 << 20, '\0').data(), 1 << 20); }
  WriteConfig({File("disk", image)});
  StartServer();
  auto c = client::Client::Connect(SocketOf("disk"));
  ASSERT_TRUE(c.ok());
  auto driver = client::VirtioBlkDriver::Create(c->get(), {});
  ASSERT_TRUE(driver.ok());
  auto read_one = [&]() -> uint8_t {
    EXPECT_TRUE((*driver)->Read(0, 0, 8, 4096, 1).ok());
    auto done = (*driver)->WaitFor(0, 1, seconds(10));
    return done.ok() && done->size() == 1 ? (*done)[0].status : 0xff;
  };
  ASSERT_EQ(read_one(), 0);
  ASSERT_EQ(::truncate(image.c_str(), 0), 0);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(read_one(), 1) << "VIRTIO_BLK_S_IOERR";

  control::ControlClient client(Control());
  std::string reason;
  bool healed = false;
  Status s = client.Watch(
      [&](const pb::DeviceList& list) {
        const pb::Device& disk = list.devices(0);
        if (reason.empty() && disk.health() == pb::UNHEALTHY) {
          reason = disk.health_reason();
          EXPECT_EQ(::truncate(image.c_str(), 1 << 20), 0);
          EXPECT_EQ(read_one(), 0);
        } else if (!reason.empty() && disk.health() == pb::HEALTHY) {
          healed = true;
          return false;
        }
        return true;
      },
      seconds(20));
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_NE(reason.find("repeated I/O errors"), std::string::npos) << reason;
  EXPECT_TRUE(healed) << server_->Output();
  (*driver)->Abandon();
  StopServer();
}

TEST_F(NodeService, CtlListAndStatsReadTheControlSocket) {
  WriteConfig({Ram("a"), Ram("b")});
  StartServer();
  {
    auto c = client::Client::Connect(SocketOf("a"));
    ASSERT_TRUE(c.ok());
    auto d = client::VirtioBlkDriver::Create(c->get(), {});
    ASSERT_TRUE(d.ok());
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE((*d)->Write(0, 0, 0, 4096, 1).ok());
      ASSERT_TRUE((*d)->WaitFor(0, 1, seconds(5)).ok());
    }
    (*d)->Abandon();
  }
  auto [code, out] = RunToCompletion(VFU_CTL_BINARY, {"list", "--control-socket", Control()});
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("a                    virtio-blk  healthy"), std::string::npos) << out;
  EXPECT_NE(out.find(SocketOf("b")), std::string::npos) << out;

  auto [jcode, json] =
      RunToCompletion(VFU_CTL_BINARY, {"list", "--control-socket", Control(), "-o", "json"});
  EXPECT_EQ(jcode, 0) << json;
  EXPECT_NE(json.find("\"health\": \"HEALTHY\""), std::string::npos) << json;

  auto [scode, stats] =
      RunToCompletion(VFU_CTL_BINARY, {"stats", "a", "--control-socket", Control()});
  EXPECT_EQ(scode, 0) << stats;
  EXPECT_NE(stats.find("connects 1, disconnects 1"), std::string::npos) << stats;
  EXPECT_NE(stats.find("write                    3            12288        0"), std::string::npos)
      << stats;

  auto [mcode, missing] =
      RunToCompletion(VFU_CTL_BINARY, {"stats", "nope", "--control-socket", Control()});
  EXPECT_EQ(mcode, 1);
  EXPECT_NE(missing.find("no device with id 'nope'"), std::string::npos) << missing;

  auto [wcode, watched] = RunToCompletion(
      VFU_CTL_BINARY, {"list", "--watch", "--watch-seconds", "0.5", "--control-socket", Control()});
  EXPECT_EQ(wcode, 0) << watched;
  EXPECT_NE(watched.find("(2 devices"), std::string::npos) << watched;
  StopServer();

  auto [dcode, down] = RunToCompletion(VFU_CTL_BINARY, {"list", "--control-socket", Control()});
  EXPECT_EQ(dcode, 1);
  EXPECT_NE(down.find("control.sock"), std::string::npos) << down;
}

TEST_F(NodeService, CheckValidatesTheFileWithoutStartingAnything) {
  WriteConfig({Ram("a")});
  auto [code, out] = RunToCompletion(VFU_SERVER_BINARY, {"--config", Config(), "--check"});
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("valid (1 devices)"), std::string::npos) << out;
  struct stat st {};
  EXPECT_NE(::stat(SocketOf("a").c_str(), &st), 0);
  WriteConfig({"  - id: a\n    class: nvme-x\n"});
  auto [bad, bad_out] = RunToCompletion(VFU_SERVER_BINARY, {"--config", Config(), "--check"});
  EXPECT_EQ(bad, 2);
  EXPECT_NE(bad_out.find("server.yaml:"), std::string::npos) << bad_out;
}

}  // namespace
}  // namespace vfu::testing
