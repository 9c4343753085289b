#!/usr/bin/env bash
# Builds the project's container image from the Dockerfile with Debian's buildah, and pushes it
# if asked. The project publishes no image: build and push your own with this script.
#
#   scripts/build-image.sh [--tag REF] [--version V] [--revision R] [--push DEST]
#                          [--ccache-dir DIR | --no-ccache] [--no-cache] [--refresh-base]
#
#   --tag REF        local name of the image (default localhost/vfio-user-stack:VERSION)
#   --version V      org.opencontainers.image.version (default: CMakeLists.txt's project version)
#   --revision R     org.opencontainers.image.revision (default: git rev-parse HEAD)
#   --push DEST      then `buildah push` the image to DEST, e.g.
#                    registry.example.com/vfio-user/vfio-user-stack:0.1.0 (docker:// is assumed
#                    without a transport); log in first with `buildah login registry.example.com`
#   --ccache-dir DIR compiler cache shared with the build stage (default: this machine's ccache
#                    directory, `ccache -k cache_dir`, so the image reuses host builds' objects)
#   --no-ccache      compile the build stage from scratch
#   --no-cache       ignore buildah's layer cache
#   --refresh-base   debootstrap the base images again (Debian point releases, security fixes;
#                    done anyway when they are older than IMAGE_BASE_MAX_AGE_DAYS, default 7)
#
# Runs `buildah bud --isolation chroot --storage-driver vfs --pull=never --layers` as root: no
# registry is needed. The base images debian:bookworm and debian:bookworm-slim are imported from
# debootstrapped roots (cached in .cache/image/roots) unless buildah's storage already has them
# (e.g. pulled with `buildah pull`). Layers are cached by buildah (the dependency layer is
# rebuilt only when scripts/install-deps.sh or scripts/docker-build-stage.sh change; apt's
# downloads are not cached, they take about 10 s) and the compiler cache is mounted into the
# build stage (--volume DIR:/ccache). Check the result with scripts/packaging/check-image.sh.
#
# The same Dockerfile builds with `docker build` or `podman build` (base images from Docker Hub,
# no compiler cache): see docs/image.md. Environment: IMAGE_MIRROR (Debian mirror for
# debootstrap, default http://deb.debian.org/debian), IMAGE_CACHE (default <repo>/.cache/image).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; }
die() { echo "build-image: $*" >&2; exit 1; }
log() { echo "build-image: $*" >&2; }

version=$(sed -n 's/^project(vfio-user-stack VERSION \([^ )]*\).*/\1/p' CMakeLists.txt)
revision=""
tag=""
push=""
ccache_dir=""
use_ccache=1
no_cache=()
refresh_base=0
while (($#)); do
  case "$1" in
    --tag) tag=${2:?--tag needs a value}; shift ;;
    --version) version=${2:?--version needs a value}; shift ;;
    --revision) revision=${2:?--revision needs a value}; shift ;;
    --push) push=${2:?--push needs a destination}; shift ;;
    --ccache-dir) ccache_dir=${2:?--ccache-dir needs a directory}; shift ;;
    --no-ccache) use_ccache=0 ;;
    --no-cache) no_cache=(--no-cache) ;;
    --refresh-base) refresh_base=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "build-image: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$version" ]] || die "no project version in CMakeLists.txt: pass --version"
tag=${tag:-localhost/vfio-user-stack:$version}
build_tag=localhost/vfio-user-stack-build:latest
if [[ -z "$revision" ]]; then
  revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  if [[ "$revision" != unknown ]] && ! git diff --quiet HEAD -- 2>/dev/null; then
    log "note: the working tree has uncommitted changes; the image is built from them but" \
      "labelled with revision $revision (pass --revision to say otherwise)"
  fi
fi

