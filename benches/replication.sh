#!/usr/bin/env bash
# Pull replication on loopback against a plain copy of the same packs. One
# real `coffer serve` on 127.0.0.1 (the primary) holds day 1 of each harness
# dataset (../shared/bench/gen_data.py: vm, the disk image backed up as a
# file, as bench.py does; tree; db, the dump through standard input) in a
# namespace of its own, with the default pack size; two more namespaces hold
# the db dump and the vm image again in packs of 1 MiB (`init --pack-size
# 1048576`, db-1m and vm-1m): many more packs for about the same bytes. A replica config (no replica server runs)
# pulls each namespace with `coffer replicate --namespace NS`. Set-up (data,
# init, backups) is not timed.
#
# For each namespace, with the page cache dropped before each timed copy
# (when run as root; otherwise warm, and the output says so):
#   - `coffer replicate` under /usr/bin/time: wall, CPU, the replica's peak
#     RSS, and the primary server's CPU seconds during the copy;
#   - right after, a second `coffer replicate` that finds nothing to copy;
#   - `cp -r` and `rsync -a` of the primary's `packs/` directory of that
#     namespace into a fresh directory on the same disk, and the `sync` that
#     follows each (coffer fsyncs every pack it keeps; cp and rsync leave
#     their bytes in the page cache, so the sync is shown beside them).
# Prints per namespace: packs and bytes copied, wall seconds and MB/s of
# each, coffer's throughput as a ratio to cp's and to rsync's (1 = as fast,
# below 1 slower), peak RSS; then packs and peak RSS of db and vm with the
# default pack size beside the same data in 1 MiB packs (RSS should not grow
# with the count of packs); then the no-op runs; load averages before and
# after. Exits 1 when a copy failed or copied other than what the primary
# holds.
#
#   benches/replication.sh [SCALE]           (default scale 0.25: image
#                                             512 MiB, tree 384 MiB, dump 128 MiB)
#   DATA=/tmp/peerdata LIMIT_KIB=20480 KEEP=1 benches/replication.sh 0.25
#
# DATA is where the datasets are generated, or reused when its manifest
# matches the scale (default /tmp/peerdata). LIMIT_KIB sets the replica's
# `limit_kib` (default: none). TMPDIR chooses the disk of the working
# directory (primary, replica and copies all live there).
# Needs the release build (made here), python3, GNU time (/usr/bin/time),
# bc, rsync (installed with apt-get when missing and run as root) and a free
# UDP port on 127.0.0.1. Run as root to drop the page cache.
# KEEP=1 leaves the working directory (server log, each command's output)
# in place and prints where it is; otherwise it is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-0.25}
data=${DATA:-/tmp/peerdata}
cargo build --release --quiet
bin=$PWD/target/release/coffer
if ! command -v rsync >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "rsync is missing"; exit 1; }
    apt-get install -y rsync >/dev/null
fi
# Its stdout is the manifest; what it did goes to stderr.
python3 ../shared/bench/gen_data.py --scale "$scale" --out "$data" --only vm,tree,db >/dev/null
work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
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
now() { date +%s.%N; }
for v in $(compgen -e COFFER_); do unset "$v"; done
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# Day 1 of a dataset: bench.py renames dayN to src while it runs and says
# which day that is in .src_day.
day1() {
    local d=$data/$1
    if [ -e "$d/day1" ]; then echo "$d/day1"; elif [ "$(cat "$d/.src_day" 2>/dev/null)" = day1 ]; then echo "$d/src"; else
        echo "no day 1 of $1 in $data" >&2
        exit 1
    fi
}
vm_src=$(day1 vm)
tree_src=$(day1 tree)
db_src=$data/db/day1.sql

# --- Set-up, not timed: the primary, its namespaces, the backups.
namespaces=(vm tree db db-1m vm-1m)
server_fp=$("$bin" identity new --out "$work/server.id")
replica_fp=$("$bin" identity new --out "$work/replica.id")
"$bin" identity new --out "$work/replica-server.id" >/dev/null
{
    echo "listen = \"127.0.0.1:0\""
    echo "data = \"$work/primary\""
    echo "identity = \"$work/server.id\""
    for ns in "${namespaces[@]}"; do
        fp=$("$bin" identity new --out "$work/client-$ns.id")
        printf '[[client]]\nfingerprint = "%s"\nnamespace = "%s"\n' "$fp" "$ns"
    done
    printf '[[replica]]\nfingerprint = "%s"\nnamespaces = [' "$replica_fp"
    printf '"%s", ' "${namespaces[@]}" | sed 's/, $//'
    printf ']\n'
} >"$work/primary.toml"
"$bin" serve "${root_ok[@]}" --config "$work/primary.toml" >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 100); do
    grep -q listening "$work/server.out" 2>/dev/null && break
    sleep 0.1
