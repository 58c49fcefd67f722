#!/usr/bin/env bash
# Checks the installed Debian package (after packaging/deb/build.sh and
# `dpkg -i target/debian/coffer_*.deb`, as root): the installed binary runs,
# backs up the installed files into a local repository and restores them byte
# for byte, the user `coffer` and its directories exist, the man pages render,
# the bash completion loads, the hook scripts and the example job file parse.
# Leaves nothing behind but what the package made.
set -euo pipefail

coffer=/usr/bin/coffer
fail() {
    echo "smoke.sh: $*" >&2
    exit 1
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

[ "$(dpkg-query -W -f='${Status}' coffer)" = "install ok installed" ] || fail "coffer is not installed"
version=$("$coffer" --version)
echo "$version"
case "$version" in "coffer $(dpkg-query -W -f='${Version}' coffer | sed 's/-[^-]*$//')") ;; *) fail "version $version" ;; esac

# Every file the package lists is on disk (a dpkg path-exclude would drop some).
dpkg -L coffer | while read -r f; do [ -e "$f" ] || fail "$f is listed but missing"; done
for f in /usr/share/man/man1/coffer.1.gz /usr/share/man/man1/coffer-backup.1.gz \
    /usr/share/bash-completion/completions/coffer /usr/share/zsh/vendor-completions/_coffer \
    /usr/share/fish/vendor_completions.d/coffer.fish /usr/lib/systemd/system/coffer.service \
    /usr/lib/systemd/system/coffer-backup.service /usr/lib/systemd/system/coffer-backup.timer \
    /etc/coffer/job.toml /etc/coffer/hooks/lvm-thin.sh; do
    [ -s "$f" ] || fail "$f missing or empty"
done
grep -qx /etc/coffer/job.toml /var/lib/dpkg/info/coffer.conffiles || fail "job.toml is not a conffile"
grep -q '^ExecStart=/usr/bin/coffer serve' /usr/lib/systemd/system/coffer.service || fail "coffer.service runs another binary"
if command -v systemd-analyze >/dev/null; then
    # Checks the units' syntax offline; the missing config files are no error here.
    systemd-analyze verify /usr/lib/systemd/system/coffer.service \
        /usr/lib/systemd/system/coffer-backup.service /usr/lib/systemd/system/coffer-backup.timer \
        2>"$work/verify" || true
    if grep -Ei 'unknown|invalid|failed to parse' "$work/verify"; then fail "systemd-analyze verify"; fi
fi

# The system user: a system id, no login shell, the data directory its own.
entry=$(getent passwd coffer) || fail "no user coffer"
IFS=: read -r _ _ uid gid _ home shell <<<"$entry"
[ "$uid" -lt 1000 ] || fail "coffer has uid $uid, not a system id"
[ "$(getent group coffer | cut -d: -f3)" = "$gid" ] || fail "coffer's group is not coffer"
[ "$home" = /var/lib/coffer ] || fail "coffer's home is $home"
case "$shell" in */nologin | /bin/false) ;; *) fail "coffer has the shell $shell" ;; esac
[ "$(stat -c %U:%G:%a /var/lib/coffer)" = coffer:coffer:750 ] || fail "/var/lib/coffer is $(stat -c %U:%G:%a /var/lib/coffer)"
[ "$(stat -c %U:%G:%a /etc/coffer)" = root:coffer:750 ] || fail "/etc/coffer is $(stat -c %U:%G:%a /etc/coffer)"
runuser -u coffer -- "$coffer" identity new --out /var/lib/coffer/.smoke.identity >/dev/null
[ "$(stat -c %U:%a /var/lib/coffer/.smoke.identity)" = coffer:600 ] || fail "identity made as coffer"
rm -f /var/lib/coffer/.smoke.identity

# Manual pages render; the bash completion loads and completes a subcommand.
for page in coffer coffer-serve coffer-backup; do
    MANWIDTH=80 man -l "/usr/share/man/man1/$page.1.gz" 2>"$work/man.err" >"$work/man.txt"
    [ ! -s "$work/man.err" ] || fail "man -l $page: $(cat "$work/man.err")"
    grep -q "$page" "$work/man.txt" || fail "man -l $page printed no name"
done
grep -q -- '--exclude' "$work/man.txt" || fail "coffer-backup(1) does not list --exclude"
words=$(bash -c 'source /usr/share/bash-completion/completions/coffer
    COMP_WORDS=(coffer rest); COMP_CWORD=1; COMP_LINE="coffer rest"; COMP_POINT=${#COMP_LINE}
    _coffer coffer rest coffer; echo "${COMPREPLY[*]}"')
[ "$words" = restore ] || fail "bash completion of 'coffer rest' gave '$words'"
for hook in /etc/coffer/hooks/*.sh; do sh -n "$hook" || fail "$hook"; done

# One backup of the installed files into a local repository, restored and compared.
export COFFER_PASSWORD=smoke-passphrase COFFER_CACHE_DIR="$work/cache"
repo="$work/repo"
"$coffer" --repo "$repo" backup /usr/bin/coffer /etc/coffer /usr/share/doc/coffer /usr/share/man/man1/coffer*.1.gz \
    /usr/lib/systemd/system/coffer.service
"$coffer" --repo "$repo" restore latest --target "$work/restore"
cmp /usr/bin/coffer "$work/restore/usr/bin/coffer"
diff -r /etc/coffer "$work/restore/etc/coffer"
diff -r /usr/share/doc/coffer "$work/restore/usr/share/doc/coffer"
cmp /usr/lib/systemd/system/coffer.service "$work/restore/usr/lib/systemd/system/coffer.service"
for page in /usr/share/man/man1/coffer*.1.gz; do cmp "$page" "$work/restore$page"; done

# The installed example job file parses (as a profile; the repository and
# passphrase file and cache given here win over its own).
printf '%s\n' "$COFFER_PASSWORD" >"$work/passphrase"
"$coffer" --profile /etc/coffer/job.toml --repo "$repo" --password-file "$work/passphrase" \
    --cache-dir "$COFFER_CACHE_DIR" snapshots >"$work/snapshots"
grep -qx '1 snapshots' "$work/snapshots" || fail "snapshots through the job file: $(cat "$work/snapshots")"
echo "smoke.sh: the installed package works"
