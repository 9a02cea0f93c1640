#!/usr/bin/env bash
# Times chunkbak, restic, rustic (when installed) and borg on the same data, same machine, one
# tool after the other: initial backup of a tree, unchanged re-backup, backup after 1% of the
# files changed, full restore; then two database dumps a day apart, through a file and through
# standard input (bytes added and time). Prints wall/user/sys seconds, peak RSS and repository
# size, then a table of chunkbak's ratios to each tool.
# usage: scripts/compare-tools.sh TREE DUMP1 DUMP2 WORKDIR   (WORKDIR is wiped)
# SKIP_BORG=1 and SKIP_RUSTIC=1 leave those out; RUSTIC=path picks the rustic binary.
# RESTORE_TARGET=dir restores there instead of WORKDIR/out (a tmpfs such as /dev/shm/out takes
# the file system's inode allocation out of the comparison; it is wiped after each restore).
# Each tool restores RESTORE_RUNS times (default 3) and the median counts. Before each restore
# as much memory as the tree holds is written and freed in the target's file system: on a VM
# the first write to memory the host has taken back costs several times a write to memory it
# still backs (a restore into tmpfs ran in 13.5 s cold and 5.8 s warm), so every tool starts
# from the same state instead of from whatever the one before it left.
set -euo pipefail
tree=$1 d1=$2 d2=$3 work=$4
out=${RESTORE_TARGET:-$work/out}
bin=$(realpath "${CHUNKBAK_BIN:-target/release/chunkbak}")
rustic=${RUSTIC:-$(command -v rustic || true)}
[ -n "${SKIP_RUSTIC:-}" ] && rustic=""
rm -rf "$work"; mkdir -p "$work"
echo pw > "$work/pw"
log=$work/times.log
: > "$log"
t() { local what=$1; shift; /usr/bin/time -a -o "$log" -f "${what//%/%%}|%e|%U|%S|%M" "$@" >/dev/null 2>"$work/last.err" || { cat "$work/last.err"; exit 1; }; tail -1 "$log" | awk -F'|' '{printf "%-34s wall %7.2f s  user %7.2f s  sys %6.2f s  rss %8d KB\n", $1, $2, $3, $4, $5}'; }
sz() { local b; b=$(du -sb "$2" | cut -f1); echo "$1 size|$b" >> "$log"; echo "$1 repository: $b bytes"; }

# 1% of the files, every 100th, changed by appending bytes; the originals are kept to undo it.
mapfile -t churn < <(find "$tree" -type f -size +0 | sort | awk 'NR % 100 == 0')
mkdir -p "$work/orig"
for f in "${churn[@]}"; do cp --parents "$f" "$work/orig/"; done
do_churn() { for f in "${churn[@]}"; do printf 'changed %s\n' "$RANDOM" >> "$f"; done; }
undo_churn() { for f in "${churn[@]}"; do cp "$work/orig$f" "$f"; done; }

echo "date: $(date -u +%FT%TZ), $(nproc) cores,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "versions: $($bin --version), $(restic version | cut -d' ' -f1-2)${rustic:+, $($rustic --version)}$([ -z "${SKIP_BORG:-}" ] && echo ", $(borg --version)")"
echo "tree: $(du -sb "$tree" | cut -f1) bytes, $(find "$tree" | wc -l) entries; churn: ${#churn[@]} files"

# Each tool: NAME_init, NAME_backup PATH, NAME_restore TARGET (exported, run under GNU time).
chunkbak_init() { $bin init -q; }
chunkbak_backup() { $bin backup -q "$1"; }
chunkbak_restore() { $bin restore -q latest --target "$1"; }
restic_init() { restic init -q; }
restic_backup() { restic backup -q "$1"; }
restic_restore() { restic restore -q latest --target "$1"; }
rustic_init() { $rustic init; }
rustic_backup() { $rustic backup --no-progress "$1"; }
rustic_restore() { $rustic restore --no-progress latest "$1"; }
borg_init() { borg init -e repokey; }
borg_backup() { borg create -C zstd,3 "::s$(date +%s%N)" "$1"; }
borg_restore() { mkdir -p "$1" && cd "$1" && borg extract "::$(borg list --short --last 1)"; }
export bin rustic
export -f chunkbak_init chunkbak_backup chunkbak_restore restic_init restic_backup restic_restore \
  rustic_init rustic_backup rustic_restore borg_init borg_backup borg_restore

run_tool() {
  local name=$1
  "${name}_init" >/dev/null 2>&1
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  t "$name initial" bash -c "${name}_backup \"\$1\"" _ "$tree"
  t "$name unchanged" bash -c "${name}_backup \"\$1\"" _ "$tree"
  do_churn
  t "$name 1% changed" bash -c "${name}_backup \"\$1\"" _ "$tree"
  undo_churn
  sz "$name" "$work/$name"
  for r in $(seq "${RESTORE_RUNS:-3}"); do
    rm -rf "$out"
    warm_target
    t "$name restore $r" bash -c "${name}_restore \"\$1\"" _ "$out"
  done
  rm -rf "$out"
  median_of "$name restore"
}

