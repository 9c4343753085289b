#!/bin/sh
# pci-list.sh - guest script (runs in the e2e initramfs): list the PCI functions the guest
# kernel sees as "BDF vendor:device class" and pass if there is at least one.
# With vfio-user devices attached, set E2E_EXPECT_PCI="vvvv:dddd ..." on the kernel command
# line (run-guest.sh --append "E2E_EXPECT_PCI=...") to require those vendor:device pairs.
. /lib/e2e.sh
n=0
found=""
for d in /sys/bus/pci/devices/*; do
    [ -e "$d/vendor" ] || continue
    v=$(cat "$d/vendor"); dev=$(cat "$d/device"); c=$(cat "$d/class")
    echo "PCI ${d##*/} ${v#0x}:${dev#0x} class=${c#0x} driver=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)"
    found="$found ${v#0x}:${dev#0x}"
    n=$((n + 1))
done
[ "$n" -gt 0 ] || e2e_fail "no PCI devices in /sys/bus/pci/devices"
for want in ${E2E_EXPECT_PCI:-}; do
    case " $found " in
        *" $want "*) e2e_log "found expected PCI device $want" ;;
        *) e2e_fail "expected PCI device $want not found" ;;
    esac
done
e2e_log "$n PCI functions"
