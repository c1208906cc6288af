# Sourced by the benchmarks (needs BIN and OUT): the simulated companies they measure, one per
# size, generated once per simulator build (companies of older builds are removed).
#   company SPLITS      prints the connection string of the company with SPLITS AUDIT_SPLIT rows
#   company_dir SPLITS  prints its folder
SIM_ID=$(sha1sum "$BIN/sage50-sim" | cut -c1-8)
for d in "$OUT"/company-*; do
  [[ -e "$d" && "$d" != *-"$SIM_ID" ]] && rm -rf "$d"
done
company_dir() { echo "$OUT/company-$1-$SIM_ID"; }
company() {
  local splits=$1 dir
  dir=$(company_dir "$1")
  if [ ! -f "$dir/odbc.txt" ]; then
    echo "Generating the $splits-split company (once per simulator build)" >&2
    rm -rf "$dir"
    "$BIN/sage50-sim" --out "$dir" --seed 1 --transactions $((splits / 2 + splits / 20)) --max-splits "$splits" > "$dir.odbc.tmp"
    mv "$dir.odbc.tmp" "$dir/odbc.txt"
  fi
  cat "$dir/odbc.txt"
}
