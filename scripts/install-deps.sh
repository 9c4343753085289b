#!/usr/bin/env bash
# Installs the project's dependencies from Debian bookworm packages: the one list of them.
#
#   install-deps.sh               build and test dependencies (a development machine, CI)
#   install-deps.sh --build-only  only what building the five binaries needs (the container
#                                 image's build stage, scripts/docker-build-stage.sh deps)
#
# Idempotent: packages already present are left alone, and apt is only asked when one is missing.
set -euo pipefail

# Building the binaries (no tests, no benchmarks, gcc).
build_packages=(
  build-essential cmake ninja-build pkg-config ccache
  nlohmann-json3-dev libcli11-dev liburing-dev libyaml-cpp-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libcpprest-dev prometheus-cpp-dev libpugixml-dev libssl-dev zlib1g-dev
)
# Tests, fuzzing, lint, end-to-end and packaging checks.
test_packages=(
  clang clang-format clang-tidy libclang-rt-14-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libvirt-clients
  python3
  debootstrap python3-yaml python3-jsonschema
)

packages=("${build_packages[@]}" "${test_packages[@]}")
case "${1:-}" in
  "") ;;
  --build-only) packages=("${build_packages[@]}") ;;
  -h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "install-deps: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
