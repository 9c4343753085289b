// vfio-user-device-plugin: advertises the devices of a vfio-user-server to the kubelet, one
// extended resource per device class (vfio-user.io/<class>, or the name --resource-name gives
// the class), and serves Prometheus metrics. See docs/device-plugin.md.
#include <signal.h>

#include <cstdio>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "deviceplugin/plugin/device_plugin_app.h"
#include "deviceplugin/plugin/resource_names.h"
#include "server/common/log.h"
#include "server/version.h"

namespace {

using vfu::Log;
using vfu::LogLevel;

int Main(int argc, char** argv) {
  vfu::deviceplugin::PluginConfig config;
  std::string log_level = "info";
  std::string log_format = "text";
  bool show_version = false;
  std::vector<std::string> resource_name_flags;

  CLI::App app{"vfio-user-device-plugin: kubelet device plugin for vfio-user devices"};
  app.add_option("--control-socket", config.control_socket, "vfio-user-server control API socket")
      ->capture_default_str();
  app.add_option("--kubelet-dir", config.kubelet_dir,
                 "kubelet device plugin directory (holds kubelet.sock)")
      ->capture_default_str();
  app.add_option("--pod-resources-socket", config.pod_resources_socket,
                 "kubelet pod-resources API socket")
      ->capture_default_str();
  app.add_option("--resource-prefix", config.resource_prefix,
                 "resource name prefix: resources are <prefix>/<device class>")
      ->capture_default_str();
  // One CLASS=NAME per occurrence (no greedy vector parsing), repeatable.
  app.add_option("--resource-name", resource_name_flags,
                 "CLASS=NAME: register device class CLASS as the extended resource NAME "
                 "(<domain>/<name>, e.g. virtio-blk=example.com/fast-disk) instead of "
                 "<prefix>/CLASS; repeatable, once per class")
      ->type_name("CLASS=NAME")
      ->allow_extra_args(false);
  app.add_option("--metrics-address", config.metrics_address,
                 "listen address of the Prometheus /metrics endpoint, [host]:port; empty "
                 "disables it")
      ->capture_default_str();
  app.add_flag("--pre-start-container", config.pre_start_container,
               "ask the kubelet to call PreStartContainer (checks each device's socket before "
               "the container starts)");
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
    std::cout << "vfio-user-device-plugin " << vfu::kVersion << "\n";
    return 0;
  }
  if (std::string error = Log::Configure(log_level, log_format); !error.empty()) {
    std::cerr << "error: " << error << "\n";
    return 2;
  }
  if (vfu::Status s = vfu::deviceplugin::ValidateResourcePrefix(config.resource_prefix); !s.ok()) {
    std::cerr << "--resource-prefix: " << s.message() << "\n";
    return 2;
  }
  vfu::Result<std::map<std::string, std::string>> overrides =
      vfu::deviceplugin::ParseResourceNameFlags(resource_name_flags);
  if (!overrides.ok()) {
    std::cerr << "--resource-name: " << overrides.error().message << "\n";
    return 2;
  }
  config.resource_names = std::move(*overrides);
  vfu::deviceplugin::ResourceNaming naming(config.resource_prefix, config.resource_names);
  if (vfu::Status s = naming.Validate(); !s.ok()) {
    std::cerr << "--resource-name: " << s.message() << "\n";
    return 2;
  }

  // Signals are taken by sigwait below; block them before any thread starts.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);

  vfu::deviceplugin::DevicePluginApp plugin(config);
  if (vfu::Status s = plugin.Start(); !s.ok()) {
    Log::Write(LogLevel::kError, "cannot start", {{"error", s.message()}});
    return 1;
  }
  Log::Write(LogLevel::kInfo, "vfio-user-device-plugin started",
             {{"version", vfu::kVersion},
              {"control_socket", config.control_socket},
              {"kubelet_dir", config.kubelet_dir},
              {"resource_prefix", config.resource_prefix},
              {"resource_names", naming.DescribeOverrides()}});
  int sig = 0;
  sigwait(&mask, &sig);
  Log::Write(LogLevel::kInfo, "stopping", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
  plugin.Stop();
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
