// An unknown command gets ENOSYS whether or not VERSION was negotiated, and the session goes on.
#include <gtest/gtest.h>

#include "tests/support/session_harness.h"

namespace vfu::testing {
namespace {

TEST(UnknownCommand, IsAnsweredWithEnosysBeforeNegotiation) {
  SessionHarness h;
  for (uint16_t command : {0, 14, 19, 99, 0xffff}) {
    auto r = h.Call(static_cast<wire::Command>(command), {});
    EXPECT_TRUE(r.is_error()) << command;
    EXPECT_EQ(r.error_no(), ENOSYS) << command;
  }
  h.Negotiate();
}

TEST(UnknownCommand, IsAnsweredWithEnosysAfterNegotiation) {
  SessionHarness h;
  h.Negotiate();
  auto r = h.Call(static_cast<wire::Command>(77), {});
  EXPECT_TRUE(r.is_error());
  EXPECT_EQ(r.error_no(), ENOSYS);
  wire::DeviceInfo info{16, 0, 0, 0};
  EXPECT_FALSE(h.CallStruct(wire::Command::kDeviceGetInfo, info).is_error());
}

}  // namespace
}  // namespace vfu::testing
