// The codec's pure functions: framing, VERSION JSON decoding and reply shrinking, the request
// decoders' rules, region access bounds, and the client-side REGION_INFO capability walk.
#include "server/protocol/codec.h"

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/session_harness.h"

namespace vfu::proto {
namespace {

using Buf = std::vector<uint8_t>;

template <typename T>
Buf B(const T& v) {
  Buf out;
  Append(out, v);
  return out;
}

Buf Cat(Buf a, const Buf& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

Buf VersionBytes(uint16_t major, uint16_t minor, const std::string& json, bool nul = true) {
  Buf out = B(wire::Version{major, minor});
  out.insert(out.end(), json.begin(), json.end());
  if (nul) out.push_back(0);
  return out;
}

template <typename T>
int Code(const Result<T>& r) {
  return r.ok() ? 0 : r.error().code;
}

// --- DecodeHeader -----------------------------------------------------------------------------

TEST(DecodeHeader, AcceptsSizesFromSixteenUpToTheMaximum) {
  for (uint32_t size : {16u, 17u, 4096u, kMaxMessageSize}) {
    auto h = DecodeHeader(B(wire::Header{7, 9, size, 0, 0}));
    ASSERT_TRUE(h.ok()) << size;
    EXPECT_EQ(h->msg_id, 7);
    EXPECT_EQ(h->command, 9);
    EXPECT_EQ(h->msg_size, size);
  }
}

TEST(DecodeHeader, FewerThanSixteenBytesIsEinval) {
  Buf full = B(wire::Header{1, 1, 16, 0, 0});
  for (size_t n = 0; n < 16; ++n) {
    EXPECT_EQ(Code(DecodeHeader({full.data(), n})), EINVAL) << n;
  }
}

TEST(DecodeHeader, MsgSizeBelowHeaderIsEinval) {
  for (uint32_t size : {0u, 1u, 15u}) {
    EXPECT_EQ(Code(DecodeHeader(B(wire::Header{1, 1, size, 0, 0}))), EINVAL) << size;
  }
}

TEST(DecodeHeader, MsgSizeAboveMaximumIsE2big) {
  EXPECT_EQ(Code(DecodeHeader(B(wire::Header{1, 1, kMaxMessageSize + 1, 0, 0}))), E2BIG);
  EXPECT_EQ(Code(DecodeHeader(B(wire::Header{1, 1, 0xffffffffu, 0, 0}))), E2BIG);
  // A caller-chosen maximum applies instead of the default.
  EXPECT_TRUE(DecodeHeader(B(wire::Header{1, 1, 64, 0, 0}), 64).ok());
  EXPECT_EQ(Code(DecodeHeader(B(wire::Header{1, 1, 65, 0, 0}), 64)), E2BIG);
}

TEST(DecodeHeader, MaximumMessageFitsTheLargestRegionTransfer) {
  EXPECT_EQ(kMaxMessageSize, sizeof(wire::Header) + sizeof(wire::RegionAccess) + kMaxDataXferSize);
}

// --- DecodeVersion ----------------------------------------------------------------------------

TEST(DecodeVersion, ParsesQemusExactRequest) {
  auto v = DecodeVersion(VersionBytes(0, 0, vfu::testing::kQemuVersionJson));
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->major, 0);
  EXPECT_EQ(v->minor, 0);
  EXPECT_TRUE(v->has_json);
  ASSERT_TRUE(v->caps.max_msg_fds);
  EXPECT_EQ(*v->caps.max_msg_fds, 16u);
  ASSERT_TRUE(v->caps.max_data_xfer_size);
  EXPECT_EQ(*v->caps.max_data_xfer_size, 1048576u);
  ASSERT_TRUE(v->caps.pgsizes);
  EXPECT_EQ(*v->caps.pgsizes, 4096u);
  ASSERT_TRUE(v->caps.max_dma_maps);
  EXPECT_EQ(*v->caps.max_dma_maps, 65535u);
  ASSERT_TRUE(v->caps.write_multiple);
  EXPECT_TRUE(*v->caps.write_multiple);
  EXPECT_TRUE(v->caps.has_migration);
  EXPECT_FALSE(v->caps.has_twin_socket);
  EXPECT_TRUE(v->caps.unknown_keys.empty());
}

TEST(DecodeVersion, NoJsonAndEmptyJsonAreBothValid) {
  auto bare = DecodeVersion(B(wire::Version{0, 3}));
  ASSERT_TRUE(bare.ok());
  EXPECT_FALSE(bare->has_json);
  EXPECT_EQ(bare->minor, 3);
  auto empty = DecodeVersion(VersionBytes(0, 0, ""));
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->has_json);
  EXPECT_FALSE(empty->caps.max_msg_fds);
}

TEST(DecodeVersion, UnknownCapabilitiesAreListedNotRejected) {
  auto v = DecodeVersion(VersionBytes(
      0, 0, R"({"capabilities":{"max_msg_fds":4,"zz_new":1,"aa_other":{"x":[]}},"top":true})"));
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(*v->caps.max_msg_fds, 4u);
  EXPECT_EQ(v->caps.unknown_keys.size(), 2u);
}

TEST(DecodeVersion, TwinSocketObjectIsRecognised) {
  auto v =
      DecodeVersion(VersionBytes(0, 0, R"({"capabilities":{"twin_socket":{"supported":true}}})"));
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->caps.has_twin_socket);
}

