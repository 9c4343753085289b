#!/usr/bin/env bash
# Sets up everything and runs every test: unit and integration tests of the server, device
# plugin, KubeVirt hook and operator (warnings as errors), packaging checks with the real tools
# (Helm, kubectl/kustomize, promtool, buildah), the same tests under AddressSanitizer/UBSan, a
# bounded libFuzzer run, real-QEMU (and libvirt) end-to-end scenarios, format and lint.
# Idempotent; safe to run on a fresh Debian bookworm machine as root.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-45}
export CTEST_OUTPUT_ON_FAILURE=1

step() { printf '\n=== %s ===\n' "$*"; }

step "installing dependencies"
./scripts/install-deps.sh

step "build (gcc, -Werror)"
./scripts/build.sh release
step "tests"
ctest --test-dir build -j 2 --timeout 300

step "packaging checks: helm, kubectl kustomize, schemas, promtool, docs vs binaries, buildah image"
./scripts/check-packaging.sh --build-dir build

step "build (ASAN + UBSAN)"
./scripts/build.sh asan
step "tests under ASAN + UBSAN"
ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS="suppressions=$PWD/tests/lsan-suppressions.txt" \
  UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build-asan -j 2 --timeout 600

step "fuzzing the session and the client (${FUZZ_SECONDS}s each)"
./scripts/build.sh fuzz
mkdir -p build-fuzz/corpus build-fuzz/client_corpus
# New inputs go to build-fuzz/ (ignored); the committed seeds are read-only inputs.
./build-fuzz/tests/session_fuzzer -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 \
  -print_final_stats=1 build-fuzz/corpus tests/fuzz/corpus 2>&1 | tail -n 8
./build-fuzz/tests/client_reply_fuzzer -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 \
  -print_final_stats=1 build-fuzz/client_corpus tests/fuzz/client_corpus 2>&1 | tail -n 8

step "end-to-end: real QEMU 11.1 guests against vfio-user-server"
tests/e2e/run-scenarios.sh --server build/server/vfio-user-server

step "format and lint checks"
./scripts/check-format.sh
./scripts/check-tidy.sh

step "all tests passed"
