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
alive() { [[ -r /proc/$1/comm ]] && [[ $(cat "/proc/$1/comm" 2>/dev/null) == kvraftd ]]; }

start() {
  [[ -f $conf ]] || { echo "no config $conf" >&2; exit 2; }
  [[ -x $bin/kvraftd ]] || { echo "build first: make build" >&2; exit 2; }
  mkdir -p "$piddir"
  if [[ -f $pidfile ]]; then stop; fi
  : > "$pidfile"
  for id in $(ids); do
    RUST_LOG=${RUST_LOG:-info} "$bin/kvraftd" --config "$conf" --id "$id" \
      >> "$piddir/node$id.log" 2>&1 < /dev/null &
    echo "$! $id" >> "$pidfile"
  done
  # Wait (bounded) until some node reports a leader.
  for _ in $(seq 1 100); do
    if "$bin/kvctl" -c "$conf" -t 1 info raft 2>/dev/null | grep -q '^role:leader'; then break; fi
    if "$bin/kvctl" -c "$conf" -t 1 status 2>/dev/null | grep -q leader; then break; fi
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
