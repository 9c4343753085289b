// virtio-blk end to end over the socket: the real server stack on its own thread, the client
// library and the userspace virtio-blk driver doing what a guest does.
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <random>

#include <gtest/gtest.h>

#include "server/client/client.h"
#include "server/client/virtio_blk_driver.h"
#include "server/devices/virtio_blk.h"
#include "server/virtio/virtio_pci.h"
#include "tests/support/server_thread.h"

namespace vfu::testing {
namespace {

using client::BlkCompletion;
using client::VirtioBlkDriver;
using std::chrono::seconds;

// Deterministic content for (sector, byte).
uint8_t Pattern(uint64_t sector, size_t i, uint8_t seed) {
  return static_cast<uint8_t>((sector * 131 + i * 7 + seed) & 0xff);
}

class VirtioBlkEndToEnd : public ::testing::Test {
 protected:
  void StartServer(const std::string& spec) {
    socket_ = server_.AddDevice(spec);
    server_.Start();
  }

  std::unique_ptr<client::Client> Connect() {
    auto c = client::Client::Connect(socket_);
    EXPECT_TRUE(c.ok()) << c.error().message;
    return c.ok() ? std::move(*c) : nullptr;
  }

  std::unique_ptr<VirtioBlkDriver> Driver(client::Client* c, uint16_t queues = 1,
                                          uint16_t qsize = 128) {
    client::VirtioBlkDriverOptions o;
    o.queues = queues;
    o.queue_size = qsize;
    auto d = VirtioBlkDriver::Create(c, o);
    EXPECT_TRUE(d.ok()) << d.error().message;
    return d.ok() ? std::move(*d) : nullptr;
  }

  // Writes `count` requests of `blocks` sectors each at queue depth `depth`, then reads them
  // back and checks every byte.
  void WriteReadVerify(VirtioBlkDriver& d, uint16_t queue, uint64_t first_sector, int count,
                       uint32_t bytes, int depth, uint8_t seed) {
    uint32_t sectors = bytes / 512;
    for (bool writing : {true, false}) {
      int next = 0, done = 0;
      std::vector<uint16_t> free_slots;
      for (int s = depth - 1; s >= 0; --s) free_slots.push_back(static_cast<uint16_t>(s));
      while (done < count) {
        while (next < count && !free_slots.empty()) {
          uint16_t slot = free_slots.back();
          free_slots.pop_back();
          uint64_t sector = first_sector + static_cast<uint64_t>(next) * sectors;
          uint64_t tag = (static_cast<uint64_t>(next) << 16) | slot;
          if (writing) {
            uint8_t* buf = d.slot_buffer(queue, slot);
            for (uint32_t i = 0; i < bytes; ++i) buf[i] = Pattern(sector + i / 512, i % 512, seed);
            ASSERT_TRUE(d.Write(queue, slot, sector, bytes, tag).ok());
          } else {
            std::memset(d.slot_buffer(queue, slot), 0, bytes);
            ASSERT_TRUE(d.Read(queue, slot, sector, bytes, tag).ok());
          }
          ++next;
        }
        auto got = d.WaitFor(queue, 1, seconds(10));
        ASSERT_TRUE(got.ok()) << got.error().message;
        for (const BlkCompletion& c : *got) {
          ASSERT_EQ(c.status, devices::kBlkStatusOk);
          uint16_t slot = static_cast<uint16_t>(c.tag & 0xffff);
          if (!writing) {
            uint64_t index = c.tag >> 16;
            uint64_t sector = first_sector + index * sectors;
            const uint8_t* buf = d.slot_buffer(queue, slot);
            for (uint32_t i = 0; i < bytes; ++i) {
              ASSERT_EQ(buf[i], Pattern(sector + i / 512, i % 512, seed))
                  << "sector " << sector << " byte " << i;
            }
            EXPECT_EQ(c.used_len, bytes + 1);
          }
          free_slots.push_back(slot);
          ++done;
        }
      }
    }
  }

