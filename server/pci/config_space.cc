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

Result<uint32_t> ConfigSpace::AddCapability(uint8_t id, std::span<const uint8_t> body,
                                            std::span<const uint8_t> writable) {
  if (!writable.empty() && writable.size() != body.size()) {
    return MakeError(EINVAL, "capability writable mask does not match its body");
  }
  uint32_t off = next_cap_;
  uint64_t end = uint64_t{off} + 2 + body.size();
  if (end > kExtendedCapStart || end > bytes_.size()) {
    return MakeError(ENOSPC, "no room for capability " + std::to_string(id) + " (" +
                                 std::to_string(2 + body.size()) + " bytes at " +
                                 std::to_string(off) + ")");
  }
  bytes_[off] = id;
  bytes_[off + kCapNextOffset] = 0;
  writable_[off] = writable_[off + 1] = 0;
  w1c_[off] = w1c_[off + 1] = 0;
  for (size_t i = 0; i < body.size(); ++i) {
    bytes_[off + 2 + i] = body[i];
    writable_[off + 2 + i] = writable.empty() ? 0 : writable[i];
    w1c_[off + 2 + i] = 0;
  }
  if (last_cap_ == 0) {
    bytes_[kCapabilitiesPointer] = static_cast<uint8_t>(off);
    Set16(kStatus, Get16(kStatus) | kStatusCapList);
  } else {
    bytes_[last_cap_ + kCapNextOffset] = static_cast<uint8_t>(off);
  }
  last_cap_ = off;
  next_cap_ = static_cast<uint32_t>((end + 3) & ~uint64_t{3});
  reset_bytes_ = bytes_;
  return off;
}

Result<uint32_t> ConfigSpace::AddVendorCapability(std::span<const uint8_t> body,
                                                  std::span<const uint8_t> writable) {
  if (!writable.empty() && writable.size() != body.size()) {
    return MakeError(EINVAL, "capability writable mask does not match its body");
  }
  if (body.size() + 3 > 0xff) return MakeError(EINVAL, "vendor capability longer than 255 bytes");
  std::vector<uint8_t> full;
  full.reserve(body.size() + 1);
  full.push_back(static_cast<uint8_t>(body.size() + 3));
  full.insert(full.end(), body.begin(), body.end());
  std::vector<uint8_t> mask;
  if (!writable.empty()) {
    mask.push_back(0);
    mask.insert(mask.end(), writable.begin(), writable.end());
  }
  return AddCapability(kCapIdVendor, full, mask);
}

Result<uint32_t> ConfigSpace::AddExtendedCapability(uint16_t id, uint8_t version,
                                                    std::span<const uint8_t> body,
                                                    std::span<const uint8_t> writable) {
  if (bytes_.size() < kExpressConfigSize) {
    return MakeError(EINVAL, "extended capabilities need a 4 KiB config space");
  }
  if (!writable.empty() && writable.size() != body.size()) {
    return MakeError(EINVAL, "capability writable mask does not match its body");
  }
  if (version > 0xf) return MakeError(EINVAL, "extended capability version above 15");
  uint32_t off = next_ext_cap_;
  uint64_t end = uint64_t{off} + 4 + body.size();
  if (end > bytes_.size()) {
    return MakeError(ENOSPC, "no room for extended capability " + std::to_string(id));
  }
  Set32(off, uint32_t{id} | (uint32_t{version} << 16));
  SetWritable32(off, 0);
  for (int i = 0; i < 4; ++i) w1c_[off + i] = 0;
  for (size_t i = 0; i < body.size(); ++i) {
    bytes_[off + 4 + i] = body[i];
    writable_[off + 4 + i] = writable.empty() ? 0 : writable[i];
    w1c_[off + 4 + i] = 0;
  }
  if (last_ext_cap_ != 0) {
    Set32(last_ext_cap_, (Get32(last_ext_cap_) & 0x000fffffu) | (off << 20));
  }
  last_ext_cap_ = off;
  next_ext_cap_ = static_cast<uint32_t>((end + 3) & ~uint64_t{3});
  reset_bytes_ = bytes_;
  return off;
}

std::optional<uint32_t> ConfigSpace::FindCapability(uint8_t id) const {
  if (!(Get16(kStatus) & kStatusCapList)) return std::nullopt;
  uint32_t off = bytes_[kCapabilitiesPointer] & ~3u;
  // At most 48 dword-aligned capabilities fit in 0x40..0xff: bounds a corrupt (looping) chain.
  for (int n = 0; off >= kCapAreaStart && off < kExtendedCapStart && n < 48; ++n) {
    if (bytes_[off] == id) return off;
    off = bytes_[off + kCapNextOffset] & ~3u;
  }
  return std::nullopt;
}

std::optional<uint32_t> ConfigSpace::FindExtendedCapability(uint16_t id) const {
  if (bytes_.size() < kExpressConfigSize) return std::nullopt;
  uint32_t off = kExtendedCapStart;
  for (int n = 0; off >= kExtendedCapStart && off + 4 <= bytes_.size() && n < 960; ++n) {
    uint32_t header = Get32(off);
    if (header == 0) return std::nullopt;
    if ((header & 0xffff) == id) return off;
    off = (header >> 20) & ~3u;
  }
  return std::nullopt;
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

inline constexpr uint16_t kConfigSpaceStateVersion = 1;

void ConfigSpace::SaveState(state::Writer& w) const {
  size_t mark = w.BeginSection(state::Tag::kConfigSpace, kConfigSpaceStateVersion);
  w.Bytes(bytes_);
  w.EndSection(mark);
}

Status ConfigSpace::RestoreState(state::Reader& r) {
  state::Reader s = r.Section(state::Tag::kConfigSpace, kConfigSpaceStateVersion, nullptr);
  std::vector<uint8_t> bytes(bytes_.size());
  s.BytesInto(bytes);
  s.ExpectEnd();
  if (!s.ok()) return s.status();
  if (!r.ok()) return r.status();
  bytes_ = std::move(bytes);
  return Status::Ok();
}

}  // namespace vfu::pci
