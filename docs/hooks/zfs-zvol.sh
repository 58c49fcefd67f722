#!/bin/sh
# coffer pre/post hook: a point-in-time copy of a ZFS zvol as a block device.
#   pre:  snapshots POOL/ZVOL@coffer and clones it read-only to POOL/ZVOL-coffer
#         (removing leftovers first); the clone is a zvol of its own, so its
#         device appears whatever the zvol's snapdev property says
#   post: destroys the clone and the snapshot
# Usage: zfs-zvol.sh POOL/ZVOL   (as both pre and post)
# Back up /dev/zvol/POOL/ZVOL-coffer.
set -eu
zvol=$1 snap="$1@coffer" clone="$1-coffer"
dev="/dev/zvol/$clone"

remove() {
    if zfs list -H "$clone" >/dev/null 2>&1; then
        zfs destroy "$clone"
    fi
    if zfs list -H -t snapshot "$snap" >/dev/null 2>&1; then
        zfs destroy "$snap"
    fi
}

case "${COFFER_HOOK:-}" in
pre)
    remove
    zfs snapshot "$snap"
    zfs clone -o readonly=on "$snap" "$clone"
    udevadm settle
    # The device node appears asynchronously: wait up to 30 s.
    i=0
    while [ ! -e "$dev" ]; do
        i=$((i + 1))
        [ "$i" -le 60 ] || { echo "zfs-zvol.sh: $dev did not appear" >&2; exit 1; }
        sleep 0.5
    done
    ;;
post)
    remove
    ;;
*)
    echo "zfs-zvol.sh: run me as a coffer hook (COFFER_HOOK=pre or post)" >&2
    exit 2
    ;;
esac
