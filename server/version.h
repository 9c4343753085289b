// The project version, reported by --version of every binary.
#pragma once

namespace vfu {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace vfu
