#!/usr/bin/env bash
# Prints one row per fuzz run log (as fuzz/run.sh writes them with LOG_DIR set): target,
# seconds run, executions, executions per second, corpus entries at the end, peak RSS, and
# whether it ended clean. Usage: fuzz/summarize.sh LOG_DIR
set -euo pipefail
printf '| target | minutes | executions | exec/s | corpus | peak RSS | result |\n|---|---|---|---|---|---|---|\n'
for f in "$1"/*.log; do
  t=$(basename "$f" .log)
  # A run that failed lacks some lines: its row shows '?' there instead of ending the table.
  execs=$(grep 'stat::number_of_executed_units' "$f" | tail -1 | awk '{print $2}' || true)
  rate=$(grep 'stat::average_exec_per_sec' "$f" | tail -1 | awk '{print $2}' || true)
  rss=$(grep 'stat::peak_rss_mb' "$f" | tail -1 | awk '{print $2}' || true)
  corp=$(grep -Eo 'DONE .* corp: [0-9]+' "$f" | tail -1 | grep -Eo '[0-9]+$' || true)
  [ -n "$corp" ] || corp=$(grep -Eo 'corp: [0-9]+' "$f" | tail -1 | grep -Eo '[0-9]+$' || echo '?')
  secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$f" | tail -1 | awk '{print $5}' || true)
  if grep -q 'Done [0-9]* runs' "$f" && ! grep -qE 'ERROR: libFuzzer|panicked|deadly signal' "$f"; then r=clean; else r=FAILED; fi
  printf '| %s | %s | %s | %s | %s | %s MB | %s |\n' "$t" "$(( ${secs:-0} / 60 ))" "${execs:-?}" "${rate:-?}" "$corp" "${rss:-?}" "$r"
done
