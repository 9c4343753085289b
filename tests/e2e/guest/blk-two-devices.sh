#!/bin/sh
# blk-two-devices.sh - guest script: two virtio-blk devices from one vfio-user-server in one VM.
# E2E_DISKS=SERIAL:SECTORS,SERIAL:SECTORS names them by their virtio serial (the guest's
# vda/vdb order is not relied on). Each disk gets its own random patterns at the SAME offsets
# (so cross-talk between the devices would show), then both are read back and compared.
. /lib/e2e.sh
. /lib/e2e-blk.sh

[ -n "${E2E_DISKS:-}" ] || e2e_fail "E2E_DISKS is not set"
blk_pci_check 2
blk_wait_disks 2
names=""
for spec in $(echo "$E2E_DISKS" | tr , ' '); do
    serial=${spec%%:*}
    want=${spec#*:}
    name=$(blk_by_serial "$serial") || e2e_fail "no virtio disk with serial $serial"
    blk_describe "$name"
    [ "$(cat "/sys/block/$name/size")" = "$want" ] ||
        e2e_fail "$serial ($name) has $(cat "/sys/block/$name/size") sectors, expected $want"
    names="$names $serial:$name"
done
# Interleave: write A, write B, then read both back.
for spec in $names; do
    blk_pattern "/tmp/${spec%%:*}-a" 1024
    blk_pattern "/tmp/${spec%%:*}-b" 128
    blk_write "${spec%%:*}-a" "${spec#*:}" 0 "/tmp/${spec%%:*}-a"
    blk_write "${spec%%:*}-b" "${spec#*:}" 8192 "/tmp/${spec%%:*}-b"
done
for spec in $names; do
    blk_check "${spec%%:*}-a" "${spec#*:}" 0 "/tmp/${spec%%:*}-a"
    blk_check "${spec%%:*}-b" "${spec#*:}" 8192 "/tmp/${spec%%:*}-b"
done
# shellcheck disable=SC2086 # two words
set -- $names
[ "$(blk_sha "/tmp/${1%%:*}-a")" != "$(blk_sha "/tmp/${2%%:*}-a")" ] || e2e_fail "the two patterns are equal"
e2e_log "both virtio-blk devices hold their own data"
