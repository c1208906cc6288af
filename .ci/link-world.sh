# Sourced by `make demo` and `make bench-link` (needs BIN, W, PORT, AGENT_PORT, SAGE_DIR): a
# connector-server on a local store, an API client, a Sage settings tree whose COMPANY file
# lists SAGE_DIR, and a `connector run` agent on AGENT_PORT. Defines link_company NAME, which
# creates a company with a redirect URL through the API and sets LINK_URL and COMPANY.
rm -rf "$W" && mkdir -p "$W/store" "$W/sage-root/2026"
echo "$SAGE_DIR" > "$W/sage-root/2026/COMPANY"
KEY=$("$BIN/connector-server" admin create-client "Demo Lender" --state-dir "$W/server" | sed -n 's/^API key.*: //p')
BASE=http://127.0.0.1:$PORT
"$BIN/connector-server" serve --store "file://$W/store" --listen "127.0.0.1:$PORT" --state-dir "$W/server" \
  --loopback-port "$AGENT_PORT" > "$W/server.log" 2>&1 &
SERVER=$!
# TRAY=1: the tray app, which runs the same agent as its child
if [ -n "${TRAY:-}" ]; then AGENT_CMD=("$BIN/connector-tray"); else AGENT_CMD=("$BIN/connector" run); fi
"${AGENT_CMD[@]}" --server "$BASE" --port "$AGENT_PORT" --state-dir "$W/agent" --sage-root "$W/sage-root" \
  --odbc-template 'Driver={{SQLite3}};Database={ACCDATA}/SAGE50.DB;NoCreat=1' > "$W/agent.out" 2> "$W/agent.log" &
AGENT=$!
trap 'kill $AGENT $SERVER 2>/dev/null || true; wait $AGENT $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 200); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$AGENT_PORT") 2>/dev/null && break
  sleep 0.05
done
link_company() {
  local answer
  answer=$(curl -sf -X POST "$BASE/companies" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d "{\"name\": \"$1\", \"redirectUrl\": \"https://lender.example/sage/done\"}")
  COMPANY=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<< "$answer")
  LINK_URL=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["linkUrl"])' <<< "$answer")
}
