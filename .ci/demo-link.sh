#!/usr/bin/env bash
# The linking step of `make demo`: a server, a connector agent on this machine, and a company
# created through the API. Prints the link URL to open; then drives the flow headless (the
# link page's button, the connector's settings page: Test, Confirm) unless DEMO_LINK=browser,
# in which case it waits for you to do it in a browser on this machine.
set -euo pipefail
BIN=$1 DEMO=$2
PORT=${DEMO_LINK_PORT:-8090} AGENT_PORT=${DEMO_AGENT_PORT:-47815}
W=$DEMO/link
SAGE_DIR=$DEMO/company
source "$(dirname "$0")/link-world.sh"
link_company "Harbour & Crane Trading Ltd"
echo "   The API client created company $COMPANY with a redirect URL. Its link for the Sage user:"
echo "   $LINK_URL"
if [ "${DEMO_LINK:-headless}" = browser ]; then
  echo "   Open it in a browser on this machine and follow it (the connector runs on port $AGENT_PORT)."
  until grep -q '"up_to_date"' "$W/agent/agent/status.json" 2>/dev/null; do sleep 1; done
else
  echo "   Driving it headless (DEMO_LINK=browser to click through it yourself):"
  python3 "$(dirname "$0")/link-flow.py" "$BASE" "$KEY" "$LINK_URL" "$AGENT_PORT" "$W/agent" "$COMPANY" "$SAGE_DIR" | sed '$d'
fi
echo "   The browser is sent back to: $(python3 -c 'import json,sys; print([c for c in json.load(open(sys.argv[1]))["companies"]][0]["returnUrl"])' "$W/agent/agent/status.json")"
echo "   The connector's status: $(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["companies"][0]; print(c["state"], "— last sync", c["lastSuccess"])' "$W/agent/agent/status.json")"
