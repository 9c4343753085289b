#!/usr/bin/env bash
# Scale benchmark: many devices in one vfio-user-server. For each backend it starts a server
# with N virtio-blk devices (default 64) and, in the same run, a baseline server with 1 device,
# both from a config file (pollMode adaptive), and measures:
#   - start-up: time from exec until every device socket accepts a connection and answers a
#     vfio-user VERSION request (polled every ~1 ms by a small python client, bounded);
#   - memory: VmRSS once started and idle; RSS per device = (RSS_N - RSS_1) / (N - 1);
#   - idle CPU: utime+stime of the whole process over an idle interval, as % of one core,
#     first with no client, then with every device held by a connected, negotiated client
#     (VERSION done, no DMA, no queues: the device's rings are not active);
# then stops each server with SIGTERM and requires exit code 0.
# Targets (issue "64 devices in one server"): < 2 MiB per device, < 1 s until all sockets
# accept, idle CPU near zero.
#
#   scripts/bench-scale.sh [--devices N] [--backends "null ram"] [--idle-seconds S]
#                          [--no-clients] [--json FILE] [SERVER_BINARY]
#
# SERVER_BINARY defaults to build/server/vfio-user-server (relative to the repository); the
# script builds nothing. Backends: null (1 GiB, allocates nothing) and ram (1 MiB each).
# Every wait is bounded; temporary files live in one mktemp directory removed on exit.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
server="$repo/build/server/vfio-user-server"
devices=64
backends="null ram"
idle_seconds=5
with_clients=1
json_out=""

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --devices) devices=$2; shift 2 ;;
    --backends) backends=$2; shift 2 ;;
    --idle-seconds) idle_seconds=$2; shift 2 ;;
    --no-clients) with_clients=0; shift ;;
    --json) json_out=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
    *) server=$1; shift ;;
  esac
done
[[ -x "$server" ]] || { echo "error: no server binary at $server (build it first)" >&2; exit 2; }
[[ "$devices" =~ ^[0-9]+$ && "$devices" -ge 2 ]] || { echo "error: --devices must be >= 2" >&2; exit 2; }

