#!/usr/bin/env bash
# `coffer mount` beside `restic mount` (and `rustic mount` on the restic
# repository, when rustic is installed with its mount feature) on the same data: the harness's tree
# (files of this machine's /usr) and its SQL dump as one large file, backed up
# once by each tool, then through each mount:
#   - the time to `find` one name in the mounted snapshot,
#   - `cat` throughput of the large file, cold (page cache dropped, fresh
#     mount) and warm (read again),
#   - the mount process's peak RSS over a fresh mount and a full `find`.
#
#   benches/mount.sh [TREE_MIB] [DB_MIB]        (defaults 300 and 256)
#
# Needs root (drop_caches), /dev/fuse, restic; rustic optional
# (cargo install rustic-rs --no-default-features --features mount). COFFER_BIN picks the binary
# (default: a release build). The machines are shared and noisy: compare the
# two tools within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
tree_mib=${1:-300}
db_mib=${2:-256}
harness=${COFFER_BENCH_HARNESS:-../shared/bench}
if [ -z "${COFFER_BIN:-}" ]; then
    cargo build --release --quiet
    COFFER_BIN=$PWD/target/release/coffer
fi
work=$(mktemp -d /tmp/coffer-mount-bench.XXXXXX)
data=${BENCH_DATA:-$work/data}
mnt_c=$work/mnt-coffer
mnt_r=$work/mnt-restic
mnt_u=$work/mnt-rustic
mkdir -p "$mnt_c" "$mnt_r" "$mnt_u" "$work/src"
pids=()
cleanup() {
    for m in "$mnt_c" "$mnt_r" "$mnt_u"; do fusermount3 -u -z "$m" 2>/dev/null || true; done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

python3 "$harness/gen_data.py" --only tree,db --tree-mib "$tree_mib" --db-mib "$db_mib" \
    --out "$data" >/dev/null 2>&1
# One source tree, the same absolute path for both tools.
src=$work/src
cp -al "$data/tree/day1/usr" "$src/usr"
cp -l "$data/db/day1.sql" "$src/dump.sql" 2>/dev/null || cp "$data/db/day1.sql" "$src/dump.sql"
big=$src/dump.sql
name=$(find "$src/usr" -type f | sort | sed -n '1000p' | xargs basename)

export COFFER_PASSWORD=bench RESTIC_PASSWORD=bench
export COFFER_CACHE_DIR=$work/coffer-cache RESTIC_CACHE_DIR=$work/restic-cache
"$COFFER_BIN" --repo "$work/coffer-repo" init -q
"$COFFER_BIN" --repo "$work/coffer-repo" backup -q "$src"
restic -q -r "$work/restic-repo" init >/dev/null
restic -q -r "$work/restic-repo" backup "$src" >/dev/null
files=$(find "$src" -type f | wc -l)
echo "data: $files files, $(du -sm "$src" | cut -f1) MiB; large file $(($(stat -c %s "$big") >> 20)) MiB; name searched: $name"

wait_mounted() {
    for _ in $(seq 600); do
        if grep -q " $1 " /proc/self/mountinfo && [ -n "$(ls "$1" 2>/dev/null)" ]; then return 0; fi
        sleep 0.1
    done
    echo "no mount at $1" >&2
    exit 1
}
start_mount() { # tool; sets $pid
    if [ "$1" = coffer ]; then
        "$COFFER_BIN" --repo "$work/coffer-repo" mount -q "$mnt_c" >"$work/coffer-mount.log" 2>&1 &
    elif [ "$1" = restic ]; then
        restic -q -r "$work/restic-repo" mount "$mnt_r" >"$work/restic-mount.log" 2>&1 &
    else
        RUSTIC_PASSWORD=bench rustic -r "$work/restic-repo" --cache-dir "$work/rustic-cache" \
            mount "$mnt_u" >"$work/rustic-mount.log" 2>&1 &
    fi
    pid=$!
    pids+=("$pid")
}
stop_mount() { # dir pid
    fusermount3 -u -z "$1" 2>/dev/null || true
    kill "$2" 2>/dev/null || true
    wait "$2" 2>/dev/null || true
}
secs() { # command... -> wall seconds
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l | xargs printf '%.2f'
}
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }

printf '\n%-8s %10s %12s %14s %14s %12s\n' tool "find s" "find all s" "cat cold MB/s" "cat warm MB/s" "peak RSS MiB"
size_mb=$(echo "$(stat -c %s "$big") / 1000000" | bc -l)
tools="coffer restic"
command -v rustic >/dev/null && tools="$tools rustic"
for tool in $tools; do
    mnt=$mnt_c
    [ "$tool" = restic ] && mnt=$mnt_r
    [ "$tool" = rustic ] && mnt=$mnt_u
    # Fresh mount, cold cache: find one name, then everything; peak RSS.
    drop
    start_mount $tool
    wait_mounted "$mnt"
    # The snapshot's copy of $src: under ids/ (coffer, restic), under
    # host/label/time (rustic).
    root=$(find "$mnt" -maxdepth 12 -type d -path "*${src}" -print -quit)
    t_find=$(secs find "$root/usr" -name "$name")
    t_all=$(secs find "$root" -printf '%s %m\n')
    rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$pid/status")
    stop_mount "$mnt" "$pid"
    # Fresh mount, cold cache: cat the large file, then again.
    drop
    start_mount $tool
    wait_mounted "$mnt"
    root=$(find "$mnt" -maxdepth 12 -type d -path "*${src}" -print -quit)
    t_cold=$(secs cat "$root/dump.sql")
    t_warm=$(secs cat "$root/dump.sql")
    cmp -s "$root/dump.sql" "$big" || echo "$tool: the large file differs!" >&2
    stop_mount "$mnt" "$pid"
    printf '%-8s %10s %12s %14.0f %14.0f %12s\n' $tool "$t_find" "$t_all" \
        "$(echo "$size_mb / $t_cold" | bc -l)" "$(echo "$size_mb / $t_warm" | bc -l)" "$rss"
done