TEST(DecodeVersion, RejectsMalformedPayloads) {
  struct Case {
    const char* what;
    Buf payload;
    int code;
  };
  const std::vector<Case> cases = {
      {"3 bytes", Buf{0, 0, 0}, EINVAL},
      {"no NUL", VersionBytes(0, 0, "{}", false), EINVAL},
      {"embedded NUL", VersionBytes(0, 0, std::string("{}\0 ", 4)), EINVAL},
      {"not JSON", VersionBytes(0, 0, "{capabilities}"), EINVAL},
      {"truncated", VersionBytes(0, 0, "{\"capabilities\":{"), EINVAL},
      {"array", VersionBytes(0, 0, "[]"), EINVAL},
      {"string", VersionBytes(0, 0, "\"caps\""), EINVAL},
      {"caps array", VersionBytes(0, 0, R"({"capabilities":[]})"), EINVAL},
      {"caps null", VersionBytes(0, 0, R"({"capabilities":null})"), EINVAL},
      {"fds string", VersionBytes(0, 0, R"({"capabilities":{"max_msg_fds":"8"}})"), EINVAL},
      {"fds negative", VersionBytes(0, 0, R"({"capabilities":{"max_msg_fds":-8}})"), EINVAL},
      {"fds float", VersionBytes(0, 0, R"({"capabilities":{"max_msg_fds":8.0}})"), EINVAL},
      {"xfer bool", VersionBytes(0, 0, R"({"capabilities":{"max_data_xfer_size":true}})"), EINVAL},
      {"pgsizes string", VersionBytes(0, 0, R"({"capabilities":{"pgsizes":"4096"}})"), EINVAL},
      {"maps negative", VersionBytes(0, 0, R"({"capabilities":{"max_dma_maps":-1}})"), EINVAL},
      {"write_multiple number", VersionBytes(0, 0, R"({"capabilities":{"write_multiple":1}})"),
       EINVAL},
      {"migration array", VersionBytes(0, 0, R"({"capabilities":{"migration":[]}})"), EINVAL},
      {"twin_socket bool", VersionBytes(0, 0, R"({"capabilities":{"twin_socket":true}})"), EINVAL},
      {"nested 9", VersionBytes(0, 0, std::string(9, '[') + std::string(9, ']')), EINVAL},
      {"nested 4000", VersionBytes(0, 0, std::string(4000, '{')), EINVAL},
      {"4097 bytes", VersionBytes(0, 0, std::string(4096, ' ')), E2BIG},
      {"10000 brackets", VersionBytes(0, 0, std::string(10000, '[')), E2BIG},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(Code(DecodeVersion(c.payload)), c.code) << c.what;
  }
}

TEST(DecodeVersion, BracketsInsideStringsDoNotCountAsNesting) {
  std::string deep_string = "{\"capabilities\":{},\"note\":\"" + std::string(100, '[') + "\\\"" +
                            std::string(100, '{') + "\"}";
  auto v = DecodeVersion(VersionBytes(0, 0, deep_string));
  EXPECT_TRUE(v.ok()) << v.error().message;
  // Eight levels are fine.
  std::string eight = std::string(7, '[') + "{}" + std::string(7, ']');
  EXPECT_EQ(Code(DecodeVersion(VersionBytes(0, 0, eight))), EINVAL);  // an array, not nesting
  std::string eight_obj = R"({"a":{"b":{"c":{"d":{"e":{"f":{"g":{}}}}}}}})";
  EXPECT_TRUE(DecodeVersion(VersionBytes(0, 0, eight_obj)).ok());
}

