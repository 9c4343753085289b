#!/bin/sh
# blk-handoff.sh - guest script: I/O on two disks while the host replaces the server under them
# (planned handoffs). Records 1..E2E_RECORDS go to both disks (record N at 4 KiB block N, the
# text "E2E-REC N DISK E2E_TOKEN"), each written with O_DIRECT + fsync, then read back with
# O_DIRECT and compared; "RECORD N" after each. Any failed or wrong I/O fails the guest at once,
# and so does a kernel message about a virtio-blk or request problem (a timed-out request, an
# I/O error, a reset). The disks are found by serial (E2E_DISKS=SERIAL,SERIAL).
. /lib/e2e.sh
. /lib/e2e-blk.sh

[ -n "${E2E_TOKEN:-}" ] || e2e_fail "E2E_TOKEN is not set"
[ -n "${E2E_DISKS:-}" ] || e2e_fail "E2E_DISKS is not set"
blk_pci_check 2
blk_wait_disks 2
disks=""
for serial in $(echo "$E2E_DISKS" | tr , ' '); do
    name=$(blk_by_serial "$serial") || e2e_fail "no virtio disk with serial $serial"
    blk_describe "$name"
    disks="$disks $serial:$name"
done

record() { yes "E2E-REC $1 $2 $E2E_TOKEN" | head -c 4096 >/tmp/rec; }

n=1
while [ "$n" -le "${E2E_RECORDS:-150}" ]; do
    for d in $disks; do
        serial=${d%%:*}
        dev=/dev/${d#*:}
        record "$n" "$serial"
        dd if=/tmp/rec of="$dev" bs=4096 seek="$n" count=1 oflag=direct conv=notrunc,fsync \
            2>/dev/null || e2e_fail "write of record $n to $serial failed"
        dd if="$dev" of=/tmp/got bs=4096 skip="$n" count=1 iflag=direct 2>/dev/null ||
            e2e_fail "read of record $n from $serial failed"
        cmp -s /tmp/rec /tmp/got || e2e_fail "record $n of $serial reads back wrong"
    done
    echo "RECORD $n"
    n=$((n + 1))
done
if dmesg | grep -i -E 'I/O error|timed out|blk_update_request|virtio_blk.*(error|reset)' >/tmp/kmsg; then
    cat /tmp/kmsg
    e2e_fail "the kernel logged trouble with the disks (above)"
fi
echo "E2E-HANDOFF-GUEST: ${E2E_RECORDS:-150} records on each disk, all read back"
exit 0
