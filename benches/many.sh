#!/usr/bin/env bash
# make bench-many: COMPANIES companies (1,000) of TRANSACTIONS transactions (20,000) each on one
# connector-server node within a memory budget (--memory-limit BUDGET, 4GB). One simulated
# company is synced by the real connector; the store then holds a copy of it under every other
# company's id (its manifest rewritten for that id, the data files hard links): each company is
# fetched, checked, loaded and saved by the server on its own. Reported:
#   - the first ingest of every company, and the server's peak RSS during it;
#   - a restart: when the server listens, and the first answer;
#   - query (a) (a page of 100 invoices filtered on status and a date range, newest first)
#     on 50 random cold companies (each the first request since the restart: taken back from
#     local disk) and, repeated, on one hot company: p50 and p99;
#   - the server's peak RSS after the restart, and what the companies in memory hold.
set -euo pipefail
CACHE=${CACHE:-$HOME/.cache/connector}
BIN=${CARGO_TARGET_DIR:-$CACHE/target}/debug
OUT=$CACHE/bench
PY=${CONNECTOR_TEST_PYTHON:-$CACHE/venv/bin/python}
COMPANIES=${COMPANIES:-1000}
TRANSACTIONS=${TRANSACTIONS:-20000}
BUDGET=${BUDGET:-4GB}
PORT=${PORT:-18300}
mkdir -p "$OUT"
SIM_ID=$(sha1sum "$BIN/sage50-sim" | cut -c1-8)
DIR=$OUT/many-company-$TRANSACTIONS-$SIM_ID
if [ ! -f "$DIR/odbc.txt" ]; then
  rm -rf "$OUT"/many-company-* && mkdir -p "$DIR"
  "$BIN/sage50-sim" --out "$DIR" --seed 7 --transactions "$TRANSACTIONS" > "$DIR/odbc.tmp"
  mv "$DIR/odbc.tmp" "$DIR/odbc.txt"
fi
W=$OUT/many
rm -rf "$W" && mkdir -p "$W/store"
STORE=file://$W/store
BASE=http://127.0.0.1:$PORT
KEY=$("$BIN/connector-server" admin create-client bench --state-dir "$W/server" | sed -n 's/^API key.*: //p')
SERVER=
RUN=0
start() {
  RUN=$((RUN + 1))
  "$BIN/connector-server" serve --store "$STORE" --listen "127.0.0.1:$PORT" --state-dir "$W/server" \
    --rate-limit 1000000000 --max-companies-per-client 1000000 --memory-limit "$BUDGET" \
    --metrics-token bench > "$W/server-$RUN.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 2000); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return; sleep 0.005; done
  echo "the server did not start" >&2; exit 1
}
stop() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
trap stop EXIT
peak() { sed -n 's/^VmHWM:\s*\([0-9]*\) kB/\1/p' "/proc/$SERVER/status"; }
metric() { curl -sf -H "Authorization: Bearer bench" "$BASE/metrics" | sed -n "s/^$1 //p"; }