TEST(DecodeVersion, JsonOfExactly4096BytesWithNulIsAccepted) {
  std::string json = "{\"p\":\"" + std::string(4095 - 8, 'x') + "\"}";
  ASSERT_EQ(json.size() + 1, kMaxVersionJsonSize);
  EXPECT_TRUE(DecodeVersion(VersionBytes(0, 0, json)).ok());
}

// --- EncodeVersionReply -----------------------------------------------------------------------

Capabilities QemuCaps() {
  auto v = DecodeVersion(VersionBytes(0, 0, vfu::testing::kQemuVersionJson));
  EXPECT_TRUE(v.ok());
  return v->caps;
}

Capabilities ServerCaps() {
  Capabilities s;
  s.max_msg_fds = kAdvertisedMaxMsgFds;
  s.max_data_xfer_size = kMaxDataXferSize;
  s.pgsizes = kPageSize;
  s.max_dma_maps = kMaxDmaMaps;
  s.write_multiple = true;
  return s;
}

nlohmann::json CapsOf(const Buf& payload) {
  auto v = DecodeVersion(payload);
  EXPECT_TRUE(v.ok());
  if (payload.size() <= sizeof(wire::Version)) return nlohmann::json::object();
  std::string text(payload.begin() + sizeof(wire::Version), payload.end() - 1);
  auto doc = nlohmann::json::parse(text);
  return doc["capabilities"];
}

TEST(EncodeVersionReply, WithRoomAnswersEveryProposedCapabilityWithOurValues) {
  Buf reply = EncodeVersionReply(QemuCaps(), ServerCaps(), 4096);
  auto v = DecodeVersion(reply);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->major, wire::kProtocolMajor);
  EXPECT_EQ(v->minor, wire::kProtocolMinor);
  EXPECT_EQ(*v->caps.max_msg_fds, kAdvertisedMaxMsgFds);
  EXPECT_EQ(*v->caps.max_data_xfer_size, kMaxDataXferSize);
  EXPECT_EQ(*v->caps.pgsizes, kPageSize);
  EXPECT_EQ(*v->caps.max_dma_maps, kMaxDmaMaps);
  EXPECT_TRUE(*v->caps.write_multiple);
  EXPECT_FALSE(v->caps.has_migration);  // proposed, but not ours to offer
}

TEST(EncodeVersionReply, ShrinksFromTheTailToFitAndNeverExceedsTheLimit) {
  const Buf full = EncodeVersionReply(QemuCaps(), ServerCaps(), 4096);
  const std::vector<std::string> order = {"max_msg_fds", "max_data_xfer_size", "pgsizes",
                                          "max_dma_maps", "write_multiple"};
  size_t last_count = order.size();
  for (size_t limit = full.size(); limit >= sizeof(wire::Version); --limit) {
    Buf reply = EncodeVersionReply(QemuCaps(), ServerCaps(), limit);
    ASSERT_LE(reply.size(), limit) << limit;
    auto caps = CapsOf(reply);
    // The kept keys are always a prefix of the priority order.
    for (size_t i = 0; i < order.size(); ++i) {
      EXPECT_EQ(caps.contains(order[i]), i < caps.size()) << "limit " << limit << " " << order[i];
    }
    EXPECT_LE(caps.size(), last_count);
    last_count = caps.size();
  }
  EXPECT_EQ(last_count, 0u);
  EXPECT_LT(EncodeVersionReply(QemuCaps(), ServerCaps(), full.size() - 1).size(), full.size());
  EXPECT_FALSE(CapsOf(EncodeVersionReply(QemuCaps(), ServerCaps(), full.size() - 1))
                   .contains("write_multiple"));
}

TEST(EncodeVersionReply, OnlyProposedCapabilitiesAreAnswered) {
  Capabilities client;
  client.pgsizes = 4096;
  Buf reply = EncodeVersionReply(client, ServerCaps(), 4096);
  auto caps = CapsOf(reply);
  EXPECT_EQ(caps.size(), 1u);
  EXPECT_EQ(caps["pgsizes"], kPageSize);
  // Nothing proposed: no JSON at all.
  EXPECT_EQ(EncodeVersionReply(Capabilities{}, ServerCaps(), 4096).size(), sizeof(wire::Version));
}

