#!/usr/bin/env bash
# run-scenarios.sh - end-to-end scenarios: our vfio-user-server against a real QEMU 11.1
# (vfio-user-pci client) booting a real Linux guest under TCG.
#
# Each scenario starts the server with its devices in a fresh temp dir, boots one or more
# guests with a guest script (tests/e2e/guest/<scenario>.sh), passes or fails on what the
# guest printed ("E2E-RESULT: PASS" and scenario-specific lines) and on host-side checks (the
# backing image, the server's log), checks the server's log for request errors and device
# errors, stops the server with SIGTERM and checks it exited 0 and removed its sockets.
# Serial, run-guest and server logs of failed scenarios are kept under .cache/e2e/failed/.
# Prints each scenario's time, the total time, and ends with "N passed, N failed".
#
# Scenarios (the virtio-blk ones use the guest helpers in guest/lib/blk.sh):
#   sample-device       the sample device's BAR0 registers driven by the guest CPU
#   blk-basic           one virtio-blk disk: PCI identity, capacity, serial, O_DIRECT
#                       write/read at start, middle, end; the host checks the image
#   blk-fs-host-verify  mkfs.ext4 + files in the guest; the host reads them from the image
#                       with debugfs (no mount) and runs e2fsck -fn on it
#   blk-reboot          the guest writes, reboots (machine reset -> DEVICE_RESET) and reads
#                       the data back on its second boot
#   blk-two-devices     two devices of one server in one VM, different data on each
#   blk-two-vms         two VMs at once, each with its own device of one server
#   blk-qemu-killed     QEMU SIGKILLed during O_DIRECT+fsync writes; the server survives and
#                       a new QEMU finds every record that was reported durable
#   blk-smp2-mq         2 vCPUs, queues=2: two blk-mq queues, parallel writers on both
#   kubevirt-hook       vfio-user-kubevirt-hook edits a KubeVirt domain (VMI requesting
#                       vfio-user.io/virtio-blk: 2); QEMU started with the memory and device
#                       arguments of that domain (as libvirt builds them) sees both disks
set -euo pipefail

usage() {
    cat <<'EOF2'
Usage: tests/e2e/run-scenarios.sh [--server BINARY] [--timeout SECONDS] [--keep-logs DIR] [--list]
                                  [SCENARIO...]

Runs the e2e scenarios (default: all) against vfio-user-server (default: build/server/
vfio-user-server). --timeout bounds each guest boot (default 60 s; E2E_BOOT_TIMEOUT); the
guests fail on their own after 3/4 of it (/init's E2E_WATCHDOG, which shows what hung).
--keep-logs DIR keeps the serial, run-guest and server logs of every scenario in DIR/<scenario>/
(e.g. as CI artifacts); failed ones are always kept under .cache/e2e/failed/.
Scenarios: sample-device blk-basic blk-fs-host-verify blk-reboot blk-two-devices blk-two-vms
blk-qemu-killed blk-smp2-mq kubevirt-hook
kubevirt-hook runs vfio-user-kubevirt-hook from the server's build dir (E2E_KUBEVIRT_HOOK
overrides) and libvirt's virt-xml-validate.
EOF2
}

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/e2e/lib.sh
source "$SCRIPT_DIR/lib.sh"
SERVER="$E2E_REPO/build/server/vfio-user-server"
BOOT_TIMEOUT="${E2E_BOOT_TIMEOUT:-60}"
ALL_SCENARIOS=(sample-device blk-basic blk-fs-host-verify blk-reboot blk-two-devices blk-two-vms
    blk-qemu-killed blk-smp2-mq kubevirt-hook)
KEEP_LOGS=""
SCENARIOS=()
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --list) printf '%s\n' "${ALL_SCENARIOS[@]}"; exit 0 ;;
        --server) SERVER="${2:?--server needs a value}"; shift ;;
        --timeout) BOOT_TIMEOUT="${2:?--timeout needs a value}"; shift ;;
        --keep-logs) KEEP_LOGS="${2:?--keep-logs needs a value}"; shift ;;
        -*) echo "run-scenarios.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) SCENARIOS+=("$1") ;;
    esac
    shift
