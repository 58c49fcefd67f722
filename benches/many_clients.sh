#!/usr/bin/env bash
# Many clients against one server: one real `coffer serve` on 127.0.0.1 and N
# clients, each with its own identity (`coffer identity new`), namespace, cache
# and passphrase, run W at a time (a wave starts when the previous one has
# finished). Each client first creates its repository (`coffer init`, default
# KDF), then, in a second round of waves, backs up a small directory of its own
# (FILES random files, KIB KiB in all, generated before the clock starts).
#
# Prints, for each phase (init, backup): its wall time, its failures, the
# median and 95th percentile of one client's wall time, one client's median
# CPU seconds (user + system) and all clients' CPU seconds together (the
# clients share this machine's cores with the server: that sum over the cores
# is a floor for the wall time), and a client's median peak RSS; then the
# total wall time, the failures, the namespaces holding a snapshot, and the
# server's peak RSS (VmHWM) and CPU seconds.
#
#   benches/many_clients.sh [N] [W]          (defaults: 300 clients, waves of 64)
#   FILES=16 KIB=1024 KEEP=1 benches/many_clients.sh 300 64
#
# All clients connect from 127.0.0.1, so the server's cap on handshakes in
# progress per address (`[limits] handshakes_per_address`, default 32) is set
# to max(W, 32): a real fleet comes from many addresses. HANDSHAKES=32 keeps
# the default, and then clients of a wave larger than 32 can be refused.
#
# Needs the release build (made here), GNU time (/usr/bin/time), bc and a free
# UDP port on 127.0.0.1.
# KEEP=1 leaves the working directory (server log, each client's output) in
# place and prints where it is; otherwise it is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-300}
w=${2:-64}
files=${FILES:-16}
kib=${KIB:-1024}
cargo build --release --quiet
bin=$PWD/target/release/coffer
work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    if [ "${KEEP:-0}" = 1 ]; then echo "left in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
# `coffer serve` refuses to run as root unless told it may.
root_ok=()
[ "$(id -u)" = 0 ] && root_ok=(--allow-root)
now() { date +%s.%N; }
# The clients get their settings from this script alone.
for v in $(compgen -e COFFER_); do unset "$v"; done

# --- Set-up, not timed: identities, the server's config, the clients' data.
handshakes=${HANDSHAKES:-$((w > 32 ? w : 32))}
server_fp=$("$bin" identity new --out "$work/server.id")
{
    echo "listen = \"127.0.0.1:0\""
    echo "data = \"$work/data\""
    echo "identity = \"$work/server.id\""
    # The N clients stand for N machines, but all come from 127.0.0.1: the
    # cap on handshakes in progress per address (default 32) is raised to
    # the wave size, unless HANDSHAKES says otherwise (32 gives the default).
    echo "[limits]"
    echo "handshakes_per_address = $handshakes"
} >"$work/server.toml"
t=$(now)
for i in $(seq 0 $((n - 1))); do
    fp=$("$bin" identity new --out "$work/client$i.id")
    printf '[[client]]\nfingerprint = "%s"\nnamespace = "ns-%d"\n' "$fp" "$i" >>"$work/server.toml"
done
identities_s=$(echo "$(now) - $t" | bc)

