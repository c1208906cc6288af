#!/usr/bin/env bash
# make bench-sync: `connector sync` of the 1,000,000-split company (generated once per
# simulator build, as in bench-extract) into a real S3-compatible server on loopback.
#   1. first sync into an empty bucket: seconds per stage, bytes uploaded;
#   2. second sync, nothing changed in Sage: bytes uploaded against the first (target < 1%);
#   3. third sync after editing 1% of the transactions (the details of as many sales
#      invoices): which data types were uploaded, against the data types whose rows really
#      changed, found by pyarrow comparing the two snapshots' tables.
# Parquet export time against extraction time (target <= 1/4) is read from each sync.
set -euo pipefail
CACHE=${CACHE:-$HOME/.cache/connector}
BIN=${CARGO_TARGET_DIR:-$CACHE/target}/debug
OUT=$CACHE/bench
SPLITS=${SPLITS:-1000000}
PY=${CONNECTOR_TEST_PYTHON:-$CACHE/venv/bin/python}
ENDPOINT=${CONNECTOR_TEST_S3_ENDPOINT:-http://127.0.0.1:54330}
mkdir -p "$OUT"

source "$(dirname "$0")/company.sh"
ORIGINAL=$(company "$SPLITS")
DIR=$(company_dir "$SPLITS")
# The third sync edits the company: work on a copy.
WORK=$OUT/sync-company
rm -rf "$WORK" && mkdir -p "$WORK/ACCDATA" && cp "$DIR/ACCDATA/SAGE50.DB" "$WORK/ACCDATA/"
DB=$WORK/ACCDATA/SAGE50.DB
CS=${ORIGINAL//$DIR/$WORK}
STATE=$OUT/sync-state
rm -rf "$STATE"

BUCKET=bench-sync-$(date +%s)
"$PY" - "$ENDPOINT" "$BUCKET" <<'PY'
import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(f"{sys.argv[1]}/{sys.argv[2]}", method="PUT"))
PY
export AWS_ENDPOINT=$ENDPOINT AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
STORE=s3://$BUCKET/connector

run() { # label
  /usr/bin/time -f "%e %M" -o "$OUT/time.txt" "$BIN/connector" sync --odbc "$CS" --company bench \
    --store "$STORE" --state-dir "$STATE" --json "$OUT/sync-$1.json" > "$OUT/sync-$1.out" 2> "$OUT/sync-$1.log" || {
    echo "sync $1 failed:" >&2; tail -20 "$OUT/sync-$1.log" "$OUT/sync-$1.out" >&2; exit 1; }
  echo "$1 $(cat "$OUT/time.txt")" >> "$OUT/sync-runs.txt"
}
: > "$OUT/sync-runs.txt"
echo "sync 1/3: into an empty bucket" >&2
run first
echo "sync 2/3: nothing changed" >&2
run unchanged
N=$(sqlite3 "$DB" "SELECT COUNT(*) / 100 FROM AUDIT_HEADER")
sqlite3 "$DB" "CREATE TEMP TABLE edited AS SELECT HEADER_NUMBER FROM AUDIT_HEADER WHERE TYPE = 'SI' ORDER BY HEADER_NUMBER LIMIT $N;
  UPDATE AUDIT_HEADER SET DETAILS = substr(DETAILS || ' (edited)', 1, 60) WHERE HEADER_NUMBER IN (SELECT HEADER_NUMBER FROM edited);
  UPDATE AUDIT_SPLIT SET DETAILS = substr(DETAILS || ' (edited)', 1, 60) WHERE HEADER_NUMBER IN (SELECT HEADER_NUMBER FROM edited);"
echo "sync 3/3: after editing $N transactions (1%)" >&2
run edited
"$BIN/connector" snapshot verify "$STORE" bench > "$OUT/sync-verify.out"

"$PY" - "$OUT" "$ENDPOINT" "$BUCKET" "$N" <<'PY' | tee "$OUT/sync.md"
import json, sys
import pyarrow.parquet as pq
import pyarrow.fs as pafs
out, endpoint, bucket, edited = sys.argv[1:5]
runs = {l.split()[0]: (float(l.split()[1]), int(l.split()[2])) for l in open(f"{out}/sync-runs.txt")}
rep = {k: json.load(open(f"{out}/sync-{k}.json")) for k in ("first", "unchanged", "edited")}
stage = lambda r, n: next(s["seconds"] for s in r["stages"] if s["name"] == n)
print("| sync | extract s | normalise s | export s | publish s | export / extract | bytes sent | files uploaded | peak memory |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for k, label in (("first", "1. empty bucket"), ("unchanged", "2. no change"), ("edited", "3. 1% edited")):
    r = rep[k]
    sent = sum(p["bytes_uploaded"] + p["bytes_metadata"] for p in r["published"])
    files = sum(p["files_uploaded"] for p in r["published"])
    print(f"| {label} | {stage(r,'extract'):.2f} | {stage(r,'normalise'):.2f} | {stage(r,'export'):.2f} | {stage(r,'publish'):.2f} "
          f"| {stage(r,'export')/stage(r,'extract'):.3f} | {sent:,} | {files} | {runs[k][1]/1024:.0f} MB |")
sent = {k: sum(p["bytes_uploaded"] + p["bytes_metadata"] for p in r["published"]) for k, r in rep.items()}
records = sum(d["records"] for d in rep["first"]["data_types"])
ratios = sorted(stage(r, "export") / stage(r, "extract") for r in rep.values())
print(f"\n{records:,} records in {len(rep['first']['data_types'])} data types.")
print(f"Parquet export / extraction: median {ratios[1]:.3f} of 3 syncs (target <= 0.25).")
print(f"Second sync, no change: {sent['unchanged']:,} bytes sent = {100*sent['unchanged']/sent['first']:.4f}% of the first sync's {sent['first']:,} (target < 1%).")
# Which data types really changed: compare the tables of the two snapshots, row for row.
s3 = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key="bench", secret_key="bench", region="us-east-1")
def manifest(r):
    snap = r["snapshot_id"]
    with s3.open_input_file(f"{bucket}/connector/bench/snapshots/{snap}/manifest.json") as f:
        return json.load(f)
before, after = manifest(rep["unchanged"]), manifest(rep["edited"])
# a data type read as one dataset: all its files (one per part) together
table = lambda m, t: pq.read_table([f"{bucket}/connector/" + f["key"] for f in m["dataTypes"][t]["files"]], filesystem=s3)
really = sorted(t for t in after["dataTypes"] if not table(before, t).equals(table(after, t)))
uploaded = sorted(d["data_type"] for d in rep["edited"]["data_types"] if d["uploaded"])
files = lambda m: {(t, f["part"]): f["sha256"] for t, e in m["dataTypes"].items() for f in e["files"]}
fb, fa = files(before), files(after)
changed_parts = sorted(f"{t}/{p}" for (t, p), sha in fa.items() if fb.get((t, p)) != sha)
share = 100 * sent["edited"] / sent["first"]
print(f"Data files: {len(fa)} in {len(after['dataTypes'])} data types (parts of {16384:,} ids).")
print(f"Third sync, {int(edited):,} transactions (1%) edited: uploaded {', '.join(uploaded) or 'nothing'} "
      f"({sent['edited']:,} bytes, **{share:.2f}% of the first sync's bytes**, target <= 5%; "
      f"parts changed: {', '.join(changed_parts)}); "
      f"data types whose rows changed (pyarrow, each read as one dataset): {', '.join(really)}; "
      f"{'the same' if uploaded == really else 'DIFFERENT'}.")
if uploaded != really or sent["unchanged"] >= 0.01 * sent["first"] or share > 5:
    sys.exit(1)
PY
