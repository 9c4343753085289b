#!/bin/sh
# blk-fs-host-verify.sh - guest script: make an ext4 file system on the virtio-blk disk, write
# files with known content, sync and unmount, so that the HOST can read them back from the
# backing image afterwards (run-scenarios.sh uses debugfs, without mounting).
#   /e2e/pattern.bin  copy of /host-pattern.bin (random data the host generated and added to
#                     the initramfs; the host knows its checksum)
#   /e2e/marker.txt   "E2E-MARKER <E2E_TOKEN>" (the token is on the kernel command line)
#   /e2e/guest.bin    random data generated here; its checksum is printed as a FS-FILE line
#   /e2e/dir/small-N  20 small files "small N <E2E_TOKEN>"
. /lib/e2e.sh
. /lib/e2e-blk.sh

[ -n "${E2E_TOKEN:-}" ] || e2e_fail "E2E_TOKEN is not set"
[ -f /host-pattern.bin ] || e2e_fail "/host-pattern.bin is missing from the initramfs"
blk_pci_check 1
blk_wait_disks 1
blk_describe vda

mkfs.ext4 -q -F -L e2e /dev/vda || e2e_fail "mkfs.ext4 failed"
mkdir -p /mnt
mount -t ext4 /dev/vda /mnt || e2e_fail "mount failed"
mkdir -p /mnt/e2e/dir
cp /host-pattern.bin /mnt/e2e/pattern.bin || e2e_fail "cp pattern failed"
echo "E2E-MARKER $E2E_TOKEN" >/mnt/e2e/marker.txt
blk_pattern /mnt/e2e/guest.bin 1024
i=1
while [ "$i" -le 20 ]; do
    echo "small $i $E2E_TOKEN" >"/mnt/e2e/dir/small-$i"
    i=$((i + 1))
done
sync
for f in pattern.bin guest.bin; do
    echo "FS-FILE /e2e/$f sha256=$(blk_sha "/mnt/e2e/$f") bytes=$(stat -c %s "/mnt/e2e/$f")"
done
[ "$(blk_sha /mnt/e2e/pattern.bin)" = "$(blk_sha /host-pattern.bin)" ] ||
    e2e_fail "pattern.bin differs from /host-pattern.bin right after the copy"
umount /mnt || e2e_fail "umount failed"
# Read it back through a fresh mount (page cache of the disk dropped by the umount).
mount -t ext4 -o ro /dev/vda /mnt || e2e_fail "read-only remount failed"
[ "$(cat /mnt/e2e/marker.txt)" = "E2E-MARKER $E2E_TOKEN" ] || e2e_fail "marker.txt differs after remount"
[ "$(blk_sha /mnt/e2e/pattern.bin)" = "$(blk_sha /host-pattern.bin)" ] ||
    e2e_fail "pattern.bin differs after remount"
umount /mnt || e2e_fail "second umount failed"
fsck.ext4 -n -f /dev/vda >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; e2e_fail "fsck.ext4 reported errors"; }
e2e_log "ext4 written and unmounted; the host verifies the image"
