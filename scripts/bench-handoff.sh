#!/usr/bin/env bash
# Benchmarks the planned handoff (issue 17): a vfio-user-server with N null-backed virtio-blk
# devices, each driven by its own client (vfio-user-ctl bench, random 4 KiB reads at depth 4),
# is replaced K times by a successor started with --take-over. Reports:
#   - the pause the clients saw per handoff, p50 and p99 (the servers' own histogram: from the
#     successor's request to its serving the devices; nothing is served in between);
#   - the successor's start-up before its request (process start, configuration), apart;
#   - whether every client finished without an I/O error (a lost or failed request fails it).
# --idle: the clients attach and set up their queues but do no I/O until the end (then one
# read each): the cost of the handoff per device, without client processes polling on the
# same CPUs.
#
#   scripts/bench-handoff.sh [--devices N] [--handoffs K] [--idle] [--build-dir DIR]
#
# Defaults: 1 device, 10 handoffs, busy clients, build/ (scripts/build.sh release). Everything
# runs in a temporary directory on unix sockets; every process it starts is stopped when it
# ends.
set -euo pipefail
cd "$(dirname "$0")/.."

devices=1
handoffs=10
build_dir=build
rw=randread
while (($#)); do
  case "$1" in
    --idle) rw=idle ;;
    --devices) devices=$2; shift ;;
    --handoffs) handoffs=$2; shift ;;
    --build-dir) build_dir=$2; shift ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-handoff: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ "$devices" =~ ^[1-9][0-9]*$ && "$devices" -le 256 ]] || { echo "bench-handoff: --devices 1..256" >&2; exit 2; }
[[ "$handoffs" =~ ^[1-9][0-9]*$ && "$handoffs" -le 100 ]] || { echo "bench-handoff: --handoffs 1..100" >&2; exit 2; }
server=$build_dir/server/vfio-user-server
ctl=$build_dir/server/vfio-user-ctl
[[ -x "$server" && -x "$ctl" ]] || { echo "bench-handoff: build first (scripts/build.sh release)" >&2; exit 2; }

work=$(mktemp -d /tmp/vfu-bench-handoff.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

args=(--poll-threads 2 --handoff-socket "$work/handoff.sock" --control-socket "$work/control.sock")
for ((i = 0; i < devices; i++)); do
  args+=(--device "virtio-blk,id=d$i,socket=$work/d$i.sock,backend=null,size=64M,queue-size=64")
done

# start GENERATION [EXTRA ARGS]: a server logging to $work/server.GENERATION.log; waits for
# "ready" (at most 60 s).
start() {
  local gen=$1 i
  shift
  "$server" "${args[@]}" "$@" >"$work/server.$gen.log" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  for ((i = 0; i < 600; i++)); do
    grep -qs "vfio-user-server ready" "$work/server.$gen.log" && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench-handoff: server generation $gen did not start:" >&2
  tail -n 20 "$work/server.$gen.log" >&2
  exit 1
}

start 0
# Each client runs long enough for every handoff (about 1 s apart) and then some.
duration=$((handoffs * 2 + 5))
for ((i = 0; i < devices; i++)); do
  "$ctl" bench "$work/d$i.sock" --rw "$rw" --bs 4096 --qd 4 --duration "$duration" \
    >"$work/bench.$i.log" 2>&1 &
  bench_pids+=($!)
  pids+=($!)
done
sleep 1

startup_ms=()
for ((k = 1; k <= handoffs; k++)); do
  old=$server_pid
  t0=$(date +%s%N)
  start "$k" --take-over "$work/handoff.sock"
  startup_ms+=($((($(date +%s%N) - t0) / 1000000)))
  for ((i = 0; i < 200; i++)); do
    kill -0 "$old" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$old" 2>/dev/null; then
    echo "bench-handoff: server generation $((k - 1)) did not exit after handoff $k" >&2
    exit 1
  fi
  wait "$old" || { echo "bench-handoff: server generation $((k - 1)) exited non-zero" >&2; exit 1; }
  sleep 1
done

failed=0
for ((i = 0; i < devices; i++)); do
  if ! wait "${bench_pids[$i]}"; then
    echo "bench-handoff: the client of d$i failed:" >&2
    tail -n 5 "$work/bench.$i.log" >&2
    failed=1
  fi
done
"$ctl" stats --control-socket "$work/control.sock" >"$work/stats.txt"
pause=$(grep '^handoffs:' "$work/stats.txt" || echo "handoffs: none recorded")
sorted=$(printf '%s\n' "${startup_ms[@]}" | sort -n)
median=$(sed -n "$(((handoffs + 1) / 2))p" <<<"$sorted")
echo "devices $devices ($rw clients), $pause; successor start to serving (whole process, not a pause): median ${median} ms, max $(tail -n 1 <<<"$sorted") ms; clients: $([[ $failed == 0 ]] && echo 'all finished without an error' || echo FAILED)"
grep -h 'msg="handoff: serving the devices"' "$work"/server.*.log | sed -n 's/.*pause_us=\([0-9]*\).*/\1/p' |
  sort -n | awk '{v[NR]=$1} END {if (NR) printf "pause per handoff, from the successors logs: min %d us, median %d us, max %d us\n", v[1], v[int((NR+1)/2)], v[NR]}'
exit "$failed"
