#!/usr/bin/env bash
# run-guest.sh - boot the e2e guest in the root's QEMU (TCG) and report its result.
#
# QEMU 11.x from the cached trixie root runs directly on the host through the root's own
# dynamic loader (no chroot, no mounts), so socket, kernel and initramfs paths are the same
# for QEMU and for the host-side vfio-user server. Each --socket PATH becomes
#   -device '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"PATH"}}'
# Guest RAM is a shared memfd (required by vfio-user: the server maps it via DMA_MAP fds).
# The serial console (and QEMU's own messages) go to the log; the run passes (exit 0) when
# the log has the line "E2E-RESULT: PASS" (printed by make-initramfs.sh's /init), else it
# fails (exit 1) and prints the last 40 log lines. QEMU always runs under `timeout` and is
# killed when this script exits or is interrupted. A guest reboot ends QEMU (-no-reboot)
# unless --allow-reboot is given; then a guest that boots more than --max-boots times (the
# /init banner "E2E: init started" counts the boots) is killed as well.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/e2e/run-guest.sh --initrd FILE [options]

Boot the cached Debian kernel with FILE (from make-initramfs.sh) in QEMU/TCG; exit 0 if
the guest printed "E2E-RESULT: PASS", 1 otherwise (2 for usage errors).

Options:
  --initrd FILE        initramfs to boot (required)
  --socket PATH        add a vfio-user-pci device connected to the unix socket PATH
                       (repeatable; the server must already listen there)
  --msg-timeout MS     x-msg-timeout of each vfio-user-pci device (QEMU's default: 5000)
  --smp N              guest CPUs (default 1)
  --mem SIZE           guest RAM, QEMU size syntax (default 512M)
  --timeout SECONDS    kill QEMU after this long (default 120)
  --log FILE           serial console + QEMU messages (default .cache/e2e/logs/guest-*.log)
  --append ARGS        extra kernel command line (repeatable); the base is
                       "console=ttyS0 panic=-1 quiet"; VAR=value words become environment
                       variables of the guest's /init and so of /test.sh
  --kernel KIND|PATH   vmlinux (default: extracted, PVH boot, faster), bzimage, or a file
  --qemu-arg ARG       pass ARG to QEMU verbatim (repeatable), e.g. --qemu-arg -device
                       --qemu-arg nvme,serial=x,drive=d
  --allow-reboot       let a guest reboot reset the machine and boot again (no -no-reboot);
                       QEMU still ends on the guest's poweroff
  --max-boots N        with --allow-reboot: kill QEMU when the guest starts boot N+1
                       (default 2)
  --pidfile FILE       QEMU writes its pid to FILE (QEMU's -pidfile), e.g. to kill it
  --quiet              do not echo the console to stdout while the guest runs
  --print-cmd          print the QEMU command line and exit
  --help               show this help

Environment: E2E_CACHE (default <repo>/.cache/e2e)
EOF
}

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/e2e/lib.sh
source "$SCRIPT_DIR/lib.sh"

INITRD=""
SOCKETS=()
MSG_TIMEOUT=""
SMP=1
MEM=512M
TIMEOUT=120
LOG=""
APPEND=""
KERNEL=vmlinux
EXTRA=()
QUIET=0
PRINT_CMD=0
ALLOW_REBOOT=0
MAX_BOOTS=2
PIDFILE=""
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "run-guest.sh: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --initrd) need "$@"; INITRD="$2"; shift ;;
        --socket) need "$@"; SOCKETS+=("$2"); shift ;;
        --msg-timeout) need "$@"; MSG_TIMEOUT="$2"; shift ;;
        --smp) need "$@"; SMP="$2"; shift ;;
        --mem) need "$@"; MEM="$2"; shift ;;
        --timeout) need "$@"; TIMEOUT="$2"; shift ;;
        --log) need "$@"; LOG="$2"; shift ;;
        --append) need "$@"; APPEND+=" $2"; shift ;;
        --kernel) need "$@"; KERNEL="$2"; shift ;;
        --qemu-arg) [[ $# -ge 2 ]] || { echo "run-guest.sh: --qemu-arg needs a value" >&2; exit 2; }
            EXTRA+=("$2"); shift ;;
        --allow-reboot) ALLOW_REBOOT=1 ;;
        --max-boots) need "$@"; MAX_BOOTS="$2"; shift ;;
        --pidfile) need "$@"; PIDFILE="$2"; shift ;;
        --quiet) QUIET=1 ;;
        --print-cmd) PRINT_CMD=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run-guest.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[[ -n "$INITRD" ]] || { echo "run-guest.sh: --initrd is required" >&2; usage >&2; exit 2; }
