#!/usr/bin/env bash
# Verifies the runtime stage of the Dockerfile without a container engine:
#   1. debootstrap --variant=minbase bookworm into .cache/packaging/base (once; kept pristine);
#   2. copy it to .cache/packaging/rootfs and run scripts/docker-runtime-stage.sh inside with
#      the runtime package list (again, from a fresh copy, whenever the script or the list
#      changed: a package dropped from the list is really gone);
#   3. scripts/docker-build-stage.sh stage --build-dir BUILD_DIR into a staging folder, and
#      copy the result into the root's /usr/local/bin;
#   4. the package list both ways against the binaries' NEEDED libraries (on the host);
#   5. inside the root (chroot, as the image's user 65532): ldd finds every library, each
#      binary answers --help and --version, and vfio-user-server --check accepts the node
#      ConfigMap's server.yaml of deploy/.
#
#   check-runtime-root.sh BUILD_DIR [--allow-missing]
#
# Every mount (debootstrap's, the private /proc for chrooted apt) lives in a private mount
# namespace (unshare -m) and is unmounted by a trap, so nothing stays mounted if this dies.
# Environment: PACKAGING_CACHE (default <repo>/.cache/packaging), PACKAGING_MIRROR
# (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

build_dir=${1:?usage: check-runtime-root.sh BUILD_DIR [--allow-missing]}
allow_missing=${2:-}
cache=${PACKAGING_CACHE:-$repo/.cache/packaging}
mirror=${PACKAGING_MIRROR:-http://deb.debian.org/debian}
base=$cache/base
root=$cache/rootfs
list=scripts/packaging/runtime-packages.txt
log() { echo "runtime-root: $*" >&2; }

mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9

# Runs a command chrooted in the root, with a private /proc, in a private mount namespace.
in_root() {
  # shellcheck disable=SC2016 # the inner script expands its own parameters
  unshare --mount --propagation private -- /bin/bash -euo pipefail -c '
    root="$1"; shift
    trap "umount \"$root/proc\" 2>/dev/null || true" EXIT
    mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
    env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root \
      chroot "$@"
  ' in_root "$root" "$@"
}

# 1. The bare root.
if [[ ! -f "$base/.packaging-bootstrap" ]]; then
  rm -rf --one-file-system "$base" "$cache/rootfs.tmp"
  log "debootstrap --variant=minbase bookworm (about a minute, once)"
  t0=$SECONDS
  if ! unshare --mount --propagation private -- debootstrap --variant=minbase bookworm \
    "$cache/rootfs.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1; then
    tail -n 20 "$cache/debootstrap.log" >&2
    log "FAIL: debootstrap (log: $cache/debootstrap.log)"
    exit 1
  fi
  date -u +%FT%TZ >"$cache/rootfs.tmp/.packaging-bootstrap"
  mv "$cache/rootfs.tmp" "$base"
  log "debootstrap done in $((SECONDS - t0)) s"
fi

# 2. The runtime stage, exactly as the Dockerfile runs it.
stage_hash=$(cat scripts/docker-runtime-stage.sh "$list" | sha256sum | cut -c1-16)
if [[ "$(cat "$root/.packaging-runtime" 2>/dev/null)" != "$stage_hash" ]]; then
  log "running scripts/docker-runtime-stage.sh in a fresh copy of the bootstrapped root"
  t0=$SECONDS
  rm -rf --one-file-system "$root"
  cp -a "$base" "$root"
  mkdir -p "$root/tmp/packaging"
  cp scripts/docker-runtime-stage.sh "$list" "$root/tmp/packaging/"
  cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  if ! in_root "$root" /tmp/packaging/docker-runtime-stage.sh \
    /tmp/packaging/runtime-packages.txt >"$cache/runtime-stage.log" 2>&1; then
    tail -n 20 "$cache/runtime-stage.log" >&2
    log "FAIL: the runtime stage script (log: $cache/runtime-stage.log)"
    exit 1
  fi
  rm -rf "$root/tmp/packaging"
  echo "$stage_hash" >"$root/.packaging-runtime"
  log "runtime stage done in $((SECONDS - t0)) s"
fi

# 3. The build stage's output.
staging=$cache/staging
rm -rf "$staging"
scripts/docker-build-stage.sh stage --build-dir "$build_dir" --dest "$staging" ${allow_missing:+"$allow_missing"}
rm -f "$root"/usr/local/bin/vfio-user-*
cp -a "$staging/." "$root/"

failures=0

# 4. The package list, both ways: each library a binary links (readelf NEEDED) comes from a
# listed package or the base system, and each listed package provides one of them.
extras=" ca-certificates "  # needed at run time without being linked (the operator's TLS)
declare -A need_pkg=()
for bin in "$staging"/usr/local/bin/vfio-user-*; do
  [[ "$(head -c 4 "$bin")" == $'\x7fELF' ]] || continue
  for lib in $(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    # Consumers read all their input: with pipefail, one that stops early (head, awk's exit,
    # grep -q) can kill the writer with SIGPIPE and fail the pipeline at random.
    path=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ && !found {print $NF; found = 1}')
    pkg=$( { dpkg -S "$(readlink -f "$path")" 2>/dev/null || dpkg -S "$path" 2>/dev/null; } | awk -F: 'NR == 1 {print $1}')
    if [[ -z "$pkg" ]]; then
      log "FAIL: $(basename "$bin") links $lib, which no installed Debian package provides"
      failures=$((failures + 1))
      continue
    fi
    need_pkg[$pkg]+=" $(basename "$bin"):$lib"
  done
done
base_pkgs=" $(dpkg-query --admindir="$base/var/lib/dpkg" -W -f '${Package} ' 2>/dev/null) "
listed=" $(sed -e 's/#.*//' "$list" | tr -s '[:space:]' ' ') "
for pkg in "${!need_pkg[@]}"; do
  if [[ "$listed" != *" $pkg "* && "$base_pkgs" != *" $pkg "* ]]; then
    log "FAIL: $pkg is needed (${need_pkg[$pkg]# }) but not in $list"
    failures=$((failures + 1))
  fi
done
for pkg in $listed; do
  if [[ -z "${need_pkg[$pkg]:-}" && "$extras" != *" $pkg "* ]]; then
    log "FAIL: $list lists $pkg, which no binary links"
    failures=$((failures + 1))
  fi
done
((failures)) || log "ok: $list covers every linked library and lists nothing unused"

# 5. Inside the root, as the image's default user.
mkdir -p "$root/tmp/check"
scripts/packaging/render_kustomize.py deploy --emit-server-config >"$root/tmp/check/server.yaml"
chmod -R a+rX "$root/tmp/check"
for bin in "$root"/usr/local/bin/vfio-user-*; do
  name=$(basename "$bin")
  [[ "$name" == vfio-user-healthcheck ]] && continue
  missing_libs=$(in_root --userspec=65532:65532 "$root" ldd "/usr/local/bin/$name" | grep 'not found' || true)
  if [[ -n "$missing_libs" ]]; then
    log "FAIL: $name: libraries not in the runtime image:"$'\n'"$missing_libs"
    failures=$((failures + 1))
    continue
  fi
  for arg in --help --version; do
    if ! out=$(in_root --userspec=65532:65532 "$root" "/usr/local/bin/$name" "$arg" 2>&1); then
      log "FAIL: $name $arg exits non-zero in the runtime root: ${out:0:300}"
      failures=$((failures + 1))
    fi
  done
  log "ok: $name (libraries resolved, --help and --version run)"
done
if [[ -x "$root/usr/local/bin/vfio-user-server" ]]; then
  if out=$(in_root --userspec=65532:65532 "$root" vfio-user-server --config /tmp/check/server.yaml --check 2>&1); then
    log "ok: vfio-user-server --check accepts deploy/'s node server.yaml"
  else
    log "FAIL: vfio-user-server --check rejects deploy/'s node server.yaml: $out"
    failures=$((failures + 1))
  fi
fi
if ! out=$(in_root --userspec=65532:65532 "$root" vfio-user-healthcheck --help 2>&1); then
  log "FAIL: vfio-user-healthcheck does not run in the root: $out"
  failures=$((failures + 1))
fi
rm -rf "$root/tmp/check"
user_entry=$(in_root "$root" getent passwd vfio-user || true)
if [[ "$user_entry" != vfio-user:x:65532:65532:* ]]; then
  log "FAIL: the runtime stage did not create user vfio-user (65532)"
  failures=$((failures + 1))
fi
log "runtime root size: $(du -sh --exclude=proc "$root" | cut -f1) (apt lists removed)"
exit $((failures > 0))
