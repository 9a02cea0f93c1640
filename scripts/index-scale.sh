#!/usr/bin/env bash
# Memory of a backup into a large repository: a synthetic local repository of BLOBS blobs
# (default 10 million; engine example `synth_repo`), then a backup of SIZE MiB of new data
# (default 256), another of as much new data (the kept index there), an unchanged re-backup,
# a restore of it, prune --dry-run and check, each with
# the index in memory and kept on disk (issue 24), with wall time and peak RSS (GNU time).
# SKIP_CHECK=1 leaves check out. MODES="disk" runs only the index on disk (100 million blobs do
# not fit in memory); REUSE=1 uses the repository already in DIR (synth_repo takes 7 minutes at
# 100 million blobs).
# The loaded index costs 48 bytes a blob (engine `index::BYTES_PER_BLOB`).
# Usage: scripts/index-scale.sh [BLOBS] [DIR] [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
BLOBS=${1:-10000000}
DIR=${2:-/tmp/chunkbak-index-scale}
SIZE=${3:-256}
cargo build --release --quiet --bin chunkbak --example synth_repo --example load_index -p chunkbak-engine -p chunkbak
rm -rf "$DIR.src" "$DIR.cache"
if [ -z "${REUSE:-}" ] || [ ! -d "$DIR" ]; then
  rm -rf "$DIR"
  # 64 KiB packs of 64-byte blobs, index files of 100,000 blobs: about 800 blobs a pack, or
  # PER_PACK (32: as 32 MiB packs of 1 MiB chunks, a real repository's number of packs).
  /usr/bin/time -f "synth: %e s, %M KiB" target/release/examples/synth_repo "$DIR" "$BLOBS" \
    65536 "${PER_PACK:-0}"
fi
MODES=${MODES:-memory disk}
mkdir -p "$DIR.src"
for i in $(seq 1 $((SIZE / 64))); do head -c $((64 << 20)) /dev/urandom > "$DIR.src/f$i"; done
export CHUNKBAK_REPOSITORY="$DIR" CHUNKBAK_PASSWORD=bench CHUNKBAK_NO_PROGRESS=1 \
  CHUNKBAK_CACHE_DIR="$DIR.cache"
B=target/release/chunkbak
echo "repository: $(du -sh "$DIR" | cut -f1), $(du -sh "$DIR/index" | cut -f1) of index files"
case "$MODES" in *memory*) target/release/examples/load_index "$DIR" bench ;; esac
/usr/bin/time -f "snapshots (no index): %e s, %M KiB max RSS" $B snapshots -q
# Each step with the index in memory (MEMORY_IN, default 8GiB: a budget above the index) and
# kept on disk (the default budget, 150MiB: an index above 50 MiB, about a million blobs).
for mode in $MODES; do
  if [ $mode = memory ]; then export CHUNKBAK_MEMORY=${MEMORY_IN:-8GiB}; else unset CHUNKBAK_MEMORY; fi
  echo "-- index in $mode (CHUNKBAK_MEMORY=${CHUNKBAK_MEMORY:-default})"
  /usr/bin/time -f "backup of ${SIZE} MiB new data, the first with this cache (on disk: builds its kept index): %e s, %M KiB max RSS" $B backup -q "$DIR.src"
  # The nightly case: new data, the kept index there (it reads only the files written since).
  for f in "$DIR.src"/f*; do head -c $((64 << 20)) /dev/urandom > "$f"; done
  /usr/bin/time -f "backup of ${SIZE} MiB new data, the kept index there: %e s, %M KiB max RSS" $B backup -q "$DIR.src"
  /usr/bin/time -f "unchanged re-backup: %e s, %M KiB max RSS" $B backup -q "$DIR.src"
  rm -rf "$DIR.restore"
  /usr/bin/time -f "restore of ${SIZE} MiB: %e s, %M KiB max RSS" $B restore -q latest --target "$DIR.restore"
  rm -rf "$DIR.restore"
  /usr/bin/time -f "prune --dry-run: %e s, %M KiB max RSS" $B prune -q --dry-run
  [ -n "${SKIP_CHECK:-}" ] || /usr/bin/time -f "check: %e s, %M KiB max RSS" $B check -q
  # The next mode's backup of new data: other files.
  for f in "$DIR.src"/f*; do head -c $((64 << 20)) /dev/urandom > "$f"; done
done
# PRUNE=1: prunes at the end (they change the repository), with another host beside this
# one: its own cache, whose kept index it builds before the prunes. First a small prune, as
# a nightly one: this host's snapshots are forgotten (the new data above goes); the other
# host's next backup then uses its kept index with the rewritten files buried. Then a large
# one: the second synthetic snapshot forgotten, half of the packs unused, most index files
# rewritten; the other host then builds its kept index again.
if [ -n "${PRUNE:-}" ]; then
  unset CHUNKBAK_MEMORY
  other() { CHUNKBAK_CACHE_DIR="$DIR.cache2" $B backup -q --host other "$DIR.src"; }
  rm -rf "$DIR.cache2"
  /usr/bin/time -f "another host's first backup (builds its kept index): %e s, %M KiB max RSS" \
    bash -c "$(declare -f other); DIR='$DIR' B='$B' other"
  ids_of() { $B --json snapshots | python3 -c 'import json,sys
for l in sys.stdin:
    d=json.loads(l)
    if d.get("type")=="snapshot" and d["data"]["host"]==sys.argv[1]: print(d["data"]["id"])' "$1"; }
  $B forget -q $(ids_of "$(hostname)")
  /usr/bin/time -f "prune (this host's snapshots forgotten): %e s, %M KiB max RSS" $B --json prune \
    | python3 -c 'import json,sys
for l in sys.stdin:
    d=json.loads(l)
    if d.get("type")=="prune": x=d["data"]; print("  index files: %d replaced by %d, %d left" % (x["index_files_deleted"], x["index_files_written"], x["index_files_kept"]))'
  /usr/bin/time -f "another host's backup after it: %e s, %M KiB max RSS" \
    bash -c "$(declare -f other); DIR='$DIR' B='$B' other"
  $B forget -q $(ids_of synth1)
  /usr/bin/time -f "prune (half the packs unused): %e s, %M KiB max RSS" $B prune -q
  /usr/bin/time -f "another host's backup after it (builds again): %e s, %M KiB max RSS" \
    bash -c "$(declare -f other); DIR='$DIR' B='$B' other"
  rm -rf "$DIR.cache2"
fi
rm -rf "$DIR.src" "$DIR.cache"
