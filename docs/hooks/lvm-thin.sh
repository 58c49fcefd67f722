#!/bin/sh
# coffer pre/post hook: a thin snapshot of an LVM thin volume.
#   pre:  creates and activates VG/LV-coffer (removing a leftover first)
#   post: removes it
# Usage: lvm-thin.sh VG LV   (as both pre and post; COFFER_HOOK says which)
# Back up /dev/VG/LV-coffer.
set -eu
vg=$1 lv=$2 snap="$2-coffer"

remove() {
    if lvs "$vg/$snap" >/dev/null 2>&1; then
        lvremove -y "$vg/$snap" >/dev/null
    fi
}

case "${COFFER_HOOK:-}" in
pre)
    remove
    # A thin snapshot needs no size; -kn activates it now (thin snapshots
    # are created with the activation-skip flag otherwise).
    lvcreate -s -kn -n "$snap" "$vg/$lv" >/dev/null
    lvchange -ay "$vg/$snap"
    # Let udev create /dev/VG/LV-coffer before coffer opens it.
    udevadm settle
    ;;
post)
    remove
    ;;
*)
    echo "lvm-thin.sh: run me as a coffer hook (COFFER_HOOK=pre or post)" >&2
    exit 2
    ;;
esac
