#!/usr/bin/env bash
# What a backup and a prune hold with many deltas indexed (issue 24, docs/benchmarks.md
# "eighth"): for each BLOBS, a fresh synthetic repository of that many delta chunks and one of
# as many whole chunks (engine example `synth_deltas`, packs never stored), then a backup of 64
# MiB new data that builds the kept index files, another that opens them, and prune --dry-run,
# each with wall time and peak RSS (GNU time), at the default budget.
# Usage: scripts/delta-scale.sh [BIN] [BLOBS...]   (BIN: a chunkbak binary, default the release
# build; BLOBS default 2000000 4000000)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin chunkbak --example synth_deltas -p chunkbak-engine -p chunkbak
B=${1:-target/release/chunkbak}
shift || true
[ $# -gt 0 ] || set -- 2000000 4000000
W=$(mktemp -d /tmp/delta-scale-XXXXXX)
trap 'rm -rf "$W"' EXIT
head -c $((64 << 20)) /dev/urandom > "$W/one"
head -c $((64 << 20)) /dev/urandom > "$W/two"
for n in "$@"; do
  for kind in whole deltas; do
    R="$W/repo"
    rm -rf "$R" "$R.cache" "$R.src"
    target/release/examples/synth_deltas "$R" "$n" "$kind" > /dev/null
    export CHUNKBAK_REPOSITORY="$R" CHUNKBAK_PASSWORD=bench CHUNKBAK_NO_PROGRESS=1 \
      CHUNKBAK_CACHE_DIR="$R.cache"
    mkdir -p "$R.src"
    cp "$W/one" "$R.src/f"
    /usr/bin/time -f "$n $kind: backup (builds the kept files): %e s, %M KiB" "$B" backup -q "$R.src"
    cp "$W/two" "$R.src/f"
    /usr/bin/time -f "$n $kind: backup (opens them): %e s, %M KiB" "$B" backup -q "$R.src"
    /usr/bin/time -f "$n $kind: prune --dry-run: %e s, %M KiB" "$B" prune -q --dry-run > /dev/null
  done
done
