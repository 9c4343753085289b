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
#   blk-handoff         the server is replaced 10 times (--take-over, a planned handoff)
#                       while the guest writes, fsyncs and reads back records on two
#                       file-backed disks served by two poll threads: no I/O error, no reset,
#                       every record in both images
#   kubevirt-libvirt    vfio-user-kubevirt-hook edits a KubeVirt domain (VMI requesting
#                       vfio-user.io/virtio-blk: 2); libvirtd from the trixie root (private
#                       mount namespace) defines and starts it, QEMU runs as libvirt-qemu on
#                       sockets owned for it; the guest sees both disks; virsh shutdown (ACPI)
#                       ends it; nothing libvirtd started is left
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
blk-qemu-killed blk-smp2-mq blk-handoff kubevirt-libvirt
kubevirt-libvirt runs vfio-user-kubevirt-hook from the server's build dir (E2E_KUBEVIRT_HOOK
overrides), python3, and libvirtd/virsh from the e2e root (prepare-root.sh installs them).
EOF2
}

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/e2e/lib.sh
source "$SCRIPT_DIR/lib.sh"
SERVER="$E2E_REPO/build/server/vfio-user-server"
BOOT_TIMEOUT="${E2E_BOOT_TIMEOUT:-60}"
ALL_SCENARIOS=(sample-device blk-basic blk-fs-host-verify blk-reboot blk-two-devices blk-two-vms
    blk-qemu-killed blk-smp2-mq blk-handoff kubevirt-libvirt)
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
    ! declare -F libvirt_cleanup >/dev/null || libvirt_cleanup
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

# ---- libvirt (kubevirt-libvirt) ------------------------------------------------------------
# libvirtd of the trixie root runs as root in a private mount namespace (unshare -m), chrooted
# into the root. Everything it writes lives in tmpfs mounts of that namespace (/run, /etc/libvirt,
# /var/lib/libvirt, /var/cache/libvirt, /tmp) or in $WORK (its log dir, bound to
# /var/log/libvirt), so it leaves nothing in the cached root or on the host. The namespace ends,
# and its mounts with it, when the last process in it (libvirtd, QEMU) is gone; libvirtd_stop
# checks that none is left. virsh runs from the root in the same namespace (nsenter).
LIBVIRTD_PID=""   # libvirtd (run without --daemon: a child of this script)
LIBVIRTD_NS=""    # its mount namespace ("mnt:[inode]"), to find whatever it started
LIBVIRT_DOMAIN="" # the domain to destroy if a scenario fails half-way
LIBVIRT_DIR=""    # libvirtd_start's DIR (conf/, log/, share/) and the scenario's name, so
LIBVIRT_NAME=""   # that libvirt_cleanup can keep QEMU's log and the serial log

# Run inside the namespace: mounts, then libvirtd. Arguments: root, config dir, log dir, then
# any number of "SRC:DEST[:ro]" (bind mount SRC at DEST, a path in the root's fresh /run) and
# "mkdir:DIR:UID:GID" (a directory in that /run with this owner). Paths without ":".
# shellcheck disable=SC2016 # expanded by the inner bash
LIBVIRTD_NS_SCRIPT='
root=$1 conf=$2 logdir=$3
shift 3
# Fresh, empty and private: runtime dir (libvirtd sockets and pid file, the domain status XML,
# the mount points below), configuration (with our two files: domains that virsh defines are
# written here), state and capability cache. tmpfs: gone with the namespace.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/etc/libvirt"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/var/lib/libvirt"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/var/cache/libvirt"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
# Logs (libvirtd writes the QEMU log there) stay in the test dir, to keep them on failure.
mount --bind "$logdir" "$root/var/log/libvirt"
# The kernel interfaces libvirtd and QEMU read. A new sysfs instance, read-only, holds no
# cgroup mounts: libvirt uses none anyway (cgroup_controllers = [ ]). /dev: the static nodes
# that debootstrap made in the root (null, zero, urandom, ...); TCG needs no /dev/kvm.
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
cp "$conf/libvirtd.conf" "$conf/qemu.conf" "$root/etc/libvirt/"
for m in "$@"; do
    IFS=: read -r src dest uid gid <<<"$m"
    mkdir -p "$root/run/$dest"
    if [[ "$src" == mkdir ]]; then
        chown "$uid:$gid" "$root/run/$dest"
    elif [[ "$uid" == ro ]]; then
        mount --bind -o ro "$src" "$root/run/$dest"
    else
        mount --bind "$src" "$root/run/$dest"
    fi
