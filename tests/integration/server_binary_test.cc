// vfio-user-server and vfio-user-ctl as users run them: command-line handling, serving a
// device to a client, and graceful shutdown on SIGTERM.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "server/client/client.h"
#include "server/client/virtio_blk_driver.h"
#include "server/devices/sample_device.h"
#include "tests/support/subprocess.h"

namespace vfu::testing {
namespace {

using std::chrono::seconds;

TEST(ServerBinary, HelpDescribesTheDeviceOption) {
  auto [code, out] = RunToCompletion(VFU_SERVER_BINARY, {"--help"});
  EXPECT_EQ(code, 0);
  EXPECT_NE(out.find("--device"), std::string::npos) << out;
  EXPECT_NE(out.find("sample"), std::string::npos) << out;
}

TEST(ServerBinary, VersionPrintsTheVersion) {
  auto [code, out] = RunToCompletion(VFU_SERVER_BINARY, {"--version"});
  EXPECT_EQ(code, 0);
  EXPECT_NE(out.find("vfio-user-server 0."), std::string::npos) << out;
}

TEST(ServerBinary, NoDevicesIsAnError) {
  auto [code, out] = RunToCompletion(VFU_SERVER_BINARY, {});
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find("no devices"), std::string::npos) << out;
}

TEST(ServerBinary, MalformedDeviceSpecIsReportedAndNothingStarts) {
  TempDir dir;
  std::string sock = dir.File("a.sock");
  auto [code, out] =
      RunToCompletion(VFU_SERVER_BINARY, {"--device", "sample,id=a,socket=" + sock, "--device",
                                          "sample,socket=" + dir.File("b.sock")});
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find("has no id="), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(sock));
}

// The quick form's owner=/mode= (libvirt runs QEMU as its own user, not root).
TEST(ServerBinary, QuickFormOwnerAndModeApplyToTheSocket) {
  if (::geteuid() != 0) GTEST_SKIP() << "giving a socket to uid 107 needs root";
  TempDir dir;
  std::string sock = dir.File("s.sock");
  Subprocess server(VFU_SERVER_BINARY,
                    {"--device", "virtio-blk,id=s,socket=" + sock +
                                     ",backend=ram,size=1M,owner=107:108,mode=0640"});
  ASSERT_TRUE(server.Start());
  ASSERT_TRUE(server.WaitForOutput("vfio-user-server ready", seconds(10))) << server.Output();
  struct stat st {};
  ASSERT_EQ(::stat(sock.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  EXPECT_EQ(st.st_uid, 107u);
  EXPECT_EQ(st.st_gid, 108u);
  auto c = client::Client::Connect(sock);
  ASSERT_TRUE(c.ok()) << c.error().message;
  server.Signal(SIGTERM);
  auto code = server.Wait(seconds(10));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0) << server.Output();
  EXPECT_FALSE(std::filesystem::exists(sock));
  EXPECT_TRUE(std::filesystem::exists(dir.path())) << "the socket's directory was removed";
}

TEST(ServerBinary, QuickFormBadOwnerIsReportedAndNothingStarts) {
  TempDir dir;
  std::string sock = dir.File("s.sock");
  auto [code, out] = RunToCompletion(VFU_SERVER_BINARY,
                                     {"--device", "sample,id=s,socket=" + sock + ",owner=qemu"});
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find("invalid --device"), std::string::npos) << out;
  EXPECT_NE(out.find("owner=qemu must be UID:GID"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(sock));
}

TEST(ServerBinary, UnknownDeviceClassNamesTheKnownOnes) {
  TempDir dir;
  auto [code, out] =
      RunToCompletion(VFU_SERVER_BINARY, {"--device", "gpu,id=g,socket=" + dir.File("g.sock")});
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("unknown device class 'gpu'"), std::string::npos) << out;
  EXPECT_NE(out.find("sample"), std::string::npos) << out;
}

TEST(ServerBinary, RefusesToReplaceARegularFileAtTheSocketPath) {
  TempDir dir;
  std::string path = dir.File("file");
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fclose(f);
  auto [code, out] = RunToCompletion(VFU_SERVER_BINARY, {"--device", "sample,id=s,socket=" + path});
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("is not a socket"), std::string::npos) << out;
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
}

