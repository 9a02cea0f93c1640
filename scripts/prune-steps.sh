#!/usr/bin/env bash
# Prune's steps on a copy of a synthetic repository (engine example `synth_repo`), with wall
# time and peak RSS (GNU time), to compare two binaries on the same state: a host's backup of
# 256 MiB of new data (builds the kept index), prune --dry-run, that host's snapshot forgotten
# and pruned (as a nightly prune), the second synthetic snapshot forgotten and pruned (half the
# packs unused, marked), prune --now (deletes them), check. The repository is changed: run each
# binary on its own copy (`cp -a`), with a cache of its own (REPO.cache, removed first).
# Usage: scripts/prune-steps.sh BINARY REPO
set -euo pipefail
B=$1
R=$2
export CHUNKBAK_REPOSITORY=$R CHUNKBAK_PASSWORD=${CHUNKBAK_PASSWORD:-bench} \
  CHUNKBAK_NO_PROGRESS=1 CHUNKBAK_CACHE_DIR=$R.cache
rm -rf "$R.cache" "$R.src"
mkdir -p "$R.src"
for i in 1 2 3 4; do head -c $((64 << 20)) /dev/urandom > "$R.src/f$i"; done
t() {
  local what=$1
  shift
  /usr/bin/time -f "$what: %e s, %M KiB" "$@" 2>&1 | tail -1
}
ids_of() {
  "$B" --json snapshots | python3 -c 'import json,sys
for l in sys.stdin:
    d=json.loads(l)
    if d.get("type")=="snapshot" and d["data"]["host"]==sys.argv[1]: print(d["data"]["id"])' "$1"
}
# Forgets a host's snapshots (none: nothing to forget).
forget_host() {
  local ids
  ids=$(ids_of "$1")
  if [ -n "$ids" ]; then "$B" forget -q $ids; fi
}
t "backup of 256 MiB new data (builds the kept index)" "$B" backup -q --host h1 "$R.src"
t "prune --dry-run" "$B" prune -q --dry-run
forget_host h1
t "prune (the host's snapshot forgotten)" "$B" prune -q
forget_host synth1
t "prune (half the packs unused)" "$B" prune -q
t "prune --now (deletes them)" "$B" prune -q --now
t "check" "$B" check -q
rm -rf "$R.src" "$R.cache"
