// Counting this process's open file descriptors and memory mappings, to prove that a code path
// leaks none.
#pragma once

#include <cstddef>
#include <string>

namespace vfu::testing {

size_t OpenFdCount();
// Mappings of the memfd named `memfd_name` in this process (/proc/self/maps).
int MappingsOf(const std::string& memfd_name);

}  // namespace vfu::testing