TEST(EncodeVersionReply, WriteMultipleIsTrueOnlyWhenBothSidesSayTrue) {
  Capabilities client;
  client.write_multiple = false;
  auto caps = CapsOf(EncodeVersionReply(client, ServerCaps(), 4096));
  ASSERT_TRUE(caps.contains("write_multiple"));
  EXPECT_EQ(caps["write_multiple"], false);
}

TEST(EncodeVersionRequest, RoundTripsThroughDecodeVersion) {
  Capabilities c = ServerCaps();
  auto v = DecodeVersion(EncodeVersionRequest(c));
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v->caps.max_msg_fds, *c.max_msg_fds);
  EXPECT_EQ(*v->caps.max_dma_maps, *c.max_dma_maps);
  EXPECT_TRUE(*v->caps.write_multiple);
}

// --- DMA_MAP / DMA_UNMAP decoders -------------------------------------------------------------

TEST(DecodeDmaMap, AcceptsAlignedRangesAndRejectsEverythingElse) {
  auto ok = DecodeDmaMap(B(wire::DmaMap{32, 3, 0x1000, 0x200000, 0x3000}));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->address, 0x200000u);
  EXPECT_TRUE(DecodeDmaMap(B(wire::DmaMap{48, 0, 0, 0, 0x1000})).ok());  // argsz may be larger
  EXPECT_EQ(Code(DecodeDmaMap(Buf(31, 0))), EINVAL);
  EXPECT_EQ(Code(DecodeDmaMap(B(wire::DmaMap{31, 3, 0, 0, 0x1000}))), EINVAL);
  EXPECT_EQ(Code(DecodeDmaMap(B(wire::DmaMap{32, 4, 0, 0, 0x1000}))), EINVAL);
  EXPECT_EQ(Code(DecodeDmaMap(B(wire::DmaMap{32, 3, 0, 0, 0}))), EINVAL);
  EXPECT_EQ(Code(DecodeDmaMap(B(wire::DmaMap{32, 3, 0, 0x800, 0x1000}))), EINVAL);
  EXPECT_EQ(Code(DecodeDmaMap(B(wire::DmaMap{32, 3, 0, 0, 0x1800}))), EINVAL);
  EXPECT_EQ(Code(DecodeDmaMap(B(wire::DmaMap{32, 3, 0x10, 0, 0x1000}))), EINVAL);
  EXPECT_EQ(Code(DecodeDmaMap(B(wire::DmaMap{32, 3, 0, ~0ull - 0xfff, 0x2000}))), EINVAL);
  EXPECT_EQ(Code(DecodeDmaMap(B(wire::DmaMap{32, 3, ~0ull - 0xfff, 0, 0x2000}))), EINVAL);
}

TEST(DecodeDmaUnmap, EnforcesFlagAndRangeRules) {
  EXPECT_TRUE(DecodeDmaUnmap(B(wire::DmaUnmap{24, 0, 0x1000, 0x1000})).ok());
  EXPECT_TRUE(DecodeDmaUnmap(B(wire::DmaUnmap{24, wire::kDmaUnmapFlagAll, 0, 0})).ok());
  EXPECT_EQ(Code(DecodeDmaUnmap(Buf(23, 0))), EINVAL);
  EXPECT_EQ(Code(DecodeDmaUnmap(B(wire::DmaUnmap{23, 0, 0x1000, 0x1000}))), EINVAL);
  EXPECT_EQ(Code(DecodeDmaUnmap(B(wire::DmaUnmap{24, wire::kDmaUnmapFlagAll, 1, 0}))), EINVAL);
  EXPECT_EQ(Code(DecodeDmaUnmap(B(wire::DmaUnmap{24, wire::kDmaUnmapFlagAll, 0, 1}))), EINVAL);
  EXPECT_EQ(Code(DecodeDmaUnmap(
                B(wire::DmaUnmap{24, wire::kDmaUnmapFlagGetDirtyBitmap, 0x1000, 0x1000}))),
            ENOTSUP);
  EXPECT_EQ(Code(DecodeDmaUnmap(B(wire::DmaUnmap{24, 4, 0x1000, 0x1000}))), EINVAL);
  EXPECT_EQ(Code(DecodeDmaUnmap(B(wire::DmaUnmap{24, 0, 0x1000, 0}))), EINVAL);
  EXPECT_EQ(Code(DecodeDmaUnmap(B(wire::DmaUnmap{24, 0, ~0ull, 2}))), EINVAL);
}

