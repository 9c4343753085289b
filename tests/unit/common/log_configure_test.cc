// Log::Configure: the --log-level/--log-format handling every binary shares.
#include <gtest/gtest.h>

#include "server/common/log.h"

namespace vfu {
namespace {

class LogConfigure : public ::testing::Test {
 protected:
  void TearDown() override { (void)Log::Configure("info", "text"); }
};

TEST_F(LogConfigure, AppliesAValidLevelAndFormat) {
  EXPECT_EQ(Log::Configure("debug", "json"), "");
  EXPECT_EQ(Log::level(), LogLevel::kDebug);
  EXPECT_EQ(Log::Configure("warn", "text"), "");
  EXPECT_EQ(Log::level(), LogLevel::kWarn);
}

TEST_F(LogConfigure, ABadLevelOrFormatIsNamedAndChangesNothing) {
  ASSERT_EQ(Log::Configure("error", "text"), "");
  std::string error = Log::Configure("loud", "text");
  EXPECT_NE(error.find("'loud'"), std::string::npos) << error;
  error = Log::Configure("debug", "xml");
  EXPECT_NE(error.find("'xml' must be text or json"), std::string::npos) << error;
  EXPECT_EQ(Log::level(), LogLevel::kError) << "the level of a rejected pair is not applied";
}

}  // namespace
}  // namespace vfu
