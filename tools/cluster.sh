#!/usr/bin/env bash
# Start or stop every node of a cluster config on this machine, in the background.
#
#   tools/cluster.sh start [CONF]    start each node.N of CONF (default conf/cluster.conf)
#   tools/cluster.sh stop  [CONF]    SIGTERM the nodes started here, then SIGKILL stragglers
#   tools/cluster.sh status [CONF]   which recorded nodes are running
#
# Logs go to data/nodeN.log and PIDs to data/cluster.pids (beside the config's data_dir
# default). Binaries come from target/release (make build).
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-}
conf=${2:-conf/cluster.conf}
bin=target/release
piddir=data
pidfile=$piddir/cluster.pids

ids() { sed -n 's/^[[:space:]]*node\.\([0-9][0-9]*\)[[:space:]]*=.*/\1/p' "$conf"; }
# The data_dir of node $1: the config's data_dir (default data/node{id}) with {id} replaced.
data_dir() {
  local d
  d=$(sed -n 's/^[[:space:]]*data_dir[[:space:]]*=[[:space:]]*\([^#[:space:]]*\).*/\1/p' "$conf" | head -1)
  d=${d:-data/node\{id\}}
  echo "${d//\{id\}/$1}"
}
any_data_dir() {
  local id
  for id in $(ids); do [[ -d $(data_dir "$id") ]] && return 0; done
  return 1
}
alive() { [[ -r /proc/$1/comm ]] && [[ $(cat "/proc/$1/comm" 2>/dev/null) == kvraftd ]]; }

start() {
  [[ -f $conf ]] || { echo "no config $conf" >&2; exit 2; }
  [[ -x $bin/kvraftd ]] || { echo "build first: make build" >&2; exit 2; }
  mkdir -p "$piddir"
  if [[ -f $pidfile ]]; then stop; fi
  : > "$pidfile"
  # Forming a cluster is explicit and happens once: only when NO node of the config has a data
  # directory yet does the first node get --bootstrap (a new cluster id, itself its only
  # voter); the leader admits the others as they connect. A node whose data directory was
  # lost later is just restarted, and re-admitted as a new incarnation.
  local first=1 bootstrap=()
  if ! any_data_dir; then bootstrap=(--bootstrap); fi
  for id in $(ids); do
    local extra=()
    if [[ $first == 1 ]]; then extra=("${bootstrap[@]}"); first=0; fi
    RUST_LOG=${RUST_LOG:-info} "$bin/kvraftd" --config "$conf" --id "$id" "${extra[@]}" \
      >> "$piddir/node$id.log" 2>&1 < /dev/null &
    echo "$! $id" >> "$pidfile"
  done
  # Wait (bounded) until some node reports a leader and no configured member is still a
  # learner or missing (the leader admits them one at a time).
  local n
  n=$(ids | wc -l)
  # (kvctl status shows a voter as leader or follower, a learner as learner, the rest as none.)
  for _ in $(seq 1 150); do
    local st
    st=$("$bin/kvctl" -c "$conf" -t 1 status 2>/dev/null || true)
    if grep -q leader <<<"$st" && [[ $(grep -cE ' (leader|follower) ' <<<"$st") -ge $n ]]; then break; fi
    sleep 0.1
  done
  echo "kvraft cluster started from $conf (logs: $piddir/node*.log)"
  "$bin/kvctl" -c "$conf" status || true
  cat <<USAGE

  $bin/kvctl put greeting hello      # write through any node
  $bin/kvctl get greeting            # linearizable read
  $bin/kvctl status                  # every member's role, term, commit
  redis-cli -p 6001 set k v          # any Redis client works on the client ports
  make stop                          # stop the cluster
USAGE
}

stop() {
  [[ -f $pidfile ]] || return 0
  local pids=() pid id
  while read -r pid id; do
    if alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); fi
  done < "$pidfile"
  for _ in $(seq 1 100); do
    local left=0
    for pid in "${pids[@]}"; do alive "$pid" && left=1; done
    [[ $left == 0 ]] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do alive "$pid" && kill -KILL "$pid" 2>/dev/null || true; done
  rm -f "$pidfile"
  echo "kvraft cluster stopped"
}

status() {
  [[ -f $pidfile ]] || { echo "no cluster recorded in $pidfile"; return 0; }
  while read -r pid id; do
    if alive "$pid"; then echo "node $id pid $pid running"; else echo "node $id pid $pid not running"; fi
  done < "$pidfile"
}

case $cmd in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status [CONF]" >&2; exit 2 ;;
esac
