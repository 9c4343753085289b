#!/usr/bin/env bash
# prepare-root.sh - build (once) and cache the Debian trixie root that the e2e tests use.
#
# The root holds QEMU 11.x from trixie-backports (it has the vfio-user-pci client that
# bookworm's QEMU lacks), a stock Debian guest kernel with its modules, busybox-static,
# e2fsprogs, pciutils and trixie's libvirt 11.3 (the monolithic libvirtd with its QEMU driver,
# and virsh: the kubevirt-libvirt scenario starts the KubeVirt hook's domain with them).
# Everything comes from Debian packages. Layout (see README.md):
#
#   .cache/e2e/root/                 debootstrap --variant=minbase trixie + packages
#   .cache/e2e/root/.e2e-bootstrap   stamp: debootstrap finished
#   .cache/e2e/root-packages.stamp   stamp: the package set below is installed
#   .cache/e2e/kernel/               vmlinuz (bzImage), vmlinux (extracted, PVH), version
#
# Idempotent: a cached run only checks the stamps and prints the QEMU version (< 2 s).
# debootstrap runs into a temporary folder that is renamed on success, and every mount
# (debootstrap's own, our private /proc for the chroot'ed apt) happens inside a private
# mount namespace (unshare -m), so nothing stays mounted even if the script is killed.
# The host's /dev is never bind-mounted: the root keeps its own static /dev nodes.
#
# Environment: E2E_CACHE (default <repo>/.cache/e2e), E2E_MIRROR (default
# http://deb.debian.org/debian).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/e2e/prepare-root.sh [--force-packages] [--help]

Idempotently prepare .cache/e2e/root: a Debian trixie minbase root with QEMU from
trixie-backports (vfio-user-pci client), linux-image-amd64, busybox-static, e2fsprogs,
pciutils and libvirt (libvirtd, its QEMU driver, virsh), plus
.cache/e2e/kernel/{vmlinuz,vmlinux,version}. Installs the host
tools it needs (debootstrap, cpio, xz-utils, zstd, gzip) with apt-get if missing.
Prints the QEMU version at the end.

  --force-packages  re-run the apt-get install step inside the root even if stamped
  --help            show this help

Environment: E2E_CACHE (cache folder, default <repo>/.cache/e2e),
             E2E_MIRROR (Debian mirror, default http://deb.debian.org/debian)
EOF
}

FORCE_PACKAGES=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --force-packages) FORCE_PACKAGES=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "prepare-root.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/e2e/lib.sh
source "$SCRIPT_DIR/lib.sh"

MIRROR="${E2E_MIRROR:-http://deb.debian.org/debian}"
SUITE=trixie
# Packages installed inside the root. Changing this list re-runs the install step.
BACKPORTS_PACKAGES=(qemu-system-x86)
# libvirt comes from trixie main (11.3): its QEMU driver depends on "qemu-kvm | qemu-system",
# which the backports qemu-system-x86 (installed first, in its own step) provides, so apt keeps
# QEMU 11.1 (install_packages checks that). trixie has no separate virtqemud package: the
# monolithic libvirtd of libvirt-daemon is what the scenario runs. No recommends: not the
# network/storage/nodedev drivers, swtpm or passt.
PACKAGES=(linux-image-amd64 busybox-static e2fsprogs pciutils
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)
PACKAGE_SPEC="v1 ${SUITE} bpo:${BACKPORTS_PACKAGES[*]} main:${PACKAGES[*]}"

log() { echo "prepare-root: $*" >&2; }

