// Subprocess: starts a binary with arguments, captures its stdout+stderr into a file, and
// guarantees the process is stopped (SIGKILL as a last resort) when the object goes away, so
// integration tests never leave processes behind.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace vfu::testing {

class Subprocess {
 public:
  Subprocess(std::string binary, std::vector<std::string> args);
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  bool Start();
  // Waits up to `timeout` for exit; returns the exit code (128+signal when killed).
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  void Signal(int sig);
  bool running();
  // Everything the process wrote so far.
  std::string Output() const;
  // Waits until Output() contains `text` (or the timeout passes).
  bool WaitForOutput(const std::string& text, std::chrono::milliseconds timeout);

 private:
  std::string binary_;
  std::vector<std::string> args_;
  std::string output_path_;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

// Runs to completion (bounded) and returns {exit code, output}.
std::pair<int, std::string> RunToCompletion(
    const std::string& binary, const std::vector<std::string>& args,
    std::chrono::milliseconds timeout = std::chrono::seconds(20));

// A fresh temporary directory, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace vfu::testing