TEST(ServerBinary, ServesTwoDevicesAndStopsCleanlyOnSigterm) {
  TempDir dir;
  std::string a = dir.File("a.sock");
  std::string b = dir.File("b.sock");
  Subprocess server(VFU_SERVER_BINARY, {"--device", "sample,id=a,socket=" + a, "--device",
                                        "sample,id=b,socket=" + b, "--log-format", "json"});
  ASSERT_TRUE(server.Start());
  ASSERT_TRUE(server.WaitForOutput("vfio-user-server ready", seconds(10))) << server.Output();
  for (const std::string& sock : {a, b}) {
    auto client = client::Client::Connect(sock);
    ASSERT_TRUE(client.ok()) << client.error().message;
    auto magic = (*client)->Read<uint32_t>(0, devices::SampleDevice::kRegMagic);
    ASSERT_TRUE(magic.ok());
    EXPECT_EQ(*magic, devices::SampleDevice::kMagic);
  }
  server.Signal(SIGTERM);
  auto code = server.Wait(seconds(10));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0) << server.Output();
  EXPECT_FALSE(std::filesystem::exists(a));
  EXPECT_FALSE(std::filesystem::exists(b));
  // JSON log lines carry the device id.
  EXPECT_NE(server.Output().find("\"device\":\"a\""), std::string::npos) << server.Output();
}

TEST(ServerBinary, SigtermWithAConnectedClientStillExitsZero) {
  TempDir dir;
  std::string sock = dir.File("s.sock");
  Subprocess server(VFU_SERVER_BINARY, {"--device", "sample,id=s,socket=" + sock});
  ASSERT_TRUE(server.Start());
  ASSERT_TRUE(server.WaitForOutput("ready", seconds(10)));
  auto client = client::Client::Connect(sock);
  ASSERT_TRUE(client.ok());
  server.Signal(SIGTERM);
  auto code = server.Wait(seconds(10));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0);
  EXPECT_NE(server.Output().find("session ended"), std::string::npos) << server.Output();
  // The client sees the server go away.
  auto r = (*client)->GetDeviceInfo();
  EXPECT_FALSE(r.ok());
}

TEST(CtlBinary, InfoDescribesTheSampleDevice) {
  TempDir dir;
  std::string sock = dir.File("s.sock");
  Subprocess server(VFU_SERVER_BINARY, {"--device", "sample,id=s,socket=" + sock});
  ASSERT_TRUE(server.Start());
  ASSERT_TRUE(server.WaitForOutput("ready", seconds(10)));
  auto [code, out] = RunToCompletion(VFU_CTL_BINARY, {"info", sock});
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("1b36:10f0"), std::string::npos) << out;
  EXPECT_NE(out.find("region 2 (BAR2): size 4096 read write mmap"), std::string::npos) << out;
  EXPECT_NE(out.find("irq 0 (INTx): 1 vector(s)"), std::string::npos) << out;
}

// bench --rw idle (for handoff benchmarks): attaches, does no I/O for --duration, then one read
// must succeed.
TEST(CtlBinary, BenchIdleAttachesWaitsAndReadsOnceAtTheEnd) {
  TempDir dir;
  std::string sock = dir.File("d.sock");
  Subprocess server(VFU_SERVER_BINARY,
                    {"--device", "virtio-blk,id=d,socket=" + sock + ",backend=null,size=1M"});
  ASSERT_TRUE(server.Start());
  ASSERT_TRUE(server.WaitForOutput("ready", seconds(10)));
  auto [code, out] =
      RunToCompletion(VFU_CTL_BINARY, {"bench", sock, "--rw", "idle", "--duration", "0.2"});
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("idle for 0.2 s; one read afterwards: ok"), std::string::npos) << out;
  EXPECT_EQ(server.Output().find("request failed"), std::string::npos) << server.Output();
}

TEST(CtlBinary, InfoOnAMissingSocketFailsWithTheReason) {
  auto [code, out] = RunToCompletion(VFU_CTL_BINARY, {"info", "/nonexistent/x.sock"});
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("No such file or directory"), std::string::npos) << out;
}

}  // namespace
}  // namespace vfu::testing

