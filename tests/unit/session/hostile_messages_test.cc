// Hostile input over a real socketpair: every case sends one malformed or forbidden message
// (with whatever fds it needs), checks the exact outcome on the wire (an error reply with the
// specific errno, no reply, or an error reply followed by the server dropping the stream),
// proves the server still answers a well-formed request (on the same session when it stayed
// open, else on a fresh session for the same device), and checks that no fd leaked: neither
// while the session lives (rejected fds are closed at once) nor after everything is destroyed.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/devices/sample_device.h"
#include "server/protocol/codec.h"
#include "server/session/message_stream.h"
#include "server/transport/unix_socket.h"
#include "tests/support/fd_count.h"
#include "tests/support/session_harness.h"
#include "tests/unit/session/wire_test_util.h"

namespace vfu::testing {
namespace {

using devices::SampleDevice;
using wire::Command;

constexpr uint16_t kId = 0x4242;  // msg_id of every hostile message (echo is checked)

enum class Outcome {
  kErrorReply,           // an error reply with `error`; the session stays open
  kErrorReplyThenClose,  // an error reply with `error`, then the server stops serving the stream
  kNoReply,              // nothing comes back; the session stays open
  kClosedWithoutReply,   // the server drops the stream and sends nothing
};

using Bytes = std::vector<uint8_t>;

struct HostileCase {
  std::string name;
  uint16_t command = 0;  // the command the error reply must echo
  Outcome outcome = Outcome::kErrorReply;
  int error = 0;
  std::function<Bytes()> bytes;  // the raw message (msg_id kId)
  bool negotiate = true;         // send QEMU's VERSION first
  bool half_close = false;       // shut down the client's write side after sending
  std::function<void(SessionHarness&)> setup;
  std::function<std::vector<UniqueFd>()> make_fds;
  std::function<void(SessionHarness&, SampleDevice&)> verify;  // state after the rejection