  ServerThread server_;
  std::string socket_;
};

TEST_F(VirtioBlkEndToEnd, DriverSeesCapacityBlockSizeAndFeatures) {
  StartServer("virtio-blk,id=d,backend=ram,size=16M,queues=2");
  auto c = Connect();
  auto d = Driver(c.get(), 2);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->capacity_sectors(), (16u << 20) / 512);
  EXPECT_EQ(d->block_size(), 512u);
  EXPECT_TRUE(d->features() & devices::kBlkFeatureFlush);
  EXPECT_TRUE(d->features() & devices::kBlkFeatureMq);
  EXPECT_FALSE(d->features() & devices::kBlkFeatureRo);
  EXPECT_EQ(d->ReadStatus() & 4, 4);  // DRIVER_OK
}

TEST_F(VirtioBlkEndToEnd, PatternsReadBackAtQueueDepthOne) {
  StartServer("virtio-blk,id=d,backend=ram,size=16M");
  auto c = Connect();
  auto d = Driver(c.get());
  ASSERT_NE(d, nullptr);
  WriteReadVerify(*d, 0, 0, 64, 4096, 1, 1);
}

TEST_F(VirtioBlkEndToEnd, PatternsReadBackAtQueueDepth32OnSeveralQueues) {
  StartServer("virtio-blk,id=d,backend=ram,size=32M,queues=4");
  auto c = Connect();
  auto d = Driver(c.get(), 4);
  ASSERT_NE(d, nullptr);
  for (uint16_t q = 0; q < 4; ++q) {
    WriteReadVerify(*d, q, q * 8192u, 256, 8192, 32, static_cast<uint8_t>(q + 10));
  }
  // Each queue's data is intact after the others wrote.
  for (uint16_t q = 0; q < 4; ++q)
    WriteReadVerify(*d, q, q * 8192u, 8, 8192, 4, static_cast<uint8_t>(q + 10));
}

TEST_F(VirtioBlkEndToEnd, FileBackendFlushMakesDataDurableInTheFile) {
  std::string path = server_.dir().File("disk.img");
  {
    std::ofstream f(path, std::ios::binary);
    f.seekp((8 << 20) - 1);
    f.put(0);
  }
  StartServer("virtio-blk,id=d,backend=file,path=" + path);
  auto c = Connect();
  auto d = Driver(c.get());
  ASSERT_NE(d, nullptr);
  std::memset(d->slot_buffer(0, 0), 0xa5, 4096);
  ASSERT_TRUE(d->Write(0, 0, 100, 4096, 1).ok());
  auto w = d->WaitFor(0, 1, seconds(10));
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(d->Flush(0, 1, 2).ok());
  auto f = d->WaitFor(0, 1, seconds(10));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)[0].status, devices::kBlkStatusOk);
  std::ifstream in(path, std::ios::binary);
  in.seekg(100 * 512);
  std::vector<char> back(4096);
  in.read(back.data(), 4096);
  for (char ch : back) ASSERT_EQ(static_cast<uint8_t>(ch), 0xa5);
}

TEST_F(VirtioBlkEndToEnd, DiscardAndWriteZeroesReadBackAsZeros) {
  StartServer("virtio-blk,id=d,backend=ram,size=8M");
  auto c = Connect();
  auto d = Driver(c.get());
  ASSERT_NE(d, nullptr);
  for (int op = 0; op < 2; ++op) {
    std::memset(d->slot_buffer(0, 0), 0x77, 65536);
    ASSERT_TRUE(d->Write(0, 0, 0, 65536, 1).ok());
    ASSERT_TRUE(d->WaitFor(0, 1, seconds(10)).ok());
    Status s = op == 0 ? d->Discard(0, 0, 8, 16, 2) : d->WriteZeroes(0, 0, 8, 16, 2);
    ASSERT_TRUE(s.ok());
    auto r = d->WaitFor(0, 1, seconds(10));
    ASSERT_TRUE(r.ok());
    ASSERT_EQ((*r)[0].status, devices::kBlkStatusOk);
    ASSERT_TRUE(d->Read(0, 0, 0, 65536, 3).ok());
    ASSERT_TRUE(d->WaitFor(0, 1, seconds(10)).ok());
    const uint8_t* buf = d->slot_buffer(0, 0);
    for (size_t i = 0; i < 65536; ++i) {
      uint8_t want = (i >= 8 * 512 && i < 24 * 512) ? 0 : 0x77;
      ASSERT_EQ(buf[i], want) << (op == 0 ? "discard" : "write-zeroes") << " byte " << i;
    }
  }
}

