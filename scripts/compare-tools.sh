#!/usr/bin/env bash
# Times chunkbak, restic and borg on the same tree, same machine, one after the other:
# initial backup, unchanged re-backup, full restore; prints wall/user/sys seconds, peak RSS and
# repository size. usage: scripts/compare-tools.sh TREE WORKDIR  (WORKDIR is wiped)
set -euo pipefail
tree=$1 work=$2
bin=$(realpath "${CHUNKBAK_BIN:-target/release/chunkbak}")
rm -rf "$work"; mkdir -p "$work"
echo pw > "$work/pw"
t() { local what=$1; shift; /usr/bin/time -f "$what: wall %e s, user %U s, sys %S s, rss %M KB" "$@" >/dev/null; }
sz() { echo "$1 repository: $(du -sb "$2" | cut -f1) bytes"; }
echo "date: $(date -u +%FT%TZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "versions: $($bin --version), $(restic version | cut -d' ' -f1-2), $(borg --version)"

export CHUNKBAK_REPOSITORY=$work/chunkbak CHUNKBAK_PASSWORD_FILE=$work/pw CHUNKBAK_NO_PROGRESS=1
$bin init -q
t "chunkbak initial" $bin backup -q "$tree"
t "chunkbak unchanged" $bin backup -q "$tree"
sz chunkbak "$work/chunkbak"
t "chunkbak restore" $bin restore -q latest --target "$work/out"; rm -rf "$work/out"

export RESTIC_REPOSITORY=$work/restic RESTIC_PASSWORD_FILE=$work/pw
restic init -q
t "restic initial" restic backup -q "$tree"
t "restic unchanged" restic backup -q "$tree"
sz restic "$work/restic"
t "restic restore" restic restore -q latest --target "$work/out"; rm -rf "$work/out"

if [ -z "${SKIP_BORG:-}" ]; then
  export BORG_REPO=$work/borg BORG_PASSPHRASE=pw
  borg init -e repokey >/dev/null 2>&1
  t "borg initial (zstd,3)" borg create -C zstd,3 ::one "$tree"
  t "borg unchanged" borg create -C zstd,3 ::two "$tree"
  sz borg "$work/borg"
  mkdir -p "$work/out"; (cd "$work/out" && t "borg restore" borg extract ::one); rm -rf "$work/out"
fi