namespace vfu::testing {
namespace {

std::string WriteFile(const TempDir& dir, const std::string& name, const std::string& text) {
  std::string path = dir.File(name);
  FILE* f = std::fopen(path.c_str(), "w");
  std::fputs(text.c_str(), f);
  std::fclose(f);
  return path;
}

TEST(ServerConfigFile, ServesEveryDeviceOnItsOwnDirectoryWithTheConfiguredOwner) {
  TempDir dir;
  std::string root = dir.File("sockets");
  std::string cfg = WriteFile(dir, "server.yaml", R"(apiVersion: vfio-user.io/v1alpha1
kind: ServerConfig
settings:
  socketRoot: )" + root + R"(
  pollThreads: 2
  socketOwner: {uid: 107, gid: 107, mode: "0660"}
devices:
  - id: disk0
    class: virtio-blk
    backend: {type: ram, size: 8Mi}
    pollThread: 1
  - id: probe
    class: sample
)");
  Subprocess server(VFU_SERVER_BINARY, {"--config", cfg});
  ASSERT_TRUE(server.Start());
  ASSERT_TRUE(server.WaitForOutput("vfio-user-server ready", std::chrono::seconds(10)))
      << server.Output();
  EXPECT_NE(server.Output().find("poll_threads=2"), std::string::npos) << server.Output();
  for (const char* id : {"disk0", "probe"}) {
    std::string sock = root + "/" + id + "/vfio-user.sock";
    struct stat st {};
    ASSERT_EQ(::stat(sock.c_str(), &st), 0) << sock;
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0660u);
    EXPECT_EQ(st.st_uid, 107u);
    EXPECT_EQ(st.st_gid, 107u);
    struct stat dst {};
    ASSERT_EQ(::stat((root + "/" + id).c_str(), &dst), 0);
    EXPECT_EQ(dst.st_mode & 0777, 0750u);
    auto c = client::Client::Connect(sock);
    ASSERT_TRUE(c.ok()) << c.error().message;
    EXPECT_TRUE((*c)->GetDeviceInfo().ok());
  }
  server.Signal(SIGTERM);
  auto code = server.Wait(std::chrono::seconds(10));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0) << server.Output();
  EXPECT_FALSE(std::filesystem::exists(root + "/disk0/vfio-user.sock"));
}

TEST(ServerConfigFile, AnErrorNamesFileAndLineAndNothingStarts) {
  TempDir dir;
  std::string root = dir.File("sockets");
  std::string cfg =
      WriteFile(dir, "bad.yaml",
                "apiVersion: vfio-user.io/v1alpha1\nsettings:\n  socketRoot: " + root +
                    "\ndevices:\n  - id: a\n    class: sample\n  - id: b\n    class: virtio-blk\n  "
                    "  backend: {type: ram, size: 1Mi}\n    queues: 0\n");
  auto [code, out] = RunToCompletion(VFU_SERVER_BINARY, {"--config", cfg});
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find(cfg + ":10: queues must be between 1 and 64"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(root));
}

TEST(ServerConfigFile, ConfigAndDeviceTogetherAreRefused) {
  TempDir dir;
  auto [code, out] = RunToCompletion(
      VFU_SERVER_BINARY,
      {"--config", dir.File("x.yaml"), "--device", "sample,id=a,socket=" + dir.File("a.sock")});
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find("either --config or --device"), std::string::npos) << out;
}

}  // namespace
}  // namespace vfu::testing

