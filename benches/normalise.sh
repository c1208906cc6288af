#!/usr/bin/env bash
# make bench-normalise: on the 1,000,000-split company of bench-extract (generated once and
# cached), measures in the same run (a) `connector extract` into a staging store and (b)
# `connector rules run` (every rule and check) over that store, ROUNDS times in rotation,
# and reports the medians, the ratio (b)/(a) (target < 1) and (b)'s peak memory (target
# < 1 GB). These machines are shared and noisy: compare the ratio, not absolute times.
# Then, once, (b) on a BIG_SPLITS-split company (5,000,000; 0 skips it): the rules must
# still finish there, with their peak memory (DuckDB cannot spill every state it holds).
set -euo pipefail
CACHE=${CACHE:-$HOME/.cache/connector}
BIN=${CARGO_TARGET_DIR:-$CACHE/target}/debug
OUT=$CACHE/bench
ROUNDS=${ROUNDS:-3}
SPLITS=${SPLITS:-1000000}
BIG_SPLITS=${BIG_SPLITS:-5000000}
mkdir -p "$OUT"

source "$(dirname "$0")/company.sh"
CS=$(company "$SPLITS")
STAGING=$OUT/staging-normalise.duckdb

measure() { # label command... -> appends "label seconds peak_kb" to $OUT/normalise-runs.txt
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$OUT/time.txt" "$@" > "$OUT/$label.out" 2> "$OUT/$label.log" || {
    echo "$label failed:" >&2; tail -20 "$OUT/$label.log" "$OUT/$label.out" >&2; exit 1; }
  echo "$label $(cat "$OUT/time.txt")" >> "$OUT/normalise-runs.txt"
}

: > "$OUT/normalise-runs.txt"
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS: extract, then rules and checks" >&2
  measure extract "$BIN/connector" extract --odbc "$CS" --staging "$STAGING"
  measure rules "$BIN/connector" rules run --staging "$STAGING" --json "$OUT/rules.json"
done

if [ "$BIG_SPLITS" != 0 ]; then
  echo "the $BIG_SPLITS-split company: extract, then rules and checks (once)" >&2
  CS_BIG=$(company "$BIG_SPLITS")
  measure extract_big "$BIN/connector" extract --odbc "$CS_BIG" --staging "$OUT/staging-normalise-big.duckdb"
  measure rules_big "$BIN/connector" rules run --staging "$OUT/staging-normalise-big.duckdb"
fi

python3 - "$OUT/normalise-runs.txt" "$OUT/rules.out" "$OUT/rules.json" "$BIG_SPLITS" <<'PY' | tee "$OUT/normalise.md"
import json, statistics, sys
by = {}
for line in open(sys.argv[1]):
    label, secs, kb = line.split()
    by.setdefault(label, []).append((float(secs), int(kb)))
med = {k: statistics.median(s for s, _ in v) for k, v in by.items()}
peak = {k: max(kb for _, kb in v) for k, v in by.items()}
summary = open(sys.argv[2]).read()
records = sum(t["rows"] for t in json.load(open(sys.argv[3]))["data_types"])
rounds = len(by["rules"])
print(f"Median of {rounds} rounds, extract and rules alternating; {records:,} normalised records.\n")
print("| run | seconds (median) | rounds | peak memory |")
print("|---|---:|---|---:|")
print(f"| (a) connector extract | {med['extract']:.2f} | {', '.join(f'{s:.1f}' for s, _ in by['extract'])} | {peak['extract'] / 1024:.0f} MB |")
print(f"| (b) connector rules run (rules + checks) | {med['rules']:.2f} | {', '.join(f'{s:.1f}' for s, _ in by['rules'])} | {peak['rules'] / 1024:.0f} MB |")
print(f"\n(b) / (a) = {med['rules'] / med['extract']:.2f} (target < 1); (b) peak memory {peak['rules'] / 1024:.0f} MB (target < 1024 MB)")
if "rules_big" in by:
    print(f"\n(b) on the {int(sys.argv[4]):,}-split company: {med['rules_big']:.1f} s, peak memory {peak['rules_big'] / 1024:.0f} MB")
print("\nLast run's report:\n\n```\n" + summary.strip() + "\n```")
PY
