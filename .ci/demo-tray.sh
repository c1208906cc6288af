#!/usr/bin/env bash
# `make demo-tray`: the tray app under Xvfb, as a Sage user sees it. A virtual screen (Xvfb)
# with a system tray (trayer), a private D-Bus session, a server and the tray app (which runs
# the agent), a company linked and synced as in `make demo`; then the tray's menu is opened
# with a click and the screen is saved to DEMO/tray.png.
set -euo pipefail
BIN=$1 DEMO=$2
PORT=${DEMO_LINK_PORT:-8091} AGENT_PORT=${DEMO_AGENT_PORT:-47816}
W=$DEMO/tray
SAGE_DIR=$DEMO/company
DISPLAY_NUM=${DEMO_DISPLAY:-77}
export DISPLAY=:$DISPLAY_NUM
Xvfb "$DISPLAY" -screen 0 900x420x24 -nolisten tcp > /dev/null 2>&1 &
XVFB=$!
for _ in $(seq 100); do [ -e "/tmp/.X11-unix/X$DISPLAY_NUM" ] && break; sleep 0.05; done
command -v xsetroot > /dev/null && xsetroot -solid "#3b5a78"
DBUS_INFO=$(dbus-daemon --session --fork --print-address=1 --print-pid=1)
export DBUS_SESSION_BUS_ADDRESS=$(sed -n 1p <<< "$DBUS_INFO")
DBUS_SESSION_BUS_PID=$(sed -n 2p <<< "$DBUS_INFO")
trayer --edge top --align right --widthtype request --height 36 --SetDockType true \
  --transparent false --tint 0xeeeeee > /dev/null 2>&1 &
TRAYER=$!
TRAY=1
source "$(dirname "$0")/link-world.sh"
stop_all() {
  kill $AGENT $SERVER 2>/dev/null || true
  for _ in $(seq 50); do kill -0 $AGENT 2>/dev/null || kill -0 $SERVER 2>/dev/null || break; sleep 0.2; done
  kill -9 $AGENT $SERVER 2>/dev/null || true
  kill $TRAYER $XVFB 2>/dev/null || true
  [ -n "${DBUS_SESSION_BUS_PID:-}" ] && kill "$DBUS_SESSION_BUS_PID" 2>/dev/null || true
}
trap stop_all EXIT
link_company "Harbour & Crane Trading Ltd"
python3 "$(dirname "$0")/link-flow.py" "$BASE" "$KEY" "$LINK_URL" "$AGENT_PORT" "$W/agent" "$COMPANY" "$SAGE_DIR" > /dev/null
sleep 2
# the tray's icon sits in trayer's window: click it to open the menu
# (its window, embedded in trayer's panel: "WxH+x+y  +X+Y", absolute position last)
read -r W_H ABS < <(xwininfo -root -tree | grep 'tray-icon tray app' | head -1 | grep -oE '[0-9]+x[0-9]+\+[-0-9]+\+[-0-9]+ +\+[-0-9]+\+[-0-9]+' | awk '{print $1, $2}')
IFS='x+' read -r WIDTH HEIGHT _ _ <<< "$W_H"
IFS='+' read -r _ X Y <<< "$ABS"
xdotool mousemove $((X + WIDTH / 2)) $((Y + HEIGHT / 2)) click 1
sleep 1
import -window root -crop 660x200+240+0 +repage "$DEMO/tray.png"
echo "   The tray under Xvfb, its menu open: $DEMO/tray.png"
python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["companies"][0]; print("   The connector says:", c["state"], "— last sync", c["lastSuccess"])' "$W/agent/agent/status.json"