done
exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root \
    chroot "$root" /usr/sbin/libvirtd --config /etc/libvirt/libvirtd.conf
'

# lv_run CMD...: a program of the root, in libvirtd's mount namespace and root directory (at
# most 60 s).
lv_run() {
    timeout --kill-after=5 60 nsenter --target "$LIBVIRTD_PID" --mount --root --wd -- \
        /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root "$@"
}

# lv_virsh ARGS...: the root's virsh against that libvirtd, at most 60 s.
lv_virsh() {
    timeout --kill-after=5 60 nsenter --target "$LIBVIRTD_PID" --mount --root --wd -- \
        /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root \
        virsh --quiet --connect qemu:///system "$@"
}

# lv_ns_pids: the processes in libvirtd's mount namespace.
lv_ns_pids() {
    local p
    [[ -n "$LIBVIRTD_NS" ]] || return 0
    for p in /proc/[0-9]*; do
        [[ "$(readlink "$p/ns/mnt" 2>/dev/null)" == "$LIBVIRTD_NS" ]] && echo "${p#/proc/}"
    done
    return 0
}

# libvirtd_start NAME DIR MOUNT...: write the configuration into DIR/conf, start libvirtd
# (log: $WORK/NAME.libvirtd.log) and wait (at most 20 s) until virsh gets an answer.
libvirtd_start() {
    local name=$1 dir=$2 i
    shift 2
    LIBVIRT_DIR=$dir
    LIBVIRT_NAME=$name
    mkdir -p "$dir/conf" "$dir/log"
    # libvirtd.conf: only root in this namespace talks to it (the test, through virsh).
    cat >"$dir/conf/libvirtd.conf" <<'EOF2'
# e2e kubevirt-libvirt: libvirtd started by run-scenarios.sh (not --listen: no TCP or TLS).
# Its unix sockets are in the private namespace's own /run: root only (0700), and no polkit
# check, since no polkitd runs here (auth "none").
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
# Warnings and errors to stderr, which run-scenarios.sh keeps (<scenario>.libvirtd.log).
log_outputs = "3:stderr"
EOF2
    # qemu.conf: the sandbox settings of KubeVirt's virt-launcher (cmd/virt-launcher/qemu.conf).
    cat >"$dir/conf/qemu.conf" <<'EOF2'
# e2e kubevirt-libvirt: QEMU driver settings, most as in KubeVirt's virt-launcher.
# No cgroups: the test machine's cgroup tree is not libvirt's to change (in KubeVirt the pod's
# cgroup belongs to the kubelet); KubeVirt has the same two lines.
cgroup_controllers = [ ]
# No private /dev namespace per QEMU: QEMU sees the root's static /dev (KubeVirt: the same).
namespaces = [ ]
# No SELinux/AppArmor labels (neither is set up in the root). The DAC driver still runs QEMU as
# libvirt's default unprivileged user (user and group are not set: Debian's default is
# libvirt-qemu:libvirt-qemu; KubeVirt sets qemu, uid 107) and hands it the files it needs
# (kernel, initrd, serial log) by chown (dynamic_ownership defaults to 1, as in KubeVirt).
security_driver = "none"
# Give files back to root:root when the domain stops instead of remembering their owners in
# trusted.* xattrs (KubeVirt: remember_owner = 0 too).
remember_owner = 0
# QEMU's stdout/stderr go to /var/log/libvirt/qemu/<domain>.log written by libvirtd itself: no
# virtlogd to run and stop (KubeVirt runs virtlogd: "logd").
stdio_handler = "file"
EOF2
    # --pdeathsig: libvirtd (unshare, bash, env and chroot all exec into it) is killed if this
    # script dies without cleaning up (SIGKILL, an outer timeout). QEMU, which libvirt keeps
    # running on purpose, ends on its own then: the guest powers off after its watchdog.
    setpriv --pdeathsig KILL -- \
        unshare --mount --propagation private -- /bin/bash -euo pipefail -c "$LIBVIRTD_NS_SCRIPT" \
        libvirtd-ns "$E2E_ROOT" "$dir/conf" "$dir/log" "$@" >"$WORK/$name.libvirtd.log" 2>&1 &
    LIBVIRTD_PID=$!
    # Ready: the process is libvirtd itself, chrooted (until the chroot, /proc/PID/root is the
    # host's /, where another libvirtd's socket could be), and its socket is there.
    for ((i = 0; i < 200; i++)); do
        if [[ "$(readlink "/proc/$LIBVIRTD_PID/exe" 2>/dev/null)" == */libvirtd &&
            "$(readlink "/proc/$LIBVIRTD_PID/root" 2>/dev/null)" != / &&
            -S /proc/$LIBVIRTD_PID/root/run/libvirt/libvirt-sock ]]; then
            break
        fi
        kill -0 "$LIBVIRTD_PID" 2>/dev/null || break
        sleep 0.1
    done
    LIBVIRTD_NS=$(readlink "/proc/$LIBVIRTD_PID/ns/mnt" 2>/dev/null || true)
    if [[ -z "$LIBVIRTD_NS" || "$LIBVIRTD_NS" == "$(readlink /proc/self/ns/mnt)" ]] ||
        ! lv_virsh version >"$WORK/$name.virsh-version.log" 2>&1; then
        cat "$WORK/$name.libvirtd.log" "$WORK/$name.virsh-version.log" >&2 2>/dev/null
        fail "libvirtd did not start (log above)"
        return 1
    fi
}

