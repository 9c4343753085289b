// vfio-user-server: serves emulated PCI devices over vfio-user, one unix socket per device.
//
//   vfio-user-server --config /etc/vfio-user/server.yaml
//   vfio-user-server --device virtio-blk,id=disk0,socket=/run/vfu/disk0.sock,backend=ram,size=64M
//   vfio-user-server --device sample,id=s0,socket=/run/vfu/s0.sock,owner=107:107,mode=0660
//
// Devices run on poll threads (settings.pollThreads; one by default), each a Reactor, managed by
// a DeviceManager; the control API (gRPC, server/control/control.proto) serves their status and
// counters. SIGHUP or a change of the config file reloads it (see DeviceManager for the rules).
// SIGTERM or SIGINT stop the server gracefully: in-flight I/O finishes, sessions end, client
// resources are released and socket files are removed; the exit code is 0.
#include <signal.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "server/common/log.h"
#include "server/common/unique_fd.h"
#include "server/config/server_config.h"
#include "server/control/control_server.h"
#include "server/devices/device_factory.h"
#include "server/runtime/reactor.h"
#include "server/service/device_manager.h"
#include "server/service/handoff.h"
#include "server/version.h"

namespace {

using namespace vfu;

struct Loaded {
  std::vector<service::DevicePlan> plans;
  config::Settings settings;
  std::string text;  // the file's content, to tell real changes from touch events
};

Result<Loaded> LoadPlans(const std::string& path) {
  std::ifstream in(path);
  if (!in) return MakeError(ENOENT, path + ": cannot read: " + std::strerror(errno));
  std::stringstream buffer;
  buffer << in.rdbuf();
  Loaded loaded;
  loaded.text = buffer.str();
  auto cfg = config::ParseServerConfig(loaded.text, path);
  if (!cfg) return cfg.error();
  loaded.settings = cfg->settings;
  for (const auto& d : cfg->devices) {
    service::DevicePlan plan;
    plan.spec = d.spec;
    plan.poll_thread = d.poll_thread;
    plan.owner =
        service::SocketOwnership{d.socket_owner.uid, d.socket_owner.gid, d.socket_owner.mode};
    loaded.plans.push_back(std::move(plan));
  }
  return loaded;
}

void LogReport(const service::ApplyReport& r) {
  auto join = [](const std::vector<std::string>& v) {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
    return out;
  };
  Log::Write(r.failed.empty() && r.refused.empty() ? LogLevel::kInfo : LogLevel::kWarn,
             "configuration applied",
             {{"added", join(r.added)},
              {"removed", join(r.removed)},
              {"removal_deferred", join(r.removal_deferred)},
              {"recreated", join(r.recreated)},
              {"refused", join(r.refused)},
              {"failed", join(r.failed)}});
}

int Main(int argc, char** argv) {
  CLI::App app{
      "vfio-user-server: serves emulated PCI devices to VMs over vfio-user, one unix socket per "
      "device. SIGHUP or a change of the --config file reloads it; SIGTERM stops gracefully."};
  std::string config_path;
  std::vector<std::string> device_texts;
  std::string control_socket;
  std::string log_level;
  std::string log_format;
  unsigned poll_threads_flag = 0;
  bool check_only = false;
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
                     "aio=auto|io_uring|threads. Every class: owner=UID:GID and mode=OCTAL "
                     "(default 0660) of the socket file, like socketOwner in a --config file "
                     "(the socket's directory is left as it is)");
  app.add_option("--control-socket", control_socket,
                 "serve the control API (gRPC) on this unix socket; default with --config: "
                 "settings.controlSocket, with --device: none");
  std::string handoff_socket;
  std::string take_over;
  app.add_option("--handoff-socket", handoff_socket,
                 "accept a successor on this unix socket (mode 0600): a vfio-user-server started "
                 "with --take-over gets the devices with their connected clients, and this one "
                 "exits 0 once the successor serves (a planned upgrade or restart)");
  app.add_option("--take-over", take_over,
                 "at start, take the devices and their clients from the server whose "
                 "--handoff-socket this is, instead of starting them fresh; exits 1, leaving "
                 "that server serving, when it cannot");
  app.add_option("--poll-threads", poll_threads_flag,
                 "poll threads for --device (default 1; --config uses settings.pollThreads)");
  app.add_option("--log-level", log_level, "debug, info, warn or error (default info)");
  app.add_option("--log-format", log_format, "text or json (default text)");
  app.add_flag("--check", check_only, "check the --config file and exit (0 when valid)");
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
  std::vector<service::DevicePlan> plans;
  unsigned poll_threads = poll_threads_flag == 0 ? 1 : poll_threads_flag;
  std::string loaded_text;
  config::Settings settings;
  if (!config_path.empty()) {
    auto loaded = LoadPlans(config_path);
    if (!loaded) {
      std::fprintf(stderr, "error: %s\n", loaded.error().message.c_str());
      return 2;
    }
    if (check_only) {
      std::printf("%s: valid (%zu devices)\n", config_path.c_str(), loaded->plans.size());
      return 0;
    }
    settings = loaded->settings;
    if (log_level.empty()) log_level = settings.log_level;
    if (log_format.empty()) log_format = settings.log_format;
    if (poll_threads_flag == 0) poll_threads = settings.poll_threads;
    if (control_socket.empty()) control_socket = settings.control_socket;
    plans = std::move(loaded->plans);
    loaded_text = std::move(loaded->text);
  } else {
    if (check_only) {
      std::fprintf(stderr, "error: --check needs --config\n");
      return 2;
    }
    for (const std::string& text : device_texts) {
      auto quick = config::ParseQuickDevice(text);
      if (!quick) {
        std::fprintf(stderr, "error: invalid --device '%s': %s\n", text.c_str(),
                     quick.error().message.c_str());
        return 2;
      }
      for (const auto& other : plans) {
        if (other.spec.id == quick->spec.id || other.spec.socket == quick->spec.socket) {
          std::fprintf(stderr, "error: duplicate device id or socket in '%s'\n", text.c_str());
          return 2;
        }
      }
      service::DevicePlan plan;
      plan.spec = std::move(quick->spec);
      if (const auto& o = quick->socket_owner) {
        // The socket alone: the quick form's socket directory may hold other sockets.
        plan.owner = service::SocketOwnership{o->uid, o->gid, o->mode, /*directory=*/false};
      }
      // Spread quick-form devices over the poll threads.
      plan.poll_thread = static_cast<unsigned>(plans.size() % poll_threads);
      plans.push_back(std::move(plan));
    }
    if (plans.empty()) {
      std::fprintf(stderr,
                   "error: no devices; give --config FILE or at least one --device (see --help)\n");
      return 2;
    }
  }
  if (log_level.empty()) log_level = "info";
  if (log_format.empty()) log_format = "text";
  if (std::string error = Log::Configure(log_level, log_format); !error.empty()) {
    std::fprintf(stderr, "error: %s\n", error.c_str());
    return 2;
  }
  // Devices that cannot be created are a start-up error for the quick form (nothing starts),
  // and a device-level health problem for a config file (the rest serve; it is retried).
  if (config_path.empty()) {
    for (const auto& plan : plans) {
      auto device = devices::CreateDevice(plan.spec);
      if (!device) {
        Log::Write(LogLevel::kError, "cannot create device",
                   {{"device", plan.spec.id}, {"error", device.error().message}});
        return 1;
      }
    }
  }

