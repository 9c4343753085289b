// Block I/O for tests that keep a userspace virtio-blk driver busy while the server under it
// changes (handoffs): a connected driver, and 4 KiB blocks with a pattern derived from (sector,
// byte, seed), written or read back and checked one at a time on queue 0, slot 0.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "server/client/client.h"
#include "server/client/virtio_blk_driver.h"

namespace vfu::testing {

inline uint8_t BlockPattern(uint64_t sector, uint32_t byte, uint8_t seed) {
  return static_cast<uint8_t>((sector * 29 + byte * 13 + seed) & 0xff);
}

// Connects to `socket` and sets up a driver with one 64-entry queue into *client and *driver.
inline void ConnectBlkDriver(const std::string& socket, std::unique_ptr<client::Client>* client,
                             std::unique_ptr<client::VirtioBlkDriver>* driver) {
  auto connected = client::Client::Connect(socket);
  ASSERT_TRUE(connected.ok()) << connected.error().message;
  *client = std::move(*connected);
  client::VirtioBlkDriverOptions options;
  options.queue_size = 64;
  auto created = client::VirtioBlkDriver::Create(client->get(), options);
  ASSERT_TRUE(created.ok()) << created.error().message;
  *driver = std::move(*created);
}

// Writes (or reads back and checks) `count` 4 KiB blocks from `first_sector`, at depth 1.
inline void WriteOrVerifyBlocks(client::VirtioBlkDriver& d, uint64_t first_sector, int count,
                                uint8_t seed, bool write) {
  for (int n = 0; n < count; ++n) {
    uint64_t sector = first_sector + static_cast<uint64_t>(n) * 8;
    uint8_t* buf = d.slot_buffer(0, 0);
    if (write) {
      for (uint32_t i = 0; i < 4096; ++i) buf[i] = BlockPattern(sector, i, seed);
      ASSERT_TRUE(d.Write(0, 0, sector, 4096, static_cast<uint64_t>(n)).ok());
    } else {
      std::memset(buf, 0, 4096);
      ASSERT_TRUE(d.Read(0, 0, sector, 4096, static_cast<uint64_t>(n)).ok());
    }
    auto got = d.WaitFor(0, 1, std::chrono::seconds(10));
    ASSERT_TRUE(got.ok()) << got.error().message;
    ASSERT_EQ((*got)[0].status, 0) << "request " << n;
    if (!write) {
      for (uint32_t i = 0; i < 4096; ++i) {
        ASSERT_EQ(buf[i], BlockPattern(sector, i, seed)) << "sector " << sector << " byte " << i;
      }
    }
  }
}

}  // namespace vfu::testing
