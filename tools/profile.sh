#!/usr/bin/env bash
# Syscalls per committed write, on the leader and on one follower: a measure that does not
# depend on how loaded the machine is (unlike ops/s), for comparing builds side by side.
#
#   tools/profile.sh [CLIENTS] [WRITES] [MODE] [OP]
#     CLIENTS  redis-benchmark connections (default 64)
#     WRITES   SETs to send (default 40000; 256-byte values over 100k keys)
#     MODE     leader: every connection on the leader (default); spread: a third on each node
#     OP       set (default), or get: as many linearizable GETs of the keys the warm-up wrote,
#              divided by the GETs sent instead of the commit index's advance, with the
#              leader's ReadIndex rounds (heartbeat broadcasts for reads) per GET
#
# Starts its own three-node cluster on ports 27601-27613 (PROFILE_PORT_BASE, default 27600:
# peers BASE+1..3, clients BASE+11..13, redis-server BASE+50; data in a temporary directory),
# attaches `strace -c -f` to the leader and to one follower for exactly the measured run, and
# divides each syscall count by the commit index's advance over that run. Needs strace and
# redis-benchmark (redis-tools). NB: strace slows the traced nodes, so turns batch more than
# they would untraced: the figures are an upper bound on what one write costs at this load,
# and compare builds only when taken with the same arguments.
#
#   tools/profile.sh cpu [CLIENTS] [WRITES] [PLACE]
#     allocations and instructions per committed write, leader and follower: the write_path
#     benchmark (real nodes on the simulator's disk and network, deterministic), once as is
#     for allocations and once under callgrind for instructions (user space only); PLACE
#     leader (default) or spread (a third of the clients on each node, as compare.py)
#
#   tools/profile.sh cpu-get [CLIENTS] [READS] [PLACE]
#     the same for linearizable GETs: the read_path benchmark (PLACE leader or spread, as
#     compare.py places its connections), with the leader's GETs per ReadIndex round
#
#   tools/profile.sh memory [KEYS]
#     resident memory per key: the same `redis-benchmark -t set -n KEYS -r KEYS -d 256` load
#     (default 1,000,000: about 632k distinct keys) into the cluster's leader and into a
#     redis-server without persistence on port BASE+50; prints each one's anonymous resident
#     size, keys, bytes per key, and (kvraft) the log entries it holds in memory: once
#     2 s after the load, and once settled (no snapshot running and the log behind the
#     last one below snapshot_entries, waiting up to 60 s), the steady state between two
#     snapshots.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${PROFILE_PORT_BASE:-27600}
[[ $base =~ ^[0-9]+$ && $base -le 65480 ]] || { echo "profile: PROFILE_PORT_BASE is a port base (0-65480), not '$base'" >&2; exit 2; }
rport=$((base + 50)) # redis-server, memory mode
memory=
if [[ ${1:-} == memory ]]; then
  memory=${2:-1000000}
  set -- 64 0 leader
fi
if [[ ${1:-} == cpu || ${1:-} == cpu-get ]]; then
  command -v valgrind >/dev/null || { echo "profile: valgrind missing" >&2; exit 2; }
  export BENCH_CLIENTS=${2:-64} BENCH_WRITES=${3:-5000} BENCH_READS=${3:-5000} BENCH_PLACE=${4:-leader}
  what=write_path unit=write
  [[ $1 == cpu-get ]] && what=read_path unit=GET
  bench=$(cargo bench --no-run --bench $what 2>&1 | sed -n "s/.*(\(target\/release\/deps\/$what-[0-9a-f]*\)).*/\1/p")
  [[ -x $bench ]] || { echo "profile: could not build the $what benchmark" >&2; exit 1; }
  out=$(mktemp /tmp/kvraft-callgrind.XXXXXX)
  trap 'rm -f "$out"' EXIT
  summary=$("$bench")
  echo "kvraft $(git rev-parse --short HEAD): $summary"
  valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_turn*' \
    --callgrind-out-file="$out" "$bench" > "$out.txt" 2>/dev/null
  n=$(sed -n 's/.*, \([0-9]*\) SETs.*/\1/p; s/.*, \([0-9]*\) GETs measured.*/\1/p' "$out.txt")
  rm -f "$out.txt"
  callgrind_annotate --inclusive=yes "$out" 2>/dev/null \
    | awk -v n="$n" -v what="$what" -v unit="$unit" '$0 ~ what "::measured_turn_(leader|follower) \\[" {
        gsub(",", "", $1); who = $0; sub(/.*measured_turn_/, "", who); sub(/ .*/, "", who)
        printf "%-8s %8.0f instructions per %s (callgrind, %d)\n", who, $1 / n, unit, n }'
  exit 0
