#!/usr/bin/env bash
# Checks the packaging with the real tools (scripts/packaging/install-tools.sh installs them):
#   1. manifests: `kubectl kustomize deploy/`, `helm lint --strict` and `helm template` of the
#      chart (defaults and every values file under helm/vfio-user/ci/), every rendered object
#      against the upstream Kubernetes schemas (strict: unknown fields fail), the CRD's examples
#      against its own schema, `promtool check rules` on the alerts; then the project's own
#      assertions on that output (DaemonSet settings, least-privilege RBAC, chart vs deploy/
#      parity, standalone DaemonSet vs the operator's, alerts and dashboards on documented
#      metrics, the Dockerfile's shape);
#   2. docs: the binaries' flags (--help) against the docs, and a scrape of the device plugin
#      (with a real server) and the operator against docs/metrics.md; the image health check;
#   3. image: the Dockerfile built with buildah (scripts/build-image.sh) and the built image
#      checked (scripts/packaging/check-image.sh): every binary runs as user 65532, no library
#      missing, the runtime package list exact, labels and user, deploy/'s server.yaml accepted.
#
#   scripts/check-packaging.sh [--build-dir DIR] [--allow-missing] [--skip-image] [--only STEP]
#
# --build-dir: where the binaries are (default build/, as scripts/build.sh release makes it).
# --allow-missing: a partial build (e.g. without operator/) skips the missing binaries' checks
# instead of failing. --skip-image: no image build. --only manifests|docs|image: one step.
# Run as root (buildah, debootstrap). First run: see docs/image.md; warm runs about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=build
allow_missing=""
image=1
only=""
while (($#)); do
  case "$1" in
    --build-dir) build_dir=$2; shift ;;
    --allow-missing) allow_missing=--allow-missing ;;
    --skip-image) image=0 ;;
    --only) only=$2; shift ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "check-packaging: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
case "$only" in "" | manifests | docs | image) ;; *) echo "check-packaging: --only $only?" >&2; exit 2 ;; esac
wanted() { [[ -z "$only" || "$only" == "$1" ]]; }

# Debian's python3 with Debian's modules (python3-yaml, python3-jsonschema), whatever else is
# first on PATH.
python=/usr/bin/python3
if ! "$python" -c 'import yaml, jsonschema' 2>/dev/null; then
  echo "check-packaging: missing python3-yaml or python3-jsonschema: run scripts/install-deps.sh" >&2
  exit 1
fi

failed=()
step() { printf '\n--- %s ---\n' "$*"; }

step "tools (Helm, kubectl/kustomize, Kubernetes schemas, promtool)"
tools_env=$(scripts/packaging/install-tools.sh --print-env)
eval "$tools_env"
export HELM KUBECTL PROMTOOL NODE_MODULES
echo "helm $("$HELM" version --template '{{.Version}}'), $("$KUBECTL" version --client | head -n 2 | tr '\n' ' ')"

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
for script in scripts/docker-build-stage.sh scripts/docker-runtime-stage.sh scripts/build-image.sh \
  scripts/packaging/check-image.sh scripts/packaging/vfio-user-healthcheck; do
  bash -n "$script" || failed+=("bash -n $script")
done

if wanted manifests; then
  step "manifests, chart, schemas, alerts, dashboards, Dockerfile"
  server_arg=()
  [[ -x "$build_dir/server/vfio-user-server" ]] && server_arg=(--server "$build_dir/server/vfio-user-server")
  # The files, not the folder: Node.js 21+ reads a folder argument as a glob of itself.
  tests_log=$(mktemp)
  if node --test tests/packaging/*.test.mjs >"$tests_log" 2>&1; then
    echo "  ok: validate-k8s self-tests ($(grep -c '^ok ' "$tests_log") passed)"
  else
    cat "$tests_log"
    failed+=("validate-k8s tests")
  fi
  rm -f "$tests_log"
  "$python" scripts/packaging/check_manifests.py "${server_arg[@]}" || failed+=("manifests")
fi

if wanted docs; then
  step "docs against the binaries (flags, metrics scrape, health check)"
  "$python" scripts/packaging/check_docs.py --build-dir "$build_dir" || failed+=("docs")
fi

if ((image)) && wanted image; then
  step "container image: buildah build of the Dockerfile, then checks of the built image"
  config=$(mktemp --suffix=.yaml)
  trap 'rm -f "$config"' EXIT
  # deploy/'s standalone node configuration, as kubectl kustomize renders its ConfigMap.
  "$KUBECTL" kustomize deploy | "$python" -c '
import sys, yaml
cm = [d for d in yaml.safe_load_all(sys.stdin) if d and d["kind"] == "ConfigMap"
      and d["metadata"]["name"] == "vfio-user-node-config"]
sys.stdout.write(cm[0]["data"]["server.yaml"])' >"$config"
  tag=localhost/vfio-user-stack:check
  if scripts/build-image.sh --tag "$tag"; then
    scripts/packaging/check-image.sh --image "$tag" --server-config "$config" || failed+=("image")
  else
    failed+=("image build")
  fi
fi

if ((${#failed[@]})); then
  printf '\ncheck-packaging: FAILED: %s\n' "${failed[*]}"
  exit 1
fi
printf '\ncheck-packaging: all packaging checks passed\n'
