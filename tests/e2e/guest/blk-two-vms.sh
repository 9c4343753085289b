#!/bin/sh
# blk-two-vms.sh - guest script for one of two VMs that run at the same time, each with its
# own virtio-blk device of the same vfio-user-server. Checks that this VM sees exactly one
# disk with serial E2E_EXPECT_SERIAL, then does E2E_ROUNDS (default 3) rounds of
# write/read-back of 1 MiB random patterns (O_DIRECT), so both VMs do I/O concurrently.
# The BLK-IO lines of the last round let the host check each VM's own backing image.
. /lib/e2e.sh
. /lib/e2e-blk.sh

[ -n "${E2E_EXPECT_SERIAL:-}" ] || e2e_fail "E2E_EXPECT_SERIAL is not set"
blk_pci_check 1
blk_wait_disks 1
blk_describe vda
[ "$(cat /sys/block/vda/serial)" = "$E2E_EXPECT_SERIAL" ] ||
    e2e_fail "vda serial is '$(cat /sys/block/vda/serial)', expected '$E2E_EXPECT_SERIAL'"
r=1
while [ "$r" -le "${E2E_ROUNDS:-3}" ]; do
    blk_write_check "round$r" vda $((r * 4096)) 1024
    r=$((r + 1))
done
e2e_log "VM with $E2E_EXPECT_SERIAL: I/O ok"
