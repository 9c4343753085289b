// Small filesystem helpers shared by the server's parts (device sockets, the control socket).
#pragma once

#include <sys/types.h>

#include <string>

#include "server/common/status.h"

namespace vfu {

// The directory part of a path: "a/b/c.sock" -> "a/b", "/c.sock" -> "/", "c.sock" -> ".".
std::string ParentDirectory(const std::string& path);

// mkdir -p (mode 0755) for the directories above `path`; existing ones are left as they are.
Status CreateParentDirectories(const std::string& path);

// Gives the unix socket at `path` an owner and a mode without following a symlink: the path is
// opened with O_PATH | O_NOFOLLOW, must be a socket, and is changed through that fd. Whoever can
// write into the socket's directory could otherwise swap the socket for a symlink (or another
// file) between bind() and chown() and have that file's owner and mode changed by root.
Status SetSocketOwnerNoFollow(const std::string& path, uid_t uid, gid_t gid, mode_t mode);

}  // namespace vfu
