#include "server/pci/msix.h"

#include <string>

namespace vfu::pci {
namespace {

// Writable bits of each table byte (index within the 16-byte entry): address, data and the
// Mask bit of vector control; the rest of vector control is reserved (reads zero).
uint8_t EntryByteMask(uint32_t byte_in_entry) {
  if (byte_in_entry < kMsixEntryVectorControl) return 0xff;
  return byte_in_entry == kMsixEntryVectorControl ? kMsixVectorMasked : 0;
}

}  // namespace

Status Msix::Init(ConfigSpace* config, uint32_t vectors, int table_bar, uint64_t table_offset,
                  int pba_bar, uint64_t pba_offset) {
  if (initialized()) return MakeError(EEXIST, "MSI-X is already set up");
  if (config == nullptr) return MakeError(EINVAL, "MSI-X needs a config space");
  if (vectors == 0 || vectors > kMsixMaxVectors) {
    return MakeError(EINVAL, "MSI-X vector count " + std::to_string(vectors) + " not in 1..2048");
  }
  uint64_t table_size = uint64_t{vectors} * kMsixEntrySize;
  uint64_t pba_size = (uint64_t{vectors} + 63) / 64 * 8;
  struct Window {
    const char* name;
    int bar;
    uint64_t offset;
    uint64_t size;
  };
  for (const Window& w : {Window{"table", table_bar, table_offset, table_size},
                          Window{"PBA", pba_bar, pba_offset, pba_size}}) {
    std::string what = std::string("MSI-X ") + w.name;
    if (w.bar < 0 || w.bar > 5 || config->bar_size(w.bar) == 0) {
      return MakeError(EINVAL, what + " BAR " + std::to_string(w.bar) + " is not declared");
    }
    if (config->Get32(kBar0 + 4 * static_cast<uint32_t>(w.bar)) & kBarIo) {
      return MakeError(EINVAL, what + " must be in a memory BAR");
    }
    if (w.offset % 8 != 0 || w.offset > 0xffffffffull) {
      return MakeError(EINVAL, what + " offset must be 8-byte aligned and below 4 GiB");
    }
    if (w.offset > config->bar_size(w.bar) || w.size > config->bar_size(w.bar) - w.offset) {
      return MakeError(EINVAL, what + " does not fit in BAR " + std::to_string(w.bar));
    }
  }
  if (table_bar == pba_bar && table_offset < pba_offset + pba_size &&
      pba_offset < table_offset + table_size) {
    return MakeError(EINVAL, "MSI-X table and PBA overlap");
  }

  std::vector<uint8_t> body(kMsixCapSize - 2, 0);
  std::vector<uint8_t> mask(kMsixCapSize - 2, 0);
  auto put32 = [&](std::vector<uint8_t>& v, uint32_t cap_off, uint32_t value) {
    for (uint32_t i = 0; i < 4; ++i) v[cap_off - 2 + i] = static_cast<uint8_t>(value >> (8 * i));
  };
  uint16_t control = static_cast<uint16_t>(vectors - 1);
  uint16_t control_mask = kMsixControlEnable | kMsixControlFunctionMask;
  body[kMsixControl - 2] = static_cast<uint8_t>(control);
  body[kMsixControl - 1] = static_cast<uint8_t>(control >> 8);
  mask[kMsixControl - 2] = static_cast<uint8_t>(control_mask);
  mask[kMsixControl - 1] = static_cast<uint8_t>(control_mask >> 8);
  put32(body, kMsixTable, static_cast<uint32_t>(table_offset) | static_cast<uint32_t>(table_bar));
  put32(body, kMsixPba, static_cast<uint32_t>(pba_offset) | static_cast<uint32_t>(pba_bar));
  auto cap = config->AddCapability(kCapIdMsix, body, mask);
  if (!cap) return cap.error();

  config_ = config;
  cap_ = *cap;
  vectors_ = vectors;
  table_bar_ = table_bar;
  table_offset_ = table_offset;
  pba_bar_ = pba_bar;
  pba_offset_ = pba_offset;
  Reset();
  return Status::Ok();
}

bool Msix::enabled() const {
  return initialized() && (config_->Get16(cap_ + kMsixControl) & kMsixControlEnable);
}

bool Msix::function_masked() const {
  return initialized() && (config_->Get16(cap_ + kMsixControl) & kMsixControlFunctionMask);
}

uint32_t Msix::EntryWord(uint32_t vector, uint32_t word_offset) const {
  size_t at = size_t{vector} * kMsixEntrySize + word_offset;
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v |= uint32_t{table_[at + i]} << (8 * i);
  return v;
}

uint64_t Msix::message_address(uint32_t vector) const {
  if (vector >= vectors_) return 0;
  return EntryWord(vector, kMsixEntryAddrLo) |
         (uint64_t{EntryWord(vector, kMsixEntryAddrHi)} << 32);
}

uint32_t Msix::message_data(uint32_t vector) const {
  return vector < vectors_ ? EntryWord(vector, kMsixEntryData) : 0;
}

bool Msix::entry_masked(uint32_t vector) const {
  return vector < vectors_ && (EntryWord(vector, kMsixEntryVectorControl) & kMsixVectorMasked);
}

bool Msix::entry_written(uint32_t vector) const { return vector < vectors_ && written_[vector]; }

bool Msix::pending(uint32_t vector) const {
  if (vector >= vectors_) return false;
  return pending_[vector] ||
         (context_ != nullptr && context_->IrqPending(wire::kPciMsixIrqIndex, vector));
}

bool Msix::Inside(int bar, uint64_t offset, uint64_t len, int window_bar, uint64_t window_offset,
                  uint64_t window_size) const {
  return bar == window_bar && offset >= window_offset && len <= window_size &&
         offset - window_offset <= window_size - len;
}

bool Msix::Overlaps(int bar, uint64_t offset, uint64_t len) const {
  if (!initialized() || len == 0) return false;
  auto overlaps = [&](int window_bar, uint64_t window_offset, uint64_t window_size) {
    return bar == window_bar && offset < window_offset + window_size &&
           window_offset < offset + len;
  };
  return overlaps(table_bar_, table_offset_, table_size()) ||
         overlaps(pba_bar_, pba_offset_, pba_size());
}

Status Msix::Read(int bar, uint64_t offset, std::span<uint8_t> out) const {
  if (Inside(bar, offset, out.size(), table_bar_, table_offset_, table_size())) {
    uint64_t at = offset - table_offset_;
    for (size_t i = 0; i < out.size(); ++i) out[i] = table_[at + i];
    return Status::Ok();
  }
  if (Inside(bar, offset, out.size(), pba_bar_, pba_offset_, pba_size())) {
    uint64_t at = offset - pba_offset_;
    for (size_t i = 0; i < out.size(); ++i) {
      uint8_t byte = 0;
      uint64_t first = (at + i) * 8;
      for (uint32_t b = 0; b < 8; ++b) {
        if (first + b < vectors_ && pending(static_cast<uint32_t>(first + b))) byte |= 1u << b;
      }
      out[i] = byte;
    }
    return Status::Ok();
  }
  return MakeError(EINVAL, "access straddles the MSI-X table or PBA");
}

Status Msix::Write(int bar, uint64_t offset, std::span<const uint8_t> data) {
  if (Inside(bar, offset, data.size(), table_bar_, table_offset_, table_size())) {
    uint64_t at = offset - table_offset_;
    for (size_t i = 0; i < data.size(); ++i) {
      uint64_t byte = at + i;
      uint8_t mask = EntryByteMask(static_cast<uint32_t>(byte % kMsixEntrySize));
      table_[byte] = static_cast<uint8_t>((table_[byte] & ~mask) | (data[i] & mask));
      written_[byte / kMsixEntrySize] = true;
    }
    DeliverPending();
    return Status::Ok();
  }
  if (Inside(bar, offset, data.size(), pba_bar_, pba_offset_, pba_size())) {
    return Status::Ok();  // the PBA is read-only
  }
  return MakeError(EINVAL, "access straddles the MSI-X table or PBA");
}

bool Msix::Masked(uint32_t vector) const {
  return function_masked() || (written_[vector] && entry_masked(vector));
}

bool Msix::Trigger(uint32_t vector) {
  if (vector >= vectors_ || context_ == nullptr || !enabled()) return false;
  if (Masked(vector)) {
    pending_[vector] = true;
    return false;
  }
  return context_->TriggerIrq(wire::kPciMsixIrqIndex, vector);
}

void Msix::DeliverPending() {
  if (context_ == nullptr || !enabled() || function_masked()) return;
  for (uint32_t v = 0; v < vectors_; ++v) {
    if (pending_[v] && !Masked(v)) {
      pending_[v] = false;
      context_->TriggerIrq(wire::kPciMsixIrqIndex, v);
    }
  }
}

void Msix::Reset() {
  table_.assign(size_t{vectors_} * kMsixEntrySize, 0);
  for (uint32_t v = 0; v < vectors_; ++v) {
    table_[size_t{v} * kMsixEntrySize + kMsixEntryVectorControl] = kMsixVectorMasked;
  }
  written_.assign(vectors_, false);
  pending_.assign(vectors_, false);
}

inline constexpr uint16_t kMsixStateVersion = 1;

void Msix::SaveState(state::Writer& w) const {
  size_t mark = w.BeginSection(state::Tag::kMsix, kMsixStateVersion);
  w.U32(vectors_);
  w.Bytes(table_);
  w.Bits(written_);
  w.Bits(pending_);
  w.EndSection(mark);
}

Status Msix::RestoreState(state::Reader& r) {
  state::Reader s = r.Section(state::Tag::kMsix, kMsixStateVersion, nullptr);
  uint32_t vectors = s.U32();
  if (s.ok() && vectors != vectors_) {
    s.Fail("a table of " + std::to_string(vectors) + " vectors, this device has " +
           std::to_string(vectors_));
  }
  std::vector<uint8_t> table(table_.size());
  s.BytesInto(table);
  std::vector<bool> written = s.Bits(kMsixMaxVectors);
  std::vector<bool> pending = s.Bits(kMsixMaxVectors);
  if (s.ok() && (written.size() != vectors_ || pending.size() != vectors_)) {
    s.Fail("written/pending arrays do not match the table");
  }
  s.ExpectEnd();
  if (!s.ok()) return s.status();
  if (!r.ok()) return r.status();
  table_ = std::move(table);
  written_ = std::move(written);
  pending_ = std::move(pending);
  return Status::Ok();
}

}  // namespace vfu::pci