# --- host prerequisites -------------------------------------------------------------
host_prereqs() {
    local missing=() tool pkg
    # tool:package
    for pair in debootstrap:debootstrap cpio:cpio xz:xz-utils zstd:zstd gzip:gzip \
        unshare:util-linux flock:util-linux chroot:coreutils timeout:coreutils; do
        tool="${pair%%:*}"
        pkg="${pair##*:}"
        if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$tool" ]]; then
            missing+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "installing host packages: ${missing[*]}"
        if [[ $(id -u) -ne 0 ]]; then
            echo "prepare-root.sh: need root to apt-get install ${missing[*]}" >&2
            exit 1
        fi
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# --- debootstrap ----------------------------------------------------------------------
bootstrap() {
    if [[ -f "$E2E_ROOT/.e2e-bootstrap" ]]; then
        return 0
    fi
    if [[ -e "$E2E_ROOT" ]]; then
        # A root without the stamp is not ours to trust (should not happen: we rename on
        # success only). Move it aside rather than deleting something unexpected.
        log "found $E2E_ROOT without stamp; moving it to $E2E_ROOT.broken.$$"
        mv "$E2E_ROOT" "$E2E_ROOT.broken.$$"
    fi
    local tmp="$E2E_CACHE/root.tmp"
    if [[ -e "$tmp" ]]; then
        log "removing leftover $tmp from an interrupted run"
        # Leftovers can only hold mounts if some other namespace still holds them;
        # ours are private and died with the namespace.
        rm -rf --one-file-system "$tmp"
    fi
    log "debootstrap --variant=minbase $SUITE into $tmp (about 30-60 s)"
    local t0=$SECONDS
    # Private mount namespace: whatever debootstrap mounts (proc, sys) dies with it.
    if ! unshare --mount --propagation private -- \
        debootstrap --variant=minbase "$SUITE" "$tmp" "$MIRROR" >"$E2E_CACHE/debootstrap.log" 2>&1; then
        tail -n 30 "$E2E_CACHE/debootstrap.log" >&2
        echo "prepare-root.sh: debootstrap failed (log: $E2E_CACHE/debootstrap.log)" >&2
        exit 1
    fi
    log "debootstrap done in $((SECONDS - t0)) s"
    date -u +%FT%TZ >"$tmp/.e2e-bootstrap"
    mv "$tmp" "$E2E_ROOT"
}

# --- packages inside the root --------------------------------------------------------------
# Runs a command chrooted in the root with only a private /proc mounted, inside a private
# mount namespace (the trap unmounts it; the namespace going away would too).
in_root() {
    # shellcheck disable=SC2016 # the inner script expands its own positional parameters
    unshare --mount --propagation private -- /bin/bash -euo pipefail -c '
        root="$1"; shift
        cleanup() { umount "$root/proc" 2>/dev/null || true; }
        trap cleanup EXIT
        mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
            LANG=C.UTF-8 HOME=/root chroot "$root" "$@"
    ' in_root "$E2E_ROOT" "$@"
}

install_packages() {
    if [[ $FORCE_PACKAGES -eq 0 && -f "$PKG_STAMP" && "$(cat "$PKG_STAMP")" == "$PACKAGE_SPEC" ]]; then
        return 0
    fi
    local t0=$SECONDS
    log "installing packages in the root: -t ${SUITE}-backports ${BACKPORTS_PACKAGES[*]}; ${PACKAGES[*]}"
    # Sources: trixie (from debootstrap) + trixie-backports.
    cat >"$E2E_ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR ${SUITE}-backports main
EOF
    # No daemons may start inside the root.
    printf '#!/bin/sh\nexit 101\n' >"$E2E_ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$E2E_ROOT/usr/sbin/policy-rc.d"
    # Do not waste time building a Debian initramfs for the kernel: we make our own.
    mkdir -p "$E2E_ROOT/etc/initramfs-tools/conf.d"
    if ! in_root dpkg-divert --list /usr/sbin/update-initramfs | grep -q update-initramfs; then
        in_root dpkg-divert --local --rename --add /usr/sbin/update-initramfs >/dev/null
    fi
    printf '#!/bin/sh\n# e2e: initramfs generation disabled (tests build their own)\nexit 0\n' \
        >"$E2E_ROOT/usr/sbin/update-initramfs"
    chmod 755 "$E2E_ROOT/usr/sbin/update-initramfs"
    # Keep the root small: no docs/man pages.
    cat >"$E2E_ROOT/etc/dpkg/dpkg.cfg.d/01-e2e-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
EOF
    cp /etc/resolv.conf "$E2E_ROOT/etc/resolv.conf" 2>/dev/null || true

    # Finish whatever an interrupted earlier run left half-configured.
    in_root dpkg --configure -a >/dev/null
    in_root apt-get update -qq
    in_root apt-get install -y -qq --no-install-recommends \
        -t "${SUITE}-backports" "${BACKPORTS_PACKAGES[@]}" >"$E2E_CACHE/apt-bpo.log" 2>&1 || {
        tail -n 30 "$E2E_CACHE/apt-bpo.log" >&2; exit 1; }
    in_root apt-get install -y -qq --no-install-recommends \
        "${PACKAGES[@]}" >"$E2E_CACHE/apt-main.log" 2>&1 || {
        tail -n 30 "$E2E_CACHE/apt-main.log" >&2; exit 1; }
    # The main-suite packages must not have replaced the backports QEMU (vfio-user-pci).
    local qemu_version
    # shellcheck disable=SC2016 # a dpkg-query format, not a shell expansion
    qemu_version=$(in_root dpkg-query -W -f '${Version}' qemu-system-x86)
    if [[ "$qemu_version" != *bpo* ]]; then
        echo "prepare-root.sh: qemu-system-x86 is $qemu_version, not the trixie-backports one" >&2
        exit 1
    fi
    in_root apt-get clean
    log "packages installed in $((SECONDS - t0)) s"
    rm -f "$KERNEL_DIR/version" # force kernel re-extraction below
    printf '%s\n' "$PACKAGE_SPEC" >"$PKG_STAMP"
}

# --- kernel: copy bzImage, extract vmlinux (PVH-bootable ELF) -----------------------------
# The bzImage setup header gives the compressed payload's offset (0x248) and length (0x24c)
# relative to the protected-mode code, which starts at (setup_sects(0x1f1)+1)*512.
extract_vmlinux() {
    local bz="$1" out="$2"
    local setup_sects payload_off payload_len start magic
    setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')
    [[ "$setup_sects" -eq 0 ]] && setup_sects=4
    payload_off=$(od -An -tu4 -j $((0x248)) -N4 "$bz" | tr -d ' ')
    payload_len=$(od -An -tu4 -j $((0x24c)) -N4 "$bz" | tr -d ' ')
    start=$(((setup_sects + 1) * 512 + payload_off))
    magic=$(od -An -tx1 -j "$start" -N6 "$bz" | tr -d ' ')
    local -a dec
    case "$magic" in
        fd377a585a00) dec=(xz -dc --single-stream) ;;
        28b52ffd*) dec=(zstd -dcq) ;;
        1f8b*) dec=(gzip -dc) ;;
        *) log "unknown kernel payload compression (magic $magic); no vmlinux"; return 1 ;;
    esac
    # The payload ends with 4 bytes of uncompressed size, which decompressors may call
    # trailing garbage: ignore their status and check for an ELF header instead.
    tail -c +$((start + 1)) "$bz" | head -c "$payload_len" | "${dec[@]}" >"$out.tmp" 2>/dev/null || true
    if [[ "$(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' ')" != "7f454c46" ]]; then
        rm -f "$out.tmp"
        log "vmlinux extraction failed (not an ELF)"
        return 1
    fi
    mv "$out.tmp" "$out"
}