start
echo "creating $COMPANIES companies" >&2
"$PY" - "$BASE" "$KEY" "$COMPANIES" > "$W/companies.txt" <<'PY'
import json, sys, urllib.request
base, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    req = urllib.request.Request(base + "/companies", data=json.dumps({"name": f"bench {i}"}).encode(),
                                 headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    print(json.load(urllib.request.urlopen(req))["id"])
PY
FIRST=$(head -n 1 "$W/companies.txt")
echo "syncing the $TRANSACTIONS-transaction company as $FIRST" >&2
"$BIN/connector" sync --odbc "$(cat "$DIR/odbc.txt")" --company "$FIRST" --store "$STORE" \
  --state-dir "$W/connector" > "$W/sync.out" 2> "$W/sync.log"
echo "publishing it under every other company's id" >&2
"$PY" - "$W/store" "$W/companies.txt" <<'PY'
import hashlib, json, os, sys
store, ids = sys.argv[1], open(sys.argv[2]).read().split()
first = ids[0]
latest = json.load(open(f"{store}/{first}/latest.json"))
manifest = open(f"{store}/{latest['manifestKey']}", "rb").read()
for co in ids[1:]:
    for root, _, files in os.walk(f"{store}/{first}/data"):
        for f in files:
            dst = os.path.join(store, co, os.path.relpath(os.path.join(root, f), f"{store}/{first}"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.link(os.path.join(root, f), dst)
    m = manifest.replace(first.encode(), co.encode())
    key = latest["manifestKey"].replace(first, co)
    os.makedirs(os.path.dirname(f"{store}/{key}"), exist_ok=True)
    open(f"{store}/{key}", "wb").write(m)
    pointer = dict(latest, manifestKey=key, manifestSha256=hashlib.sha256(m).hexdigest())
    open(f"{store}/{co}/latest.json.part", "w").write(json.dumps(pointer, indent=2))
    os.replace(f"{store}/{co}/latest.json.part", f"{store}/{co}/latest.json")
PY
T0=$(date +%s%N)
until [ "$(metric connector_snapshots_live_total)" -ge "$COMPANIES" ]; do
  sleep 1
  echo "  $(metric connector_snapshots_live_total) of $COMPANIES companies live" >&2
done
T1=$(date +%s%N)
echo "$(( (T1 - T0) / 1000000 )) $(peak) $(metric connector_companies_in_memory) $(metric connector_memory_resident_bytes)" > "$W/ingest.txt"
stop

echo "restart" >&2
T0=$(date +%s%N); start; T1=$(date +%s%N)
A="/data/invoices?query=status%3DPaid%26%26issueDate%3E%3D2025-06-01%26%26issueDate%3C2025-09-01&orderBy=-issueDate&pageSize=100"
curl -sf -H "Authorization: Bearer $KEY" "$BASE/companies/$FIRST$A" > "$W/answer.json"; T2=$(date +%s%N)
echo "$(( (T1 - T0) / 1000000 )) $(( (T2 - T0) / 1000000 ))" > "$W/restart.txt"
echo "query (a): cold companies, then a hot one" >&2
"$PY" - "$BASE" "$KEY" "$A" "$W/companies.txt" > "$W/latency.txt" <<'PY'
import json, random, statistics, sys, time, urllib.request
base, key, a, ids = sys.argv[1], sys.argv[2], sys.argv[3], open(sys.argv[4]).read().split()
def get(co):
    req = urllib.request.Request(f"{base}/companies/{co}{a}", headers={"Authorization": "Bearer " + key})
    t = time.perf_counter()
    body = json.load(urllib.request.urlopen(req))
    assert body["results"], body
    return (time.perf_counter() - t) * 1000
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]
random.seed(1)
cold = [get(co) for co in random.sample(ids[1:], min(50, len(ids) - 1))]
hot_co = ids[0]
for _ in range(20):
    get(hot_co)
hot = [get(hot_co) for _ in range(500)]
print(len(cold), round(statistics.median(cold), 2), round(pct(cold, 99), 2), round(max(cold), 2),
      len(hot), round(statistics.median(hot), 2), round(pct(hot, 99), 2))
PY
echo "$(peak) $(metric connector_companies_in_memory) $(metric connector_memory_resident_bytes)" > "$W/after.txt"
stop
"$PY" - "$W" "$COMPANIES" "$TRANSACTIONS" "$BUDGET" <<'PY' | tee "$OUT/many.md"
import sys
w, n, tx, budget = sys.argv[1:5]
ms, peak1, mem1, held1 = open(f"{w}/ingest.txt").read().split()
listen, first = open(f"{w}/restart.txt").read().split()
nc, c50, c99, cmax, nh, h50, h99 = open(f"{w}/latency.txt").read().split()
peak2, mem2, held2 = open(f"{w}/after.txt").read().split()
mib = lambda kb: f"{int(kb) / 1024:,.0f} MiB"
print(f"{int(n):,} companies of {int(tx):,} transactions each, one node, `--memory-limit {budget}`.\n")
print("| measure | value |\n|---|---:|")
print(f"| first ingest of every company (fetched, checked, loaded, saved) | {int(ms) / 1000:,.1f} s |")
print(f"| peak RSS during it | {mib(peak1)} |")
print(f"| companies in memory after it / what they hold | {mem1} / {int(held1) / 2**20:,.0f} MiB |")
print(f"| restart: listening after | {int(listen):,} ms |")
print(f"| restart: first answer (query (a), a cold company) after | {int(first):,} ms |")
print(f"| query (a), {nc} random cold companies: p50 / p99 / max | {c50} / {c99} / {cmax} ms |")
print(f"| query (a), one hot company, {nh} sequential requests: p50 / p99 | {h50} / {h99} ms |")
print(f"| peak RSS after the restart (cold and hot queries) | {mib(peak2)} |")
print(f"| companies in memory at the end / what they hold | {mem2} / {int(held2) / 2**20:,.0f} MiB |")
PY
