// ParentDirectory and CreateParentDirectories: the mkdir -p used for device and control sockets.
#include "server/common/filesystem.h"

#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "tests/support/subprocess.h"

namespace vfu {
namespace {

bool IsDirectory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

TEST(Filesystem, ParentDirectoryOfAbsoluteRelativeAndBareNames) {
  EXPECT_EQ(ParentDirectory("/run/vfu/disk0/vfio-user.sock"), "/run/vfu/disk0");
  EXPECT_EQ(ParentDirectory("/control.sock"), "/");
  EXPECT_EQ(ParentDirectory("run/control.sock"), "run");
  EXPECT_EQ(ParentDirectory("control.sock"), ".");
}

TEST(Filesystem, CreateParentDirectoriesMakesEveryMissingLevelAndLeavesTheFileAlone) {
  testing::TempDir dir;
  std::string socket = dir.File("a/b/c/x.sock");
  ASSERT_TRUE(CreateParentDirectories(socket).ok());
  EXPECT_TRUE(IsDirectory(dir.File("a/b/c")));
  struct stat st {};
  EXPECT_NE(::stat(socket.c_str(), &st), 0) << "the path itself is not created";
  EXPECT_TRUE(CreateParentDirectories(socket).ok()) << "existing directories are fine";
}

TEST(Filesystem, ABareFileNameNeedsNoDirectory) {
  testing::TempDir dir;
  char cwd[4096];
  ASSERT_NE(::getcwd(cwd, sizeof(cwd)), nullptr);
  ASSERT_EQ(::chdir(dir.path().c_str()), 0);
  Status s = CreateParentDirectories("control.sock");
  bool created = IsDirectory(dir.File("control.sock"));
  ASSERT_EQ(::chdir(cwd), 0);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_FALSE(created) << "a directory named like the socket would block its bind";
}

TEST(Filesystem, AFileInTheWayIsAClearError) {
  testing::TempDir dir;
  {
    FILE* f = std::fopen(dir.File("a").c_str(), "w");
    std::fclose(f);
  }
  Status s = CreateParentDirectories(dir.File("a/b/x.sock"));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("cannot create"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace vfu
