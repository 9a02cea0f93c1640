#!/usr/bin/env bash
# Issue 9: what a daily database dump costs each tool. For day 1..DAYS it dumps the dataset of
# scripts/dump-dataset.sh (day 1 = the dataset as it is now, each later day after the dataset's
# next day of changes), backs the dump up from the same path (WORKDIR/dump/db.sql) into one
# repository per tool, and records the bytes each repository grew by (du -sb, apparent bytes)
# and the backup's wall time, next to the dump's size, its `zstd -3` size and the size of
# `zstd -3 --patch-from=<yesterday's dump>`, the practical floor for a day's new bytes.
#
# usage: scripts/compare-dumps.sh DATADIR WORKDIR DAYS
#   DATADIR  a dataset made with `scripts/dump-dataset.sh init DATADIR SCALE`; when it does not
#            exist it is made here with SCALE (environment, default 900: a dump of about 0.9 GB).
#            The run applies DAYS - 1 days of changes to it (make a new one to start over).
#   WORKDIR  the repositories, the dumps and results.tsv (its repositories are wiped first).
# Tools: CHUNKBAK (default /work/main/target/release/chunkbak; required), RESTIC=restic,
# RUSTIC=/tmp/rustic/bin/rustic, BORG=borg; a tool that is not there gets "-" in its columns.
# Each backup's peak RSS (GNU time) is recorded too. Prints tables and writes the same figures to WORKDIR/results.tsv (tab-separated, "-" = none).
# KEEP_DUMPS=1 keeps each day's dump as WORKDIR/dayN.sql. DUMPS=DIR takes day N's dump from
# DIR/dayN.sql instead (made before, e.g. by a KEEP_DUMPS run; DATADIR is then not used), so
# runs of different builds back up the very same bytes.
set -euo pipefail
[ $# -eq 3 ] || { sed -n '9,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
data=$1 work=$2 days=$3
[[ $days =~ ^[1-9][0-9]*$ ]] || { echo "DAYS must be a positive integer" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
dataset=$here/dump-dataset.sh
chunkbak=${CHUNKBAK:-/work/main/target/release/chunkbak}
restic=${RESTIC:-restic} rustic=${RUSTIC:-/tmp/rustic/bin/rustic} borg=${BORG:-borg}
[ -x "$chunkbak" ] || { echo "chunkbak is not built at $chunkbak (build it with cargo build --release, or set CHUNKBAK)" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

mkdir -p "$work"
work=$(realpath "$work")
rm -rf "$work/chunkbak" "$work/restic" "$work/rustic" "$work/borg" "$work/cache" "$work/dump" "$work/prev.sql" "$work/bin"
mkdir -p "$work/dump" "$work/cache" "$work/bin"
# A copy, so that a rebuild during the run cannot mix two builds in one repository.
cp "$chunkbak" "$work/bin/chunkbak"
chunkbak_built=$(date -u -r "$chunkbak" +%FT%TZ)
chunkbak=$work/bin/chunkbak
echo pw > "$work/pw"
dump=$work/dump/db.sql
err=$work/last.err

# Each tool's repository, password and cache in WORKDIR (as scripts/compare-tools.sh names them).
export CHUNKBAK_REPOSITORY=$work/chunkbak CHUNKBAK_PASSWORD_FILE=$work/pw CHUNKBAK_NO_PROGRESS=1 \
  CHUNKBAK_CACHE_DIR=$work/cache/chunkbak
export RESTIC_REPOSITORY=$work/restic RESTIC_PASSWORD_FILE=$work/pw RESTIC_CACHE_DIR=$work/cache/restic
export RUSTIC_REPOSITORY=$work/rustic RUSTIC_PASSWORD_FILE=$work/pw RUSTIC_CACHE_DIR=$work/cache/rustic
export BORG_REPO=$work/borg BORG_PASSPHRASE=pw BORG_BASE_DIR=$work/cache/borg

# NAME_init and NAME_backup PATH DAY for each tool; a tool whose init fails is left out.
chunkbak_init() { "$chunkbak" init -q; }
# Each backup runs under GNU time: its peak resident memory (KiB) goes to WORKDIR/rss.
timed() { /usr/bin/time -f %M -o "$work/rss" "$@"; }
chunkbak_backup() { timed "$chunkbak" --json backup "$1" > "$work/chunkbak.json"; }
restic_init() { "$restic" init -q --repository-version 2; }
restic_backup() { timed "$restic" backup -q "$1"; }
rustic_init() { "$rustic" init; }
rustic_backup() { timed "$rustic" backup --no-progress "$1"; }
borg_init() { "$borg" init --encryption=repokey; }
borg_backup() { timed "$borg" create --compression zstd,3 "::day$2" "$1"; }

tools=()
for t in chunkbak restic rustic borg; do
  bin_var=$t
  if have "${!bin_var}" && "${t}_init" >"$err" 2>&1; then
    tools+=("$t")
  else
    echo "$t: not run ($(have "${!bin_var}" && { echo "init failed:"; tail -3 "$err"; } || echo "no ${!bin_var}"))" >&2
  fi
done
ran() { local t; for t in "${tools[@]}"; do [ "$t" = "$1" ] && return 0; done; return 1; }

# The dataset: made here if missing; day 1 of the run is its current day.
if [ -n "${DUMPS:-}" ]; then
  day0=1
elif [ ! -e "$data/day" ]; then
  echo "making the dataset in $data (scale ${SCALE:-900})" >&2
  nice -n 19 "$dataset" init "$data" "${SCALE:-900}"
fi
if [ -z "${DUMPS:-}" ]; then
  day0=$(cat "$data/day")
  trap 'nice -n 19 "$dataset" stop "$data"' EXIT
  echo "date: $(date -u +%FT%TZ), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; dataset $data (scale $(cat "$data/scale")) from its day $day0"
else
  echo "date: $(date -u +%FT%TZ), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; dumps from $DUMPS"
fi
echo "versions: $("$chunkbak" --version) (built $chunkbak_built)$(ran restic && echo ", $("$restic" version | cut -d' ' -f1-2)")$(ran rustic && echo ", $("$rustic" --version)")$(ran borg && echo ", $("$borg" --version)"), $(zstd --version | grep -o 'v[0-9.]*' | sed 's/^/zstd /'), $(/usr/lib/postgresql/15/bin/pg_dump --version)"

tsv=$work/results.tsv
printf 'day\tdataset_day\tdump_bytes\tzstd3_bytes\tpatch_from_bytes' > "$tsv"
for t in chunkbak restic rustic borg; do printf '\t%s_added\t%s_seconds' "$t" "$t" >> "$tsv"; done
printf '\tchunkbak_reported_added\tchunkbak_over_restic' >> "$tsv"
for t in chunkbak restic rustic borg; do printf '\t%s_peak_rss_kb' "$t" >> "$tsv"; done
printf '\n' >> "$tsv"

for day in $(seq 1 "$days"); do
  dday=$(( day0 + day - 1 ))
  if [ "$day" -gt 1 ]; then
    [ -n "${DUMPS:-}" ] || nice -n 19 "$dataset" day "$data" "$dday"
    mv "$dump" "$work/prev.sql"
  fi
  if [ -n "${DUMPS:-}" ]; then
    cp "$DUMPS/day$day.sql" "$dump"
  else
    nice -n 19 "$dataset" dump "$data" "$dump"
  fi
  [ -n "${KEEP_DUMPS:-}" ] && cp "$dump" "$work/day$day.sql"
  size=$(stat -c %s "$dump")
  z3=$(zstd -3 -q -c "$dump" | wc -c)
  patch=-
  if [ "$day" -gt 1 ]; then
    # --patch-from needs a window that covers the reference (--long=31: up to 2 GiB), and the
    # reference is refused above --memory (128 MiB by default, here the reference's size).
    mem=$(( $(stat -c %s "$work/prev.sql") / 1048576 + 64 ))
    patch=$(zstd -3 -q --long=31 --memory="${mem}MB" --patch-from="$work/prev.sql" -c "$dump" | wc -c)
  fi
  row=$(printf '%s\t%s\t%s\t%s\t%s' "$day" "$dday" "$size" "$z3" "$patch")
  reported=-
  declare -A added=() rss=()
  for t in chunkbak restic rustic borg; do
    if ! ran "$t"; then row+=$'\t-\t-'; continue; fi
    before=$(du -sb "$work/$t" | cut -f1)
    s=$(date +%s.%N)
    if ! "${t}_backup" "$dump" "$day" >"$err" 2>&1; then
      echo "$t backup of day $day failed:" >&2; tail -5 "$err" >&2; row+=$'\t-\t-'; continue
    fi
    rss[$t]=$(tail -1 "$work/rss")
    secs=$(echo "$(date +%s.%N) - $s" | bc)
    added[$t]=$(( $(du -sb "$work/$t" | cut -f1) - before ))
    row+=$(printf '\t%s\t%.2f' "${added[$t]}" "$secs")
    if [ "$t" = chunkbak ]; then
      reported=$(python3 -c 'import json, sys
for l in open(sys.argv[1]):
    m = json.loads(l)
    if m.get("type") == "summary": print(m["data"].get("bytes_added", "-"))' "$work/chunkbak.json" | tail -1)
      [ -n "$reported" ] || reported=-
    fi
  done
  ratio=-
  if [ "$day" -gt 1 ] && [ -n "${added[chunkbak]:-}" ] && [ -n "${added[restic]:-}" ] && [ "${added[restic]}" -gt 0 ]; then
    ratio=$(echo "scale=3; ${added[chunkbak]} / ${added[restic]}" | bc | sed 's/^\./0./')
  fi
  peaks=""
  for t in chunkbak restic rustic borg; do peaks+=$'\t'"${rss[$t]:--}"; done
  unset added rss
  printf '%s\t%s\t%s%s\n' "$row" "$reported" "$ratio" "$peaks" >> "$tsv"
  tail -1 "$tsv" | awk -F'\t' '{ printf "day %s done: dump %s bytes, patch-from %s, chunkbak added %s (peak RSS %s KiB), restic added %s\n", $1, $3, $5, $6, $16, $8 }' >&2
done
rm -f "$work/prev.sql"

echo
echo "bytes added to each repository (du -sb growth) and backup wall seconds; patch-from = zstd -3 --patch-from=<previous dump>"
awk -F'\t' '
  NR == 1 { next }
  { r[NR] = $0 }
  END {
    printf "%4s %13s %12s %11s", "day", "dump", "zstd -3", "patch-from"
    split("chunkbak restic rustic borg", t, " ")
    for (i = 1; i <= 4; i++) printf " %13s %7s", t[i], "s"
    printf " %9s\n", "cb/restic"
    for (n = 2; n <= NR; n++) {
      split(r[n], f, "\t")
      printf "%4s %13s %12s %11s", f[1], f[3], f[4], f[5]
      for (i = 0; i < 4; i++) printf " %13s %7s", f[6 + 2 * i], f[7 + 2 * i]
      printf " %9s\n", f[15]
    }
    printf "\npeak resident memory of each backup (MiB)\n%4s", "day"
    for (i = 1; i <= 4; i++) printf " %9s", t[i]
    printf "\n"
    for (n = 2; n <= NR; n++) {
      split(r[n], f, "\t")
      printf "%4s", f[1]
      for (i = 0; i < 4; i++) printf " %9s", (f[16 + i] == "-" ? "-" : sprintf("%.1f", f[16 + i] / 1024))
      printf "\n"
    }
  }' "$tsv"
echo "(results: $tsv; chunkbak_reported_added there is the backup summary's bytes_added)"
