#!/usr/bin/env bash
# Starts (up) or stops (down) a throwaway PostgreSQL cluster on loopback with a password-checked
# role, used by the rejected-credentials test through the psqlODBC driver, a Windows-1252
# database for the text-encoding test, and the role `connector` (CREATEDB) of the PostgreSQL
# control-plane tests. Idempotent.
set -euo pipefail
action=$1 dir=$2 port=$3
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg() { runuser -u postgres -- "$@"; }
case "$action" in
  up)
    if [ ! -f "$dir/PG_VERSION" ]; then
      rm -rf "$dir" && mkdir -p "$dir" && chown postgres "$dir"
      as_pg "$bin/initdb" -D "$dir" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    fi
    if ! as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
      as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
    fi
    as_pg psql -h "$dir" -p "$port" -U postgres -q -c \
      "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='sage_manager') THEN CREATE ROLE sage_manager LOGIN PASSWORD 'correct-horse'; END IF; END\$\$;" postgres
    # The control-plane tests' role: each test makes a database of its own and drops it.
    as_pg psql -h "$dir" -p "$port" -U postgres -q -c \
      "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='connector') THEN CREATE ROLE connector LOGIN CREATEDB PASSWORD 'connector-test'; END IF; END\$\$;" postgres
    # A database whose text is Windows-1252, as a UK PC's ANSI driver hands it over.
    if ! as_pg psql -h "$dir" -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='sage_win1252'" postgres | grep -q 1; then
      as_pg psql -h "$dir" -p "$port" -U postgres -q -c \
        "CREATE DATABASE sage_win1252 ENCODING 'WIN1252' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0 OWNER sage_manager" postgres
    fi
    ;;
  down)
    if [ -f "$dir/PG_VERSION" ]; then as_pg "$bin/pg_ctl" -D "$dir" -m fast stop >/dev/null 2>&1 || true; fi
    ;;
esac
