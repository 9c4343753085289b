// Positive cases per command over a real socketpair (SessionHarness): what a well-behaved
// client sends and exactly what it gets back, plus the device-visible effects (registers,
// interrupts through eventfds, guest memory through the DMA map table).
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "server/client/client.h"
#include "server/devices/sample_device.h"
#include "server/pci/config_space.h"
#include "server/protocol/codec.h"
#include "server/runtime/reactor.h"
#include "server/session/endpoint.h"
#include "tests/support/fd_count.h"
#include "tests/support/session_harness.h"
#include "tests/unit/session/wire_test_util.h"

namespace vfu::testing {
namespace {

using devices::SampleDevice;
using wire::Command;

constexpr uint32_t kBar0 = 0;
constexpr uint32_t kConfig = wire::kPciConfigRegionIndex;

// --- A minimal device with 8 maskable MSI-X vectors, for multi-vector SET_IRQS ---------------
// Implemented on the VfioDevice seam directly, so it depends on nothing but that interface.
class MsixDevice : public VfioDevice {
 public:
  static constexpr uint32_t kVectors = 8;

  RegionDescription DescribeRegion(uint32_t index) const override {
    RegionDescription r;
    if (index == kConfig) {
      r.size = 256;
      r.flags = wire::kRegionFlagRead | wire::kRegionFlagWrite;
    }
    return r;
  }
  IrqDescription DescribeIrq(uint32_t index) const override {
    if (index == wire::kPciMsixIrqIndex) {
      return {kVectors, wire::kIrqInfoEventfd | wire::kIrqInfoMaskable | wire::kIrqInfoNoResize};
    }
    return {0, wire::kIrqInfoEventfd};
  }
  Status ReadRegion(uint32_t, uint64_t, std::span<uint8_t> out) override {
    std::memset(out.data(), 0, out.size());
    return Status::Ok();
  }
  Status WriteRegion(uint32_t, uint64_t, std::span<const uint8_t>) override { return Status::Ok(); }
  Status Reset() override { return Status::Ok(); }
  void Attach(DeviceContext* context) override { context_ = context; }
  void Detach() override { context_ = nullptr; }
  void OnIrqMaskChanged(uint32_t index, uint32_t vector, bool masked) override {
    mask_changes.push_back({index, vector, masked});
  }

  bool Raise(uint32_t vector) {
    return context_ != nullptr && context_->TriggerIrq(wire::kPciMsixIrqIndex, vector);
  }

  struct Change {
    uint32_t index;
    uint32_t vector;
    bool masked;
    bool operator==(const Change&) const = default;
  };
  std::vector<Change> mask_changes;