  HostileCase& BeforeVersion() {
    negotiate = false;
    return *this;
  }
  HostileCase& ThenEof() {
    half_close = true;
    return *this;
  }
  HostileCase& Setup(std::function<void(SessionHarness&)> f) {
    setup = std::move(f);
    return *this;
  }
  HostileCase& Fds(std::function<std::vector<UniqueFd>()> f) {
    make_fds = std::move(f);
    return *this;
  }
  HostileCase& Verify(std::function<void(SessionHarness&, SampleDevice&)> f) {
    verify = std::move(f);
    return *this;
  }
};

void PrintTo(const HostileCase& c, std::ostream* os) { *os << c.name; }

uint16_t Id(Command c) { return static_cast<uint16_t>(c); }

// A well-framed message rejected with an error reply.
HostileCase Rejects(std::string name, Command command, Bytes payload, int error,
                    uint32_t flags = 0) {
  HostileCase c;
  c.name = std::move(name);
  c.command = Id(command);
  c.error = error;
  c.bytes = [=] { return BuildMessage(kId, Id(command), payload, flags); };
  return c;
}

// Same with a raw command number.
HostileCase RejectsCommand(std::string name, uint16_t command, Bytes payload, int error,
                           uint32_t flags = 0) {
  HostileCase c;
  c.name = std::move(name);
  c.command = command;
  c.error = error;
  c.bytes = [=] { return BuildMessage(kId, command, payload, flags); };
  return c;
}

// A framing error: the error reply, then the stream is dropped.
HostileCase BreaksFraming(std::string name, uint16_t command, Bytes raw, int error) {
  HostileCase c;
  c.name = std::move(name);
  c.command = command;
  c.error = error;
  c.outcome = Outcome::kErrorReplyThenClose;
  c.bytes = [raw] { return raw; };
  return c;
}

HostileCase Ignored(std::string name, Command command, Bytes payload, uint32_t flags) {
  HostileCase c;
  c.name = std::move(name);
  c.command = Id(command);
  c.outcome = Outcome::kNoReply;
  c.bytes = [=] { return BuildMessage(kId, Id(command), payload, flags); };
  return c;
}

// --- Payloads -------------------------------------------------------------------------------
Bytes GetInfo(uint32_t argsz = 16) { return AsBytes(wire::DeviceInfo{argsz, 0, 0, 0}); }
Bytes DmaMap(uint64_t iova, uint64_t size, uint64_t offset = 0,
             uint32_t flags = wire::kDmaFlagRead | wire::kDmaFlagWrite, uint32_t argsz = 32) {
  return AsBytes(wire::DmaMap{argsz, flags, offset, iova, size});
}
Bytes DmaUnmap(uint64_t iova, uint64_t size, uint32_t flags = 0, uint32_t argsz = 24) {
  return AsBytes(wire::DmaUnmap{argsz, flags, iova, size});
}
Bytes RegionInfo(uint32_t index, uint32_t argsz = 32) {
  wire::RegionInfo r{};
  r.argsz = argsz;
  r.index = index;
  return AsBytes(r);
}
Bytes IrqInfo(uint32_t index, uint32_t argsz = 16) {
  return AsBytes(wire::IrqInfo{argsz, 0, index, 0});
}
Bytes SetIrqs(uint32_t flags, uint32_t index, uint32_t start, uint32_t count, uint32_t argsz = 20) {
  return AsBytes(wire::IrqSet{argsz, flags, index, start, count});
}
Bytes Read(uint32_t region, uint64_t offset, uint32_t count) {
  return AsBytes(wire::RegionAccess{offset, region, count});
}
Bytes Write(uint32_t region, uint64_t offset, uint32_t count, size_t data_len) {
  Bytes b = AsBytes(wire::RegionAccess{offset, region, count});
  b.resize(b.size() + data_len, 0x5a);
  return b;
}
wire::WriteMultiEntry Entry(uint32_t region, uint64_t offset, uint32_t count, uint32_t value) {
  wire::WriteMultiEntry e{};
  e.offset = offset;
  e.region = region;
  e.count = count;
  std::memcpy(e.data, &value, sizeof(value));
  return e;
}
Bytes WriteMulti(uint64_t wr_cnt, const std::vector<wire::WriteMultiEntry>& entries) {
  Bytes b = AsBytes(wire::WriteMultiHeader{wr_cnt});
  for (const auto& e : entries) proto::Append(b, e);
  return b;
}
Bytes Version(std::string_view json, uint16_t major = 0, uint16_t minor = 0) {
  return VersionPayload(major, minor, json);
}
Bytes Truncated(Bytes b, size_t n) {
  b.resize(n);
  return b;
}

constexpr uint32_t kNoneTrigger = wire::kIrqSetDataNone | wire::kIrqSetActionTrigger;
constexpr uint32_t kEventfdTrigger = wire::kIrqSetDataEventfd | wire::kIrqSetActionTrigger;
constexpr uint32_t kBar0 = 0;
constexpr uint32_t kBar1 = 1;
constexpr uint32_t kConfig = wire::kPciConfigRegionIndex;
constexpr uint64_t kMapIova = 0x100000;
constexpr uint64_t kMapSize = 0x10000;

// --- fd factories ---------------------------------------------------------------------------
std::function<std::vector<UniqueFd>()> Eventfds(size_t n) {
  return [n] {
    std::vector<UniqueFd> fds;
    for (size_t i = 0; i < n; ++i) fds.push_back(MakeEventfd());
    return fds;
  };
}
std::function<std::vector<UniqueFd>()> Memfds(size_t n, size_t size) {
  return [n, size] {
    std::vector<UniqueFd> fds;
    for (size_t i = 0; i < n; ++i) fds.push_back(MakeMemfd(size));
    return fds;
  };
}
std::vector<UniqueFd> PipeReadEnd() {
  int p[2];
  EXPECT_EQ(::pipe2(p, O_CLOEXEC), 0);
  ::close(p[1]);
  std::vector<UniqueFd> fds;
  fds.emplace_back(p[0]);
  return fds;
}
std::vector<UniqueFd> DirectoryFd() {
  std::vector<UniqueFd> fds;
  fds.emplace_back(::open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  EXPECT_TRUE(fds.back().valid());
  return fds;
}
// A read-only descriptor of an 8 KiB memfd: it cannot be mapped shared and writable.
std::vector<UniqueFd> ReadOnlyMemfd() {
  UniqueFd rw = MakeMemfd(8192);
  std::string path = "/proc/self/fd/" + std::to_string(rw.get());
  std::vector<UniqueFd> fds;
  fds.emplace_back(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  EXPECT_TRUE(fds.back().valid());
  return fds;
}

// --- Setup / verification -------------------------------------------------------------------
void MapWithoutFd(SessionHarness& h) {
  auto r = h.Call(Command::kDmaMap, DmaMap(kMapIova, kMapSize));
  ASSERT_FALSE(r.is_error()) << r.error_no();
}
void SetScratch(SessionHarness& h) { Write32(h, kBar0, SampleDevice::kRegScratch, 0x5555aaaa); }
void ScratchUnchanged(SessionHarness&, SampleDevice& dev) { EXPECT_EQ(dev.scratch(), 0x5555aaaau); }
void OneMapLeft(SessionHarness& h, SampleDevice&) {
  ASSERT_EQ(h.session()->dma_maps().size(), 1u);
  EXPECT_EQ(h.session()->dma_maps().regions().begin()->second.size, kMapSize);
}
void NoMaps(SessionHarness& h, SampleDevice&) { EXPECT_EQ(h.session()->dma_maps().size(), 0u); }
void NoEventfds(SessionHarness& h, SampleDevice&) {
  EXPECT_EQ(h.session()->irqs().eventfd_count(), 0u);
}
void NotNegotiated(SessionHarness& h, SampleDevice&) { EXPECT_FALSE(h.session()->negotiated()); }

std::string Repeat(char c, size_t n) { return std::string(n, c); }

std::vector<HostileCase> AllCases() {
  std::vector<HostileCase> v;
  const uint16_t kGetInfoId = Id(Command::kDeviceGetInfo);

  // --- Framing ------------------------------------------------------------------------------
  {
    HostileCase c;
    c.name = "ShortHeaderThenEofClosesWithoutReply";
    c.command = kGetInfoId;
    c.outcome = Outcome::kClosedWithoutReply;
    c.bytes = [] {
      return Truncated(BuildMessage(kId, Id(Command::kDeviceGetInfo), GetInfo()), 8);
    };
    v.push_back(c.ThenEof());
  }
  {
    HostileCase c;
    c.name = "ShortBodyThenEofClosesWithoutReply";
    c.command = kGetInfoId;
    c.outcome = Outcome::kClosedWithoutReply;
    c.bytes = [] {
      return Truncated(BuildMessage(kId, Id(Command::kDeviceGetInfo), GetInfo()), 20);
    };
    v.push_back(c.ThenEof());
  }
  v.push_back(BreaksFraming("MsgSizeZeroIsRejectedWithEinvalAndClosed", kGetInfoId,
                            RawHeader(kId, kGetInfoId, 0), EINVAL));
  v.push_back(BreaksFraming("MsgSize15IsRejectedWithEinvalAndClosed", kGetInfoId,
                            RawHeader(kId, kGetInfoId, 15), EINVAL));
  v.push_back(BreaksFraming("MsgSizeOneOverMaximumIsRejectedWithE2bigAndClosed", kGetInfoId,
                            RawHeader(kId, kGetInfoId, proto::kMaxMessageSize + 1), E2BIG));
  v.push_back(BreaksFraming("MsgSize4GiBIsRejectedWithE2bigAndClosed", Id(Command::kRegionWrite),
                            RawHeader(kId, Id(Command::kRegionWrite), 0xffffffffu), E2BIG));
  v.push_back(BreaksFraming("OversizedVersionBeforeNegotiationIsRejectedWithE2bigAndClosed",
                            Id(Command::kVersion),
                            RawHeader(kId, Id(Command::kVersion), proto::kMaxMessageSize + 1),
                            E2BIG)
                  .BeforeVersion());
  {
    // Framing errors win over NO_REPLY: the stream is broken either way.
    auto c = BreaksFraming("MsgSizeTooSmallWithNoReplyStillGetsEinvalAndCloses", kGetInfoId,
                           RawHeader(kId, kGetInfoId, 8, wire::kFlagNoReply), EINVAL);
    v.push_back(c);
  }
  v.push_back(Rejects("RegionWriteOfExactlyMaxMessageSizeIsFramedThenRejectedWithEinval",
                      Command::kRegionWrite,
                      Write(kBar0, 0, proto::kMaxDataXferSize, proto::kMaxDataXferSize), EINVAL));

  // --- Short bodies (payload shorter than the fixed struct) ----------------------------------
  v.push_back(Rejects("DmaMapShortBodyIsRejectedWithEinval", Command::kDmaMap,
                      Truncated(DmaMap(0, 4096), 31), EINVAL));
  v.push_back(Rejects("DmaUnmapShortBodyIsRejectedWithEinval", Command::kDmaUnmap,
                      Truncated(DmaUnmap(0, 4096), 23), EINVAL));
  v.push_back(Rejects("GetInfoShortBodyIsRejectedWithEinval", Command::kDeviceGetInfo,
                      Truncated(GetInfo(), 15), EINVAL));
  v.push_back(Rejects("GetInfoEmptyBodyIsRejectedWithEinval", Command::kDeviceGetInfo, {}, EINVAL));
  v.push_back(Rejects("RegionInfoShortBodyIsRejectedWithEinval", Command::kDeviceGetRegionInfo,
                      Truncated(RegionInfo(0), 31), EINVAL));
  v.push_back(Rejects("IrqInfoShortBodyIsRejectedWithEinval", Command::kDeviceGetIrqInfo,
                      Truncated(IrqInfo(0), 15), EINVAL));
  v.push_back(Rejects("SetIrqsShortBodyIsRejectedWithEinval", Command::kDeviceSetIrqs,
                      Truncated(SetIrqs(kNoneTrigger, 0, 0, 1), 19), EINVAL));
  v.push_back(Rejects("RegionReadShortBodyIsRejectedWithEinval", Command::kRegionRead,
                      Truncated(Read(kBar0, 0, 4), 15), EINVAL));
  v.push_back(Rejects("RegionWriteShortBodyIsRejectedWithEinval", Command::kRegionWrite,
                      Truncated(Write(kBar0, 4, 4, 4), 15), EINVAL)
                  .Setup(SetScratch)
                  .Verify(ScratchUnchanged));
  v.push_back(Rejects("WriteMultiShortBodyIsRejectedWithEinval", Command::kRegionWriteMulti,
                      Truncated(WriteMulti(1, {}), 7), EINVAL));
  v.push_back(Rejects("VersionShortBodyIsRejectedWithEinval", Command::kVersion, {0, 0, 0}, EINVAL)
                  .BeforeVersion()
                  .Verify(NotNegotiated));

  // --- argsz smaller than the fixed struct ---------------------------------------------------
  v.push_back(Rejects("DmaMapArgszTooSmallIsRejectedWithEinval", Command::kDmaMap,
                      DmaMap(0, 4096, 0, wire::kDmaFlagRead, 31), EINVAL)
                  .Verify(NoMaps));
  v.push_back(Rejects("DmaUnmapArgszTooSmallIsRejectedWithEinval", Command::kDmaUnmap,
                      DmaUnmap(kMapIova, kMapSize, 0, 23), EINVAL)
                  .Setup(MapWithoutFd)
                  .Verify(OneMapLeft));
  v.push_back(Rejects("GetInfoArgszTooSmallIsRejectedWithEinval", Command::kDeviceGetInfo,
                      GetInfo(15), EINVAL));
  v.push_back(
      Rejects("GetInfoArgszZeroIsRejectedWithEinval", Command::kDeviceGetInfo, GetInfo(0), EINVAL));
  v.push_back(Rejects("RegionInfoArgszTooSmallIsRejectedWithEinval", Command::kDeviceGetRegionInfo,
                      RegionInfo(0, 31), EINVAL));
  v.push_back(Rejects("IrqInfoArgszTooSmallIsRejectedWithEinval", Command::kDeviceGetIrqInfo,
                      IrqInfo(0, 15), EINVAL));
  v.push_back(Rejects("SetIrqsArgszTooSmallIsRejectedWithEinval", Command::kDeviceSetIrqs,
                      SetIrqs(kNoneTrigger, 0, 0, 1, 19), EINVAL));

  // --- Commands the server does not take -----------------------------------------------------
  v.push_back(RejectsCommand("CommandZeroIsRejectedWithEnosys", 0, GetInfo(), ENOSYS));
  v.push_back(RejectsCommand("UnassignedCommand14IsRejectedWithEnosys", 14, GetInfo(), ENOSYS));
  v.push_back(RejectsCommand("UnknownCommand99IsRejectedWithEnosys", 99, GetInfo(), ENOSYS));
  v.push_back(RejectsCommand("UnknownCommand0xffffIsRejectedWithEnosys", 0xffff, {}, ENOSYS));
  v.push_back(Rejects("RegionIoFdsIsRejectedWithEnotsup", Command::kDeviceGetRegionIoFds,
                      AsBytes(wire::RegionIoFdsRequest{16, 0, 0, 0}), ENOTSUP));
  v.push_back(Rejects("DeviceFeatureIsRejectedWithEnotsup", Command::kDeviceFeature,
                      AsBytes(wire::DeviceFeature{8, 0}), ENOTSUP));
  v.push_back(Rejects("MigDataReadIsRejectedWithEnotsup", Command::kMigDataRead, {}, ENOTSUP));
  v.push_back(Rejects("MigDataWriteIsRejectedWithEnotsup", Command::kMigDataWrite, {}, ENOTSUP));
  v.push_back(Rejects("DmaReadFromClientIsRejectedWithEinval", Command::kDmaRead,
                      AsBytes(wire::DmaAccess{0, 8}), EINVAL));
  v.push_back(Rejects("DmaWriteFromClientIsRejectedWithEinval", Command::kDmaWrite,
                      Concat(AsBytes(wire::DmaAccess{0, 8}), Bytes(8, 0)), EINVAL));

  // --- Message type bits ---------------------------------------------------------------------
  v.push_back(Ignored("ReplyTypeMessageFromClientIsIgnoredWithoutReply", Command::kDeviceGetInfo,
                      GetInfo(), wire::kFlagTypeReply));
  v.push_back(Ignored("ErrorReplyFromClientIsIgnoredWithoutReply", Command::kDmaRead, {},
                      wire::kFlagTypeReply | wire::kFlagError));
  v.push_back(Ignored("ReplyTypeMessageCarryingAnEventfdIsIgnoredAndTheFdClosed",
                      Command::kDeviceSetIrqs, SetIrqs(kEventfdTrigger, 0, 0, 1),
                      wire::kFlagTypeReply)
                  .Fds(Eventfds(1))
                  .Verify(NoEventfds));
  v.push_back(
      Rejects("MessageType2IsRejectedWithEinval", Command::kDeviceGetInfo, GetInfo(), EINVAL, 0x2));
  v.push_back(Rejects("MessageType15IsRejectedWithEinval", Command::kDeviceGetInfo, GetInfo(),
                      EINVAL, 0xf));
  v.push_back(Rejects("MessageType3WithFdsIsRejectedWithEinvalAndFdsClosed", Command::kDmaMap,
                      DmaMap(kMapIova, 4096), EINVAL, 0x3)
                  .Fds(Memfds(1, 4096))
                  .Verify(NoMaps));

  // --- fds where none (or fewer) are allowed --------------------------------------------------
  v.push_back(Rejects("GetInfoWithAnFdIsRejectedWithEinvalAndFdClosed", Command::kDeviceGetInfo,
                      GetInfo(), EINVAL)
                  .Fds(Eventfds(1)));
  v.push_back(Rejects("RegionReadWithAnFdIsRejectedWithEinvalAndFdClosed", Command::kRegionRead,
                      Read(kBar0, 0, 4), EINVAL)
                  .Fds(Memfds(1, 4096)));
  v.push_back(Rejects("RegionWriteWithAnFdIsRejectedWithEinvalAndNotApplied", Command::kRegionWrite,
                      Write(kBar0, SampleDevice::kRegScratch, 4, 4), EINVAL)
                  .Fds(Eventfds(1))
                  .Setup(SetScratch)
                  .Verify(ScratchUnchanged));
  v.push_back(Rejects("VersionWithAnFdIsRejectedWithEinvalAndFdClosed", Command::kVersion,
                      Version(kQemuVersionJson), EINVAL)
                  .BeforeVersion()
                  .Fds(Eventfds(1))
                  .Verify(NotNegotiated));
  v.push_back(Rejects("DeviceResetWithAnFdIsRejectedWithEinvalAndDoesNotReset",
                      Command::kDeviceReset, {}, EINVAL)
                  .Fds(Eventfds(1))
                  .Setup(SetScratch)
                  .Verify(ScratchUnchanged));
  v.push_back(Rejects("DmaMapWithTwoFdsIsRejectedWithEinvalAndBothClosed", Command::kDmaMap,
                      DmaMap(kMapIova, 4096), EINVAL)
                  .Fds(Memfds(2, 4096))
                  .Verify(NoMaps));
  v.push_back(Rejects("SetIrqsWith40EventfdsTruncatesControlAndIsRejectedWithEinval",
                      Command::kDeviceSetIrqs, SetIrqs(kEventfdTrigger, 0, 0, 40), EINVAL)
                  .Fds(Eventfds(40))
                  .Verify(NoEventfds));
  v.push_back(Rejects("SetIrqsWith32EventfdsForAOneVectorIndexIsRejectedWithEinvalAndAllClosed",
                      Command::kDeviceSetIrqs, SetIrqs(kEventfdTrigger, 0, 0, 32), EINVAL)
                  .Fds(Eventfds(32))
                  .Verify(NoEventfds));
  v.push_back(Rejects("GetInfoWith33FdsTruncatesControlAndIsRejectedWithEinval",
                      Command::kDeviceGetInfo, GetInfo(), EINVAL)
                  .Fds(Eventfds(33)));

  // --- DMA_MAP --------------------------------------------------------------------------------
  v.push_back(
      Rejects("DmaMapOfSizeZeroIsRejectedWithEinval", Command::kDmaMap, DmaMap(0x10000, 0), EINVAL)
          .Verify(NoMaps));
  v.push_back(Rejects("DmaMapUnalignedAddressIsRejectedWithEinval", Command::kDmaMap,
                      DmaMap(0x10001, 0x1000), EINVAL));
  v.push_back(Rejects("DmaMapUnalignedSizeIsRejectedWithEinval", Command::kDmaMap,
                      DmaMap(0x10000, 0x1001), EINVAL));
  v.push_back(Rejects("DmaMapUnalignedOffsetIsRejectedWithEinvalAndFdClosed", Command::kDmaMap,
                      DmaMap(0x10000, 0x1000, 0x800), EINVAL)
                  .Fds(Memfds(1, 0x4000))
                  .Verify(NoMaps));
  v.push_back(Rejects("DmaMapRangeWrappingTheAddressSpaceIsRejectedWithEinval", Command::kDmaMap,
                      DmaMap(0xfffffffffffff000ull, 0x2000), EINVAL));
  v.push_back(Rejects("DmaMapFileRangeWrappingIsRejectedWithEinval", Command::kDmaMap,
                      DmaMap(0x10000, 0x2000, 0xfffffffffffff000ull), EINVAL));
  v.push_back(Rejects("DmaMapUnknownFlagIsRejectedWithEinval", Command::kDmaMap,
                      DmaMap(0x10000, 0x1000, 0, wire::kDmaFlagRead | 0x4), EINVAL));
  v.push_back(Rejects("DmaMapHighUnknownFlagIsRejectedWithEinval", Command::kDmaMap,
                      DmaMap(0x10000, 0x1000, 0, 0x80000000u), EINVAL));
  v.push_back(Rejects("DmaMapOverlappingExactlyIsRejectedWithEexist", Command::kDmaMap,
                      DmaMap(kMapIova, kMapSize), EEXIST)
                  .Setup(MapWithoutFd)
                  .Verify(OneMapLeft));
  v.push_back(Rejects("DmaMapOverlappingTheStartIsRejectedWithEexist", Command::kDmaMap,
                      DmaMap(kMapIova - 0x8000, kMapSize), EEXIST)
                  .Setup(MapWithoutFd)
                  .Verify(OneMapLeft));
  v.push_back(Rejects("DmaMapOverlappingTheEndIsRejectedWithEexist", Command::kDmaMap,
                      DmaMap(kMapIova + kMapSize - 0x1000, kMapSize), EEXIST)
                  .Setup(MapWithoutFd)
                  .Verify(OneMapLeft));
  v.push_back(Rejects("DmaMapContainedInAMapIsRejectedWithEexist", Command::kDmaMap,
                      DmaMap(kMapIova + 0x4000, 0x1000), EEXIST)
                  .Setup(MapWithoutFd)
                  .Verify(OneMapLeft));
  v.push_back(Rejects("DmaMapContainingAMapIsRejectedWithEexist", Command::kDmaMap,
                      DmaMap(kMapIova - 0x10000, 4 * kMapSize), EEXIST)
                  .Setup(MapWithoutFd)
                  .Verify(OneMapLeft));
  v.push_back(Rejects("DmaMapOverlapWithAnFdIsRejectedWithEexistAndFdClosed", Command::kDmaMap,
                      DmaMap(kMapIova, 0x1000), EEXIST)
                  .Fds(Memfds(1, 0x1000))
                  .Setup(MapWithoutFd)
                  .Verify(OneMapLeft));
  v.push_back(Rejects("DmaMapLargerThanItsFdIsRejectedWithEinval", Command::kDmaMap,
                      DmaMap(0x10000, 0x2000), EINVAL)
                  .Fds(Memfds(1, 0x1000))
                  .Verify(NoMaps));
  v.push_back(Rejects("DmaMapOffsetPlusSizeBeyondFdIsRejectedWithEinval", Command::kDmaMap,
                      DmaMap(0x10000, 0x2000, 0x1000), EINVAL)
                  .Fds(Memfds(1, 0x2000))
                  .Verify(NoMaps));
  v.push_back(Rejects("DmaMapOfAPipeIsRejectedWithEinval", Command::kDmaMap,
                      DmaMap(0x10000, 0x1000), EINVAL)
                  .Fds(PipeReadEnd)
                  .Verify(NoMaps));
  v.push_back(Rejects("DmaMapOfAnEventfdIsRejectedWithEinval", Command::kDmaMap,
                      DmaMap(0x10000, 0x1000), EINVAL)
                  .Fds(Eventfds(1))
                  .Verify(NoMaps));
  v.push_back(Rejects("DmaMapOfADirectoryIsRejectedWithEinval", Command::kDmaMap,
                      DmaMap(0x10000, 0x1000), EINVAL)
                  .Fds(DirectoryFd)
                  .Verify(NoMaps));
  v.push_back(Rejects("DmaMapWritableOfAReadOnlyFdIsRejectedWithEacces", Command::kDmaMap,
                      DmaMap(0x10000, 0x1000), EACCES)
                  .Fds(ReadOnlyMemfd)
                  .Verify(NoMaps));

  // --- DMA_UNMAP ------------------------------------------------------------------------------
  v.push_back(Rejects("DmaUnmapOfAnUnknownRangeIsRejectedWithEnoent", Command::kDmaUnmap,
                      DmaUnmap(0x200000, 0x1000), ENOENT));
  v.push_back(Rejects("DmaUnmapWithMismatchedSizeIsRejectedWithEnoent", Command::kDmaUnmap,
                      DmaUnmap(kMapIova, kMapSize / 2), ENOENT)
                  .Setup(MapWithoutFd)
                  .Verify(OneMapLeft));
  v.push_back(Rejects("DmaUnmapStartingInsideAMapIsRejectedWithEnoent", Command::kDmaUnmap,
                      DmaUnmap(kMapIova + 0x1000, 0x1000), ENOENT)
                  .Setup(MapWithoutFd)
                  .Verify(OneMapLeft));
  v.push_back(Rejects("DmaUnmapAllWithNonZeroAddressIsRejectedWithEinval", Command::kDmaUnmap,
                      DmaUnmap(kMapIova, 0, wire::kDmaUnmapFlagAll), EINVAL)
                  .Setup(MapWithoutFd)
                  .Verify(OneMapLeft));
  v.push_back(Rejects("DmaUnmapAllWithNonZeroSizeIsRejectedWithEinval", Command::kDmaUnmap,
                      DmaUnmap(0, kMapSize, wire::kDmaUnmapFlagAll), EINVAL)
                  .Setup(MapWithoutFd)
                  .Verify(OneMapLeft));
  v.push_back(Rejects("DmaUnmapWithDirtyBitmapFlagIsRejectedWithEnotsup", Command::kDmaUnmap,
                      DmaUnmap(kMapIova, kMapSize, wire::kDmaUnmapFlagGetDirtyBitmap), ENOTSUP)
                  .Setup(MapWithoutFd)
                  .Verify(OneMapLeft));
  v.push_back(Rejects("DmaUnmapWithUnknownFlagIsRejectedWithEinval", Command::kDmaUnmap,
                      DmaUnmap(kMapIova, kMapSize, 0x4), EINVAL)
                  .Setup(MapWithoutFd)
                  .Verify(OneMapLeft));
  v.push_back(Rejects("DmaUnmapOfSizeZeroIsRejectedWithEinval", Command::kDmaUnmap,
                      DmaUnmap(kMapIova, 0), EINVAL)
                  .Setup(MapWithoutFd)
                  .Verify(OneMapLeft));

  // --- REGION_INFO / IRQ_INFO -----------------------------------------------------------------
  v.push_back(Rejects("RegionInfoIndex9IsRejectedWithEinval", Command::kDeviceGetRegionInfo,
                      RegionInfo(9), EINVAL));
  v.push_back(Rejects("RegionInfoIndexMaxU32IsRejectedWithEinval", Command::kDeviceGetRegionInfo,
                      RegionInfo(0xffffffffu), EINVAL));
  v.push_back(
      Rejects("IrqInfoIndex5IsRejectedWithEinval", Command::kDeviceGetIrqInfo, IrqInfo(5), EINVAL));
  v.push_back(Rejects("IrqInfoIndexMaxU32IsRejectedWithEinval", Command::kDeviceGetIrqInfo,
                      IrqInfo(0xffffffffu), EINVAL));

  // --- SET_IRQS -------------------------------------------------------------------------------
  v.push_back(Rejects("SetIrqsWithoutDataFlagIsRejectedWithEinval", Command::kDeviceSetIrqs,
                      SetIrqs(wire::kIrqSetActionTrigger, 0, 0, 1), EINVAL));
  v.push_back(Rejects(
      "SetIrqsWithTwoDataFlagsIsRejectedWithEinval", Command::kDeviceSetIrqs,
      SetIrqs(wire::kIrqSetDataNone | wire::kIrqSetDataBool | wire::kIrqSetActionTrigger, 0, 0, 1),
      EINVAL));
  v.push_back(Rejects("SetIrqsWithoutActionFlagIsRejectedWithEinval", Command::kDeviceSetIrqs,
                      SetIrqs(wire::kIrqSetDataNone, 0, 0, 1), EINVAL));
  v.push_back(Rejects(
      "SetIrqsWithTwoActionFlagsIsRejectedWithEinval", Command::kDeviceSetIrqs,
      SetIrqs(wire::kIrqSetDataNone | wire::kIrqSetActionMask | wire::kIrqSetActionUnmask, 0, 0, 1),
      EINVAL));
  v.push_back(Rejects("SetIrqsWithUnknownFlagBitIsRejectedWithEinval", Command::kDeviceSetIrqs,
                      SetIrqs(kNoneTrigger | 0x40, 0, 0, 1), EINVAL));
  v.push_back(Rejects("SetIrqsCountZeroWithDataEventfdIsRejectedWithEinval",
                      Command::kDeviceSetIrqs, SetIrqs(kEventfdTrigger, 0, 0, 0), EINVAL));
  v.push_back(Rejects("SetIrqsCountZeroWithNonZeroStartIsRejectedWithEinval",
                      Command::kDeviceSetIrqs, SetIrqs(kNoneTrigger, 0, 1, 0), EINVAL));
  v.push_back(Rejects("SetIrqsRangeBeyondVectorCountIsRejectedWithEinval", Command::kDeviceSetIrqs,
                      SetIrqs(kNoneTrigger, wire::kPciIntxIrqIndex, 0, 2), EINVAL));
  v.push_back(Rejects("SetIrqsStartAtVectorCountIsRejectedWithEinval", Command::kDeviceSetIrqs,
                      SetIrqs(kNoneTrigger, wire::kPciIntxIrqIndex, 1, 1), EINVAL));
  v.push_back(Rejects("SetIrqsStartPlusCountOverflowingU32IsRejectedWithEinval",
                      Command::kDeviceSetIrqs,
                      SetIrqs(kNoneTrigger, wire::kPciIntxIrqIndex, 0xffffffffu, 2), EINVAL));
  v.push_back(Rejects("SetIrqsIndex5IsRejectedWithEinval", Command::kDeviceSetIrqs,
                      SetIrqs(kNoneTrigger, 5, 0, 1), EINVAL));
  v.push_back(Rejects("SetIrqsIndexMaxU32WithEventfdIsRejectedWithEinvalAndFdClosed",
                      Command::kDeviceSetIrqs, SetIrqs(kEventfdTrigger, 0xffffffffu, 0, 1), EINVAL)
                  .Fds(Eventfds(1))
                  .Verify(NoEventfds));
  v.push_back(Rejects("SetIrqsWithMoreEventfdsThanCountIsRejectedWithEinval",
                      Command::kDeviceSetIrqs, SetIrqs(kEventfdTrigger, 0, 0, 1), EINVAL)
                  .Fds(Eventfds(2))
                  .Verify(NoEventfds));
  v.push_back(Rejects("SetIrqsWithFewerEventfdsThanCountIsRejectedWithEinval",
                      Command::kDeviceSetIrqs, SetIrqs(kEventfdTrigger, 0, 0, 3), EINVAL)
                  .Fds(Eventfds(2))
                  .Verify(NoEventfds));
  v.push_back(Rejects("SetIrqsWithFdsAndDataNoneIsRejectedWithEinval", Command::kDeviceSetIrqs,
                      SetIrqs(kNoneTrigger, 0, 0, 1), EINVAL)
                  .Fds(Eventfds(1))
                  .Verify(NoEventfds));
  v.push_back(Rejects("SetIrqsDataBoolWithTooFewBoolsIsRejectedWithEinval", Command::kDeviceSetIrqs,
                      SetIrqs(wire::kIrqSetDataBool | wire::kIrqSetActionTrigger, 0, 0, 1),
                      EINVAL));
  v.push_back(
      Rejects("SetIrqsMaskOnNonMaskableMsiIsRejectedWithEinval", Command::kDeviceSetIrqs,
              SetIrqs(wire::kIrqSetDataNone | wire::kIrqSetActionMask, wire::kPciMsiIrqIndex, 0, 1),
              EINVAL));
  v.push_back(
      Rejects(
          "SetIrqsEventfdForMaskActionIsRejectedWithEnotsupAndFdClosed", Command::kDeviceSetIrqs,
          SetIrqs(wire::kIrqSetDataEventfd | wire::kIrqSetActionMask, wire::kPciIntxIrqIndex, 0, 1),
          ENOTSUP)
          .Fds(Eventfds(1))
          .Verify(NoEventfds));
  v.push_back(Rejects("SetIrqsEventfdOnMsixWithoutVectorsIsRejectedWithEinval",
                      Command::kDeviceSetIrqs,
                      SetIrqs(kEventfdTrigger, wire::kPciMsixIrqIndex, 0, 1), EINVAL)
                  .Fds(Eventfds(1))
                  .Verify(NoEventfds));

  // --- REGION_READ / REGION_WRITE -------------------------------------------------------------
  v.push_back(Rejects("RegionReadOfRegion9IsRejectedWithEinval", Command::kRegionRead,
                      Read(9, 0, 4), EINVAL));
  v.push_back(Rejects("RegionReadOfRegionMaxU32IsRejectedWithEinval", Command::kRegionRead,
                      Read(0xffffffffu, 0, 4), EINVAL));
  v.push_back(Rejects("RegionReadAtRegionEndIsRejectedWithEinval", Command::kRegionRead,
                      Read(kBar0, SampleDevice::kRegisterBarSize, 4), EINVAL));
  v.push_back(Rejects("RegionReadStraddlingRegionEndIsRejectedWithEinval", Command::kRegionRead,
                      Read(kBar0, SampleDevice::kRegisterBarSize - 2, 4), EINVAL));
  v.push_back(Rejects("RegionReadWithOffsetNear2Pow64IsRejectedWithEinval", Command::kRegionRead,
                      Read(kBar0, 0xfffffffffffffffcull, 8), EINVAL));
  v.push_back(Rejects("RegionReadOfZeroBytesIsRejectedWithEinval", Command::kRegionRead,
                      Read(kBar0, 0, 0), EINVAL));
  v.push_back(Rejects("RegionReadOverMaxDataXferSizeIsRejectedWithE2big", Command::kRegionRead,
                      Read(kBar0, 0, proto::kMaxDataXferSize + 1), E2BIG));
  v.push_back(Rejects("RegionReadOfSizeZeroBar1IsRejectedWithEinval", Command::kRegionRead,
                      Read(kBar1, 0, 4), EINVAL));
  v.push_back(Rejects("RegionReadOfAbsentRomIsRejectedWithEinval", Command::kRegionRead,
                      Read(wire::kPciRomRegionIndex, 0, 4), EINVAL));
  v.push_back(Rejects("RegionReadOfAbsentVgaIsRejectedWithEinval", Command::kRegionRead,
                      Read(wire::kPciVgaRegionIndex, 0, 1), EINVAL));
  v.push_back(Rejects("RegionReadPastConfigSpaceIsRejectedWithEinval", Command::kRegionRead,
                      Read(kConfig, 252, 8), EINVAL));
  v.push_back(Rejects("RegionWriteWithShortDataIsRejectedWithEinval", Command::kRegionWrite,
                      Write(kBar0, SampleDevice::kRegScratch, 4, 3), EINVAL)
                  .Setup(SetScratch)
                  .Verify(ScratchUnchanged));
  v.push_back(Rejects("RegionWriteWithExtraDataIsRejectedWithEinval", Command::kRegionWrite,
                      Write(kBar0, SampleDevice::kRegScratch, 4, 5), EINVAL)
                  .Setup(SetScratch)
                  .Verify(ScratchUnchanged));
  v.push_back(Rejects("RegionWriteOfZeroBytesIsRejectedWithEinval", Command::kRegionWrite,
                      Write(kBar0, SampleDevice::kRegScratch, 0, 0), EINVAL));
  v.push_back(Rejects("RegionWriteOverMaxDataXferSizeIsRejectedWithE2big", Command::kRegionWrite,
                      Write(kBar0, 0, proto::kMaxDataXferSize + 1, 4), E2BIG));
  v.push_back(Rejects("RegionWriteWithOffsetNear2Pow64IsRejectedWithEinval", Command::kRegionWrite,
                      Write(kBar0, 0xfffffffffffffffcull, 8, 8), EINVAL));
  v.push_back(Rejects("RegionWriteOfSizeZeroBar1IsRejectedWithEinval", Command::kRegionWrite,
                      Write(kBar1, 0, 4, 4), EINVAL));
  v.push_back(Rejects("RegionWriteOfRegion9IsRejectedWithEinval", Command::kRegionWrite,
                      Write(9, 0, 4, 4), EINVAL));
  v.push_back(Rejects("UnalignedRegisterWriteIsRejectedByTheDeviceWithEinval",
                      Command::kRegionWrite, Write(kBar0, SampleDevice::kRegScratch + 1, 4, 4),
                      EINVAL)
                  .Setup(SetScratch)
                  .Verify(ScratchUnchanged));

  // --- REGION_WRITE_MULTI ---------------------------------------------------------------------
  v.push_back(Rejects("WriteMultiWithWrCntZeroIsRejectedWithEinval", Command::kRegionWriteMulti,
                      WriteMulti(0, {}), EINVAL));
  v.push_back(Rejects("WriteMultiWithFewerEntriesThanWrCntIsRejectedWithEinval",
                      Command::kRegionWriteMulti,
                      WriteMulti(2, {Entry(kBar0, SampleDevice::kRegScratch, 4, 1)}), EINVAL)
                  .Setup(SetScratch)
                  .Verify(ScratchUnchanged));
  v.push_back(Rejects("WriteMultiWithMoreEntriesThanWrCntIsRejectedWithEinval",
                      Command::kRegionWriteMulti,
                      WriteMulti(1, {Entry(kBar0, SampleDevice::kRegScratch, 4, 1),
                                     Entry(kBar0, SampleDevice::kRegScratch, 4, 2)}),
                      EINVAL)
                  .Setup(SetScratch)
                  .Verify(ScratchUnchanged));
  v.push_back(Rejects("WriteMultiEntryCount9IsRejectedWithEinval", Command::kRegionWriteMulti,
                      WriteMulti(1, {Entry(kBar0, SampleDevice::kRegScratch, 9, 1)}), EINVAL)
                  .Setup(SetScratch)
                  .Verify(ScratchUnchanged));
  v.push_back(Rejects("WriteMultiEntryCount0IsRejectedWithEinval", Command::kRegionWriteMulti,
                      WriteMulti(1, {Entry(kBar0, SampleDevice::kRegScratch, 0, 1)}), EINVAL));
  v.push_back(Rejects("WriteMultiWrCntHugeIsRejectedWithEinval", Command::kRegionWriteMulti,
                      WriteMulti(~0ull, {Entry(kBar0, SampleDevice::kRegScratch, 4, 1)}), EINVAL));
  {
    std::vector<wire::WriteMultiEntry> many(proto::kMaxWriteMultiEntries + 1,
                                            Entry(kBar0, SampleDevice::kRegScratch, 4, 7));
    v.push_back(Rejects("WriteMultiWith1025EntriesIsRejectedWithEinval", Command::kRegionWriteMulti,
                        WriteMulti(many.size(), many), EINVAL)
                    .Setup(SetScratch)
                    .Verify(ScratchUnchanged));
  }
  v.push_back(
      Rejects(
          "WriteMultiWithOneBadEntryAppliesNoneAndIsRejectedWithEinval", Command::kRegionWriteMulti,
          WriteMulti(2, {Entry(kBar0, SampleDevice::kRegScratch, 4, 1), Entry(9, 0, 4, 2)}), EINVAL)
          .Setup(SetScratch)
          .Verify(ScratchUnchanged));

  // --- VERSION --------------------------------------------------------------------------------
  {
    HostileCase c = Rejects("VersionWithMajor1IsRejectedWithEnotsupAndClosed", Command::kVersion,
                            Version(kQemuVersionJson, 1, 0), ENOTSUP);
    c.outcome = Outcome::kErrorReplyThenClose;
    v.push_back(c.BeforeVersion());
  }
  {
    HostileCase c = Rejects("VersionWithMajor0xffffIsRejectedWithEnotsupAndClosed",
                            Command::kVersion, Version("", 0xffff, 0), ENOTSUP);
    c.outcome = Outcome::kErrorReplyThenClose;
    v.push_back(c.BeforeVersion());
  }
  v.push_back(Rejects("VersionJsonWithoutNulIsRejectedWithEinval", Command::kVersion,
                      VersionPayload(0, 0, "{}", /*nul=*/false), EINVAL)
                  .BeforeVersion()
                  .Verify(NotNegotiated));
  v.push_back(Rejects("VersionJsonWithEmbeddedNulIsRejectedWithEinval", Command::kVersion,
                      VersionPayload(0, 0, std::string_view("{}\0{}", 5)), EINVAL)
                  .BeforeVersion()
                  .Verify(NotNegotiated));
  {
    // 4097 bytes of JSON including its NUL: one over the limit.
    std::string json = "{\"capabilities\":{},\"pad\":\"";
    json += Repeat('x', 4096 - json.size() - 2);
    json += "\"}";  // 4096 characters, so 4097 bytes with the NUL
    v.push_back(Rejects("VersionJsonOf4097BytesIsRejectedWithE2big", Command::kVersion,
                        Version(json), E2BIG)
                    .BeforeVersion()
                    .Verify(NotNegotiated));
  }
  v.push_back(Rejects("VersionMalformedJsonIsRejectedWithEinval", Command::kVersion,
                      Version("{\"capabilities\": {\"max_msg_fds\": 16"), EINVAL)
                  .BeforeVersion()
                  .Verify(NotNegotiated));
  v.push_back(Rejects("VersionJsonArrayIsRejectedWithEinval", Command::kVersion,
                      Version("[{\"capabilities\":{}}]"), EINVAL)
                  .BeforeVersion()
                  .Verify(NotNegotiated));
  v.push_back(
      Rejects("VersionJsonNumberIsRejectedWithEinval", Command::kVersion, Version("42"), EINVAL)
          .BeforeVersion());
  v.push_back(Rejects("VersionCapabilitiesArrayIsRejectedWithEinval", Command::kVersion,
                      Version("{\"capabilities\":[16]}"), EINVAL)
                  .BeforeVersion()
                  .Verify(NotNegotiated));
  v.push_back(Rejects("VersionCapabilitiesNumberIsRejectedWithEinval", Command::kVersion,
                      Version("{\"capabilities\":7}"), EINVAL)
                  .BeforeVersion());
  v.push_back(Rejects("VersionMaxMsgFdsAsStringIsRejectedWithEinval", Command::kVersion,
                      Version("{\"capabilities\":{\"max_msg_fds\":\"16\"}}"), EINVAL)
                  .BeforeVersion()
                  .Verify(NotNegotiated));
  v.push_back(Rejects("VersionNegativeMaxMsgFdsIsRejectedWithEinval", Command::kVersion,
                      Version("{\"capabilities\":{\"max_msg_fds\":-1}}"), EINVAL)
                  .BeforeVersion()
                  .Verify(NotNegotiated));
  v.push_back(Rejects("VersionFractionalMaxDataXferSizeIsRejectedWithEinval", Command::kVersion,
                      Version("{\"capabilities\":{\"max_data_xfer_size\":1.5}}"), EINVAL)
                  .BeforeVersion());
  v.push_back(Rejects("VersionWriteMultipleAsStringIsRejectedWithEinval", Command::kVersion,
                      Version("{\"capabilities\":{\"write_multiple\":\"yes\"}}"), EINVAL)
                  .BeforeVersion());
  v.push_back(Rejects("VersionMigrationNotAnObjectIsRejectedWithEinval", Command::kVersion,
                      Version("{\"capabilities\":{\"migration\":true}}"), EINVAL)
                  .BeforeVersion());
  v.push_back(Rejects("VersionPgsizesWithout4KiBIsRejectedWithEinval", Command::kVersion,
                      Version("{\"capabilities\":{\"pgsizes\":8192}}"), EINVAL)
                  .BeforeVersion()
                  .Verify(NotNegotiated));
  v.push_back(Rejects("VersionWithInvalidUtf8IsRejectedWithEinval", Command::kVersion,
                      Version("{\"capabilities\":{},\"x\":\"\xff\xfe\"}"), EINVAL)
                  .BeforeVersion());
  v.push_back(Rejects("VersionNested4000DeepIsRejectedWithEinval", Command::kVersion,
                      Version(Repeat('[', 4000)), EINVAL)
                  .BeforeVersion()
                  .Verify(NotNegotiated));
  v.push_back(Rejects("VersionNestedInsideCapabilitiesIsRejectedWithEinval", Command::kVersion,
                      Version("{\"capabilities\":{\"x\":[[[[[[[[[[1]]]]]]]]]]}}"), EINVAL)
                  .BeforeVersion());
  v.push_back(Rejects("VersionNested10000DeepIsRejectedWithE2big", Command::kVersion,
                      Version(Repeat('[', 10000)), E2BIG)
                  .BeforeVersion()
                  .Verify(NotNegotiated));
  v.push_back(Rejects("SecondVersionAfterNegotiationIsRejectedWithEinval", Command::kVersion,
                      Version(kQemuVersionJson), EINVAL));

  // --- Everything before VERSION --------------------------------------------------------------
  struct PreVersion {
    const char* name;
    uint16_t command;
    Bytes payload;
  };
  const std::vector<PreVersion> pre = {
      {"DmaMap", Id(Command::kDmaMap), DmaMap(0x10000, 0x1000)},
      {"DmaUnmap", Id(Command::kDmaUnmap), DmaUnmap(0, 0, wire::kDmaUnmapFlagAll)},
      {"GetInfo", Id(Command::kDeviceGetInfo), GetInfo()},
      {"RegionInfo", Id(Command::kDeviceGetRegionInfo), RegionInfo(0)},
      {"RegionIoFds", Id(Command::kDeviceGetRegionIoFds),
       AsBytes(wire::RegionIoFdsRequest{16, 0, 0, 0})},
      {"IrqInfo", Id(Command::kDeviceGetIrqInfo), IrqInfo(0)},
      {"SetIrqs", Id(Command::kDeviceSetIrqs), SetIrqs(kNoneTrigger, 0, 0, 0)},
      {"RegionRead", Id(Command::kRegionRead), Read(kBar0, 0, 4)},
      {"RegionWrite", Id(Command::kRegionWrite), Write(kBar0, SampleDevice::kRegScratch, 4, 4)},
      {"DmaRead", Id(Command::kDmaRead), AsBytes(wire::DmaAccess{0, 8})},
      {"DmaWrite", Id(Command::kDmaWrite), Concat(AsBytes(wire::DmaAccess{0, 8}), Bytes(8, 0))},
      {"DeviceReset", Id(Command::kDeviceReset), {}},
      {"WriteMulti", Id(Command::kRegionWriteMulti),
       WriteMulti(1, {Entry(kBar0, SampleDevice::kRegScratch, 4, 1)})},
      {"DeviceFeature", Id(Command::kDeviceFeature), AsBytes(wire::DeviceFeature{8, 0})},
      {"MigDataRead", Id(Command::kMigDataRead), {}},
      {"MigDataWrite", Id(Command::kMigDataWrite), {}},
  };
  for (const PreVersion& p : pre) {
    v.push_back(RejectsCommand(std::string(p.name) + "BeforeVersionIsRejectedWithEinval", p.command,
                               p.payload, EINVAL)
                    .BeforeVersion()
                    .Verify([](SessionHarness& h, SampleDevice& dev) {
                      EXPECT_FALSE(h.session()->negotiated());
                      EXPECT_EQ(h.session()->dma_maps().size(), 0u);
                      EXPECT_EQ(dev.scratch(), 0u);
                    }));
  }
  // An unknown command is unknown whatever the state: ENOSYS, not "too early".
  v.push_back(RejectsCommand("UnknownCommand99BeforeVersionIsRejectedWithEnosys", 99, {}, ENOSYS)
                  .BeforeVersion()
                  .Verify([](SessionHarness& h, SampleDevice&) {
                    EXPECT_FALSE(h.session()->negotiated());
                  }));
  v.push_back(Rejects("DmaMapWithMemfdBeforeVersionIsRejectedWithEinvalAndFdClosed",
                      Command::kDmaMap, DmaMap(0x10000, 0x1000), EINVAL)
                  .BeforeVersion()
                  .Fds(Memfds(1, 0x1000))
                  .Verify(NoMaps));

  // --- NO_REPLY on failing requests -----------------------------------------------------------
  v.push_back(Ignored("FailingGetInfoWithNoReplyGetsNoReply", Command::kDeviceGetInfo, GetInfo(0),
                      wire::kFlagNoReply));
  v.push_back(Ignored("FailingDmaMapWithNoReplyGetsNoReplyAndClosesItsFd", Command::kDmaMap,
                      DmaMap(0x10000, 0x2000), wire::kFlagNoReply)
                  .Fds(Memfds(1, 0x1000))
                  .Verify(NoMaps));
  v.push_back(Ignored("UnknownCommandWithNoReplyGetsNoReply", static_cast<Command>(99), {},
                      wire::kFlagNoReply));
  v.push_back(Ignored("FailingRegionWriteWithNoReplyGetsNoReplyAndIsNotApplied",
                      Command::kRegionWrite, Write(kBar0, SampleDevice::kRegScratch, 4, 3),
                      wire::kFlagNoReply)
                  .Setup(SetScratch)
                  .Verify(ScratchUnchanged));
  v.push_back(Ignored("RequestBeforeVersionWithNoReplyGetsNoReply", Command::kDeviceGetInfo,
                      GetInfo(), wire::kFlagNoReply)
                  .BeforeVersion()
                  .Verify(NotNegotiated));
  return v;
}

const std::vector<HostileCase>& Cases() {
  static const std::vector<HostileCase> cases = AllCases();
  return cases;
}

class HostileMessage : public ::testing::TestWithParam<HostileCase> {};

TEST(HostileMessageSuite, HasAtLeastFortyFiveCasesWithUniqueNames) {
  EXPECT_GE(Cases().size(), 45u);
  std::set<std::string> names;
  for (const HostileCase& c : Cases()) EXPECT_TRUE(names.insert(c.name).second) << c.name;
}

TEST_P(HostileMessage, IsRejectedExactlyAndServerRecoversWithoutLeakingFds) {
  const HostileCase& c = GetParam();
  const size_t fds_at_start = OpenFdCount();
  {
    auto created = SampleDevice::Create();
    ASSERT_TRUE(created.ok());
    std::unique_ptr<SampleDevice> device = std::move(*created);
    std::optional<SessionHarness> h(std::in_place, device.get());
    if (c.negotiate) h->Negotiate();
    if (c.setup) c.setup(*h);
    ASSERT_FALSE(HasFatalFailure());
    const size_t fds_before_message = OpenFdCount();

    {
      std::vector<UniqueFd> fds = c.make_fds ? c.make_fds() : std::vector<UniqueFd>();
      std::vector<int> raw = RawFds(fds);
      Bytes bytes = c.bytes();
      if (raw.size() > kMaxReceiveFds) {
        ASSERT_EQ(SendWithManyFds(h->client_fd(), bytes, raw), static_cast<ssize_t>(bytes.size()));
      } else {
        h->SendRaw(bytes, raw);
      }
    }  // the test's own copies of the fds are closed here
    if (c.half_close) {
      ASSERT_EQ(::shutdown(h->client_fd(), SHUT_WR), 0);
    }
    h->RunServer();

    if (c.outcome == Outcome::kErrorReply || c.outcome == Outcome::kErrorReplyThenClose) {
      auto r = h->ReadReply();
      ASSERT_TRUE(r.has_value()) << "no error reply";
      EXPECT_EQ(r->header.msg_id, kId);
      EXPECT_EQ(r->header.command, c.command);
      EXPECT_EQ(r->header.flags, wire::kFlagTypeReply | wire::kFlagError);
      EXPECT_EQ(r->header.msg_size, sizeof(wire::Header));
      EXPECT_EQ(r->error_no(), c.error)
          << "got " << std::strerror(r->error_no()) << ", want " << std::strerror(c.error);
      EXPECT_TRUE(r->payload.empty());
      EXPECT_TRUE(r->fds.empty());
    }
    EXPECT_TRUE(h->NoReplyPending()) << "more than one reply";

    if (c.outcome == Outcome::kErrorReply || c.outcome == Outcome::kNoReply) {
      EXPECT_FALSE(h->session_closed());
      // The server kept none of the fds that came with the rejected message.
      EXPECT_EQ(OpenFdCount(), fds_before_message);
    } else {
      EXPECT_TRUE(h->session_closed());
      if (!c.half_close) {
        // The stream is out of step: nothing more is read from it.
        h->SendStruct(Command::kDeviceGetInfo, wire::DeviceInfo{16, 0, 0, 0});
        EXPECT_EQ(h->RunServer(), Session::State::kClosed);
        EXPECT_TRUE(h->NoReplyPending());
      }
    }
    if (c.verify) c.verify(*h, *device);

    // The server still answers a well-formed request: on this session if it is open, else on a
    // new session for the same device.
    if (h->session_closed()) {
      h.reset();
      h.emplace(device.get());
    }
    if (!h->session()->negotiated()) h->Negotiate();
    auto info = h->CallStruct(Command::kDeviceGetInfo, wire::DeviceInfo{16, 0, 0, 0});
    ASSERT_FALSE(info.is_error()) << info.error_no();
    ASSERT_EQ(info.payload.size(), sizeof(wire::DeviceInfo));
    auto di = proto::Load<wire::DeviceInfo>(info.payload);
    EXPECT_EQ(di.num_regions, wire::kPciNumRegions);
    EXPECT_EQ(di.num_irqs, wire::kPciNumIrqs);
    EXPECT_EQ(Read32(*h, kBar0, SampleDevice::kRegMagic), SampleDevice::kMagic);
    EXPECT_TRUE(h->NoReplyPending());
  }
  EXPECT_EQ(OpenFdCount(), fds_at_start);
}

INSTANTIATE_TEST_SUITE_P(Cases, HostileMessage, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<HostileCase>& param_info) {
                           return param_info.param.name;
                         });

// --- Hostile cases that need more than one message or a non-default session ---------------

// A session with a tiny DMA map table, driven over its own socketpair.
TEST(HostileDmaMapTable, MapBeyondMaxDmaMapsIsRejectedWithEnospcAndFdClosed) {
  const size_t fds_at_start = OpenFdCount();
  {
    auto created = SampleDevice::Create();
    ASSERT_TRUE(created.ok());
    auto pair = UnixConnection::Pair();
    ASSERT_TRUE(pair.ok());
    UnixConnection client = std::move(pair->first);
    SessionOptions options;
    options.max_dma_maps = 2;
    Session session(std::move(pair->second), created->get(), options, LogContext());

    auto call = [&](uint16_t id, Command command, const Bytes& payload,
                    std::span<const int> fds = {}) -> std::optional<WireReply> {
      Bytes msg = BuildMessage(id, Id(command), payload);
      iovec iov{msg.data(), msg.size()};
      auto sent = client.Send({&iov, 1}, fds);
      if (!sent.ok() || *sent != msg.size()) {
        ADD_FAILURE() << "send failed";
        return std::nullopt;
      }
      EXPECT_EQ(session.OnReadable(), Session::State::kOpen);
      WireReply r;
      pollfd p{client.fd(), POLLIN, 0};
      if (::poll(&p, 1, 2000) != 1) return std::nullopt;
      auto got = client.Receive({reinterpret_cast<uint8_t*>(&r.header), sizeof(r.header)}, &r.fds);
      if (!got.ok() || got->bytes != sizeof(r.header)) return std::nullopt;
      r.payload.resize(r.header.msg_size - sizeof(wire::Header));
      if (!r.payload.empty()) {
        got = client.Receive(r.payload, &r.fds);
        if (!got.ok() || got->bytes != r.payload.size()) return std::nullopt;
      }
      EXPECT_EQ(r.header.msg_id, id);
      return r;
    };

    auto version = call(1, Command::kVersion, Version(kQemuVersionJson));
    ASSERT_TRUE(version);
    ASSERT_FALSE(version->is_error());
    auto caps = proto::DecodeVersion(version->payload);
    ASSERT_TRUE(caps.ok());
    ASSERT_TRUE(caps->caps.max_dma_maps);
    EXPECT_EQ(*caps->caps.max_dma_maps, 2u);  // the limit is advertised

    for (uint16_t i = 0; i < 2; ++i) {
      auto r = call(2 + i, Command::kDmaMap, DmaMap(0x100000 * (i + 1), 0x1000));
      ASSERT_TRUE(r);
      EXPECT_FALSE(r->is_error());
    }
    {
      UniqueFd memfd = MakeMemfd(0x1000);
      int raw = memfd.get();
      auto r = call(kId, Command::kDmaMap, DmaMap(0x900000, 0x1000), {&raw, 1});
      ASSERT_TRUE(r);
      EXPECT_TRUE(r->is_error());
      EXPECT_EQ(r->error_no(), ENOSPC);
    }
    EXPECT_EQ(session.dma_maps().size(), 2u);
    // Unmapping one makes room again.
    auto unmap = call(5, Command::kDmaUnmap, DmaUnmap(0x100000, 0x1000));
    ASSERT_TRUE(unmap);
    EXPECT_FALSE(unmap->is_error());
    auto again = call(6, Command::kDmaMap, DmaMap(0x900000, 0x1000));
    ASSERT_TRUE(again);
    EXPECT_FALSE(again->is_error());
  }
  EXPECT_EQ(OpenFdCount(), fds_at_start);
}

// A pipelined burst: a failing NO_REPLY request between two good ones produces exactly the two
// good replies, in order.
TEST(HostileNoReply, FailingNoReplyRequestInAPipelineLeavesOnlyTheOtherReplies) {
  SessionHarness h;
  h.Negotiate();
  uint16_t first = h.SendStruct(Command::kDeviceGetInfo, wire::DeviceInfo{16, 0, 0, 0});
  h.Send(Command::kRegionRead, Read(9, 0, 4), {}, wire::kFlagNoReply);
  uint16_t last = h.SendStruct(Command::kDeviceGetIrqInfo, wire::IrqInfo{16, 0, 0, 0});
  h.RunServer();
  auto r1 = h.ReadReply();
  auto r2 = h.ReadReply();
  ASSERT_TRUE(r1 && r2);
  EXPECT_EQ(r1->header.msg_id, first);
  EXPECT_FALSE(r1->is_error());
  EXPECT_EQ(r2->header.msg_id, last);
  EXPECT_FALSE(r2->is_error());
  EXPECT_TRUE(h.NoReplyPending());
  EXPECT_GE(h.session()->stats().errors, 1u);
}

// The fds of an ignored reply-type message are closed at once, even when it is the last message
// the session reads for now (the end of a read budget, or nothing else sent): they must not wait
// for a next message to recycle the inbound buffer.
TEST(HostileReplyFromClient, FdsOfAnIgnoredReplyAreClosedAtOnceEvenWhenNothingFollows) {
  SessionHarness h;
  h.Negotiate();
  const size_t before = OpenFdCount();
  const int budget = SessionOptions{}.read_budget;
  std::vector<uint16_t> ids;
  for (int i = 0; i < budget - 1; ++i) {
    ids.push_back(h.SendStruct(Command::kDeviceGetInfo, wire::DeviceInfo{16, 0, 0, 0}));
  }
  {
    UniqueFd efd = MakeEventfd();
    int raw = efd.get();
    h.Send(Command::kDeviceSetIrqs, SetIrqs(kEventfdTrigger, 0, 0, 1), {&raw, 1},
           wire::kFlagTypeReply);
  }
  h.RunServer();
  for (uint16_t id : ids) {
    auto r = h.ReadReply();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->header.msg_id, id);
  }
  EXPECT_TRUE(h.NoReplyPending());
  EXPECT_EQ(h.session()->irqs().eventfd_count(), 0u);
  EXPECT_EQ(OpenFdCount(), before) << "the server still holds the ignored message's eventfd";
}

// A header split across two sends is not an error: the server waits for the rest.
TEST(HostileFraming, HeaderArrivingInPiecesIsReassembledNotRejected) {
  SessionHarness h;
  h.Negotiate();
  Bytes msg = BuildMessage(kId, Id(Command::kDeviceGetInfo), GetInfo());
  h.SendRaw({msg.data(), 5});
  EXPECT_EQ(h.RunServer(), Session::State::kOpen);
  EXPECT_TRUE(h.NoReplyPending());
  h.SendRaw({msg.data() + 5, 15});
  EXPECT_EQ(h.RunServer(), Session::State::kOpen);
  EXPECT_TRUE(h.NoReplyPending());
  h.SendRaw({msg.data() + 20, msg.size() - 20});
  h.RunServer();
  auto r = h.ReadReply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->header.msg_id, kId);
  EXPECT_FALSE(r->is_error());
}

// A SampleDevice session on one end of a socketpair and a raw client on the other, past
// VERSION: for clients that send without reading.
struct RawClientSession {
  std::unique_ptr<SampleDevice> device;
  std::unique_ptr<MessageStream> client;
  std::unique_ptr<Session> session;

