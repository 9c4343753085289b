#include "server/state/record.h"

#include <cerrno>

namespace vfu::state {

const char* TagName(Tag tag) {
  switch (tag) {
    case Tag::kConfigSpace:
      return "config space";
    case Tag::kMsix:
      return "MSI-X";
    case Tag::kVirtqueue:
      return "virtqueue";
    case Tag::kVirtioPci:
      return "virtio-pci";
    case Tag::kDmaMaps:
      return "DMA map";
    case Tag::kIrqs:
      return "IRQ";
    case Tag::kInflight:
      return "in-flight log";
    case Tag::kPciFunction:
      return "PCI function";
    case Tag::kSession:
      return "session";
    case Tag::kEndpoint:
      return "endpoint";
    case Tag::kDeviceSet:
      return "device set";
  }
  return "unknown";
}

Writer::Writer() {
  U32(kRecordMagic);
  U16(kRecordFormatVersion);
}

void Writer::Put(uint64_t v, int width) {
  for (int i = 0; i < width; ++i) bytes_.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

void Writer::Bytes(std::span<const uint8_t> data) {
  U32(static_cast<uint32_t>(data.size()));
  bytes_.insert(bytes_.end(), data.begin(), data.end());
}

void Writer::Bits(const std::vector<bool>& bits) {
  U32(static_cast<uint32_t>(bits.size()));
  for (bool b : bits) Bool(b);
}

void Writer::Fd(int fd) {
  U32(static_cast<uint32_t>(fds_.size()));
  fds_.push_back(fd);
}

size_t Writer::BeginSection(Tag tag, uint16_t version) {
  U16(static_cast<uint16_t>(tag));
  U16(version);
  size_t mark = bytes_.size();
  U32(0);  // length, filled in by EndSection
  return mark;
}

void Writer::EndSection(size_t mark) {
  auto length = static_cast<uint32_t>(bytes_.size() - mark - 4);
  for (int i = 0; i < 4; ++i) bytes_[mark + i] = static_cast<uint8_t>(length >> (8 * i));
}

Result<Reader> Reader::Open(std::span<const uint8_t> bytes, std::span<const int> fds) {
  Reader r(bytes, fds, "state record");
  uint32_t magic = r.U32();
  uint16_t format = r.U16();
  if (!r.ok() || magic != kRecordMagic) {
    return MakeError(EPROTO, "state record: not a vfio-user server state record (bad header)");
  }
  if (format == 0 || format > kRecordFormatVersion) {
    return MakeError(EPROTO, "state record: format version " + std::to_string(format) +
                                 " is not supported by this server (it reads up to " +
                                 std::to_string(kRecordFormatVersion) + ")");
  }
  return r;
}

bool Reader::Need(size_t n) {
  if (!ok()) return false;
  if (bytes_.size() - pos_ < n) {
    Fail("truncated: " + std::to_string(n) + " more bytes needed at byte " + std::to_string(pos_) +
         " of " + std::to_string(bytes_.size()));
    return false;
  }
  return true;
}

uint64_t Reader::Get(int width) {
  if (!Need(static_cast<size_t>(width))) return 0;
  uint64_t v = 0;
  for (int i = 0; i < width; ++i) v |= uint64_t{bytes_[pos_ + i]} << (8 * i);
  pos_ += static_cast<size_t>(width);
  return v;
}

bool Reader::Bool() {
  uint8_t v = U8();
  if (v > 1) Fail("a boolean is " + std::to_string(v));
  return v == 1;
}

std::vector<uint8_t> Reader::Bytes(size_t max) {
  uint32_t size = U32();
  if (ok() && size > max) {
    Fail("a byte string of " + std::to_string(size) + " bytes, at most " + std::to_string(max) +
         " expected");
  }
  if (!Need(size)) return {};
  std::vector<uint8_t> out(bytes_.begin() + static_cast<ptrdiff_t>(pos_),
                           bytes_.begin() + static_cast<ptrdiff_t>(pos_ + size));
  pos_ += size;
  return out;
}

void Reader::BytesInto(std::span<uint8_t> out) {
  uint32_t size = U32();
  if (ok() && size != out.size()) {
    Fail("a byte string of " + std::to_string(size) + " bytes, " + std::to_string(out.size()) +
         " expected");
  }
  if (!Need(size)) return;
  for (size_t i = 0; i < size; ++i) out[i] = bytes_[pos_ + i];
  pos_ += size;
}

std::vector<bool> Reader::Bits(size_t max) {
  uint32_t size = U32();
  if (ok() && size > max) {
    Fail("a bit array of " + std::to_string(size) + " entries, at most " + std::to_string(max) +
         " expected");
  }
  if (!Need(size)) return {};
  std::vector<bool> out(size);
  for (uint32_t i = 0; i < size; ++i) out[i] = Bool();
  return ok() ? out : std::vector<bool>{};
}

int Reader::Fd() {
  uint32_t index = U32();
  if (!ok()) return -1;
  if (index >= fds_.size()) {
    Fail("fd " + std::to_string(index) + " of a record that carries " +
         std::to_string(fds_.size()));
    return -1;
  }
  return fds_[index];
}

Reader Reader::Section(Tag tag, uint16_t max_version, uint16_t* version) {
  auto found = static_cast<Tag>(U16());
  uint16_t v = U16();
  uint32_t length = U32();
  std::string where = std::string(TagName(tag)) + " state";
  Reader section(std::span<const uint8_t>{}, fds_, where);
  if (ok() && found != tag) {
    Fail(std::string("a ") + TagName(found) + " section where " + TagName(tag) + " was expected");
  } else if (ok() && (v == 0 || v > max_version)) {
    Fail(where + " version " + std::to_string(v) + " is not supported by this server (it reads " +
         "up to " + std::to_string(max_version) + ")");
  }
  if (!Need(length)) {
    section.status_ = status_;
    return section;
  }
  section.bytes_ = bytes_.subspan(pos_, length);
  pos_ += length;
  if (version != nullptr) *version = v;
  return section;
}

void Reader::ExpectEnd() {
  if (ok() && !at_end()) {
    Fail(std::to_string(bytes_.size() - pos_) + " bytes left over (another layout?)");
  }
}

void Reader::Fail(const std::string& message) {
  if (ok()) status_ = MakeError(EPROTO, where_ + ": " + message);
}

}  // namespace vfu::state
