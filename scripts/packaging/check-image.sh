#!/usr/bin/env bash
# Checks the BUILT container image (scripts/build-image.sh) with buildah, inside the image:
#   1. config: the labels and the default user are those the Dockerfile's LABEL and USER
#      instructions give (version and revision as built), and it has the HEALTHCHECK;
#   2. every binary in /usr/local/bin: ldd finds every library; vfio-user-server, -ctl,
#      -device-plugin, -kubevirt-hook and -operator run --help and --version, and
#      vfio-user-healthcheck runs --help, as user 65532:65532;
#   3. scripts/packaging/runtime-packages.txt both ways against the binaries' NEEDED libraries:
#      each one comes from a listed package (or from the base image), each listed package is
#      installed and provides one of them (ca-certificates: used, not linked);
#   4. vfio-user-server --config FILE --check accepts the server config given (as 65532);
#   5. reports the image's size.
#
#   scripts/packaging/check-image.sh [--image REF] [--version V] [--revision R]
#                                    [--server-config FILE]
#
# --image: default the image scripts/build-image.sh built last (.cache/image/last-build); for
# that image the expected version and revision default to those it was built with, for others
# to the project's version and any revision. Waits (up to an hour) for a running build-image.sh.
# --server-config: a vfio-user-server YAML config, a file or a pipe (scripts/check-packaging.sh
# passes deploy/'s node ConfigMap's server.yaml); without it that check is skipped with a note. Every failure prints a FAIL line; exits 1 on any. Run as root. The
# containers it creates are removed (and unmounted) on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; }
cache=${IMAGE_CACHE:-$repo/.cache/image}
image="" version="" revision="" server_config=""
while (($#)); do
  case "$1" in
    --image) image=${2:?--image needs a value}; shift ;;
    --version) version=${2:?--version needs a value}; shift ;;
    --revision) revision=${2:?--revision needs a value}; shift ;;
    --server-config) server_config=${2:?--server-config needs a file}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "check-image: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [[ -f "$cache/last-build" ]]; then
  # shellcheck disable=SC1091 # written by build-image.sh: IMAGE=, VERSION=, REVISION=
  last=$(IMAGE="" VERSION="" REVISION="" && source "$cache/last-build" && printf '%s\n%s\n%s' "$IMAGE" "$VERSION" "$REVISION")
  { read -r last_image; read -r last_version; read -r last_revision; } <<<"$last" || true
  if [[ -z "$image" || "$image" == "${last_image:-}" ]]; then
    image=${last_image:-}
    version=${version:-${last_version:-}}
    revision=${revision:-${last_revision:-}}
  fi
fi
project_version=$(sed -n 's/^project(vfio-user-stack VERSION \([^ )]*\).*/\1/p' CMakeLists.txt)
image=${image:-localhost/vfio-user-stack:$project_version}
version=${version:-$project_version}

command -v buildah >/dev/null || { echo "check-image: FAIL: buildah is not installed (scripts/build-image.sh installs it)" >&2; exit 1; }
command -v readelf >/dev/null || { echo "check-image: FAIL: readelf (binutils) is not installed" >&2; exit 1; }
bah=(timeout 300 buildah --storage-driver vfs)
list=scripts/packaging/runtime-packages.txt
binaries=(vfio-user-server vfio-user-ctl vfio-user-device-plugin vfio-user-kubevirt-hook vfio-user-operator)
extras=" ca-certificates "  # needed at run time without being linked (the operator's TLS)

failures=0
fail() { echo "check-image: FAIL: $*" >&2; failures=$((failures + 1)); }
ok() { echo "check-image: ok: $*" >&2; }
note() { echo "check-image: note: $*" >&2; }

