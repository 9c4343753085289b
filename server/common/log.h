// Structured logging: one line per event, text ("level=info msg=... device=disk0") or JSON,
// with key/value context so every line says which device and which client it is about.
// Thread-safe; lines are written whole to stderr.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace vfu {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };
enum class LogFormat { kText, kJson };

struct LogField {
  std::string key;
  std::string value;
};

class Log {
 public:
  static void SetLevel(LogLevel level);
  static void SetFormat(LogFormat format);
  static LogLevel level();
  static bool ParseLevel(std::string_view text, LogLevel* level);
  // Applies a level ("debug", "info", "warn", "error") and format ("text", "json") given as
  // text, as every binary's --log-level/--log-format take them. Nothing changes on an error,
  // which is returned as a message for the user; empty on success.
  static std::string Configure(std::string_view level, std::string_view format);
  static bool Enabled(LogLevel level) { return level >= Log::level(); }

  static void Write(LogLevel level, std::string_view message,
                    std::initializer_list<LogField> fields = {});
  // The context fields (e.g. device=, client=) go before the per-call fields.
  static void Write(LogLevel level, std::string_view message, const std::vector<LogField>& context,
                    std::initializer_list<LogField> fields);
};

// Context carried by an object (a session, a device) and prefixed to each of its lines.
class LogContext {
 public:
  LogContext() = default;
  explicit LogContext(std::vector<LogField> fields) : fields_(std::move(fields)) {}
  void Set(std::string key, std::string value);
  void Debug(std::string_view msg, std::initializer_list<LogField> f = {}) const {
    if (Log::Enabled(LogLevel::kDebug)) Log::Write(LogLevel::kDebug, msg, fields_, f);
  }
  void Info(std::string_view msg, std::initializer_list<LogField> f = {}) const {
    Log::Write(LogLevel::kInfo, msg, fields_, f);
  }
  void Warn(std::string_view msg, std::initializer_list<LogField> f = {}) const {
    Log::Write(LogLevel::kWarn, msg, fields_, f);
  }
  void Error(std::string_view msg, std::initializer_list<LogField> f = {}) const {
    Log::Write(LogLevel::kError, msg, fields_, f);
  }
  const std::vector<LogField>& fields() const { return fields_; }

 private:
  std::vector<LogField> fields_;
};

}  // namespace vfu