# Writes and frees as many bytes as the tree holds in the restore target's file system.
tree_mb=$(( $(du -sb "$tree" | cut -f1) / 1048576 + 1 ))
warm_target() {
  mkdir -p "$(dirname "$out")"
  dd if=/dev/zero of="$out.warm" bs=1M count="$tree_mb" status=none
  rm -f "$out.warm"
  sync
}

# Adds a line "WHAT|..." with the run of median wall time among "WHAT N" lines.
median_of() {
  grep "^$1 [0-9]*|" "$log" | sort -t'|' -k2 -g | awk -v n="$1" -F'|' \
    '{ l[NR] = $0 } END { m = l[int((NR + 1) / 2)]; sub(/^[^|]*/, n, m); print m }' >> "$log"
  tail -1 "$log" | awk -F'|' '{printf "%-34s wall %7.2f s  user %7.2f s  sys %6.2f s  rss %8d KB  (median)\n", $1, $2, $3, $4, $5}'
}

export CHUNKBAK_REPOSITORY=$work/chunkbak CHUNKBAK_PASSWORD_FILE=$work/pw CHUNKBAK_NO_PROGRESS=1
run_tool chunkbak
export RESTIC_REPOSITORY=$work/restic RESTIC_PASSWORD_FILE=$work/pw
run_tool restic
if [ -n "$rustic" ]; then
  export RUSTIC_REPOSITORY=$work/rustic RUSTIC_PASSWORD_FILE=$work/pw
  run_tool rustic
fi
if [ -z "${SKIP_BORG:-}" ]; then
  export BORG_REPO=$work/borg BORG_PASSPHRASE=pw
  run_tool borg
fi

# Dumps: day 1 then day 2, through a file and through standard input. Bytes added per day are
# the growth of the repository directory (restic 0.14 reports only uncompressed bytes).
dump_backup() { # tool way file
  case "$1/$2" in
    chunkbak/file) $bin backup -q "$3" ;;
    chunkbak/stdin) $bin backup -q --stdin --stdin-filename db.sql < "$3" ;;
    restic/file) restic backup -q "$3" ;;
    restic/stdin) restic backup -q --stdin --stdin-filename db.sql < "$3" ;;
  esac
}
for tool in chunkbak restic; do
  for way in file stdin; do
    repo=$work/dump-$tool-$way
    export CHUNKBAK_REPOSITORY=$repo RESTIC_REPOSITORY=$repo
    if [ $tool = chunkbak ]; then $bin init -q 2>/dev/null; else restic init -q; fi
    line="$tool dump ($way)"
    for day in 1 2; do
      if [ $day = 1 ]; then cp "$d1" "$work/db.sql"; else cp "$d2" "$work/db.sql"; fi
      before=$(du -sb "$repo" | cut -f1)
      s=$(date +%s.%N); dump_backup $tool $way "$work/db.sql" >/dev/null; e=$(echo "$(date +%s.%N) - $s" | bc)
      added=$(( $(du -sb "$repo" | cut -f1) - before ))
      echo "$tool dump $way day $day|$e|$added" >> "$log"
      line=$(printf '%s; day %d: %6.2f s, %11d bytes added' "$line" "$day" "$e" "$added")
    done
    echo "$line"
  done
done
rm -f "$work/db.sql"

echo
echo "ratios, chunkbak / other (wall time, CPU = user + sys, peak RSS, size; below 1 is better):"
python3 - "$log" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    parts = line.rstrip("\n").split("|")
    rows[parts[0]] = parts[1:]
tools = [t for t in ("restic", "rustic", "borg") if f"{t} initial" in rows]
steps = ["initial", "unchanged", "1% changed", "restore"]
print(f"{'':24}" + "".join(f"{t:>12}" for t in tools))
def ratio(a, b):
    return f"{a / b:12.2f}" if b else f"{'-':>12}"
for s in steps:
    c = rows.get(f"chunkbak {s}")
    if not c:
        continue
    for label, f in (("wall", lambda r: float(r[0])), ("cpu", lambda r: float(r[1]) + float(r[2])), ("rss", lambda r: float(r[3]))):
        print(f"{s + ' ' + label:24}" + "".join(ratio(f(c), f(rows[f'{t} {s}'])) for t in tools))
print(f"{'repository size':24}" + "".join(ratio(float(rows['chunkbak size'][0]), float(rows[f'{t} size'][0])) for t in tools))
for way in ("file", "stdin"):
    for d in ("day 1", "day 2"):
        c, r = rows.get(f"chunkbak dump {way} {d}"), rows.get(f"restic dump {way} {d}")
        if c and r:
            print(f"{'dump ' + way + ' ' + d + ' added':24}" + ratio(float(c[1]), float(r[1])) + f"   time {float(c[0]) / float(r[0]):.2f}")
PY