work=$(mktemp -d /tmp/vfu-bench-scale.XXXXXX)
server_pid=""
helper_pid=""
stop_pid() {  # pid: TERM, then KILL after 5 s; never waits longer
  local pid=$1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  stop_pid "$helper_pid"
  stop_pid "$server_pid"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- The python helper: a minimal vfio-user client and /proc sampling ----------------------
cat >"$work/probe.py" <<'PY'
import json, os, socket, struct, sys, time

VERSION = 1
FLAG_ERROR = 0x20

def negotiate(path, timeout=2.0):
    """Connects and does the VERSION exchange; returns the socket or raises."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        caps = b'{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576}}\0'
        body = struct.pack("<HH", 0, 0) + caps
        s.sendall(struct.pack("<HHIII", 1, VERSION, 16 + len(body), 0, 0) + body)
        hdr = b""
        while len(hdr) < 16:
            chunk = s.recv(16 - len(hdr))
            if not chunk:
                raise ConnectionError("closed before the VERSION reply")
            hdr += chunk
        _, cmd, size, flags, err = struct.unpack("<HHIII", hdr)
        rest = size - 16
        while rest > 0:
            chunk = s.recv(min(rest, 65536))
            if not chunk:
                raise ConnectionError("closed inside the VERSION reply")
            rest -= len(chunk)
        if cmd != VERSION or flags & FLAG_ERROR:
            raise ConnectionError(f"VERSION refused (flags {flags:#x}, errno {err})")
        return s
    except BaseException:
        s.close()
        raise

def wait_ready(marker, timeout, paths):
    """Polls until every socket answers VERSION; prints absolute (CLOCK_REALTIME) times."""
    open(marker, "w").close()  # imports done: the caller may exec the server now
    deadline = time.time() + timeout
    pending, answered, errors = set(paths), {}, {}
    while pending and time.time() < deadline:
        for p in sorted(pending):
            try:
                negotiate(p).close()
                answered[p] = time.time()
            except (FileNotFoundError, ConnectionRefusedError):
                pass  # not listening yet
            except OSError as e:
                errors[p] = str(e)
        pending -= answered.keys()
        if pending:
            time.sleep(0.001)
    print(json.dumps({"answered": len(answered), "expected": len(paths),
                      "first": min(answered.values(), default=None),
                      "last": max(answered.values(), default=None),
                      "errors": errors}))
    return 0 if not pending else 1

def sample(pid):
    """One reading of the process: time, CPU ticks, memory, threads, fds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            status[k] = v.split()
    kib = lambda k: int(status[k][0]) if k in status else None
    # Per thread: ticks, and from schedstat the run time in ns and the number of times it ran
    # (about one per wake-up): finer than ticks, which count 10 ms at a time.
    per_thread, run_ns, slices = {}, 0, 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, _, tail = f.read().rpartition(")")
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns, _, ran = (int(x) for x in f.read().split())
        except OSError:
            continue  # the thread ended
        name = head.split("(", 1)[1]
        t = tail.split()
        per_thread[f"{name}/{tid}"] = [int(t[11]) + int(t[12]), ns, ran]
        run_ns += ns
        slices += ran
    print(json.dumps({"t": time.time(), "ticks": ticks, "clk_tck": os.sysconf("SC_CLK_TCK"),
                      "rss_kib": kib("VmRSS"), "anon_kib": kib("RssAnon"),
                      "file_kib": kib("RssFile"), "shmem_kib": kib("RssShmem"),
                      "hwm_kib": kib("VmHWM"), "vmsize_kib": kib("VmSize"),
                      "threads": int(status["Threads"][0]),
                      "fds": len(os.listdir(f"/proc/{pid}/fd")), "per_thread": per_thread,
                      "run_ns": run_ns, "slices": slices}))
    return 0

class Conn:
    """Synchronous requests on a negotiated socket (one outstanding at a time)."""
    def __init__(self, path):
        self.s = negotiate(path)
        self.next_id = 2
        self.keep = []  # fds and mappings that must outlive the session

    def call(self, cmd, payload, fds=()):
        msg = struct.pack("<HHIII", self.next_id, cmd, 16 + len(payload), 0, 0) + payload
        self.next_id = (self.next_id + 1) & 0xffff
        if fds:
            socket.send_fds(self.s, [msg], list(fds))
        else:
            self.s.sendall(msg)
        hdr = self._recv(16)
        _, rcmd, size, flags, err = struct.unpack("<HHIII", hdr)
        body = self._recv(size - 16)
        if rcmd != cmd or flags & FLAG_ERROR:
            raise ConnectionError(f"command {cmd} failed: errno {err}")
        return body

    def _recv(self, n):
        out = b""
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            if not chunk:
                raise ConnectionError("server closed the connection")
            out += chunk
        return out

    def read(self, region, offset, count):
        return self.call(9, struct.pack("<QII", offset, region, count))[16:]

    def write(self, region, offset, data):
        self.call(10, struct.pack("<QII", offset, region, len(data)) + data)

CONFIG, BAR4 = 7, 4
STATUS, DFSEL, DF, GFSEL, GF, NUMQ = 0x14, 0x00, 0x04, 0x08, 0x0c, 0x12
QSEL, QSIZE, QMSIX, QENABLE, QDESC, QDRIVER, QDEVICE = 0x16, 0x18, 0x1a, 0x1c, 0x20, 0x28, 0x30

def activate(c):
    """What a guest driver does before its first I/O: MSI-X and bus mastering on, features
    negotiated (VERSION_1 only), every queue's rings in shared memory, DRIVER_OK. virtio-pci
    common configuration at BAR4 offset 0 (as vfio-user-ctl info shows)."""
    cfg = c.read(CONFIG, 0, 256)
    p = cfg[0x34] & 0xfc
    for _ in range(48):
        if p == 0 or cfg[p] == 0x11:
            break
        p = cfg[p + 1] & 0xfc
    if p == 0:
        raise RuntimeError("no MSI-X capability")
    ctl = struct.unpack_from("<H", cfg, p + 2)[0]
    c.write(CONFIG, p + 2, struct.pack("<H", ctl | 0x8000))
    c.write(CONFIG, 4, struct.pack("<H", struct.unpack_from("<H", cfg, 4)[0] | 0x6))
    w8 = lambda off, v: c.write(BAR4, off, struct.pack("<B", v))
    w16 = lambda off, v: c.write(BAR4, off, struct.pack("<H", v))
    w32 = lambda off, v: c.write(BAR4, off, struct.pack("<I", v))
    r16 = lambda off: struct.unpack("<H", c.read(BAR4, off, 2))[0]
    w8(STATUS, 0)
    w8(STATUS, 1 | 2)
    w32(DFSEL, 1)
    if not struct.unpack("<I", c.read(BAR4, DF, 4))[0] & 1:
        raise RuntimeError("no VERSION_1")
    w32(GFSEL, 0); w32(GF, 0); w32(GFSEL, 1); w32(GF, 1)
    w8(STATUS, 1 | 2 | 8)
    nq = r16(NUMQ)
    qsize = 256
    ring = 16 * qsize + 6 + 2 * qsize
    per_queue = ((ring + 4095) // 4096 + 1) * 4096
    size = per_queue * nq
    fd = os.memfd_create("vfu-bench-rings")
    os.ftruncate(fd, size)
    iova = 1 << 32
    c.call(2, struct.pack("<IIQQQ", 32, 3, 0, iova, size), [fd])
    c.keep.append(fd)
    for q in range(nq):
        w16(QSEL, q)
        n = min(r16(QSIZE), qsize)
        w16(QSIZE, n)
        w16(QMSIX, q + 1)
        base = iova + q * per_queue
        for off, addr in ((QDESC, base), (QDRIVER, base + 16 * n),
                          (QDEVICE, base + per_queue - 4096)):
            w32(off, addr & 0xffffffff); w32(off + 4, addr >> 32)
        w16(QENABLE, 1)
    w8(STATUS, 1 | 2 | 8 | 4)
    st = c.read(BAR4, STATUS, 1)[0]
    if not st & 4 or st & 0x40:
        raise RuntimeError(f"DRIVER_OK refused (status {st:#x})")

def hold(marker, mode, paths):
    """Connects every socket (mode "connect": VERSION only; "driver": also sets the virtio
    device up like a guest driver with idle queues), reports, then idles until terminated."""
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    held = []
    for p in paths:
        c = Conn(p)
        if mode == "driver":
            activate(c)
        held.append(c)
    with open(marker, "w") as f:
        f.write(str(len(held)))
    while True:
        time.sleep(3600)

cmd = sys.argv[1]
if cmd == "wait-ready":
    sys.exit(wait_ready(sys.argv[2], float(sys.argv[3]), sys.argv[4:]))
elif cmd == "sample":
    sys.exit(sample(int(sys.argv[2])))
elif cmd == "hold":
    sys.exit(hold(sys.argv[2], sys.argv[3], sys.argv[4:]))
sys.exit(2)
PY

wait_for_file() {  # path seconds
  local path=$1 limit=$(( $2 * 100 ))
  for _ in $(seq "$limit"); do [[ -e "$path" ]] && return 0; sleep 0.01; done
  return 1
}

# hold_and_sample MODE DIR COUNT SOCKET...: a client on every socket (MODE connect: VERSION
# only; driver: a virtio driver with live, idle queues), then two samples idle_seconds apart
# ($dir/MODE0.json, $dir/MODE1.json); the clients disconnect afterwards.
hold_and_sample() {
  local mode=$1 dir=$2 count=$3
  shift 3
  rm -f "$dir/held"
  python3 "$work/probe.py" hold "$dir/held" "$mode" "$@" 2>"$dir/hold-$mode.err" &
  helper_pid=$!
  local n=""
  for _ in $(seq 1000); do  # 10 s
    [[ -s "$dir/held" ]] && { n=$(cat "$dir/held"); break; }
    kill -0 "$helper_pid" 2>/dev/null || break
    sleep 0.01
  done
  if [[ "$n" != "$count" ]]; then
    echo "error: could not attach a '$mode' client to every device" >&2
    cat "$dir/hold-$mode.err" >&2; tail -n 20 "$dir/server.log" >&2
    return 1
  fi
  sleep 1
  python3 "$work/probe.py" sample "$server_pid" >"$dir/${mode}0.json"
  sleep "$idle_seconds"
  python3 "$work/probe.py" sample "$server_pid" >"$dir/${mode}1.json"
  stop_pid "$helper_pid"
  helper_pid=""
  sleep 0.5  # let the sessions end before the next clients come
}

# run_one BACKEND COUNT: writes $work/BACKEND-COUNT/result.json
run_one() {
  local backend=$1 count=$2
  local dir="$work/$backend-$count"
  mkdir -p "$dir/sockets"
  local size="1Gi"
  [[ "$backend" == ram ]] && size="1Mi"
  {
    echo "apiVersion: vfio-user.io/v1alpha1"
    echo "kind: ServerConfig"
    echo "settings:"
    echo "  socketRoot: $dir/sockets"
    echo "  controlSocket: $dir/control.sock"
    echo "  logLevel: warn"
    echo "  pollThreads: 1"
    echo "  socketOwner: {uid: $(id -u), gid: $(id -g), mode: \"0660\"}"
    echo "devices:"
    for i in $(seq 0 $((count - 1))); do
      echo "  - id: disk$i"
      echo "    class: virtio-blk"
      echo "    backend: {type: \"$backend\", size: $size}"
      echo "    pollMode: adaptive"
    done
  } >"$dir/server.yaml"
  local sockets=()
  for i in $(seq 0 $((count - 1))); do sockets+=("$dir/sockets/disk$i/vfio-user.sock"); done

  # The poller first (so its start-up is not counted), then the server.
  python3 "$work/probe.py" wait-ready "$dir/poller.ready" 10 "${sockets[@]}" >"$dir/ready.json" &
  helper_pid=$!
  wait_for_file "$dir/poller.ready" 10 || { echo "error: the poller did not start" >&2; return 1; }
  local t0=$EPOCHREALTIME
  "$server" --config "$dir/server.yaml" >"$dir/server.log" 2>&1 &
  server_pid=$!
  if ! wait "$helper_pid"; then
    helper_pid=""
    echo "error: not every socket answered within 10 s ($backend, $count devices):" >&2
    cat "$dir/ready.json" >&2; tail -n 20 "$dir/server.log" >&2
    return 1
  fi
  helper_pid=""

  sleep 1  # let the probe sessions end and the allocator settle
  python3 "$work/probe.py" sample "$server_pid" >"$dir/idle0.json"
  sleep "$idle_seconds"
  python3 "$work/probe.py" sample "$server_pid" >"$dir/idle1.json"

  if [[ $with_clients == 1 ]]; then
    hold_and_sample connect "$dir" "$count" "${sockets[@]}" || return 1
    hold_and_sample driver "$dir" "$count" "${sockets[@]}" || return 1
  fi

  kill -TERM "$server_pid"
  local code=0 stopped=0
  for _ in $(seq 100); do
    if ! kill -0 "$server_pid" 2>/dev/null; then stopped=1; break; fi
    sleep 0.1
  done
  if [[ $stopped == 0 ]]; then
    echo "error: the server did not stop within 10 s of SIGTERM" >&2
    return 1
  fi
  wait "$server_pid" || code=$?
  server_pid=""
  if [[ $code != 0 ]]; then
    echo "error: the server exited with $code after SIGTERM" >&2
    tail -n 20 "$dir/server.log" >&2
    return 1
  fi
  python3 - "$dir" "$t0" "$backend" "$count" "$with_clients" >"$dir/result.json" <<'PY'
import json, sys
d, t0, backend, count, with_clients = sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
load = lambda n: json.load(open(f"{d}/{n}.json"))
ready, i0, i1 = load("ready"), load("idle0"), load("idle1")
cpu = lambda a, b: 100.0 * (b["ticks"] - a["ticks"]) / a["clk_tck"] / (b["t"] - a["t"])
r = {"backend": backend, "devices": count,
     "first_answer_s": ready["first"] - t0, "all_answer_s": ready["last"] - t0,
     "rss_kib": i1["rss_kib"], "anon_kib": i1["anon_kib"], "file_kib": i1["file_kib"],
     "shmem_kib": i1["shmem_kib"], "hwm_kib": i1["hwm_kib"], "vmsize_kib": i1["vmsize_kib"],
     "threads": i1["threads"], "fds": i1["fds"],
     "idle_cpu_pct": cpu(i0, i1), "idle_ticks": i1["ticks"] - i0["ticks"]}
def busiest(a, b):
    """Threads that ran between two samples, most run time first: {name/tid: [us, wakeups]}."""
    d = {}
    for k, (_, ns, ran) in b["per_thread"].items():
        _, ns0, ran0 = a["per_thread"].get(k, [0, 0, 0])
        if ran > ran0:
            d[k] = [round((ns - ns0) / 1000), ran - ran0]
    return dict(sorted(d.items(), key=lambda kv: -kv[1][0]))
precise = lambda a, b: 100.0 * (b["run_ns"] - a["run_ns"]) / 1e9 / (b["t"] - a["t"])
wakeups = lambda a, b: (b["slices"] - a["slices"]) / (b["t"] - a["t"])
r["idle_cpu_ns_pct"] = precise(i0, i1)
r["idle_wakeups_per_s"] = wakeups(i0, i1)
r["idle_threads"] = busiest(i0, i1)
if with_clients:
    for mode in ("connect", "driver"):
        a, b = load(f"{mode}0"), load(f"{mode}1")
        r[mode] = {"rss_kib": b["rss_kib"], "anon_kib": b["anon_kib"],
                   "shmem_kib": b["shmem_kib"], "cpu_pct": cpu(a, b),
                   "ticks": b["ticks"] - a["ticks"], "fds": b["fds"],
                   "cpu_ns_pct": precise(a, b), "wakeups_per_s": wakeups(a, b),
                   "threads": busiest(a, b)}
print(json.dumps(r))
PY
}

echo "vfio-user-server: $server"
echo "devices: $devices (baseline 1), backends: $backends, idle interval: ${idle_seconds} s"
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
results=()
for backend in $backends; do
  case "$backend" in null|ram) ;; *) echo "error: backend must be null or ram" >&2; exit 2 ;; esac
  for count in 1 "$devices"; do
    echo "running: $backend backend, $count device(s)..."
    run_one "$backend" "$count"
    results+=("$work/$backend-$count/result.json")
  done
