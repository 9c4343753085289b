// The client library against the real server stack: a Reactor on its own thread runs a
// DeviceEndpoint that serves a SampleDevice on a unix socket in a fresh temporary directory, and
// vfu::client::Client talks to it over that socket exactly as a userspace driver would.
//
// Threading rules: once the reactor thread runs, the test thread touches the endpoint, the
// session and the device only through Reactor::Post (OnReactor() below) or after the thread has
// been joined. Every wait is bounded (client calls by ClientOptions::timeout, posted work and
// thread shutdown by kWait, eventfd polls by explicit timeouts).
#include <poll.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "server/client/client.h"
#include "server/devices/sample_device.h"
#include "server/pci/config_space.h"
#include "server/runtime/reactor.h"
#include "server/session/endpoint.h"
#include "tests/support/fd_count.h"

namespace vfu::testing {
namespace {

using namespace std::chrono_literals;
using client::Client;
using client::ClientOptions;
using client::DmaBuffer;
using devices::SampleDevice;

constexpr auto kWait = 5s;               // posted work, thread shutdown, state changes
constexpr auto kClientTimeout = 2000ms;  // every synchronous client call
constexpr int kIrqPollMs = 2000;         // waiting for an interrupt that must come
constexpr int kNoIrqPollMs = 200;        // waiting for an interrupt that must not come

constexpr uint32_t kBar0 = wire::kPciBar0RegionIndex;
constexpr uint32_t kBar2 = 2;
constexpr uint32_t kConfig = wire::kPciConfigRegionIndex;
constexpr uint32_t kEfault = EFAULT;  // 14

class ClientEndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/vfu-client-e2e-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    socket_path_ = dir_ + "/sample.sock";

    auto dev = SampleDevice::Create();
    ASSERT_TRUE(dev.ok()) << dev.error().message;
    device_ = std::move(*dev);
    reactor_ = std::make_unique<Reactor>();
    endpoint_ =
        std::make_unique<DeviceEndpoint>("sample0", socket_path_, device_.get(), reactor_.get());
    // Start() binds and registers with the reactor: allowed before Run().
    Status s = endpoint_->Start();
    ASSERT_TRUE(s.ok()) << s.message();

    std::promise<void> started;
    auto started_future = started.get_future();
    std::promise<void> finished;
    finished_ = finished.get_future();
    thread_ =
        std::thread([this, started = std::move(started), finished = std::move(finished)]() mutable {
          started.set_value();
          reactor_->Run();
          finished.set_value();
        });
    ASSERT_EQ(started_future.wait_for(kWait), std::future_status::ready);
  }

