#!/usr/bin/env bash
# Runs clang-tidy (.clang-tidy) over the server, device plugin, hook and operator sources using build/compile_commands.json.
# Fails on any finding. Needs a configured build (scripts/build.sh release).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -f build/compile_commands.json ]] || ./scripts/build.sh release >/dev/null
mapfile -t files < <(git ls-files 'server/*.cc' 'deviceplugin/*.cc' 'operator/*.cc')
log=$(mktemp)
trap 'rm -f "$log"' EXIT
printf '%s\n' "${files[@]}" | xargs -P "$(nproc)" -n 4 clang-tidy -p build --quiet >"$log" 2>/dev/null || true
if grep -E 'warning:|error:' "$log" | sort -u; then
  echo "clang-tidy found problems (above)" >&2
  exit 1
fi
echo "clang-tidy ok (${#files[@]} files)"
