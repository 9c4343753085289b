// ParentDirectory and CreateParentDirectories: the mkdir -p used for device and control sockets.
#include "server/common/filesystem.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>

#include <gtest/gtest.h>

#include "server/common/unique_fd.h"
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

bool CreateFileWithMode(const std::string& path, mode_t mode) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return false;
  std::fclose(f);
  return ::chmod(path.c_str(), mode) == 0;
}

int BindSocket(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  return fd;
}

TEST(Filesystem, SetSocketOwnerNoFollowChangesTheSocket) {
  testing::TempDir dir;
  std::string sock = dir.File("s.sock");
  UniqueFd fd(BindSocket(sock));
  Status s = SetSocketOwnerNoFollow(sock, 107, 108, 0640);
  ASSERT_TRUE(s.ok()) << s.message();
  struct stat st {};
  ASSERT_EQ(::lstat(sock.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  EXPECT_EQ(st.st_uid, 107u);
  EXPECT_EQ(st.st_gid, 108u);
}

// The socket swapped for a symlink to another file (by whoever may write into the socket's
// directory) between bind and chown: the file the symlink names must keep its owner and mode.
TEST(Filesystem, SetSocketOwnerNoFollowRefusesASymlinkAndLeavesItsTargetAlone) {
  testing::TempDir dir;
  std::string target = dir.File("precious");
  ASSERT_TRUE(CreateFileWithMode(target, 0600));
  std::string sock = dir.File("s.sock");
  ASSERT_EQ(::symlink(target.c_str(), sock.c_str()), 0);
  Status s = SetSocketOwnerNoFollow(sock, 107, 108, 0666);
  EXPECT_FALSE(s.ok());
  struct stat st {};
  ASSERT_EQ(::stat(target.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_uid, ::geteuid());
}

TEST(Filesystem, SetSocketOwnerNoFollowRefusesARegularFile) {
  testing::TempDir dir;
  std::string file = dir.File("not-a-socket");
  ASSERT_TRUE(CreateFileWithMode(file, 0600));
  Status s = SetSocketOwnerNoFollow(file, 107, 108, 0666);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("not a socket"), std::string::npos) << s.message();
  struct stat st {};
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

}  // namespace
}  // namespace vfu