containers=()
tmp=$(mktemp -d)
cleanup() {
  local c
  for c in "${containers[@]}"; do
    timeout 60 buildah --storage-driver vfs umount "$c" >/dev/null 2>&1 || true
    timeout 60 buildah --storage-driver vfs rm "$c" >/dev/null 2>&1 ||
      echo "check-image: could not remove container $c: buildah rm $c" >&2
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Not while scripts/build-image.sh is (re)building it.
mkdir -p "$cache"
# One lock for the machine: buildah's storage is shared by every checkout on it.
lock=/run/lock/vfio-user-image.lock
exec 9>"$lock"
flock -w 3600 9 || { echo "check-image: FAIL: $lock held by a build for over an hour" >&2; exit 1; }

if ! "${bah[@]}" inspect --type image "$image" >/dev/null 2>&1; then
  echo "check-image: FAIL: no image $image in buildah's storage: build it with scripts/build-image.sh" >&2
  exit 1
fi
echo "check-image: checking $image (expected version $version, revision ${revision:-any})" >&2

# new_container IMAGE: a working container of IMAGE in $new, removed on exit. (Not in a
# command substitution: its subshell would not record the container for the cleanup.)
new_container() {
  "${bah[@]}" from --pull=never --quiet "$1" >"$tmp/new-container"
  new=$(cat "$tmp/new-container")
  [[ -n "$new" ]] || { echo "check-image: FAIL: buildah from $1 gave no container" >&2; exit 1; }
  containers+=("$new")
}
# in_image USER CMD...: runs CMD in the image's container as USER (uid:gid).
in_image() {
  local user=$1
  shift
  # buildah adds its own lines about a failed command ("subprocess exited with status N",
  # "Error: exit status N"): only the command's output is of interest.
  "${bah[@]}" run --isolation chroot --user "$user" "$ctr" -- "$@" 2> >(grep -v -e '^subprocess exited with status' -e '^Error: exit status' >&2)
}

# ---- 1. the image's config against the Dockerfile --------------------------------------------
"${bah[@]}" inspect --type image "$image" >"$tmp/inspect.json"
cfg() { python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
c = (d.get("Docker") or {}).get("config") or {}
oc = (d.get("OCIv1") or {}).get("config") or {}
what = sys.argv[2]
if what == "user": print(c.get("User") or oc.get("User") or "")
elif what == "healthcheck": print(" ".join((c.get("Healthcheck") or {}).get("Test") or []))
elif what == "labels":
    for k, v in sorted(((c.get("Labels") or oc.get("Labels") or {})).items()): print(f"{k}={v}")' "$tmp/inspect.json" "$1"; }

# The Dockerfile's instructions, continuation lines joined, comments dropped.
dockerfile=$(sed -e '/^[[:space:]]*#/d' Dockerfile | sed -e ':a' -e '/\\$/N; s/\\\n[[:space:]]*/ /; ta')
want_user=$(awk '$1 == "USER" {u = $2} END {print u}' <<<"$dockerfile")
got_user=$(cfg user)
if [[ "$got_user" == "$want_user" && "$got_user" == 65532:65532 ]]; then
  ok "default user $got_user (Dockerfile: USER $want_user)"
else
  fail "default user is '${got_user}', the Dockerfile says USER $want_user (expected 65532:65532)"
fi
cfg labels >"$tmp/labels"
# LABEL key="value" ... pairs, with ${VERSION} and ${REVISION} as built.
printf '%s\n' "$dockerfile" >"$tmp/Dockerfile.joined"
python3 -c 'import shlex, sys
with open(sys.argv[2], "w") as out:
    for line in open(sys.argv[1]).read().splitlines():
        if line.strip().upper().startswith("LABEL "):
            for word in shlex.split(line.strip()[6:]):
                key, _, value = word.partition("=")
                out.write(f"{key}={value}\n")' "$tmp/Dockerfile.joined" "$tmp/want-labels" ||
  fail "cannot parse the Dockerfile's LABEL instructions"
label_failures=$failures
while IFS= read -r want; do
  key=${want%%=*}
  value=${want#*=}
  # shellcheck disable=SC2016 # the Dockerfile's literal ${VERSION} and ${REVISION}
  value=${value//'${VERSION}'/$version}
  # shellcheck disable=SC2016
  if [[ "$value" == *'${REVISION}'* ]]; then
    if [[ -z "$revision" ]]; then value='*'; else value=${value//'${REVISION}'/$revision}; fi
  fi
  got=$(awk -v k="$key" 'index($0, k "=") == 1 {print substr($0, length(k) + 2)}' "$tmp/labels")
  # shellcheck disable=SC2053 # value '*' (revision not known) matches anything
  if ! grep -q "^$key=" "$tmp/labels"; then
    fail "label $key is missing (the Dockerfile sets it)"
  elif [[ "$got" != $value || -z "$got" ]]; then
    fail "label $key is '$got', expected '$value'"
  fi
done <"$tmp/want-labels"
for key in title version revision; do
  grep -q "^org.opencontainers.image.$key=" "$tmp/want-labels" ||
    fail "the Dockerfile sets no org.opencontainers.image.$key label"
done
((failures > label_failures)) ||
  ok "labels as the Dockerfile sets them: $(sed 's/^org.opencontainers.image.//; s/=.*//' "$tmp/want-labels" | paste -sd, -) (version $version, revision $(grep '^org.opencontainers.image.revision=' "$tmp/labels" | cut -d= -f2 | cut -c1-12))"
healthcheck=$(cfg healthcheck)
if [[ "$healthcheck" == *vfio-user-healthcheck* ]]; then
  ok "HEALTHCHECK: $healthcheck"
else
  fail "no HEALTHCHECK running vfio-user-healthcheck in the image config (built without --format docker?)"
fi

# ---- 2. the binaries, as the image's user ----------------------------------------------------
new_container "$image"
ctr=$new
mnt=$("${bah[@]}" mount "$ctr")
for name in "${binaries[@]}" vfio-user-healthcheck; do
  [[ -x "$mnt/usr/local/bin/$name" ]] || fail "/usr/local/bin/$name is missing or not executable"
done
for bin in "$mnt"/usr/local/bin/*; do
  name=$(basename "$bin")
  [[ "$(head -c 4 "$bin")" == $'\x7fELF' ]] || continue
  if ! out=$(in_image 65532:65532 ldd "/usr/local/bin/$name" 2>&1); then
    fail "$name: ldd fails in the image: ${out:0:300}"
  elif grep -q 'not found' <<<"$out"; then
    fail "$name: libraries not in the image: $(grep 'not found' <<<"$out" | awk '{print $1}' | paste -sd' ' -)"
  fi
done
for name in "${binaries[@]}"; do
  [[ -x "$mnt/usr/local/bin/$name" ]] || continue
  good=1
  for arg in --help --version; do
    if ! out=$(in_image 65532:65532 "$name" "$arg" 2>&1); then
      fail "$name $arg exits non-zero as 65532:65532 in the image: ${out:0:300}"
      good=0
    elif [[ "$arg" == --version && "$out" != *"$project_version"* ]]; then
      fail "$name --version says '$out', but this checkout's version is $project_version" \
        "(an image built from other sources?)"
      good=0
    fi
  done
  ((good)) && ok "$name: libraries resolved, --help and --version run as 65532:65532"
done
if out=$(in_image 65532:65532 vfio-user-healthcheck --help 2>&1); then
  ok "vfio-user-healthcheck --help runs as 65532:65532"
else
  fail "vfio-user-healthcheck --help exits non-zero in the image: ${out:0:300}"
fi
user_entry=$(in_image 0:0 getent passwd 65532 || true)
[[ "$user_entry" == vfio-user:x:65532:65532:* ]] ||
  fail "the image has no user vfio-user with uid/gid 65532 (getent: '${user_entry}')"

# ---- 3. the runtime package list against the NEEDED libraries -------------------------------
# Each NEEDED library of the image's binaries, and the package that provides it in the image.
for bin in "$mnt"/usr/local/bin/*; do
  [[ "$(head -c 4 "$bin")" == $'\x7fELF' ]] || continue
  readelf -d "$bin" | sed -n "s/.*(NEEDED).*\[\(.*\)\]/$(basename "$bin") \1/p"
done | sort -u >"$tmp/needed"
# shellcheck disable=SC2016 # expanded by the image's shell
in_image 0:0 bash -c '
  cache=$(ldconfig -p)
  while read -r bin lib; do
    path=$(awk -v l="$lib" '\''$1 == l && /x86-64/ && !f {print $NF; f = 1}'\'' <<<"$cache")
    pkg=-
    if [[ -n "$path" ]]; then
      pkg=$({ dpkg -S "$(readlink -f "$path")" 2>/dev/null || dpkg -S "$path" 2>/dev/null; } | awk -F: '\''NR == 1 {print $1}'\'')
    fi
    echo "$bin $lib ${pkg:--}"
  done' <"$tmp/needed" >"$tmp/providers"
base_name=$(awk -F= '$1 == "org.opencontainers.image.base.name" {print $2}' "$tmp/labels")
new_container "${base_name:-debian:bookworm-slim}"
base_ctr=$new
# shellcheck disable=SC2016 # dpkg-query's format
base_pkgs=" $("${bah[@]}" run --isolation chroot "$base_ctr" -- dpkg-query -W -f '${Package} ' | sed 's/:amd64//g') "
# shellcheck disable=SC2016
image_pkgs=" $(in_image 0:0 dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" {printf "%s ", $2}') "
listed=" $(sed -e 's/#.*//' "$list" | tr -s '[:space:]' ' ') "
declare -A need_pkg=()
list_failures=$failures
while read -r bin lib pkg; do
  pkg=${pkg%:amd64}
  if [[ "$pkg" == - ]]; then
    # Not in the image: name the package that has it on this machine (the build host).
    host_path=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ && !f {print $NF; f = 1}')
    host_pkg=$({ dpkg -S "$(readlink -f "${host_path:-/nonexistent}")" 2>/dev/null || true; } | awk -F: 'NR == 1 {print $1}')
    fail "$bin links $lib, which is not in the image${host_pkg:+ (Debian package $host_pkg: add it to $list)}"
    continue
  fi
  need_pkg[$pkg]+=" $bin:$lib"
done <"$tmp/providers"
for pkg in "${!need_pkg[@]}"; do
  if [[ "$listed" != *" $pkg "* && "$base_pkgs" != *" $pkg "* ]]; then
    fail "$pkg is needed (${need_pkg[$pkg]# }) but not in $list (the image has it only as a dependency)"
  fi
done
for pkg in $listed; do
  if [[ "$image_pkgs" != *" $pkg "* ]]; then
    fail "$list lists $pkg, which is not installed in the image"
  elif [[ -z "${need_pkg[$pkg]:-}" && "$extras" != *" $pkg "* ]]; then
    fail "$list lists $pkg, which no binary links"
  fi
done
((failures > list_failures)) ||
  ok "$list covers every linked library ($(wc -l <"$tmp/needed") NEEDED entries) and lists nothing unused"

# ---- 4. the server config ---------------------------------------------------------------------
if [[ -n "$server_config" ]]; then
  if ! cat "$server_config" >"$tmp/server.yaml" 2>/dev/null || [[ ! -s "$tmp/server.yaml" ]]; then
    fail "--server-config $server_config: cannot read it, or it is empty"
  else
    "${bah[@]}" copy --quiet --chown 65532:65532 "$ctr" "$tmp/server.yaml" /tmp/check-server.yaml >/dev/null
    if out=$(in_image 65532:65532 vfio-user-server --config /tmp/check-server.yaml --check 2>&1); then
      ok "vfio-user-server --config $server_config --check accepts it"
    else
      fail "vfio-user-server --check rejects $server_config: ${out:0:500}"
    fi
  fi
else
  note "no --server-config given: vfio-user-server --check not run"
fi

# ---- 5. size ----------------------------------------------------------------------------------
size=$("${bah[@]}" images --format '{{.Size}}' "$image" 2>/dev/null | head -n 1 || true)
rootfs=$(du -sh "$mnt" 2>/dev/null | cut -f1 || true)
echo "check-image: image size ${size:-unknown} (root file system ${rootfs:-unknown}; base ${base_name:-?} $("${bah[@]}" images --format '{{.Size}}' "${base_name:-debian:bookworm-slim}" 2>/dev/null | head -n 1 || true))" >&2

if ((failures)); then
  echo "check-image: FAILED: $failures check(s) of $image" >&2
  exit 1
fi
echo "check-image: all checks of $image passed" >&2
