#!/usr/bin/env bash
# make bench-link: time from Confirm on the connector's settings page to the first data served
# by the API, on a 100,000-split company, with the time per step. Real processes on loopback:
# connector-server on a local store, a `connector run` agent, the flow driven over HTTP as the
# browser drives it (.ci/link-flow.py). ROUNDS rounds (default 3), each a new company, a new
# agent state folder and a new server.
set -euo pipefail
CACHE=${CACHE:-$HOME/.cache/connector}
BIN=${CARGO_TARGET_DIR:-$CACHE/target}/debug
OUT=$CACHE/bench
SPLITS=${SPLITS:-100000}
ROUNDS=${ROUNDS:-3}
mkdir -p "$OUT"
source "$(dirname "$0")/company.sh"
company "$SPLITS" > /dev/null
SAGE_DIR=$(company_dir "$SPLITS")
RESULTS=()
for round in $(seq "$ROUNDS"); do
  echo "== Round $round of $ROUNDS: linking the $SPLITS-split company"
  W=$OUT/link-$round PORT=$((18300 + round)) AGENT_PORT=$((18400 + round))
  (
    source "$(dirname "$0")/../.ci/link-world.sh"
    link_company "Bench $round Ltd"
    python3 "$(dirname "$0")/../.ci/link-flow.py" "$BASE" "$KEY" "$LINK_URL" "$AGENT_PORT" "$W/agent" "$COMPANY" "$SAGE_DIR" \
      | tee "$W.txt"
  )
  RESULTS+=("$(tail -n 1 "$OUT/link-$round.txt")")
done
python3 - "${RESULTS[@]}" <<'PY'
import json, statistics, sys
runs = [json.loads(a) for a in sys.argv[1:]]
served = [r["served_s"] for r in runs]
print(f"\nConfirm → first data served: median {statistics.median(served):.2f} s over {len(runs)} rounds: "
      + ", ".join(f"{s:.2f}" for s in served) + " (target < 15 s)")
for key in ["confirm_answered_s", "synced_s"]:
    print(f"  {key:<22} median {statistics.median(r[key] for r in runs):.2f} s")
for stage in runs[0]["stages"]:
    print(f"  sync stage {stage:<11} median {statistics.median(r['stages'][stage] for r in runs):.2f} s")
print(f"  invoices served: {runs[0]['invoices']}")
PY
