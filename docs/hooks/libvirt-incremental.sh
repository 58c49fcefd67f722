#!/bin/sh
# Nightly incremental backup of a running libvirt domain's disk through
# libvirt's pull-mode backup: libvirt exports the disk as it was at the
# backup's start over NBD (the guest keeps running; its writes go past a
# scratch file), together with the dirty bitmap since the last checkpoint,
# and makes a new checkpoint for tomorrow. coffer reads only the dirty
# extents. Needs libvirt >= 7.2 and QEMU >= 6.0.
#
#   libvirt-incremental.sh DOMAIN DISK -- COFFER-BACKUP-OPTIONS...
#
# e.g. libvirt-incremental.sh vm101 vda -- --profile /etc/coffer/hv.toml
#
# The checkpoint names are the bitmap's tokens: libvirt exports the dirty
# bitmap as qemu:dirty-bitmap:backup-DISK, coffer records each night's
# checkpoint with --start-token and trusts a parent only when its checkpoint
# is the one tonight's bitmap starts at (--changed-token). The last
# checkpoint a saved snapshot started is kept in STATE_DIR/DOMAIN-DISK.token;
# a failed night deletes its new checkpoint, so tomorrow starts from the last
# saved one and nothing is lost. Full reads: the first night, the first day of
# the month (COFFER_FULL_DAY), or COFFER_FULL=1.
#
# Tested against libvirt 9.0 and QEMU 7.2 (Debian 12) by tests/it/libvirt.rs.
set -eu

usage() { echo "usage: $0 DOMAIN DISK -- COFFER-BACKUP-OPTIONS..." >&2; exit 2; }
[ $# -ge 3 ] || usage
dom=$1 disk=$2; shift 2
[ "$1" = "--" ] || usage
shift

coffer=${COFFER:-coffer}
state=${STATE_DIR:-/var/lib/coffer/libvirt}
mkdir -p "$state"
tokfile="$state/$dom-$disk.token"
dir=$(mktemp -d "${TMPDIR:-/tmp}/coffer-libvirt.XXXXXX")
chmod 0711 "$dir"  # QEMU (another user) creates the socket here
sock="$dir/nbd.sock"
new="coffer-$(date -u +%Y%m%dT%H%M%SZ)-$$"  # two runs in one second get two names
started=
saved=
cleanup() {
    if [ -n "$started" ]; then virsh domjobabort "$dom" >/dev/null 2>&1 || true; fi
    if [ -n "$started" ] && [ -z "$saved" ]; then
        # Tomorrow starts from the last checkpoint a snapshot saved.
        virsh checkpoint-delete "$dom" "$new" >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM HUP

last=
[ -s "$tokfile" ] && last=$(cat "$tokfile")
prev=
if [ -n "$last" ] && [ "${COFFER_FULL:-0}" != 1 ] && [ "$(date +%d)" != "${COFFER_FULL_DAY-01}" ]; then
    prev=$last
    virsh checkpoint-info "$dom" "$prev" >/dev/null 2>&1 || prev=
fi

incremental=
[ -n "$prev" ] && incremental="<incremental>$prev</incremental>"
cat > "$dir/backup.xml" <<EOF
<domainbackup mode='pull'>
  $incremental
  <server transport='unix' socket='$sock'/>
  <disks>
    <disk name='$disk' backup='yes' type='file'>
      <scratch file='$dir/scratch-$disk.qcow2'/>
    </disk>
  </disks>
</domainbackup>
EOF
cat > "$dir/checkpoint.xml" <<EOF
<domaincheckpoint>
  <name>$new</name>
  <disks><disk name='$disk' checkpoint='bitmap'/></disks>
</domaincheckpoint>
EOF

# stdout stays coffer's (e.g. its --json summary)
virsh backup-begin "$dom" "$dir/backup.xml" "$dir/checkpoint.xml" >&2
started=1

set -- --image "nbd+unix:///$disk?socket=$sock" \
    --start-bitmap "backup-$disk" --start-token "$new" "$@"
if [ -n "$prev" ]; then
    set -- --changed-bitmap "backup-$disk" --changed-token "$prev" \
        --verify-clean "${COFFER_VERIFY_CLEAN:-1}" "$@"
fi
"$coffer" backup "$@"
saved=1

virsh domjobabort "$dom" >/dev/null 2>&1 || true  # ends the pull-mode job
started=
printf '%s\n' "$new" > "$tokfile.tmp"
mv "$tokfile.tmp" "$tokfile"
# The last saved checkpoint is no longer needed as a base (after a full
# night too: each checkpoint keeps a bitmap that QEMU updates on every write).
if [ -n "$last" ]; then virsh checkpoint-delete "$dom" "$last" >/dev/null 2>&1 || true; fi
