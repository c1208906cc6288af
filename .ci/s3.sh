#!/usr/bin/env bash
# Starts (up) or stops (down) a real S3-compatible server process on loopback for the tests:
# moto's standalone server (HTTP, path-style buckets, conditional PUT with If-Match and
# If-None-Match, multipart uploads), from the Python virtualenv the Makefile installs.
# Idempotent; its log is DIR/s3.log.
set -euo pipefail
action=$1 dir=$2 port=$3 venv=$4
pidfile=$dir/s3.pid
case "$action" in
  up)
    mkdir -p "$dir"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then exit 0; fi
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" > "$dir/s3.log" 2>&1 &
    echo $! > "$pidfile"
    for _ in $(seq 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then exit 0; fi
      sleep 0.1
    done
    echo "the S3 server did not start on 127.0.0.1:$port; its log:" >&2; cat "$dir/s3.log" >&2; exit 1
    ;;
  down)
    if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
    ;;
esac
