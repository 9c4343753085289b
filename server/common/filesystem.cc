#include "server/common/filesystem.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

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

}  // namespace vfu