TEST(DecodeInfoRequests, ArgszBelowTheStructIsEinval) {
  EXPECT_TRUE(DecodeDeviceInfoRequest(B(wire::DeviceInfo{16, 0, 0, 0})).ok());
  EXPECT_EQ(Code(DecodeDeviceInfoRequest(B(wire::DeviceInfo{15, 0, 0, 0}))), EINVAL);
  EXPECT_EQ(Code(DecodeDeviceInfoRequest(Buf(15, 0))), EINVAL);
  wire::RegionInfo ri{};
  ri.argsz = 32;
  EXPECT_TRUE(DecodeRegionInfoRequest(B(ri)).ok());
  ri.argsz = 31;
  EXPECT_EQ(Code(DecodeRegionInfoRequest(B(ri))), EINVAL);
  EXPECT_EQ(Code(DecodeRegionInfoRequest(Buf(31, 0))), EINVAL);
  EXPECT_TRUE(DecodeIrqInfoRequest(B(wire::IrqInfo{16, 0, 2, 0})).ok());
  EXPECT_EQ(Code(DecodeIrqInfoRequest(B(wire::IrqInfo{15, 0, 2, 0}))), EINVAL);
  EXPECT_EQ(Code(DecodeIrqInfoRequest(Buf(15, 0))), EINVAL);
}

// --- DecodeSetIrqs ----------------------------------------------------------------------------

constexpr uint32_t kNone = wire::kIrqSetDataNone;
constexpr uint32_t kBool = wire::kIrqSetDataBool;
constexpr uint32_t kEfd = wire::kIrqSetDataEventfd;
constexpr uint32_t kMask = wire::kIrqSetActionMask;
constexpr uint32_t kUnmask = wire::kIrqSetActionUnmask;
constexpr uint32_t kTrigger = wire::kIrqSetActionTrigger;

Buf IrqSet(uint32_t flags, uint32_t start, uint32_t count, Buf bools = {}) {
  return Cat(B(wire::IrqSet{20, flags, 2, start, count}), bools);
}

TEST(DecodeSetIrqs, NeedsExactlyOneDataAndOneActionFlag) {
  for (uint32_t data : {kNone, kBool, kEfd}) {
    for (uint32_t action : {kMask, kUnmask, kTrigger}) {
      Buf bools = data == kBool ? Buf{1} : Buf{};
      EXPECT_TRUE(DecodeSetIrqs(IrqSet(data | action, 0, 1, bools), 0).ok()) << data << action;
    }
  }
  EXPECT_EQ(Code(DecodeSetIrqs(IrqSet(kTrigger, 0, 1), 0)), EINVAL);
  EXPECT_EQ(Code(DecodeSetIrqs(IrqSet(kNone, 0, 1), 0)), EINVAL);
  EXPECT_EQ(Code(DecodeSetIrqs(IrqSet(kNone | kBool | kTrigger, 0, 1, {1}), 0)), EINVAL);
  EXPECT_EQ(Code(DecodeSetIrqs(IrqSet(kNone | kMask | kTrigger, 0, 1), 0)), EINVAL);
  EXPECT_EQ(Code(DecodeSetIrqs(IrqSet(kNone | kTrigger | 0x40, 0, 1), 0)), EINVAL);
  EXPECT_EQ(Code(DecodeSetIrqs(IrqSet(kNone | kTrigger | 0x80000000u, 0, 1), 0)), EINVAL);
}

TEST(DecodeSetIrqs, CountZeroOnlyWithDataNoneAndStartZero) {
  EXPECT_TRUE(DecodeSetIrqs(IrqSet(kNone | kTrigger, 0, 0), 0).ok());
  EXPECT_EQ(Code(DecodeSetIrqs(IrqSet(kNone | kTrigger, 1, 0), 0)), EINVAL);
  EXPECT_EQ(Code(DecodeSetIrqs(IrqSet(kEfd | kTrigger, 0, 0), 0)), EINVAL);
  EXPECT_EQ(Code(DecodeSetIrqs(IrqSet(kBool | kTrigger, 0, 0), 0)), EINVAL);
}

