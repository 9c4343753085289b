#!/bin/sh
# blk-smp2-mq.sh - guest script: a 2-CPU guest on a virtio-blk device with 2 request queues.
# Checks that blk-mq has one hardware queue per CPU (/sys/block/vda/mq/0 and 1), then runs
# two writers in parallel, pinned to CPU 0 and CPU 1 (so each submits on its own queue),
# each writing and reading back its own 2 MiB region with O_DIRECT. The per-queue MSI-X
# interrupt counts (virtioN-req.0 / req.1 in /proc/interrupts) must both have grown: the
# device completed requests on both queues.
. /lib/e2e.sh
. /lib/e2e-blk.sh

# `sh /test.sh writer CPU OFFSET_KIB`: one writer (4 x 512 KiB write + O_DIRECT read-back).
if [ "${1:-}" = writer ]; then
    r=1
    while [ "$r" -le 4 ]; do
        blk_write_check "cpu$2-r$r" vda $(($3 + (r - 1) * 512)) 512
        r=$((r + 1))
    done
    exit 0
fi

[ "$(nproc)" = 2 ] || e2e_fail "guest has $(nproc) CPUs, expected 2"
blk_pci_check 1
blk_wait_disks 1
blk_describe vda
queues=$(find /sys/block/vda/mq -mindepth 1 -maxdepth 1 | wc -l)
for q in /sys/block/vda/mq/*; do
    echo "MQ queue ${q##*/} cpus=$(cat "$q/cpu_list")"
done
[ "$queues" = 2 ] || e2e_fail "vda has $queues blk-mq hardware queues, expected 2"

# irqs: "req0 req1" interrupt totals (summed over CPUs) of the disk's two request vectors.
irqs() {
    awk '/virtio[0-9]+-req\.[01]$/ { s = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; else break;
                                    q[substr($NF, length($NF))] = s }
         END { print q[0] + 0, q[1] + 0 }' /proc/interrupts
}
before=$(irqs)

taskset -c 0 sh /test.sh writer 0 8192 >/tmp/writer0.log 2>&1 &
p0=$!
taskset -c 1 sh /test.sh writer 1 24576 >/tmp/writer1.log 2>&1 &
p1=$!
rc0=0
rc1=0
wait "$p0" || rc0=$?
wait "$p1" || rc1=$?
cat /tmp/writer0.log /tmp/writer1.log
[ "$rc0" = 0 ] || e2e_fail "writer on CPU 0 failed: $(grep FAIL /tmp/writer0.log | head -n 1)"
[ "$rc1" = 0 ] || e2e_fail "writer on CPU 1 failed: $(grep FAIL /tmp/writer1.log | head -n 1)"
after=$(irqs)
echo "MQ interrupts req.0/req.1 before: $before after: $after"
# shellcheck disable=SC2086 # four numbers
set -- $before $after
[ "$3" -gt "$1" ] || e2e_fail "no completions on queue 0 (interrupts $1 -> $3)"
[ "$4" -gt "$2" ] || e2e_fail "no completions on queue 1 (interrupts $2 -> $4)"
e2e_log "two queues, two CPUs: parallel I/O ok"