[[ -f "$INITRD" ]] || { echo "run-guest.sh: no such initrd: $INITRD" >&2; exit 2; }
[[ "$SMP" =~ ^[1-9][0-9]*$ ]] || { echo "run-guest.sh: bad --smp: $SMP" >&2; exit 2; }
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || { echo "run-guest.sh: bad --timeout: $TIMEOUT" >&2; exit 2; }
[[ "$MAX_BOOTS" =~ ^[1-9][0-9]*$ ]] || { echo "run-guest.sh: bad --max-boots: $MAX_BOOTS" >&2; exit 2; }
[[ -z "$MSG_TIMEOUT" || "$MSG_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || {
    echo "run-guest.sh: bad --msg-timeout: $MSG_TIMEOUT" >&2; exit 2; }
if [[ ! -x "$E2E_LOADER" || ! -f "$E2E_CACHE/kernel/vmlinuz" ]]; then
    echo "run-guest.sh: $E2E_CACHE is not prepared; run tests/e2e/prepare-root.sh" >&2
    exit 1
fi

case "$KERNEL" in
    vmlinux)
        KERNEL_FILE="$E2E_CACHE/kernel/vmlinux"
        # Fall back to the bzImage if extraction did not work on this kernel.
        [[ -f "$KERNEL_FILE" ]] || KERNEL_FILE="$E2E_CACHE/kernel/vmlinuz"
        ;;
    bzimage) KERNEL_FILE="$E2E_CACHE/kernel/vmlinuz" ;;
    *) KERNEL_FILE="$KERNEL" ;;
esac
[[ -f "$KERNEL_FILE" ]] || { echo "run-guest.sh: no such kernel: $KERNEL_FILE" >&2; exit 2; }

