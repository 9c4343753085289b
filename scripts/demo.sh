#!/usr/bin/env bash
# The main job: sets everything up (Debian packages, build, a cached trixie root with QEMU 11.1
# and a guest kernel), starts vfio-user-server with a virtio-blk device backed by a 64 MiB
# file, boots a small Linux VM whose QEMU attaches that device over vfio-user, and prints
# what the guest saw: the PCI function (lspci-style), the disk size, and an O_DIRECT
# write/read-back check. Then the host checks that the guest's data is in the image file.
# Idempotent; the first run downloads ~500 MB of Debian packages into .cache/e2e.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1/4 installing dependencies and building"
./scripts/install-deps.sh
./scripts/build.sh release >/dev/null
say "2/4 preparing the VM image (QEMU 11.1 from Debian trixie-backports, guest kernel)"
tests/e2e/prepare-root.sh | tail -n 1

work=$(mktemp -d /tmp/vfu-demo.XXXXXX)
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

say "3/4 starting vfio-user-server with a virtio-blk disk (64 MiB file)"
truncate -s 64M "$work/disk0.img"
build/server/vfio-user-server --control-socket "$work/control.sock" \
  --device "virtio-blk,id=demo0,socket=$work/demo0.sock,backend=file,path=$work/disk0.img,serial=vfu-demo-disk" \
  >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  grep -q "ready" "$work/server.log" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.05
done
if ! grep -q "ready" "$work/server.log"; then
  cat "$work/server.log" >&2
  echo "demo FAILED: the server did not start" >&2
  exit 1
fi
build/server/vfio-user-ctl info "$work/demo0.sock" | sed 's/^/  /'

say "4/4 booting a VM that uses the disk (QEMU vfio-user-pci, TCG)"
tests/e2e/make-initramfs.sh --add tests/e2e/guest/lib/blk.sh:/lib/e2e-blk.sh \
  "$work/guest.cpio" tests/e2e/guest/blk-basic.sh >/dev/null
if tests/e2e/run-guest.sh --quiet --initrd "$work/guest.cpio" --socket "$work/demo0.sock" \
  --timeout 120 --log "$work/guest.log" --append "E2E_EXPECT_SECTORS=131072 E2E_EXPECT_SERIAL=vfu-demo-disk"; then
  result=ok
else
  result=failed
fi
echo "  what the guest saw:"
tr -d '\r' <"$work/guest.log" | awk '
  /^BLK-PCI / { sub(/^0000:/, "", $2); printf "    %s %s: [%s] class %s, driver %s (%s)\n", "PCI", $2, $3, substr($4, 7), substr($5, 8), substr($6, 8) }
  /^BLK-DISK / { printf "    disk /dev/%s: %s sectors = %d MiB, serial %s, logical block %s bytes\n", $2, substr($4, 9), substr($5, 7) / 1048576, substr($3, 8), substr($6, 5) }
  /^BLK-IO / && !seen[$2]++ { printf "    write+read %-6s %7d bytes at offset %8d (O_DIRECT): ok, sha256 %.16s...\n", $2, substr($5, 7), substr($4, 8), substr($6, 8) }
  /^E2E(-RESULT)?:/ && !/modules loaded/ { print "    " $0 }'
host_check=ok
while read -r _ tag _ off bytes sha; do
  got=$(dd if="$work/disk0.img" iflag=skip_bytes,count_bytes skip="${off#offset=}" count="${bytes#bytes=}" \
    bs=1M status=none | sha256sum | cut -d' ' -f1)
  [[ "$got" == "${sha#sha256=}" ]] || { host_check=failed; echo "  host: $tag NOT found in disk0.img" >&2; }
done < <(tr -d '\r' <"$work/guest.log" | grep -a '^BLK-IO ' | sort -u)
echo "  host: the guest's writes are in $work/disk0.img: $host_check"
echo "  what the server counted (vfio-user-ctl stats, from its control API):"
build/server/vfio-user-ctl stats demo0 --control-socket "$work/control.sock" | sed 's/^/    /'
echo "  what the server logged:"
grep -E 'client connected|negotiated|reset requested|disconnected|session ended' "$work/server.log" | sed 's/^/    /'
if [[ $result != ok || $host_check != ok ]]; then
  echo "demo FAILED: the guest or the host check did not pass; see the log above" >&2
  exit 1
fi
say "demo passed: a real QEMU guest used our vfio-user virtio-blk disk"
