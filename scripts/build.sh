#!/usr/bin/env bash
# Configures and builds one flavour of the project into its own folder.
#   scripts/build.sh release   -> build/        (gcc, warnings as errors)
#   scripts/build.sh asan      -> build-asan/   (gcc, AddressSanitizer + UBSan)
#   scripts/build.sh fuzz      -> build-fuzz/   (clang, libFuzzer targets)
set -euo pipefail
cd "$(dirname "$0")/.."

flavour=${1:-release}
# A clone in another folder (CI) reuses this machine's compiler cache: paths are hashed relative
# to the checkout.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
jobs=${JOBS:-$(nproc)}
common=(-G Ninja -DVFU_WERROR=ON -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
case "$flavour" in
  release) dir=build; args=() ;;
  asan) dir=build-asan; args=(-DVFU_SANITIZE=ON -DVFU_BUILD_BENCHMARKS=OFF -DCMAKE_BUILD_TYPE=Debug) ;;
  fuzz) dir=build-fuzz; args=(-DVFU_FUZZ=ON -DVFU_BUILD_TESTS=OFF -DVFU_BUILD_BENCHMARKS=OFF -DCMAKE_CXX_COMPILER=clang++) ;;
  *) echo "usage: $0 release|asan|fuzz" >&2; exit 2 ;;
esac

cmake -S . -B "$dir" "${common[@]}" "${args[@]}" >/dev/null
ninja -C "$dir" -j "$jobs"
