#!/usr/bin/env bash
# The end of `make demo`: the server on the sample company. Starts connector-server on a
# local store, creates an API client (its key printed once) and, through the API, a company;
# syncs the sample company into the store under that company's id; waits until the server
# serves it; prints three curl commands and runs them; then keeps the server in the
# foreground until Ctrl-C.
set -euo pipefail
BIN=$1 DEMO=$2 PORT=${3:-8080}
ODBC=$(cat "$DEMO/odbc.txt")
STATE=$DEMO/server
STORE=file://$DEMO/api-store
rm -rf "$STATE" "$DEMO/api-store" "$DEMO/api-connector"
mkdir -p "$STATE" "$DEMO/api-store"
KEY=$("$BIN/connector-server" admin create-client "Demo Lender" --state-dir "$STATE" | sed -n 's/^API key.*: //p')
"$BIN/connector-server" serve --store "$STORE" --listen "127.0.0.1:$PORT" --state-dir "$STATE" > "$DEMO/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
BASE=http://127.0.0.1:$PORT
COMPANY=$(curl -sf -X POST "$BASE/companies" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"name": "Harbour & Crane Trading Ltd"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "== Company $COMPANY created through the API; syncing the sample company into it"
"$BIN/connector" sync --odbc "$ODBC" --company "$COMPANY" --store "$STORE" --state-dir "$DEMO/api-connector" 2> "$DEMO/api-sync.log" | tail -n 2
curl -sf -X POST "$BASE/companies/$COMPANY/snapshots/published" -H "Authorization: Bearer $KEY" > /dev/null
for _ in $(seq 200); do
  curl -sf "$BASE/companies/$COMPANY/dataStatus" -H "Authorization: Bearer $KEY" | grep -q '"Fetched"' && break
  sleep 0.1
done
cat <<MSG

== The server is running on $BASE (log: $DEMO/server.log), serving the sample company.
API key (shown once): $KEY

Try:
  curl -s -H "Authorization: Bearer $KEY" "$BASE/companies/$COMPANY/dataStatus"
  curl -s -H "Authorization: Bearer $KEY" "$BASE/companies/$COMPANY/data/invoices?query=status%3DPaid%26%26issueDate%3E%3D2025-06-01&orderBy=-issueDate&pageSize=2"
  curl -s -H "Authorization: Bearer $KEY" "$BASE/companies/$COMPANY/data/customers?query=modifiedDate%3E%3D2020-01-01&pageSize=1"

MSG
echo "== The three, run once:"
curl -sf -H "Authorization: Bearer $KEY" "$BASE/companies/$COMPANY/dataStatus" | head -c 300; echo " …"
curl -sf -H "Authorization: Bearer $KEY" "$BASE/companies/$COMPANY/data/invoices?query=status%3DPaid%26%26issueDate%3E%3D2025-06-01&orderBy=-issueDate&pageSize=2" | head -c 300; echo " …"
curl -sf -H "Authorization: Bearer $KEY" "$BASE/companies/$COMPANY/data/customers?query=modifiedDate%3E%3D2020-01-01&pageSize=1" | head -c 300; echo " …"
if [ -n "${DEMO_NO_WAIT:-}" ]; then exit 0; fi
echo
echo "Press Ctrl-C to stop the server."
wait $SERVER
