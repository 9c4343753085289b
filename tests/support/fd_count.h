// Counting this process's open file descriptors, to prove that a code path leaks none.
#pragma once

#include <cstddef>

namespace vfu::testing {

size_t OpenFdCount();

}  // namespace vfu::testing