  void TearDown() override {
    StopServer();
    endpoint_.reset();  // after join: the reactor thread is gone
    reactor_.reset();
    device_.reset();
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
      EXPECT_FALSE(ec) << ec.message();
      EXPECT_FALSE(std::filesystem::exists(dir_));
    }
  }

  // Stops the reactor and joins its thread (bounded). Idempotent.
  void StopServer() {
    if (!thread_.joinable()) return;
    reactor_->Stop();
    if (finished_.wait_for(kWait) != std::future_status::ready) {
      // Joining would hang the whole binary; the reactor thread is stuck.
      ADD_FAILURE() << "reactor did not stop within " << kWait.count() << " s";
      std::abort();
    }
    thread_.join();
  }

  // Runs `f` on the reactor thread and returns its result (bounded wait).
  template <typename F>
  auto OnReactor(F f) -> decltype(f()) {
    using R = decltype(f());
    auto promise = std::make_shared<std::promise<R>>();
    auto future = promise->get_future();
    reactor_->Post([promise, f]() mutable {
      if constexpr (std::is_void_v<R>) {
        f();
        promise->set_value();
      } else {
        promise->set_value(f());
      }
    });
    if (future.wait_for(kWait) != std::future_status::ready) {
      ADD_FAILURE() << "posted task did not run within " << kWait.count() << " s";
      if constexpr (!std::is_void_v<R>)
        return R{};
      else
        return;
    }
    return future.get();
  }

  // Polls `pred` on the reactor thread until it holds or kWait passes.
  bool WaitOnReactor(std::function<bool()> pred) {
    auto deadline = std::chrono::steady_clock::now() + kWait;
    while (std::chrono::steady_clock::now() < deadline) {
      if (OnReactor(pred)) return true;
      std::this_thread::sleep_for(2ms);
    }
    return false;
  }

  EndpointStats Stats() {
    return OnReactor([this] { return endpoint_->stats(); });
  }

  std::unique_ptr<Client> ConnectClient() {
    ClientOptions options;
    options.timeout = kClientTimeout;
    auto c = Client::Connect(socket_path_, options);
    EXPECT_TRUE(c.ok()) << (c.ok() ? "" : c.error().message);
    if (!c.ok()) return nullptr;
    return std::move(*c);
  }

  static uint32_t ReadReg(Client& c, uint32_t reg) {
    auto v = c.Read<uint32_t>(kBar0, reg);
    EXPECT_TRUE(v.ok()) << "read of BAR0+" << reg << ": " << (v.ok() ? "" : v.error().message);
    return v.ok() ? *v : 0xffffffffu;
  }
  static void WriteReg(Client& c, uint32_t reg, uint32_t value) {
    Status s = c.Write<uint32_t>(kBar0, reg, value);
    EXPECT_TRUE(s.ok()) << "write of BAR0+" << reg << ": " << s.message();
  }
  static void EnableBusMaster(Client& c) {
    Status s =
        c.Write<uint16_t>(kConfig, pci::kCommand, pci::kCommandMemory | pci::kCommandBusMaster);
    ASSERT_TRUE(s.ok()) << s.message();
    auto cmd = c.Read<uint16_t>(kConfig, pci::kCommand);
    ASSERT_TRUE(cmd.ok());
    ASSERT_TRUE(*cmd & pci::kCommandBusMaster);
  }
  static void ProgramDma(Client& c, uint64_t addr, uint32_t len, uint32_t cmd) {
    WriteReg(c, SampleDevice::kRegDmaAddrLo, static_cast<uint32_t>(addr));
    WriteReg(c, SampleDevice::kRegDmaAddrHi, static_cast<uint32_t>(addr >> 32));
    WriteReg(c, SampleDevice::kRegDmaLen, len);
    WriteReg(c, SampleDevice::kRegDmaCmd, cmd);
  }

  std::string dir_;
  std::string socket_path_;
  std::unique_ptr<SampleDevice> device_;
  std::unique_ptr<Reactor> reactor_;
  std::unique_ptr<DeviceEndpoint> endpoint_;
  std::thread thread_;
  std::future<void> finished_;
};

// Polls an eventfd; returns its counter when it fired within timeout_ms, else 0.
uint64_t WaitEventfd(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  int n;
  do {
    n = ::poll(&p, 1, timeout_ms);
  } while (n < 0 && errno == EINTR);
  if (n <= 0 || !(p.revents & POLLIN)) return 0;
  uint64_t v = 0;
  if (::read(fd, &v, sizeof(v)) != sizeof(v)) return 0;
  return v;
}

// --- Info -----------------------------------------------------------------------------------

TEST_F(ClientEndToEndTest, DeviceInfo) {
  auto c = ConnectClient();
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->server_caps().max_msg_fds.has_value());
  EXPECT_EQ(*c->server_caps().max_msg_fds, proto::kAdvertisedMaxMsgFds);
  EXPECT_EQ(c->max_data_xfer_size(), proto::kMaxDataXferSize);

  auto info = c->GetDeviceInfo();
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(info->flags, wire::kDeviceFlagPci | wire::kDeviceFlagReset);
  EXPECT_EQ(info->num_regions, wire::kPciNumRegions);
  EXPECT_EQ(info->num_irqs, wire::kPciNumIrqs);
}

TEST_F(ClientEndToEndTest, RegionInfoTrappedBarAndConfig) {
  auto c = ConnectClient();
  ASSERT_TRUE(c);
  auto bar0 = c->GetRegionInfo(kBar0);
  ASSERT_TRUE(bar0.ok()) << bar0.error().message;
  EXPECT_EQ(bar0->info.index, kBar0);
  EXPECT_EQ(bar0->info.size, SampleDevice::kRegisterBarSize);
  EXPECT_EQ(bar0->info.flags, wire::kRegionFlagRead | wire::kRegionFlagWrite);
  EXPECT_EQ(bar0->info.argsz, sizeof(wire::RegionInfo));
  EXPECT_TRUE(bar0->sparse_areas.empty());
  EXPECT_FALSE(bar0->fd.valid());

  auto cfg = c->GetRegionInfo(kConfig);
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  EXPECT_EQ(cfg->info.size, pci::kConventionalConfigSize);
  EXPECT_EQ(cfg->info.flags, wire::kRegionFlagRead | wire::kRegionFlagWrite);
  EXPECT_FALSE(cfg->fd.valid());

  // Unimplemented BARs are size 0; an index past the last region is an error.
  auto bar1 = c->GetRegionInfo(1);
  ASSERT_TRUE(bar1.ok());
  EXPECT_EQ(bar1->info.size, 0u);
  auto bad = c->GetRegionInfo(wire::kPciNumRegions);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, EINVAL);
}