namespace vfu::testing {
namespace {

TEST(ServerShutdown, SigtermLetsInFlightWritesFinishAndLeavesAcknowledgedDataInTheFile) {
  TempDir dir;
  std::string image = dir.File("disk.img");
  {
    FILE* f = std::fopen(image.c_str(), "w");
    ASSERT_EQ(::ftruncate(fileno(f), 16 << 20), 0);
    std::fclose(f);
  }
  std::string sock = dir.File("d.sock");
  Subprocess server(VFU_SERVER_BINARY,
                    {"--device", "virtio-blk,id=d,socket=" + sock + ",backend=file,path=" + image});
  ASSERT_TRUE(server.Start());
  ASSERT_TRUE(server.WaitForOutput("ready", std::chrono::seconds(10))) << server.Output();
  auto c = client::Client::Connect(sock);
  ASSERT_TRUE(c.ok());
  auto d = client::VirtioBlkDriver::Create(c->get(), {});
  ASSERT_TRUE(d.ok()) << d.error().message;
  client::VirtioBlkDriver& drv = **d;
  // 16 acknowledged writes, then a FLUSH, then 16 more writes left in flight.
  constexpr int kSlots = 16;
  for (int round = 0; round < 2; ++round) {
    for (uint16_t s = 0; s < kSlots; ++s) {
      std::memset(drv.slot_buffer(0, s), 0x40 + round, 4096);
      uint64_t sector = (round * kSlots + s) * 8u;
      ASSERT_TRUE(drv.Write(0, s, sector, 4096, sector).ok());
    }
    if (round == 0) {
      auto acked = drv.WaitFor(0, kSlots, std::chrono::seconds(10));
      ASSERT_TRUE(acked.ok()) << acked.error().message;
      ASSERT_TRUE(drv.Flush(0, 0, 999).ok());
      auto flushed = drv.WaitFor(0, 1, std::chrono::seconds(10));
      ASSERT_TRUE(flushed.ok());
      ASSERT_EQ((*flushed)[0].status, 0);
    }
  }
  server.Signal(SIGTERM);
  auto code = server.Wait(std::chrono::seconds(20));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0) << server.Output();
  drv.Abandon();
  // Flushed writes are in the file; so are the in-flight ones the server finished on the way out.
  FILE* f = std::fopen(image.c_str(), "r");
  ASSERT_NE(f, nullptr);
  std::vector<uint8_t> block(4096);
  for (int i = 0; i < 2 * kSlots; ++i) {
    ASSERT_EQ(std::fseek(f, static_cast<long>(i) * 4096, SEEK_SET), 0);
    ASSERT_EQ(std::fread(block.data(), 1, block.size(), f), block.size());
    uint8_t want = i < kSlots ? 0x40 : 0x41;
    if (i < kSlots) {
      for (uint8_t b : block) ASSERT_EQ(b, want) << "flushed block " << i;
    } else {
      // An in-flight write either completed entirely or never started (no torn 4 KiB block
      // is expected from a single pwritev of a file page).
      bool all_new = std::all_of(block.begin(), block.end(), [&](uint8_t b) { return b == want; });
      bool all_old = std::all_of(block.begin(), block.end(), [](uint8_t b) { return b == 0; });
      EXPECT_TRUE(all_new || all_old) << "in-flight block " << i;
    }
  }
  std::fclose(f);
}

}  // namespace
}  // namespace vfu::testing

namespace vfu::testing {
namespace {

TEST(CtlBench, DrivesAVirtioBlkDeviceAndReportsIopsAndLatency) {
  TempDir dir;
  std::string sock = dir.File("d.sock");
  Subprocess server(VFU_SERVER_BINARY,
                    {"--device", "virtio-blk,id=d,socket=" + sock + ",backend=ram,size=16M"});
  ASSERT_TRUE(server.Start());
  ASSERT_TRUE(server.WaitForOutput("ready", std::chrono::seconds(10)));
  auto [code, out] = RunToCompletion(VFU_CTL_BINARY, {"bench", sock, "--rw", "randrw", "--qd", "8",
                                                      "--bs", "8192", "--duration", "0.3"});
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("randrw bs=8192 qd=8:"), std::string::npos) << out;
  EXPECT_NE(out.find("IOPS"), std::string::npos) << out;
  EXPECT_NE(out.find(" 0 errors"), std::string::npos) << out;
  EXPECT_NE(out.find("latency us: p50"), std::string::npos) << out;
  // The device is usable afterwards (the bench resets it on the way out).
  auto [code2, out2] = RunToCompletion(VFU_CTL_BINARY, {"bench", sock, "--duration", "0.1"});
  EXPECT_EQ(code2, 0) << out2;
}

TEST(CtlBench, WritesToAReadOnlyDeviceAreRefusedUpFront) {
  TempDir dir;
  std::string sock = dir.File("d.sock");
  Subprocess server(VFU_SERVER_BINARY, {"--device", "virtio-blk,id=d,socket=" + sock +
                                                        ",backend=ram,size=1M,readonly=on"});
  ASSERT_TRUE(server.Start());
  ASSERT_TRUE(server.WaitForOutput("ready", std::chrono::seconds(10)));
  auto [code, out] = RunToCompletion(VFU_CTL_BINARY, {"bench", sock, "--rw", "write"});
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("read-only"), std::string::npos) << out;
}

TEST(CtlBench, InvalidOptionsAreUsageErrors) {
  auto [code, out] =
      RunToCompletion(VFU_CTL_BINARY, {"bench", "/nonexistent.sock", "--bs", "1000"});
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find("--bs must be a multiple of 512"), std::string::npos) << out;
}

}  // namespace
}  // namespace vfu::testing
