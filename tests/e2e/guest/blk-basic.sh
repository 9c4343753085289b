#!/bin/sh
# blk-basic.sh - guest script: one virtio-blk device served by vfio-user-server.
# Checks that the guest finds it (1af4:1042, class 0x010000, virtio-pci + virtio_blk), that
# the disk has the configured size (E2E_EXPECT_SECTORS) and serial (E2E_EXPECT_SERIAL, if
# set), then writes random patterns with O_DIRECT (+fsync, i.e. FLUSH) at the start, in the
# middle and at the very end of the disk, reads each back with O_DIRECT, and re-reads all of
# them at the end (a later write must not clobber an earlier one). The BLK-IO lines let the
# host check the backing file at the same offsets.
. /lib/e2e.sh
. /lib/e2e-blk.sh

blk_pci_check 1
blk_wait_disks 1
lspci -nk 2>/dev/null | grep -A2 '1af4:1042' | sed 's/^/LSPCI /'
blk_describe vda
sectors=$(cat /sys/block/vda/size)
[ -z "${E2E_EXPECT_SECTORS:-}" ] || [ "$sectors" = "$E2E_EXPECT_SECTORS" ] ||
    e2e_fail "vda has $sectors sectors, expected $E2E_EXPECT_SECTORS"
[ -z "${E2E_EXPECT_SERIAL:-}" ] || [ "$(cat /sys/block/vda/serial)" = "$E2E_EXPECT_SERIAL" ] ||
    e2e_fail "vda serial is '$(cat /sys/block/vda/serial)', expected '$E2E_EXPECT_SERIAL'"
[ "$(cat /sys/block/vda/ro)" = 0 ] || e2e_fail "vda is read-only"

kib=$((sectors / 2))
blk_write_check head vda 0 1024                      # first MiB, 1 MiB requests
blk_write_check middle vda $((kib / 2 + 12)) 260     # unaligned to 1 MiB, odd length
blk_write_check tail vda $((kib - 64)) 64            # the last 64 KiB of the disk
for tag in head:0 middle:$((kib / 2 + 12)) tail:$((kib - 64)); do
    blk_check "${tag%%:*}" vda "${tag#*:}" "/tmp/${tag%%:*}"
done
# Reading past the end returns nothing (the kernel stops at the capacity it was given).
past=$(dd if=/dev/vda bs=4096 skip=$((kib / 4)) count=1 iflag=direct 2>/dev/null | wc -c)
[ "$past" = 0 ] || e2e_fail "read past the end of vda returned $past bytes"
e2e_log "virtio-blk basic I/O ok"
