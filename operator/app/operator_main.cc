// vfio-user-operator: reconciles VfioUserDevicePool resources into node DaemonSets and server
// configurations. Flags: --kubeconfig, --namespace, --leader-elect, --metrics-address,
// --health-address, --image; SIGTERM/SIGINT stop it gracefully (the Lease is released).
#include <prometheus/exposer.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <memory>

#include "operator/app/controller.h"
#include "operator/app/metrics.h"
#include "operator/kube/cpprest_transport.h"
#include "operator/kube/leader_election.h"
#include "operator/net/http_server.h"
#include "server/common/log.h"
#include "server/version.h"

namespace {

std::string ListenAddress(std::string address) {
  if (!address.empty() && address[0] == ':') address = "0.0.0.0" + address;
  return address;
}

std::string Hostname() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "vfio-user-operator";
  return name;
}

int Main(int argc, char** argv) {
  using namespace vfu;
  using namespace vfu::op;

  CLI::App app{"vfio-user-operator: VfioUserDevicePool -> node DaemonSets and server configs"};
  std::string kubeconfig;
  std::string ns;
  bool leader_elect = false;
  std::string lease_name = "vfio-user-operator-leader";
  std::string identity = Hostname();
  std::string metrics_address = ":8080";
  std::string health_address = ":8081";
  std::string image = "ghcr.io/vfio-user/vfio-user-stack:" + std::string(kVersion);
  std::string log_level = "info";
  std::string log_format = "json";
  int workers = 2;
  app.set_version_flag("--version", std::string("vfio-user-operator ") + kVersion);
  app.add_option("--kubeconfig", kubeconfig,
                 "kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)");
  app.add_option("--namespace", ns,
                 "namespace of the node DaemonSets and ConfigMaps (default: the pod's namespace, "
                 "or the kubeconfig context's)");
  app.add_flag("--leader-elect", leader_elect, "elect a leader with a coordination.k8s.io Lease");
  app.add_option("--leader-election-id", lease_name, "name of the Lease")->capture_default_str();
  app.add_option("--identity", identity, "this instance's Lease holder identity")
      ->capture_default_str();
  app.add_option("--metrics-address", metrics_address, "Prometheus /metrics listen address")
      ->capture_default_str();
  app.add_option("--health-address", health_address, "/healthz and /readyz listen address")
      ->capture_default_str();
  app.add_option("--image", image, "default image of the node DaemonSets")->capture_default_str();
  app.add_option("--workers", workers, "concurrent reconciles")
      ->capture_default_str()
      ->check(CLI::Range(1, 16));
  app.add_option("--log-level", log_level, "debug, info, warn or error")->capture_default_str();
  app.add_option("--log-format", log_format, "text or json")
      ->capture_default_str()
      ->check(CLI::IsMember({"text", "json"}));
  CLI11_PARSE(app, argc, argv);

  if (std::string error = Log::Configure(log_level, log_format); !error.empty()) {
    std::fprintf(stderr, "error: %s\n", error.c_str());
    return 2;
  }

  // Signals are taken by sigtimedwait() below, so every thread must block them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto config = LoadClusterConfig(kubeconfig);
  if (!config) {
    Log::Write(LogLevel::kError, "no cluster configuration", {{"error", config.error().message}});
    return 1;
  }
  if (ns.empty()) ns = config->namespace_name;
  KubeClient client(std::shared_ptr<HttpTransport>(MakeCppRestTransport(*config)));
  OperatorMetrics metrics;

  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer = std::make_unique<prometheus::Exposer>(ListenAddress(metrics_address));
    exposer->RegisterCollectable(metrics.registry());
  } catch (const std::exception& e) {
    Log::Write(LogLevel::kError, "cannot serve metrics",
               {{"address", metrics_address}, {"error", e.what()}});
    return 1;
  }

  ControllerOptions options;
  options.reconciler.ns = ns;
  options.reconciler.default_image = image;
  options.workers = workers;
  Controller controller(client, options, &metrics);
  std::atomic<bool> leading{!leader_elect};
  std::atomic<bool> lost_leadership{false};

  auto health = HttpServer::Start(
      ListenAddress(health_address),
      [&](const HttpServerRequest& request, HttpResponseWriter& writer) {
        if (request.path == "/healthz") {
          bool healthy = !lost_leadership.load();
          writer.Send(healthy ? 200 : 500, "text/plain", healthy ? "ok\n" : "lost leadership\n");
        } else if (request.path == "/readyz") {
          // A standby is ready (it is healthy and waiting); a leader once its caches are filled.
          bool ready = !leading.load() || controller.Synced();
          writer.Send(ready ? 200 : 503, "text/plain", ready ? "ok\n" : "caches not synced\n");
        } else {
          writer.Send(404, "text/plain", "not found\n");
        }
      });
  if (!health) {
    Log::Write(LogLevel::kError, "cannot serve health probes", {{"error", health.error().message}});
    return 1;
  }

  std::unique_ptr<LeaderElector> elector;
  if (leader_elect) {
    LeaderElectionOptions election;
    election.ns = ns;
    election.name = lease_name;
    election.identity = identity;
    elector = std::make_unique<LeaderElector>(client, election,
                                              LeaderCallbacks{[&] {
                                                                leading.store(true);
                                                                metrics.SetLeader(true);
                                                                controller.Start();
                                                              },
                                                              [&] {
                                                                metrics.SetLeader(false);
                                                                if (leading.exchange(false))
                                                                  lost_leadership.store(true);
                                                              }});
    elector->Start();
  } else {
    metrics.SetLeader(true);
    controller.Start();
  }
  Log::Write(LogLevel::kInfo, "vfio-user-operator started",
             {{"version", kVersion},
              {"server", config->server},
              {"namespace", ns},
              {"leaderElect", leader_elect ? "true" : "false"}});

  int exit_code = 0;
  timespec tick{0, 500 * 1000 * 1000};
  for (;;) {
    int sig = sigtimedwait(&signals, nullptr, &tick);
    if (sig == SIGTERM || sig == SIGINT) {
      Log::Write(LogLevel::kInfo, "stopping", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
      break;
    }
    if (lost_leadership.load()) {
      // Another instance may already lead: stop at once rather than reconcile beside it.
      Log::Write(LogLevel::kError, "lost leadership, exiting");
      exit_code = 1;
      break;
    }
  }
  controller.Stop();
  if (elector) elector->Stop(/*release=*/exit_code == 0);
  (*health)->Stop();
  return exit_code;
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
