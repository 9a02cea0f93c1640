#!/usr/bin/env bash
# Times chunkbak and restic against the same S3 server (the project's test server, ministack on
# 127.0.0.1), same tree, one after the other: initial backup, unchanged re-backup, full restore.
# Prints wall/user/sys seconds and peak RSS, and chunkbak's S3 request counts.
# usage: scripts/compare-s3.sh TREE WORKDIR  (WORKDIR is wiped)
set -euo pipefail
tree=$1 work=$2
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "${CHUNKBAK_BIN:-$here/target/release/chunkbak}")
rm -rf "$work"; mkdir -p "$work"
echo pw > "$work/pw"
ep=$(bash "$here/.ci/s3-test-server")
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
bucket=compare-$(date +%s)
t() { local what=$1; shift; /usr/bin/time -f "$what: wall %e s, user %U s, sys %S s, rss %M KB" "$@"; }
echo "date: $(date -u +%FT%TZ), $(nproc) cores; server: $ep ($(bash "$here/.ci/s3-test-server" status 2>&1 | head -1))"
echo "tree: $tree, $(du -sh "$tree" | cut -f1), $(find "$tree" -type f | wc -l) files"
echo "versions: $($bin --version), $(restic version | cut -d' ' -f1-2)"

export CHUNKBAK_REPOSITORY=s3:$bucket/chunkbak CHUNKBAK_S3_ENDPOINT=$ep
export CHUNKBAK_PASSWORD_FILE=$work/pw CHUNKBAK_NO_PROGRESS=1
req() { grep '"type":"requests"' "$1" | sed 's/^/  requests: /'; }
$bin init -q 2>/dev/null
t "chunkbak initial" $bin --json backup "$tree" > "$work/c1.json"; req "$work/c1.json"
t "chunkbak unchanged" $bin --json backup "$tree" > "$work/c2.json"; req "$work/c2.json"
t "chunkbak restore" $bin --json restore latest --target "$work/out-chunkbak" > "$work/c3.json"; req "$work/c3.json"

export RESTIC_REPOSITORY=s3:$ep/$bucket/restic RESTIC_PASSWORD_FILE=$work/pw
restic init -q
t "restic initial" restic backup -q "$tree" >/dev/null
t "restic unchanged" restic backup -q "$tree" >/dev/null
t "restic restore" restic restore -q latest --target "$work/out-restic" >/dev/null
# Restores go to fresh folders and are removed only at the end: ext4 slows down creating files
# right after many deletions (recently_deleted inode scan), which would bias the second tool.
python3 "$here/scripts/compare-trees.py" "$tree" "$work/out-chunkbak${tree}" >/dev/null && echo "chunkbak restore: identical"
rm -rf "$work/out-chunkbak" "$work/out-restic"
