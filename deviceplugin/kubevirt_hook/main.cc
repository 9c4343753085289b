// vfio-user-kubevirt-hook: KubeVirt hook sidecar that attaches the vfio-user devices a VMI
// requests (resources vfio-user.io/<class>, or a name given to a class with --resource-name)
// to its libvirt domain. See docs/kubevirt.md.
//
//   vfio-user-kubevirt-hook [--socket-dir /var/run/kubevirt-hooks] [--name vfio-user]
//                           [--resource-name CLASS=NAME ...]
//       serve the hook API on <socket-dir>/<name>.sock until virt-launcher calls Shutdown or
//       SIGTERM/SIGINT arrives (exit code 0 either way); exit code 2 for bad flags
//   vfio-user-kubevirt-hook --transform-domain DOMAIN.xml --vmi VMI.json
//       print the domain OnDefineDomain would return (offline, for troubleshooting)
//   vfio-user-kubevirt-hook --print-qemu-args DOMAIN.xml [--socket-root-on-host DIR]
//       print, one per line, the memory and device arguments QEMU gets for that domain
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "deviceplugin/kubevirt_hook/domain_transform.h"
#include "deviceplugin/kubevirt_hook/hook_server.h"
#include "deviceplugin/kubevirt_hook/qemu_args.h"
#include "server/common/log.h"
#include "server/common/unique_fd.h"
#include "server/version.h"

namespace {

using namespace vfu;
using namespace vfu::kubevirt_hook;

bool ReadFile(const std::string& path, std::string* text) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "error: cannot read %s\n", path.c_str());
    return false;
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  *text = buffer.str();
  return true;
}

int TransformDomain(const std::string& domain_path, const std::string& vmi_path,
                    const HookServerOptions& options) {
  std::string domain, vmi;
  if (!ReadFile(domain_path, &domain) || !ReadFile(vmi_path, &vmi)) return 2;
  auto result = OnDefineDomain(domain, vmi, options.device_socket_root, options.naming);
  if (!result) {
    std::fprintf(stderr, "error: %s\n", result.error().message.c_str());
    return 1;
  }
  std::fwrite(result->data(), 1, result->size(), stdout);
  return 0;
}

int PrintQemuArgs(const std::string& domain_path, const QemuArgsOptions& options) {
  std::string domain;
  if (!ReadFile(domain_path, &domain)) return 2;
  auto args = QemuArgsForDomain(domain, options);
  if (!args) {
    std::fprintf(stderr, "error: %s\n", args.error().message.c_str());
    return 1;
  }
  for (const std::string& arg : *args) std::printf("%s\n", arg.c_str());
  return 0;
}

