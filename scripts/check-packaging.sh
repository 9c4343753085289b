#!/usr/bin/env bash
# Checks the packaging without a container engine, kubectl or helm:
#   1. manifests: deploy/ renders (kustomize subset; cross-checked with `kubectl kustomize` when
#      installed), its key settings (DaemonSet priority class, maxSurge 0, hostPaths, images,
#      least-privilege RBAC, Services/ServiceMonitors that select something), the standalone
#      DaemonSet against the operator's pool DaemonSet, the Helm chart (values against the
#      strict schema, every template rendered under every ci/ values file, the same objects and
#      settings as deploy/), the alerts and dashboards against docs/metrics.md, the Dockerfile;
#   2. docs: the binaries' flags (--help) against the docs, and a scrape of the device plugin
#      (with a real server) and the operator against docs/metrics.md; the image health check;
#   3. runtime image: the Dockerfile's runtime stage script in a debootstrapped bookworm minbase
#      root (cached in .cache/packaging/), the package list against the binaries' libraries,
#      and every binary run there (--help, --version) as the image's user.
#
#   scripts/check-packaging.sh [--build-dir DIR] [--allow-missing] [--skip-runtime-root]
#
# --build-dir: where the binaries are (default build/, as scripts/build.sh release makes it).
# --allow-missing: a partial build (e.g. without operator/) skips the missing binaries' checks
# instead of failing. --skip-runtime-root: no debootstrap (offline machines).
# Run as root (debootstrap, chroot). First run about 2 minutes, cached runs about 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=build
allow_missing=""
runtime_root=1
while (($#)); do
  case "$1" in
    --build-dir) build_dir=$2; shift ;;
    --allow-missing) allow_missing=--allow-missing ;;
    --skip-runtime-root) runtime_root=0 ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "check-packaging: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

# Debian's python3 with Debian's modules (python3-yaml, python3-jsonschema), whatever else is
# first on PATH.
python=/usr/bin/python3
have_debootstrap=0
{ command -v debootstrap || [[ -x /usr/sbin/debootstrap ]]; } >/dev/null && have_debootstrap=1
if ! "$python" -c 'import yaml, jsonschema' 2>/dev/null || ((!have_debootstrap)); then
  echo "check-packaging: missing python3-yaml, python3-jsonschema or debootstrap:" \
    "run scripts/install-deps.sh" >&2
  exit 1
fi

failed=()
step() { printf '\n--- %s ---\n' "$*"; }

step "build-stage output ($build_dir)"
missing=0
for bin in server/vfio-user-server server/vfio-user-ctl deviceplugin/plugin/vfio-user-device-plugin \
  deviceplugin/kubevirt_hook/vfio-user-kubevirt-hook operator/vfio-user-operator; do
  if [[ ! -x "$build_dir/$bin" ]]; then
    echo "  $([[ -n "$allow_missing" ]] && echo note || echo FAIL): $build_dir/$bin is not built"
    missing=1
  fi
done
if ((missing)) && [[ -z "$allow_missing" ]]; then failed+=("binaries missing in $build_dir"); fi
for script in scripts/docker-build-stage.sh scripts/docker-runtime-stage.sh \
  scripts/packaging/check-runtime-root.sh scripts/packaging/vfio-user-healthcheck; do
  bash -n "$script" || failed+=("bash -n $script")
done

step "renderer self-tests (kustomize and Helm subsets)"
"$python" scripts/packaging/test_manifests.py 2>&1 | tail -n 3 || failed+=("renderer tests")

step "manifests, chart, alerts, dashboards, Dockerfile"
server_arg=()
[[ -x "$build_dir/server/vfio-user-server" ]] && server_arg=(--server "$build_dir/server/vfio-user-server")
"$python" scripts/packaging/check_manifests.py "${server_arg[@]}" || failed+=("manifests")

step "docs against the binaries (flags, metrics scrape, health check)"
"$python" scripts/packaging/check_docs.py --build-dir "$build_dir" || failed+=("docs")

if ((runtime_root)); then
  step "runtime image stage in a bookworm minbase root"
  scripts/packaging/check-runtime-root.sh "$build_dir" ${allow_missing:+"$allow_missing"} || failed+=("runtime root")
fi

if ((${#failed[@]})); then
  printf '\ncheck-packaging: FAILED: %s\n' "${failed[*]}"
  exit 1
fi
printf '\ncheck-packaging: all packaging checks passed\n'
