#!/usr/bin/env bash
# Day-2 backup of a qcow2 VM disk with a dirty bitmap (coffer
# --changed-bitmap) against a full read of the same disk by coffer, and
# against restic and borg backing up the raw disk (their own day 2).
#
#   benches/cbt.sh [SCALE]      (default 1: a 20 GiB disk with 8 GiB of data)
#
# Day 1 writes random data in 64 regions spread over the disk, converts it
# to qcow2 and adds a persistent bitmap; every tool takes a full backup.
# Day 2 changes 1 % of the data: 80 % as scattered 4 KiB writes, 20 % as
# 64 KiB runs (qemu-io, so the bitmap records them). Printed: day-2 wall
# time and bytes read and added per tool, the time `qemu-io` takes to read
# the changed extents alone, and the ratios the issue sets goals for.
# GRANULARITY sets the bitmap's granularity (qemu-img bitmap -g; default
# qemu's, 64 KiB for this image); IMAGE_BLOCK coffer's image block size
# (`init --image-block`, default the repository default). COFFER_BIN picks the binary (default: a release build); BORG the borg
# binary (default: borg on PATH, else /tmp/peervenv/bin/borg). Caches are
# warm as each tool leaves them; the page cache is dropped before each
# day-2 run when run as root. Shared machine: compare tools of one run.
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-1}
bin=${COFFER_BIN:-$PWD/target/release/coffer}
if [ -z "${COFFER_BIN:-}" ]; then cargo build --release --quiet; fi
borg=${BORG:-$(command -v borg || echo /tmp/peervenv/bin/borg)}
work=${WORK:-$(mktemp -d)}
trap 'rm -rf "$work"' EXIT
mib() { python3 -c "print(int($1 * $scale))"; }
disk_mib=$(mib 20480)
data_mib=$(mib 8192)
region_mib=$((data_mib / 64))
stride_mib=$((disk_mib / 64))
echo "disk ${disk_mib} MiB, data ${data_mib} MiB in 64 regions of ${region_mib} MiB"

raw=$work/day.raw
truncate -s "${disk_mib}M" "$raw"
for i in $(seq 0 63); do
    dd if=/dev/urandom of="$raw" bs=1M count="$region_mib" seek=$((i * stride_mib)) \
        conv=notrunc status=none
done
qcow=$work/vm.qcow2
qemu-img convert -f raw -O qcow2 "$raw" "$qcow"
qemu-img bitmap --add --enable ${GRANULARITY:+-g "$GRANULARITY"} "$qcow" b0
rm -f "$raw"

export COFFER_PASSWORD=bench-passphrase COFFER_REPO=$work/coffer COFFER_CACHE_DIR=$work/coffer-cache
export RESTIC_PASSWORD=bench-passphrase RESTIC_REPOSITORY=$work/restic RESTIC_CACHE_DIR=$work/restic-cache
export BORG_PASSPHRASE=bench-passphrase BORG_REPO=$work/borg BORG_BASE_DIR=$work/borg-base
"$bin" -q init --kdf-memory-kib 19456 --kdf-iterations 2 ${IMAGE_BLOCK:+--image-block "$IMAGE_BLOCK"}
restic init -q
"$borg" init --encryption=repokey-blake2

drop() { if [ "$(id -u)" = 0 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi; }
# wall seconds of a command, its output to $work/out
timed() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" > "$work/out" 2> "$work/err" || { cat "$work/err" >&2; return 1; }
    t1=$(date +%s.%N)
    python3 -c "print(f'{$t1 - $t0:.2f}')"
}
field() { python3 -c "import json,sys; print(json.load(open('$work/out'))['$1'])"; }
repo_bytes() { du -sb "$1" | cut -f1; }

# Day 1: full backups by every tool (restic and borg of the raw disk).
qemu-img convert -O raw "$qcow" "$raw"
d1=$(timed "$bin" --json backup --image "$qcow" --start-bitmap b0)
echo "day 1 coffer: ${d1}s, read $(field bytes_read) bytes"
restic backup -q "$raw" > /dev/null
"$borg" create "::day1" "$raw"
restic_before=$(repo_bytes "$work/restic")
borg_before=$(repo_bytes "$work/borg")
coffer_before=$(repo_bytes "$work/coffer")

# Day 2: 1 % of the data changed.
changed=$((data_mib * 1024 * 1024 / 100))
python3 - "$changed" "$stride_mib" "$region_mib" > "$work/writes" <<'EOF'
import random, sys
changed, stride, region = (int(a) for a in sys.argv[1:])
rng = random.Random(42)
small, run = 4096, 65536
out, done = [], 0
while done < changed:
    size = small if done < changed * 0.8 else run
    r = rng.randrange(64)
    off = r * stride * 2**20 + rng.randrange(0, region * 2**20 - size) // 4096 * 4096
    out.append((off, size))
    done += size
for off, size in out:
    print(f"write -P {rng.randrange(1, 255)} {off} {size}")
EOF
qemu-io -f qcow2 "$qcow" < "$work/writes" > /dev/null
sed 's/^write -P [0-9]* /read /' "$work/writes" > "$work/reads"
dirty_bytes=$(awk '{s += $NF} END {print s}' "$work/writes")
drop
alone=$(timed qemu-io -r -f qcow2 "$qcow" < "$work/reads")
echo "changed: $dirty_bytes bytes in $(wc -l < "$work/writes") writes; reading them alone: ${alone}s"

drop
inc=$(timed "$bin" --json backup --image "$qcow" --changed-bitmap b0 --start-bitmap b0)
inc_read=$(field bytes_read)
inc_parity=$(field parity_seconds)
coffer_after=$(repo_bytes "$work/coffer")
drop
full=$(timed "$bin" --json backup --image "$qcow")
full_read=$(field bytes_read)
qemu-img convert -O raw "$qcow" "$raw"
drop
restic_t=$(timed restic backup -q "$raw")
drop
borg_t=$(timed "$borg" create "::day2" "$raw")
restic_added=$(($(repo_bytes "$work/restic") - restic_before))
borg_added=$(($(repo_bytes "$work/borg") - borg_before))
coffer_added=$((coffer_after - coffer_before))

printf '\n%-34s %10s %14s %14s\n' "day 2" "seconds" "bytes read" "bytes added"
printf '%-34s %10s %14s %14s\n' "coffer --changed-bitmap" "$inc" "$inc_read" "$coffer_added"
printf '%-34s %10s %14s %14s\n' "coffer full read" "$full" "$full_read" "-"
printf '%-34s %10s %14s %14s\n' "restic (raw disk)" "$restic_t" "-" "$restic_added"
printf '%-34s %10s %14s %14s\n' "borg (raw disk)" "$borg_t" "-" "$borg_added"
printf '%-34s %10s %14s\n' "qemu-io reading the changes alone" "$alone" "$dirty_bytes"
echo "(of the bitmap day 2: ${inc_parity}s computing parity after the commit)"
python3 - <<EOF
inc, full, alone = $inc, $full, $alone
print(f"\nbitmap day 2 / reading the changes alone: {inc / alone:.2f}x (goal <= 3)")
print(f"full read / bitmap day 2:                {full / inc:.1f}x (goal >= 20)")
print(f"bytes added / changed bytes:             {$coffer_added / $dirty_bytes:.2f}x (goal <= 5)")
print(f"restic day 2 / bitmap day 2:             {$restic_t / inc:.1f}x")
print(f"borg day 2 / bitmap day 2:               {$borg_t / inc:.1f}x")
EOF
