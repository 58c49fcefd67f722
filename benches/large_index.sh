#!/usr/bin/env bash
# A large index: the same disk-image backup into a repository whose cache
# already holds COUNT blobs, for each COUNT given (0 is the empty
# repository). The blobs are made by examples/fill_cache.rs: real, 16-byte
# blobs in real packs of 512, entered into the cache as a backup enters them.
# The image (IMAGE_GIB GiB, default 4) is generated once: per MiB, 35 %
# random, 25 % a copy of an earlier random MiB, 30 % 16-symbol text, 10 %
# zeros. Each repository starts anew and is removed after its row.
#
# Prints one row per COUNT: the time to fill, the cache database's size, the
# first backup after the fill (a small directory: it pays the cache's weekly
# quick_check), then the image backup's wall time, MB/s, peak RSS and user
# CPU, and its throughput and RSS as ratios to the first COUNT's row.
#
#   benches/large_index.sh [COUNT...]          (default: 0 1000000 2000000)
#   IMAGE_GIB=4 WORK=/var/tmp benches/large_index.sh 0 2000000 10000000
#
# Disk: the image, plus per row the repository (about 40 % of the image),
# the fill's packs and parity (about 140 bytes a blob) and the cache (about
# 190 bytes a blob): 10 M blobs and 4 GiB need about 10 GB free in WORK
# (default: TMPDIR). Filling 10 M blobs took 12 minutes on a 2-core machine.
# Warm page cache: the image is read once before each backup.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- 0 1000000 2000000
gib=${IMAGE_GIB:-4}
cargo build --release --quiet --bin coffer --example fill_cache
bin=$PWD/target/release/coffer
fill=$PWD/target/release/examples/fill_cache
work=$(mktemp -d -p "${WORK:-${TMPDIR:-/tmp}}")
trap 'rm -rf "$work"' EXIT
for v in $(compgen -e COFFER_); do unset "$v"; done
export COFFER_PASSWORD=bench COFFER_CACHE_DIR=$work/cache
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

python3 - "$work/disk.img" "$gib" <<'PY'
import os, random, sys
path, gib = sys.argv[1], int(sys.argv[2])
rng = random.Random(24)
mib = 1 << 20
text = bytes.maketrans(bytes(range(256)), bytes(b"etaoinshrdlu .,\n"[i % 16] for i in range(256)))
randoms = []
with open(path, "wb") as f:
    for _ in range(gib * 1024):
        x = rng.random()
        if x < 0.35 or not randoms:
            block = os.urandom(mib)
            if len(randoms) < 256:
                randoms.append(block)
        elif x < 0.60:
            block = rng.choice(randoms)
        elif x < 0.90:
            block = os.urandom(mib).translate(text)
        else:
            block = bytes(mib)
        f.write(block)
PY
mkdir -p "$work/small"
head -c 1000000 /dev/urandom >"$work/small/f"
image_mb=$(echo "$gib * 1073741824 / 1000000" | bc)

echo "image: $gib GiB ($image_mb MB)"
printf '%10s %8s %9s %9s %9s %8s %8s %8s %9s %9s\n' blobs fill_s cache_MB first_s backup_s MB/s RSS_MiB user_s MB/s_ratio RSS_ratio
base_mbs='' base_rss=''
for count in "$@"; do
    rm -rf "$work/repo" "$work/cache"
    "$bin" --repo "$work/repo" init >/dev/null
    fill_s=0
    if [ "$count" -gt 0 ]; then
        t=$(now)
        "$fill" "$work/repo" "$count" >"$work/fill.out" 2>"$work/fill.err"
        fill_s=$(since "$t")
    fi
    t=$(now)
    "$bin" --repo "$work/repo" backup "$work/small" >/dev/null
    first_s=$(since "$t")
    cache_mb=$(du -cm "$work"/cache/*/cache.db* | tail -1 | cut -f1)
    cat "$work/disk.img" >/dev/null
    /usr/bin/time -f '%e %M %U' -o "$work/time" \
        "$bin" --repo "$work/repo" backup --image "$work/disk.img" >"$work/backup.out"
    read -r wall rss_kib user <"$work/time"
    mbs=$(echo "scale=1; $image_mb / $wall" | bc)
    rss=$((rss_kib / 1024))
    : "${base_mbs:=$mbs}" "${base_rss:=$rss}"
    printf '%10s %8.1f %9s %9.2f %9.1f %8.1f %8s %8.1f %9.2f %9.2f\n' "$count" "$fill_s" "$cache_mb" \
        "$first_s" "$wall" "$mbs" "$rss" "$user" \
        "$(echo "scale=3; $mbs / $base_mbs" | bc)" "$(echo "scale=3; $rss / $base_rss" | bc)"
done