# libvirtd_stop: SIGTERM (at most 15 s, then SIGKILL). libvirtd leaves running domains alone,
# so callers shut them down or destroy them first. Fails if anything is left in its mount
# namespace (then killed), which also means that its mounts are gone with the namespace.
libvirtd_stop() {
    local rc=0 i left
    [[ -n "$LIBVIRTD_PID" ]] || return 0
    kill -TERM "$LIBVIRTD_PID" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$LIBVIRTD_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$LIBVIRTD_PID" 2>/dev/null; then
        echo "e2e: libvirtd did not stop within 15 s of SIGTERM; killing it" >&2
        kill -KILL "$LIBVIRTD_PID" 2>/dev/null || true
        rc=1
    fi
    wait "$LIBVIRTD_PID" 2>/dev/null || { echo "e2e: libvirtd exited with status $?" >&2; rc=1; }
    LIBVIRTD_PID=""
    for ((i = 0; i < 50; i++)); do
        left=$(lv_ns_pids)
        [[ -n "$left" ]] || break
        sleep 0.1
    done
    if [[ -n "$left" ]]; then
        echo "e2e: left in libvirtd's mount namespace after it stopped (killed now):" >&2
        # shellcheck disable=SC2086 # pids
        ps -o pid,user,args -p "$(echo $left | tr ' ' ,)" >&2 || true
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
        rc=1
    fi
    LIBVIRTD_NS=""
    return "$rc"
}

