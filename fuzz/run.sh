#!/usr/bin/env bash
# Short fuzz run of every target (default 60 s each): fuzz/run.sh [SECONDS]
# Needs cargo-fuzz (cargo install cargo-fuzz); runs on stable through RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
export RUSTC_BOOTSTRAP=1
for t in pack_header objects chunker; do
  mkdir -p "corpus/$t"
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048
done
