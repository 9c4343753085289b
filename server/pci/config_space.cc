#include "server/pci/config_space.h"

#include <bit>
#include <string>

namespace vfu::pci {

ConfigSpace::ConfigSpace(size_t size) : bytes_(size, 0), writable_(size, 0), w1c_(size, 0) {
  // Writable bits every type-0 function has.
  SetWritable16(kCommand, kCommandIo | kCommandMemory | kCommandBusMaster | kCommandParity |
                              kCommandSerr | kCommandIntxDisable);
  SetWriteOneToClear16(kStatus, kStatusErrorBits);
  writable_[kCacheLineSize] = 0xff;
  writable_[kLatencyTimer] = 0xff;
  writable_[kInterruptLine] = 0xff;
  reset_bytes_ = bytes_;
}

void ConfigSpace::Set16(uint32_t off, uint16_t v) {
  bytes_[off] = v & 0xff;
  bytes_[off + 1] = v >> 8;
}

void ConfigSpace::Set32(uint32_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) bytes_[off + i] = (v >> (8 * i)) & 0xff;
}

uint16_t ConfigSpace::Get16(uint32_t off) const {
  return static_cast<uint16_t>(bytes_[off] | (bytes_[off + 1] << 8));
}

uint32_t ConfigSpace::Get32(uint32_t off) const {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{bytes_[off + i]} << (8 * i);
  return v;
}

void ConfigSpace::SetWritable(uint32_t off, std::span<const uint8_t> mask) {
  for (size_t i = 0; i < mask.size(); ++i) writable_[off + i] = mask[i];
}

void ConfigSpace::SetWritable16(uint32_t off, uint16_t mask) {
  writable_[off] = mask & 0xff;
  writable_[off + 1] = mask >> 8;
}

void ConfigSpace::SetWritable32(uint32_t off, uint32_t mask) {
  for (int i = 0; i < 4; ++i) writable_[off + i] = (mask >> (8 * i)) & 0xff;
}

void ConfigSpace::SetWriteOneToClear16(uint32_t off, uint16_t mask) {
  w1c_[off] = mask & 0xff;
  w1c_[off + 1] = mask >> 8;
}

Status ConfigSpace::DeclareBar(int index, uint64_t size, uint32_t flags) {
  bool io = flags & kBarIo;
  bool is64 = flags & kBarMem64;
  if (index < 0 || index > 5 || (is64 && index == 5)) return MakeError(EINVAL, "bad BAR index");
  if (!std::has_single_bit(size) || size < (io ? 4u : 16u)) {
    return MakeError(EINVAL, "BAR size " + std::to_string(size) + " is not a power of two >= 16");
  }
  uint32_t off = kBar0 + 4 * static_cast<uint32_t>(index);
  uint32_t type_bits = io ? kBarIo : (flags & (kBarMem64 | kBarPrefetch));
  uint64_t address_mask = ~(size - 1);
  Set32(off, type_bits);
  SetWritable32(off, static_cast<uint32_t>(address_mask) & (io ? ~0x3u : ~0xfu));
  if (is64) {
    Set32(off + 4, 0);
    SetWritable32(off + 4, static_cast<uint32_t>(address_mask >> 32));
  }
  bar_sizes_[index] = size;
  reset_bytes_ = bytes_;
  return Status::Ok();
}

void ConfigSpace::Read(uint32_t off, std::span<uint8_t> out) const {
  for (size_t i = 0; i < out.size(); ++i) out[i] = bytes_[off + i];
}

void ConfigSpace::Write(uint32_t off, std::span<const uint8_t> data) {
  for (size_t i = 0; i < data.size(); ++i) {
    uint32_t o = off + static_cast<uint32_t>(i);
    uint8_t v = data[i];
    bytes_[o] = static_cast<uint8_t>((bytes_[o] & ~writable_[o]) | (v & writable_[o]));
    bytes_[o] &= static_cast<uint8_t>(~(v & w1c_[o]));
  }
}

}  // namespace vfu::pci
