#!/usr/bin/env bash
# The main job: sets everything up (Debian packages, build, a cached trixie root with QEMU 11.1
# and a guest kernel), starts vfio-user-server with a device, boots a small Linux VM whose
# QEMU attaches that device over vfio-user, and prints what the guest saw.
# Idempotent; the first run downloads ~500 MB of Debian packages into .cache/e2e.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1/4 installing dependencies and building"
./scripts/install-deps.sh
./scripts/build.sh release >/dev/null
say "2/4 preparing the VM image (QEMU 11.1 from Debian trixie-backports, guest kernel)"
tests/e2e/prepare-root.sh | tail -n 1

work=$(mktemp -d /tmp/vfu-demo.XXXXXX)
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

say "3/4 starting vfio-user-server"
build/server/vfio-user-server --device "sample,id=demo0,socket=$work/demo0.sock" \
  >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  grep -q "ready" "$work/server.log" 2>/dev/null && break
  sleep 0.05
done
build/server/vfio-user-ctl info "$work/demo0.sock" | sed 's/^/  /'

say "4/4 booting a VM that uses the device (QEMU vfio-user-pci, TCG)"
tests/e2e/make-initramfs.sh "$work/guest.cpio" tests/e2e/guest/sample-device.sh >/dev/null
if tests/e2e/run-guest.sh --quiet --initrd "$work/guest.cpio" --socket "$work/demo0.sock" \
  --timeout 120 --log "$work/guest.log"; then
  result=ok
else
  result=failed
fi
echo "  what the guest saw:"
grep -E '^(SAMPLE|E2E)' "$work/guest.log" | sed 's/^/    /'
echo "  what the server logged:"
grep -E 'client connected|negotiated|disconnected|session ended' "$work/server.log" | sed 's/^/    /'
if [[ $result != ok ]]; then
  echo "demo FAILED: the guest did not pass; see the log above" >&2
  exit 1
fi
say "demo passed: a real QEMU guest used our vfio-user device"
