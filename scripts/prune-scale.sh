#!/usr/bin/env bash
# Prune at scale: a synthetic local repository of BLOBS blobs (default 1 million) in two
# snapshots; one is forgotten and `prune --dry-run` plans, then `prune` runs. Prints wall time
# and peak RSS of each (GNU time). Usage: scripts/prune-scale.sh [BLOBS] [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BLOBS=${1:-1000000}
DIR=${2:-/tmp/chunkbak-prune-scale}
cargo build --release --quiet --bin chunkbak --example synth_repo -p chunkbak-engine -p chunkbak
rm -rf "$DIR"
/usr/bin/time -f "synth: %e s, %M KiB" target/release/examples/synth_repo "$DIR" "$BLOBS"
export CHUNKBAK_REPOSITORY="$DIR" CHUNKBAK_PASSWORD=bench CHUNKBAK_NO_PROGRESS=1
B=target/release/chunkbak
$B forget --host synth1 --keep-last 0 --keep-tag none -q >/dev/null
echo "repository: $(du -sh "$DIR" | cut -f1), $(find "$DIR/data" -type f | wc -l) data packs, $(find "$DIR/tree" -type f | wc -l) tree packs"
/usr/bin/time -f "prune --dry-run (plan): %e s, %M KiB max RSS" $B prune --dry-run --grace 0s >/dev/null
/usr/bin/time -f "prune (marks half the packs): %e s, %M KiB max RSS" $B prune --grace 0s >/dev/null
/usr/bin/time -f "prune (deletes them): %e s, %M KiB max RSS" $B prune --grace 0s
/usr/bin/time -f "check: %e s, %M KiB max RSS" $B check
