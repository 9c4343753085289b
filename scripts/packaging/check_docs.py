#!/usr/bin/python3
"""Checks the docs against the binaries of a build dir:

- flags: every flag a binary's --help lists (subcommands too) is mentioned in docs/ or
  README.md; every --flag written after a binary's name on a command line in the docs
  (code blocks, inline code, `\\` continuations) is one the binary (or that subcommand) has;
  in a component's own reference doc, every --flag in the first cell of a table row is one of
  that component's flags;
- metrics: vfio-user-server + vfio-user-device-plugin (and vfio-user-operator, pointed at an
  unreachable API server) are started on loopback and scraped; every family they serve is
  documented in docs/metrics.md (or docs/operator.md), and every documented name is served or
  at least registered in the source (families that appear only after an event, e.g. the first
  Allocate, are listed as such).

  check_docs.py --build-dir DIR [--repo DIR]

Binaries missing from the build dir are reported and skipped (a partial developer build);
scripts/check-packaging.sh fails on them unless --allow-missing.
"""

import argparse
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import k8s_tools
from check_manifests import documented_metrics
from report import Report

BINARIES = {
    "vfio-user-server": "server/vfio-user-server",
    "vfio-user-ctl": "server/vfio-user-ctl",
    "vfio-user-device-plugin": "deviceplugin/plugin/vfio-user-device-plugin",
    "vfio-user-kubevirt-hook": "deviceplugin/kubevirt_hook/vfio-user-kubevirt-hook",
    "vfio-user-operator": "operator/vfio-user-operator",
}
# The reference doc of each component: its tables' first-column flags must be its flags.
OWNER_DOCS = {
    "docs/device-plugin.md": "vfio-user-device-plugin",
    "docs/kubevirt.md": "vfio-user-kubevirt-hook",
    "docs/operator.md": "vfio-user-operator",
}
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
OPTION_LINE = re.compile(r"^\s+(?:(-\w),)?(--[a-z][a-z0-9-]*)")
SHORT_FORMS = {}  # --output -> -o, from the help texts
STOP = re.compile(r"\s(\||;|&&|>|2>|#)\s")


def help_flags(binary):
    """{subcommand or '': set of flags} from --help output (CLI11 layout)."""
    def parse(args):
        out = subprocess.run([binary] + args + ["--help"], capture_output=True, text=True,
                             timeout=20)
        text = out.stdout
        flags = set()
        for line in text.splitlines():
            m = OPTION_LINE.match(line)
            if m:
                flags.add(m.group(2))
                if m.group(1):
                    SHORT_FORMS[m.group(2)] = m.group(1)
        subs = []
        if "Subcommands:" in text:
            for line in text.split("Subcommands:", 1)[1].splitlines():
                m = re.match(r"^\s+([a-z][a-z0-9-]*)\s", line)
                if m:
                    subs.append(m.group(1))
        return flags, subs
    top, subs = parse([])
    result = {"": top}
    for s in subs:
        result[s] = parse([s])[0] | top
    return result


def doc_files(repo):
    files = sorted(glob.glob(os.path.join(repo, "docs/*.md")))
    readme = os.path.join(repo, "README.md")
    return files + ([readme] if os.path.isfile(readme) else [])


def command_lines(text):
    """Lines of the doc with `\\` continuations joined, keeping the first line number; code
    block lines also absorb the indented continuation lines that follow them."""
    out = []
    lines = text.splitlines()
    i = 0
    in_code = False
    while i < len(lines):
        line = lines[i]
        start = i + 1
        if line.strip().startswith("```"):
            in_code = not in_code
            i += 1
            continue
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        if in_code:
            while (i + 1 < len(lines) and lines[i + 1].startswith((" ", "\t")) and
                   lines[i + 1].strip().startswith("[")):
                i += 1
                line += " " + lines[i].strip()
        out.append((start, line))
        i += 1
    return out


def check_flags(r, repo, flags_by_binary):
    r.section("flags: docs vs --help")
    docs = {os.path.relpath(f, repo): open(f, encoding="utf-8").read() for f in doc_files(repo)}
    all_text = "\n".join(docs.values())
    for name, by_sub in sorted(flags_by_binary.items()):
        for sub, flags in sorted(by_sub.items()):
            undocumented = sorted(
                f for f in flags if f != "--help" and
                not any(re.search(r"(?<![\w-])" + re.escape(form) + r"(?![\w-])", all_text)
                        for form in (f, SHORT_FORMS.get(f, f))))
            where = f"{name}{' ' + sub if sub else ''}"
            r.check(not undocumented, f"{where}: all {len(flags)} flags of --help are in the docs",
                    f"undocumented: {undocumented}")

    stale = []
    for rel, text in docs.items():
        for lineno, line in command_lines(text):
            for name, by_sub in flags_by_binary.items():
                for m in re.finditer(re.escape(name) + r"(?![\w-])", line):
                    rest = line[m.end():]
                    rest = rest.split("`", 1)[0] if line[:m.start()].count("`") % 2 else rest
                    rest = STOP.split(rest, 1)[0]
                    words = rest.split()
                    sub = words[0] if words and words[0] in by_sub else ""
                    allowed = by_sub[sub]
                    for flag in FLAG.findall(rest):
                        if flag not in allowed:
                            who = f"{name} {sub}" if sub else name
                            stale.append(f"{rel}:{lineno}: {who} has no {flag}")
        owner = OWNER_DOCS.get(rel)
        if owner in flags_by_binary:
            owned = set().union(*flags_by_binary[owner].values())
            for lineno, line in enumerate(text.splitlines(), 1):
                if line.startswith("|"):
                    first = line.split("|")[1]
                    for flag in FLAG.findall(first):
                        if flag not in owned:
                            stale.append(f"{rel}:{lineno}: table lists {flag}, "
                                         f"{owner} has no such flag")
    r.check(not stale, "every --flag the docs give a binary exists in its --help", "; ".join(stale))


