// DeviceRegistry: how server snapshots and control-connection loss become advertised health.
#include "deviceplugin/plugin/device_registry.h"

#include <atomic>

#include <gtest/gtest.h>

namespace vfu::deviceplugin {
namespace {

ServerDevice Server(const std::string& id, const std::string& device_class = "virtio-blk",
                    bool healthy = true) {
  ServerDevice d;
  d.id = id;
  d.device_class = device_class;
  d.socket_path = "/run/vfio-user/" + id + "/vfio-user.sock";
  d.server_healthy = healthy;
  return d;
}

TEST(DeviceRegistry, SnapshotDevicesAreHealthyAndSortedById) {
  DeviceRegistry r;
  r.ApplySnapshot({Server("disk1"), Server("disk0"), Server("s0", "sample")});
  auto blk = r.DevicesOfClass("virtio-blk");
  ASSERT_EQ(blk.size(), 2u);
  EXPECT_EQ(blk[0].device.id, "disk0");
  EXPECT_TRUE(blk[0].healthy);
  EXPECT_EQ(r.Classes(), (std::vector<std::string>{"sample", "virtio-blk"}));
}

TEST(DeviceRegistry, UnreachableServerKeepsTheIdsButMakesEveryDeviceUnhealthy) {
  DeviceRegistry r;
  r.ApplySnapshot({Server("disk0"), Server("disk1")});
  r.MarkServerUnreachable("connection refused");
  auto blk = r.DevicesOfClass("virtio-blk");
  ASSERT_EQ(blk.size(), 2u);
  for (const auto& d : blk) {
    EXPECT_FALSE(d.healthy);
    EXPECT_NE(d.unhealthy_reason.find("connection refused"), std::string::npos);
  }
  r.ApplySnapshot({Server("disk0"), Server("disk1")});
  for (const auto& d : r.DevicesOfClass("virtio-blk")) EXPECT_TRUE(d.healthy);
}

TEST(DeviceRegistry, ServerUnhealthyAndPendingRemovalAreUnhealthyWithReasons) {
  DeviceRegistry r;
  ServerDevice bad = Server("disk0", "virtio-blk", false);
  bad.health_reason = "backend I/O errors";
  ServerDevice leaving = Server("disk1");
  leaving.removal_pending = true;
  r.ApplySnapshot({bad, leaving});
  auto blk = r.DevicesOfClass("virtio-blk");
  EXPECT_FALSE(blk[0].healthy);
  EXPECT_NE(blk[0].unhealthy_reason.find("backend I/O errors"), std::string::npos);
  EXPECT_FALSE(blk[1].healthy);
  EXPECT_NE(blk[1].unhealthy_reason.find("removed"), std::string::npos);
}

TEST(DeviceRegistry, DevicesSharingASocketDirectoryAreNotHandedOut) {
  DeviceRegistry r;
  ServerDevice a = Server("a");
  ServerDevice b = Server("b");
  a.socket_path = "/run/shared/a.sock";
  b.socket_path = "/run/shared/b.sock";
  r.ApplySnapshot({a, b, Server("c")});
  auto blk = r.DevicesOfClass("virtio-blk");
  EXPECT_FALSE(blk[0].healthy);
  EXPECT_NE(blk[0].unhealthy_reason.find("shared"), std::string::npos);
  EXPECT_FALSE(blk[1].healthy);
  EXPECT_TRUE(blk[2].healthy);
}

TEST(DeviceRegistry, AClassStaysKnownWhenItsDevicesGoAway) {
  DeviceRegistry r;
  r.ApplySnapshot({Server("s0", "sample")});
  r.ApplySnapshot({});
  EXPECT_EQ(r.Classes(), (std::vector<std::string>{"sample"}));
  EXPECT_TRUE(r.DevicesOfClass("sample").empty());
}

TEST(DeviceRegistry, FindChecksTheClass) {
  DeviceRegistry r;
  r.ApplySnapshot({Server("disk0")});
  EXPECT_TRUE(r.Find("virtio-blk", "disk0").has_value());
  EXPECT_FALSE(r.Find("sample", "disk0").has_value());
  EXPECT_FALSE(r.Find("virtio-blk", "disk9").has_value());
}

TEST(DeviceRegistry, SubscribersHearOfChangesOnlyUntilTheyUnsubscribe) {
  DeviceRegistry r;
  std::atomic<int> calls{0};
  auto sub = r.Subscribe([&] { calls++; });
  r.ApplySnapshot({Server("disk0")});
  r.ApplySnapshot({Server("disk0")});  // unchanged: no notification
  r.MarkServerUnreachable("gone");
  r.MarkServerUnreachable("still gone");  // already unreachable: no notification
  EXPECT_EQ(calls.load(), 2);
  uint64_t v = r.version();
  sub.reset();
  r.ApplySnapshot({Server("disk1")});
  EXPECT_EQ(calls.load(), 2);
  EXPECT_GT(r.version(), v);
}

}  // namespace
}  // namespace vfu::deviceplugin
