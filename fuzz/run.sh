#!/usr/bin/env bash
# Fuzz every target (default 60 s each), or the ones named: fuzz/run.sh [SECONDS] [TARGET...]
# Needs cargo-fuzz (cargo install cargo-fuzz); runs on stable through RUSTC_BOOTSTRAP=1.
# Each target starts from its committed seeds (fuzz/seeds/TARGET, made from real objects by
# `cargo run -p chunkbak-engine --example fuzz_seeds -- fuzz/seeds`) and grows its own corpus
# in fuzz/corpus/TARGET. A crash lands in fuzz/artifacts/TARGET: copy it to
# fuzz/regressions/TARGET/<what-it-guards> and `cargo test -p chunkbak-engine --test
# fuzz_corpus` replays it from then on.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(pack_header envelope objects blob chunker roundtrip model)
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
    -malloc_limit_mb=512 -print_final_stats=1
done
