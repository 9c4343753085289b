#include "server/common/filesystem.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "server/common/unique_fd.h"

namespace vfu {

std::string ParentDirectory(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

Status CreateParentDirectories(const std::string& path) {
  std::string dir = ParentDirectory(path);
  if (dir == "." || dir == "/") return Status::Ok();
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    std::string partial = dir.substr(0, pos);
    if (partial.empty()) continue;
    if (::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) {
      return MakeError(errno, "cannot create " + partial + ": " + std::strerror(errno));
    }
  }
  return Status::Ok();
}

Status SetSocketOwnerNoFollow(const std::string& path, uid_t uid, gid_t gid, mode_t mode) {
  auto failed = [&](int err, const std::string& what) {
    return MakeError(err, "cannot set owner " + std::to_string(uid) + ":" + std::to_string(gid) +
                              " and mode of " + path + ": " + what + ": " + std::strerror(err));
  };
  UniqueFd fd(::open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return failed(errno, "open");
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return failed(errno, "fstat");
  if (!S_ISSOCK(st.st_mode)) return failed(ELOOP, "not a socket (replaced after bind?)");
  if (::fchownat(fd.get(), "", uid, gid, AT_EMPTY_PATH) != 0) return failed(errno, "fchownat");
  // chmod has no "empty path" form; the fd's /proc link names exactly this inode.
  std::string proc = "/proc/self/fd/" + std::to_string(fd.get());
  if (::chmod(proc.c_str(), mode) != 0) return failed(errno, "chmod");
  return Status::Ok();
}

}  // namespace vfu