TEST_F(ClientEndToEndTest, RegionInfoSparseMmapBarNeedsRetry) {
  auto c = ConnectClient();
  ASSERT_TRUE(c);
  constexpr uint32_t kFullArgsz =
      sizeof(wire::RegionInfo) + sizeof(wire::SparseMmapCap) + sizeof(wire::SparseMmapArea);

  // What GetRegionInfo's first attempt sees: argsz 32 is too small for the sparse-mmap cap, so
  // the server answers the bare struct with the full argsz, no CAPS flag and no fd.
  wire::RegionInfo req{};
  req.argsz = sizeof(wire::RegionInfo);
  req.index = kBar2;
  auto raw = c->Call(static_cast<uint16_t>(wire::Command::kDeviceGetRegionInfo),
                     {reinterpret_cast<const uint8_t*>(&req), sizeof(req)});
  ASSERT_TRUE(raw.ok()) << raw.error().message;
  ASSERT_FALSE(raw->is_error());
  ASSERT_EQ(raw->payload.size(), sizeof(wire::RegionInfo));
  auto truncated = proto::Load<wire::RegionInfo>(raw->payload);
  EXPECT_EQ(truncated.argsz, kFullArgsz);
  EXPECT_FALSE(truncated.flags & wire::kRegionFlagCaps);
  EXPECT_EQ(truncated.cap_offset, 0u);
  EXPECT_TRUE(raw->fds.empty());

  // The library retries with the reported argsz and gets the cap and the fd.
  auto bar2 = c->GetRegionInfo(kBar2);
  ASSERT_TRUE(bar2.ok()) << bar2.error().message;
  EXPECT_EQ(bar2->info.argsz, kFullArgsz);
  EXPECT_EQ(bar2->info.size, SampleDevice::kSharedBarSize);
  EXPECT_EQ(bar2->info.flags, wire::kRegionFlagRead | wire::kRegionFlagWrite |
                                  wire::kRegionFlagMmap | wire::kRegionFlagCaps);
  EXPECT_EQ(bar2->info.cap_offset, sizeof(wire::RegionInfo));
  ASSERT_EQ(bar2->sparse_areas.size(), 1u);
  EXPECT_EQ(bar2->sparse_areas[0].offset, 0u);
  EXPECT_EQ(bar2->sparse_areas[0].size, SampleDevice::kSharedBarSize);
  EXPECT_TRUE(bar2->fd.valid());
}

TEST_F(ClientEndToEndTest, IrqInfo) {
  auto c = ConnectClient();
  ASSERT_TRUE(c);
  auto intx = c->GetIrqInfo(wire::kPciIntxIrqIndex);
  ASSERT_TRUE(intx.ok()) << intx.error().message;
  EXPECT_EQ(intx->index, wire::kPciIntxIrqIndex);
  EXPECT_EQ(intx->count, 1u);
  EXPECT_EQ(intx->flags, wire::kIrqInfoEventfd | wire::kIrqInfoMaskable | wire::kIrqInfoAutomasked);
  auto msix = c->GetIrqInfo(wire::kPciMsixIrqIndex);
  ASSERT_TRUE(msix.ok());
  EXPECT_EQ(msix->count, 0u);
  auto bad = c->GetIrqInfo(wire::kPciNumIrqs);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, EINVAL);
}

// --- Region access --------------------------------------------------------------------------

