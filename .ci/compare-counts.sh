#!/usr/bin/env bash
# Prints, per table, the rows the connector staged (from its summary) next to the rows the
# SQLite source holds according to the sqlite3 CLI, and fails if any differ.
set -euo pipefail
db=$1 summary=$2 bad=0 seen=0
printf '%-16s %10s %10s\n' table staged source
while read -r table rows _; do
  case "$table" in table|"") continue ;; esac
  [[ "$rows" =~ ^[0-9]+$ ]] || continue
  seen=$((seen + 1))
  src=$(sqlite3 "$db" "SELECT COUNT(*) FROM \"$table\"")
  mark=""; [ "$src" = "$rows" ] || { mark="  MISMATCH"; bad=1; }
  printf '%-16s %10s %10s%s\n' "$table" "$rows" "$src" "$mark"
done < <(grep -v ' rows in ' "$summary")
[ $seen -gt 0 ] || { echo "No table rows in $summary: the extraction printed no summary."; exit 1; }
[ $bad -eq 0 ] && echo "All staged row counts match the source." || { echo "Row counts differ."; exit 1; }