done

python3 - "$devices" "$json_out" "${results[@]}" <<'PY'
import json, sys
n, json_out, files = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
rows = [json.load(open(f)) for f in files]
MIB = 1024.0
TARGET_RSS_MIB, TARGET_START_S, TARGET_CPU_PCT = 2.0, 1.0, 1.0  # "near zero": < 1 % of a core
def mib(kib): return f"{kib / MIB:.1f} MiB"
def pct(x): return f"{x:.2f} %"
print()
print("Idle = no client; +conn = every device has a negotiated client (VERSION only);")
print("+driver = every device has a client that set up virtio like a guest driver (queues live).")
print("CPU: utime+stime ticks (10 ms each) over the interval, as % of one core; in brackets the")
print("same from schedstat run time (ns) and the wake-ups per second of all threads.")
print(f"{'backend':8} {'devices':>7} {'all accept':>10} {'RSS':>9} {'anon':>9} {'thr':>4} {'fds':>4} "
      f"{'CPU idle':>24} {'CPU +conn':>24} {'CPU +driver':>24} {'RSS +driver':>11}")
def cpu_text(x):
    return f"{x['cpu_pct']:.2f}% ({x['cpu_ns_pct']:.3f}%, {x['wakeups_per_s']:.1f}/s)"
for r in rows:
    c, d = r.get("connect"), r.get("driver")
    idle = {"cpu_pct": r["idle_cpu_pct"], "cpu_ns_pct": r["idle_cpu_ns_pct"],
            "wakeups_per_s": r["idle_wakeups_per_s"]}
    print(f"{r['backend']:8} {r['devices']:>7} {r['all_answer_s'] * 1000:>7.1f} ms "
          f"{mib(r['rss_kib']):>9} {mib(r['anon_kib']):>9} {r['threads']:>4} {r['fds']:>4} "
          f"{cpu_text(idle):>24} {cpu_text(c) if c else '-':>24} "
          f"{cpu_text(d) if d else '-':>24} {mib(d['rss_kib']) if d else '-':>11}")
