#!/usr/bin/env bash
# make-initramfs.sh - build a busybox initramfs for an e2e guest test.
#
# Usage: tests/e2e/make-initramfs.sh [options] OUT.cpio[.gz] GUEST_SCRIPT
#
# The image is two concatenated cpio archives, gzip'ed each if OUT ends in .gz (the kernel
# unpacks both; an uncompressed image boots ~0.3 s faster under TCG, a .gz one is 3x smaller):
#   1. a cached base (.cache/e2e/initramfs/base-<key>.cpio[.gz]), rebuilt only when the
#      root's packages, the kernel or this script change:
#        /bin/busybox (+ applet links), /init, /lib/e2e.sh (helpers for test scripts),
#        kernel modules (decompressed from .ko.xz; the list and load order are computed
#        from modules.dep / modules.softdep / modules.alias of the root's kernel),
#        a reduced modules.dep so that busybox modprobe also works,
#        mke2fs/mkfs.ext4, e2fsck/fsck.ext4 and lspci with their shared libraries;
#   2. a small per-test archive with GUEST_SCRIPT as /test.sh (+ --add files).
#
# /init mounts proc, sysfs and devtmpfs, loads the modules, runs `sh /test.sh`, prints
# "E2E-RESULT: PASS" (exit 0) or "E2E-RESULT: FAIL <reason>" and powers off (poweroff -f).
# With E2E_POWER_BUTTON=SECONDS on the kernel command line it first waits (at most SECONDS)
# for the ACPI power button (needs --modules with button and evdev), as a guest under libvirt
# must for `virsh shutdown`.
# With E2E_WATCHDOG=SECONDS on the kernel command line, a background watchdog prints the
# processes and kernel messages, "E2E-RESULT: FAIL watchdog ..." and powers off when there is
# no result after SECONDS of uptime (a hung module probe or I/O then fails fast and visibly).
# Requires tests/e2e/prepare-root.sh to have run.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/e2e/make-initramfs.sh [options] OUT.cpio[.gz] GUEST_SCRIPT

Build a busybox initramfs (gzip'ed if OUT ends in .gz; a plain .cpio boots ~0.3 s faster) whose /init loads the e2e kernel modules, runs GUEST_SCRIPT
(as /test.sh, with busybox sh), prints "E2E-RESULT: PASS" or "E2E-RESULT: FAIL <reason>"
on the console and powers the guest off.

Kernel command line words for /init: E2E_WATCHDOG=SECONDS (fail with what hung when there is
no result after SECONDS of uptime), E2E_POWER_BUTTON=SECONDS (after the result, wait at most
SECONDS for the ACPI power button, e.g. virsh shutdown, before powering off; needs
--modules with button and evdev).

GUEST_SCRIPT conventions: exit 0 = pass, non-zero = fail. `. /lib/e2e.sh` gives
e2e_fail REASON (fail with that reason), e2e_log MSG, e2e_wait_for PATH [SECONDS].
Guest tools: busybox applets (dd, sha256sum, md5sum, ...), mkfs.ext4, fsck.ext4, lspci.

Options:
  --modules "M1 M2 ..."  top-level modules to load (default: "virtio_pci virtio_blk nvme ext4");
                         dependencies are added from modules.dep / modules.softdep
  --add SRC[:DEST]       also put file SRC at DEST (default /SRC's basename) in the image;
                         repeatable
  --help                 show this help

Environment: E2E_CACHE (default <repo>/.cache/e2e)
EOF
}

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/e2e/lib.sh
source "$SCRIPT_DIR/lib.sh"

MODULES="virtio_pci virtio_blk nvme ext4"
ADDS=()
POSITIONAL=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --modules) MODULES="${2:?--modules needs a value}"; shift ;;
        --add) ADDS+=("${2:?--add needs a value}"); shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; POSITIONAL+=("$@"); break ;;
        -*) echo "make-initramfs.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
        *) POSITIONAL+=("$1") ;;
    esac
    shift
