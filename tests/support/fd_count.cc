#include "tests/support/fd_count.h"

#include <dirent.h>

#include <fstream>

namespace vfu::testing {

size_t OpenFdCount() {
  size_t n = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n - 1;  // the directory's own fd
}

int MappingsOf(const std::string& memfd_name) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int n = 0;
  while (std::getline(maps, line)) n += line.find("memfd:" + memfd_name) != std::string::npos;
  return n;
}

}  // namespace vfu::testing