def check_manifest_flags(r, repo, flags_by_binary):
    """The flags deploy/ and the chart's test Jobs pass to the binaries exist."""
    try:
        objects = k8s_tools.kustomize(os.path.join(repo, "deploy"))[1]
        objects += k8s_tools.helm_template(os.path.join(repo, "helm/vfio-user"))[1]
    except k8s_tools.ToolError as e:
        r.fail(f"deploy/ and the chart do not render: {e}")
        return
    bad, seen = [], 0
    for o in objects:
        spec = o.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            argv = list(c.get("command", [])) + list(c.get("args", []))
            if not argv or argv[0] not in flags_by_binary:
                continue
            allowed = set().union(*flags_by_binary[argv[0]].values())
            for word in argv[1:]:
                if word.startswith("--"):
                    seen += 1
                    if word.split("=", 1)[0] not in allowed:
                        bad.append(f"{o['kind']} {o['metadata']['name']} container {c['name']}: "
                                   f"{argv[0]} has no {word.split('=', 1)[0]}")
    r.check(not bad, f"the {seen} flags deploy/ and the chart pass to the binaries exist",
            "; ".join(bad))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url, deadline, want=None):
    """The families (# TYPE lines) at url, once `want` (a family name) is present."""
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                last = resp.read().decode()
            families = set(re.findall(r"^# TYPE (\S+) ", last, re.M))
            if want is None or re.search(rf"^{want} 1\b", last, re.M):
                return families, last
        except OSError:
            pass
        time.sleep(0.2)
    return None, last


