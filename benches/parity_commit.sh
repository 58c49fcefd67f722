#!/usr/bin/env bash
# Parity cost of a small commit into a large open stripe: a repository
# whose open stripe holds about 100 MB (parity 10+2), then nightly backups
# that each add about 2 MB. Prints, per nightly backup, its time, the time
# spent in parity after the commit (`parity_seconds`), the bytes parity read
# (`parity_bytes_read`) and the new pack bytes. Warm page cache.
#   benches/parity_commit.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
cargo build --release --quiet
bin=$PWD/target/release/coffer
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
export COFFER_PASSWORD=bench COFFER_CACHE_DIR=$w/cache
c() { "$bin" --repo "$w/repo" "$@"; }
c init --kdf-memory-kib 19456 --kdf-iterations 2 >/dev/null
mkdir -p "$w/big" "$w/night"
head -c 100000000 /dev/urandom >"$w/big/data"
c --json backup "$w/big" >/dev/null
echo "open stripe: $(du -cb "$w"/repo/packs/*/* | tail -1 | cut -f1) bytes of packs," \
    "$(du -cb "$w"/repo/parity/*.[0-9]* | tail -1 | cut -f1) bytes of parity files"
echo "run seconds parity_seconds parity_share parity_bytes_read new_pack_bytes"
for i in $(seq 1 "$runs"); do
    head -c 2000000 /dev/urandom >"$w/night/n$i"
    c --json backup "$w/night" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print(sys.argv[1], "%.3f" % r["seconds"], "%.3f" % r["parity_seconds"],
      "%.1f%%" % (100 * r["parity_seconds"] / r["seconds"]),
      r["parity_bytes_read"], r["new_pack_bytes"])' "$i"
done
