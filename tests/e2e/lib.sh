# shellcheck shell=bash
# lib.sh - shared helpers for the e2e scripts (sourced, not run).
#
# Defines E2E_REPO, E2E_CACHE, E2E_ROOT and functions to run the root's QEMU
# directly with the root's own dynamic loader (no chroot, no mounts).

E2E_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
E2E_CACHE="${E2E_CACHE:-$E2E_REPO/.cache/e2e}"
E2E_ROOT="$E2E_CACHE/root"

# Newest kernel version installed in the root (from /boot/vmlinuz-*).
e2e_kernel_version_from_root() {
    local f best=""
    for f in "$E2E_ROOT"/boot/vmlinuz-*; do
        [[ -e "$f" ]] || continue
        best="${f##*/vmlinuz-}"
    done
    if [[ -z "$best" ]]; then
        echo "e2e: no kernel in $E2E_ROOT/boot (run tests/e2e/prepare-root.sh)" >&2
        return 1
    fi
    printf '%s\n' "$best"
}

# The root's own dynamic loader (a real file: /lib64/ld-linux-x86-64.so.2 in the root is a
# symlink that must not be followed to the host's loader) and library path. Running a root
# binary as "$E2E_LOADER --inhibit-cache --library-path $E2E_LIBPATH BIN" needs no chroot.
E2E_LOADER="$E2E_ROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
E2E_LIBPATH="$E2E_ROOT/usr/lib/x86_64-linux-gnu:$E2E_ROOT/usr/lib"

# e2e_root_ldd BIN: print the absolute paths of the shared libraries BIN loads (from the root).
e2e_root_ldd() {
    "$E2E_LOADER" --inhibit-cache --library-path "$E2E_LIBPATH" --list "$1" |
        awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
}

# The command (an array) that runs the root's qemu-system-x86_64 with the root's loader and
# libraries, no chroot. --inhibit-cache keeps the host's /etc/ld.so.cache (bookworm libraries)
# out of the search; QEMU_MODULE_DIR points QEMU at its loadable modules (it would look in the
# host's /usr/lib...); GIO_MODULE_DIR/GCONV_PATH keep glib and iconv away from host plugins.
# Usable with timeout/env: "${E2E_QEMU_CMD[@]}" ARGS...
E2E_QEMU_CMD=(
    env
    "QEMU_MODULE_DIR=$E2E_ROOT/usr/lib/x86_64-linux-gnu/qemu"
    "GIO_MODULE_DIR=$E2E_ROOT/usr/lib/x86_64-linux-gnu/gio/modules"
    "GCONV_PATH=$E2E_ROOT/usr/lib/x86_64-linux-gnu/gconv"
    "$E2E_LOADER" --inhibit-cache --library-path "$E2E_LIBPATH"
    --argv0 qemu-system-x86_64 "$E2E_ROOT/usr/bin/qemu-system-x86_64"
)

# e2e_qemu ARGS...: run that QEMU.
e2e_qemu() {
    "${E2E_QEMU_CMD[@]}" "$@"
}

# -L options for QEMU's firmware (SeaBIOS, option ROMs, PVH/linuxboot ROMs) in the root.
e2e_qemu_firmware_args() {
    local d
    for d in usr/share/qemu usr/share/seabios usr/lib/ipxe/qemu; do
        [[ -d "$E2E_ROOT/$d" ]] && printf '%s\n' -L "$E2E_ROOT/$d"
    done
    return 0
}

# Fail if QEMU would load any shared library from outside the root.
e2e_check_qemu_libs() {
    local lib bad=0
    while read -r lib; do
        if [[ "$lib" != "$E2E_ROOT/"* ]]; then
            echo "e2e: qemu-system-x86_64 resolves $lib outside the root" >&2
            bad=1
        fi
    done < <(e2e_root_ldd "$E2E_ROOT/usr/bin/qemu-system-x86_64")
    return "$bad"
}