summary = []
print()
for backend in dict.fromkeys(r["backend"] for r in rows):
    one = next(r for r in rows if r["backend"] == backend and r["devices"] == 1)
    many = next(r for r in rows if r["backend"] == backend and r["devices"] == n)
    per_dev = (many["rss_kib"] - one["rss_kib"]) / (n - 1) / MIB
    s = {"backend": backend, "devices": n, "rss_per_device_mib": per_dev,
         "anon_per_device_mib": (many["anon_kib"] - one["anon_kib"]) / (n - 1) / MIB,
         "all_accept_s": many["all_answer_s"], "idle_cpu_pct": many["idle_cpu_pct"]}
    checks = [("RSS/device", per_dev, TARGET_RSS_MIB, f"{per_dev:.3f} MiB"),
              ("start-up", many["all_answer_s"], TARGET_START_S,
               f"{many['all_answer_s'] * 1000:.1f} ms"),
              ("idle CPU", many["idle_cpu_pct"], TARGET_CPU_PCT, pct(many["idle_cpu_pct"]))]
    for mode in ("connect", "driver"):
        if mode in many:
            s[f"{mode}_rss_per_device_mib"] = (many[mode]["rss_kib"] - one[mode]["rss_kib"]) / (n - 1) / MIB
            s[f"{mode}_cpu_pct"] = many[mode]["cpu_pct"]
            checks.append((f"RSS/device +{mode}", s[f"{mode}_rss_per_device_mib"], TARGET_RSS_MIB,
                           f"{s[f'{mode}_rss_per_device_mib']:.3f} MiB"))
            checks.append((f"idle CPU +{mode}", many[mode]["cpu_pct"], TARGET_CPU_PCT,
                           pct(many[mode]["cpu_pct"])))
    print(f"{backend} backend, {n} devices vs 1:")
    for name, value, target, text in checks:
        print(f"  {name:22} {text:>12}  = {value / target:6.3f}x target  "
              f"{'met' if value < target else 'MISSED'}")
    for label, threads in (("idle", many["idle_threads"]),
                           ("+driver", many.get("driver", {}).get("threads", {}))):
        if threads:
            top = ", ".join(f"{k} {us} us/{n} wake-ups" for k, (us, n) in list(threads.items())[:4])
            print(f"  threads that ran ({label}): {top}")
    summary.append(s)
if json_out:
    with open(json_out, "w") as f:
        json.dump({"rows": rows, "summary": summary}, f, indent=2)
PY
