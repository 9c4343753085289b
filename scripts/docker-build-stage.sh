#!/usr/bin/env bash
# The build stage of the container image (Dockerfile, stage "build"), kept in a script so that
# the steps are readable and runnable outside a container too.
#
#   docker-build-stage.sh deps
#       install the build dependencies (scripts/install-deps.sh --build-only: Debian bookworm
#       packages, no test tooling)
#   docker-build-stage.sh build --build-dir DIR --dest DIR
#       configure (only if DIR has no CMake cache yet: default build type, no tests, no
#       benchmarks), build the five binaries, then `stage` them. With a writable compiler cache
#       directory at $VFU_CCACHE_DIR (default /ccache: scripts/build-image.sh mounts the host's
#       there) the compiler runs through ccache, with paths hashed relative to the checkout as
#       scripts/build.sh does, so objects are shared with host builds; without one (plain
#       `docker build`) it compiles from scratch.
#   docker-build-stage.sh stage --build-dir DIR --dest DIR [--allow-missing]
#       copy the built binaries (stripped) and the health check script to DEST/usr/local/bin;
#       --allow-missing skips binaries the build dir lacks (a partial developer build) and
#       names them instead of failing
#
# The binaries, by CMake target, and where CMake puts them inside the build dir.
set -euo pipefail
cd "$(dirname "$0")/.."

BINARIES=(
  server/vfio-user-server
  server/vfio-user-ctl
  deviceplugin/plugin/vfio-user-device-plugin
  deviceplugin/kubevirt_hook/vfio-user-kubevirt-hook
  operator/vfio-user-operator
)

usage() {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

step=${1:-}
[[ -n "$step" ]] || usage
shift
build_dir=""
dest=""
allow_missing=0
while (($#)); do
  case "$1" in
    --build-dir) build_dir=$2; shift ;;
    --dest) dest=$2; shift ;;
    --allow-missing) allow_missing=1 ;;
    -h | --help) usage ;;
    *) echo "docker-build-stage: unknown argument $1" >&2; usage ;;
  esac
  shift
done

stage() {
  [[ -n "$build_dir" && -n "$dest" ]] || usage
  install -d -m 0755 "$dest/usr/local/bin"
  local rel name missing=()
  for rel in "${BINARIES[@]}"; do
    name=$(basename "$rel")
    if [[ ! -x "$build_dir/$rel" ]]; then
      missing+=("$name")
      continue
    fi
    # Stripped: the image ships no debug info (build the same commit for symbols).
    install -m 0755 -s "$build_dir/$rel" "$dest/usr/local/bin/$name"
  done
  install -m 0755 scripts/packaging/vfio-user-healthcheck "$dest/usr/local/bin/vfio-user-healthcheck"
  if ((${#missing[@]})); then
    if ((allow_missing)); then
      echo "docker-build-stage: not built in $build_dir (skipped): ${missing[*]}" >&2
    else
      echo "docker-build-stage: missing in $build_dir: ${missing[*]}" >&2
      exit 1
    fi
  fi
}

case "$step" in
  deps)
    ./scripts/install-deps.sh --build-only
    ;;
  build)
    [[ -n "$build_dir" && -n "$dest" ]] || usage
    launcher=()
    ccache_dir=${VFU_CCACHE_DIR:-/ccache}
    if [[ -d "$ccache_dir" && -w "$ccache_dir" ]] && command -v ccache >/dev/null; then
      export CCACHE_DIR=$ccache_dir CCACHE_BASEDIR=$PWD CCACHE_NOHASHDIR=1
      launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
      stats_before=$(ccache --print-stats 2>/dev/null || true)
      echo "docker-build-stage: compiling through ccache ($ccache_dir)"
    fi
    if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
      # The project's default build type (RelWithDebInfo, -O2), the one the tests run with;
      # staging strips the debug info. (-O3 "Release" trips GCC 12 false -Warray-bounds.)
      cmake -S . -B "$build_dir" -G Ninja -DVFU_WERROR=ON \
        -DVFU_BUILD_TESTS=OFF -DVFU_BUILD_BENCHMARKS=OFF "${launcher[@]}"
    fi
    targets=()
    for rel in "${BINARIES[@]}"; do targets+=("$(basename "$rel")"); done
    ninja -C "$build_dir" -j "${JOBS:-$(nproc)}" "${targets[@]}"
    if ((${#launcher[@]})); then
      # Hits and misses of this build (the cache's counters are shared with other builds).
      stats_after=$(ccache --print-stats 2>/dev/null || true)
      count() { awk -v k="$1" '$1 == k {n = $2} END {print n + 0}' <<<"$2"; }
      hits=$(($(count direct_cache_hit "$stats_after") + $(count preprocessed_cache_hit "$stats_after") -
        $(count direct_cache_hit "$stats_before") - $(count preprocessed_cache_hit "$stats_before")))
      misses=$(($(count cache_miss "$stats_after") - $(count cache_miss "$stats_before")))
      echo "docker-build-stage: ccache: $hits hits, $misses misses"
    fi
    stage
    ;;
  stage)
    stage
    ;;
  *)
    usage
    ;;
esac
