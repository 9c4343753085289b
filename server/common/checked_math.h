// Overflow-safe range arithmetic for offsets and lengths that come from the wire.
#pragma once

#include <cstdint>

namespace vfu {

// True when [offset, offset + count) lies inside [0, size), without overflowing.
constexpr bool RangeWithin(uint64_t offset, uint64_t count, uint64_t size) {
  return offset <= size && count <= size - offset;
}

// True when [a, a + a_len) and [b, b + b_len) intersect. Lengths are non-zero and the ranges do
// not wrap (callers check that first).
constexpr bool RangesOverlap(uint64_t a, uint64_t a_len, uint64_t b, uint64_t b_len) {
  return a < b + b_len && b < a + a_len;
}

// True when base + len is representable (the range does not wrap around 2^64).
constexpr bool RangeFitsAddressSpace(uint64_t base, uint64_t len) {
  return len <= UINT64_MAX - base;
}

}  // namespace vfu
