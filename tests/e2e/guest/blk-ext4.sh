#!/bin/sh
# blk-ext4.sh - guest script: find the first NVMe or virtio block device (E2E_BLK=name on the
# kernel command line to choose, e.g. E2E_BLK=nvme0n1), check raw read/write with dd and
# sha256sum, then mkfs.ext4, mount, write and read back a file, unmount and fsck.
. /lib/e2e.sh
dev=""
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    for n in ${E2E_BLK:-nvme0n1 vda}; do
        [ -b "/dev/$n" ] && dev="/dev/$n" && break 2
    done
    sleep 0.5
done
[ -n "$dev" ] || e2e_fail "no block device (${E2E_BLK:-nvme0n1 vda}) appeared"
e2e_log "block device $dev, $(cat "/sys/class/block/${dev#/dev/}/size") sectors"

dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null
dd if=/tmp/pattern of="$dev" bs=1M oflag=direct 2>/dev/null || e2e_fail "raw write to $dev failed"
dd if="$dev" of=/tmp/readback bs=1M count=4 iflag=direct 2>/dev/null || e2e_fail "raw read from $dev failed"
want=$(sha256sum </tmp/pattern | cut -d' ' -f1)
got=$(sha256sum </tmp/readback | cut -d' ' -f1)
[ "$want" = "$got" ] || e2e_fail "raw readback mismatch on $dev"
e2e_log "raw 4 MiB write/read ok ($want)"

mkfs.ext4 -q -F "$dev" || e2e_fail "mkfs.ext4 $dev failed"
mkdir -p /mnt
mount -t ext4 "$dev" /mnt || e2e_fail "mount $dev failed"
cp /tmp/pattern /mnt/file
sync
umount /mnt || e2e_fail "umount failed"
mount -t ext4 "$dev" /mnt || e2e_fail "remount $dev failed"
got=$(sha256sum </mnt/file | cut -d' ' -f1)
umount /mnt
[ "$want" = "$got" ] || e2e_fail "file readback mismatch after remount"
fsck.ext4 -n -f "$dev" >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; e2e_fail "fsck.ext4 reported errors"; }
e2e_log "ext4 mkfs/mount/write/remount/read/fsck ok"
