#!/usr/bin/env bash
# Measures how chunk-size parameters affect storage: the initial backup of a tree, and two
# database dumps a day apart (scripts/gen-dump.py). Prints bytes added per run for each
# parameter set. usage: scripts/measure-chunking.sh TREE DUMP1 DUMP2
set -euo pipefail
bin=${CHUNKBAK_BIN:-target/release/chunkbak}
tree=$1 d1=$2 d2=$3
work=$(mktemp -d /data/chunking.XXXX)
echo pw > "$work/pw"
export CHUNKBAK_PASSWORD_FILE=$work/pw CHUNKBAK_NO_PROGRESS=1
added() { python3 -c 'import json,sys; [print(json.loads(l)["data"]["bytes_added"]) for l in sys.stdin if "\"summary\"" in l]'; }
for p in "131072 524288 2097152" "262144 1048576 4194304" "524288 2097152 8388608"; do
  set -- $p
  export CHUNKBAK_REPOSITORY=$work/repo-$2
  $bin init --chunk-min "$1" --chunk-avg "$2" --chunk-max "$3" -q
  t=$($bin --json backup "$tree" | added)
  a=$($bin --json backup --stdin --stdin-filename db.sql < "$d1" | added)
  b=$($bin --json backup --stdin --stdin-filename db.sql < "$d2" | added)
  echo "min/avg/max $1/$2/$3: tree initial $t, dump day 1 $a, dump day 2 $b bytes added"
done
rm -rf "$work"
