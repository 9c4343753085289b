// vfio-user-server: serves emulated PCI devices over vfio-user, one unix socket per device.
//
//   vfio-user-server --device sample,id=s0,socket=/run/vfu/s0.sock [--device ...]
//
// All devices run on one reactor thread. SIGTERM/SIGINT stop it gracefully: sessions end,
// client resources are released and socket files are removed.
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "server/common/log.h"
#include "server/common/unique_fd.h"
#include "server/devices/device_factory.h"
#include "server/runtime/reactor.h"
#include "server/session/endpoint.h"
#include "server/version.h"

int main(int argc, char** argv) {
  using namespace vfu;
  CLI::App app{"vfio-user-server: serves emulated PCI devices to VMs over vfio-user"};
  std::vector<std::string> device_texts;
  std::string log_level = "info";
  std::string log_format = "text";
  bool show_version = false;
  std::string classes;
  for (const auto& c : devices::KnownDeviceClasses()) classes += (classes.empty() ? "" : ", ") + c;
  app.add_option("--device", device_texts,
                 "CLASS,id=ID,socket=PATH[,key=value...] (repeatable). Classes: " + classes);
  app.add_option("--log-level", log_level, "debug, info, warn or error")->capture_default_str();
  app.add_option("--log-format", log_format, "text or json")->capture_default_str();
  app.add_flag("--version", show_version, "print the version and exit");
  CLI11_PARSE(app, argc, argv);

  if (show_version) {
    std::printf("vfio-user-server %s\n", kVersion);
    return 0;
  }
  LogLevel level;
  if (!Log::ParseLevel(log_level, &level)) {
    std::fprintf(stderr, "error: --log-level must be debug, info, warn or error\n");
    return 2;
  }
  Log::SetLevel(level);
  if (log_format == "json")
    Log::SetFormat(LogFormat::kJson);
  else if (log_format != "text") {
    std::fprintf(stderr, "error: --log-format must be text or json\n");
    return 2;
  }
  if (device_texts.empty()) {
    std::fprintf(stderr, "error: no devices; give at least one --device (see --help)\n");
    return 2;
  }

  // Signals arrive as events on the reactor, not as asynchronous handlers.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);
  UniqueFd signal_fd(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));

  // Every spec is checked before anything starts listening.
  std::vector<devices::DeviceSpec> specs;
  for (const std::string& text : device_texts) {
    auto spec = devices::ParseDeviceSpec(text);
    if (!spec) {
      Log::Write(LogLevel::kError, "invalid --device",
                 {{"spec", text}, {"error", spec.error().message}});
      return 2;
    }
    for (const auto& other : specs) {
      if (other.id == spec->id || other.socket == spec->socket) {
        Log::Write(LogLevel::kError, "duplicate device id or socket",
                   {{"device", spec->id}, {"socket", spec->socket}});
        return 2;
      }
    }
    specs.push_back(std::move(*spec));
  }

  Reactor reactor;
  std::vector<std::unique_ptr<VfioDevice>> devices_owned;
  std::vector<std::unique_ptr<DeviceEndpoint>> endpoints;
  for (const devices::DeviceSpec& spec : specs) {
    auto device = devices::CreateDevice(spec);
    if (!device) {
      Log::Write(LogLevel::kError, "cannot create device",
                 {{"device", spec.id}, {"error", device.error().message}});
      return 1;
    }
    devices_owned.push_back(std::move(*device));
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    auto endpoint = std::make_unique<DeviceEndpoint>(specs[i].id, specs[i].socket,
                                                     devices_owned[i].get(), &reactor);
    Status s = endpoint->Start();
    if (!s.ok()) {
      Log::Write(LogLevel::kError, "cannot listen",
                 {{"device", specs[i].id}, {"socket", specs[i].socket}, {"error", s.message()}});
      return 1;
    }
    endpoints.push_back(std::move(endpoint));
  }

  (void)reactor.Add(signal_fd.get(), EPOLLIN, [&](uint32_t) {
    signalfd_siginfo info{};
    if (::read(signal_fd.get(), &info, sizeof(info)) == sizeof(info)) {
      Log::Write(LogLevel::kInfo, "shutting down",
                 {{"signal", strsignal(static_cast<int>(info.ssi_signo))}});
    }
    reactor.Stop();
  });
  Log::Write(LogLevel::kInfo, "vfio-user-server ready",
             {{"version", kVersion}, {"devices", std::to_string(endpoints.size())}});
  reactor.Run();
  reactor.Remove(signal_fd.get());
  endpoints.clear();  // ends sessions, removes sockets
  Log::Write(LogLevel::kInfo, "stopped");
  return 0;
}