done
if [[ ${#POSITIONAL[@]} -ne 2 ]]; then
    usage >&2
    exit 2
fi
OUT="${POSITIONAL[0]}"
GUEST_SCRIPT="${POSITIONAL[1]}"
[[ -f "$GUEST_SCRIPT" ]] || { echo "make-initramfs.sh: no such guest script: $GUEST_SCRIPT" >&2; exit 2; }

log() { echo "make-initramfs: $*" >&2; }

if [[ ! -f "$E2E_CACHE/root-packages.stamp" ]]; then
    echo "make-initramfs.sh: $E2E_ROOT is not prepared; run tests/e2e/prepare-root.sh" >&2
    exit 1
fi
KVER="$(e2e_kernel_version_from_root)"
MODDIR="$E2E_ROOT/usr/lib/modules/$KVER"

# Dynamically linked tools copied from the root: path in root -> extra names (links).
TOOLS=(
    "usr/sbin/mke2fs:mkfs.ext4 mkfs.ext3 mkfs.ext2"
    "usr/sbin/e2fsck:fsck.ext4 fsck.ext3 fsck.ext2"
    "usr/bin/lspci:"
)

# --- module resolution ---------------------------------------------------------------
declare -A MOD_PATH=()    # normalized name -> path relative to MODDIR (from modules.dep)
declare -A MOD_DEPS=()    # normalized name -> space separated dep paths
declare -A MOD_BUILTIN=() # normalized name -> 1
declare -A MOD_SOFTPRE=() # normalized name -> space separated "pre:" names (may be aliases)
declare -A VISITED=()
ORDER=()   # "name path required|optional" in load order
BUILTINS=() # requested modules that are built into the kernel

# norm PATH_OR_NAME: module name with '-' as '_', in REPLY (no subshell: called ~10^4 times).
norm() { REPLY="${1##*/}"; REPLY="${REPLY%%.ko*}"; REPLY="${REPLY//-/_}"; }

load_module_db() {
    local path deps line name
    while IFS=: read -r path deps; do
        norm "$path"
        name="$REPLY"
        MOD_PATH[$name]="$path"
        MOD_DEPS[$name]="${deps# }"
    done <"$MODDIR/modules.dep"
    while read -r line; do
        [[ -n "$line" ]] || continue
        norm "$line"
        MOD_BUILTIN[$REPLY]=1
    done <"$MODDIR/modules.builtin"
    # "softdep MOD pre: A B post: C" -> keep the pre: part
    while read -r line; do
        [[ "$line" == softdep\ * ]] || continue
        read -r _ name rest <<<"$line"
        rest="${rest#*pre: }"
        [[ "$line" == *"pre: "* ]] || continue
        rest="${rest%%post:*}"
        norm "$name"
        MOD_SOFTPRE[$REPLY]="$rest"
    done <"$MODDIR/modules.softdep"
}

# Names a module alias (e.g. crypto-crc32c) resolves to.
resolve_alias() {
    awk -v a="$1" '$1 == "alias" && $2 == a { print $3 }' "$MODDIR/modules.alias" | sort -u
}

# visit NAME required|optional: post-order DFS so dependencies load first.
visit() {
    local name want="$2" dep target
    norm "$1"
    name="$REPLY"
    [[ -n "${VISITED[$name]:-}" ]] && return 0
    VISITED[$name]=1
    if [[ -z "${MOD_PATH[$name]:-}" ]]; then
        if [[ -n "${MOD_BUILTIN[$name]:-}" ]]; then
            BUILTINS+=("$name")
            return 0
        fi
        local aliases
        aliases="$(resolve_alias "$1")"
        if [[ -n "$aliases" ]]; then
            for target in $aliases; do visit "$target" optional; done
            return 0
        fi
        if [[ "$want" == required ]]; then
            echo "make-initramfs.sh: module $1 is neither in modules.dep nor built in" >&2
            exit 1
        fi
        return 0
    fi
    for dep in ${MOD_SOFTPRE[$name]:-}; do visit "$dep" optional; done
    # modules.dep lists the full transitive closure; recursing gives a valid order.
    for dep in ${MOD_DEPS[$name]}; do visit "$dep" "$want"; done
    ORDER+=("$name ${MOD_PATH[$name]} $want")
}

# --- base image ------------------------------------------------------------------------
copy_with_libs() { # copy_with_libs STAGE REL_PATH_IN_ROOT
    local stage="$1" rel="$2" lib
    install -D -m 755 "$E2E_ROOT/$rel" "$stage/$rel"
    while read -r lib; do
        [[ -f "$stage/lib/x86_64-linux-gnu/${lib##*/}" ]] && continue
        install -D -m 755 "$lib" "$stage/lib/x86_64-linux-gnu/${lib##*/}"
    done < <(e2e_root_ldd "$E2E_ROOT/$rel")
}

write_init() {
    cat >"$1/init" <<'EOF'
#!/bin/sh
# /init of the e2e initramfs (generated by tests/e2e/make-initramfs.sh).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /run
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
echo "E2E: init started at $(cut -d' ' -f1 /proc/uptime)s, kernel $(uname -r)"
if [ -n "${E2E_WATCHDOG:-}" ]; then
    # E2E_WATCHDOG=SECONDS (kernel command line): fail with what hung (processes in state D,
    # kernel messages) if there is no result after SECONDS of uptime. No sync: I/O may hang.
    (
        while [ "$(cut -d. -f1 /proc/uptime)" -lt "$E2E_WATCHDOG" ]; do sleep 1; done
        echo "E2E: watchdog: no result after $E2E_WATCHDOG s of uptime; processes:"
        ps -o pid,stat,args | grep -v -e ' \[' -e 'ps -o' -e 'grep -v'
        echo "E2E: last kernel messages:"
        dmesg | tail -n 20
        echo "E2E-RESULT: FAIL watchdog: no result after $E2E_WATCHDOG s (hung I/O or module load?)"
        # A power-off waits for device locks that a hung probe holds: if it has not happened
        # after 3 s, reboot at once (sysrq b: no sync, no device shutdown). QEMU ends on
        # that too (-no-reboot; run-guest.sh --max-boots with --allow-reboot).
        poweroff -f -n &
        sleep 3
        echo b >/proc/sysrq-trigger
    ) &
    watchdog=$!
fi
result=""
modfail=""
while read -r name path want; do
    if ! insmod "/lib/modules/$(uname -r)/$path" 2>/tmp/insmod.err; then
        if [ "$want" = required ]; then
            modfail="$modfail $name"
            cat /tmp/insmod.err
        fi
    fi
done </etc/e2e/modules
echo "E2E: modules loaded: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
if [ -n "$modfail" ]; then
    result="FAIL insmod failed:$modfail"
else
    echo "E2E: running /test.sh at $(cut -d' ' -f1 /proc/uptime)s"
    sh /test.sh
    rc=$?
    if [ "$rc" -eq 0 ]; then
        result="PASS"
    elif [ -s /tmp/e2e-fail-reason ]; then
        result="FAIL $(head -n 1 /tmp/e2e-fail-reason)"
    else
        result="FAIL /test.sh exited with status $rc"
    fi
fi
if [ "$result" != PASS ]; then
    echo "E2E: last kernel messages:"
    dmesg | tail -n 30
fi
echo "E2E: finished at $(cut -d' ' -f1 /proc/uptime)s"
if [ -n "${E2E_POWER_BUTTON:-}" ]; then
    # E2E_POWER_BUTTON=SECONDS (kernel command line): after the result, stay up until the ACPI
    # power button is pressed (virsh shutdown --mode acpi, QEMU's system_powerdown), at most
    # SECONDS, then power off. The button is an input device of the ACPI "button" module (put
    # it and "evdev" into --modules); it is opened before the result line so that a press
    # right after it is not lost, and one input event (24 bytes) is one press.
    [ -n "${watchdog:-}" ] && kill "$watchdog" 2>/dev/null
    button=""
    for d in /sys/class/input/event*; do
        [ "$(cat "$d/device/name" 2>/dev/null)" = "Power Button" ] && button=/dev/input/${d##*/} && break
    done
    if [ -n "$button" ] && [ -c "$button" ]; then
        exec 3<"$button"
        echo "E2E-RESULT: $result"
        echo "E2E: waiting for the ACPI power button ($button, at most $E2E_POWER_BUTTON s)"
        if timeout "$E2E_POWER_BUTTON" dd bs=24 count=1 of=/dev/null <&3 2>/dev/null; then
            echo "E2E: power button pressed, powering off"
        else
            echo "E2E: no power button press after $E2E_POWER_BUTTON s, powering off"
        fi
        exec 3<&-
    else
        echo "E2E-RESULT: $result"
        echo "E2E: no ACPI power button input device (modules button, evdev?), powering off"
    fi
else
    echo "E2E-RESULT: $result"
fi
sync
poweroff -f
EOF
    chmod 755 "$1/init"
    mkdir -p "$1/lib"
    cat >"$1/lib/e2e.sh" <<'EOF'
# Helpers for e2e guest scripts: `. /lib/e2e.sh` (busybox sh).
e2e_log() { echo "E2E: $*"; }
# e2e_fail REASON: record REASON for the final "E2E-RESULT: FAIL REASON" line and exit 1.
e2e_fail() { echo "$*" >/tmp/e2e-fail-reason; echo "E2E: FAIL: $*"; exit 1; }
# e2e_wait_for PATH [SECONDS=10]: wait until PATH exists (e.g. a /dev node after probe).
e2e_wait_for() {
    _n=$(( ${2:-10} * 10 ))
    while [ ! -e "$1" ] && [ "$_n" -gt 0 ]; do sleep 0.1; _n=$((_n - 1)); done
    [ -e "$1" ]
}
EOF
}

build_base() {
    local stage="$1" entry name rel links link want applet
    mkdir -p "$stage"/{bin,dev,etc/e2e,lib/x86_64-linux-gnu,lib64,proc,sys,tmp,run,root,usr/bin,usr/sbin}
    ln -s bin "$stage/sbin"
    mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
    mknod -m 666 "$stage/dev/null" c 1 3 2>/dev/null || true

    # busybox (static) and links for every applet not shadowed by a real tool.
    install -m 755 "$E2E_ROOT/usr/bin/busybox" "$stage/bin/busybox"
    while read -r applet; do
        [[ "$applet" == busybox ]] && continue
        ln -sf busybox "$stage/bin/$applet"
    done < <("$stage/bin/busybox" --list)

    # Dynamic tools with their libraries and the loader.
    install -m 755 "$E2E_ROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
        "$stage/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$stage/lib64/ld-linux-x86-64.so.2"
    for entry in "${TOOLS[@]}"; do
        rel="${entry%%:*}"
        links="${entry#*:}"
        copy_with_libs "$stage" "$rel"
        rm -f "$stage/bin/${rel##*/}" # drop the busybox applet of the same name
        for link in $links; do
            ln -sf "${rel##*/}" "$stage/${rel%/*}/$link"
            rm -f "$stage/bin/$link"
        done
    done
    cp "$E2E_ROOT/etc/mke2fs.conf" "$stage/etc/mke2fs.conf"

    # Kernel modules, decompressed (busybox insmod reads the file and calls init_module,
    # which wants an uncompressed ELF image).
    local moddst="$stage/lib/modules/$KVER" src dst
    mkdir -p "$moddst"
    : >"$stage/etc/e2e/modules"
    : >"$moddst/modules.dep"
    for entry in "${ORDER[@]}"; do
        read -r name rel want <<<"$entry"
        src="$MODDIR/$rel"
        dst="$moddst/${rel%.xz}"
        dst="${dst%.zst}"
        dst="${dst%.gz}"
        mkdir -p "${dst%/*}"
        case "$rel" in
            *.ko.xz) xz -dc "$src" >"$dst" ;;
            *.ko.zst) zstd -dcq "$src" >"$dst" ;;
            *.ko.gz) gzip -dc "$src" >"$dst" ;;
            *) cp "$src" "$dst" ;;
        esac
        echo "$name ${dst#"$moddst"/} $want" >>"$stage/etc/e2e/modules"
        local deps="" d
        for d in ${MOD_DEPS[$name]}; do
            d="${d%.xz}"; d="${d%.zst}"; d="${d%.gz}"
            deps+=" $d"
        done
        echo "${dst#"$moddst"/}:$deps" >>"$moddst/modules.dep"
    done
    write_init "$stage"
}

