#!/usr/bin/env bash
# make bench-api: the 1,000,000-split company live in connector-server, measured with wrk (64
# connections on loopback) on three queries:
#   (a) a page of 100 invoices filtered on status and a date range, newest first;
#   (b) one invoice by id;
#   (c) an incremental pull: invoices with modifiedDate >= the snapshot's time, 100 a page;
# each as the same request repeated (answered from the answers kept) and as every request a
# query (the server started with --answer-memory 0, on shuffled lists of different requests);
# then the same queries against the naive peer (the same server answering each request by
# reading the published Parquet with a fresh DuckDB: `serve --naive`), with the answers
# compared. Also: the bytes of a page of 100 invoices per Accept-Encoding, query (a) with
# gzip on, and the cost of the last page of a walk against the first. Then, under load (a), two
# new snapshots are published (a customer renamed; 1% of the transactions edited, whose parts
# alone are reloaded): time from `latest.json` changing to the new snapshot being served, and
# every failed request counted.
set -euo pipefail
CACHE=${CACHE:-$HOME/.cache/connector}
BIN=${CARGO_TARGET_DIR:-$CACHE/target}/debug
OUT=$CACHE/bench
PY=${CONNECTOR_TEST_PYTHON:-$CACHE/venv/bin/python}
SPLITS=${SPLITS:-1000000}
SECS=${SECS:-10}
PORT=${PORT:-18200}
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
mkdir -p "$OUT"
source "$(dirname "$0")/company.sh"
ORIGINAL=$(company "$SPLITS")
DIR=$(company_dir "$SPLITS")
W=$OUT/api
rm -rf "$W" && mkdir -p "$W/company/ACCDATA" "$W/store"
cp "$DIR/ACCDATA/SAGE50.DB" "$W/company/ACCDATA/"   # the last step edits the company
CS=${ORIGINAL//$DIR/$W/company}
STORE=file://$W/store
BASE=http://127.0.0.1:$PORT
KEY=$("$BIN/connector-server" admin create-client bench --state-dir "$W/server" | sed -n 's/^API key.*: //p')
SERVER=
start() { # extra args
  "$BIN/connector-server" serve --store "$STORE" --listen "127.0.0.1:$PORT" --state-dir "$W/server" \
    --rate-limit 1000000000 --poll-secs 0.2 "$@" >> "$W/server.log" 2>&1 &  # every start appended: the swaps' fetch, load and index times stay
  SERVER=$!
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return; sleep 0.05; done
  echo "the server did not start" >&2; exit 1
}
stop() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
trap stop EXIT
api() { curl -sf -H "Authorization: Bearer $KEY" "$BASE$1"; }
live_id() { api "/companies/$CO/dataStatus" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["invoices"]["snapshotId"] or "")'; }

start
CO=$(curl -sf -X POST "$BASE/companies" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d '{"name":"bench"}' \
  | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "sync 1: publishing the $SPLITS-split company" >&2
"$BIN/connector" sync --odbc "$CS" --company "$CO" --store "$STORE" --state-dir "$W/connector" > "$W/sync1.out" 2> "$W/sync1.log"
FIRST=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshotId"])' "$W/store/$CO/latest.json")
until [ "$(live_id)" = "$FIRST" ]; do sleep 0.1; done
WENT_LIVE=$(api "/companies/$CO/dataStatus" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["invoices"]["lastSuccessfulSync"])')
A="/companies/$CO/data/invoices?query=status%3DPaid%26%26issueDate%3E%3D2025-06-01%26%26issueDate%3C2025-09-01&orderBy=-issueDate&pageSize=100"
ID=$(api "$A" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["results"][50]["id"])')
B="/companies/$CO/data/invoices/$ID"
C="/companies/$CO/data/invoices?query=modifiedDate%3E%3D${WENT_LIVE//:/%3A}&pageSize=100"

measure() { # label path [extra wrk args] -> appends "label rps p50 p99 errors" to $W/runs.txt
  wrk -t2 -c64 -d"${SECS}s" --timeout 10s --latency -H "Authorization: Bearer $KEY" "${@:3}" "$BASE$2" > "$W/wrk-$1.txt"
  "$PY" - "$1" "$W/wrk-$1.txt" >> "$W/runs.txt" <<'PY'
import re, sys
label, path = sys.argv[1:3]
text = open(path).read()
def ms(tag):
    m = re.search(rf"^\s*{tag}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
if rps == 0:
    print(label, 0.0, 0.0, 0.0, 0, "none"); sys.exit(0)
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
sock = re.search(r"Socket errors:.*", text)
print(label, rps, ms(50), ms(99), int(bad.group(1)) if bad else 0, sock.group(0).replace(" ", "_") if sock else "none")
PY
}
: > "$W/runs.txt"
for q in a b c; do
  path=$A; [ $q = b ] && path=$B; [ $q = c ] && path=$C
  api "$path" > "$W/answer-server-$q.json"
  echo "server, query ($q)" >&2; measure "server-$q" "$path"
done
# The same three kinds of request, each one different from the others (the server answers a
# request it has answered before for the same snapshot from the answers it keeps, so the runs
# above measure mostly that; these measure queries): (a) on a different date window and
# status each time, (b) a different invoice each time, (c) a different page of the pull.
"$PY" - "$BASE" "$KEY" "$CO" "$W" "$WENT_LIVE" <<'PY'
import json, sys, urllib.request, urllib.parse, datetime, random
base, key, co, w, went_live = sys.argv[1:6]
def get(p):
    return json.load(urllib.request.urlopen(urllib.request.Request(base + p, headers={"Authorization": "Bearer " + key})))
# every invoice (a run sends more requests than 5,000 now: none may be asked twice)
ids, page = [], 1
while True:
    got = [r["id"] for r in get(f"/companies/{co}/data/invoices?pageSize=5000&orderBy=id&page={page}")["results"]]
    ids += got
    if len(got) < 5000:
        break
    page += 1
q = lambda s: urllib.parse.quote(s, safe="")
random.seed(7)
a = []
for status, days in ((s, n) for s in ("Paid", "Submitted", "PartiallyPaid") for n in (92, 61, 30)):
    for d in range(0, 730):
        start = datetime.date(2024, 1, 1) + datetime.timedelta(days=d)
        end = start + datetime.timedelta(days=days)
        a.append(f"/companies/{co}/data/invoices?query={q(f'status={status}&&issueDate>={start}&&issueDate<{end}')}&orderBy=-issueDate&pageSize=100")
pages = -(-get(f"/companies/{co}/data/invoices?query={q('modifiedDate>=' + went_live)}&pageSize=1")["totalResults"] // 100)
c = [f"/companies/{co}/data/invoices?query={q('modifiedDate>=' + went_live)}&pageSize=100&page={p}" for p in range(1, pages + 1)]
b = [f"/companies/{co}/data/invoices/{i}" for i in ids]
for name, paths in (("a", a), ("b", b), ("c", c)):
    random.shuffle(paths)
    lua = "paths = {" + ",".join(json.dumps(p) for p in paths) + "}\n" + """
local threads = 0
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
step = 0
function request()
  step = step + 1
  return wrk.format("GET", paths[((step * 2 + tid) % #paths) + 1])
end
"""
    open(f"{w}/distinct-{name}.lua", "w").write(lua)
    open(f"{w}/distinct-{name}.count", "w").write(str(len(paths)))
PY
# ... measured on the server started again with no answers kept (--answer-memory 0): every
# request is a query, even one sent twice. Each script runs 3 s first, unmeasured: the first
# requests of a data type read its rows into memory.
stop
start --answer-memory 0
until [ "$(live_id)" = "$FIRST" ]; do sleep 0.1; done
until api "$A" > /dev/null; do sleep 0.2; done
for q in a b c; do
  wrk -t2 -c64 -d3s --timeout 10s -H "Authorization: Bearer $KEY" -s "$W/distinct-$q.lua" "$BASE/" > /dev/null
  echo "server, query ($q), every request a query" >&2
  measure "distinct-$q" "/" -s "$W/distinct-$q.lua"
done
stop
start
until [ "$(live_id)" = "$FIRST" ]; do sleep 0.1; done
# Bytes of a page of 100 invoices as sent, per Accept-Encoding, and query (a) with gzip on.
P100="/companies/$CO/data/invoices?pageSize=100"
for enc in identity gzip br zstd; do
  printf '%s %s\n' "$enc" "$(curl -s -o /dev/null -w '%{size_download}' -H "Authorization: Bearer $KEY" -H "Accept-Encoding: $enc" "$BASE$P100")"
done > "$W/bytes.txt"
echo "server, query (a) with Accept-Encoding: gzip" >&2; measure "server-a-gzip" "$A" -H "Accept-Encoding: gzip"
# Deep pages: the last page of invoices 100 at a time, newest first, read right after the page
# before it (where it begins is known) and by offset (the page before it, which nobody reached),
# against the first page; medians of repeated sequential requests.
echo "deep pages" >&2
"$PY" - "$BASE" "$KEY" "/companies/$CO/data/invoices?orderBy=-issueDate&pageSize=100" > "$W/deep.txt" <<'PY'
import json, statistics, sys, time, urllib.request
base, key, path = sys.argv[1:4]
def get(p):
    req = urllib.request.Request(base + p, headers={"Authorization": "Bearer " + key})
    t = time.perf_counter()
    body = json.load(urllib.request.urlopen(req))
    return (time.perf_counter() - t) * 1000, body
_, first = get(path)
last = max(1, -(-first["totalResults"] // 100))
snap = first["_links"]["self"]["href"].split("snapshot=")[1]
page = lambda n: f"{path}&page={n}&snapshot={snap}"
t_first = statistics.median(get(page(1))[0] for _ in range(20))
t_offset = statistics.median(get(page(last - 1))[0] for _ in range(10))
t_keyset = statistics.median(get(page(last))[0] for _ in range(20))
print(last, round(t_first, 2), round(t_offset, 2), round(t_keyset, 2))
PY
stop
start --naive
until [ "$(live_id)" = "$FIRST" ]; do sleep 0.1; done
for q in a b c; do
  path=$A; [ $q = b ] && path=$B; [ $q = c ] && path=$C
  api "$path" > "$W/answer-naive-$q.json"
  echo "naive, query ($q)" >&2; measure "naive-$q" "$path"
done
stop
start
until [ "$(live_id)" = "$FIRST" ]; do sleep 0.1; done

# New snapshots go live under load (a): time from latest.json changing to the new snapshot
# being served, and every failed request counted.
swap_under_load() { # label sync-number
  wrk -t2 -c64 -d120s --timeout 10s --latency -H "Authorization: Bearer $KEY" "$BASE$A" > "$W/wrk-$1.txt" &
  local wrk=$!
  "$PY" - "$W/store/$CO/latest.json" "$BASE/companies/$CO/dataStatus" "$KEY" > "$W/$1.txt" <<'PY' &
import json, sys, time, urllib.request
path, url, key = sys.argv[1:4]
first = open(path).read()
while open(path).read() == first:
    time.sleep(0.005)
changed = time.time()
new = json.loads(open(path).read())["snapshotId"]
while True:
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + key})
    if json.load(urllib.request.urlopen(req))["invoices"]["snapshotId"] == new:
        break
    time.sleep(0.01)
print(new, round(time.time() - changed, 3))
PY
  local watch=$!
  sleep 2  # the load runs before the sync starts
  "$BIN/connector" sync --odbc "$CS" --company "$CO" --store "$STORE" --state-dir "$W/connector" > "$W/sync$2.out" 2> "$W/sync$2.log"
  wait $watch
  wait $wrk
}
# 1. A customer renamed in Sage (the name is also on the customer's documents, all through
#    the company's history).
sqlite3 "$W/company/ACCDATA/SAGE50.DB" "UPDATE SALES_LEDGER SET NAME = NAME || ' (renamed)' WHERE ACCOUNT_REF = (SELECT MIN(ACCOUNT_REF) FROM SALES_LEDGER)"
echo "sync 2 under load: a customer renamed" >&2
swap_under_load swap 2
# 2. 1% of the transactions edited (the details of as many sales invoices, as in bench-sync):
#    only their parts are loaded.
N=$(sqlite3 "$W/company/ACCDATA/SAGE50.DB" "SELECT COUNT(*) / 100 FROM AUDIT_HEADER")
sqlite3 "$W/company/ACCDATA/SAGE50.DB" "CREATE TEMP TABLE edited AS SELECT HEADER_NUMBER FROM AUDIT_HEADER WHERE TYPE = 'SI' ORDER BY HEADER_NUMBER LIMIT $N;
  UPDATE AUDIT_HEADER SET DETAILS = substr(DETAILS || ' (edited)', 1, 60) WHERE HEADER_NUMBER IN (SELECT HEADER_NUMBER FROM edited);
  UPDATE AUDIT_SPLIT SET DETAILS = substr(DETAILS || ' (edited)', 1, 60) WHERE HEADER_NUMBER IN (SELECT HEADER_NUMBER FROM edited);"
echo "$N" > "$W/edited.txt"
echo "sync 3 under load: $N transactions (1%) edited" >&2
swap_under_load swap1pct 3
grep -o 'parts_reused=[0-9]* parts_loaded=[0-9]*' "$W/server.log" | tail -1 > "$W/parts.txt" || true
# A restart: how soon the server listens, and how soon the company's first request is answered
# (its saved state is taken back on demand, not before the server listens).
echo "restart" >&2
stop
T0=$(date +%s%N); start; T1=$(date +%s%N)
api "$A" > /dev/null; T2=$(date +%s%N)
echo "$(( (T1 - T0) / 1000000 )) $(( (T2 - T0) / 1000000 ))" > "$W/restart.txt"
"$PY" - "$W" "$SECS" <<'PY' | tee "$OUT/api.md"
import json, re, sys
w, secs = sys.argv[1:3]
runs = {}
for line in open(f"{w}/runs.txt"):
    label, rps, p50, p99, bad, sock = line.split()
    runs[label] = (float(rps), float(p50), float(p99), int(bad), sock)
names = {"a": "(a) 100 invoices, status + date range, newest first", "b": "(b) one invoice by id", "c": "(c) incremental pull, modifiedDate >= T"}
print(f"wrk, 2 threads, 64 connections, {secs} s per run, loopback.\n")
print("| query | server req/s | p50 ms | p99 ms | naive req/s | p50 ms | p99 ms | server / naive | same answer |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
failed = 0
for q in "abc":
    s, n = runs[f"server-{q}"], runs[f"naive-{q}"]
    same = json.load(open(f"{w}/answer-server-{q}.json")) == json.load(open(f"{w}/answer-naive-{q}.json"))
    failed += s[3] + n[3]
    ratio = f"**{s[0]/n[0]:.1f}×**" if n[0] > 0 else "∞ (naive: none answered)"
    print(f"| {names[q]} | {s[0]:,.0f} | {s[1]:.2f} | {s[2]:.2f} | {n[0]:,.1f} | {n[1]:.2f} | {n[2]:.2f} | {ratio} | {'yes' if same else 'NO'} |")
s, g = runs["server-a"], runs["server-a-gzip"]
print("\nEvery request a query: the server started again with no answers kept (`--answer-memory 0`), "
      "and (a) a different window (92, 61 or 30 days) and status each time, (b) a different invoice, (c) a different page of the pull, "
      "in a shuffled order (the lists start again once sent through):\n")
print("| query | distinct requests | sent | req/s | p50 ms | p99 ms | non-2xx |")
print("|---|---:|---:|---:|---:|---:|---:|")
secs = float(secs)
repeated = []
for q in "abc":
    d = runs[f"distinct-{q}"]
    n = int(open(f"{w}/distinct-{q}.count").read())
    sent = d[0] * secs
    if sent > n:
        repeated.append(q)
    print(f"| {names[q]} | {n:,} | {sent:,.0f} | {d[0]:,.0f} | {d[1]:.2f} | {d[2]:.2f} | {d[3]} |")
if repeated:
    print(f"\nFor {', '.join(repeated)} more requests were sent than there are distinct ones: the repeats "
          "were queries too (no answers kept), and a page of (c) after the first of its pull is a slice of the rows the pull matched.")
print(f"\nQuery (a) with Accept-Encoding: gzip: {g[0]:,.0f} req/s, p50 {g[1]:.2f} ms, p99 {g[2]:.2f} ms "
      f"({g[0]/s[0]:.2f}× the rate without; {g[3]} non-2xx).")
sizes = dict(line.split() for line in open(f"{w}/bytes.txt"))
plain = int(sizes["identity"])
print("\n| a page of 100 invoices | bytes sent | of identity |\n|---|---:|---:|")
for enc in ["identity", "gzip", "br", "zstd"]:
    print(f"| {enc} | {int(sizes[enc]):,} | {int(sizes[enc]) / plain:.1%} |")
last, first, offset, keyset = open(f"{w}/deep.txt").read().split()
print(f"\nDeep pages (invoices newest first, 100 a page, {int(last):,} pages), median ms: first page {first}; "
      f"last page right after the one before it (keyset) {keyset} (**{float(keyset)/float(first):.2f}×** the first); "
      f"the page before it, reached by offset {offset} ({float(offset)/float(first):.2f}× the first).")
edited = int(open(f"{w}/edited.txt").read())
parts = open(f"{w}/parts.txt").read().strip() or "parts not logged"
for label, what, target in (("swap", "a customer renamed (its documents all through the company's history change)", 5),
                            ("swap1pct", f"{edited:,} transactions (1%) edited; {parts.replace('_', ' ')}", 1)):
    snap, seconds = open(f"{w}/{label}.txt").read().split()
    swap = open(f"{w}/wrk-{label}.txt").read()
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", swap)
    sock = re.search(r"Socket errors:.*", swap)
    reqs = re.search(r"(\d+) requests in", swap).group(1)
    # the server's own account of the swap (its log keeps every start's lines)
    log = re.sub(r"\x1b\[[0-9;]*m", "", open(f"{w}/server.log").read())
    live = re.search(rf"A new snapshot is live\..*snapshot={snap} fetch_secs=([0-9.]+) load_secs=([0-9.]+) index_secs=([0-9.]+)", log)
    loaded = re.search(rf"schema=\"s_{snap.replace('-', '_')}\" parts_reused=(\d+) parts_loaded=(\d+)", log)
    told = (f" The server: parts reused {loaded.group(1)}, loaded {loaded.group(2)}; " if loaded else " The server: ") + (
        f"fetched in {float(live.group(1)):.2f} s, loaded in {float(live.group(2)):.2f} s (to the swap), indexed in {float(live.group(3)):.2f} s after it."
        if live else "its timings are not in its log.")
    print(f"\nNew snapshot {snap}, {what}: **served {seconds} s after latest.json changed** (target < {target} s). "
          f"Under load (a) for 120 s while it was published and swapped in: {int(reqs):,} requests, "
          f"{int(bad.group(1)) if bad else 0} non-2xx, {sock.group(0) if sock else 'no socket errors'}.{told}")
listening, answered = open(f"{w}/restart.txt").read().split()
print(f"\nRestart: listening after {int(listening):,} ms (polled every 50 ms); the company's first "
      f"answer (query (a)) after {int(answered):,} ms, its saved state taken back on demand.")
PY
