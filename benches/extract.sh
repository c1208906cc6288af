#!/usr/bin/env bash
# make bench-extract: on one generated company (1,000,000 AUDIT_SPLIT rows) and one driver,
# measures in the same run (a) the raw ODBC drain limit, (b) `connector extract`, and
# (c) odbc2parquet exporting the same tables; then (b)'s peak memory on a 5,000,000-split
# company. Each of (a)-(c) runs ROUNDS times in rotation and the median is reported, since
# these machines are shared and noisy. Prints a Markdown table (also kept in $OUT/extract.md).
set -euo pipefail
CACHE=${CACHE:-$HOME/.cache/connector}
BIN=${CARGO_TARGET_DIR:-$CACHE/target}/debug
OUT=$CACHE/bench
ROUNDS=${ROUNDS:-3}
BIG_SPLITS=${BIG_SPLITS:-5000000}
TOOLS=$CACHE/tools
mkdir -p "$OUT"

if [ ! -x "$TOOLS/bin/odbc2parquet" ]; then
  echo "Installing odbc2parquet (cargo install, once) into $TOOLS" >&2
  env -u CARGO_TARGET_DIR cargo install --locked --quiet --root "$TOOLS" odbc2parquet
fi

source "$(dirname "$0")/company.sh"

measure() { # label command... -> appends "label seconds peak_kb" to $OUT/runs.txt
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$OUT/time.txt" "$@" > /dev/null 2> "$OUT/$label.log"
  echo "$label $(cat "$OUT/time.txt")" >> "$OUT/runs.txt"
}

CS=$(company 1000000)
DB=$OUT/company-1000000-$SIM_ID/ACCDATA/SAGE50.DB
TABLES=$(sqlite3 "$DB" "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
ROWS=0
for t in $TABLES; do ROWS=$((ROWS + $(sqlite3 "$DB" "SELECT COUNT(*) FROM \"$t\""))); done
SPLITS=$(sqlite3 "$DB" "SELECT COUNT(*) FROM AUDIT_SPLIT")

export CS TABLES OUT TOOLS
O2P='rm -rf "$OUT/o2p" && mkdir -p "$OUT/o2p" && for t in $TABLES; do
  "$TOOLS/bin/odbc2parquet" query --connection-string "$CS" "$OUT/o2p/$t.parquet" "SELECT * FROM $t"; done'

: > "$OUT/runs.txt"
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS: drain, extract, odbc2parquet" >&2
  measure drain "$BIN/connector" drain --odbc "$CS"
  measure extract "$BIN/connector" extract --odbc "$CS" --staging "$OUT/staging-1m.duckdb"
  measure odbc2parquet bash -c "$O2P"
done

echo "simulator: generation time at 100,000 and 1,000,000 transactions" >&2
for n in 100000 1000000; do
  rm -rf "$OUT/sim-$n"
  measure "sim$n" "$BIN/sage50-sim" --out "$OUT/sim-$n" --seed 3 --transactions "$n"
  rm -rf "$OUT/sim-$n"
done

echo "5,000,000-split company: generating (once) and extracting" >&2
CS5=$(company "$BIG_SPLITS")
DB5=$OUT/company-$BIG_SPLITS-$SIM_ID/ACCDATA/SAGE50.DB
measure extract5m "$BIN/connector" extract --odbc "$CS5" --staging "$OUT/staging-5m.duckdb"
SPLITS5=$(sqlite3 "$DB5" "SELECT COUNT(*) FROM AUDIT_SPLIT")

python3 - "$OUT/runs.txt" "$ROWS" "$SPLITS" "$SPLITS5" <<'PY' | tee "$OUT/extract.md"
import statistics, sys
runs, rows, splits, splits5 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
by = {}
for line in open(runs):
    label, secs, kb = line.split()
    by.setdefault(label, []).append((float(secs), int(kb)))
med = {k: statistics.median(s for s, _ in v) for k, v in by.items()}
peak = {k: max(kb for _, kb in v) for k, v in by.items()}
rate = {k: rows / med[k] for k in ("drain", "extract", "odbc2parquet")}
print(f"Company: {splits:,} AUDIT_SPLIT rows, {rows:,} rows in all tables; median of {len(by['drain'])} rounds.\n")
print("| run | seconds | rows/s | vs raw drain | peak memory |")
print("|---|---:|---:|---:|---:|")
names = {"drain": "(a) raw ODBC drain", "extract": "(b) connector extract", "odbc2parquet": "(c) odbc2parquet"}
for k in ("drain", "extract", "odbc2parquet"):
    print(f"| {names[k]} | {med[k]:.2f} | {rate[k]:,.0f} | {rate[k] / rate['drain']:.3f}x | {peak[k] / 1024:.0f} MB |")
print(f"\n(b) / (a) = {rate['extract'] / rate['drain']:.3f} (target >= 0.9); "
      f"(b) / (c) = {rate['extract'] / rate['odbc2parquet']:.3f} (target >= 1.0)")
print(f"(b) peak memory: {peak['extract'] / 1024:.0f} MB on {splits:,} splits, "
      f"{peak['extract5m'] / 1024:.0f} MB on {splits5:,} splits (target < 500 MB, no larger); "
      f"{med['extract5m']:.1f} s for the larger company")
print(f"\nsage50-sim: {med['sim100000']:.1f} s for 100,000 transactions, {med['sim1000000']:.1f} s for 1,000,000 "
      f"(ratio {med['sim1000000'] / med['sim100000']:.1f} for 10x the size: roughly linear)")
PY
