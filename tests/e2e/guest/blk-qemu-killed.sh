#!/bin/sh
# blk-qemu-killed.sh - guest script with two modes (E2E_MODE on the kernel command line):
#   write   write 4 KiB records 1, 2, 3, ... (record N at 4 KiB block N, the text
#           "E2E-REC N E2E_TOKEN" repeated) with O_DIRECT + fsync (a FLUSH) and print
#           "FLUSHED N" after each one is durable. The host SIGKILLs QEMU meanwhile; if it
#           never does, the script fails after E2E_RECORDS (default 2000) records.
#   verify  a new VM on the same device: every record 1..E2E_UPTO must be intact; prints
#           "VERIFIED N records" and what the following records hold.
. /lib/e2e.sh
. /lib/e2e-blk.sh

[ -n "${E2E_TOKEN:-}" ] || e2e_fail "E2E_TOKEN is not set"
blk_pci_check 1
blk_wait_disks 1
blk_describe vda

record() { yes "E2E-REC $1 $E2E_TOKEN" | head -c 4096 >/tmp/rec; }

case "${E2E_MODE:-}" in
    write)
        n=1
        while [ "$n" -le "${E2E_RECORDS:-2000}" ]; do
            record "$n"
            dd if=/tmp/rec of=/dev/vda bs=4096 seek="$n" count=1 oflag=direct conv=notrunc,fsync \
                2>/dev/null || e2e_fail "write of record $n failed"
            echo "FLUSHED $n"
            n=$((n + 1))
        done
        e2e_fail "wrote all ${E2E_RECORDS:-2000} records without being killed"
        ;;
    verify)
        upto=${E2E_UPTO:?E2E_UPTO is not set}
        n=1
        while [ "$n" -le "$upto" ]; do
            record "$n"
            dd if=/dev/vda of=/tmp/got bs=4096 skip="$n" count=1 iflag=direct 2>/dev/null ||
                e2e_fail "read of record $n failed"
            cmp -s /tmp/rec /tmp/got ||
                e2e_fail "record $n (flushed before the kill) is not intact: $(head -c 40 /tmp/got | tr -d '\000')"
            n=$((n + 1))
        done
        echo "VERIFIED $upto records"
        # Informational: records after the last FLUSHED the host saw (written or not).
        while :; do
            dd if=/dev/vda of=/tmp/got bs=4096 skip="$n" count=1 iflag=direct 2>/dev/null
            record "$n"
            cmp -s /tmp/rec /tmp/got || break
            n=$((n + 1))
        done
        echo "RECORDS intact up to $((n - 1)); record $n: '$(head -c 40 /tmp/got | tr -d '\000')'"
        ;;
    *) e2e_fail "E2E_MODE must be write or verify" ;;
esac