TEST(DecodeSetIrqs, FdCountComesFromTheControlMessageNotArgsz) {
  // QEMU's shape: argsz 20 with eventfds attached.
  EXPECT_TRUE(DecodeSetIrqs(IrqSet(kEfd | kTrigger, 0, 4), 4).ok());
  EXPECT_TRUE(DecodeSetIrqs(IrqSet(kEfd | kTrigger, 0, 4), 0).ok());  // de-assign
  EXPECT_EQ(Code(DecodeSetIrqs(IrqSet(kEfd | kTrigger, 0, 4), 3)), EINVAL);
  EXPECT_EQ(Code(DecodeSetIrqs(IrqSet(kEfd | kTrigger, 0, 4), 5)), EINVAL);
  EXPECT_EQ(Code(DecodeSetIrqs(IrqSet(kNone | kTrigger, 0, 1), 1)), EINVAL);
  EXPECT_EQ(Code(DecodeSetIrqs(IrqSet(kBool | kTrigger, 0, 1, {1}), 1)), EINVAL);
}

TEST(DecodeSetIrqs, DataBoolTakesExactlyCountBools) {
  const Buf payload = IrqSet(kBool | kMask, 3, 3, {1, 0, 1, 9});  // bools point into it
  auto r = DecodeSetIrqs(payload, 0);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->bools.size(), 3u);
  EXPECT_EQ(r->bools[0], 1);
  EXPECT_EQ(r->bools[1], 0);
  EXPECT_EQ(r->bools[2], 1);
  EXPECT_EQ(r->set.start, 3u);
  EXPECT_EQ(Code(DecodeSetIrqs(IrqSet(kBool | kMask, 0, 3, {1, 0}), 0)), EINVAL);
}

TEST(DecodeSetIrqs, ShortPayloadOrArgszIsEinval) {
  EXPECT_EQ(Code(DecodeSetIrqs(Buf(19, 0), 0)), EINVAL);
  EXPECT_EQ(Code(DecodeSetIrqs(B(wire::IrqSet{19, kNone | kTrigger, 0, 0, 1}), 0)), EINVAL);
}

// --- REGION_READ / WRITE / WRITE_MULTI --------------------------------------------------------

TEST(DecodeRegionRead, CountMustBeOneToMaxXfer) {
  EXPECT_TRUE(DecodeRegionRead(B(wire::RegionAccess{0, 0, 1})).ok());
  EXPECT_TRUE(DecodeRegionRead(B(wire::RegionAccess{0, 0, kMaxDataXferSize})).ok());
  EXPECT_EQ(Code(DecodeRegionRead(B(wire::RegionAccess{0, 0, 0}))), EINVAL);
  EXPECT_EQ(Code(DecodeRegionRead(B(wire::RegionAccess{0, 0, kMaxDataXferSize + 1}))), E2BIG);
  EXPECT_EQ(Code(DecodeRegionRead(B(wire::RegionAccess{0, 0, 65}), 64)), E2BIG);
  EXPECT_EQ(Code(DecodeRegionRead(Buf(15, 0))), EINVAL);
}

TEST(DecodeRegionWrite, DataLengthMustEqualCount) {
  Buf four = Cat(B(wire::RegionAccess{8, 0, 4}), Buf{1, 2, 3, 4});
  auto ok = DecodeRegionWrite(four);
  ASSERT_TRUE(ok.ok());
  ASSERT_EQ(ok->data.size(), 4u);
  EXPECT_EQ(ok->data[3], 4);
  EXPECT_EQ(Code(DecodeRegionWrite(Cat(B(wire::RegionAccess{8, 0, 4}), Buf{1, 2, 3}))), EINVAL);
  EXPECT_EQ(Code(DecodeRegionWrite(Cat(B(wire::RegionAccess{8, 0, 4}), Buf(5, 0)))), EINVAL);
  EXPECT_EQ(Code(DecodeRegionWrite(B(wire::RegionAccess{8, 0, 0}))), EINVAL);
  EXPECT_EQ(Code(DecodeRegionWrite(B(wire::RegionAccess{8, 0, kMaxDataXferSize + 1}))), E2BIG);
}

wire::WriteMultiEntry E(uint32_t count) {
  wire::WriteMultiEntry e{};
  e.count = count;
  return e;
}