TEST_F(ClientEndToEndTest, RegisterReadWrite) {
  auto c = ConnectClient();
  ASSERT_TRUE(c);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegMagic), SampleDevice::kMagic);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegScratch), 0u);
  WriteReg(*c, SampleDevice::kRegScratch, 0xdeadbeef);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegScratch), 0xdeadbeefu);
  // MAGIC is read-only: the write is accepted and ignored.
  WriteReg(*c, SampleDevice::kRegMagic, 0);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegMagic), SampleDevice::kMagic);
  // Byte reads see the bytes of the containing register.
  auto b = c->Read<uint8_t>(kBar0, SampleDevice::kRegScratch + 3);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, 0xde);
  // The device rejects narrow writes; the error comes back as an error reply.
  Status narrow = c->Write<uint16_t>(kBar0, SampleDevice::kRegScratch, 1);
  EXPECT_EQ(narrow.code(), EINVAL);
  // Out of the region's bounds.
  auto oob = c->Read<uint32_t>(kBar0, SampleDevice::kRegisterBarSize);
  ASSERT_FALSE(oob.ok());
  EXPECT_EQ(oob.error().code, EINVAL);
  // The connection survives the errors.
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegScratch), 0xdeadbeefu);
  EXPECT_EQ(OnReactor([this] { return device_->scratch(); }), 0xdeadbeefu);
}

TEST_F(ClientEndToEndTest, ConfigSpaceReadWrite) {
  auto c = ConnectClient();
  ASSERT_TRUE(c);
  std::array<uint8_t, pci::kConventionalConfigSize> cfg{};
  Status s = c->RegionRead(kConfig, 0, cfg);
  ASSERT_TRUE(s.ok()) << s.message();
  auto get16 = [&](size_t off) { return static_cast<uint16_t>(cfg[off] | (cfg[off + 1] << 8)); };
  EXPECT_EQ(get16(pci::kVendorId), SampleDevice::kVendorId);
  EXPECT_EQ(get16(pci::kDeviceId), SampleDevice::kDeviceId);
  EXPECT_EQ(get16(pci::kCommand), 0u);
  EXPECT_EQ(cfg[pci::kInterruptPin], 1u);  // INTA#

  // Command register: writable bits stick.
  ASSERT_TRUE(
      c->Write<uint16_t>(kConfig, pci::kCommand, pci::kCommandMemory | pci::kCommandBusMaster)
          .ok());
  auto cmd = c->Read<uint16_t>(kConfig, pci::kCommand);
  ASSERT_TRUE(cmd.ok());
  EXPECT_EQ(*cmd, pci::kCommandMemory | pci::kCommandBusMaster);

  // BAR sizing: all-ones reads back the size mask of the 4 KiB memory BAR.
  ASSERT_TRUE(c->Write<uint32_t>(kConfig, pci::kBar0, 0xffffffffu).ok());
  auto mask = c->Read<uint32_t>(kConfig, pci::kBar0);
  ASSERT_TRUE(mask.ok());
  EXPECT_EQ(*mask, ~static_cast<uint32_t>(SampleDevice::kRegisterBarSize - 1));
  // Read-only identity bytes ignore writes.
  ASSERT_TRUE(c->Write<uint16_t>(kConfig, pci::kVendorId, 0x1234).ok());
  auto vendor = c->Read<uint16_t>(kConfig, pci::kVendorId);
  ASSERT_TRUE(vendor.ok());
  EXPECT_EQ(*vendor, SampleDevice::kVendorId);
}

TEST_F(ClientEndToEndTest, MappedBar2IsSeenByTheServer) {
  auto c = ConnectClient();
  ASSERT_TRUE(c);
  auto bar2 = c->GetRegionInfo(kBar2);
  ASSERT_TRUE(bar2.ok()) << bar2.error().message;
  ASSERT_EQ(bar2->sparse_areas.size(), 1u);
  auto mapping = c->MapArea(*bar2, bar2->sparse_areas[0]);
  ASSERT_TRUE(mapping.ok()) << mapping.error().message;
  ASSERT_EQ(mapping->size(), SampleDevice::kSharedBarSize);

  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegShmSum), 0u);
  uint32_t expected = 0;
  for (size_t i = 0; i < mapping->size(); ++i) {
    uint8_t v = static_cast<uint8_t>(i * 13 + 1);
    mapping->data()[i] = v;
    expected += v;
  }
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegShmSum), expected);

  // The trapped path sees the same bytes, and trapped writes show up in the mapping.
  std::array<uint8_t, 8> bytes{};
  ASSERT_TRUE(c->RegionRead(kBar2, 100, bytes).ok());
  EXPECT_EQ(0, std::memcmp(bytes.data(), mapping->data() + 100, bytes.size()));
  ASSERT_TRUE(c->Write<uint32_t>(kBar2, 200, 0x01020304).ok());
  uint32_t seen;
  std::memcpy(&seen, mapping->data() + 200, sizeof(seen));
  EXPECT_EQ(seen, 0x01020304u);
}

