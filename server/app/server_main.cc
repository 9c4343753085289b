// vfio-user-server: serves emulated PCI devices over vfio-user, one unix socket per device.
//
//   vfio-user-server --config /etc/vfio-user/server.yaml
//   vfio-user-server --device virtio-blk,id=disk0,socket=/run/vfu/disk0.sock,backend=ram,size=64M
//
// Devices run on poll threads (settings.pollThreads; one by default), each a Reactor. SIGTERM
// or SIGINT stop the server gracefully: in-flight I/O finishes, sessions end, client resources
// are released and socket files are removed; the exit code is 0.
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "server/common/log.h"
#include "server/common/unique_fd.h"
#include "server/config/server_config.h"
#include "server/devices/device_factory.h"
#include "server/runtime/reactor.h"
#include "server/session/endpoint.h"
#include "server/version.h"

namespace {

using namespace vfu;

// mkdir -p for the parent directories of a device socket, owned like the socket.
Status PrepareSocketDirectory(const std::string& socket_path, const config::SocketOwner& owner) {
  std::string dir = socket_path.substr(0, socket_path.rfind('/'));
  std::string partial;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    partial = dir.substr(0, pos);
    if (partial.empty()) continue;
    if (::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) {
      return MakeError(errno, "cannot create " + partial + ": " + std::strerror(errno));
    }
  }
  // The device's own directory (mounted into the VM's pod): only its owner may enter.
  if (::chmod(dir.c_str(), 0750) != 0 || ::chown(dir.c_str(), owner.uid, owner.gid) != 0) {
    return MakeError(errno, "cannot set the owner of " + dir + ": " + std::strerror(errno));
  }
  return Status::Ok();
}

struct Planned {
  devices::DeviceSpec spec;
  unsigned thread = 0;
  std::optional<config::SocketOwner> owner;  // only from a config file
};

}  // namespace

namespace {

int Main(int argc, char** argv) {
  CLI::App app{"vfio-user-server: serves emulated PCI devices to VMs over vfio-user"};
  std::string config_path;
  std::vector<std::string> device_texts;
  std::string log_level;
  std::string log_format;
  bool show_version = false;
  std::string classes;
  for (const auto& c : devices::KnownDeviceClasses()) classes += (classes.empty() ? "" : ", ") + c;
  app.add_option("--config", config_path, "YAML configuration file (see docs/configuration.md)");
  app.add_option("--device", device_texts,
                 "CLASS,id=ID,socket=PATH[,key=value...] (repeatable) instead of --config. "
                 "Classes: " +
                     classes +
                     ". virtio-blk keys: backend=file|ram|null, path=, size=, queues=, "
                     "queue-size=, poll=busy|adaptive|interrupt, readonly=on, serial=, "
                     "aio=auto|io_uring|threads");
  app.add_option("--log-level", log_level, "debug, info, warn or error (default info)");
  app.add_option("--log-format", log_format, "text or json (default text)");
  app.add_flag("--version", show_version, "print the version and exit");
  CLI11_PARSE(app, argc, argv);

  if (show_version) {
    std::printf("vfio-user-server %s\n", kVersion);
    return 0;
  }
  if (!config_path.empty() && !device_texts.empty()) {
    std::fprintf(stderr, "error: give either --config or --device, not both\n");
    return 2;
  }

  // What to serve, checked completely before anything starts.
  std::vector<Planned> planned;
  unsigned poll_threads = 1;
  if (!config_path.empty()) {
    auto cfg = config::LoadServerConfig(config_path);
    if (!cfg) {
      std::fprintf(stderr, "error: %s\n", cfg.error().message.c_str());
      return 2;
    }
    if (log_level.empty()) log_level = cfg->settings.log_level;
    if (log_format.empty()) log_format = cfg->settings.log_format;
    poll_threads = cfg->settings.poll_threads;
    for (const auto& d : cfg->devices) planned.push_back({d.spec, d.poll_thread, d.socket_owner});
  } else {
    for (const std::string& text : device_texts) {
      auto spec = devices::ParseDeviceSpec(text);
      if (!spec) {
        std::fprintf(stderr, "error: invalid --device '%s': %s\n", text.c_str(),
                     spec.error().message.c_str());
        return 2;
      }
      for (const auto& other : planned) {
        if (other.spec.id == spec->id || other.spec.socket == spec->socket) {
          std::fprintf(stderr, "error: duplicate device id or socket in '%s'\n", text.c_str());
          return 2;
        }
      }
      planned.push_back({std::move(*spec), 0, std::nullopt});
    }
  }
  if (log_level.empty()) log_level = "info";
  if (log_format.empty()) log_format = "text";
  LogLevel level;
  if (!Log::ParseLevel(log_level, &level)) {
    std::fprintf(stderr, "error: --log-level must be debug, info, warn or error\n");
    return 2;
  }
  Log::SetLevel(level);
  if (log_format == "json") {
    Log::SetFormat(LogFormat::kJson);
  } else if (log_format != "text") {
    std::fprintf(stderr, "error: --log-format must be text or json\n");
    return 2;
  }
  if (planned.empty()) {
    std::fprintf(stderr,
                 "error: no devices; give --config FILE or at least one --device (see --help)\n");
    return 2;
  }

  // Signals arrive as events on the first reactor, not as asynchronous handlers.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);
  UniqueFd signal_fd(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));