# Absolute paths: QEMU runs in this process's cwd anyway, but logs are clearer this way.
abspath() { [[ "$1" == /* ]] && printf '%s' "$1" || printf '%s/%s' "$PWD" "$1"; }
INITRD="$(abspath "$INITRD")"

QEMU_ARGS=(
    -accel tcg
    -object "memory-backend-memfd,id=mem,size=$MEM,share=on"
    -machine "q35,memory-backend=mem"
    -m "$MEM"
    -smp "$SMP"
    -nographic -nic none
    -kernel "$KERNEL_FILE"
    -initrd "$INITRD"
    -append "console=ttyS0 panic=-1 quiet${APPEND}"
)
[[ $ALLOW_REBOOT -eq 1 ]] || QEMU_ARGS+=(-no-reboot)
[[ -z "$PIDFILE" ]] || QEMU_ARGS+=(-pidfile "$(abspath "$PIDFILE")")
while read -r arg; do QEMU_ARGS+=("$arg"); done < <(e2e_qemu_firmware_args)
for sock in "${SOCKETS[@]}"; do
    sock="$(abspath "$sock")"
    if [[ "$sock" == *[\"\\]* ]]; then
        echo "run-guest.sh: socket path must not contain quotes or backslashes: $sock" >&2
        exit 2
    fi
    [[ -S "$sock" ]] || echo "run-guest.sh: warning: $sock is not a socket (yet)" >&2
    dev="{\"driver\":\"vfio-user-pci\",\"socket\":{\"type\":\"unix\",\"path\":\"$sock\"}"
    [[ -n "$MSG_TIMEOUT" ]] && dev+=",\"x-msg-timeout\":$MSG_TIMEOUT"
    QEMU_ARGS+=(-device "$dev}")
done
QEMU_ARGS+=("${EXTRA[@]}")

if [[ $PRINT_CMD -eq 1 ]]; then
    printf '%q ' "${E2E_QEMU_CMD[@]}" "${QEMU_ARGS[@]}"
    echo
    exit 0
fi

if [[ -z "$LOG" ]]; then
    mkdir -p "$E2E_CACHE/logs"
    find "$E2E_CACHE/logs" -name 'guest-*.log' -mtime +2 -delete 2>/dev/null || true
    LOG="$E2E_CACHE/logs/guest-$(date +%Y%m%d-%H%M%S)-$$.log"
fi
mkdir -p "$(dirname "$LOG")"
: >"$LOG"

QEMU_PID=""
TAIL_PID=""
WATCH_PID=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    if [[ -n "$QEMU_PID" ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
        # QEMU_PID is `timeout`, which passes TERM on to QEMU.
        kill -TERM "$QEMU_PID" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$QEMU_PID" 2>/dev/null || break
            sleep 0.3
        done
        if kill -0 "$QEMU_PID" 2>/dev/null; then
            # Still there: kill QEMU (timeout's child, by pid) and timeout itself.
            local kids
            kids="$(cat "/proc/$QEMU_PID/task/$QEMU_PID/children" 2>/dev/null || true)"
            # shellcheck disable=SC2086 # a list of pids
            [[ -n "$kids" ]] && kill -KILL $kids 2>/dev/null
            kill -KILL "$QEMU_PID" 2>/dev/null || true
        fi
    fi
    local p
    for p in "$TAIL_PID" "$WATCH_PID"; do
        [[ -n "$p" ]] || continue
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'echo "run-guest.sh: interrupted" >&2; exit 130' INT TERM HUP

START_NS=$(date +%s%N)
timeout --kill-after=5 "$TIMEOUT" "${E2E_QEMU_CMD[@]}" "${QEMU_ARGS[@]}" </dev/null >"$LOG" 2>&1 &
QEMU_PID=$!
if [[ $QUIET -eq 0 ]]; then
    tail -n +1 -s 0.2 --pid="$QEMU_PID" -f "$LOG" &
    TAIL_PID=$!
fi
if [[ $ALLOW_REBOOT -eq 1 ]]; then
    # Boot counter: a guest that keeps rebooting (e.g. it never sees that it already booted)
    # is stopped at the start of boot MAX_BOOTS+1 instead of running into the timeout.
    (
        while kill -0 "$QEMU_PID" 2>/dev/null; do
            if (($(grep -a -c 'E2E: init started' "$LOG" || true) > MAX_BOOTS)); then
                kill -TERM "$QEMU_PID" 2>/dev/null || true
                break
            fi
            sleep 0.2
        done
    ) &
    WATCH_PID=$!
fi
RC=0
wait "$QEMU_PID" || RC=$?
QEMU_PID=""
END_NS=$(date +%s%N)
if [[ -n "$WATCH_PID" ]]; then
    kill "$WATCH_PID" 2>/dev/null || true
    wait "$WATCH_PID" 2>/dev/null || true
    WATCH_PID=""
fi
if [[ -n "$TAIL_PID" ]]; then
    wait "$TAIL_PID" 2>/dev/null || true
    TAIL_PID=""
fi
ELAPSED="$(printf '%d.%02d' $(( (END_NS - START_NS) / 1000000000 )) $(( (END_NS - START_NS) / 10000000 % 100 )))"

RESULT="$(tr -d '\r' <"$LOG" | grep -a -m1 '^E2E-RESULT: ' || true)"
if [[ "$RESULT" == "E2E-RESULT: PASS" ]]; then
    echo "run-guest: PASS in ${ELAPSED} s (log: $LOG)" >&2
    exit 0
fi
BOOTS=$(grep -a -c 'E2E: init started' "$LOG" || true)
if [[ -n "$RESULT" ]]; then
    WHY="guest: ${RESULT#E2E-RESULT: }"
elif [[ $ALLOW_REBOOT -eq 1 ]] && ((BOOTS > MAX_BOOTS)); then
    WHY="the guest booted $BOOTS times (--max-boots $MAX_BOOTS)"
elif [[ $RC -eq 124 ]] || [[ $RC -eq 137 && $(( (END_NS - START_NS) / 1000000000 )) -ge $TIMEOUT ]]; then
    WHY="timed out after ${TIMEOUT} s"
elif ((RC > 128)); then
    WHY="QEMU was killed by signal $((RC - 128))"
else
    WHY="QEMU exited with status $RC without a result line"
fi
echo "run-guest: ---- last 40 lines of $LOG ----" >&2
tr -d '\r' <"$LOG" | tail -n 40 >&2
echo "run-guest: FAIL ($WHY) after ${ELAPSED} s (log: $LOG)" >&2
exit 1
