#include "server/common/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace vfu {
namespace {

std::atomic<LogLevel> g_level{LogLevel::kInfo};
std::atomic<LogFormat> g_format{LogFormat::kText};
std::mutex g_write_mutex;

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

void AppendJsonString(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

void AppendTextValue(std::string& out, std::string_view s) {
  bool quote = s.empty() || s.find_first_of(" \"=\t\n") != std::string_view::npos;
  if (!quote) {
    out += s;
    return;
  }
  AppendJsonString(out, s);
}

std::string Timestamp() {
  auto now = std::chrono::system_clock::now();
  auto secs = std::chrono::system_clock::to_time_t(now);
  auto micros =
      std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() %
      1000000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<long>(micros));
  return buf;
}

template <typename Fields>
void AppendFields(std::string& line, LogFormat format, const Fields& fields) {
  for (const LogField& f : fields) {
    if (format == LogFormat::kJson) {
      line += ',';
      AppendJsonString(line, f.key);
      line += ':';
      AppendJsonString(line, f.value);
    } else {
      line += ' ';
      line += f.key;
      line += '=';
      AppendTextValue(line, f.value);
    }
  }
}

void WriteLine(LogLevel level, std::string_view message, const std::vector<LogField>* context,
               std::initializer_list<LogField> fields) {
  if (level < g_level.load(std::memory_order_relaxed)) return;
  LogFormat format = g_format.load(std::memory_order_relaxed);
  std::string line;
  line.reserve(160);
  if (format == LogFormat::kJson) {
    line += "{\"ts\":\"" + Timestamp() + "\",\"level\":\"" + LevelName(level) + "\",\"msg\":";
    AppendJsonString(line, message);
    if (context != nullptr) AppendFields(line, format, *context);
    AppendFields(line, format, fields);
    line += "}\n";
  } else {
    line += Timestamp();
    line += " level=";
    line += LevelName(level);
    line += " msg=";
    AppendTextValue(line, message);
    if (context != nullptr) AppendFields(line, format, *context);
    AppendFields(line, format, fields);
    line += '\n';
  }
  std::lock_guard<std::mutex> lock(g_write_mutex);
  size_t off = 0;
  while (off < line.size()) {
    ssize_t n = ::write(STDERR_FILENO, line.data() + off, line.size() - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
}

}  // namespace

void Log::SetLevel(LogLevel level) { g_level.store(level); }
void Log::SetFormat(LogFormat format) { g_format.store(format); }
LogLevel Log::level() { return g_level.load(std::memory_order_relaxed); }

bool Log::ParseLevel(std::string_view text, LogLevel* level) {
  if (text == "debug")
    *level = LogLevel::kDebug;
  else if (text == "info")
    *level = LogLevel::kInfo;
  else if (text == "warn" || text == "warning")
    *level = LogLevel::kWarn;
  else if (text == "error")
    *level = LogLevel::kError;
  else
    return false;
  return true;
}

std::string Log::Configure(std::string_view level_text, std::string_view format_text) {
  LogLevel level;
  if (!ParseLevel(level_text, &level)) {
    return "log level '" + std::string(level_text) + "' must be debug, info, warn or error";
  }
  if (format_text != "text" && format_text != "json") {
    return "log format '" + std::string(format_text) + "' must be text or json";
  }
  SetLevel(level);
  SetFormat(format_text == "json" ? LogFormat::kJson : LogFormat::kText);
  return {};
}

void Log::Write(LogLevel level, std::string_view message, std::initializer_list<LogField> fields) {
  WriteLine(level, message, nullptr, fields);
}

void Log::Write(LogLevel level, std::string_view message, const std::vector<LogField>& context,
                std::initializer_list<LogField> fields) {
  WriteLine(level, message, &context, fields);
}

void LogContext::Set(std::string key, std::string value) {
  for (LogField& f : fields_) {
    if (f.key == key) {
      f.value = std::move(value);
      return;
    }
  }
  fields_.push_back({std::move(key), std::move(value)});
}

}  // namespace vfu