TEST(DecodeWriteMulti, EnforcesWrCntPayloadSizeAndEntryCounts) {
  auto three =
      DecodeWriteMulti(Cat(Cat(Cat(B(wire::WriteMultiHeader{3}), B(E(1))), B(E(4))), B(E(8))));
  ASSERT_TRUE(three.ok());
  EXPECT_EQ(three->size(), 3u);
  EXPECT_EQ(Code(DecodeWriteMulti(Buf(7, 0))), EINVAL);
  EXPECT_EQ(Code(DecodeWriteMulti(B(wire::WriteMultiHeader{0}))), EINVAL);
  EXPECT_EQ(Code(DecodeWriteMulti(Cat(B(wire::WriteMultiHeader{2}), B(E(4))))), EINVAL);
  EXPECT_EQ(Code(DecodeWriteMulti(Cat(B(wire::WriteMultiHeader{1}), Cat(B(E(4)), B(E(4)))))),
            EINVAL);
  EXPECT_EQ(Code(DecodeWriteMulti(Cat(B(wire::WriteMultiHeader{1}), B(E(9))))), EINVAL);
  EXPECT_EQ(Code(DecodeWriteMulti(Cat(B(wire::WriteMultiHeader{1}), B(E(0))))), EINVAL);
  // A wr_cnt whose payload size would overflow is rejected before any arithmetic on it.
  EXPECT_EQ(Code(DecodeWriteMulti(Cat(B(wire::WriteMultiHeader{(1ull << 61) + 1}), B(E(4))))),
            EINVAL);
  Buf max = B(wire::WriteMultiHeader{kMaxWriteMultiEntries});
  for (uint64_t i = 0; i < kMaxWriteMultiEntries; ++i) max = Cat(max, B(E(4)));
  EXPECT_TRUE(DecodeWriteMulti(max).ok());
}

TEST(CheckRegionAccess, RejectsIndexAndRangeProblemsWithoutOverflow) {
  EXPECT_TRUE(CheckRegionAccess(0, 0, 4096, 9, 4096).ok());
  EXPECT_TRUE(CheckRegionAccess(8, 4092, 4, 9, 4096).ok());
  EXPECT_EQ(CheckRegionAccess(9, 0, 1, 9, 4096).code(), EINVAL);
  EXPECT_EQ(CheckRegionAccess(0, 4093, 4, 9, 4096).code(), EINVAL);
  EXPECT_EQ(CheckRegionAccess(0, 4097, 0, 9, 4096).code(), EINVAL);
  EXPECT_EQ(CheckRegionAccess(0, ~0ull - 3, 8, 9, 4096).code(), EINVAL);
  EXPECT_EQ(CheckRegionAccess(0, 0, 1, 9, 0).code(), EINVAL);
}

// --- DecodeRegionInfoReply --------------------------------------------------------------------

Buf RegionInfoWith(uint32_t cap_offset, uint32_t flags = wire::kRegionFlagCaps) {
  wire::RegionInfo ri{};
  ri.argsz = 32;
  ri.flags = flags;
  ri.index = 2;
  ri.cap_offset = cap_offset;
  ri.size = 4096;
  return B(ri);
}

Buf SparseCap(uint32_t next, std::vector<wire::SparseMmapArea> areas, uint32_t nr = ~0u) {
  wire::SparseMmapCap cap{};
  cap.header = {wire::kCapSparseMmap, wire::kCapSparseMmapVersion, next};
  cap.nr_areas = nr == ~0u ? static_cast<uint32_t>(areas.size()) : nr;
  Buf out = B(cap);
  for (const auto& a : areas) out = Cat(out, B(a));
  return out;
}

Buf OtherCap(uint16_t id, uint32_t next) { return B(wire::CapHeader{id, 1, next}); }

TEST(DecodeRegionInfoReply, WalksAChainToTheSparseMmapCapability) {
  // RegionInfo (32) -> unknown cap at 32 -> sparse cap at 40.
  Buf payload = Cat(Cat(RegionInfoWith(32), OtherCap(0x77, 40)),
                    SparseCap(0, {{0, 0x1000}, {0x2000, 0x1000}}));
  auto r = DecodeRegionInfoReply(payload);
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->sparse_areas.size(), 2u);
  EXPECT_EQ(r->sparse_areas[1].offset, 0x2000u);
}

TEST(DecodeRegionInfoReply, WithoutCapsFlagOrOffsetTheChainIsIgnored) {
  EXPECT_TRUE(DecodeRegionInfoReply(RegionInfoWith(0)).ok());
  auto r = DecodeRegionInfoReply(RegionInfoWith(999, 0));  // no CAPS flag: offset not followed
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->sparse_areas.empty());
  EXPECT_EQ(Code(DecodeRegionInfoReply(Buf(31, 0))), EINVAL);
}

