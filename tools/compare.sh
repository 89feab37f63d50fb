#!/usr/bin/env bash
# kvraft against etcd 3.4 with ../shared/bench/compare.py, in one command (make compare).
#
#   tools/compare.sh [compare.py options]
#     default options: --clients 1 64 256 --ops put get
#     e.g. tools/compare.sh --clients 64 --ops put get --duration 10
#
# Environment:
#   COMPARE_PORT_BASE     kvraft ports: peers BASE+1..3, clients BASE+11..13 (default 27900)
#   COMPARE_PRELOAD_KEYS  load this many SETs of 256 B over as many keys into the leader
#                         before measuring (redis-benchmark -r N -n N; 1000000 gives about
#                         632k keys), for the issue's "cluster that already holds keys" run
#   LOADGEN_TARGET        where compare.py builds its load generator
#                         (default /tmp/kvraft-loadgen-target)
#   COMPARE               the compare.py to run (default ../shared/bench/compare.py, beside
#                         the main checkout when this is a git worktree)
#
# Starts a fresh three-node cluster of target/release/kvraftd on its own ports and in a
# temporary directory (so it never touches `make cluster`'s data/ or ports), passes its PIDs
# so compare.py also measures server CPU per operation, and removes everything at the end.
# etcd runs on compare.py's own ports (23791-23803): only one comparison at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
base=${COMPARE_PORT_BASE:-27900}

conf_of() { echo "$1/compare.conf"; }

start() { # start DIR: a fresh cluster whose data, logs and PIDs live in DIR
  local dir=$1 conf id
  conf=$(conf_of "$dir")
  mkdir -p "$dir"
  {
    echo "data_dir = $dir/node{id}"
    for id in 1 2 3; do
      echo "node.$id = peer=127.0.0.1:$((base + id)) client=127.0.0.1:$((base + 10 + id))"
    done
  } > "$conf"
  : > "$dir/pids"
  for id in 1 2 3; do
    local extra=()
    [[ $id == 1 ]] && extra=(--bootstrap)
    RUST_LOG=${RUST_LOG:-warn} "$bin/kvraftd" --config "$conf" --id $id "${extra[@]}" \
      > "$dir/node$id.log" 2>&1 < /dev/null &
    echo "$!" >> "$dir/pids"
  done
  local st leader=
  for _ in $(seq 1 300); do
    st=$("$bin/kvctl" -c "$conf" -t 1 status 2>/dev/null || true)
    if [[ $(grep -cE ' (leader|follower) ' <<<"$st") -ge 3 ]]; then
      leader=$(awk '/^[0-9]/ { for (i = 2; i <= NF; i++) if ($i == "leader") { print $1; exit } }' <<<"$st")
      [[ -n $leader ]] && break
    fi
    sleep 0.1
  done
  [[ -n $leader ]] || { echo "compare: no leader with three voters" >&2; cat "$dir"/node*.log >&2; return 1; }
  if [[ -n ${COMPARE_PRELOAD_KEYS:-} ]]; then
    local n=$COMPARE_PRELOAD_KEYS
    echo "compare: loading $n SETs of 256 B over $n keys into node $leader" >&2
    redis-benchmark -p $((base + 10 + leader)) -t set -n "$n" -r "$n" -d 256 -c 16 -P 32 -q > /dev/null
  fi
}

stop() { # stop DIR
  local dir=$1 pid
  [[ -f $dir/pids ]] || return 0
  while read -r pid; do
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == kvraftd ]] && kill -TERM "$pid" 2>/dev/null || true
  done < "$dir/pids"
  for _ in $(seq 1 100); do
    local left=0
    while read -r pid; do [[ $(cat "/proc/$pid/comm" 2>/dev/null) == kvraftd ]] && left=1; done < "$dir/pids"
    [[ $left == 0 ]] && break
    sleep 0.1
  done
  while read -r pid; do
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == kvraftd ]] && kill -KILL "$pid" 2>/dev/null || true
  done < "$dir/pids"
  rm -f "$dir/pids"
}

case ${1:-} in
  _start) start "$2"; exit ;;
  _stop) stop "$2"; exit ;;
  _pids) cat "$2/pids"; exit ;;
esac

compare=${COMPARE:-../shared/bench/compare.py}
if [[ ! -f $compare && -z ${COMPARE:-} ]]; then # a git worktree: beside the main checkout
  compare=$(git rev-parse --path-format=absolute --git-common-dir)/../../shared/bench/compare.py
fi
[[ -f $compare ]] || { echo "compare: no $compare beside the project" >&2; exit 2; }
for t in etcd etcdctl; do
  command -v $t >/dev/null || { echo "compare: $t missing: apt-get install -y etcd-server etcd-client protobuf-compiler" >&2; exit 2; }
done
[[ -z ${COMPARE_PRELOAD_KEYS:-} ]] || command -v redis-benchmark >/dev/null \
  || { echo "compare: COMPARE_PRELOAD_KEYS needs redis-benchmark (redis-tools)" >&2; exit 2; }
cargo build --release --bins --quiet
dir=$(mktemp -d /tmp/kvraft-compare.XXXXXX)
trap 'stop "$dir"; rm -rf "$dir"' EXIT
[[ $# -gt 0 ]] || set -- --clients 1 64 256 --ops put get
me=$(realpath "$0")
echo "kvraft $(git rev-parse --short HEAD) against etcd; kvraft in $dir, client ports $((base + 11))-$((base + 13))" >&2
python3 "$compare" \
  --kvraft-start "$me _start $dir" --kvraft-stop "$me _stop $dir" --kvraft-pids "$me _pids $dir" \
  --kvraft "127.0.0.1:$((base + 11)),127.0.0.1:$((base + 12)),127.0.0.1:$((base + 13))" "$@"