done
port=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$work/server.out" | head -1)
[ -n "$port" ] || { echo "the server did not start:"; cat "$work/server.log"; exit 1; }
{
    echo "data = \"$work/replica\""
    echo "identity = \"$work/replica-server.id\""
    for ns in "${namespaces[@]}"; do
        echo "[[replicate]]"
        echo "namespace = \"$ns\""
        echo "primary = \"127.0.0.1:$port\""
        echo "primary_fingerprint = \"$server_fp\""
        echo "identity = \"$work/replica.id\""
        if [ -n "${LIMIT_KIB:-}" ]; then echo "limit_kib = $LIMIT_KIB"; fi
    done
} >"$work/replica.toml"

# `coffer ARGS` as the client of namespace NS.
client() {
    local ns=$1
    shift
    COFFER_PASSWORD=bench COFFER_CACHE_DIR="$work/cache-$ns" COFFER_IDENTITY="$work/client-$ns.id" \
        COFFER_SERVER_FINGERPRINT="$server_fp" COFFER_REPO="quic://127.0.0.1:$port/$ns" "$bin" "$@"
}
# Fast KDF, as the tests' init; the default pack size unless told.
fast_kdf=(--kdf-memory-kib 19456 --kdf-iterations 2)
# A set-up step, its output kept in NAME.out, shown if it fails.
step() {
    local name=$1
    shift
    "$@" >"$work/$name.out" 2>&1 || { echo "$name failed:"; tail -5 "$work/$name.out"; exit 1; }
}
t=$(now)
for ns in vm tree db; do step "init-$ns" client "$ns" init "${fast_kdf[@]}"; done
for ns in db-1m vm-1m; do step "init-$ns" client "$ns" init "${fast_kdf[@]}" --pack-size 1048576; done
for ns in vm vm-1m; do step "backup-$ns" client "$ns" backup "$vm_src"; done
step backup-tree client tree backup "$tree_src"
for ns in db db-1m; do step "backup-$ns" client "$ns" backup --stdin --stdin-name dump.sql <"$db_src"; done
setup_s=$(echo "$(now) - $t" | bc)

server_cpu() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$server_pid/stat"; }
# Runs a command under GNU time; appends "NS WHAT RC WALL_S CPU_S RSS_KIB
# PRIMARY_CPU_S" to the results.
timed() {
    local ns=$1 what=$2 rc=0 c0 e u s m
    shift 2
    c0=$(server_cpu)
    /usr/bin/time -f '%e %U %S %M' -o "$work/time-$what-$ns" "$@" >"$work/out-$what-$ns" 2>"$work/err-$what-$ns" || rc=$?
    read -r e u s m < <(tail -1 "$work/time-$what-$ns")
    echo "$ns $what $rc $e $(echo "$u + $s" | bc) $m $(echo "$(server_cpu) - $c0" | bc)" >>"$work/results"
}
# Wall seconds of a `sync` (what a plain copy left unwritten), appended as
# "NS WHAT-sync 0 WALL_S".
timed_sync() {
    local t0
    t0=$(now)
    sync
    echo "$1 $2-sync 0 $(echo "$(now) - $t0" | bc) 0 0 0" >>"$work/results"
}

# --- Timed.
: >"$work/results"
for ns in "${namespaces[@]}"; do
    packs=$work/primary/namespaces/$ns/packs
    echo "$ns $(find "$packs" -type f | wc -l) $(find "$packs" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')" >>"$work/sizes"
    drop_cache
    timed "$ns" replicate "$bin" --json replicate "${root_ok[@]}" --config "$work/replica.toml" --namespace "$ns"
    timed_sync "$ns" replicate
    timed "$ns" again "$bin" --json replicate "${root_ok[@]}" --config "$work/replica.toml" --namespace "$ns"
    drop_cache
    timed "$ns" cp cp -r "$packs" "$work/cp-$ns"
    timed_sync "$ns" cp
    drop_cache
    timed "$ns" rsync rsync -a "$packs/" "$work/rsync-$ns/"
    timed_sync "$ns" rsync
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$work" "$scale" "$cold" "$setup_s" "$load_before" "$load_after" "${LIMIT_KIB:-}" <<'PY'
import json, sys
work, scale, cold, setup_s, load_before, load_after, limit = sys.argv[1:8]
res = {}
for line in open(f"{work}/results"):
    ns, what, rc, wall, cpu, rss, pcpu = line.split()
    res[(ns, what)] = dict(rc=int(rc), wall=float(wall), cpu=float(cpu), rss=int(rss), pcpu=float(pcpu))