  std::vector<std::unique_ptr<Reactor>> reactors;
  for (unsigned i = 0; i < poll_threads; ++i) reactors.push_back(std::make_unique<Reactor>());
  std::vector<std::unique_ptr<VfioDevice>> devices_owned;
  std::vector<std::unique_ptr<DeviceEndpoint>> endpoints;
  auto fail = [&](const char* what, const Planned& p, const std::string& error) {
    Log::Write(LogLevel::kError, what,
               {{"device", p.spec.id}, {"socket", p.spec.socket}, {"error", error}});
    endpoints.clear();
    return 1;
  };
  for (const Planned& p : planned) {
    auto device = devices::CreateDevice(p.spec);
    if (!device) return fail("cannot create device", p, device.error().message);
    devices_owned.push_back(std::move(*device));
  }
  for (size_t i = 0; i < planned.size(); ++i) {
    const Planned& p = planned[i];
    if (p.owner) {
      Status s = PrepareSocketDirectory(p.spec.socket, *p.owner);
      if (!s.ok()) return fail("cannot prepare the socket directory", p, s.message());
    }
    auto endpoint = std::make_unique<DeviceEndpoint>(
        p.spec.id, p.spec.socket, devices_owned[i].get(), reactors[p.thread].get());
    if (p.owner) endpoint->SetSocketOwner(p.owner->uid, p.owner->gid, p.owner->mode);
    Status s = endpoint->Start();
    if (!s.ok()) return fail("cannot listen", p, s.message());
    endpoints.push_back(std::move(endpoint));
  }

  Reactor& main_reactor = *reactors[0];
  (void)main_reactor.Add(signal_fd.get(), EPOLLIN, [&](uint32_t) {
    signalfd_siginfo info{};
    if (::read(signal_fd.get(), &info, sizeof(info)) == sizeof(info)) {
      Log::Write(LogLevel::kInfo, "shutting down",
                 {{"signal", strsignal(static_cast<int>(info.ssi_signo))}});
    }
    for (auto& r : reactors) r->Stop();
  });
  std::vector<std::thread> threads;
  for (size_t i = 1; i < reactors.size(); ++i) {
    threads.emplace_back([r = reactors[i].get()] { r->Run(); });
  }
  Log::Write(LogLevel::kInfo, "vfio-user-server ready",
             {{"version", kVersion},
              {"devices", std::to_string(endpoints.size())},
              {"poll_threads", std::to_string(reactors.size())}});
  main_reactor.Run();
  for (auto& t : threads) t.join();
  main_reactor.Remove(signal_fd.get());
  // Ends sessions (in-flight I/O completes first), removes sockets, then the devices go.
  endpoints.clear();
  for (const Planned& p : planned) {
    if (p.owner) ::rmdir(p.spec.socket.substr(0, p.spec.socket.rfind('/')).c_str());
  }
  devices_owned.clear();
  Log::Write(LogLevel::kInfo, "stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fatal: %s\n", e.what());
    return 1;
  }
}
