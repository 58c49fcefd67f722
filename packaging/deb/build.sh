#!/usr/bin/env bash
# Builds the Debian package (target/debian/coffer_*.deb) with cargo-deb.
#   packaging/deb/build.sh                      release build, then the package
#                                               (and coffer-dbgsym_*.ddeb)
#   packaging/deb/build.sh --profile dev --no-build   package the binary that
#                                               `cargo test` already built (CI)
# Other arguments go to `cargo deb` (e.g. --fast). The man pages, shell
# completions and systemd units are written into target/deb-staging/ first,
# by the binary that goes into the package, so they describe that binary;
# [package.metadata.deb] in Cargo.toml lists what goes where.
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=release build=1 pass=()
while [ $# -gt 0 ]; do
    case "$1" in
    --profile) profile=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    *) pass+=("$1"); shift ;;
    esac
done

if [ "$build" = 1 ]; then
    cargo build --locked --profile "$profile" --bin coffer
fi
target_dir=${CARGO_TARGET_DIR:-target}
case "$profile" in dev) dir=debug ;; *) dir=$profile ;; esac
bin="$target_dir/$dir/coffer"
[ -x "$bin" ] || { echo "build.sh: no binary at $bin (build it, or drop --no-build)" >&2; exit 1; }

stage=target/deb-staging
rm -rf "$stage"
mkdir -p "$stage/completions" "$stage/systemd"
"$bin" man "$stage/man" >/dev/null
"$bin" completions bash >"$stage/completions/coffer.bash"
"$bin" completions zsh >"$stage/completions/_coffer"
"$bin" completions fish >"$stage/completions/coffer.fish"
# The units in docs/ name the binary where a manual install puts it.
for unit in docs/systemd/*.service docs/systemd/*.timer; do
    sed 's|/usr/local/bin/coffer|/usr/bin/coffer|g' "$unit" >"$stage/systemd/$(basename "$unit")"
done
if grep -q /usr/local "$stage"/systemd/*; then
    echo "build.sh: a unit still names /usr/local" >&2
    exit 1
fi

# The release profile keeps line tables (backtraces): they go into a
# coffer-dbgsym .ddeb beside the package, which is stripped. The path of the
# .deb is the one line printed on standard output.
if [ "$profile" != dev ]; then pass+=(--dbgsym); fi
cargo deb --no-build --profile "$profile" "${pass[@]}" | grep '\.deb$'