prepare_kernel() {
    local kver
    kver=$(e2e_kernel_version_from_root)
    if [[ -f "$KERNEL_DIR/version" && "$(cat "$KERNEL_DIR/version")" == "$kver" && -f "$KERNEL_DIR/vmlinuz" ]]; then
        return 0
    fi
    mkdir -p "$KERNEL_DIR"
    cp "$E2E_ROOT/boot/vmlinuz-$kver" "$KERNEL_DIR/vmlinuz"
    rm -f "$KERNEL_DIR/vmlinux"
    extract_vmlinux "$KERNEL_DIR/vmlinuz" "$KERNEL_DIR/vmlinux" || true
    printf '%s\n' "$kver" >"$KERNEL_DIR/version"
    log "kernel $kver: vmlinuz$([[ -f "$KERNEL_DIR/vmlinux" ]] && echo ' + extracted vmlinux')"
}

main() {
    mkdir -p "$E2E_CACHE"
    exec 9>"$E2E_CACHE/.prepare.lock"
    flock 9
    PKG_STAMP="$E2E_CACHE/root-packages.stamp"
    KERNEL_DIR="$E2E_CACHE/kernel"
    host_prereqs
    bootstrap
    install_packages
    prepare_kernel
    e2e_check_qemu_libs
    e2e_qemu --version | head -n 1
}

main
