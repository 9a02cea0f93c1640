#!/usr/bin/env bash
# Times unchanged re-backups of one tree by several chunkbak binaries, interleaved so that the
# machine's drift hits each alike (an A/B check that a change costs nothing on the no-change
# path). Each binary gets its own local repository, backed up once first.
#   scripts/ab-rebackup.sh TREE RUNS BIN...      e.g. ab-rebackup.sh /srv/data 15 ./old ./new
# Prints one line a run ("BIN SECONDS"), then median, minimum and mean per binary.
set -euo pipefail
tree=$1; n=$2; shift 2
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
env_of() { echo "HOME=$work/$1 XDG_CACHE_HOME=$work/$1/c CHUNKBAK_REPOSITORY=$work/$1/repo CHUNKBAK_PASSWORD_FILE=$work/$1/pw CHUNKBAK_NO_PROGRESS=1"; }
i=0
for bin in "$@"; do
  mkdir -p "$work/$i"; echo "ab password" > "$work/$i/pw"
  env $(env_of $i) "$bin" init -q >/dev/null 2>&1
  env $(env_of $i) "$bin" -q backup "$tree" >/dev/null
  i=$((i + 1))
done
out=$work/times
for _ in $(seq "$n"); do
  i=0
  for bin in "$@"; do
    t0=$(date +%s.%N)
    env $(env_of $i) "$bin" -q backup "$tree" >/dev/null
    t1=$(date +%s.%N)
    echo "$bin $(echo "$t1 - $t0" | bc)" | tee -a "$out"
    i=$((i + 1))
  done
done
for bin in "$@"; do
  grep -F "$bin " "$out" | awk '{print $2}' | sort -n |
    awk -v b="$bin" '{a[NR] = $1; s += $1} END {printf "%s: median %.3f s, min %.3f s, mean %.3f s\n", b, a[int((NR + 1) / 2)], a[1], s / NR}'
done
