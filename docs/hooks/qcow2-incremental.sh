#!/bin/sh
# Nightly incremental backup of a qcow2 disk that is not being written
# (the VM is shut down, or IMAGE is a point-in-time copy), reading only what
# its persistent dirty bitmap says changed since the last backup.
#
#   qcow2-incremental.sh IMAGE [BITMAP] -- COFFER-BACKUP-OPTIONS...
#
# e.g. qcow2-incremental.sh /var/lib/libvirt/images/vm101.qcow2 coffer -- \
#          --profile /etc/coffer/hv.toml   (repository, passphrase, identity), or
#      qcow2-incremental.sh vm101.qcow2 -- --repo /srv/backup
#
# What it does:
#   - adds the bitmap (enabled, persistent) on the first run: that run reads
#     the whole disk;
#   - exports the disk read-only with qemu-nbd on a private socket, with the
#     bitmap (-B), and runs `coffer backup --image nbd+unix://...` with
#     --changed-bitmap/--changed-token (the token of the bitmap's last start)
#     and --start-bitmap/--start-token (a new token for this start);
#   - on success clears the bitmap and keeps the new token: the next run
#     reads only what changes from now on. On failure the bitmap is left as
#     it is and the old token kept, so nothing is lost;
#   - on the first day of the month (COFFER_FULL_DAY=DD picks another day,
#     COFFER_FULL_DAY= none; COFFER_FULL=1 forces one) reads the whole disk
#     anyway; the other days check 1 % of the clean blocks
#     (COFFER_VERIFY_CLEAN=PERCENT).
#
# The token lives in IMAGE.coffer-token. coffer falls back to a full read by
# itself whenever the bitmap cannot be trusted (no snapshot started it, the
# token does not match, the size changed).
set -eu

usage() { echo "usage: $0 IMAGE [BITMAP] -- COFFER-BACKUP-OPTIONS..." >&2; exit 2; }
[ $# -ge 2 ] || usage
image=$1; shift
bitmap=coffer
if [ "$1" != "--" ]; then bitmap=$1; shift; fi
[ "${1:-}" = "--" ] || usage
shift

coffer=${COFFER:-coffer}
name=$(basename "$image" .qcow2)
tokfile="$image.coffer-token"
dir=$(mktemp -d "${TMPDIR:-/tmp}/coffer-nbd.XXXXXX")
sock="$dir/nbd.sock"
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM HUP

if ! qemu-img info --output=json "$image" | grep -q "\"name\": \"$bitmap\""; then
    qemu-img bitmap --add --enable "$image" "$bitmap"
    rm -f "$tokfile"
fi

qemu-nbd -r --persistent -f qcow2 -x "$name" -B "$bitmap" -k "$sock" "$image" &
pid=$!
i=0
while [ ! -S "$sock" ]; do
    i=$((i + 1))
    if [ $i -gt 200 ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "$0: qemu-nbd did not start" >&2
        exit 1
    fi
    sleep 0.05
done

new=$(date -u +%Y%m%dT%H%M%SZ)-$$
set -- --image "nbd+unix:///$name?socket=$sock" --start-bitmap "$bitmap" --start-token "$new" "$@"
full_day=${COFFER_FULL_DAY-01}
if [ -s "$tokfile" ] && [ "${COFFER_FULL:-0}" != 1 ] && [ "$(date +%d)" != "$full_day" ]; then
    set -- --changed-bitmap "$bitmap" --changed-token "$(cat "$tokfile")" \
        --verify-clean "${COFFER_VERIFY_CLEAN:-1}" "$@"
fi

"$coffer" backup "$@"

# Saved: this backup is where the bitmap starts again.
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
pid=
qemu-img bitmap --clear "$image" "$bitmap"
printf '%s\n' "$new" > "$tokfile.tmp"
mv "$tokfile.tmp" "$tokfile"