// --- DMA ------------------------------------------------------------------------------------

TEST_F(ClientEndToEndTest, DmaThroughMappedMemfd) {
  auto c = ConnectClient();
  ASSERT_TRUE(c);
  constexpr size_t kSize = 64 << 10;
  constexpr uint64_t kIova = 0x10000000;
  constexpr uint64_t kOff = 0x1000;  // the DMA window inside the buffer
  constexpr uint32_t kLen = 0x2000;
  auto buf = DmaBuffer::Create(kSize);
  ASSERT_TRUE(buf.ok()) << buf.error().message;
  Status s = c->DmaMap(kIova, kSize, buf->fd(), 0);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(OnReactor([this] { return endpoint_->session()->dma_maps().size(); }), 1u);

  uint32_t pattern_sum = 0;
  for (uint32_t i = 0; i < kLen; ++i) {
    uint8_t v = static_cast<uint8_t>((i * 7 + 3) ^ (i >> 8));
    buf->data()[kOff + i] = v;
    pattern_sum += v;
  }

  // Without bus mastering the device may not DMA.
  ProgramDma(*c, kIova + kOff, kLen, SampleDevice::kDmaSum);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegDmaStatus), static_cast<uint32_t>(EPERM));

  EnableBusMaster(*c);
  ProgramDma(*c, kIova + kOff, kLen, SampleDevice::kDmaSum);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegDmaStatus), 0u);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegDmaResult), pattern_sum);

  // Fill with the low byte of SCRATCH: the client's memory changes, exactly in the window.
  WriteReg(*c, SampleDevice::kRegScratch, 0x5a);
  ProgramDma(*c, kIova + kOff, kLen, SampleDevice::kDmaFill);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegDmaStatus), 0u);
  size_t filled = 0;
  for (uint32_t i = 0; i < kLen; ++i) filled += buf->data()[kOff + i] == 0x5a;
  EXPECT_EQ(filled, kLen);
  EXPECT_EQ(buf->data()[kOff - 1], 0u);
  EXPECT_EQ(buf->data()[kOff + kLen], 0u);
  ProgramDma(*c, kIova + kOff, kLen, SampleDevice::kDmaSum);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegDmaResult), 0x5au * kLen);

  // An address nobody mapped, and a range running off the end of the map.
  ProgramDma(*c, 0x20000000, 16, SampleDevice::kDmaSum);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegDmaStatus), kEfault);
  ProgramDma(*c, kIova + kSize - 8, 16, SampleDevice::kDmaSum);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegDmaStatus), kEfault);

  // After DMA_UNMAP the same address faults.
  s = c->DmaUnmap(kIova, kSize);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(OnReactor([this] { return endpoint_->session()->dma_maps().size(); }), 0u);
  ProgramDma(*c, kIova + kOff, kLen, SampleDevice::kDmaSum);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegDmaStatus), kEfault);
  // Unmapping again matches nothing.
  EXPECT_EQ(c->DmaUnmap(kIova, kSize).code(), ENOENT);
}

TEST_F(ClientEndToEndTest, DmaMapWithoutFdIsNotDirectlyAccessible) {
  auto c = ConnectClient();
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->DmaMap(0x40000, 0x1000, -1, 0).ok());
  EnableBusMaster(*c);
  ProgramDma(*c, 0x40000, 16, SampleDevice::kDmaSum);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegDmaStatus), kEfault);
  EXPECT_TRUE(c->DmaUnmapAll().ok());
}

// --- Interrupts -----------------------------------------------------------------------------

