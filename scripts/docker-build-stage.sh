#!/usr/bin/env bash
# The build stage of the container image (Dockerfile, stage "build"), kept in a script so that
# scripts/check-packaging.sh runs exactly the same steps without a container engine.
#
#   docker-build-stage.sh deps
#       install the build dependencies (scripts/install-deps.sh: Debian bookworm packages)
#   docker-build-stage.sh build --build-dir DIR --dest DIR
#       configure (only if DIR has no CMake cache yet: default build type, no tests, no
#       benchmarks), build the five binaries, then `stage` them
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
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
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
    ./scripts/install-deps.sh
    ;;
  build)
    [[ -n "$build_dir" && -n "$dest" ]] || usage
    if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
      # The project's default build type (RelWithDebInfo, -O2), the one the tests run with;
      # staging strips the debug info. (-O3 "Release" trips GCC 12 false -Warray-bounds.)
      cmake -S . -B "$build_dir" -G Ninja -DVFU_WERROR=ON \
        -DVFU_BUILD_TESTS=OFF -DVFU_BUILD_BENCHMARKS=OFF
    fi
    targets=()
    for rel in "${BINARIES[@]}"; do targets+=("$(basename "$rel")"); done
    ninja -C "$build_dir" -j "${JOBS:-$(nproc)}" "${targets[@]}"
    stage
    ;;
  stage)
    stage
    ;;
  *)
    usage
    ;;
esac
