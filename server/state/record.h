// State records: the live state of a device and its session written to bytes plus a list of
// fds, so that it can leave the process (a planned handoff to a new server, the keeper that
// outlives a crash) and be restored into a fresh one that goes on serving the same client.
//
// Layout: a header (magic "VFUS", format version), then sections. Each section is a tag (which
// component), that component's own state version, a byte length and the payload; payloads are
// little-endian integers and length-prefixed byte strings. An fd is written as its index in the
// record's fd list (sent alongside, e.g. with SCM_RIGHTS).
//
// Reading is checked and all-or-nothing: a Reader never reads past its bytes, a section must be
// read to its end, a newer format or component version than this build knows is refused with
// a message that names it. Errors are sticky: after the first one every read returns zero, so
// a component reads all its fields into locals, then checks status() once, then commits them;
// a refused record changes nothing.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "server/common/status.h"

namespace vfu::state {

inline constexpr uint32_t kRecordMagic = 0x53554656;  // "VFUS", little-endian
inline constexpr uint16_t kRecordFormatVersion = 1;

// One tag per kind of component state.
enum class Tag : uint16_t {
  kConfigSpace = 1,
  kMsix = 2,
  kVirtqueue = 3,
  kVirtioPci = 4,
  kDmaMaps = 5,
  kIrqs = 6,
  kInflight = 7,
  kPciFunction = 8,
  kSession = 9,
  kEndpoint = 10,
  kDeviceSet = 11,
};
const char* TagName(Tag tag);

class Writer {
 public:
  Writer();

  void U8(uint8_t v) { bytes_.push_back(v); }
  void U16(uint16_t v) { Put(v, 2); }
  void U32(uint32_t v) { Put(v, 4); }
  void U64(uint64_t v) { Put(v, 8); }
  void Bool(bool v) { U8(v ? 1 : 0); }
  // A byte string: its length (u32), then the bytes.
  void Bytes(std::span<const uint8_t> data);
  // A string: its length (u32), then the bytes.
  void String(const std::string& text) {
    Bytes({reinterpret_cast<const uint8_t*>(text.data()), text.size()});
  }
  // A vector<bool> as a length (u32) and one byte per entry.
  void Bits(const std::vector<bool>& bits);
  // An fd: its index in fds(). The fd is not duplicated: it must stay open until the record
  // has been sent or copied.
  void Fd(int fd);

  // Sections nest: Begin returns a mark for End, which fills in the length.
  size_t BeginSection(Tag tag, uint16_t version);
  void EndSection(size_t mark);

  const std::vector<uint8_t>& bytes() const { return bytes_; }
  const std::vector<int>& fds() const { return fds_; }

 private:
  void Put(uint64_t v, int width);

  std::vector<uint8_t> bytes_;
  std::vector<int> fds_;
};

class Reader {
 public:
  // A whole record: checks the magic and the format version.
  static Result<Reader> Open(std::span<const uint8_t> bytes, std::span<const int> fds);

  uint8_t U8() { return static_cast<uint8_t>(Get(1)); }
  uint16_t U16() { return static_cast<uint16_t>(Get(2)); }
  uint32_t U32() { return static_cast<uint32_t>(Get(4)); }
  uint64_t U64() { return Get(8); }
  bool Bool();
  // A byte string of at most `max` bytes.
  std::vector<uint8_t> Bytes(size_t max);
  std::string String(size_t max) {
    std::vector<uint8_t> b = Bytes(max);
    return {b.begin(), b.end()};
  }
  // A byte string that must be exactly out.size() bytes long.
  void BytesInto(std::span<uint8_t> out);
  std::vector<bool> Bits(size_t max);
  // An fd of the record's list (borrowed: the caller duplicates what it keeps), or -1 after an
  // error.
  int Fd();

  // The next section, which must have `tag` and a version from 1 to `max_version`; *version
  // tells which. The returned Reader covers the payload; this one moves past it.
  Reader Section(Tag tag, uint16_t max_version, uint16_t* version);
  // Fails the reader unless everything was read (a section with bytes left over is a record
  // of another layout).
  void ExpectEnd();
  // A check by the caller on what it read (e.g. a size that must match the device's).
  void Fail(const std::string& message);

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  bool at_end() const { return pos_ == bytes_.size(); }

 private:
  Reader(std::span<const uint8_t> bytes, std::span<const int> fds, std::string where)
      : bytes_(bytes), fds_(fds), where_(std::move(where)) {}
  uint64_t Get(int width);
  bool Need(size_t n);

  std::span<const uint8_t> bytes_;
  std::span<const int> fds_;
  std::string where_;  // "state record" or "<section> state", for messages
  size_t pos_ = 0;
  Status status_;
};

}  // namespace vfu::state