  // False when the socket is full (small messages go whole or not at all).
  bool SendRaw(const Bytes& msg) {
    iovec iov{const_cast<uint8_t*>(msg.data()), msg.size()};
    auto n = client->connection().Send({&iov, 1});
    if (!n.ok()) {
      EXPECT_EQ(n.error().code, EAGAIN);
      return false;
    }
    EXPECT_EQ(*n, msg.size());
    return true;
  }
};

void StartRawClientSession(SessionOptions options, RawClientSession* s) {
  auto created = SampleDevice::Create();
  ASSERT_TRUE(created.ok());
  s->device = std::move(*created);
  auto pair = UnixConnection::Pair();
  ASSERT_TRUE(pair.ok());
  s->client = std::make_unique<MessageStream>(std::move(pair->first));
  s->session =
      std::make_unique<Session>(std::move(pair->second), s->device.get(), options, LogContext());
  ASSERT_TRUE(s->SendRaw(BuildMessage(1, Id(Command::kVersion), Version(kQemuVersionJson))));
  ASSERT_EQ(s->session->OnReadable(), Session::State::kOpen);
  InboundMessage reply;
  ASSERT_EQ(*s->client->Read(&reply), ReadStatus::kMessage);
  ASSERT_FALSE(reply.header.flags & wire::kFlagError);
}

// A client that floods requests and never reads the replies: the server stops reading once its
// queued output reaches max_pending_output, so its memory stays bounded, and it catches up (in
// order) once the client reads.
TEST(HostileSlowReader, ServerStopsReadingWhileRepliesPileUpAndCatchesUpInOrder) {
  const size_t fds_at_start = OpenFdCount();
  {
    SessionOptions options;
    options.max_pending_output = 64 * 1024;
    RawClientSession raw;
    ASSERT_NO_FATAL_FAILURE(StartRawClientSession(options, &raw));
    Session& session = *raw.session;
    MessageStream& client = *raw.client;
    auto send_raw = [&](const Bytes& msg) { return raw.SendRaw(msg); };
    InboundMessage reply;

    // Serves the way the endpoint does: read while the socket is readable and reading is not
    // paused, flush when replies are queued.
    auto pump = [&] {
      for (int i = 0; i < 100000; ++i) {
        if (session.WantsWrite()) {
          ASSERT_EQ(session.OnWritable(), Session::State::kOpen);
        }
        pollfd p{session.fd(), POLLIN, 0};
        if (session.ReadPaused() || ::poll(&p, 1, 0) <= 0) return;
        ASSERT_EQ(session.OnReadable(), Session::State::kOpen);
      }
      FAIL() << "the session never stopped";
    };

    // Each 32-byte request asks for a 4 KiB reply (all of BAR2).
    constexpr uint32_t kReplySize = 16 + 16 + SampleDevice::kSharedBarSize;
    uint16_t sent = 0;
    for (int round = 0; round < 1000 && !session.ReadPaused(); ++round) {
      while (sent < 60000 &&
             send_raw(BuildMessage(static_cast<uint16_t>(2 + sent), Id(Command::kRegionRead),
                                   Read(2, 0, SampleDevice::kSharedBarSize)))) {
        ++sent;
      }
      pump();
    }
    ASSERT_TRUE(session.ReadPaused()) << "backpressure never kicked in";
    // Fill the client's socket again: the paused server takes none of it.
    while (sent < 60000 &&
           send_raw(BuildMessage(static_cast<uint16_t>(2 + sent), Id(Command::kRegionRead),
                                 Read(2, 0, SampleDevice::kSharedBarSize)))) {
      ++sent;
    }
    const uint64_t handled = session.stats().messages;
    for (int i = 0; i < 50; ++i) ASSERT_EQ(session.OnReadable(), Session::State::kOpen);
    EXPECT_EQ(session.stats().messages, handled) << "the server kept reading while paused";
    EXPECT_LT(handled, sent);
    // Replies the server holds (queued or in the kernel) are bounded, far below what `sent`
    // requests would need.
    EXPECT_LT((handled - 1) * kReplySize, 2u << 20);

    // Now read everything: every request is answered, in order.
    uint16_t next = 2;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (next < 2 + sent && std::chrono::steady_clock::now() < deadline) {
      auto r = client.Read(&reply);
      ASSERT_TRUE(r.ok());
      if (*r == ReadStatus::kMessage) {
        ASSERT_EQ(reply.header.msg_id, next);
        ASSERT_FALSE(reply.header.flags & wire::kFlagError);
        ASSERT_EQ(reply.header.msg_size, kReplySize);
        ++next;
        continue;
      }
      ASSERT_EQ(*r, ReadStatus::kWouldBlock);
      if (session.WantsWrite()) {
        ASSERT_EQ(session.OnWritable(), Session::State::kOpen);
      }
      ASSERT_EQ(session.OnReadable(), Session::State::kOpen);
    }
    EXPECT_EQ(next, 2 + sent);
  }
  EXPECT_EQ(OpenFdCount(), fds_at_start);
}

// Regression: replies that carry an fd (REGION_INFO of a region the client may mmap) each hold
// a duplicate while queued, and only queued bytes paused reading, so a client that never read
// could pile up tens of thousands of fds (about 80 bytes of reply each) and exhaust the
// process's fd limit, breaking every other device. Queued fds now pause reading too.
TEST(HostileSlowReader, QueuedRepliesHoldABoundedNumberOfFds) {
  const size_t fds_at_start = OpenFdCount();
  {
    SessionOptions options;  // defaults: 4 MiB of queued bytes would allow ~50000 such replies
    RawClientSession raw;
    ASSERT_NO_FATAL_FAILURE(StartRawClientSession(options, &raw));
    Session& session = *raw.session;
    auto send_raw = [&](const Bytes& msg) { return raw.SendRaw(msg); };

    // REGION_INFO of BAR2 (the mmappable one) until the server pauses or 20000 were sent.
    uint16_t sent = 0;
    for (int round = 0; round < 2000 && !session.ReadPaused() && sent < 20000; ++round) {
      while (sent < 20000 &&
             send_raw(BuildMessage(static_cast<uint16_t>(2 + sent),
                                   Id(Command::kDeviceGetRegionInfo), RegionInfo(2, 64)))) {
        ++sent;
      }
      for (int i = 0; i < 64 && !session.ReadPaused(); ++i) {
        if (session.WantsWrite()) {
          ASSERT_EQ(session.OnWritable(), Session::State::kOpen);
        }
        ASSERT_EQ(session.OnReadable(), Session::State::kOpen);
      }
    }
    ASSERT_TRUE(session.ReadPaused()) << "the server kept reading (" << sent << " sent)";
    EXPECT_LE(OpenFdCount(), fds_at_start + 2 + options.max_pending_fds + 64)
        << "fds held for queued replies";
  }
  EXPECT_EQ(OpenFdCount(), fds_at_start);
}

// Hundreds of well-framed random requests (random command, flags and payload) in one burst:
// every command-type request without NO_REPLY gets exactly one reply, in order; the session
// survives, leaks nothing, and still serves a well-formed request.
TEST(HostileBurst, RandomWellFramedRequestsEachGetOneReplyInOrder) {
  const size_t fds_at_start = OpenFdCount();
  {
    SessionHarness h;
    h.Negotiate();
    uint64_t state = 0x9e3779b97f4a7c15ull;
    auto next_random = [&state] {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      return state;
    };
    std::vector<uint16_t> expect_reply;
    for (uint16_t id = 100; id < 700; ++id) {
      uint16_t command;
      do {
        command = static_cast<uint16_t>(next_random() % 20);
      } while (command == Id(Command::kVersion));  // a bad major would end the session
      uint32_t flags = 0;
      switch (next_random() % 8) {
        case 0:
          flags = wire::kFlagNoReply;
          break;
        case 1:
          flags = wire::kFlagTypeReply;
          break;
        case 2:
          flags = 0x2;
          break;
        default:
          break;
      }
      Bytes payload(next_random() % 64);
      for (uint8_t& b : payload) b = static_cast<uint8_t>(next_random());
      // Make the fixed fields plausible half of the time, so deeper checks run too.
      if (payload.size() >= 16 && next_random() % 2) {
        uint32_t argsz = 32;
        std::memcpy(payload.data(), &argsz, 4);
        uint32_t small = static_cast<uint32_t>(next_random() % 10);
        std::memcpy(payload.data() + 8, &small, 4);
        std::memcpy(payload.data() + 12, &small, 4);
      }
      h.SendRaw(BuildMessage(id, command, payload, flags));
      if (flags == 0 || flags == 0x2) expect_reply.push_back(id);
    }
    EXPECT_EQ(h.RunServer(), Session::State::kOpen);
    for (uint16_t id : expect_reply) {
      auto r = h.ReadReply();
      ASSERT_TRUE(r) << "no reply for " << id;
      ASSERT_EQ(r->header.msg_id, id);
      EXPECT_EQ(r->header.flags & wire::kFlagTypeMask, wire::kFlagTypeReply);
      EXPECT_TRUE(r->fds.empty() || r->header.command == Id(Command::kDeviceGetRegionInfo));
    }
    EXPECT_TRUE(h.NoReplyPending());
    EXPECT_FALSE(h.session_closed());
    auto info = h.CallStruct(Command::kDeviceGetInfo, wire::DeviceInfo{16, 0, 0, 0});
    EXPECT_FALSE(info.is_error());
  }
  EXPECT_EQ(OpenFdCount(), fds_at_start);
}

}  // namespace
}  // namespace vfu::testing
