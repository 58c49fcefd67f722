#!/usr/bin/env bash
# Peak RSS of `coffer serve` and of a library client while listing N fake
# packs (sparse files with valid pack names under packs/<shard>/).
#
#   scripts/list-rss.sh [N] [BUILD_DIR...]
#
# Each BUILD_DIR holds a `coffer` and a `list_packs` to measure, one after
# the other on the same packs (to compare builds). Without one: this tree's
# target/debug/coffer and target/debug/examples/list_packs (build them with
# `cargo build --bin coffer --example list_packs`). Defaults to 200000 packs.
#
# The server's lifetime peak includes its startup prune and parity sweep,
# which walk every pack too; "listing" is the server's peak during the
# listing alone (VmHWM reset once the sweep has logged "prune done"), next to
# its RSS just before the listing.
set -euo pipefail
n=${1:-200000}
shift || true
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
if [ $# -eq 0 ]; then
    mkdir "$dir/this"
    ln -s "$PWD/target/debug/coffer" "$dir/this/coffer"
    ln -s "$PWD/target/debug/examples/list_packs" "$dir/this/list_packs"
    set -- "$dir/this"
fi

sfp=$("$1/coffer" identity new --out "$dir/server.id")
cfp=$("$1/coffer" identity new --out "$dir/client.id")
cat >"$dir/server.toml" <<TOML
listen = "127.0.0.1:0"
data = "$dir/data"
identity = "$dir/server.id"
[[client]]
fingerprint = "$cfp"
namespace = "bench"
TOML
python3 - "$dir/data/namespaces/bench" "$n" <<'PY'
import hashlib, os, sys
root, n = sys.argv[1], int(sys.argv[2])
for d in ("keys", "packs", "snapshots", "tmp"):
    os.makedirs(os.path.join(root, d), exist_ok=True)
for i in range(n):
    name = hashlib.blake2s(i.to_bytes(8, "little")).hexdigest()
    shard = os.path.join(root, "packs", name[:2])
    os.makedirs(shard, exist_ok=True)
    with open(os.path.join(shard, name), "wb") as f:
        f.truncate(i % 4096)
PY

measure() { # BUILD_DIR
    local coffer=$1/coffer lister=$1/list_packs
    : >"$dir/serve.out"
    /usr/bin/time -v -o "$dir/serve.time" "$coffer" serve --allow-root --config "$dir/server.toml" \
        >"$dir/serve.out" 2>"$dir/serve.log" &
    local tpid=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$dir/serve.out" 2>/dev/null && break
        sleep 0.1
    done
    local port spid
    port=$(grep "listening on" "$dir/serve.out" | head -1 | sed 's/.*://')
    spid=$(pgrep -P "$tpid")
    for _ in $(seq 3000); do
        grep -q "prune done\|prune failed" "$dir/serve.log" && break
        sleep 0.1
    done
    echo 5 >"/proc/$spid/clear_refs" # resets VmHWM
    local resting
    resting=$(awk '/VmRSS/ {print $2}' "/proc/$spid/status")
    /usr/bin/time -v -o "$dir/client.time" "$lister" "quic://127.0.0.1:$port/bench" \
        "$dir/client.id" "$sfp"
    local listing
    listing=$(awk '/VmHWM/ {print $2}' "/proc/$spid/status")
    # The server is the child of `time`: stop it gracefully so `time` reports.
    kill -TERM "$spid"
    wait "$tpid" || true
    for who in serve client; do
        echo "$1 $who: $(grep 'Maximum resident' "$dir/$who.time" | sed 's/.*: //') KiB peak RSS"
    done
    echo "$1 serve before the listing: $resting KiB RSS, during it: $listing KiB peak"
}
for b in "$@"; do
    measure "$b"
done
