#!/usr/bin/env bash
# Memory of a backup into a large repository: a synthetic local repository of BLOBS blobs
# (default 10 million; engine example `synth_repo`), then a backup of SIZE MiB of new data
# (default 256) and an unchanged re-backup, with wall time and peak RSS (GNU time).
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
export CHUNKBAK_REPOSITORY="$DIR" CHUNKBAK_PASSWORD=bench CHUNKBAK_NO_PROGRESS=1
B=target/release/chunkbak
echo "repository: $(du -sh "$DIR" | cut -f1), $(du -sh "$DIR/index" | cut -f1) of index files"
target/release/examples/load_index "$DIR" bench
/usr/bin/time -f "snapshots (no index): %e s, %M KiB max RSS" $B snapshots -q
/usr/bin/time -f "backup of ${SIZE} MiB new data: %e s, %M KiB max RSS" $B backup -q "$DIR.src"
/usr/bin/time -f "unchanged re-backup: %e s, %M KiB max RSS" $B backup -q "$DIR.src"
/usr/bin/time -f "check: %e s, %M KiB max RSS" $B check -q
rm -rf "$DIR.src"
