// State records: values and sections round-trip, and every malformed or foreign record is
// refused with a message that says what is wrong (truncation, another tag, a newer version,
// leftover bytes, an fd index past the list), never read past its end.
#include "server/state/record.h"

#include <cstdint>
#include <functional>
#include <vector>

#include <gtest/gtest.h>

namespace vfu::state {
namespace {

std::vector<uint8_t> OneSection(uint16_t version, const std::function<void(Writer&)>& body,
                                std::vector<int>* fds = nullptr) {
  Writer w;
  size_t mark = w.BeginSection(Tag::kVirtqueue, version);
  body(w);
  w.EndSection(mark);
  if (fds != nullptr) *fds = w.fds();
  return w.bytes();
}

TEST(StateRecord, ValuesRoundTripInsideASection) {
  std::vector<int> fds;
  auto bytes = OneSection(
      1,
      [](Writer& w) {
        w.U8(0xab);
        w.U16(0xbeef);
        w.U32(0xdeadbeef);
        w.U64(0x0123456789abcdefull);
        w.Bool(true);
        w.Bytes(std::vector<uint8_t>{1, 2, 3});
        w.Bits({true, false, true});
        w.Fd(42);
      },
      &fds);
  auto r = Reader::Open(bytes, fds);
  ASSERT_TRUE(r.ok()) << r.error().message;
  uint16_t version = 0;
  Reader s = r->Section(Tag::kVirtqueue, 1, &version);
  EXPECT_EQ(version, 1);
  EXPECT_EQ(s.U8(), 0xab);
  EXPECT_EQ(s.U16(), 0xbeef);
  EXPECT_EQ(s.U32(), 0xdeadbeefu);
  EXPECT_EQ(s.U64(), 0x0123456789abcdefull);
  EXPECT_TRUE(s.Bool());
  EXPECT_EQ(s.Bytes(16), (std::vector<uint8_t>{1, 2, 3}));
  EXPECT_EQ(s.Bits(16), (std::vector<bool>{true, false, true}));
  EXPECT_EQ(s.Fd(), 42);
  s.ExpectEnd();
  EXPECT_TRUE(s.ok()) << s.status().message();
  r->ExpectEnd();
  EXPECT_TRUE(r->ok());
}

TEST(StateRecord, RefusesAForeignHeaderAndANewerFormat) {
  std::vector<uint8_t> junk = {1, 2, 3, 4, 5, 6, 7};
  auto r = Reader::Open(junk, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("not a vfio-user server state record"), std::string::npos);

  Writer w;
  std::vector<uint8_t> bytes = w.bytes();
  bytes[4] = kRecordFormatVersion + 1;  // the format version, little-endian u16 after the magic
  auto newer = Reader::Open(bytes, {});
  ASSERT_FALSE(newer.ok());
  EXPECT_NE(newer.error().message.find("format version 2 is not supported"), std::string::npos)
      << newer.error().message;
}

TEST(StateRecord, RefusesANewerComponentVersionNamingTheComponent) {
  auto bytes = OneSection(3, [](Writer& w) { w.U32(7); });
  auto r = Reader::Open(bytes, {});
  ASSERT_TRUE(r.ok());
  Reader s = r->Section(Tag::kVirtqueue, 2, nullptr);
  EXPECT_FALSE(s.ok());
  EXPECT_FALSE(r->ok());
  EXPECT_NE(r->status().message().find("virtqueue state version 3 is not supported"),
            std::string::npos)
      << r->status().message();
}

TEST(StateRecord, RefusesASectionOfAnotherComponent) {
  auto bytes = OneSection(1, [](Writer& w) { w.U32(7); });
  auto r = Reader::Open(bytes, {});
  ASSERT_TRUE(r.ok());
  Reader s = r->Section(Tag::kMsix, 1, nullptr);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(r->status().message().find("a virtqueue section where MSI-X was expected"),
            std::string::npos)
      << r->status().message();
}

TEST(StateRecord, EveryTruncationIsRefusedWithoutReadingPastTheEnd) {
  auto bytes = OneSection(1, [](Writer& w) {
    w.U64(1);
    w.Bytes(std::vector<uint8_t>(40, 7));
  });
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    std::vector<uint8_t> part(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(cut));
    auto r = Reader::Open(part, {});
    if (!r.ok()) continue;  // the header itself was cut
    Reader s = r->Section(Tag::kVirtqueue, 1, nullptr);
    s.U64();
    s.Bytes(64);
    s.ExpectEnd();
    EXPECT_FALSE(s.ok() && r->ok()) << "cut at " << cut;
  }
}

TEST(StateRecord, RefusesLeftoverBytesOversizedStringsAndUnknownFds) {
  auto bytes = OneSection(1, [](Writer& w) {
    w.U32(1);
    w.U32(2);
  });
  auto r = Reader::Open(bytes, {});
  ASSERT_TRUE(r.ok());
  Reader s = r->Section(Tag::kVirtqueue, 1, nullptr);
  s.U32();
  s.ExpectEnd();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("4 bytes left over"), std::string::npos);

  auto big = OneSection(1, [](Writer& w) { w.Bytes(std::vector<uint8_t>(100)); });
  auto r2 = Reader::Open(big, {});
  Reader s2 = r2->Section(Tag::kVirtqueue, 1, nullptr);
  EXPECT_TRUE(s2.Bytes(10).empty());
  EXPECT_FALSE(s2.ok());

  auto with_fd = OneSection(1, [](Writer& w) { w.Fd(5); });
  auto r3 = Reader::Open(with_fd, {});  // the record came without its fd
  Reader s3 = r3->Section(Tag::kVirtqueue, 1, nullptr);
  EXPECT_EQ(s3.Fd(), -1);
  EXPECT_NE(s3.status().message().find("fd 0 of a record that carries 0"), std::string::npos);
}

TEST(StateRecord, ErrorsAreStickyAndReadZero) {
  auto bytes = OneSection(1, [](Writer& w) { w.U8(2); });
  auto r = Reader::Open(bytes, {});
  Reader s = r->Section(Tag::kVirtqueue, 1, nullptr);
  EXPECT_FALSE(s.Bool());  // 2 is not a boolean
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.U64(), 0u);
  EXPECT_NE(s.status().message().find("a boolean is 2"), std::string::npos);
}

}  // namespace
}  // namespace vfu::state