done
((${#SCENARIOS[@]})) || SCENARIOS=("${ALL_SCENARIOS[@]}")
[[ -x "$SERVER" ]] || { echo "run-scenarios.sh: no server binary at $SERVER (build first)" >&2; exit 2; }
[[ "$BOOT_TIMEOUT" =~ ^[1-9][0-9]*$ && "$BOOT_TIMEOUT" -ge 20 ]] ||
    { echo "run-scenarios.sh: bad --timeout (at least 20): $BOOT_TIMEOUT" >&2; exit 2; }
# The guest's own watchdog (/init, E2E_WATCHDOG) fires first and says what hung.
WATCHDOG=$((BOOT_TIMEOUT * 3 / 4))
for s in "${SCENARIOS[@]}"; do
    if [[ " ${ALL_SCENARIOS[*]} " != *" $s "* ]]; then
        echo "run-scenarios.sh: unknown scenario $s" >&2
        exit 2
    fi
done

# Host tools: debugfs/e2fsck (e2fsprogs) read the ext4 image of blk-fs-host-verify.
need_host_tools() {
    PATH="$PATH:/usr/sbin:/sbin"
    command -v debugfs >/dev/null && command -v e2fsck >/dev/null && return 0
    echo "run-scenarios.sh: installing e2fsprogs (debugfs) on the host" >&2
    local sudo=()
    ((EUID == 0)) || sudo=(sudo -n)
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends e2fsprogs >/dev/null ||
        { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends e2fsprogs >/dev/null; } ||
        { echo "run-scenarios.sh: cannot install e2fsprogs" >&2; exit 2; }
}
[[ " ${SCENARIOS[*]} " != *" blk-fs-host-verify "* ]] || need_host_tools

"$SCRIPT_DIR/prepare-root.sh" >/dev/null

WORK="$(mktemp -d /tmp/e2e-scn.XXXXXX)"
SERVER_PID=""
BG_PIDS=() # background run-guest.sh processes of the current scenario
# shellcheck disable=SC2317 # invoked by the EXIT trap
kill_bg() {
    local p
    for p in "${BG_PIDS[@]}"; do
        # run-guest.sh kills its QEMU when it gets TERM.
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    BG_PIDS=()
}
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    kill_bg
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "run-scenarios.sh: interrupted" >&2; exit 130' INT TERM HUP

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
    # Device-level trouble: a broken ring (NEEDS_RESET), a refused backend request, errors.
    if grep -E 'level=error|device needs reset|backend refused' "$WORK/$name.server.log" >&2; then
        echo "server logged the errors above" >&2
        return 1
    fi
}

keep_logs() {
    local name=$1 dest
    dest="$E2E_CACHE/failed/$name-$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$dest"
    cp "$WORK/$name".* "$dest"/ 2>/dev/null || true
    echo "e2e: logs of $name kept in $dest" >&2
}

# ---- helpers for the scenarios ------------------------------------------------------------
# All files named $WORK/<scenario>.* are kept when the scenario fails; images and initramfs
# files use other names (img-*, initrd-*) and are removed after each scenario.

fail() { echo "e2e: $*" >&2; return 1; }

# token: a random hex word that ties what the guest wrote to this run.
token() { od -An -N6 -tx1 /dev/urandom | tr -d ' \n'; }

# initrd NAME GUEST_SCRIPT [make-initramfs options]: $WORK/initrd-NAME.cpio with the guest
# script and the virtio-blk helpers (/lib/e2e-blk.sh).
initrd() {
    local name=$1 script=$2
    shift 2
    "$SCRIPT_DIR/make-initramfs.sh" --add "$SCRIPT_DIR/guest/lib/blk.sh:/lib/e2e-blk.sh" "$@" \
        "$WORK/initrd-$name.cpio" "$script" >/dev/null
}

# boot INITRD_NAME LOG_NAME [run-guest options]: one guest run, bounded by BOOT_TIMEOUT.
# Serial log: $WORK/LOG_NAME.serial.log; run-guest's own output: $WORK/LOG_NAME.run-guest.log
# (printed when the guest fails).
boot() {
    local initrd=$1 log=$2
    shift 2
    if "$SCRIPT_DIR/run-guest.sh" --quiet --timeout "$BOOT_TIMEOUT" --initrd "$WORK/initrd-$initrd.cpio" \
        --log "$WORK/$log.serial.log" --append "E2E_WATCHDOG=$WATCHDOG" "$@" >"$WORK/$log.run-guest.log" 2>&1; then
        return 0
    fi
    sed 's/^/    /' "$WORK/$log.run-guest.log" >&2
    return 1
}

# boot_bg INITRD_NAME LOG_NAME [run-guest options]: like boot, in the background; the pid of
# run-guest.sh (which kills its QEMU on TERM) is added to BG_PIDS and left in BOOT_PID.
boot_bg() {
    local initrd=$1 log=$2
    shift 2
    "$SCRIPT_DIR/run-guest.sh" --quiet --timeout "$BOOT_TIMEOUT" --initrd "$WORK/initrd-$initrd.cpio" \
        --log "$WORK/$log.serial.log" --append "E2E_WATCHDOG=$WATCHDOG" "$@" >"$WORK/$log.run-guest.log" 2>&1 &
    BOOT_PID=$!
    BG_PIDS+=("$BOOT_PID")
}

# boot_wait PID LOG_NAME: wait for a boot_bg guest; prints run-guest's output if it failed.
boot_wait() {
    if wait "$1"; then
        return 0
    fi
    sed 's/^/    /' "$WORK/$2.run-guest.log" >&2
    return 1
}

# serial LOG_NAME: the serial log without carriage returns.
serial() { tr -d '\r' <"$WORK/$1.serial.log"; }

# expect_serial LOG_NAME ERE: the guest printed a line matching ERE.
expect_serial() {
    serial "$1" | grep -a -q -E -- "$2" || fail "$1: the guest did not print a line matching '$2'"
}

# wait_log FILE ERE [SECONDS=10]: wait until FILE has a line matching ERE.
wait_log() {
    local i
    for ((i = 0; i < ${3:-10} * 20; i++)); do
        grep -a -q -E -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    fail "no line matching '$2' in ${1##*/} after ${3:-10} s"
}

# image_sha IMG OFFSET BYTES: sha256 of a byte range of a backing image.
image_sha() {
    dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none | sha256sum | cut -d' ' -f1
}

# check_image_io LOG_NAME IMG TAG_ERE: for each "BLK-IO <tag> ..." line of the serial log
# whose tag matches TAG_ERE, the backing image must hold data with the checksum the guest
# printed, at the offset the guest wrote to. At least one line must match.
check_image_io() {
    local log=$1 img=$2 re=$3 n=0 tag off bytes sha got
    while read -r _ tag _ off bytes sha; do
        [[ "$tag" =~ ^($re)$ ]] || continue
        off=${off#offset=}
        bytes=${bytes#bytes=}
        sha=${sha#sha256=}
        got=$(image_sha "$img" "$off" "$bytes")
        [[ "$got" == "$sha" ]] || fail "$log: ${img##*/} at offset $off ($bytes bytes) has sha256 $got, the guest wrote $sha ($tag)" || return 1
        n=$((n + 1))
    done < <(serial "$log" | grep -a '^BLK-IO ')
    ((n > 0)) || fail "$log: no BLK-IO lines matching '$re' to check against ${img##*/}" || return 1
    echo "    host: $n guest write(s) found in ${img##*/}" >&2
}

# count_log FILE ERE: number of matching lines.
count_log() { grep -a -c -E -- "$2" "$1" 2>/dev/null || true; }

# ---- scenarios ----------------------------------------------------------------------------

scenario_sample_device() {
    local name=sample-device
    initrd "$name" "$SCRIPT_DIR/guest/sample-device.sh" || return 1
    start_server "$name" --device "sample,id=s0,socket=$WORK/s0.sock" || return 1
    boot "$name" "$name" --socket "$WORK/s0.sock" || return 1
    expect_serial "$name" 'SAMPLE magic=0x56465553' || return 1
    wait_log "$WORK/$name.server.log" 'msg="client disconnected"' 5 || return 1
    stop_server "$name"
}

# One disk, file backend, an odd size (40 MiB + 192 KiB = 82304 sectors) and a serial.
scenario_blk_basic() {
    local name=blk-basic img="$WORK/img-blk-basic.img"
    truncate -s $((40 * 1024 * 1024 + 192 * 1024)) "$img"
    initrd "$name" "$SCRIPT_DIR/guest/blk-basic.sh" || return 1
    start_server "$name" --device "virtio-blk,id=disk0,socket=$WORK/disk0.sock,backend=file,path=$img,serial=e2e-basic-01" || return 1
    boot "$name" "$name" --socket "$WORK/disk0.sock" \
        --append "E2E_EXPECT_SECTORS=82304 E2E_EXPECT_SERIAL=e2e-basic-01" || return 1
    expect_serial "$name" '^BLK-PCI [0-9a-f:.]+ 1af4:1042 class=010000 driver=virtio-pci virtio=virtio_blk$' || return 1
    expect_serial "$name" '^BLK-DISK vda serial=e2e-basic-01 sectors=82304 bytes=42139648 ' || return 1
    check_image_io "$name" "$img" 'head|middle|tail' || return 1
    wait_log "$WORK/$name.server.log" 'msg="session ended' 5 || return 1
    stop_server "$name"
}

# ext4 written by the guest, read by the host from the image without mounting it.
scenario_blk_fs_host_verify() {
    local name=blk-fs-host-verify img="$WORK/img-blk-fs.img" pattern="$WORK/img-pattern.bin" tok
    tok=$(token)
    truncate -s 32M "$img"
    head -c $((2 * 1024 * 1024 + 12345)) /dev/urandom >"$pattern"
    initrd "$name" "$SCRIPT_DIR/guest/blk-fs-host-verify.sh" --add "$pattern:/host-pattern.bin" || return 1
    start_server "$name" --device "virtio-blk,id=disk0,socket=$WORK/disk0.sock,backend=file,path=$img" || return 1
    boot "$name" "$name" --socket "$WORK/disk0.sock" --append "E2E_TOKEN=$tok" || return 1
    wait_log "$WORK/$name.server.log" 'msg="session ended' 5 || return 1
    stop_server "$name" || return 1
    # The server is gone; only the image is left. Read the files with debugfs.
    local want got i
    e2fsck -fn "$img" >"$WORK/$name.e2fsck.log" 2>&1 || { cat "$WORK/$name.e2fsck.log" >&2; fail "$name: e2fsck -fn on the host found errors in the image"; return 1; }
    want=$(sha256sum <"$pattern" | cut -d' ' -f1)
    got=$(debugfs -R 'cat /e2e/pattern.bin' "$img" 2>/dev/null | sha256sum | cut -d' ' -f1)
    [[ "$got" == "$want" ]] || { fail "$name: /e2e/pattern.bin in the image has sha256 $got, the host's pattern $want"; return 1; }
    got=$(debugfs -R 'cat /e2e/marker.txt' "$img" 2>/dev/null)
    [[ "$got" == "E2E-MARKER $tok" ]] || { fail "$name: /e2e/marker.txt in the image is '$got', expected 'E2E-MARKER $tok'"; return 1; }
    want=$(serial "$name" | sed -n 's|^FS-FILE /e2e/guest.bin sha256=\([0-9a-f]*\) .*|\1|p')
    got=$(debugfs -R 'cat /e2e/guest.bin' "$img" 2>/dev/null | sha256sum | cut -d' ' -f1)
    [[ -n "$want" && "$got" == "$want" ]] || { fail "$name: /e2e/guest.bin in the image has sha256 $got, the guest printed '$want'"; return 1; }
    for i in 1 7 20; do
        got=$(debugfs -R "cat /e2e/dir/small-$i" "$img" 2>/dev/null)
        [[ "$got" == "small $i $tok" ]] || { fail "$name: /e2e/dir/small-$i in the image is '$got'"; return 1; }
    done
    i=$(debugfs -R 'ls /e2e/dir' "$img" 2>/dev/null | grep -o 'small-[0-9]*' | sort -u | wc -l)
    ((i == 20)) || { fail "$name: /e2e/dir in the image has $i small-N files, expected 20"; return 1; }
    echo "    host: e2fsck clean; pattern.bin, guest.bin, marker.txt and 20 small files match" >&2
}

# Write, reboot (machine reset: DEVICE_RESET), read back on the second boot.
scenario_blk_reboot() {
    local name=blk-reboot img="$WORK/img-blk-reboot.img" tok n
    tok=$(token)
    truncate -s 64M "$img"
    initrd "$name" "$SCRIPT_DIR/guest/blk-reboot.sh" || return 1
    start_server "$name" --device "virtio-blk,id=disk0,socket=$WORK/disk0.sock,backend=file,path=$img" || return 1
    # Two boots: twice the time (each boot has its own E2E_WATCHDOG of guest uptime).
    boot "$name" "$name" --socket "$WORK/disk0.sock" --allow-reboot --max-boots 2 \
        --timeout $((BOOT_TIMEOUT * 2)) --append "E2E_TOKEN=$tok" || return 1
    expect_serial "$name" '^REBOOT boot=1 wrote data' || return 1
    expect_serial "$name" '^REBOOT boot=2 marker found' || return 1
    n=$(serial "$name" | grep -a -c 'E2E: init started')
    ((n == 2)) || { fail "$name: the guest booted $n times, expected 2"; return 1; }
    wait_log "$WORK/$name.server.log" 'msg="session ended' 5 || return 1
    # One connection for both boots; QEMU resets the device at start-up and at the reboot.
    n=$(count_log "$WORK/$name.server.log" 'msg="device reset requested')
    ((n >= 2)) || { fail "$name: the server logged $n device resets, expected at least 2 (start + reboot)"; return 1; }
    n=$(count_log "$WORK/$name.server.log" 'msg="client connected"')
    ((n == 1)) || { fail "$name: $n client connections, expected 1 (the same QEMU across the reboot)"; return 1; }
    check_image_io "$name" "$img" 'data' || return 1
    [[ "$(head -c 64 "$img" | tr -d '\0' | head -n 1)" == "E2E-REBOOT $tok "* ]] ||
        { fail "$name: the marker block is not in the image"; return 1; }
    stop_server "$name"
}

# Two devices of one server in one VM: a file-backed and a RAM-backed disk.
scenario_blk_two_devices() {
    local name=blk-two-devices img="$WORK/img-blk-two-a.img"
    truncate -s 48M "$img"
    initrd "$name" "$SCRIPT_DIR/guest/blk-two-devices.sh" || return 1
    start_server "$name" \
        --device "virtio-blk,id=diskA,socket=$WORK/diskA.sock,backend=file,path=$img" \
        --device "virtio-blk,id=diskB,socket=$WORK/diskB.sock,backend=ram,size=32M" || return 1
    boot "$name" "$name" --socket "$WORK/diskA.sock" --socket "$WORK/diskB.sock" \
        --append "E2E_DISKS=diskA:98304,diskB:65536" || return 1
    expect_serial "$name" '^BLK-DISK vd[a-z] serial=diskA sectors=98304 ' || return 1
    expect_serial "$name" '^BLK-DISK vd[a-z] serial=diskB sectors=65536 ' || return 1
    expect_serial "$name" '^BLK-IO diskB-a ' || return 1
    expect_serial "$name" '^BLK-IO diskB-b ' || return 1
    check_image_io "$name" "$img" 'diskA-a|diskA-b' || return 1
    wait_log "$WORK/$name.server.log" 'msg="session ended.*device=diskA' 5 || return 1
    wait_log "$WORK/$name.server.log" 'msg="session ended.*device=diskB' 5 || return 1
    stop_server "$name"
}

# Two VMs at the same time, each with its own device of one server.
scenario_blk_two_vms() {
    local name=blk-two-vms vm rc=0 p1 p2 c2 d1
    for vm in vm1 vm2; do truncate -s 32M "$WORK/img-$name-$vm.img"; done
    initrd "$name" "$SCRIPT_DIR/guest/blk-two-vms.sh" || return 1
    start_server "$name" \
        --device "virtio-blk,id=vm1,socket=$WORK/vm1.sock,backend=file,path=$WORK/img-$name-vm1.img" \
        --device "virtio-blk,id=vm2,socket=$WORK/vm2.sock,backend=file,path=$WORK/img-$name-vm2.img" || return 1
    boot_bg "$name" "$name.vm1" --socket "$WORK/vm1.sock" --append "E2E_EXPECT_SERIAL=vm1"
    p1=$BOOT_PID
    boot_bg "$name" "$name.vm2" --socket "$WORK/vm2.sock" --append "E2E_EXPECT_SERIAL=vm2"
    p2=$BOOT_PID
    boot_wait "$p1" "$name.vm1" || { rc=1; fail "$name: VM 1 failed"; }
    boot_wait "$p2" "$name.vm2" || { rc=1; fail "$name: VM 2 failed"; }
    BG_PIDS=()
    ((rc == 0)) || return 1
    for vm in vm1 vm2; do
        check_image_io "$name.$vm" "$WORK/img-$name-$vm.img" 'round[0-9]+' || return 1
    done
    wait_log "$WORK/$name.server.log" 'msg="session ended.*device=vm1' 5 || return 1
    wait_log "$WORK/$name.server.log" 'msg="session ended.*device=vm2' 5 || return 1
    # They really overlapped: the second VM connected before the first one left.
    c2=$(grep -n 'msg="client connected"' "$WORK/$name.server.log" | sed -n 2p | cut -d: -f1)
    d1=$(grep -n 'msg="client disconnected"' "$WORK/$name.server.log" | sed -n 1p | cut -d: -f1)
    if [[ -z "$c2" || -z "$d1" ]] || ((c2 > d1)); then
        fail "$name: the two VMs did not overlap"
        return 1
    fi
    stop_server "$name"
}

# SIGKILL QEMU during durable writes; the server survives; a new QEMU finds the records.
scenario_blk_qemu_killed() {
    local name=blk-qemu-killed img="$WORK/img-blk-killed.img" tok p i last qpid rec
    tok=$(token)
    truncate -s 64M "$img"
    initrd "$name" "$SCRIPT_DIR/guest/blk-qemu-killed.sh" || return 1
    start_server "$name" --device "virtio-blk,id=disk0,socket=$WORK/disk0.sock,backend=file,path=$img" || return 1
    rm -f "$WORK/$name.qemu.pid"
    # run-guest.sh itself fails here (QEMU gets killed, no PASS): its output is only kept.
    boot_bg "$name" "$name.writer" --socket "$WORK/disk0.sock" --pidfile "$WORK/$name.qemu.pid" \
        --append "E2E_MODE=write E2E_TOKEN=$tok"
    p=$BOOT_PID
    # Kill QEMU once the guest has reported 5 durable records (or give up).
    for ((i = 0; i < BOOT_TIMEOUT * 20; i++)); do
        serial "$name.writer" 2>/dev/null | grep -a -q '^FLUSHED 5$' && break
        kill -0 "$p" 2>/dev/null || break
        sleep 0.05
    done
    qpid=$(cat "$WORK/$name.qemu.pid" 2>/dev/null || true)
    if ! serial "$name.writer" | grep -a -q '^FLUSHED 5$' || [[ -z "$qpid" ]] || ! kill -KILL "$qpid" 2>/dev/null; then
        kill_bg
        sed 's/^/    /' "$WORK/$name.writer.run-guest.log" >&2
        fail "$name: the writer guest never reported 5 durable records"
        return 1
    fi
    wait "$p" 2>/dev/null || true # run-guest.sh fails (no PASS): expected
    BG_PIDS=()
    # The last complete "FLUSHED N" line (a line cut off by the kill has no newline yet).
    last=$(serial "$name.writer" | { if [[ "$(tail -c 1 "$WORK/$name.writer.serial.log")" == "" ]]; then cat; else sed '$d'; fi; } |
        sed -n 's/^FLUSHED \([0-9]*\)$/\1/p' | tail -n 1)
    echo "    host: SIGKILLed QEMU (pid $qpid) after FLUSHED $last" >&2
    wait_log "$WORK/$name.server.log" 'msg="client disconnected"' 10 || return 1
    wait_log "$WORK/$name.server.log" 'msg="session ended' 10 || return 1
    kill -0 "$SERVER_PID" 2>/dev/null || { fail "$name: the server died with QEMU"; return 1; }
    # The host sees every durable record in the image...
    for ((i = 1; i <= last; i++)); do
        rec=$(yes "E2E-REC $i $tok" | head -c 4096 | sha256sum | cut -d' ' -f1)
        [[ "$(image_sha "$img" $((i * 4096)) 4096)" == "$rec" ]] ||
            { fail "$name: record $i (FLUSHED before the kill) is not in the image"; return 1; }
    done
    # ...and so does a new VM on the same socket of the same server process.
    boot "$name" "$name.verifier" --socket "$WORK/disk0.sock" \
        --append "E2E_MODE=verify E2E_UPTO=$last E2E_TOKEN=$tok" || return 1
    expect_serial "$name.verifier" "^VERIFIED $last records$" || return 1
    serial "$name.verifier" | grep -a '^RECORDS ' | sed 's/^/    guest: /' >&2
    wait_log "$WORK/$name.server.log" 'msg="session ended.*client=2' 5 || return 1
    stop_server "$name"
}

# 2 vCPUs, 2 queues: two blk-mq hardware queues, parallel writers pinned to each CPU.
scenario_blk_smp2_mq() {
    local name=blk-smp2-mq img="$WORK/img-blk-mq.img"
    truncate -s 64M "$img"
    initrd "$name" "$SCRIPT_DIR/guest/blk-smp2-mq.sh" || return 1
    start_server "$name" --device "virtio-blk,id=disk0,socket=$WORK/disk0.sock,backend=file,path=$img,queues=2" || return 1
    boot "$name" "$name" --socket "$WORK/disk0.sock" --smp 2 || return 1
    expect_serial "$name" '^MQ queue 0 ' || return 1
    expect_serial "$name" '^MQ queue 1 ' || return 1
    check_image_io "$name" "$img" 'cpu[01]-r[0-9]+' || return 1
    wait_log "$WORK/$name.server.log" 'msg="session ended' 5 || return 1
    stop_server "$name"
}

# The KubeVirt hook sidecar's domain edit, booted. The hook binary transforms a KubeVirt domain
# (tests/unit/deviceplugin/kubevirt_hook/testdata/plain.*) for a VMI that requests
# vfio-user.io/virtio-blk: 2; libvirt's schema must accept the result; the hook's
# --print-qemu-args gives the memory (shared memfd) and -device vfio-user-pci arguments that
# domain implies, with the container socket root /var/run/vfio-user moved to $WORK/vfu where
# the server listens (same <class>/<i>/vfio-user.sock layout as the device plugin's mounts).
# QEMU runs with exactly those arguments (not through run-guest.sh, which sets its own memory
# backend) and the guest must find both disks by serial, write and read them back.
scenario_kubevirt_hook() {
    local name=kubevirt-hook td="$E2E_REPO/tests/unit/deviceplugin/kubevirt_hook/testdata"
    local hook="${E2E_KUBEVIRT_HOOK:-$(dirname "$SERVER")/../deviceplugin/kubevirt_hook/vfio-user-kubevirt-hook}"
    local img="$WORK/img-kubevirt-hook.img" kernel="$E2E_CACHE/kernel/vmlinux" rc=0 n
    local -a args fw
    [[ -x "$hook" ]] || { fail "$name: no hook binary at $hook (build vfio-user-kubevirt-hook or set E2E_KUBEVIRT_HOOK)"; return 1; }
    command -v virt-xml-validate >/dev/null || { fail "$name: virt-xml-validate missing (Debian libvirt-clients)"; return 1; }
    "$hook" --transform-domain "$td/plain.domain.xml" --vmi "$td/plain.vmi.json" >"$WORK/$name.domain.xml" ||
        { fail "$name: the hook could not transform the domain"; return 1; }
    virt-xml-validate "$WORK/$name.domain.xml" domain >"$WORK/$name.validate.log" 2>&1 ||
        { cat "$WORK/$name.validate.log" >&2; fail "$name: libvirt's schema rejects the transformed domain"; return 1; }
    mapfile -t args < <("$hook" --print-qemu-args "$WORK/$name.domain.xml" --socket-root-on-host "$WORK/vfu")
    printf '%s\n' "${args[@]}" >"$WORK/$name.qemu-args.txt"
    n=$(grep -c '"driver":"vfio-user-pci"' "$WORK/$name.qemu-args.txt" || true)
    ((n == 2)) || { fail "$name: expected 2 vfio-user-pci devices in the domain's arguments, got $n"; return 1; }
    grep -q '^memory-backend-memfd,.*share=on' "$WORK/$name.qemu-args.txt" ||
        { fail "$name: guest memory is not a shared memfd"; return 1; }
    echo "    host: domain validates; QEMU args: $(grep -c . "$WORK/$name.qemu-args.txt") ($(grep -o 'memory-backend-memfd[^ ]*' "$WORK/$name.qemu-args.txt"))" >&2

    mkdir -p "$WORK/vfu/virtio-blk/0" "$WORK/vfu/virtio-blk/1"
    truncate -s 48M "$img"
    initrd "$name" "$SCRIPT_DIR/guest/blk-two-devices.sh" || return 1
    start_server "$name" \
        --device "virtio-blk,id=vmdisk0,socket=$WORK/vfu/virtio-blk/0/vfio-user.sock,backend=file,path=$img" \
        --device "virtio-blk,id=vmdisk1,socket=$WORK/vfu/virtio-blk/1/vfio-user.sock,backend=ram,size=32M" || return 1
    [[ -f "$kernel" ]] || kernel="$E2E_CACHE/kernel/vmlinuz"
    mapfile -t fw < <(e2e_qemu_firmware_args)
    timeout --kill-after=5 "$BOOT_TIMEOUT" "${E2E_QEMU_CMD[@]}" -accel tcg -machine q35 \
        -nographic -nic none -no-reboot -kernel "$kernel" -initrd "$WORK/initrd-$name.cpio" \
        -append "console=ttyS0 panic=-1 quiet E2E_WATCHDOG=$WATCHDOG E2E_DISKS=vmdisk0:98304,vmdisk1:65536" \
        "${fw[@]}" "${args[@]}" </dev/null >"$WORK/$name.serial.log" 2>&1 || rc=$?
    if ! serial "$name" | grep -a -q '^E2E-RESULT: PASS'; then
        serial "$name" | tail -n 40 | sed 's/^/    /' >&2
        fail "$name: the guest did not pass (QEMU exit $rc)"
        return 1
    fi
    expect_serial "$name" '^BLK-DISK vd[a-z] serial=vmdisk0 sectors=98304 ' || return 1
    expect_serial "$name" '^BLK-DISK vd[a-z] serial=vmdisk1 sectors=65536 ' || return 1
    check_image_io "$name" "$img" 'vmdisk0-a|vmdisk0-b' || return 1
    wait_log "$WORK/$name.server.log" 'msg="session ended.*device=vmdisk0' 5 || return 1
    wait_log "$WORK/$name.server.log" 'msg="session ended.*device=vmdisk1' 5 || return 1
    stop_server "$name" || return 1
    [[ -z "$(find "$WORK/vfu" -type s)" ]] || { fail "$name: the server left sockets in $WORK/vfu"; return 1; }
    rm -rf "$WORK/vfu"
}

for s in "${SCENARIOS[@]}"; do
    fn="scenario_${s//-/_}"
    if ! declare -F "$fn" >/dev/null; then
        echo "run-scenarios.sh: unknown scenario $s" >&2
        exit 2
    fi
done
ALL_START=$(date +%s%N)
for s in "${SCENARIOS[@]}"; do
    fn="scenario_${s//-/_}"
    start=$(date +%s%N)
    if "$fn"; then
        PASSED=$((PASSED + 1))
        echo "e2e: ok   - $s ($((($(date +%s%N) - start) / 1000000)) ms)"
    else
        FAILED=$((FAILED + 1))
        echo "e2e: FAIL - $s ($((($(date +%s%N) - start) / 1000000)) ms)"
        kill_bg
        if [[ -n "$SERVER_PID" ]]; then
            kill -KILL "$SERVER_PID" 2>/dev/null || true
            wait "$SERVER_PID" 2>/dev/null || true
            SERVER_PID=""
        fi
        if grep -q -E 'level=(warn|error)' "$WORK/$s.server.log" 2>/dev/null; then
            echo "    server warnings/errors:" >&2
            grep -E 'level=(warn|error)' "$WORK/$s.server.log" | head -n 5 | sed 's/^/      /' >&2
        fi
        keep_logs "$s"
    fi
    if [[ -n "$KEEP_LOGS" ]]; then
        mkdir -p "$KEEP_LOGS/$s"
        cp "$WORK/$s".* "$KEEP_LOGS/$s"/ 2>/dev/null || true
    fi
    rm -f "$WORK"/img-* "$WORK"/initrd-* "$WORK"/*.sock "$WORK/$s".*
done
echo "e2e: total $((($(date +%s%N) - ALL_START) / 1000000)) ms for ${#SCENARIOS[@]} scenario(s)"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