TEST_F(ClientEndToEndTest, IntxThroughEventfdWithMasking) {
  auto c = ConnectClient();
  ASSERT_TRUE(c);
  UniqueFd efd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  ASSERT_TRUE(efd.valid());
  int fds[1] = {efd.get()};
  Status s = c->SetIrqEventfds(wire::kPciIntxIrqIndex, 0, fds);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(OnReactor(
      [this] { return endpoint_->session()->irqs().HasEventfd(wire::kPciIntxIrqIndex, 0); }));

  // Assert INTx: the eventfd fires once; the status register's interrupt bit follows the line.
  WriteReg(*c, SampleDevice::kRegIrq, 1);
  EXPECT_EQ(WaitEventfd(efd.get(), kIrqPollMs), 1u);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegIrq), 1u);
  auto status = c->Read<uint16_t>(kConfig, pci::kStatus);
  ASSERT_TRUE(status.ok());
  EXPECT_TRUE(*status & pci::kStatusInterrupt);
  // Deassert and unmask (INTx is AUTOMASKED after firing).
  WriteReg(*c, SampleDevice::kRegIrq, 0);
  ASSERT_TRUE(c->MaskIrq(wire::kPciIntxIrqIndex, 0, false).ok());
  EXPECT_EQ(WaitEventfd(efd.get(), kNoIrqPollMs), 0u);

  // Masked: asserting the line delivers nothing, it only becomes pending...
  ASSERT_TRUE(c->MaskIrq(wire::kPciIntxIrqIndex, 0, true).ok());
  WriteReg(*c, SampleDevice::kRegIrq, 1);
  EXPECT_EQ(WaitEventfd(efd.get(), kNoIrqPollMs), 0u);
  EXPECT_TRUE(OnReactor(
      [this] { return endpoint_->session()->irqs().Pending(wire::kPciIntxIrqIndex, 0); }));
  // ...until the client unmasks it.
  ASSERT_TRUE(c->MaskIrq(wire::kPciIntxIrqIndex, 0, false).ok());
  EXPECT_EQ(WaitEventfd(efd.get(), kIrqPollMs), 1u);

  // Disabling the index drops the eventfd: nothing more is delivered.
  WriteReg(*c, SampleDevice::kRegIrq, 0);
  ASSERT_TRUE(c->DisableIrqs(wire::kPciIntxIrqIndex).ok());
  ASSERT_TRUE(c->MaskIrq(wire::kPciIntxIrqIndex, 0, false).ok());
  WriteReg(*c, SampleDevice::kRegIrq, 1);
  EXPECT_EQ(WaitEventfd(efd.get(), kNoIrqPollMs), 0u);
  EXPECT_FALSE(OnReactor(
      [this] { return endpoint_->session()->irqs().HasEventfd(wire::kPciIntxIrqIndex, 0); }));
}

// --- Posted writes, reset -------------------------------------------------------------------

TEST_F(ClientEndToEndTest, PostedWriteIsSeenByTheNextRead) {
  auto c = ConnectClient();
  ASSERT_TRUE(c);
  for (uint32_t i = 1; i <= 64; ++i) {
    uint32_t v = 0x1000 + i;
    Status s = c->RegionWritePosted(kBar0, SampleDevice::kRegScratch,
                                    {reinterpret_cast<const uint8_t*>(&v), sizeof(v)});
    ASSERT_TRUE(s.ok()) << s.message();
  }
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegScratch), 0x1000u + 64);
  // A failing posted write gets no reply (not even an error one): the next call's reply is
  // its own.
  uint16_t bad = 1;
  ASSERT_TRUE(c->RegionWritePosted(kBar0, SampleDevice::kRegScratch,
                                   {reinterpret_cast<const uint8_t*>(&bad), sizeof(bad)})
                  .ok());
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegScratch), 0x1000u + 64);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegMagic), SampleDevice::kMagic);
  auto errors = OnReactor([this] { return endpoint_->session()->stats().errors; });
  EXPECT_EQ(errors, 1u);
}

TEST_F(ClientEndToEndTest, ResetRestoresPowerOnState) {
  auto c = ConnectClient();
  ASSERT_TRUE(c);
  auto bar2 = c->GetRegionInfo(kBar2);
  ASSERT_TRUE(bar2.ok());
  auto mapping = c->MapArea(*bar2, bar2->sparse_areas.at(0));
  ASSERT_TRUE(mapping.ok());
  std::memset(mapping->data(), 1, mapping->size());
  WriteReg(*c, SampleDevice::kRegScratch, 77);
  EnableBusMaster(*c);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegShmSum), SampleDevice::kSharedBarSize);

  Status s = c->Reset();
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegScratch), 0u);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegShmSum), 0u);
  EXPECT_EQ(mapping->data()[0], 0u);  // the shared BAR was cleared under the client's mapping
  auto cmd = c->Read<uint16_t>(kConfig, pci::kCommand);
  ASSERT_TRUE(cmd.ok());
  EXPECT_EQ(*cmd, 0u);
  EXPECT_EQ(ReadReg(*c, SampleDevice::kRegMagic), SampleDevice::kMagic);
}

