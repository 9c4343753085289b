#!/bin/sh
# blk-reboot.sh - guest script for a boot, a guest reboot and a second boot
# (run-guest.sh --allow-reboot). The disk itself tells the boots apart: its first 4 KiB block
# holds "E2E-REBOOT <E2E_TOKEN> <sha256>" once the first boot has written its data.
#   boot 1 (block 0 is all zeros): write 1 MiB of random data at 64 KiB and then the marker
#          block (both O_DIRECT + fsync), print "REBOOT boot=1 ...", `reboot -f`. The guest
#          reboot is a machine reset: QEMU resets the vfio-user device (DEVICE_RESET) and
#          the second boot's virtio driver initialises it from scratch.
#   boot 2 (marker present): read the data back and compare it with the marker's checksum,
#          print "REBOOT boot=2 ...", exit 0 (so /init prints PASS and powers off).
. /lib/e2e.sh
. /lib/e2e-blk.sh

[ -n "${E2E_TOKEN:-}" ] || e2e_fail "E2E_TOKEN is not set"
blk_pci_check 1
blk_wait_disks 1
blk_describe vda

dd if=/dev/vda of=/tmp/block0 bs=4096 count=1 iflag=direct 2>/dev/null || e2e_fail "cannot read block 0"
marker=$(head -n 1 /tmp/block0 | tr -d '\000')
dd if=/dev/zero of=/tmp/zero bs=4096 count=1 2>/dev/null
case "$marker" in
    "E2E-REBOOT $E2E_TOKEN "*)
        want=${marker##* }
        dd if=/dev/vda of=/tmp/data bs=4096 skip=16 count=256 iflag=direct 2>/dev/null ||
            e2e_fail "boot 2: cannot read the data"
        got=$(blk_sha /tmp/data)
        echo "REBOOT boot=2 marker found, data sha256=$got (written: $want)"
        [ "$got" = "$want" ] || e2e_fail "boot 2: data written before the reboot differs"
        e2e_log "data written before the reboot is intact"
        ;;
    "")
        cmp -s /tmp/block0 /tmp/zero ||
            e2e_fail "boot 1: block 0 is not blank and has no marker ($(cmp /tmp/block0 /tmp/zero 2>&1 | head -n 1))"
        blk_write_check data vda 64 1024
        sha=$(blk_sha /tmp/data)
        printf 'E2E-REBOOT %s %s\n' "$E2E_TOKEN" "$sha" >/tmp/marker
        dd if=/tmp/marker of=/dev/vda bs=4096 count=1 conv=sync,notrunc,fsync oflag=direct \
            2>/dev/null || e2e_fail "boot 1: cannot write the marker"
        echo "REBOOT boot=1 wrote data sha256=$sha and the marker; rebooting"
        sleep 0.5 # let the console drain
        reboot -f
        sleep 10
        e2e_fail "boot 1: reboot -f did not reboot"
        ;;
    "E2E-REBOOT "*) e2e_fail "block 0 has a marker of another run: $marker" ;;
    *) e2e_fail "block 0 is neither blank nor a marker (vs. zeros: $(cmp /tmp/block0 /tmp/zero 2>&1 | head -n 1); starts with$(head -c 16 /tmp/block0 | od -An -tx1 | tr -s ' \n' ' '))" ;;
esac
