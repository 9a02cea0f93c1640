#!/usr/bin/env bash
# Fuzz every target (default 60 s each), or the ones named: fuzz/run.sh [SECONDS] [TARGET...]
# Needs cargo-fuzz (cargo install cargo-fuzz); runs on stable through RUSTC_BOOTSTRAP=1.
# Each target starts from its committed seeds (fuzz/seeds/TARGET, made from real objects by
# `cargo run -p chunkbak-engine --example fuzz_seeds -- fuzz/seeds`) and grows its own corpus
# in fuzz/corpus/TARGET. A crash lands in fuzz/artifacts/TARGET: copy it to
# fuzz/regressions/TARGET/<what-it-guards> and `cargo test -p chunkbak-engine --test
# fuzz_corpus` replays it from then on.
# LOG_DIR=dir keeps each target's libFuzzer output in dir/TARGET.log (fuzz/summarize.sh dir
# makes the table of executions); JOBS=2 runs two targets at a time.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(pack_header envelope objects blob delta chunker roundtrip model)
export RUSTC_BOOTSTRAP=1
cargo fuzz build
one() {
  local t=$1
  mkdir -p "corpus/$t"
  local cmd=(cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs"
    -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1)
  if [ -n "${LOG_DIR:-}" ]; then
    mkdir -p "$LOG_DIR"
    "${cmd[@]}" > "$LOG_DIR/$t.log" 2>&1
  else
    "${cmd[@]}"
  fi
}
jobs=${JOBS:-1}
failed=0
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || failed=1; done
  one "$t" &
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done
exit $failed