class Process:
    """A child process that is always stopped (SIGTERM, then SIGKILL) and reaped."""
    def __init__(self, args, log):
        self.log = open(log, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def healthcheck(r, repo, binaries, component, pid, expect_healthy, env=None):
    """The image's HEALTHCHECK script against a running component (flags from its cmdline)."""
    ctl_dir = os.path.dirname(binaries.get("vfio-user-ctl", "/nonexistent/x"))
    run_env = dict(os.environ, PATH=f"{ctl_dir}:{os.environ['PATH']}", **(env or {}))
    p = subprocess.run([os.path.join(repo, "scripts/packaging/vfio-user-healthcheck"),
                        "--pid", str(pid)], capture_output=True, text=True, env=run_env,
                       timeout=30)
    state = "healthy" if expect_healthy else "unhealthy"
    r.check((p.returncode == 0) == expect_healthy,
            f"vfio-user-healthcheck reports {component} {state}"
            f"{' (wrong control socket)' if not expect_healthy else ''}",
            f"exit {p.returncode}: {(p.stdout + p.stderr).strip()[:200]}")


def registered_in_source(repo, name):
    for f in glob.glob(os.path.join(repo, "deviceplugin/**/*.cc"), recursive=True) + \
            glob.glob(os.path.join(repo, "operator/**/*.cc"), recursive=True):
        if f'"{name}"' in open(f, encoding="utf-8").read():
            return True
    return False


def check_metrics(r, repo, binaries, tmp):
    r.section("metrics: docs vs a scrape")
    documented = documented_metrics(repo)
    if not r.check(bool(documented), "docs/metrics.md names metrics"):
        return
    metrics_doc = open(os.path.join(repo, "docs/metrics.md"), encoding="utf-8").read()
    served = set()
    expected_prefixes = []
    server, plugin, op = (binaries.get(n) for n in
                          ("vfio-user-server", "vfio-user-device-plugin", "vfio-user-operator"))
    if server and plugin:
        root = os.path.join(tmp, "sockets")
        os.makedirs(os.path.join(tmp, "kubelet"))
        config = os.path.join(tmp, "server.yaml")
        with open(config, "w") as f:
            f.write(f"""apiVersion: vfio-user.io/v1alpha1
kind: ServerConfig
settings:
  socketRoot: {root}
  controlSocket: {root}/control.sock
  socketOwner: {{uid: {os.getuid()}, gid: {os.getgid()}, mode: "0660"}}
devices:
  - id: blk0
    class: virtio-blk
    backend: {{type: ram, size: 16Mi}}
  - id: probe
    class: sample
""")
        port = free_port()
        with Process([server, "--config", config], os.path.join(tmp, "server.log")) as srv, \
             Process([plugin, "--control-socket", f"{root}/control.sock",
                      "--kubelet-dir", os.path.join(tmp, "kubelet"),
                      "--pod-resources-socket", os.path.join(tmp, "no-kubelet.sock"),
                      "--metrics-address", f"127.0.0.1:{port}"],
                     os.path.join(tmp, "plugin.log")) as plg:
            families, body = scrape(f"http://127.0.0.1:{port}/metrics", time.monotonic() + 20,
                                    want="vfio_user_server_stats_up")
            if families is not None:
                healthcheck(r, repo, binaries, "vfio-user-server", srv.proc.pid, True,
                            {"VFIO_USER_CONTROL_SOCKET": f"{root}/control.sock"})
                healthcheck(r, repo, binaries, "vfio-user-device-plugin", plg.proc.pid, True)
                healthcheck(r, repo, binaries, "vfio-user-server", srv.proc.pid, False,
                            {"VFIO_USER_CONTROL_SOCKET": f"{root}/nothing.sock"})
        if r.check(families is not None,
                   "device plugin (with a real server, no kubelet) serves /metrics with the "
                   "server's statistics", f"last scrape: {body[:200]!r}; logs in {tmp}"):
            served |= families
            expected_prefixes.append("vfio_user_")
    else:
        r.note("vfio-user-server or vfio-user-device-plugin not built: plugin scrape skipped")
    if op:
        kubeconfig = os.path.join(tmp, "kubeconfig")
        with open(kubeconfig, "w") as f:
            # An API server that refuses connections: the operator starts, serves metrics
            # and health, and retries the API.
            f.write("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: vfio-user}}]
current-context: x
""")
        mport, hport = free_port(), free_port()
        with Process([op, "--kubeconfig", kubeconfig, "--metrics-address", f"127.0.0.1:{mport}",
                      "--health-address", f"127.0.0.1:{hport}"],
                     os.path.join(tmp, "operator.log")) as opp:
            families, body = scrape(f"http://127.0.0.1:{mport}/metrics", time.monotonic() + 20)
            if families is not None:
                healthcheck(r, repo, binaries, "vfio-user-operator", opp.proc.pid, True)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{hport}/healthz", timeout=2) as h:
                    healthz = h.status
            except OSError as e:
                healthz = str(e)
        if r.check(families is not None, "operator serves /metrics",
                   f"logs in {tmp}/operator.log"):
            served |= families
            expected_prefixes.append("vfio_user_operator_")
        r.check(healthz == 200, "operator answers /healthz on --health-address", str(healthz))
    else:
        r.note("vfio-user-operator not built: operator scrape skipped")

    ours = {f for f in served if f.startswith("vfio_user_")}
    undocumented = sorted(f for f in ours if f not in documented)
    r.check(not undocumented, f"all {len(ours)} vfio_user_* families served are documented",
            f"undocumented: {undocumented}")
    foreign = sorted(f for f in served - ours if f.split("_")[0] + "_" not in metrics_doc)
    r.check(not foreign, "other families served (prometheus-cpp's exposer_*) are mentioned in "
            "docs/metrics.md", f"not mentioned: {foreign}")
    for prefix in expected_prefixes:
        not_served = sorted(n for n in documented if n.startswith(prefix) and n not in served and
                            not (prefix == "vfio_user_" and n.startswith("vfio_user_operator_")))
        unknown = [n for n in not_served if not registered_in_source(repo, n)]
        r.check(not unknown, f"every documented {prefix}* name exists in the source",
                f"documented but neither served nor in the source: {unknown}")
        event_only = [n for n in not_served if n not in unknown]
        if event_only:
            r.note(f"documented, registered, not in this scrape (they appear after the first "
                   f"event): {', '.join(event_only)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=os.path.join(os.path.dirname(__file__), "../.."))
    parser.add_argument("--build-dir", required=True)
    args = parser.parse_args()
    repo = os.path.abspath(args.repo)
    r = Report("check-docs")
    binaries = {}
    for name, rel in BINARIES.items():
        path = os.path.join(args.build_dir, rel)
        if os.access(path, os.X_OK):
            binaries[name] = os.path.abspath(path)
        else:
            r.note(f"{name} is not built in {args.build_dir}: its checks are skipped")
    flags = {}
    for name, path in binaries.items():
        try:
            flags[name] = help_flags(path)
        except (OSError, subprocess.SubprocessError) as e:
            r.fail(f"{name} --help does not run: {e}")
    check_flags(r, repo, flags)
    check_manifest_flags(r, repo, flags)
    tmp = tempfile.mkdtemp(prefix="vfu-check-docs-")
    failed_before = r.failed
    try:
        check_metrics(r, repo, binaries, tmp)
    finally:
        if r.failed == failed_before:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            r.note(f"process logs kept in {tmp}")
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
