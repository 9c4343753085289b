// vfio-user-server and vfio-user-ctl as users run them: command-line handling, serving a
// device to a client, and graceful shutdown on SIGTERM.
#include <signal.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "server/client/client.h"
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

TEST(CtlBinary, InfoOnAMissingSocketFailsWithTheReason) {
  auto [code, out] = RunToCompletion(VFU_CTL_BINARY, {"info", "/nonexistent/x.sock"});
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("No such file or directory"), std::string::npos) << out;
}

}  // namespace
}  // namespace vfu::testing