cache=${IMAGE_CACHE:-$repo/.cache/image}
mirror=${IMAGE_MIRROR:-http://deb.debian.org/debian}
roots=$cache/roots

# ---- buildah ---------------------------------------------------------------------------------
if ! command -v buildah >/dev/null; then
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing buildah (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null; }
  else
    cat >&2 <<EOF
build-image: buildah is not installed (and this is not a root shell on Debian to install it).
With Docker or Podman, build the same Dockerfile (base images from Docker Hub, no ccache):
  docker build -t $tag --build-arg VERSION=$version --build-arg REVISION=$revision $repo
  podman build --format docker --layers -t $tag --build-arg VERSION=$version --build-arg REVISION=$revision $repo
and push with \`docker push\` / \`podman push\` (docs/image.md).
EOF
    exit 1
  fi
fi
[[ $EUID -eq 0 ]] || die "run as root (buildah with --isolation chroot, debootstrap)"
bah=(buildah --storage-driver vfs)

mkdir -p "$cache"
# One lock for the machine, not per checkout: buildah's storage (and the prune below) is shared
# by every checkout on it.
lock=/run/lock/vfio-user-image.lock
exec 9>"$lock"
flock -w 3600 9 || die "another build-image.sh holds $lock for over an hour"

# ---- base images from debootstrapped roots -------------------------------------------------
# Like the official images (debuerreotype): minbase, apt sources for bookworm, -updates and
# -security, apt/dpkg settings for containers, no apt lists. slim also drops docs, man pages and
# locales through dpkg path-exclude (and removes the ones already installed).
minimize_root() {
  local r=$1
  rm -f "$r/etc/apt/sources.list"
  mkdir -p "$r/etc/apt/sources.list.d" "$r/etc/apt/apt.conf.d" "$r/etc/dpkg/dpkg.cfg.d"
  cat >"$r/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: ${mirror}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$r/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
  echo 'force-unsafe-io' >"$r/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
  printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
  chmod 755 "$r/usr/sbin/policy-rc.d"
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
    "$r"/var/log/bootstrap.log "$r"/var/log/apt/* "$r"/tmp/* "$r"/root/.bash_history
  : >"$r/etc/resolv.conf"
  echo localhost >"$r/etc/hostname"
}

slimify_root() {
  local r=$1
  cat >"$r/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# Drop docs, man pages and locales like the official debian:*-slim images.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  local d
  for d in groff info linda lintian/overrides locale man; do
    [[ -d "$r/usr/share/$d" ]] && find "$r/usr/share/$d" -mindepth 1 -delete
  done
  return 0
}

# ensure_root NAME: the cached root for debian:NAME (bookworm or bookworm-slim).
ensure_root() {
  local name=$1 r=$roots/$1
  [[ -f "$r.done" ]] && return 0
  rm -rf --one-file-system "$r" "$r.tmp"
  mkdir -p "$roots"
  if [[ "$name" == bookworm ]]; then
    log "debootstrap --variant=minbase bookworm (about a minute, once)"
    if ! timeout 1800 unshare --mount --propagation private -- debootstrap --variant=minbase \
      bookworm "$r.tmp" "$mirror" >"$roots/debootstrap.log" 2>&1; then
      tail -n 20 "$roots/debootstrap.log" >&2
      die "debootstrap failed (log: $roots/debootstrap.log)"
    fi
    minimize_root "$r.tmp"
  else
    ensure_root bookworm
    cp -a "$roots/bookworm" "$r.tmp"
    slimify_root "$r.tmp"
  fi
  mv "$r.tmp" "$r"
  date -u +%FT%TZ >"$r.done"
}

# import_base NAME: debian:NAME in buildah's storage, from the cached root, unless present.
import_base() {
  local name=$1 ref=docker.io/library/debian:$1 ctr mnt
  if ((!refresh_base)) && "${bah[@]}" inspect --type image "$ref" >/dev/null 2>&1; then
    return 0
  fi
  ensure_root "$name"
  log "importing $ref from $roots/$name"
  ctr=$("${bah[@]}" from --pull=never scratch)
  # shellcheck disable=SC2064 # the container's name is known now
  trap "${bah[*]} rm $ctr >/dev/null 2>&1 || true" EXIT
  mnt=$("${bah[@]}" mount "$ctr")
  cp -a "$roots/$name/." "$mnt/"
  "${bah[@]}" umount "$ctr" >/dev/null
  "${bah[@]}" config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --os linux --arch amd64 --created-by "build-image.sh: debootstrap --variant=minbase bookworm" "$ctr"
  "${bah[@]}" commit --quiet --rm "$ctr" "$ref" >/dev/null
  trap - EXIT
}

# Roots debootstrapped more than IMAGE_BASE_MAX_AGE_DAYS (default 7) days ago are made again, so
# that an image built with the defaults does not keep old packages (security updates) for ever:
# the layer cache rests on the base images, so every layer above them is rebuilt too.
max_age=${IMAGE_BASE_MAX_AGE_DAYS:-7}
if ((!refresh_base)) && [[ -f "$roots/bookworm.done" &&
  -n "$(find "$roots/bookworm.done" -mtime +"$max_age" 2>/dev/null)" ]]; then
  log "the base roots are older than $max_age days: debootstrapping them again"
  refresh_base=1
fi
if ((refresh_base)); then
  rm -rf --one-file-system "$roots"
fi
t0=$SECONDS
import_base bookworm
import_base bookworm-slim
((SECONDS - t0 < 2)) || log "base images ready in $((SECONDS - t0)) s"

# ---- build -----------------------------------------------------------------------------------
volumes=()
if ((use_ccache)); then
  if [[ -z "$ccache_dir" ]]; then
    ccache_dir=$(ccache -k cache_dir 2>/dev/null || true)
    ccache_dir=${ccache_dir:-$cache/ccache}
  fi
  mkdir -p "$ccache_dir"
  volumes+=(--volume "$ccache_dir:/ccache")
fi

log "building $tag (version $version, revision $revision)"
t0=$SECONDS
bud=("${bah[@]}" bud --isolation chroot --pull=never --layers --format docker "${no_cache[@]}"
  "${volumes[@]}" --build-arg VERSION="$version" --build-arg REVISION="$revision" -f Dockerfile)
# The build stage under a name of its own, so that the prune below keeps it (and the deps stage
# under it) and an unchanged tree is rebuilt from the layer cache.
"${bud[@]}" --target build -t "$build_tag" .
"${bud[@]}" -t "$tag" .
log "built $tag in $((SECONDS - t0)) s"
# With the vfs driver every layer is a full copy (the build stage is about 1.5 GB): drop the
# images nothing holds any more (earlier builds' stages, images whose tag moved). Named images
# and the layers under them stay: the base images, the last build stage and its deps stage.
"${bah[@]}" rmi --prune >/dev/null 2>&1 || log "note: buildah rmi --prune failed (disk use grows)"
# What scripts/packaging/check-image.sh checks by default.
printf 'IMAGE=%q\nVERSION=%q\nREVISION=%q\n' "$tag" "$version" "$revision" >"$cache/last-build"

if [[ -n "$push" ]]; then
  # A destination without a transport (docker://, oci:, dir:, ...) is a registry reference.
  [[ "$push" =~ ^(docker|oci|oci-archive|dir|docker-archive|docker-daemon|containers-storage): ]] ||
    push=docker://$push
  log "pushing $tag to $push"
  "${bah[@]}" push "$tag" "$push"
fi
