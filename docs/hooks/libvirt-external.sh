#!/bin/sh
# coffer pre/post hook: an external disk-only snapshot of a running libvirt/QEMU
# domain. While it exists the guest writes to an overlay file and the base file
# stands still; coffer backs up the base file.
#   pre:  creates the overlay DISK -> BASE.coffer-overlay (--quiesce if the
#         QEMU guest agent answers, for application-consistent file systems);
#         the domain's other disks are left alone (snapshot=no)
#   post: merges the overlay back into the base file (blockcommit --pivot)
#         and deletes it
# A domain that is not running needs no snapshot: pre and post do nothing.
# Usage: libvirt-external.sh DOMAIN DISK   e.g. vm101 vda   (as both pre and post)
# Back up the disk's base file, e.g. /var/lib/libvirt/images/vm101.qcow2
# (`virsh domblklist vm101` lists it before the snapshot).
set -eu
dom=$1 disk=$2

current() { virsh domblklist "$dom" --details | awk -v d="$disk" '$3 == d { print $4 }'; }
running() { [ "$(virsh domstate "$dom")" = "running" ]; }

commit() {
    file=$(current)
    case "$file" in
    *.coffer-overlay)
        virsh blockcommit "$dom" "$disk" --active --pivot --wait >/dev/null
        rm -f "$file"
        ;;
    esac
}

case "${COFFER_HOOK:-}" in
pre)
    running || exit 0
    # A leftover overlay from a run that was SIGKILLed: merge it first.
    commit
    base=$(current)
    [ -n "$base" ] || { echo "libvirt-external.sh: $dom has no disk $disk" >&2; exit 1; }
    set -- --diskspec "$disk,snapshot=external,file=$base.coffer-overlay"
    for other in $(virsh domblklist "$dom" --details | awk -v d="$disk" '$2 == "disk" && $3 != d { print $3 }'); do
        set -- "$@" --diskspec "$other,snapshot=no"
    done
    if virsh qemu-agent-command "$dom" '{"execute":"guest-ping"}' >/dev/null 2>&1; then
        set -- "$@" --quiesce
    fi
    virsh snapshot-create-as "$dom" coffer --disk-only --atomic --no-metadata "$@" >/dev/null
    ;;
post)
    running || exit 0
    commit
    ;;
*)
    echo "libvirt-external.sh: run me as a coffer hook (COFFER_HOOK=pre or post)" >&2
    exit 2
    ;;
esac
