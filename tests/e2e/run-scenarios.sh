#!/usr/bin/env bash
# run-scenarios.sh - end-to-end scenarios: our vfio-user-server against a real QEMU 11.1
# (vfio-user-pci client) booting a real Linux guest under TCG.
#
# Each scenario starts the server with its devices in a fresh temp dir, boots a guest with a
# guest script (tests/e2e/guest/), passes or fails on what the guest printed
# ("E2E-RESULT: PASS"), checks the server's log for request errors, stops the server with
# SIGTERM and checks it exited 0 and removed its sockets. Serial and server logs of failed
# scenarios are kept under .cache/e2e/failed/. Ends with "N passed, N failed".
set -euo pipefail

usage() {
    cat <<'EOF2'
Usage: tests/e2e/run-scenarios.sh [--server BINARY] [SCENARIO...]

Runs the e2e scenarios (default: all) against vfio-user-server (default: build/server/
vfio-user-server). Scenarios: sample-device
EOF2
}

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/e2e/lib.sh
source "$SCRIPT_DIR/lib.sh"
SERVER="$E2E_REPO/build/server/vfio-user-server"
SCENARIOS=()
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --server) SERVER="${2:?--server needs a value}"; shift ;;
        -*) echo "run-scenarios.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) SCENARIOS+=("$1") ;;
    esac
    shift
done
((${#SCENARIOS[@]})) || SCENARIOS=(sample-device)
[[ -x "$SERVER" ]] || { echo "run-scenarios.sh: no server binary at $SERVER (build first)" >&2; exit 2; }

"$SCRIPT_DIR/prepare-root.sh" >/dev/null

WORK="$(mktemp -d /tmp/e2e-scn.XXXXXX)"
SERVER_PID=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PASSED=0
FAILED=0

# start_server NAME ARGS...: starts the server in the background, waits for its sockets.
start_server() {
    local name=$1
    shift
    "$SERVER" "$@" >"$WORK/$name.server.log" 2>&1 &
    SERVER_PID=$!
    local i
    for i in $(seq 1 100); do
        grep -q "vfio-user-server ready" "$WORK/$name.server.log" 2>/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.05
    done
    echo "server did not start:" >&2
    cat "$WORK/$name.server.log" >&2
    return 1
}

# stop_server NAME: SIGTERM, expect exit 0 within 10 s.
stop_server() {
    local name=$1 rc=0 i
    kill -TERM "$SERVER_PID"
    for i in $(seq 1 200); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.05
    done
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=""
    if ((rc != 0)); then
        echo "server exited with $rc after SIGTERM" >&2
        return 1
    fi
    if ls "$WORK"/*.sock >/dev/null 2>&1; then
        echo "server left socket files behind: $(ls "$WORK"/*.sock)" >&2
        return 1
    fi
    if grep -q 'msg="request failed"' "$WORK/$name.server.log"; then
        echo "server logged failed requests:" >&2
        grep 'msg="request failed"' "$WORK/$name.server.log" | head -5 >&2
        return 1
    fi
}

keep_logs() {
    local name=$1 dest="$E2E_CACHE/failed/$name-$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$dest"
    cp "$WORK/$name".* "$dest"/ 2>/dev/null || true
    echo "e2e: logs of $name kept in $dest" >&2
}

scenario_sample_device() {
    local name=sample-device
    "$SCRIPT_DIR/make-initramfs.sh" "$WORK/$name.cpio" "$SCRIPT_DIR/guest/sample-device.sh" >/dev/null
    start_server "$name" --device "sample,id=s0,socket=$WORK/s0.sock" || return 1
    "$SCRIPT_DIR/run-guest.sh" --quiet --initrd "$WORK/$name.cpio" --socket "$WORK/s0.sock" \
        --timeout 90 --log "$WORK/$name.serial.log" || return 1
    grep -q 'SAMPLE magic=0x56465553' "$WORK/$name.serial.log" || return 1
    grep -q 'msg="client disconnected"' "$WORK/$name.server.log" || { echo "server did not see QEMU leave" >&2; return 1; }
    stop_server "$name"
}

for s in "${SCENARIOS[@]}"; do
    fn="scenario_${s//-/_}"
    if ! declare -F "$fn" >/dev/null; then
        echo "run-scenarios.sh: unknown scenario $s" >&2
        exit 2
    fi
    start=$(date +%s%N)
    if "$fn"; then
        PASSED=$((PASSED + 1))
        echo "e2e: ok   - $s ($((($(date +%s%N) - start) / 1000000)) ms)"
    else
        FAILED=$((FAILED + 1))
        echo "e2e: FAIL - $s"
        keep_logs "$s"
        if [[ -n "$SERVER_PID" ]]; then
            kill -KILL "$SERVER_PID" 2>/dev/null || true
            wait "$SERVER_PID" 2>/dev/null || true
            SERVER_PID=""
        fi
    fi
done
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