python3 - "$work" "$n" "$files" "$kib" <<'PY'
import os, random, sys
work, n, files, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for i in range(n):
    d = os.path.join(work, f"src{i}")
    os.makedirs(d)
    # Sizes that vary around the mean; half of each file random, half
    # repeated, so compression and deduplication both have something to do.
    rng = random.Random(i)
    sizes = [rng.randint(1, 2 * kib * 1024 // files) for _ in range(files)]
    for j, size in enumerate(sizes):
        half = size // 2
        with open(os.path.join(d, f"f{j}"), "wb") as f:
            f.write(os.urandom(half))
            f.write(bytes([j]) * (size - half))
PY

"$bin" serve "${root_ok[@]}" --config "$work/server.toml" >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 100); do
    grep -q listening "$work/server.out" 2>/dev/null && break
    sleep 0.1
done
port=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$work/server.out" | head -1)
[ -n "$port" ] || { echo "the server did not start:"; cat "$work/server.log"; exit 1; }

# One client's command, timed; appends "PHASE I RC WALL_S CPU_S RSS_KIB" to
# the results.
client() {
    local phase=$1 i=$2 rc=0
    local args=(init)
    [ "$phase" = backup ] && args=(backup --host bench "$work/src$i")
    COFFER_PASSWORD="pass-$i" COFFER_CACHE_DIR="$work/cache$i" COFFER_IDENTITY="$work/client$i.id" \
        COFFER_SERVER_FINGERPRINT="$server_fp" COFFER_REPO="quic://127.0.0.1:$port/ns-$i" \
        /usr/bin/time -f '%e %U %S %M' -o "$work/time-$phase-$i" \
        "$bin" "${args[@]}" >"$work/out-$phase-$i" 2>&1 || rc=$?
    local e u s m
    read -r e u s m < <(tail -1 "$work/time-$phase-$i")
    echo "$phase $i $rc $e $(echo "$u + $s" | bc) $m" >>"$work/results"
}

# Runs one phase in waves of W; writes its wall time to wall-PHASE.
phase() {
    local name=$1 t0 pids
    t0=$(now)
    for start in $(seq 0 "$w" $((n - 1))); do
        pids=()
        for i in $(seq "$start" $((start + w - 1))); do
            [ "$i" -lt "$n" ] || break
            client "$name" "$i" &
            pids+=($!)
        done
        wait "${pids[@]}"
    done
    echo "$(now) - $t0" | bc >"$work/wall-$name"
}

t_all=$(now)
phase init
phase backup
total_s=$(echo "$(now) - $t_all" | bc)
read -r hwm_kib < <(awk '/VmHWM/ {print $2}' "/proc/$server_pid/status")
read -r cpu_ticks < <(awk '{print $14 + $15}' "/proc/$server_pid/stat")
cpu_s=$(echo "scale=1; $cpu_ticks / $(getconf CLK_TCK)" | bc)
with_snapshot=0
for i in $(seq 0 $((n - 1))); do
    [ -n "$(ls -A "$work/data/namespaces/ns-$i/snapshots" 2>/dev/null)" ] && with_snapshot=$((with_snapshot + 1))
done

python3 - "$work" "$n" "$w" "$files" "$kib" "$identities_s" "$total_s" "$with_snapshot" "$hwm_kib" "$cpu_s" "$handshakes" <<'PY'
import statistics, sys
work, n, w, files, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
ident_s, total_s, snaps, hwm_kib, cpu_s, hs = sys.argv[6:12]
rows = [l.split() for l in open(f"{work}/results")]
print(f"{n} clients in waves of {w}, each {files} files, {kib} KiB"
      f" (identities made beforehand in {float(ident_s):.1f} s), handshakes_per_address {hs}")
print(f"{'phase':8} {'wall s':>8} {'failures':>9} {'median s':>9} {'p95 s':>7}"
      f" {'CPU s/client':>13} {'CPU s all':>10} {'RSS MiB/client':>15}")
fails = 0
for ph in ("init", "backup"):
    mine = [r for r in rows if r[0] == ph]
    secs = sorted(float(r[3]) for r in mine)
    cpu = [float(r[4]) for r in mine]
    bad = [r for r in mine if r[2] != "0"]
    fails += len(bad)
    wall = float(open(f"{work}/wall-{ph}").read())
    p95 = secs[min(len(secs) - 1, int(0.95 * len(secs)))]
    print(f"{ph:8} {wall:8.1f} {len(bad):9} {statistics.median(secs):9.2f} {p95:7.2f}"
          f" {statistics.median(cpu):13.3f} {sum(cpu):10.1f}"
          f" {statistics.median(int(r[5]) for r in mine) / 1024:15.0f}")
    for r in bad[:3]:
        last = open(f"{work}/out-{ph}-{r[1]}").read().strip().splitlines()[-1:]
        print(f"  client {r[1]} exit {r[2]}: {' '.join(last)}")
print(f"total wall {float(total_s):.1f} s, failures {fails}, namespaces with a snapshot {snaps}/{n}")
print(f"server peak RSS {int(hwm_kib) / 1024:.0f} MiB, server CPU {cpu_s} s")
PY