  // Signals arrive as events on the main thread's reactor, not as asynchronous handlers.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);
  UniqueFd signal_fd(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));

  service::DeviceManager::Options manager_options;
  manager_options.poll_threads = poll_threads;
  manager_options.thread_cpus = settings.poll_thread_cpus;
  service::DeviceManager manager(manager_options);
  service::HandoffTimeouts handoff_timeouts;
  service::ApplyReport first;
  if (!take_over.empty()) {
    auto predecessor =
        service::HandoffClient::TakeOver(take_over, &manager, plans, handoff_timeouts, &first);
    if (!predecessor) {
      Log::Write(LogLevel::kError, "cannot take over; the running server serves on",
                 {{"handoff_socket", take_over}, {"error", predecessor.error().message}});
      return 1;
    }
    Log::Write(LogLevel::kInfo, "took the devices over from the running server",
               {{"handoff_socket", take_over}});
    // Its control socket and handoff socket are free once it has exited.
    if (!predecessor->WaitForPredecessorExit(std::chrono::seconds(30))) {
      Log::Write(LogLevel::kWarn, "the previous server has not exited 30 s after the handoff");
    }
  } else {
    first = manager.Apply(plans);
  }
  if (config_path.empty() && !first.failed.empty()) {
    Log::Write(LogLevel::kError, "cannot start", {{"error", first.failed.front()}});
    return 1;
  }
  control::ControlServer control_server(&manager);
  if (!control_socket.empty()) {
    if (Status s = control_server.Start(control_socket); !s.ok()) {
      Log::Write(LogLevel::kError, "cannot start the control API", {{"error", s.message()}});
      return 1;
    }
  }

  Reactor main_reactor;
  auto reload = [&](const char* why) {
    auto loaded = LoadPlans(config_path);
    if (!loaded) {
      Log::Write(LogLevel::kError, "reload failed; the running configuration is unchanged",
                 {{"trigger", why}, {"error", loaded.error().message}});
      return;
    }
    if (loaded->text == loaded_text && std::string(why) == "file change") return;
    const config::Settings& next = loaded->settings;
    std::string fixed;
    if (next.poll_threads != settings.poll_threads) fixed = "settings.pollThreads";
    if (next.control_socket != settings.control_socket) fixed = "settings.controlSocket";
    if (next.poll_thread_cpus != settings.poll_thread_cpus) fixed = "settings.pollThreadCpus";
    if (!fixed.empty()) {
      Log::Write(LogLevel::kError,
                 "reload refused: " + fixed + " changed and needs a restart; nothing applied",
                 {{"trigger", why}});
      return;
    }
    if (std::string error = Log::Configure(next.log_level, next.log_format); !error.empty()) {
      Log::Write(LogLevel::kError, "reload: bad log settings", {{"error", error}});
    }
    Log::Write(LogLevel::kInfo, "reloading the configuration",
               {{"trigger", why}, {"file", config_path}});
    loaded_text = loaded->text;
    settings = next;
    LogReport(manager.Apply(loaded->plans));
  };

  (void)main_reactor.Add(signal_fd.get(), EPOLLIN, [&](uint32_t) {
    signalfd_siginfo info{};
    while (::read(signal_fd.get(), &info, sizeof(info)) == sizeof(info)) {
      if (info.ssi_signo == SIGHUP) {
        if (config_path.empty()) {
          Log::Write(LogLevel::kInfo, "SIGHUP ignored: no --config file to reload");
        } else {
          reload("SIGHUP");
        }
        continue;
      }
      Log::Write(LogLevel::kInfo, "shutting down",
                 {{"signal", strsignal(static_cast<int>(info.ssi_signo))}});
      main_reactor.Stop();
    }
  });

  // A change of the config file (or of the directory entry a Kubernetes ConfigMap swaps) reloads.
  UniqueFd inotify_fd;
  if (!config_path.empty()) {
    inotify_fd = UniqueFd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    std::string dir = config_path.find('/') == std::string::npos
                          ? std::string(".")
                          : config_path.substr(0, config_path.rfind('/'));
    if (dir.empty()) dir = "/";
    if (!inotify_fd.valid() || ::inotify_add_watch(inotify_fd.get(), dir.c_str(),
                                                   IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE) < 0) {
      Log::Write(LogLevel::kWarn, "cannot watch the config file; reload with SIGHUP",
                 {{"error", std::strerror(errno)}});
    } else {
      (void)main_reactor.Add(inotify_fd.get(), EPOLLIN, [&](uint32_t) {
        alignas(inotify_event) char buffer[4096];
        while (::read(inotify_fd.get(), buffer, sizeof(buffer)) > 0) {
        }
        reload("file change");
      });
    }
  }

  std::optional<service::HandoffListener> handoff;
  bool handed_over = false;
  if (!handoff_socket.empty()) {
    auto listener = service::HandoffListener::Listen(handoff_socket);
    if (!listener) {
      Log::Write(LogLevel::kError, "cannot listen for a successor",
                 {{"handoff_socket", handoff_socket}, {"error", listener.error().message}});
      return 1;
    }
    handoff = std::move(*listener);
    (void)main_reactor.Add(handoff->fd(), EPOLLIN, [&](uint32_t) {
      if (handoff->ServePending(&manager, handoff_timeouts)) {
        handed_over = true;
        main_reactor.Stop();
      }
    });
  }

  Log::Write(LogLevel::kInfo, "vfio-user-server ready",
             {{"version", kVersion},
              {"devices", std::to_string(plans.size())},
              {"poll_threads", std::to_string(poll_threads)},
              {"control_socket", control_socket}});
  main_reactor.Run();
  control_server.Shutdown();
  // Ends sessions (in-flight I/O completes first), removes sockets, then the devices go. After
  // a handoff the devices were let go already: their sockets and clients are the successor's.
  manager.Shutdown();
  Log::Write(LogLevel::kInfo,
             handed_over ? "stopped: the successor serves the devices" : "stopped");
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