// --- Connection lifecycle -------------------------------------------------------------------

TEST_F(ClientEndToEndTest, SecondConcurrentClientIsRejected) {
  auto first = ConnectClient();
  ASSERT_TRUE(first);
  WriteReg(*first, SampleDevice::kRegScratch, 42);

  ClientOptions options;
  options.timeout = kClientTimeout;
  auto start = std::chrono::steady_clock::now();
  auto second = Client::Connect(socket_path_, options);
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(second.ok()) << "a second client was admitted";
  // The server accepts and closes at once: VERSION meets EOF (ECONNRESET from the library) or a
  // reset socket; if the close wins the race against our send, the send sees EPIPE.
  int code = second.error().code;
  EXPECT_TRUE(code == ECONNRESET || code == EPIPE) << second.error().message;
  EXPECT_LT(elapsed, kClientTimeout) << "rejection should be immediate, not a timeout";

  EXPECT_TRUE(WaitOnReactor([this] { return endpoint_->stats().rejected_clients == 1; }));
  // The first client is unaffected.
  EXPECT_EQ(ReadReg(*first, SampleDevice::kRegScratch), 42u);
  EXPECT_EQ(ReadReg(*first, SampleDevice::kRegMagic), SampleDevice::kMagic);
  EndpointStats st = Stats();
  EXPECT_EQ(st.connects, 1u);
  EXPECT_EQ(st.disconnects, 0u);
}

TEST_F(ClientEndToEndTest, ReconnectAfterDisconnectKeepsDeviceState) {
  size_t fds_before = OpenFdCount();
  {
    auto first = ConnectClient();
    ASSERT_TRUE(first);
    WriteReg(*first, SampleDevice::kRegScratch, 0xc0ffee);
    // Give the session resources to release: a DMA map and an IRQ eventfd.
    auto buf = DmaBuffer::Create(0x4000);
    ASSERT_TRUE(buf.ok());
    ASSERT_TRUE(first->DmaMap(0x100000, 0x4000, buf->fd(), 0).ok());
    UniqueFd efd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    int fds[1] = {efd.get()};
    ASSERT_TRUE(first->SetIrqEventfds(wire::kPciIntxIrqIndex, 0, fds).ok());
  }  // the client, its memfd and its eventfd go away here

  ASSERT_TRUE(WaitOnReactor([this] { return !endpoint_->client_connected(); }))
      << "the server did not notice the disconnect";
  // The server dropped the session's DMA mapping, eventfd and socket.
  EXPECT_EQ(OpenFdCount(), fds_before);
  EndpointStats st = Stats();
  EXPECT_EQ(st.connects, 1u);
  EXPECT_EQ(st.disconnects, 1u);

  auto second = ConnectClient();
  ASSERT_TRUE(second);
  EXPECT_EQ(ReadReg(*second, SampleDevice::kRegScratch), 0xc0ffeeu);
  EXPECT_EQ(OnReactor([this] { return endpoint_->session()->dma_maps().size(); }), 0u);
  EXPECT_EQ(Stats().connects, 2u);
}

TEST_F(ClientEndToEndTest, StopReactorWithClientConnected) {
  auto c = ConnectClient();
  ASSERT_TRUE(c);
  WriteReg(*c, SampleDevice::kRegScratch, 9);
  StopServer();
  // The thread is joined: server objects may be touched directly now.
  ASSERT_FALSE(thread_.joinable());
  EXPECT_TRUE(endpoint_->client_connected());
  EXPECT_EQ(endpoint_->session()->stats().region_writes, 1u);
  EXPECT_EQ(device_->scratch(), 9u);
  endpoint_->Stop();  // ends the session and removes the socket file
  EXPECT_FALSE(std::filesystem::exists(socket_path_));
  auto r = c->Read<uint32_t>(kBar0, SampleDevice::kRegMagic);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.error().code == ECONNRESET || r.error().code == EPIPE) << r.error().message;
}

}  // namespace
}  // namespace vfu::testing