 private:
  DeviceContext* context_ = nullptr;
};

std::vector<uint8_t> SetIrqsPayload(uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
                                    std::span<const uint8_t> bools = {}) {
  auto p = AsBytes(wire::IrqSet{static_cast<uint32_t>(sizeof(wire::IrqSet) + bools.size()), flags,
                                index, start, count});
  p.insert(p.end(), bools.begin(), bools.end());
  return p;
}

void SetIrqsOk(SessionHarness& h, uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
               std::span<const int> fds = {}, std::span<const uint8_t> bools = {}) {
  auto r = h.Call(Command::kDeviceSetIrqs, SetIrqsPayload(flags, index, start, count, bools), fds);
  EXPECT_FALSE(r.is_error()) << "SET_IRQS failed: " << r.error_no();
  EXPECT_TRUE(r.payload.empty());
}

constexpr uint32_t kEventfdTrigger = wire::kIrqSetDataEventfd | wire::kIrqSetActionTrigger;
constexpr uint32_t kNoneTrigger = wire::kIrqSetDataNone | wire::kIrqSetActionTrigger;
constexpr uint32_t kNoneUnmask = wire::kIrqSetDataNone | wire::kIrqSetActionUnmask;

void AssignIntx(SessionHarness& h, int eventfd) {
  SetIrqsOk(h, kEventfdTrigger, wire::kPciIntxIrqIndex, 0, 1, {&eventfd, 1});
}
void RaiseIntx(SessionHarness& h) { Write32(h, kBar0, SampleDevice::kRegIrq, 1); }

nlohmann::json ReplyJson(const WireReply& r) {
  EXPECT_GT(r.payload.size(), sizeof(wire::Version));
  EXPECT_EQ(r.payload.back(), 0);
  std::string text(r.payload.begin() + sizeof(wire::Version), r.payload.end() - 1);
  return nlohmann::json::parse(text);
}

WireReply VersionCall(SessionHarness& h, uint16_t minor, std::string_view json,
                      bool with_json = true) {
  std::vector<uint8_t> payload;
  proto::Append(payload, wire::Version{0, minor});
  if (with_json) {
    payload.insert(payload.end(), json.begin(), json.end());
    payload.push_back(0);
  }
  return h.Call(Command::kVersion, payload);
}

// --- VERSION --------------------------------------------------------------------------------

TEST(Version, ClientProposingNoJsonGetsReplyWithoutJson) {
  SessionHarness h;
  auto r = VersionCall(h, 0, "", /*with_json=*/false);
  ASSERT_FALSE(r.is_error()) << r.error_no();
  ASSERT_EQ(r.payload.size(), sizeof(wire::Version));  // no JSON at all
  auto v = proto::Load<wire::Version>(r.payload);
  EXPECT_EQ(v.major, 0);
  EXPECT_EQ(v.minor, 0);
  EXPECT_LE(r.header.msg_size, sizeof(wire::Header) + sizeof(wire::Version));
  EXPECT_TRUE(h.session()->negotiated());
}

TEST(Version, EmptyCapabilitiesGetReplyNoLongerThanRequest) {
  for (std::string_view json : {"", "{}", "{\"capabilities\":{}}"}) {
    SessionHarness h;
    auto r = VersionCall(h, 0, json);
    ASSERT_FALSE(r.is_error()) << json;
    EXPECT_EQ(r.payload.size(), sizeof(wire::Version)) << json;  // nothing proposed, nothing said
    EXPECT_LE(r.header.msg_size, sizeof(wire::Header) + sizeof(wire::Version) + json.size() + 1);
  }
}

TEST(Version, ReplyCarriesOnlyTheCapabilitiesTheClientProposed) {
  SessionHarness h;
  auto r = VersionCall(h, 0, "{\"capabilities\":{\"max_msg_fds\":16}}");
  ASSERT_FALSE(r.is_error());
  auto doc = ReplyJson(r);
  ASSERT_TRUE(doc.contains("capabilities"));
  const auto& caps = doc["capabilities"];
  ASSERT_EQ(caps.size(), 1u) << doc.dump();
  EXPECT_EQ(caps["max_msg_fds"], proto::kAdvertisedMaxMsgFds);
}

TEST(Version, UnknownKeysAreAcceptedAndNotEchoed) {
  SessionHarness h;
  auto r = VersionCall(
      h, 0,
      "{\"capabilities\":{\"max_msg_fds\":16,\"future_cap\":{\"x\":[1,2]}},\"vendor\":\"acme\"}");
  ASSERT_FALSE(r.is_error()) << r.error_no();
  auto doc = ReplyJson(r);
  EXPECT_FALSE(doc["capabilities"].contains("future_cap"));
  EXPECT_FALSE(doc.contains("vendor"));
  EXPECT_TRUE(h.session()->negotiated());
}

TEST(Version, ReplyShrinksToFitATinyRequestAndStaysASubset) {
  SessionHarness h;
  const std::string json =
      "{\"capabilities\":{\"max_msg_fds\":1,\"max_data_xfer_size\":1,\"pgsizes\":4096,"
      "\"max_dma_maps\":1,\"write_multiple\":true}}";
  auto r = VersionCall(h, 0, json);
  ASSERT_FALSE(r.is_error());
  const size_t request_size = sizeof(wire::Header) + sizeof(wire::Version) + json.size() + 1;
  EXPECT_LE(r.header.msg_size, request_size);
  auto doc = ReplyJson(r);
  const std::set<std::string> proposed = {"max_msg_fds", "max_data_xfer_size", "pgsizes",
                                          "max_dma_maps", "write_multiple"};
  ASSERT_TRUE(doc["capabilities"].is_object());
  for (const auto& [key, value] : doc["capabilities"].items()) {
    EXPECT_TRUE(proposed.count(key)) << key;
  }
  EXPECT_TRUE(doc["capabilities"].contains("max_msg_fds"));  // the most important one stays
  EXPECT_LT(doc["capabilities"].size(), proposed.size());    // something had to go
}

TEST(Version, ReplyMinorIsNotAboveTheClientsMinor) {
  SessionHarness h;
  auto r = VersionCall(h, 7, "{}");
  ASSERT_FALSE(r.is_error());
  auto v = proto::Load<wire::Version>(r.payload);
  EXPECT_EQ(v.major, 0);
  EXPECT_LE(v.minor, 7);
  EXPECT_EQ(v.minor, wire::kProtocolMinor);
}

TEST(Version, JsonOfExactly4096BytesIsAccepted) {
  SessionHarness h;
  std::string json = "{\"capabilities\":{\"max_msg_fds\":16},\"pad\":\"";
  json += std::string(4095 - json.size() - 2, 'x');
  json += "\"}";
  ASSERT_EQ(json.size() + 1, proto::kMaxVersionJsonSize);
  auto r = VersionCall(h, 0, json);
  EXPECT_FALSE(r.is_error()) << r.error_no();
  EXPECT_TRUE(h.session()->negotiated());
}

TEST(Version, RetryAfterRejectedVersionSucceeds) {
  SessionHarness h;
  auto bad = VersionCall(h, 0, "{\"capabilities\":{\"pgsizes\":8192}}");
  ASSERT_TRUE(bad.is_error());
  EXPECT_EQ(bad.error_no(), EINVAL);
  EXPECT_FALSE(h.session()->negotiated());
  auto good = h.Negotiate();
  EXPECT_FALSE(good.is_error());
  EXPECT_TRUE(h.session()->negotiated());
}

// --- DMA_MAP / DMA_UNMAP --------------------------------------------------------------------

std::vector<uint8_t> DmaMapPayload(uint64_t iova, uint64_t size, uint64_t offset = 0,
                                   uint32_t flags = wire::kDmaFlagRead | wire::kDmaFlagWrite) {
  return AsBytes(wire::DmaMap{32, flags, offset, iova, size});
}

TEST(DmaMap, MapWithoutFdIsRecordedButNotDirectlyAccessible) {
  SessionHarness h;
  h.Negotiate();
  auto r = h.Call(Command::kDmaMap, DmaMapPayload(0x100000, 0x4000));
  ASSERT_FALSE(r.is_error()) << r.error_no();
  EXPECT_EQ(r.header.msg_size, sizeof(wire::Header));
  ASSERT_EQ(h.session()->dma_maps().size(), 1u);
  auto p = h.session()->guest_memory().Translate(0x100000, 16, GuestMemory::Access::kRead);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().code, EFAULT);
  uint8_t buf[4];
  EXPECT_EQ(h.session()->guest_memory().Read(0x100000, buf).code(), EFAULT);
}

TEST(DmaMap, MemfdMapIsVisibleToTheDeviceThroughGuestMemory) {
  SessionHarness h;
  h.Negotiate();
  constexpr size_t kSize = 0x10000;
  UniqueFd memfd = MakeMemfd(kSize);
  std::vector<uint8_t> pattern(256);
  uint32_t expected_sum = 0;
  for (size_t i = 0; i < pattern.size(); ++i) {
    pattern[i] = static_cast<uint8_t>(i * 7 + 3);
    expected_sum += pattern[i];
  }
  ASSERT_EQ(::pwrite(memfd.get(), pattern.data(), pattern.size(), 0x1000),
            static_cast<ssize_t>(pattern.size()));
  int raw = memfd.get();
  auto r = h.Call(Command::kDmaMap, DmaMapPayload(0x200000, kSize), {&raw, 1});
  ASSERT_FALSE(r.is_error()) << r.error_no();

  auto p =
      h.session()->guest_memory().Translate(0x201000, pattern.size(), GuestMemory::Access::kRead);
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(std::memcmp(*p, pattern.data(), pattern.size()), 0);

  // The sample device sums guest memory once bus mastering is on.
  uint16_t command = pci::kCommandMemory | pci::kCommandBusMaster;
  ASSERT_FALSE(RegionWrite(h, kConfig, pci::kCommand, AsBytes(command)).is_error());
  Write32(h, kBar0, SampleDevice::kRegDmaAddrLo, 0x201000);
  Write32(h, kBar0, SampleDevice::kRegDmaAddrHi, 0);
  Write32(h, kBar0, SampleDevice::kRegDmaLen, static_cast<uint32_t>(pattern.size()));
  Write32(h, kBar0, SampleDevice::kRegDmaCmd, SampleDevice::kDmaSum);
  EXPECT_EQ(Read32(h, kBar0, SampleDevice::kRegDmaStatus), 0u);
  EXPECT_EQ(Read32(h, kBar0, SampleDevice::kRegDmaResult), expected_sum);

  // ...and fills it: the client sees the bytes in its memfd.
  Write32(h, kBar0, SampleDevice::kRegScratch, 0xab);
  Write32(h, kBar0, SampleDevice::kRegDmaCmd, SampleDevice::kDmaFill);
  EXPECT_EQ(Read32(h, kBar0, SampleDevice::kRegDmaStatus), 0u);
  std::vector<uint8_t> back(pattern.size());
  ASSERT_EQ(::pread(memfd.get(), back.data(), back.size(), 0x1000),
            static_cast<ssize_t>(back.size()));
  EXPECT_EQ(back, std::vector<uint8_t>(pattern.size(), 0xab));
}

TEST(DmaMap, ReadOnlyMapRefusesDeviceWritesWithEacces) {
  SessionHarness h;
  h.Negotiate();
  UniqueFd memfd = MakeMemfd(0x1000);
  int raw = memfd.get();
  auto r =
      h.Call(Command::kDmaMap, DmaMapPayload(0x300000, 0x1000, 0, wire::kDmaFlagRead), {&raw, 1});
  ASSERT_FALSE(r.is_error()) << r.error_no();
  uint16_t command = pci::kCommandMemory | pci::kCommandBusMaster;
  ASSERT_FALSE(RegionWrite(h, kConfig, pci::kCommand, AsBytes(command)).is_error());
  Write32(h, kBar0, SampleDevice::kRegDmaAddrLo, 0x300000);
  Write32(h, kBar0, SampleDevice::kRegDmaLen, 16);
  Write32(h, kBar0, SampleDevice::kRegDmaCmd, SampleDevice::kDmaFill);
  EXPECT_EQ(Read32(h, kBar0, SampleDevice::kRegDmaStatus), static_cast<uint32_t>(EACCES));
  Write32(h, kBar0, SampleDevice::kRegDmaCmd, SampleDevice::kDmaSum);
  EXPECT_EQ(Read32(h, kBar0, SampleDevice::kRegDmaStatus), 0u);
}

TEST(DmaMap, AdjacentMapsAreAccepted) {
  SessionHarness h;
  h.Negotiate();
  EXPECT_FALSE(h.Call(Command::kDmaMap, DmaMapPayload(0x100000, 0x1000)).is_error());
  EXPECT_FALSE(h.Call(Command::kDmaMap, DmaMapPayload(0x101000, 0x1000)).is_error());
  EXPECT_FALSE(h.Call(Command::kDmaMap, DmaMapPayload(0xff000, 0x1000)).is_error());
  EXPECT_EQ(h.session()->dma_maps().size(), 3u);
  EXPECT_EQ(h.session()->dma_maps().mapped_bytes(), 0x3000u);
}

TEST(DmaUnmap, ExactUnmapRemovesTheMapAndEchoesTheRequest) {
  SessionHarness h;
  h.Negotiate();
  UniqueFd memfd = MakeMemfd(0x4000);
  int raw = memfd.get();
  ASSERT_FALSE(h.Call(Command::kDmaMap, DmaMapPayload(0x100000, 0x4000), {&raw, 1}).is_error());
  auto r = h.CallStruct(Command::kDmaUnmap, wire::DmaUnmap{24, 0, 0x100000, 0x4000});
  ASSERT_FALSE(r.is_error()) << r.error_no();
  ASSERT_EQ(r.payload.size(), sizeof(wire::DmaUnmap));
  auto echo = proto::Load<wire::DmaUnmap>(r.payload);
  EXPECT_EQ(echo.argsz, sizeof(wire::DmaUnmap));
  EXPECT_EQ(echo.flags, 0u);
  EXPECT_EQ(echo.address, 0x100000u);
  EXPECT_EQ(echo.size, 0x4000u);
  EXPECT_EQ(h.session()->dma_maps().size(), 0u);
  EXPECT_EQ(
      h.session()->guest_memory().Translate(0x100000, 1, GuestMemory::Access::kRead).error().code,
      EFAULT);
  // The same range can be mapped again.
  EXPECT_FALSE(h.Call(Command::kDmaMap, DmaMapPayload(0x100000, 0x4000)).is_error());
}

TEST(DmaUnmap, AllRemovesEveryMapAndEchoesTheFlag) {
  SessionHarness h;
  h.Negotiate();
  for (uint64_t iova : {0x100000ull, 0x200000ull, 0x100000000ull}) {
    ASSERT_FALSE(h.Call(Command::kDmaMap, DmaMapPayload(iova, 0x1000)).is_error());
  }
  ASSERT_EQ(h.session()->dma_maps().size(), 3u);
  auto r = h.CallStruct(Command::kDmaUnmap, wire::DmaUnmap{24, wire::kDmaUnmapFlagAll, 0, 0});
  ASSERT_FALSE(r.is_error()) << r.error_no();
  ASSERT_EQ(r.payload.size(), sizeof(wire::DmaUnmap));
  auto echo = proto::Load<wire::DmaUnmap>(r.payload);
  EXPECT_EQ(echo.flags, wire::kDmaUnmapFlagAll);
  EXPECT_EQ(echo.address, 0u);
  EXPECT_EQ(echo.size, 0u);
  EXPECT_EQ(h.session()->dma_maps().size(), 0u);
  // ALL on an empty table is fine too.
  EXPECT_FALSE(h.CallStruct(Command::kDmaUnmap, wire::DmaUnmap{24, wire::kDmaUnmapFlagAll, 0, 0})
                   .is_error());
}

// --- DEVICE_GET_INFO / REGION_INFO / IRQ_INFO -----------------------------------------------

TEST(DeviceGetInfo, ReportsPciWithResetNineRegionsFiveIrqs) {
  SessionHarness h;
  h.Negotiate();
  auto r = h.CallStruct(Command::kDeviceGetInfo, wire::DeviceInfo{64, 0, 0, 0});
  ASSERT_FALSE(r.is_error());
  ASSERT_EQ(r.payload.size(), sizeof(wire::DeviceInfo));
  auto info = proto::Load<wire::DeviceInfo>(r.payload);
  EXPECT_EQ(info.argsz, 16u);
  EXPECT_EQ(info.flags, wire::kDeviceFlagPci | wire::kDeviceFlagReset);
  EXPECT_EQ(info.num_regions, 9u);
  EXPECT_EQ(info.num_irqs, 5u);
}

WireReply RegionInfoCall(SessionHarness& h, uint32_t index, uint32_t argsz) {
  wire::RegionInfo req{};
  req.argsz = argsz;
  req.index = index;
  return h.CallStruct(Command::kDeviceGetRegionInfo, req);
}

TEST(RegionInfo, MmappableBarIsTruncatedToArgszThenCompleteOnRetry) {
  SessionHarness h;
  h.Negotiate();
  auto first = RegionInfoCall(h, 2, 32);
  ASSERT_FALSE(first.is_error());
  ASSERT_EQ(first.payload.size(), 32u);
  EXPECT_TRUE(first.fds.empty());
  auto ri = proto::Load<wire::RegionInfo>(first.payload);
  const uint32_t full =
      sizeof(wire::RegionInfo) + sizeof(wire::SparseMmapCap) + sizeof(wire::SparseMmapArea);
  EXPECT_EQ(ri.argsz, full);
  EXPECT_EQ(ri.index, 2u);
  EXPECT_EQ(ri.size, SampleDevice::kSharedBarSize);
  EXPECT_FALSE(ri.flags & wire::kRegionFlagCaps);
  EXPECT_EQ(ri.cap_offset, 0u);

  auto second = RegionInfoCall(h, 2, ri.argsz);
  ASSERT_FALSE(second.is_error());
  ASSERT_EQ(second.payload.size(), full);
  ASSERT_EQ(second.fds.size(), 1u);
  auto decoded = proto::DecodeRegionInfoReply(second.payload);
  ASSERT_TRUE(decoded.ok()) << decoded.error().message;
  EXPECT_EQ(decoded->info.flags, wire::kRegionFlagRead | wire::kRegionFlagWrite |
                                     wire::kRegionFlagMmap | wire::kRegionFlagCaps);
  EXPECT_EQ(decoded->info.cap_offset, 32u);
  ASSERT_EQ(decoded->sparse_areas.size(), 1u);
  EXPECT_EQ(decoded->sparse_areas[0].offset, 0u);
  EXPECT_EQ(decoded->sparse_areas[0].size, SampleDevice::kSharedBarSize);

  // The fd maps BAR2: bytes written through it show up in the SHM_SUM register.
  void* p = ::mmap(nullptr, SampleDevice::kSharedBarSize, PROT_READ | PROT_WRITE, MAP_SHARED,
                   second.fds[0].get(), static_cast<off_t>(decoded->info.offset));
  ASSERT_NE(p, MAP_FAILED);
  static_cast<uint8_t*>(p)[0] = 40;
  static_cast<uint8_t*>(p)[100] = 2;
  ::munmap(p, SampleDevice::kSharedBarSize);
  EXPECT_EQ(Read32(h, kBar0, SampleDevice::kRegShmSum), 42u);

  // A bigger buffer than needed gets exactly the full payload.
  auto big = RegionInfoCall(h, 2, 4096);
  ASSERT_FALSE(big.is_error());
  EXPECT_EQ(big.payload.size(), full);
  EXPECT_EQ(big.fds.size(), 1u);
}

TEST(RegionInfo, TrappedAndAbsentRegionsAreDescribedWithoutCaps) {
  SessionHarness h;
  h.Negotiate();
  struct Want {
    uint32_t index;
    uint64_t size;
    uint32_t flags;
  };
  const uint32_t rw = wire::kRegionFlagRead | wire::kRegionFlagWrite;
  for (const Want& w : {Want{0, SampleDevice::kRegisterBarSize, rw}, Want{1, 0, 0}, Want{3, 0, 0},
                        Want{5, 0, 0}, Want{6, 0, 0}, Want{7, 256, rw}, Want{8, 0, 0}}) {
    auto r = RegionInfoCall(h, w.index, 32);
    ASSERT_FALSE(r.is_error()) << w.index;
    ASSERT_EQ(r.payload.size(), 32u);
    EXPECT_TRUE(r.fds.empty());
    auto ri = proto::Load<wire::RegionInfo>(r.payload);
    EXPECT_EQ(ri.argsz, 32u) << w.index;
    EXPECT_EQ(ri.index, w.index);
    EXPECT_EQ(ri.size, w.size) << w.index;
    EXPECT_EQ(ri.flags, w.flags) << w.index;
    EXPECT_EQ(ri.cap_offset, 0u);
  }
}

TEST(IrqInfo, ReportsCountAndFlagsOfEveryIndex) {
  SessionHarness h;
  h.Negotiate();
  struct Want {
    uint32_t index;
    uint32_t count;
    uint32_t flags;
  };
  for (const Want& w :
       {Want{0, 1, wire::kIrqInfoEventfd | wire::kIrqInfoMaskable | wire::kIrqInfoAutomasked},
        Want{1, 0, wire::kIrqInfoEventfd},
        Want{2, 0, wire::kIrqInfoEventfd | wire::kIrqInfoMaskable | wire::kIrqInfoNoResize},
        Want{3, 1, wire::kIrqInfoEventfd}, Want{4, 1, wire::kIrqInfoEventfd}}) {
    auto r = h.CallStruct(Command::kDeviceGetIrqInfo, wire::IrqInfo{16, 0, w.index, 0});
    ASSERT_FALSE(r.is_error()) << w.index;
    ASSERT_EQ(r.payload.size(), sizeof(wire::IrqInfo));
    auto ii = proto::Load<wire::IrqInfo>(r.payload);
    EXPECT_EQ(ii.argsz, 16u);
    EXPECT_EQ(ii.index, w.index);
    EXPECT_EQ(ii.count, w.count) << w.index;
    EXPECT_EQ(ii.flags, w.flags) << w.index;
  }
}

// --- SET_IRQS with the sample device's INTx ---------------------------------------------------

TEST(SetIrqs, AssignedEventfdFiresWhenTheDeviceRaisesIntx) {
  SessionHarness h;
  h.Negotiate();
  UniqueFd efd = MakeEventfd();
  AssignIntx(h, efd.get());
  EXPECT_EQ(h.session()->irqs().eventfd_count(), 1u);
  EXPECT_TRUE(EventfdQuiet(efd.get()));
  RaiseIntx(h);
  EXPECT_EQ(DrainEventfd(efd.get()), 1u);
  // The PCI status register mirrors the asserted line.
  EXPECT_TRUE(Read16(h, kConfig, pci::kStatus) & pci::kStatusInterrupt);
  EXPECT_EQ(Read32(h, kBar0, SampleDevice::kRegIrq), 1u);
}

TEST(SetIrqs, IntxAutomaskHoldsTheSecondInterruptUntilUnmask) {
  SessionHarness h;
  h.Negotiate();
  UniqueFd efd = MakeEventfd();
  AssignIntx(h, efd.get());
  RaiseIntx(h);
  ASSERT_EQ(DrainEventfd(efd.get()), 1u);
  EXPECT_TRUE(h.session()->irqs().Masked(wire::kPciIntxIrqIndex, 0));  // automasked

  RaiseIntx(h);  // a second trigger while masked
  EXPECT_EQ(DrainEventfd(efd.get(), 50), 0u);
  EXPECT_TRUE(h.session()->irqs().Pending(wire::kPciIntxIrqIndex, 0));

  SetIrqsOk(h, kNoneUnmask, wire::kPciIntxIrqIndex, 0, 1);
  EXPECT_EQ(DrainEventfd(efd.get()), 1u);
  EXPECT_FALSE(h.session()->irqs().Pending(wire::kPciIntxIrqIndex, 0));
  EXPECT_TRUE(h.session()->irqs().Masked(wire::kPciIntxIrqIndex, 0));  // masked again
}

TEST(SetIrqs, IntxStillAssertedAtUnmaskFiresAgainButNotOnceDeasserted) {
  SessionHarness h;
  h.Negotiate();
  UniqueFd efd = MakeEventfd();
  AssignIntx(h, efd.get());
  RaiseIntx(h);
  ASSERT_EQ(DrainEventfd(efd.get()), 1u);
  SetIrqsOk(h, kNoneUnmask, wire::kPciIntxIrqIndex, 0, 1);  // level still high
  EXPECT_EQ(DrainEventfd(efd.get()), 1u);
  Write32(h, kBar0, SampleDevice::kRegIrq, 0);  // deassert
  SetIrqsOk(h, kNoneUnmask, wire::kPciIntxIrqIndex, 0, 1);
  EXPECT_EQ(DrainEventfd(efd.get(), 50), 0u);
  EXPECT_FALSE(Read16(h, kConfig, pci::kStatus) & pci::kStatusInterrupt);
}

TEST(SetIrqs, DataEventfdWithoutFdsDeassignsAndClosesTheServersCopy) {
  SessionHarness h;
  h.Negotiate();
  UniqueFd efd = MakeEventfd();
  const size_t before = OpenFdCount();
  AssignIntx(h, efd.get());
  EXPECT_EQ(OpenFdCount(), before + 1);  // the server holds its own copy
  SetIrqsOk(h, kEventfdTrigger, wire::kPciIntxIrqIndex, 0, 1);
  EXPECT_EQ(h.session()->irqs().eventfd_count(), 0u);
  EXPECT_EQ(OpenFdCount(), before);
  RaiseIntx(h);
  EXPECT_EQ(DrainEventfd(efd.get(), 50), 0u);
  EXPECT_TRUE(h.session()->irqs().Pending(wire::kPciIntxIrqIndex, 0));
  // Re-assigning delivers the interrupt that was raised meanwhile.
  AssignIntx(h, efd.get());
  EXPECT_EQ(DrainEventfd(efd.get()), 1u);
}

TEST(SetIrqs, CountZeroDataNoneTriggerDisablesTheWholeIndex) {
  SessionHarness h;
  h.Negotiate();
  UniqueFd efd = MakeEventfd();
  const size_t before = OpenFdCount();
  AssignIntx(h, efd.get());
  ASSERT_EQ(h.session()->irqs().eventfd_count(), 1u);
  SetIrqsOk(h, kNoneTrigger, wire::kPciIntxIrqIndex, 0, 0);
  EXPECT_EQ(h.session()->irqs().eventfd_count(), 0u);
  EXPECT_EQ(OpenFdCount(), before);
  RaiseIntx(h);
  EXPECT_EQ(DrainEventfd(efd.get(), 50), 0u);
}

TEST(SetIrqs, LoopbackDataNoneTriggerSignalsTheEventfd) {
  SessionHarness h;
  h.Negotiate();
  UniqueFd efd = MakeEventfd();
  AssignIntx(h, efd.get());
  SetIrqsOk(h, kNoneTrigger, wire::kPciIntxIrqIndex, 0, 1);
  EXPECT_EQ(DrainEventfd(efd.get()), 1u);
}

TEST(SetIrqs, LoopbackDataBoolTriggerSignalsOnlyForTrueEntries) {
  SessionHarness h;
  h.Negotiate();
  UniqueFd efd = MakeEventfd();
  AssignIntx(h, efd.get());
  const uint32_t flags = wire::kIrqSetDataBool | wire::kIrqSetActionTrigger;
  const uint8_t no = 0;
  SetIrqsOk(h, flags, wire::kPciIntxIrqIndex, 0, 1, {}, {&no, 1});
  EXPECT_EQ(DrainEventfd(efd.get(), 50), 0u);
  const uint8_t yes = 1;
  SetIrqsOk(h, flags, wire::kPciIntxIrqIndex, 0, 1, {}, {&yes, 1});
  EXPECT_EQ(DrainEventfd(efd.get()), 1u);
}

// --- SET_IRQS with eight MSI-X vectors ----------------------------------------------------

TEST(SetIrqs, EventfdsAssignedInTwoChunksAreEachWiredToTheirVector) {
  MsixDevice dev;
  SessionHarness h(&dev);
  h.Negotiate();
  std::vector<UniqueFd> efds;
  for (uint32_t i = 0; i < MsixDevice::kVectors; ++i) efds.push_back(MakeEventfd());
  std::vector<int> raw = RawFds(efds);
  SetIrqsOk(h, kEventfdTrigger, wire::kPciMsixIrqIndex, 0, 4, std::span<const int>(raw).first(4));
  SetIrqsOk(h, kEventfdTrigger, wire::kPciMsixIrqIndex, 4, 4, std::span<const int>(raw).subspan(4));
  EXPECT_EQ(h.session()->irqs().eventfd_count(), 8u);
  for (uint32_t v = 0; v < MsixDevice::kVectors; ++v) {
    ASSERT_TRUE(dev.Raise(v)) << v;
    for (uint32_t other = 0; other < MsixDevice::kVectors; ++other) {
      EXPECT_EQ(DrainEventfd(raw[other], other == v ? 200 : 0), other == v ? 1u : 0u)
          << "raised " << v << ", checked " << other;
    }
  }
}

TEST(SetIrqs, DataBoolMaskAndUnmaskTouchOnlySelectedVectors) {
  MsixDevice dev;
  SessionHarness h(&dev);
  h.Negotiate();
  std::vector<UniqueFd> efds;
  for (uint32_t i = 0; i < 3; ++i) efds.push_back(MakeEventfd());
  std::vector<int> raw = RawFds(efds);
  SetIrqsOk(h, kEventfdTrigger, wire::kPciMsixIrqIndex, 0, 3, raw);

  const uint8_t sel[3] = {1, 0, 1};
  SetIrqsOk(h, wire::kIrqSetDataBool | wire::kIrqSetActionMask, wire::kPciMsixIrqIndex, 0, 3, {},
            sel);
  const IrqTable& irqs = h.session()->irqs();
  EXPECT_TRUE(irqs.Masked(wire::kPciMsixIrqIndex, 0));
  EXPECT_FALSE(irqs.Masked(wire::kPciMsixIrqIndex, 1));
  EXPECT_TRUE(irqs.Masked(wire::kPciMsixIrqIndex, 2));
  EXPECT_EQ(dev.mask_changes, (std::vector<MsixDevice::Change>{{2, 0, true}, {2, 2, true}}));

  EXPECT_FALSE(dev.Raise(0));  // masked: pending, not delivered
  EXPECT_TRUE(dev.Raise(1));
  EXPECT_EQ(DrainEventfd(raw[0], 50), 0u);
  EXPECT_EQ(DrainEventfd(raw[1]), 1u);
  EXPECT_TRUE(irqs.Pending(wire::kPciMsixIrqIndex, 0));

  dev.mask_changes.clear();
  SetIrqsOk(h, wire::kIrqSetDataBool | wire::kIrqSetActionUnmask, wire::kPciMsixIrqIndex, 0, 3, {},
            sel);
  EXPECT_EQ(DrainEventfd(raw[0]), 1u);      // the pending one is delivered at unmask
  EXPECT_EQ(DrainEventfd(raw[2], 50), 0u);  // nothing was pending there
  EXPECT_FALSE(irqs.Masked(wire::kPciMsixIrqIndex, 0));
  EXPECT_FALSE(irqs.Pending(wire::kPciMsixIrqIndex, 0));
  EXPECT_EQ(dev.mask_changes, (std::vector<MsixDevice::Change>{{2, 0, false}, {2, 2, false}}));
}

// --- REGION_READ / REGION_WRITE / WRITE_MULTI -------------------------------------------------

TEST(RegionAccess, Bar0RegistersReadAndWriteWithExactReplyShapes) {
  SessionHarness h;
  h.Negotiate();
  auto read =
      h.CallStruct(Command::kRegionRead, wire::RegionAccess{SampleDevice::kRegMagic, kBar0, 4});
  ASSERT_FALSE(read.is_error());
  ASSERT_EQ(read.payload.size(), sizeof(wire::RegionAccess) + 4);
  auto echo = proto::Load<wire::RegionAccess>(read.payload);
  EXPECT_EQ(echo.offset, SampleDevice::kRegMagic);
  EXPECT_EQ(echo.region, kBar0);
  EXPECT_EQ(echo.count, 4u);
  EXPECT_EQ(proto::Load<uint32_t>(read.payload, sizeof(wire::RegionAccess)), SampleDevice::kMagic);

  auto write = RegionWrite(h, kBar0, SampleDevice::kRegScratch, AsBytes(uint32_t{0xdeadbeef}));
  ASSERT_FALSE(write.is_error());
  ASSERT_EQ(write.payload.size(), sizeof(wire::RegionAccess));  // echo, no data
  auto wecho = proto::Load<wire::RegionAccess>(write.payload);
  EXPECT_EQ(wecho.offset, SampleDevice::kRegScratch);
  EXPECT_EQ(wecho.count, 4u);
  EXPECT_EQ(Read32(h, kBar0, SampleDevice::kRegScratch), 0xdeadbeefu);
  // Byte reads see the bytes of the containing register.
  EXPECT_EQ(Read16(h, kBar0, SampleDevice::kRegScratch + 2), 0xdeadu);
}

TEST(RegionAccess, ConfigBarSizingReadsBackTheSizeMask) {
  SessionHarness h;
  h.Negotiate();
  Write32(h, kConfig, pci::kBar0, 0xffffffff);
  EXPECT_EQ(Read32(h, kConfig, pci::kBar0), 0xfffff000u);  // 4 KiB, 32-bit memory
  Write32(h, kConfig, pci::kBar0 + 4, 0xffffffff);         // the sample device has no BAR1
  EXPECT_EQ(Read32(h, kConfig, pci::kBar0 + 4), 0u);
  Write32(h, kConfig, pci::kBar0, 0xfebf1000);
  EXPECT_EQ(Read32(h, kConfig, pci::kBar0), 0xfebf1000u);
  Write32(h, kConfig, pci::kBar0, 0xfebf1234);  // low bits below the size are read-only zero
  EXPECT_EQ(Read32(h, kConfig, pci::kBar0), 0xfebf1000u);
}

TEST(RegionAccess, ConfigIdentityRegistersAreReadOnly) {
  SessionHarness h;
  h.Negotiate();
  Write32(h, kConfig, pci::kVendorId, 0xffffffff);
  EXPECT_EQ(Read16(h, kConfig, pci::kVendorId), SampleDevice::kVendorId);
  EXPECT_EQ(Read16(h, kConfig, pci::kDeviceId), SampleDevice::kDeviceId);
  // The whole config space reads in one go, as QEMU does.
  auto all = h.CallStruct(Command::kRegionRead, wire::RegionAccess{0, kConfig, 256});
  ASSERT_FALSE(all.is_error());
  ASSERT_EQ(all.payload.size(), sizeof(wire::RegionAccess) + 256);
  EXPECT_EQ(proto::Load<uint16_t>(all.payload, sizeof(wire::RegionAccess)),
            SampleDevice::kVendorId);
}

wire::WriteMultiEntry Entry(uint32_t region, uint64_t offset, uint32_t value) {
  wire::WriteMultiEntry e{};
  e.offset = offset;
  e.region = region;
  e.count = 4;
  std::memcpy(e.data, &value, 4);
  return e;
}

TEST(RegionAccess, WriteMultiAppliesThreeWritesAndRepliesWrCnt3) {
  SessionHarness h;
  h.Negotiate();
  std::vector<uint8_t> payload = AsBytes(wire::WriteMultiHeader{3});
  proto::Append(payload, Entry(kBar0, SampleDevice::kRegScratch, 0x11223344));
  proto::Append(payload, Entry(kBar0, SampleDevice::kRegDmaLen, 0x100));
  proto::Append(payload, Entry(kBar0, SampleDevice::kRegDmaAddrLo, 0x5000));
  auto r = h.Call(Command::kRegionWriteMulti, payload);
  ASSERT_FALSE(r.is_error()) << r.error_no();
  ASSERT_EQ(r.payload.size(), sizeof(wire::WriteMultiHeader));
  EXPECT_EQ(proto::Load<wire::WriteMultiHeader>(r.payload).wr_cnt, 3u);
  EXPECT_EQ(Read32(h, kBar0, SampleDevice::kRegScratch), 0x11223344u);
  EXPECT_EQ(Read32(h, kBar0, SampleDevice::kRegDmaLen), 0x100u);
  EXPECT_EQ(Read32(h, kBar0, SampleDevice::kRegDmaAddrLo), 0x5000u);
}

TEST(RegionAccess, PostedNoReplyWriteIsAppliedBeforeTheFollowingRead) {
  SessionHarness h;
  h.Negotiate();
  auto write = AsBytes(wire::RegionAccess{SampleDevice::kRegScratch, kBar0, 4});
  write = Concat(write, AsBytes(uint32_t{0xcafef00d}));
  h.Send(Command::kRegionWrite, write, {}, wire::kFlagNoReply);
  uint16_t read_id =
      h.SendStruct(Command::kRegionRead, wire::RegionAccess{SampleDevice::kRegScratch, kBar0, 4});
  h.RunServer();
  auto r = h.ReadReply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->header.msg_id, read_id);  // no reply to the posted write
  ASSERT_FALSE(r->is_error());
  EXPECT_EQ(proto::Load<uint32_t>(r->payload, sizeof(wire::RegionAccess)), 0xcafef00du);
  EXPECT_TRUE(h.NoReplyPending());
}

