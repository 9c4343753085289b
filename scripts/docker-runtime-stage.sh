#!/usr/bin/env bash
# The runtime stage of the container image (Dockerfile, stage "runtime"), kept in a script of
# its own (scripts/build-image.sh builds the Dockerfile, scripts/packaging/check-image.sh checks
# the result).
#
#   docker-runtime-stage.sh PACKAGE_LIST
#
# Installs the packages named in PACKAGE_LIST (scripts/packaging/runtime-packages.txt: one a
# line, '#' comments) without recommends, removes apt's lists and caches, and adds the
# unprivileged user the image runs as by default (vfio-user, uid/gid 65532). Components that
# need root (the node DaemonSet: server and device plugin chown sockets to qemu's 107) ask for
# it in their pod's securityContext. Run as root inside the target system.
set -euo pipefail

list=${1:?usage: docker-runtime-stage.sh PACKAGE_LIST}
mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$list" | grep -v '^$')
((${#packages[@]})) || { echo "docker-runtime-stage: $list names no package" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}"
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

if ! getent group vfio-user >/dev/null; then groupadd --system --gid 65532 vfio-user; fi
if ! getent passwd vfio-user >/dev/null; then
  useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin vfio-user
fi
