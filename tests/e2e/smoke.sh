#!/usr/bin/env bash
# smoke.sh - self-test of the e2e infrastructure (no vfio-user server needed).
#
# Prepares the root (cached), then:
#   1. boots a guest that lists its PCI functions (no extra device);
#   2. boots guest/blk-ext4.sh against QEMU's own emulated NVMe and virtio-blk devices
#      (a reference for the guest tools: dd, sha256sum, mkfs.ext4, mount, fsck.ext4);
#   3. checks the vfio-user-pci client exists: with no server at the socket QEMU must fail
#      with "Failed to connect to"; with tests/e2e/stub-listener.py (accepts, never replies)
#      it must fail with "timed out waiting for reply" (skipped without python3).
# Ends with a plain "N passed, N failed" line; exit 0 only if nothing failed.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/e2e/smoke.sh [--help]

Self-test of tests/e2e: prepare the root, boot a PCI-listing guest, run the ext4 guest
script on QEMU-emulated NVMe and virtio-blk, and check QEMU's vfio-user-pci errors against
a missing socket and a silent stub listener. Prints "N passed, N failed".
EOF
}
case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) echo "smoke.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
esac

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/e2e/lib.sh
source "$SCRIPT_DIR/lib.sh"

# Short path: unix socket paths are limited to 107 bytes.
WORK="$(mktemp -d /tmp/e2e-smoke.XXXXXX)"
STUB_PID=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    if [[ -n "$STUB_PID" ]]; then
        kill "$STUB_PID" 2>/dev/null || true
        wait "$STUB_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PASSED=0
FAILED=0
ok() { echo "smoke: ok   - $*"; PASSED=$((PASSED + 1)); }
bad() { echo "smoke: FAIL - $*"; FAILED=$((FAILED + 1)); }

"$SCRIPT_DIR/prepare-root.sh"
"$SCRIPT_DIR/make-initramfs.sh" "$WORK/pci.cpio" "$SCRIPT_DIR/guest/pci-list.sh"
"$SCRIPT_DIR/make-initramfs.sh" "$WORK/blk.cpio" "$SCRIPT_DIR/guest/blk-ext4.sh"
RUN=("$SCRIPT_DIR/run-guest.sh" --quiet --timeout 120)

if "${RUN[@]}" --initrd "$WORK/pci.cpio" --log "$WORK/pci.log"; then
    ok "boot + PCI listing"
else
    bad "boot + PCI listing"
fi

truncate -s 64M "$WORK/disk.img"
for dev in "nvme,serial=e2e,drive=d" "virtio-blk-pci,drive=d"; do
    if "${RUN[@]}" --initrd "$WORK/blk.cpio" --log "$WORK/blk.log" \
        --qemu-arg -drive --qemu-arg "file=$WORK/disk.img,if=none,id=d,format=raw" \
        --qemu-arg -device --qemu-arg "$dev"; then
        ok "ext4 on QEMU-emulated ${dev%%,*}"
    else
        bad "ext4 on QEMU-emulated ${dev%%,*}"
    fi
done

# expect_qemu_error NAME TEXT RUN-ARGS...: the run must fail and its log must contain TEXT.
expect_qemu_error() {
    local name="$1" text="$2"
    shift 2
    if "${RUN[@]}" --initrd "$WORK/pci.cpio" --log "$WORK/err.log" "$@" >/dev/null 2>&1; then
        bad "$name: guest unexpectedly passed"
    elif grep -aq "$text" "$WORK/err.log"; then
        ok "$name: $(grep -a -m1 "$text" "$WORK/err.log" | sed 's/^.*}: //')"
    else
        bad "$name: no '$text' in the log:"
        tail -n 5 "$WORK/err.log"
    fi
}

expect_qemu_error "vfio-user-pci, no server" "Failed to connect to" --socket "$WORK/none.sock"

if command -v python3 >/dev/null 2>&1; then
    python3 "$SCRIPT_DIR/stub-listener.py" "$WORK/stub.sock" --seconds 60 >"$WORK/stub.log" 2>&1 &
    STUB_PID=$!
    for _ in $(seq 50); do [[ -S "$WORK/stub.sock" ]] && break; sleep 0.1; done
    expect_qemu_error "vfio-user-pci, silent stub" "timed out waiting for reply" \
        --socket "$WORK/stub.sock" --msg-timeout 1000
    if grep -q 'VERSION 0.0' "$WORK/stub.log"; then
        ok "stub received QEMU's VERSION request: $(grep -m1 'VERSION' "$WORK/stub.log" | cut -c1-80)..."
    else
        bad "stub saw no VERSION request"
        cat "$WORK/stub.log"
    fi
else
    echo "smoke: skip - vfio-user-pci stub check (no python3)"
fi

echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