TEST(RegionAccess, PipelinedRequestsAreAnsweredInOrder) {
  SessionHarness h;
  h.Negotiate();
  std::vector<uint16_t> ids;
  for (uint32_t i = 0; i < 20; ++i) {
    auto w = Concat(AsBytes(wire::RegionAccess{SampleDevice::kRegScratch, kBar0, 4}), AsBytes(i));
    ids.push_back(h.Send(Command::kRegionWrite, w));
    ids.push_back(h.SendStruct(Command::kRegionRead,
                               wire::RegionAccess{SampleDevice::kRegScratch, kBar0, 4}));
  }
  h.RunServer();
  for (size_t i = 0; i < ids.size(); ++i) {
    auto r = h.ReadReply();
    ASSERT_TRUE(r) << i;
    EXPECT_EQ(r->header.msg_id, ids[i]);
    ASSERT_FALSE(r->is_error());
    if (i % 2 == 1) {
      EXPECT_EQ(proto::Load<uint32_t>(r->payload, sizeof(wire::RegionAccess)), i / 2);
    }
  }
}

// --- DEVICE_RESET -----------------------------------------------------------------------------

TEST(DeviceReset, ClearsTheScratchRegisterAndConfigSpace) {
  SessionHarness h;
  h.Negotiate();
  Write32(h, kBar0, SampleDevice::kRegScratch, 0x12345678);
  Write32(h, kConfig, pci::kBar0, 0xfebf0000);
  uint16_t command = pci::kCommandMemory | pci::kCommandBusMaster;
  ASSERT_FALSE(RegionWrite(h, kConfig, pci::kCommand, AsBytes(command)).is_error());
  auto r = h.Call(Command::kDeviceReset, {});
  ASSERT_FALSE(r.is_error()) << r.error_no();
  EXPECT_TRUE(r.payload.empty());
  EXPECT_EQ(Read32(h, kBar0, SampleDevice::kRegScratch), 0u);
  EXPECT_EQ(Read32(h, kConfig, pci::kBar0), 0u);
  EXPECT_EQ(Read16(h, kConfig, pci::kCommand), 0u);
  EXPECT_EQ(Read16(h, kConfig, pci::kVendorId), SampleDevice::kVendorId);
}