# libvirt_cleanup: after a failure, or on exit: the domain destroyed, libvirtd stopped.
libvirt_cleanup() {
    local f
    [[ -n "$LIBVIRTD_PID" ]] || return 0
    [[ -z "$LIBVIRT_DOMAIN" ]] || lv_virsh destroy "$LIBVIRT_DOMAIN" >/dev/null 2>&1 || true
    LIBVIRT_DOMAIN=""
    libvirtd_stop || true
    for f in "$LIBVIRT_DIR"/log/qemu/*.log; do
        [[ -f "$f" ]] && cp "$f" "$WORK/$LIBVIRT_NAME.qemu.log"
    done
    [[ -f "$WORK/$LIBVIRT_NAME.serial.log" || ! -f "$LIBVIRT_DIR/share/serial.log" ]] ||
        tr -d '\r' <"$LIBVIRT_DIR/share/serial.log" >"$WORK/$LIBVIRT_NAME.serial.log"
}

# lv_state DOMAIN: "running", "shut off", ... (empty if virsh fails).
lv_state() { lv_virsh domstate "$1" 2>/dev/null | head -n 1 || true; }

# Planned handoffs under guest I/O. The server runs two file-backed disks on two poll threads
# with a handoff socket; while the guest (guest/blk-handoff.sh) writes, fsyncs, reads back and
# compares records on both, the host starts a successor with --take-over every few records, 10
# times. Each old server must exit 0 after "handoff complete"; the guest must see no I/O error
# and no reset (the kernel log is checked too) and finish every record; both images must hold
# every record afterwards.
scenario_blk_handoff() {
    local name=blk-handoff a="$WORK/img-handoff-a.img" b="$WORK/img-handoff-b.img" tok i n d
    local handoffs=0 want=10 records=150 progress next_at old_pid old_log cur rc rec
    local -a args
    tok=$(token)
    truncate -s 32M "$a" "$b"
    initrd "$name" "$SCRIPT_DIR/guest/blk-handoff.sh" || return 1
    args=(--poll-threads 2 --handoff-socket "$WORK/$name.handoff" --control-socket "$WORK/$name.control"
        --device "virtio-blk,id=hdA,socket=$WORK/hdA.sock,backend=file,path=$a"
        --device "virtio-blk,id=hdB,socket=$WORK/hdB.sock,backend=file,path=$b")
    # Each server generation logs to $name.gN.server.log (generation 0 is the first).
    cur=$name.g0
    start_server "$cur" "${args[@]}" || return 1
    boot_bg "$name" "$name" --socket "$WORK/hdA.sock" --socket "$WORK/hdB.sock" \
        --append "E2E_DISKS=hdA,hdB E2E_TOKEN=$tok E2E_RECORDS=$records"
    next_at=5
    for ((i = 0; i < BOOT_TIMEOUT * 10 && handoffs < want; i++)); do
        kill -0 "$BOOT_PID" 2>/dev/null || break
        progress=$(serial "$name" 2>/dev/null | sed -n 's/^RECORD \([0-9]*\)$/\1/p' | tail -n 1)
        if [[ -n "$progress" && "$progress" -ge "$next_at" ]]; then
            old_pid=$SERVER_PID
            old_log=$WORK/$cur.server.log
            handoffs=$((handoffs + 1))
            cur=$name.g$handoffs
            if ! start_server "$cur" "${args[@]}" --take-over "$WORK/$name.handoff"; then
                # The old server serves on after a failed handoff: it is still ours to stop.
                kill -TERM "$old_pid" 2>/dev/null || true
                wait "$old_pid" 2>/dev/null || true
                fail "$name: successor $handoffs did not start (the old server: $(basename "$old_log"))"
                return 1
            fi
            # The old server must exit by itself once the successor serves (at most 20 s).
            for ((n = 0; n < 200; n++)); do
                kill -0 "$old_pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$old_pid" 2>/dev/null; then
                kill -KILL "$old_pid" 2>/dev/null || true
                wait "$old_pid" 2>/dev/null || true
                fail "$name: the server replaced in handoff $handoffs did not exit within 20 s"
                return 1
            fi
            rc=0
            wait "$old_pid" || rc=$?
            ((rc == 0)) || { fail "$name: the server replaced in handoff $handoffs exited $rc"; return 1; }
            grep -q 'msg="handoff complete' "$old_log" ||
                { fail "$name: handoff $handoffs: the old server did not log a complete handoff"; return 1; }
            grep -q 'msg="took the devices over' "$WORK/$cur.server.log" ||
                { fail "$name: handoff $handoffs: the successor did not take the devices"; return 1; }
            echo "    host: handoff $handoffs at record $progress ($(grep -o 'suspended_ms=[0-9]*' "$old_log"))" >&2
            next_at=$((progress + 5))
        fi
        sleep 0.1
    done
    if ((handoffs != want)); then
        kill_bg
        fail "$name: only $handoffs of $want handoffs happened before the guest finished or stopped"
        return 1
    fi
    if ! wait "$BOOT_PID"; then
        BG_PIDS=()
        serial "$name" | tail -n 30 | sed 's/^/    /' >&2
        fail "$name: the guest did not pass"
        return 1
    fi
    BG_PIDS=()
    expect_serial "$name" "^E2E-HANDOFF-GUEST: $records records on each disk, all read back" || return 1
    # Every record is in both backing files.
    for ((n = 1; n <= records; n++)); do
        for d in "hdA:$a" "hdB:$b"; do
            rec=$(yes "E2E-REC $n ${d%%:*} $tok" | head -c 4096 | sha256sum | cut -d' ' -f1)
            [[ "$(image_sha "${d#*:}" $((n * 4096)) 4096)" == "$rec" ]] ||
                { fail "$name: record $n of ${d%%:*} is not in its image"; return 1; }
        done
    done
    echo "    host: all $records records of both disks are in the images after $handoffs handoffs" >&2
    # The serving server counts all of them (the count travels with the devices).
    "$(dirname "$SERVER")/vfio-user-ctl" stats --control-socket "$WORK/$name.control" >"$WORK/$name.stats.txt" 2>&1 ||
        { cat "$WORK/$name.stats.txt" >&2; fail "$name: vfio-user-ctl stats failed"; return 1; }
    grep -q "^handoffs: $want " "$WORK/$name.stats.txt" ||
        { cat "$WORK/$name.stats.txt" >&2; fail "$name: the server does not count $want handoffs"; return 1; }
    echo "    host: vfio-user-ctl stats: $(grep '^handoffs:' "$WORK/$name.stats.txt")" >&2
    # The replaced servers logged no errors either.
    for ((n = 0; n < handoffs; n++)); do
        if grep -E 'level=error|device needs reset|request failed' "$WORK/$name.g$n.server.log" >&2; then
            fail "$name: server generation $n logged the errors above"
            return 1
        fi
    done
    wait_log "$WORK/$cur.server.log" 'msg="session ended.*device=hdA' 5 || return 1
    wait_log "$WORK/$cur.server.log" 'msg="session ended.*device=hdB' 5 || return 1
    stop_server "$cur" || return 1
    [[ ! -e "$WORK/$name.handoff" ]] || { fail "$name: the last server left its handoff socket"; return 1; }
}

# The KubeVirt hook's domain, started by libvirt. vfio-user-kubevirt-hook --transform-domain edits
# the domain KubeVirt generated (tests/unit/deviceplugin/kubevirt_hook/testdata/plain.*) for a
# VMI that requests vfio-user.io/virtio-blk: 2; kubevirt-sandbox-domain.py changes only what this
# sandbox forces (TCG, emulator path, upstream machine type, direct kernel boot, KubeVirt's own
# disk and interface removed, a serial log) and keeps the hook's <memoryBacking> and
# <qemu:commandline>. libvirtd (above) defines and starts it and runs QEMU as its default user
# libvirt-qemu, which may open the device sockets because the server gives them that owner
# (--device owner=UID:GID,mode=0660). The sockets keep the launcher pod's path: the server's
# socket dir $WORK/vfu is mounted at /var/run/vfio-user in libvirtd's namespace, as the device
# plugin mounts each device's directory into virt-launcher. The guest (guest/blk-two-devices.sh)
# finds both disks by serial, writes and reads them; `virsh shutdown --mode acpi` presses the
# ACPI power button, the guest powers off (/init's E2E_POWER_BUTTON) and the domain must reach
# "shut off"; then libvirtd stops and nothing it started may be left.
scenario_kubevirt_libvirt() {
    local name=kubevirt-libvirt td="$E2E_REPO/tests/unit/deviceplugin/kubevirt_hook/testdata"
    local hook="${E2E_KUBEVIRT_HOOK:-$(dirname "$SERVER")/../deviceplugin/kubevirt_hook/vfio-user-kubevirt-hook}"
    local img="$WORK/img-kubevirt-libvirt.img" lv="$WORK/libvirt" kernel=vmlinux
    local dom=default_vm-blk vmuid=5b0f5c9e-3a51-5d1c-9a35-1f0d2a0c7e11
    local qemu_uid qemu_gid qpid state i n arg slog
    [[ -x "$hook" ]] || { fail "$name: no hook binary at $hook (build vfio-user-kubevirt-hook or set E2E_KUBEVIRT_HOOK)"; return 1; }
    # libvirt's default QEMU user and group (Debian: libvirt-qemu:libvirt-qemu), from the root.
    qemu_uid=$(awk -F: '$1 == "libvirt-qemu" { print $3 }' "$E2E_ROOT/etc/passwd")
    qemu_gid=$(awk -F: '$1 == "libvirt-qemu" { print $3 }' "$E2E_ROOT/etc/group")
    [[ -n "$qemu_uid" && -n "$qemu_gid" ]] || { fail "$name: no libvirt-qemu user/group in the root (prepare-root.sh)"; return 1; }

    "$hook" --transform-domain "$td/plain.domain.xml" --vmi "$td/plain.vmi.json" >"$WORK/$name.hook-domain.xml" ||
        { fail "$name: the hook could not transform the domain"; return 1; }
    mkdir -p "$lv/share" "$WORK/vfu"
    [[ -f "$E2E_CACHE/kernel/vmlinux" ]] || kernel=vmlinuz
    slog="$lv/share/serial.log"
    python3 "$SCRIPT_DIR/kubevirt-sandbox-domain.py" "$WORK/$name.hook-domain.xml" "$WORK/$name.domain.xml" \
        --emulator /usr/bin/qemu-system-x86_64 --kernel "/run/e2e/kernel/$kernel" \
        --initrd /run/e2e/share/initrd.cpio --serial-log /run/e2e/share/serial.log \
        --cmdline "console=ttyS0 panic=-1 quiet E2E_WATCHDOG=$WATCHDOG E2E_POWER_BUTTON=30 E2E_DISKS=vmdisk0:98304,vmdisk1:65536" \
        2>"$WORK/$name.sandbox.log" || { cat "$WORK/$name.sandbox.log" >&2; fail "$name: cannot adapt the domain"; return 1; }
    sed 's/^/    /' "$WORK/$name.sandbox.log" >&2
    cp "$WORK/$name.hook-domain.xml" "$WORK/$name.domain.xml" "$lv/share/"

    truncate -s 48M "$img"
    initrd "$name" "$SCRIPT_DIR/guest/blk-two-devices.sh" --modules "virtio_pci virtio_blk nvme ext4 button evdev" || return 1
    cp "$WORK/initrd-$name.cpio" "$lv/share/initrd.cpio"
    : >"$slog"
    # The device sockets as the device plugin lays them out, owned for libvirt's QEMU user.
    start_server "$name" \
        --device "virtio-blk,id=vmdisk0,socket=$WORK/vfu/virtio-blk/0/vfio-user.sock,backend=file,path=$img,owner=$qemu_uid:$qemu_gid,mode=0660" \
        --device "virtio-blk,id=vmdisk1,socket=$WORK/vfu/virtio-blk/1/vfio-user.sock,backend=ram,size=32M,owner=$qemu_uid:$qemu_gid,mode=0660" || return 1
    # Mounts in libvirtd's /run: the launcher pod's /var/run/vfio-user, the e2e kernel (read
    # only), this test's files; the directory virt-launcher makes for the VM's serial and VNC
    # sockets, owned by QEMU's user.
    libvirtd_start "$name" "$lv" "$WORK/vfu:vfio-user" "$E2E_CACHE/kernel:e2e/kernel:ro" \
        "$lv/share:e2e/share" "mkdir:kubevirt-private/$vmuid:$qemu_uid:$qemu_gid" || return 1

    lv_run virt-xml-validate "/run/e2e/share/$name.hook-domain.xml" domain >"$WORK/$name.validate.log" 2>&1 ||
        { cat "$WORK/$name.validate.log" >&2; fail "$name: libvirt's schema rejects the hook's domain"; return 1; }
    lv_virsh define --validate "/run/e2e/share/$name.domain.xml" >"$WORK/$name.virsh.log" 2>&1 ||
        { cat "$WORK/$name.virsh.log" >&2; fail "$name: virsh define refused the domain"; return 1; }
    LIBVIRT_DOMAIN=$dom
    # libvirt keeps the hook's memory backing and QEMU arguments as they were.
    lv_virsh dumpxml --inactive "$dom" >"$WORK/$name.defined.xml" 2>>"$WORK/$name.virsh.log" ||
        { fail "$name: virsh dumpxml failed"; return 1; }
    python3 "$SCRIPT_DIR/kubevirt-sandbox-domain.py" --compare-kept "$WORK/$name.hook-domain.xml" \
        "$WORK/$name.defined.xml" >"$WORK/$name.compare.log" 2>&1 ||
        { cat "$WORK/$name.compare.log" >&2; fail "$name: the defined domain's <memoryBacking> or <qemu:commandline> differs from the hook's"; return 1; }
    lv_virsh start "$dom" >>"$WORK/$name.virsh.log" 2>&1 ||
        { cat "$WORK/$name.virsh.log" >&2; fail "$name: virsh start failed (QEMU's log: $name.qemu.log)"; return 1; }

    # QEMU as libvirt started it: its user, the hook's vfio-user-pci arguments word for word,
    # guest RAM a shared memfd (the hook's <memoryBacking>).
    qpid=$(cat "/proc/$LIBVIRTD_PID/root/run/libvirt/qemu/$dom.pid" 2>/dev/null || true)
    [[ -n "$qpid" && -d "/proc/$qpid" ]] || { fail "$name: no QEMU process for $dom"; return 1; }
    tr '\0' '\n' <"/proc/$qpid/cmdline" >"$WORK/$name.qemu-cmdline.txt"
    [[ "$(stat -c %u "/proc/$qpid")" == "$qemu_uid" ]] ||
        { fail "$name: QEMU runs as uid $(stat -c %u "/proc/$qpid"), not libvirt-qemu ($qemu_uid)"; return 1; }
    n=0
    while read -r arg; do
        grep -qxF -- "$arg" "$WORK/$name.qemu-cmdline.txt" ||
            { fail "$name: QEMU's command line lacks the hook's argument $arg"; return 1; }
        n=$((n + 1))
    done < <(grep -o '<qemu:arg value="[^"]*"' "$WORK/$name.hook-domain.xml" | sed 's/^<qemu:arg value="//; s/"$//; s/&quot;/"/g')
    ((n == 4)) || { fail "$name: expected 4 <qemu:arg> (2 x -device vfio-user-pci) from the hook, found $n"; return 1; }
    grep -q '"qom-type":"memory-backend-memfd".*"share":true' "$WORK/$name.qemu-cmdline.txt" ||
        { fail "$name: guest RAM is not a shared memfd in QEMU's command line"; return 1; }
    echo "    host: libvirt started QEMU (pid $qpid, uid $qemu_uid libvirt-qemu) with the hook's 2 vfio-user-pci devices and shared memfd RAM" >&2

    # The guest's result, then the ACPI power button.
    for ((i = 0; i < BOOT_TIMEOUT * 10; i++)); do
        grep -a -q -E '^E2E-RESULT: FAIL|^E2E: (waiting for the|no) ACPI power button' "$slog" && break
        if ((i % 10 == 9)) && [[ "$(lv_state "$dom")" != running ]]; then break; fi
        sleep 0.1
    done
    tr -d '\r' <"$slog" >"$WORK/$name.serial.log"
    if ! grep -a -q '^E2E-RESULT: PASS' "$WORK/$name.serial.log"; then
        serial "$name" | tail -n 40 | sed 's/^/    /' >&2
        fail "$name: the guest did not pass (domain state: $(lv_state "$dom"))"
        return 1
    fi
    expect_serial "$name" 'waiting for the ACPI power button' || return 1
    lv_virsh shutdown --mode acpi "$dom" >>"$WORK/$name.virsh.log" 2>&1 ||
        { cat "$WORK/$name.virsh.log" >&2; fail "$name: virsh shutdown failed"; return 1; }
    for ((i = 0; i < 40; i++)); do
        state=$(lv_state "$dom")
        [[ "$state" == "shut off" ]] && break
        sleep 0.5
    done
    tr -d '\r' <"$slog" >"$WORK/$name.serial.log"
    [[ "$state" == "shut off" ]] || { fail "$name: the domain is '$state', not 'shut off', 20 s after virsh shutdown"; return 1; }
    expect_serial "$name" '^E2E: power button pressed' || return 1
    echo "    host: virsh shutdown --mode acpi: the guest powered off, the domain is shut off" >&2
    lv_virsh undefine "$dom" >>"$WORK/$name.virsh.log" 2>&1 || { fail "$name: virsh undefine failed"; return 1; }
    LIBVIRT_DOMAIN=""
    cp "$lv/log/qemu/$dom.log" "$WORK/$name.qemu.log" 2>/dev/null || true
    # Nothing may be left in libvirtd's mount namespace (libvirtd_stop checks): its mounts, which
    # only that namespace could see, are then gone with it.
    libvirtd_stop || { fail "$name: libvirtd did not stop cleanly"; return 1; }
    # Under the tmpfs mounts, the root's own directories must be untouched.
    [[ -z "$(find "$E2E_ROOT"/{run,tmp,etc/libvirt,var/lib/libvirt,var/cache/libvirt,var/log/libvirt} \
        -newer "$WORK/$name.hook-domain.xml" -print -quit 2>/dev/null)" ]] ||
        { fail "$name: libvirt wrote into the cached root"; return 1; }

    expect_serial "$name" '^BLK-DISK vd[a-z] serial=vmdisk0 sectors=98304 ' || return 1
    expect_serial "$name" '^BLK-DISK vd[a-z] serial=vmdisk1 sectors=65536 ' || return 1
    check_image_io "$name" "$img" 'vmdisk0-a|vmdisk0-b' || return 1
    wait_log "$WORK/$name.server.log" 'msg="session ended.*device=vmdisk0' 5 || return 1
    wait_log "$WORK/$name.server.log" 'msg="session ended.*device=vmdisk1' 5 || return 1
    stop_server "$name" || return 1
    [[ -z "$(find "$WORK/vfu" -type s)" ]] || { fail "$name: the server left sockets in $WORK/vfu"; return 1; }
    rm -rf "$WORK/vfu" "$lv"
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
        libvirt_cleanup
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