TEST(DecodeRegionInfoReply, RejectsLoopsBackwardLinksAndOutOfRangeOffsets) {
  // A capability pointing at itself.
  EXPECT_EQ(Code(DecodeRegionInfoReply(Cat(RegionInfoWith(32), OtherCap(5, 32)))), EINVAL);
  // Two capabilities pointing at each other.
  EXPECT_EQ(
      Code(DecodeRegionInfoReply(Cat(Cat(RegionInfoWith(32), OtherCap(5, 40)), OtherCap(6, 32)))),
      EINVAL);
  // cap_offset inside the RegionInfo struct.
  EXPECT_EQ(Code(DecodeRegionInfoReply(Cat(RegionInfoWith(8), OtherCap(5, 0)))), EINVAL);
  // cap_offset past the payload, or a header straddling its end.
  EXPECT_EQ(Code(DecodeRegionInfoReply(Cat(RegionInfoWith(64), OtherCap(5, 0)))), EINVAL);
  EXPECT_EQ(Code(DecodeRegionInfoReply(Cat(RegionInfoWith(36), OtherCap(5, 0)))), EINVAL);
  EXPECT_EQ(Code(DecodeRegionInfoReply(Cat(RegionInfoWith(0xffffffffu), OtherCap(5, 0)))), EINVAL);
  // next pointing beyond the payload.
  EXPECT_EQ(Code(DecodeRegionInfoReply(Cat(RegionInfoWith(32), OtherCap(5, 4096)))), EINVAL);
}

TEST(DecodeRegionInfoReply, RejectsSparseAreasBeyondThePayload) {
  EXPECT_EQ(Code(DecodeRegionInfoReply(Cat(RegionInfoWith(32), SparseCap(0, {{0, 1}}, 2)))),
            EINVAL);
  EXPECT_EQ(Code(DecodeRegionInfoReply(Cat(RegionInfoWith(32), SparseCap(0, {}, 0x80000000u)))),
            EINVAL);
  // A sparse cap header cut short.
  EXPECT_EQ(Code(DecodeRegionInfoReply(Cat(RegionInfoWith(32), OtherCap(wire::kCapSparseMmap, 0)))),
            EINVAL);
}

TEST(DecodeRegionInfoReply, RejectsOverlongChains) {
  auto chain = [](int caps) {
    Buf p = RegionInfoWith(32);
    for (int i = 0; i < caps; ++i) {
      uint32_t next = i + 1 < caps ? 32 + 8 * (i + 1) : 0;
      p = Cat(p, OtherCap(0x70, next));
    }
    return p;
  };
  EXPECT_TRUE(DecodeRegionInfoReply(chain(17)).ok());
  EXPECT_EQ(Code(DecodeRegionInfoReply(chain(18))), EINVAL);
}

// --- Encoding helpers -------------------------------------------------------------------------

TEST(EncodeErrorReply, IsAHeaderOnlyReplyEchoingIdAndCommand) {
  wire::Header req{0x1234, 9, 32, 0, 0};
  Buf r = EncodeErrorReply(req, ENOENT);
  ASSERT_EQ(r.size(), sizeof(wire::Header));
  auto h = Load<wire::Header>(r);
  EXPECT_EQ(h.msg_id, 0x1234);
  EXPECT_EQ(h.command, 9);
  EXPECT_EQ(h.msg_size, 16u);
  EXPECT_EQ(h.flags, wire::kFlagTypeReply | wire::kFlagError);
  EXPECT_EQ(h.error_no, static_cast<uint32_t>(ENOENT));
}

TEST(BeginFinishMessage, PatchMsgSizeToTheWholeMessage) {
  Buf out = {9, 9, 9};  // cleared by BeginMessage
  BeginMessage(out, 5, 4, wire::kFlagNoReply);
  Append(out, wire::DeviceInfo{16, 0, 0, 0});
  FinishMessage(out);
  ASSERT_EQ(out.size(), 32u);
  auto h = Load<wire::Header>(out);
  EXPECT_EQ(h.msg_size, 32u);
  EXPECT_EQ(h.msg_id, 5);
  EXPECT_EQ(h.flags, wire::kFlagNoReply);
  EXPECT_EQ(MessageType(h), wire::kFlagTypeCommand);
}

TEST(CommandName, NamesKnownCommandsAndFlagsUnknownOnes) {
  EXPECT_STREQ(wire::CommandName(1), "VERSION");
  EXPECT_STREQ(wire::CommandName(15), "REGION_WRITE_MULTI");
  EXPECT_STREQ(wire::CommandName(14), "UNKNOWN");
  EXPECT_STREQ(wire::CommandName(0xffff), "UNKNOWN");
}

}  // namespace
}  // namespace vfu::proto