// --- Client EOF -------------------------------------------------------------------------------

TEST(ClientEof, ReleasesDmaMapsAndEventfdsButKeepsDeviceState) {
  const size_t at_start = OpenFdCount();
  auto created = SampleDevice::Create();
  ASSERT_TRUE(created.ok());
  std::unique_ptr<SampleDevice> device = std::move(*created);
  const size_t with_device = OpenFdCount();
  const std::string ram_name = "vfu-eof-harness-ram";
  {
    UniqueFd efd = MakeEventfd();
    {
      SessionHarness h(device.get());
      h.Negotiate();
      {
        UniqueFd ram = MakeMemfd(0x10000, ram_name.c_str());
        int raw = ram.get();
        ASSERT_FALSE(
            h.Call(Command::kDmaMap, DmaMapPayload(0x100000, 0x10000), {&raw, 1}).is_error());
      }
      AssignIntx(h, efd.get());
      Write32(h, kBar0, SampleDevice::kRegScratch, 0xabcd1234);
      EXPECT_EQ(h.session()->dma_maps().size(), 1u);
      EXPECT_EQ(h.session()->irqs().eventfd_count(), 1u);
      EXPECT_EQ(MappingsOf(ram_name), 1);  // the server's mapping of the client's memory

      h.CloseClient();
      EXPECT_EQ(h.RunServer(), Session::State::kClosed);
      EXPECT_TRUE(h.session_closed());
    }
    // The session is gone: its eventfd copy and its guest memory mapping with it.
    EXPECT_EQ(MappingsOf(ram_name), 0);
    EXPECT_EQ(OpenFdCount(), with_device + 1);  // only the test's eventfd
  }
  EXPECT_EQ(OpenFdCount(), with_device);
  {
    SessionHarness h(device.get());
    h.Negotiate();
    EXPECT_EQ(Read32(h, kBar0, SampleDevice::kRegScratch), 0xabcd1234u);  // device state kept
    EXPECT_EQ(h.session()->dma_maps().size(), 0u);
    EXPECT_EQ(h.session()->irqs().eventfd_count(), 0u);
  }
  device.reset();
  EXPECT_EQ(OpenFdCount(), at_start);
}

