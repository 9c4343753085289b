# blk.sh - helpers for the virtio-blk guest scripts (busybox sh). run-scenarios.sh puts this
# file into the initramfs as /lib/e2e-blk.sh; a guest script does `. /lib/e2e.sh` and then
# `. /lib/e2e-blk.sh`.
#
# Lines printed for the host (run-scenarios.sh parses them from the serial log):
#   BLK-PCI <bdf> <vendor>:<device> class=<class> driver=<pci driver> virtio=<virtio driver>
#   BLK-DISK <name> serial=<serial> sectors=<n> bytes=<n> lbs=<logical block size> ro=<0|1>
#   BLK-IO <tag> dev=<name> offset=<bytes> bytes=<n> sha256=<hex>   (after a verified write)

# blk_pci_check N: print a BLK-PCI line for every virtio-blk function (1af4:1042, the modern
# virtio block device) and require exactly N of them, each with class 0x010000 (mass storage,
# SCSI), bound to virtio-pci and with a virtio child device bound to virtio_blk.
blk_pci_check() {
    _n=0
    for _d in /sys/bus/pci/devices/*; do
        [ "$(cat "$_d/vendor")" = 0x1af4 ] || continue
        [ "$(cat "$_d/device")" = 0x1042 ] || continue
        _class=$(cat "$_d/class")
        _drv=$(basename "$(readlink "$_d/driver" 2>/dev/null)" 2>/dev/null)
        _vdrv=""
        # The virtio driver binds after virtio-pci's probe: give it a few seconds.
        _i=0
        while [ "$_i" -lt 50 ]; do
            for _v in "$_d"/virtio*; do
                [ -e "$_v/driver" ] && _vdrv=$(basename "$(readlink "$_v/driver")")
            done
            [ -n "$_vdrv" ] && break
            sleep 0.1
            _i=$((_i + 1))
        done
        echo "BLK-PCI ${_d##*/} 1af4:1042 class=${_class#0x} driver=$_drv virtio=$_vdrv"
        [ "$_class" = 0x010000 ] || e2e_fail "${_d##*/}: class $_class, expected 0x010000"
        [ "$_drv" = virtio-pci ] || e2e_fail "${_d##*/}: PCI driver '$_drv', expected virtio-pci"
        [ "$_vdrv" = virtio_blk ] || e2e_fail "${_d##*/}: virtio driver '$_vdrv', expected virtio_blk"
        _n=$((_n + 1))
    done
    [ "$_n" -eq "$1" ] || e2e_fail "found $_n virtio-blk PCI functions (1af4:1042), expected $1"
}

# blk_wait_disks N [SECONDS=10]: wait until N vd* disks exist with their /dev nodes.
blk_wait_disks() {
    _t=$(( ${2:-10} * 10 ))
    while :; do
        _n=0
        for _b in /sys/block/vd*; do
            [ -e "$_b" ] && [ -b "/dev/${_b##*/}" ] && _n=$((_n + 1))
        done
        [ "$_n" -ge "$1" ] && return 0
        [ "$_t" -le 0 ] && e2e_fail "only $_n virtio disks appeared, expected $1"
        sleep 0.1
        _t=$((_t - 1))
    done
}

# blk_describe NAME: print the BLK-DISK line of /sys/block/NAME.
blk_describe() {
    _s=$(cat "/sys/block/$1/size")
    echo "BLK-DISK $1 serial=$(cat "/sys/block/$1/serial" 2>/dev/null) sectors=$_s" \
        "bytes=$((_s * 512)) lbs=$(cat "/sys/block/$1/queue/logical_block_size")" \
        "ro=$(cat "/sys/block/$1/ro")"
}

# blk_by_serial SERIAL: print the disk name (vda, vdb, ...) whose virtio serial is SERIAL.
blk_by_serial() {
    for _b in /sys/block/vd*; do
        [ "$(cat "$_b/serial" 2>/dev/null)" = "$1" ] && { echo "${_b##*/}"; return 0; }
    done
    return 1
}

# blk_sha FILE: sha256 of FILE (hex only).
blk_sha() { sha256sum "$1" | cut -d' ' -f1; }

# blk_pattern FILE KIB: FILE gets KIB KiB of random data.
blk_pattern() { dd if=/dev/urandom of="$1" bs=1024 count="$2" 2>/dev/null; }

# blk_write TAG DEV OFFSET_KIB FILE: write FILE to DEV at OFFSET_KIB with O_DIRECT and fsync
# (which sends a FLUSH). Fails the test on error. Temporary files are named after TAG, so
# that writers in parallel processes use different TAGs.
blk_write() {
    dd if="$4" of="/dev/$2" bs=4096 seek=$(($3 / 4)) oflag=direct conv=notrunc,fsync \
        2>"/tmp/dd-$1.err" || { cat "/tmp/dd-$1.err"; e2e_fail "$1: write to $2 at ${3}K failed"; }
}

# blk_check TAG DEV OFFSET_KIB FILE: read back FILE's size from DEV at OFFSET_KIB with O_DIRECT
# and compare checksums; prints the BLK-IO line. Fails the test on a mismatch.
blk_check() {
    _size=$(stat -c %s "$4")
    dd if="/dev/$2" of="/tmp/readback-$1" bs=4096 skip=$(($3 / 4)) count=$((_size / 4096)) \
        iflag=direct 2>"/tmp/dd-$1.err" || { cat "/tmp/dd-$1.err"; e2e_fail "$1: read from $2 at ${3}K failed"; }
    _want=$(blk_sha "$4")
    _got=$(blk_sha "/tmp/readback-$1")
    rm -f "/tmp/readback-$1"
    [ "$_want" = "$_got" ] || e2e_fail "$1: data read back from $2 at ${3}K differs (sha256 $_got, wrote $_want)"
    echo "BLK-IO $1 dev=$2 offset=$(($3 * 1024)) bytes=$_size sha256=$_want"
}

# blk_write_check TAG DEV OFFSET_KIB KIB: random pattern, blk_write, blk_check. The pattern
# stays in /tmp/TAG.
blk_write_check() {
    blk_pattern "/tmp/$1" "$4"
    blk_write "$1" "$2" "$3" "/tmp/$1"
    blk_check "$1" "$2" "$3" "/tmp/$1"
}
