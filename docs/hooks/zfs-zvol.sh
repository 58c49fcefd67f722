#!/bin/sh
# coffer pre/post hook: a snapshot of a ZFS zvol, exposed as a block device.
#   pre:  snapshots POOL/ZVOL@coffer (destroying a leftover first) and makes
#         snapshots of the zvol visible as devices (snapdev=visible)
#   post: destroys the snapshot
# Usage: zfs-zvol.sh POOL/ZVOL   (as both pre and post)
# Back up /dev/zvol/POOL/ZVOL@coffer.
set -eu
zvol=$1 snap="$1@coffer"
dev="/dev/zvol/$snap"

remove() {
    if zfs list -H -t snapshot "$snap" >/dev/null 2>&1; then
        zfs destroy "$snap"
    fi
}

case "${COFFER_HOOK:-}" in
pre)
    remove
    zfs set snapdev=visible "$zvol"
    zfs snapshot "$snap"
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
