#!/bin/sh
# sample-device.sh - guest script: find the project's sample device (1b36:10f0), enable it,
# and drive its BAR0 registers with MMIO from the guest CPU. Every access becomes a
# vfio-user REGION_READ/REGION_WRITE from QEMU to our server, so this checks the whole
# protocol path with a real client: MAGIC reads back, SCRATCH keeps what was written, and the
# access COUNTER advances.
. /lib/e2e.sh
dev=""
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat "$d/vendor")" = "0x1b36" ] && [ "$(cat "$d/device")" = "0x10f0" ]; then
        dev=$d
    fi
done
[ -n "$dev" ] || e2e_fail "sample device 1b36:10f0 not found"
echo "SAMPLE ${dev##*/} class=$(cat "$dev/class")"
echo 1 > "$dev/enable" || e2e_fail "cannot enable ${dev##*/}"
base=$(head -n 1 "$dev/resource" | cut -d' ' -f1)
[ "$base" != "0x0000000000000000" ] || e2e_fail "BAR0 is not assigned"
e2e_log "BAR0 at $base"

magic=$(devmem "$base" 32)
echo "SAMPLE magic=$magic"
[ "$magic" = "0x56465553" ] || e2e_fail "MAGIC read $magic, expected 0x56465553"

scratch=$((base + 4))
counter=$((base + 12))
before=$(devmem "$counter" 32)
for value in 0x12345678 0xCAFEF00D 0x00000001; do
    devmem "$scratch" 32 "$value"
    got=$(devmem "$scratch" 32)
    [ "$got" = "$value" ] || e2e_fail "SCRATCH read $got after writing $value"
done
after=$(devmem "$counter" 32)
echo "SAMPLE counter $before -> $after"
[ $((after - before)) -ge 6 ] || e2e_fail "COUNTER advanced only from $before to $after"
e2e_log "sample device registers OK"