sizes = {l.split()[0]: (int(l.split()[1]), int(l.split()[2])) for l in open(f"{work}/sizes")}
order = [l.split()[0] for l in open(f"{work}/sizes")]

def report(ns, what):
    out = open(f"{work}/out-{what}-{ns}").read()
    try:
        return next(e["report"] for e in json.loads(out) if e["namespace"] == ns)
    except Exception:
        return {}

print(f"scale {scale}, page cache {cold} before each copy, limit_kib {limit or 'none'};"
      f" set-up (init and backups, not timed) {float(setup_s):.0f} s")
print(f"{'namespace':9} {'packs':>6} {'MB':>7} | {'coffer s':>8} {'MB/s':>6} {'+sync':>5} {'CPU s':>6}"
      f" {'primary':>7} {'RSS MiB':>7} | {'cp s':>6} {'MB/s':>6} {'+sync':>5} | {'rsync s':>7} {'MB/s':>6}"
      f" {'+sync':>5} | {'vs cp':>5} {'vs rsync':>8}")
fails = []
for ns in order:
    packs, nbytes = sizes[ns]
    r, c, y = res[(ns, "replicate")], res[(ns, "cp")], res[(ns, "rsync")]
    rep = report(ns, "replicate")
    for what in ("replicate", "again", "cp", "rsync"):
        if res[(ns, what)]["rc"] != 0:
            fails.append(f"{ns} {what}: exit {res[(ns, what)]['rc']}: "
                         + open(f"{work}/err-{what}-{ns}").read().strip()[-300:])
    if rep.get("packs_copied") != packs or rep.get("bytes_copied") != nbytes or rep.get("refused"):
        fails.append(f"{ns}: the primary holds {packs} packs, {nbytes} bytes; replicate says {rep}")
    mb = nbytes / 1e6
    print(f"{ns:9} {packs:6} {mb:7.1f} | {r['wall']:8.2f} {mb / r['wall']:6.1f}"
          f" {res[(ns, 'replicate-sync')]['wall']:5.2f} {r['cpu']:6.2f} {r['pcpu']:7.2f} {r['rss'] / 1024:7.1f} |"
          f" {c['wall']:6.2f} {mb / c['wall']:6.1f} {res[(ns, 'cp-sync')]['wall']:5.2f} |"
          f" {y['wall']:7.2f} {mb / y['wall']:6.1f} {res[(ns, 'rsync-sync')]['wall']:5.2f} |"
          f" {c['wall'] / r['wall']:5.2f} {y['wall'] / r['wall']:8.2f}")
print("(coffer s: `coffer replicate`, which fsyncs each pack; CPU s: its user + system; primary: the"
      " serving process's CPU s meanwhile; +sync: the `sync` right after; vs cp, vs rsync: coffer's"
      " MB/s over theirs)")
print("\npeak RSS against the number of packs (the same data, default packs and 1 MiB packs):")
for ns in ("db", "vm"):
    line = []
    for n in (ns, ns + "-1m"):
        r = res[(n, "replicate")]
        line.append(f"{n} {sizes[n][0]} packs, {r['rss'] / 1024:.1f} MiB, {r['wall']:.2f} s")
    print("  " + "; ".join(line))
print("\nsecond run, nothing to copy:")
for ns in order:
    a = res[(ns, "again")]
    rep = report(ns, "again")
    print(f"  {ns:9} {a['wall']:.2f} s, RSS {a['rss'] / 1024:.1f} MiB, packs copied {rep.get('packs_copied')},"
          f" snapshots copied {rep.get('snapshots_copied')}")
print(f"\nload average before {load_before}, after {load_after}")
for f in fails:
    print("FAILED", f)
sys.exit(1 if fails else 0)
PY
