// Small filesystem helpers shared by the server's parts (device sockets, the control socket).
#pragma once

#include <string>

#include "server/common/status.h"

namespace vfu {

// The directory part of a path: "a/b/c.sock" -> "a/b", "/c.sock" -> "/", "c.sock" -> ".".
std::string ParentDirectory(const std::string& path);

// mkdir -p (mode 0755) for the directories above `path`; existing ones are left as they are.
Status CreateParentDirectories(const std::string& path);

}  // namespace vfu