int Serve(HookServerOptions options) {
  // Signals arrive on a signalfd next to the Shutdown eventfd: one poll loop, no handlers.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);
  UniqueFd signal_fd(::signalfd(-1, &mask, SFD_CLOEXEC));
  if (!signal_fd) {
    Log::Write(LogLevel::kError, "signalfd failed", {{"error", std::strerror(errno)}});
    return 1;
  }

  auto server = HookServer::Start(options);
  if (!server) {
    Log::Write(LogLevel::kError, "cannot start the hook server",
               {{"socket", options.socket_path}, {"error", server.error().message}});
    return 1;
  }
  Log::Write(LogLevel::kInfo, "vfio-user-kubevirt-hook ready",
             {{"version", kVersion},
              {"socket", options.socket_path},
              {"name", options.name},
              {"device_socket_root", options.device_socket_root},
              {"resource_prefix", options.naming.prefix()},
              {"resource_names", options.naming.DescribeOverrides()}});

  pollfd fds[2] = {{signal_fd.get(), POLLIN, 0}, {(*server)->shutdown_requested_fd(), POLLIN, 0}};
  while (::poll(fds, 2, -1) < 0 && errno == EINTR) {
  }
  if (fds[0].revents & POLLIN) {
    signalfd_siginfo info{};
    if (::read(signal_fd.get(), &info, sizeof(info)) == sizeof(info)) {
      Log::Write(LogLevel::kInfo, "shutting down",
                 {{"signal", strsignal(static_cast<int>(info.ssi_signo))}});
    }
  } else {
    Log::Write(LogLevel::kInfo, "shutting down", {{"reason", "Shutdown callback"}});
  }
  (*server)->Stop();
  Log::Write(LogLevel::kInfo, "stopped");
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app{
      "vfio-user-kubevirt-hook: KubeVirt hook sidecar (hooks API v1alpha3) that attaches the "
      "vfio-user devices a VMI requests (vfio-user.io/<class>, or --resource-name) to its "
      "libvirt domain"};
  std::string socket_dir(kDefaultHookSocketDir);
  HookServerOptions options;
  std::string transform_path, vmi_path, qemu_args_path;
  QemuArgsOptions qemu_options;
  std::string log_level = "info";
  std::string log_format = "text";
  bool show_version = false;
  std::string resource_prefix(deviceplugin::kDefaultResourcePrefix);
  std::vector<std::string> resource_name_flags;
  app.add_option("--socket-dir", socket_dir,
                 "directory virt-launcher scans for hook sockets; the socket is <dir>/<name>.sock")
      ->capture_default_str();
  app.add_option("--name", options.name, "hook name reported to virt-launcher (Info)")
      ->capture_default_str();
  app.add_option("--device-socket-root", options.device_socket_root,
                 "where the device plugin mounts device sockets in the compute container; the "
                 "i-th device of a class is <root>/<class>/<i>/vfio-user.sock")
      ->capture_default_str();
  app.add_option("--resource-prefix", resource_prefix,
                 "requests of <prefix>/<class> are devices of that class (as the device "
                 "plugin's --resource-prefix)")
      ->capture_default_str();
  // One CLASS=NAME per occurrence (no greedy vector parsing), repeatable.
  app.add_option("--resource-name", resource_name_flags,
                 "CLASS=NAME: requests of the extended resource NAME are devices of class CLASS "
                 "(as the device plugin's --resource-name, e.g. "
                 "virtio-blk=example.com/fast-disk); repeatable, once per class")
      ->type_name("CLASS=NAME")
      ->allow_extra_args(false);
  app.add_option("--transform-domain", transform_path,
                 "offline: print the domain XML OnDefineDomain returns for this domain (needs "
                 "--vmi)");
  app.add_option("--vmi", vmi_path, "VMI JSON for --transform-domain");
  app.add_option("--print-qemu-args", qemu_args_path,
                 "offline: print the memory and device QEMU arguments of this (transformed) "
                 "domain, one per line");
  app.add_option("--socket-root-on-host", qemu_options.socket_root_on_host,
                 "with --print-qemu-args: move device sockets from --device-socket-root here");
  app.add_option("--log-level", log_level, "debug, info, warn or error")->capture_default_str();
  app.add_option("--log-format", log_format, "text or json")->capture_default_str();
  app.add_flag("--version", show_version, "print the version and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help exits 0; every malformed command line exits 2, like the checks below.
    return app.exit(e) == 0 ? 0 : 2;
  }

  if (show_version) {
    std::printf("vfio-user-kubevirt-hook %s (hooks API %s)\n", kVersion,
                std::string(kHookApiVersion).c_str());
    return 0;
  }
  if (std::string error = Log::Configure(log_level, log_format); !error.empty()) {
    std::fprintf(stderr, "error: %s\n", error.c_str());
    return 2;
  }
  if (options.name.empty() || options.name.find('/') != std::string::npos) {
    std::fprintf(stderr, "error: --name must be a non-empty file name\n");
    return 2;
  }
  while (options.device_socket_root.size() > 1 && options.device_socket_root.back() == '/') {
    options.device_socket_root.pop_back();
  }
  qemu_options.socket_root = options.device_socket_root;
  auto overrides = deviceplugin::ParseResourceNameFlags(resource_name_flags);
  if (!overrides) {
    std::fprintf(stderr, "error: --resource-name: %s\n", overrides.error().message.c_str());
    return 2;
  }
  options.naming = deviceplugin::ResourceNaming(resource_prefix, std::move(*overrides));
  if (Status s = options.naming.Validate(); !s.ok()) {
    std::fprintf(stderr, "error: --resource-name/--resource-prefix: %s\n", s.message().c_str());
    return 2;
  }

  if (!transform_path.empty()) {
    if (vmi_path.empty()) {
      std::fprintf(stderr, "error: --transform-domain needs --vmi\n");
      return 2;
    }
    return TransformDomain(transform_path, vmi_path, options);
  }
  if (!qemu_args_path.empty()) return PrintQemuArgs(qemu_args_path, qemu_options);
  options.socket_path = socket_dir + "/" + options.name + ".sock";
  return Serve(std::move(options));
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
