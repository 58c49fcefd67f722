#!/usr/bin/env bash
# End-to-end benchmark: coffer beside restic, BorgBackup, rustic and bupstash on
# the same generated data (the shared harness in ../shared/bench), then each
# coffer figure as a ratio to the best peer of the same run (of all, and of
# restic, borg and rustic alone): the machines are shared and noisy, so only
# ratios from one run mean anything.
#
#   benches/e2e.sh [TAG] [extra bench.py options, e.g. --scale 0.5 --reps 1]
#
# Needs the peers installed once (bash ../shared/bench/setup_peers.sh) and root
# for cold-cache runs. Results: target/bench/TAG.{md,csv,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
harness=${COFFER_BENCH_HARNESS:-../shared/bench}
tag=${1:-e2e}
shift || true
cargo build --release --quiet
COFFER_BIN="$PWD/target/release/coffer" python3 "$harness/bench.py" --tag "$tag" "$@"
python3 - "target/bench/$tag.csv" <<'PY'
import csv, statistics, sys
from collections import defaultdict

rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["ok"] == "True"]
val = defaultdict(list)  # (tool, dataset, figure) -> values
for r in rows:
    key = (r["tool"], r["dataset"])
    if r["op"] in ("backup1", "restore") and r["mb_s"]:
        val[key + (r["op"] + " MB/s",)].append(float(r["mb_s"]))
    if r["op"] == "backup1":
        val[key + ("backup RSS MiB",)].append(float(r["maxrss_mib"]))
    if r["op"] == "backup2" and r["added_bytes"]:
        val[key + ("day-2 added MB",)].append(float(r["added_bytes"]) / 1e6)
    if r["op"] == "backup3":
        val[key + ("no-change s",)].append(float(r["wall_s"]))
higher_better = {"backup1 MB/s", "restore MB/s"}
med = {k: statistics.median(v) for k, v in val.items()}
# The issue's baseline figures came from restic, borg and rustic (the peers
# ../shared/bench was written for); bupstash was added later: both ratios.
NAMED = {"restic", "borg", "rustic"}
print(f"\n{'dataset':8} {'figure':16} {'coffer':>10} {'best peer':>20} {'ratio':>7} {'best named':>20} {'ratio':>7}")


def versus(v, fig, among):
    """coffer's figure `v` against the best of `among`, as tool, value and ratio."""
    if not among:
        return f"{'-':>20} {'-':>7}"
    pick = max if fig in higher_better else min
    who, best = pick(among, key=lambda p: p[1])
    # >1 means coffer is better: faster, or smaller/shorter.
    ratio = v / best if fig in higher_better else (best / v if v else float("inf"))
    return f"{who:>10} {best:9.1f} {ratio:6.2f}x"


for (tool, ds, fig), v in sorted(med.items(), key=lambda kv: (kv[0][1], kv[0][2])):
    if tool != "coffer":
        continue
    peers = [(t, x) for (t, d, f), x in med.items() if d == ds and f == fig and t != "coffer"]
    if not peers:
        continue
    named = [p for p in peers if p[0] in NAMED]
    print(f"{ds:8} {fig:16} {v:10.1f} {versus(v, fig, peers)} {versus(v, fig, named)}")
PY