TEST_F(VirtioBlkEndToEnd, GetIdReturnsTheSerial) {
  StartServer("virtio-blk,id=d,backend=null,size=1M,serial=SER-12345");
  auto c = Connect();
  auto d = Driver(c.get());
  ASSERT_NE(d, nullptr);
  ASSERT_TRUE(d->GetId(0, 0, 9).ok());
  auto r = d->WaitFor(0, 1, seconds(10));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].status, devices::kBlkStatusOk);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(d->slot_buffer(0, 0))), "SER-12345");
}

TEST_F(VirtioBlkEndToEnd, OutOfRangeAndUnknownRequestsFailWithoutHarm) {
  StartServer("virtio-blk,id=d,backend=ram,size=1M");
  auto c = Connect();
  auto d = Driver(c.get());
  ASSERT_NE(d, nullptr);
  ASSERT_TRUE(d->Read(0, 0, 2047, 4096, 1).ok());  // straddles the end
  auto r = d->WaitFor(0, 1, seconds(10));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].status, devices::kBlkStatusIoErr);
  ASSERT_TRUE(d->Raw(0, 0, 99, 0, 0, 0, 2).ok());  // unknown type
  r = d->WaitFor(0, 1, seconds(10));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].status, devices::kBlkStatusUnsupported);
  // The device still works.
  WriteReadVerify(*d, 0, 0, 4, 4096, 1, 3);
}

TEST_F(VirtioBlkEndToEnd, ReadOnlyDeviceRefusesWrites) {
  StartServer("virtio-blk,id=d,backend=ram,size=1M,readonly=on");
  auto c = Connect();
  auto d = Driver(c.get());
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(d->features() & devices::kBlkFeatureRo);
  ASSERT_TRUE(d->Write(0, 0, 0, 4096, 1).ok());
  auto r = d->WaitFor(0, 1, seconds(10));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].status, devices::kBlkStatusIoErr);
}

TEST_F(VirtioBlkEndToEnd, CompletionsArriveAsMsixInterruptsOnTheQueueEventfd) {
  StartServer("virtio-blk,id=d,backend=ram,size=1M,poll=interrupt");
  auto c = Connect();
  auto d = Driver(c.get());
  ASSERT_NE(d, nullptr);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(d->Read(0, 0, 0, 4096, static_cast<uint64_t>(i)).ok());
    ASSERT_TRUE(d->WaitForInterrupt(0, std::chrono::milliseconds(5000))) << "request " << i;
    std::vector<BlkCompletion> got;
    d->Poll(0, &got);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].status, devices::kBlkStatusOk);
  }
  EXPECT_GT(d->kicks(), 0u);  // interrupt mode: the device wants kicks
}

TEST_F(VirtioBlkEndToEnd, ResetInTheMiddleOfIoLeavesTheDeviceUsable) {
  StartServer("virtio-blk,id=d,backend=ram,size=4M");
  auto c = Connect();
  {
    auto d = Driver(c.get());
    ASSERT_NE(d, nullptr);
    for (uint16_t s = 0; s < 16; ++s) ASSERT_TRUE(d->Write(0, s, s * 8u, 4096, s).ok());
    ASSERT_TRUE(d->ResetDevice().ok());
  }
  auto d = Driver(c.get());
  ASSERT_NE(d, nullptr);
  WriteReadVerify(*d, 0, 0, 16, 4096, 8, 5);
}

TEST_F(VirtioBlkEndToEnd, ClientKilledMidIoThenANewClientSeesTheData) {
  StartServer("virtio-blk,id=d,backend=ram,size=8M");
  {
    auto c = Connect();
    auto d = Driver(c.get());
    ASSERT_NE(d, nullptr);
    WriteReadVerify(*d, 0, 0, 32, 4096, 8, 42);
    // More writes in flight, then the connection drops without any cleanup (as with kill -9).
    for (uint16_t s = 0; s < 20; ++s) {
      std::memset(d->slot_buffer(0, s), 0xee, 4096);
      ASSERT_TRUE(d->Write(0, s, 4096 + s * 8u, 4096, s).ok());
    }
    d->Abandon();  // no orderly teardown, as when the VMM dies
    c.reset();     // closes the socket; the server ends the session
  }
  auto c2 = Connect();
  ASSERT_NE(c2, nullptr);
  auto d2 = Driver(c2.get());
  ASSERT_NE(d2, nullptr);
  WriteReadVerify(*d2, 0, 0, 32, 4096, 8, 42);
}

}  // namespace
}  // namespace vfu::testing