// The same through the real endpoint and reactor: the server notices EOF by itself.
TEST(ClientEof, EndpointReleasesClientResourcesOnDisconnectAndServesTheNextClient) {
  char dir_template[] = "/tmp/vfu-eof-XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  const std::string path = dir + "/sample.sock";
  const std::string ram_name = "vfu-eof-endpoint-ram";
  const size_t at_start = OpenFdCount();
  {
    auto created = SampleDevice::Create();
    ASSERT_TRUE(created.ok());
    std::unique_ptr<SampleDevice> device = std::move(*created);
    Reactor reactor;
    DeviceEndpoint endpoint("sample0", path, device.get(), &reactor);
    ASSERT_TRUE(endpoint.Start().ok());
    // Stops and joins the reactor thread however the test body exits.
    struct LoopThread {
      Reactor& reactor;
      std::thread thread;
      ~LoopThread() {
        reactor.Stop();
        if (thread.joinable()) thread.join();
      }
    } loop{reactor, std::thread([&reactor] { reactor.Run(); })};
    const size_t serving = OpenFdCount();

    client::ClientOptions options;
    options.timeout = std::chrono::milliseconds(2000);
    {
      auto c = client::Client::Connect(path, options);
      ASSERT_TRUE(c.ok()) << c.error().message;
      auto ram = client::DmaBuffer::Create(0x10000, ram_name.c_str());
      ASSERT_TRUE(ram.ok());
      EXPECT_TRUE((*c)->DmaMap(0x100000, 0x10000, ram->fd(), 0).ok());
      UniqueFd efd = MakeEventfd();
      int raw = efd.get();
      EXPECT_TRUE((*c)->SetIrqEventfds(wire::kPciIntxIrqIndex, 0, {&raw, 1}).ok());
      EXPECT_TRUE((*c)->Write<uint32_t>(kBar0, SampleDevice::kRegScratch, 0x600d600d).ok());
      EXPECT_EQ(MappingsOf(ram_name), 2);  // ours and the server's
    }  // the client, its memory and its eventfd are gone; only the server's copies remain

    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while ((OpenFdCount() != serving || MappingsOf(ram_name) != 0) &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    EXPECT_EQ(OpenFdCount(), serving);
    EXPECT_EQ(MappingsOf(ram_name), 0);

    {
      auto c = client::Client::Connect(path, options);
      ASSERT_TRUE(c.ok()) << c.error().message;
      auto scratch = (*c)->Read<uint32_t>(kBar0, SampleDevice::kRegScratch);
      ASSERT_TRUE(scratch.ok());
      EXPECT_EQ(*scratch, 0x600d600du);
    }
  }
  EXPECT_EQ(OpenFdCount(), at_start);
  ::rmdir(dir.c_str());
}

}  // namespace
}  // namespace vfu::testing