fi
clients=${1:-64}
writes=${2:-40000}
mode=${3:-leader}
op=${4:-set}
[[ $op == set || $op == get ]] || { echo "profile: OP is set or get, not $op" >&2; exit 2; }
bin=target/release
for t in strace redis-benchmark redis-cli; do
  command -v $t >/dev/null || { echo "profile: $t missing (apt-get install strace redis-tools)" >&2; exit 2; }
done
[[ -x $bin/kvraftd ]] || { echo "build first: make build" >&2; exit 2; }

dir=$(mktemp -d /tmp/kvraft-profile.XXXXXX)
conf=$dir/profile.conf
cat > "$conf" <<EOF
data_dir = $dir/node{id}
node.1 = peer=127.0.0.1:$((base + 1)) client=127.0.0.1:$((base + 11))
node.2 = peer=127.0.0.1:$((base + 2)) client=127.0.0.1:$((base + 12))
node.3 = peer=127.0.0.1:$((base + 3)) client=127.0.0.1:$((base + 13))
EOF
declare -A pid
cleanup() {
  for p in "${pid[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  # memory mode's redis-server daemonizes: stop it too when the run fails half-way.
  [[ -f $dir/redis.pid ]] && kill -TERM "$(cat "$dir/redis.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for id in 1 2 3; do
  extra=()
  [[ $id == 1 ]] && extra=(--bootstrap)
  RUST_LOG=warn "$bin/kvraftd" --config "$conf" --id $id "${extra[@]}" > "$dir/node$id.log" 2>&1 < /dev/null &
  pid[$id]=$!
done

info() { redis-cli -p "$1" info raft 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"; }
pinfo() { redis-cli -p "$1" info persistence 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"; }
leader=
for _ in $(seq 1 300); do
  st=$("$bin/kvctl" -c "$conf" -t 1 status 2>/dev/null || true)
  if [[ $(grep -cE ' (leader|follower) ' <<<"$st") -ge 3 ]]; then
    leader=$(awk '/^[0-9]/ { for (i = 2; i <= NF; i++) if ($i == "leader") { print $1; exit } }' <<<"$st")
    [[ -n $leader ]] && break
  fi
  sleep 0.1
done
[[ -n $leader ]] || { echo "profile: no leader with three voters" >&2; cat "$dir"/node*.log >&2; exit 1; }
follower=$(( leader % 3 + 1 ))
lport=$((base + 10 + leader))

bench() { # bench N [OP]: N SETs (or GETs) of 256 bytes over 100k keys, connections placed by MODE
  local n=$1 t=${2:-set}
  if [[ $mode == spread ]]; then
    local per=$(( (clients + 2) / 3 )) p bp=()
    for p in $((base + 11)) $((base + 12)) $((base + 13)); do
      redis-benchmark -p $p -t $t -n $((n / 3)) -c $per -r 100000 -d 256 -q > /dev/null &
      bp+=($!)
    done
    wait "${bp[@]}"
  else
    redis-benchmark -p $lport -t $t -n "$n" -c "$clients" -r 100000 -d 256 -q > /dev/null
  fi
}

rss_kb() { sed -n 's/^RssAnon:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status"; }
if [[ -n $memory ]]; then
  command -v redis-server >/dev/null || { echo "profile: redis-server missing" >&2; exit 2; }
  redis-server --port $rport --save "" --appendonly no --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir"
  for _ in $(seq 1 50); do redis-cli -p $rport ping >/dev/null 2>&1 && break; sleep 0.1; done
  rpid=$(cat "$dir/redis.pid")
  load="-t set -n $memory -r $memory -d 256 -c 16 -P 32 -q"
  echo "kvraft $(git rev-parse --short HEAD): redis-benchmark $load, into each"
  redis-benchmark -p $rport $load > /dev/null
  redis-benchmark -p $lport $load > /dev/null
  sleep 2 # the followers apply the last entries
  measure() { # measure WHEN: one line per server
    local who name p port keys kb
    for who in "redis-server:$rpid:$rport" "kvraft-leader:${pid[$leader]}:$lport" \
        "kvraft-follower:${pid[$follower]}:$((base + 10 + follower))"; do
      IFS=: read -r name p port <<<"$who"
      keys=$(redis-cli -p "$port" dbsize | tr -d '\r')
      kb=$(rss_kb "$p")
      printf "%-9s %-16s %8d keys  RssAnon %7d kB  %6.0f bytes per key" "$1" "$name" "$keys" \
        "$kb" "$(echo "$kb * 1024 / $keys" | bc -l)"
      # The log entries a kvraft node holds in memory (after its last compaction) are part of it.
      [[ $name == kvraft-* ]] && printf "  (%d log entries in memory)" \
        $(( $(info "$port" last_log_index) - $(info "$port" first_log_index) + 1 ))
      echo
    done
  }
  measure loaded
  settled() { # every kvraft node: no snapshot running, and its log behind the last one short
    local port
    for port in $lport $((base + 10 + follower)); do
      [[ $(pinfo "$port" snapshot_in_progress) == 0 ]] || return 1
      (( $(info "$port" last_log_index) - $(pinfo "$port" snapshot_index) < 100000 )) || return 1
    done
  }
  for _ in $(seq 1 120); do settled && break; sleep 0.5; done
  sleep 1 # the parent reaps the snapshot child and compacts its log
  measure settled
  redis-cli -p $rport shutdown nosave >/dev/null 2>&1 || true
  exit 0
fi

bench 20000 # warm up: connections, caches, the first log segment
[[ $op == get ]] && bench 20000 get
c0=$(info $lport commit_index)
r0=$(redis-cli -p $lport info stats 2>/dev/null | tr -d '\r' | sed -n 's/^read_rounds://p')
strace -c -f -p "${pid[$leader]}" -o "$dir/leader.strace" 2>/dev/null &
sl=$!
strace -c -f -p "${pid[$follower]}" -o "$dir/follower.strace" 2>/dev/null &
sf=$!
sleep 1 # strace attaches
bench "$writes" "$op"
c1=$(info $lport commit_index)
r1=$(redis-cli -p $lport info stats 2>/dev/null | tr -d '\r' | sed -n 's/^read_rounds://p')
kill -INT $sl $sf
wait $sl $sf 2>/dev/null || true
if [[ $op == get ]]; then
  n=$writes
  [[ $mode == spread ]] && n=$((writes / 3 * 3))
  rounds=$(( ${r1:-0} - ${r0:-0} ))
  echo "kvraft $(git rev-parse --short HEAD): $n GETs, $clients connections ($mode), $rounds read rounds on the leader ($(echo "scale=3; $rounds / $n" | bc) per GET, $(echo "scale=1; $n / ($rounds + (${rounds} == 0))" | bc) GETs per round)"
else
  n=$((c1 - c0))
  echo "kvraft $(git rev-parse --short HEAD): $n writes committed, $clients connections ($mode), 256-byte values"
fi
for who in leader follower; do
  awk -v n="$n" -v who="$who" -v unit="$([[ $op == get ]] && echo GET || echo write)" '
    $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {
      c[$NF] = $4; tot += $4; if (NF == 6) { e[$NF] = $5; errs += $5 } }
    END {
      printf "%-8s %5.2f syscalls per %s (%.2f failed):", who, tot / n, unit, errs / n
      for (k in c) if (c[k] / n >= 0.005) {
        printf " %s %.2f", k, c[k] / n
        if (e[k] > 0) printf " (%.2f failed)", e[k] / n
      }
      printf "\n"
    }' "$dir/$who.strace"
done
