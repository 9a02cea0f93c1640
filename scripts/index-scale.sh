#!/usr/bin/env bash
# Memory of a backup into a large repository: a synthetic local repository of BLOBS blobs
# (default 10 million; engine example `synth_repo`), then a backup of SIZE MiB of new data
# (default 256), an unchanged re-backup, a restore of it, prune --dry-run and check, each with
# the index in memory and kept on disk (issue 24), with wall time and peak RSS (GNU time).
# SKIP_CHECK=1 leaves check out.
# The loaded index costs 48 bytes a blob (engine `index::BYTES_PER_BLOB`).
# Usage: scripts/index-scale.sh [BLOBS] [DIR] [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
BLOBS=${1:-10000000}
DIR=${2:-/tmp/chunkbak-index-scale}
SIZE=${3:-256}
cargo build --release --quiet --bin chunkbak --example synth_repo --example load_index -p chunkbak-engine -p chunkbak
rm -rf "$DIR" "$DIR.src"
# 64 KiB packs of 64-byte blobs: about 800 blobs a pack, index files of 100,000 blobs.
/usr/bin/time -f "synth: %e s, %M KiB" target/release/examples/synth_repo "$DIR" "$BLOBS" 65536
mkdir -p "$DIR.src"
for i in $(seq 1 $((SIZE / 64))); do head -c $((64 << 20)) /dev/urandom > "$DIR.src/f$i"; done
export CHUNKBAK_REPOSITORY="$DIR" CHUNKBAK_PASSWORD=bench CHUNKBAK_NO_PROGRESS=1 \
  CHUNKBAK_CACHE_DIR="$DIR.cache"
B=target/release/chunkbak
echo "repository: $(du -sh "$DIR" | cut -f1), $(du -sh "$DIR/index" | cut -f1) of index files"
target/release/examples/load_index "$DIR" bench
/usr/bin/time -f "snapshots (no index): %e s, %M KiB max RSS" $B snapshots -q
# Each step with the index in memory (MEMORY_IN, default 8GiB: a budget above the index) and
# kept on disk (the default budget, 150MiB: an index above 50 MiB, about a million blobs).
for mode in memory disk; do
  if [ $mode = memory ]; then export CHUNKBAK_MEMORY=${MEMORY_IN:-8GiB}; else unset CHUNKBAK_MEMORY; fi
  echo "-- index in $mode (CHUNKBAK_MEMORY=${CHUNKBAK_MEMORY:-default})"
  /usr/bin/time -f "backup of ${SIZE} MiB new data: %e s, %M KiB max RSS" $B backup -q "$DIR.src"
  /usr/bin/time -f "unchanged re-backup: %e s, %M KiB max RSS" $B backup -q "$DIR.src"
  rm -rf "$DIR.restore"
  /usr/bin/time -f "restore of ${SIZE} MiB: %e s, %M KiB max RSS" $B restore -q latest --target "$DIR.restore"
  rm -rf "$DIR.restore"
  /usr/bin/time -f "prune --dry-run: %e s, %M KiB max RSS" $B prune -q --dry-run
  [ -n "${SKIP_CHECK:-}" ] || /usr/bin/time -f "check: %e s, %M KiB max RSS" $B check -q
  # The next mode's backup of new data: other files.
  for f in "$DIR.src"/f*; do head -c $((64 << 20)) /dev/urandom > "$f"; done
done
rm -rf "$DIR.src" "$DIR.cache"