cpio_out() { # cpio_out DIR OUT: newc archive of DIR's contents, gzip'ed if OUT ends in .gz
    local -a z=(cat)
    [[ "$2" == *.gz ]] && z=(gzip -6 -n)
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | "${z[@]}" >"$2"
}

main() {
    load_module_db
    local m
    for m in $MODULES; do visit "$m" required; done

    local key base
    key="$({
        cat "$SCRIPT_DIR/make-initramfs.sh" "$SCRIPT_DIR/lib.sh" "$E2E_CACHE/root-packages.stamp"
        echo "$KVER $MODULES"
        printf '%s\n' "${ORDER[@]}" "${TOOLS[@]}"
    } | sha256sum | cut -c1-16)"
    mkdir -p "$E2E_CACHE/initramfs"
    base="$E2E_CACHE/initramfs/base-$key.cpio"
    exec 9>"$E2E_CACHE/initramfs/.lock"
    flock 9
    if [[ ! -f "$base" || ! -f "$base.gz" ]]; then
        local stage
        stage="$(mktemp -d "$E2E_CACHE/initramfs/stage.XXXXXX")"
        # shellcheck disable=SC2064 # expand now: the variable is local
        trap "rm -rf '$stage'" EXIT
        build_base "$stage"
        cpio_out "$stage" "$base.tmp"
        gzip -6 -n <"$base.tmp" >"$base.gz.tmp"
        mv "$base.gz.tmp" "$base.gz"
        mv "$base.tmp" "$base"
        rm -rf "$stage"
        trap - EXIT
        # Drop bases of older script/package versions.
        find "$E2E_CACHE/initramfs" -name 'base-*.cpio*' ! -name "${base##*/}*" -delete
        log "built base $base ($(du -k "$base" | cut -f1) KiB, gzip'ed $(du -k "$base.gz" | cut -f1) KiB); modules: $(printf '%s\n' "${ORDER[@]}" | cut -d' ' -f1 | tr '\n' ' ')"
        if [[ ${#BUILTINS[@]} -gt 0 ]]; then
            log "built into the kernel (nothing to load): ${BUILTINS[*]}"
        fi
    fi
    flock -u 9

    # Per-test overlay archive.
    local overlay spec src dst
    overlay="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$overlay' '$overlay.cpio' '$overlay.cpio.gz' '$OUT.tmp.$$'" EXIT
    install -m 755 "$GUEST_SCRIPT" "$overlay/test.sh"
    for spec in "${ADDS[@]}"; do
        src="${spec%%:*}"
        if [[ "$spec" == *:* ]]; then dst="${spec#*:}"; else dst="/${src##*/}"; fi
        [[ -e "$src" ]] || { echo "make-initramfs.sh: --add: no such file: $src" >&2; exit 2; }
        mkdir -p "$overlay/$(dirname "$dst")"
        cp -L "$src" "$overlay/$dst"
    done
    mkdir -p "$(dirname "$OUT")"
    local part="$overlay.cpio"
    if [[ "$OUT" == *.gz ]]; then
        base="$base.gz"
        part="$overlay.cpio.gz"
    fi
    cpio_out "$overlay" "$part"
    cat "$base" "$part" >"$OUT.tmp.$$"
    mv "$OUT.tmp.$$" "$OUT"
    rm -f "$part"
}

main
