// virtio-pci transport state that can leave the process: a virtio-blk device whose driver
// negotiated features, set up and enabled queues and did I/O is saved and restored into a new
// device object over the same guest memory. The restored one reads back every register the
// original does, answers the next random register writes alike, and serves the driver's next
// requests from where the original stopped (same used index, no request lost or repeated).
// Saving with requests in flight is refused; a record that does not fit changes nothing.
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "server/devices/device_factory.h"
#include "server/devices/virtio_blk.h"
#include "server/state/record.h"
#include "server/virtio/virtio_pci.h"
#include "tests/unit/virtio/fake_driver.h"

namespace vfu::virtio::testing {
namespace {

using Buffer = FakeDriver::Buffer;
constexpr uint16_t kQueueSize = 64;

// The client side of a session as the device sees it: guest memory and interrupts.
class MemoryContext : public DeviceContext {
 public:
  explicit MemoryContext(GuestMemory* memory) : memory_(memory) {}
  GuestMemory& guest_memory() override { return *memory_; }
  bool TriggerIrq(uint32_t, uint32_t) override {
    ++interrupts;
    return true;
  }
  bool IrqPending(uint32_t, uint32_t) const override { return false; }
  int interrupts = 0;

 private:
  GuestMemory* memory_;
};

std::unique_ptr<VirtioPciDevice> MakeBlk() {
  auto spec = devices::ParseDeviceSpec(
      "virtio-blk,id=d,socket=/unused,backend=null,size=16M,queues=2,queue-size=64,"
      "poll=interrupt");
  EXPECT_TRUE(spec.ok());
  auto dev = devices::CreateDevice(*spec);
  EXPECT_TRUE(dev.ok()) << dev.error().message;
  auto* pci = dynamic_cast<VirtioPciDevice*>(dev->get());
  EXPECT_NE(pci, nullptr);
  dev->release();
  return std::unique_ptr<VirtioPciDevice>(pci);
}

void Write(VirtioPciDevice& d, uint32_t field, uint64_t value, size_t len) {
  uint8_t b[8];
  for (size_t i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(value >> (8 * i));
  Status s = d.WriteRegion(kVirtioBar, kCommonCfgOffset + field, {b, len});
  ASSERT_TRUE(s.ok()) << s.message();
}
uint64_t Read(VirtioPciDevice& d, uint64_t offset, size_t len) {
  uint8_t b[8] = {};
  Status s = d.ReadRegion(kVirtioBar, offset, {b, len});
  EXPECT_TRUE(s.ok()) << s.message();
  uint64_t v = 0;
  for (size_t i = 0; i < len; ++i) v |= uint64_t{b[i]} << (8 * i);
  return v;
}

// What a driver does up to DRIVER_OK: both queues at the fake driver's ring addresses (queue 1
// at the same addresses would overlap, so only queue 0 is enabled).
void Negotiate(VirtioPciDevice& d, FakeDriver& drv, bool event_idx) {
  Write(d, common::kDeviceStatus, 0, 1);
  Write(d, common::kDeviceStatus, kStatusAcknowledge | kStatusDriver, 1);
  uint64_t features = kFeatureVersion1 | (event_idx ? kFeatureEventIdx : 0);
  Write(d, common::kDriverFeatureSelect, 0, 4);
  Write(d, common::kDriverFeature, features & 0xffffffff, 4);
  Write(d, common::kDriverFeatureSelect, 1, 4);
  Write(d, common::kDriverFeature, features >> 32, 4);
  Write(d, common::kDeviceStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk, 1);
  Write(d, common::kQueueSelect, 0, 2);
  Write(d, common::kQueueSize, kQueueSize, 2);
  Write(d, common::kQueueMsixVector, 1, 2);
  Write(d, common::kQueueDesc, drv.desc_iova(), 8);
  Write(d, common::kQueueDriver, drv.avail_iova(), 8);
  Write(d, common::kQueueDevice, drv.used_iova(), 8);
  Write(d, common::kQueueEnable, 1, 2);
  Write(d, common::kConfigMsixVector, 0, 2);
  Write(d, common::kDeviceStatus,
        kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk, 1);
}

// A read of `sectors` sectors at `sector` (null backend: the data comes back as zeros).
uint16_t PostRead(FakeDriver& drv, uint64_t sector, uint32_t bytes) {
  uint64_t header = drv.Alloc(16);
  uint32_t type = devices::kBlkTypeIn;
  std::memcpy(drv.Host(header), &type, 4);
  std::memset(drv.Host(header) + 4, 0, 4);
  std::memcpy(drv.Host(header) + 8, &sector, 8);
  uint64_t data = drv.AllocFilled(bytes, 0xee);
  uint64_t status = drv.AllocFilled(1, 0xff);
  Buffer chain[] = {{header, 16, false}, {data, bytes, true}, {status, 1, true}};
  uint16_t head = drv.AddChain(chain);
  drv.PublishAvailIdx();
  return head;
}

// Every register a driver can read, for each queue select.
std::vector<uint64_t> Registers(VirtioPciDevice& d) {
  std::vector<uint64_t> out;
  uint16_t select = static_cast<uint16_t>(Read(d, kCommonCfgOffset + common::kQueueSelect, 2));
  for (uint32_t f :
       {common::kDeviceFeatureSelect, common::kDriverFeatureSelect, common::kConfigMsixVector,
        common::kNumQueues, common::kDeviceStatus, common::kConfigGeneration}) {
    out.push_back(Read(d, kCommonCfgOffset + f,
                       f == common::kDeviceStatus || f == common::kConfigGeneration
                           ? 1
                           : (f >= common::kConfigMsixVector ? 2 : 4)));
  }
  for (uint16_t q = 0; q < 2; ++q) {
    Write(d, common::kQueueSelect, q, 2);
    for (uint32_t f : {common::kQueueSize, common::kQueueMsixVector, common::kQueueEnable,
                       common::kQueueNotifyOff}) {
      out.push_back(Read(d, kCommonCfgOffset + f, 2));
    }
    for (uint32_t f : {common::kQueueDesc, common::kQueueDriver, common::kQueueDevice}) {
      out.push_back(Read(d, kCommonCfgOffset + f, 8));
    }
  }
  Write(d, common::kQueueSelect, select, 2);
  for (uint32_t off = 0; off < 24; off += 4) out.push_back(Read(d, kDeviceCfgOffset + off, 4));
  return out;
}

// A random register write a driver could make after DRIVER_OK (none that resets the device).
void RandomRegisterWrite(std::mt19937& rng, VirtioPciDevice& d) {
  switch (rng() % 5) {
    case 0:
      Write(d, common::kDeviceFeatureSelect, rng() % 3, 4);
      break;
    case 1:
      Write(d, common::kDriverFeatureSelect, rng() % 3, 4);
      break;
    case 2:
      Write(d, common::kQueueSelect, rng() % 3, 2);
      break;
    case 3:
      Write(d, common::kQueueMsixVector, rng() % 4, 2);
      break;
    case 4:
      Write(d, common::kConfigMsixVector, rng() % 4, 2);
      break;
  }
}

class VirtioPciState : public ::testing::TestWithParam<bool> {};

TEST_P(VirtioPciState, RestoredDeviceReadsBackAndServesTheNextRequests) {
  const bool event_idx = GetParam();
  FakeDriver drv(kQueueSize);
  MemoryContext ctx_a(&drv.table());
  auto a = MakeBlk();
  a->Attach(&ctx_a);
  Negotiate(*a, drv, event_idx);
  // Traffic before the handoff, past the used ring's first lap.
  for (int i = 0; i < 150; ++i) {
    PostRead(drv, static_cast<uint64_t>(i), 512);
    while (a->Poll() == PollResult::kBusy) {
    }
    ASSERT_EQ(drv.Reclaim().size(), 1u);
  }
  std::mt19937 rng(5);
  for (int i = 0; i < 50; ++i) RandomRegisterWrite(rng, *a);

  state::Writer w;
  ASSERT_TRUE(a->SaveState(w).ok());
  auto r = state::Reader::Open(w.bytes(), w.fds());
  ASSERT_TRUE(r.ok());
  MemoryContext ctx_b(&drv.table());
  auto b = MakeBlk();
  b->Attach(&ctx_b);
  Status s = b->RestoreState(*r);
  ASSERT_TRUE(s.ok()) << s.message();
  r->ExpectEnd();
  ASSERT_TRUE(r->ok());
  ASSERT_EQ(Registers(*b), Registers(*a));
  EXPECT_EQ(b->device_status(), a->device_status());

  // The same register writes to both keep them alike.
  std::mt19937 next_a(9), next_b(9);
  for (int i = 0; i < 100; ++i) {
    RandomRegisterWrite(next_a, *a);
    RandomRegisterWrite(next_b, *b);
    if (i % 10 == 0) {
      ASSERT_EQ(Registers(*b), Registers(*a)) << "write " << i;
    }
  }

  // The original is gone (as the old process is); the restored one serves the driver on.
  a->Detach();
  a.reset();
  for (int i = 0; i < 100; ++i) {
    // With EVENT_IDX the driver asks for an interrupt on the next completion (as Linux does).
    if (event_idx) drv.SetUsedEvent(drv.UsedIdx());
    uint16_t head = PostRead(drv, 1000 + static_cast<uint64_t>(i), 1024);
    while (b->Poll() == PollResult::kBusy) {
    }
    auto used = drv.Reclaim();
    ASSERT_EQ(used.size(), 1u) << "request " << i;
    EXPECT_EQ(used[0].id, head);
    EXPECT_EQ(used[0].len, 1024u + 1);
  }
  EXPECT_EQ(drv.UsedIdx(), static_cast<uint16_t>(250));
  EXPECT_GT(ctx_b.interrupts, 0);
  b->Detach();
}

INSTANTIATE_TEST_SUITE_P(UsedFlagsAndEventIdx, VirtioPciState, ::testing::Bool());

TEST(VirtioPciStateRefusal, ADeviceWithAnotherQueueCountRefusesTheRecordAndKeepsItsState) {
  FakeDriver drv(kQueueSize);
  MemoryContext ctx(&drv.table());
  auto a = MakeBlk();
  a->Attach(&ctx);
  Negotiate(*a, drv, true);
  state::Writer w;
  ASSERT_TRUE(a->SaveState(w).ok());

  auto spec = devices::ParseDeviceSpec(
      "virtio-blk,id=d,socket=/unused,backend=null,size=16M,queues=4,queue-size=64,"
      "poll=interrupt");
  auto dev = devices::CreateDevice(*spec);
  ASSERT_TRUE(dev.ok());
  auto* other = dynamic_cast<VirtioPciDevice*>(dev->get());
  MemoryContext ctx_other(&drv.table());
  other->Attach(&ctx_other);
  auto r = state::Reader::Open(w.bytes(), w.fds());
  Status s = other->RestoreState(*r);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("2 queues, this device has 4"), std::string::npos) << s.message();
  EXPECT_EQ(other->device_status(), 0);
  other->Detach();
  a->Detach();
}

}  // namespace
}  // namespace vfu::virtio::testing
