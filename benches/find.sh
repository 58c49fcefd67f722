#!/usr/bin/env bash
# `coffer find` against `restic find` across 30 snapshots of the same tree,
# which changes a little between snapshots (files added, removed, renamed).
#
#   benches/find.sh [SRC]     (default SRC: /usr/share/doc)
#
# Both tools get the same copies, their caches in the work directory, warm;
# each find runs REPS times (default 3) and the median wall time and peak
# RSS are printed. COFFER_BIN picks the binary (default: a release build).
# The machines are shared and noisy: compare the two tools of one run.
set -euo pipefail
cd "$(dirname "$0")/.."
src_in=${1:-/usr/share/doc}
reps=${REPS:-3}
snaps=${SNAPS:-30}
bin=${COFFER_BIN:-$PWD/target/release/coffer}
if [ -z "${COFFER_BIN:-}" ]; then cargo build --release --quiet; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$work/src
cp -a "$src_in" "$src"
export COFFER_PASSWORD=bench-passphrase COFFER_REPO=$work/coffer COFFER_CACHE_DIR=$work/coffer-cache
export RESTIC_PASSWORD=bench-passphrase RESTIC_REPOSITORY=$work/restic RESTIC_CACHE_DIR=$work/restic-cache
"$bin" -q init --kdf-memory-kib 19456 --kdf-iterations 2
restic init -q
mapfile -t dirs < <(cd "$src" && find . -mindepth 1 -type d | LC_ALL=C sort)
RANDOM=42
for i in $(seq 1 "$snaps"); do
    if [ "$i" -gt 1 ]; then
        # Added: a log file in three directories; removed: two files;
        # renamed: one (the same seed gives the same changes every run).
        for _ in 1 2 3; do
            d=${dirs[$((RANDOM % ${#dirs[@]}))]}
            echo "round $i" > "$src/$d/round-$i.log"
        done
        mapfile -t files < <(cd "$src" && find . -type f | LC_ALL=C sort)
        rm -f "$src/${files[$((RANDOM % ${#files[@]}))]}" "$src/${files[$((RANDOM % ${#files[@]}))]}"
        f=${files[$((RANDOM % ${#files[@]}))]}
        [ -e "$src/$f" ] && mv "$src/$f" "$src/$f.renamed-$i"
    fi
    "$bin" -q backup "$src"
    restic backup -q "$src" > /dev/null
done
echo "data: $(du -sh "$src" | cut -f1), $(find "$src" | wc -l) entries, $snaps snapshots each"

# median of the wall times (s) and peak RSS (KiB) of REPS runs of "$@"
timed() {
    local out=() rss=()
    for _ in $(seq 1 "$reps"); do
        /usr/bin/time -f '%e %M' -o "$work/t" "$@" > "$work/out" 2> /dev/null
        read -r w m < "$work/t"
        out+=("$w"); rss+=("$m")
    done
    local n=$(( ${#out[@]} / 2 ))
    printf '%8s s %8s MiB' "$(printf '%s\n' "${out[@]}" | sort -n | sed -n "$((n + 1))p")" \
        "$(( $(printf '%s\n' "${rss[@]}" | sort -n | sed -n "$((n + 1))p") / 1024 ))"
}

printf '%-28s %-26s %-26s %s\n' pattern coffer restic 'hits (coffer, restic lines)'
for pat in 'round-*.log' '*.html' 'no-such-name'; do
    c=$(timed "$bin" find "$pat"); ch=$(wc -l < "$work/out")
    r=$(timed restic find "$pat"); rh=$(grep -c '^/' "$work/out" || true)
    printf '%-28s %-26s %-26s %s, %s\n' "$pat" "$c" "$r" "$ch" "$rh"
done
"$bin" find 'no-such-name' 2>&1 >/dev/null | tail -1
