#!/usr/bin/env bash
# How close kvraft comes to the ceiling of this machine and load generator: compare.py's
# load generator against a redis-server without persistence (one process, no replication, no
# fsync: the most any RESP server can answer here) and against a fresh kvraft cluster, in
# alternating rounds, so that a busy moment of a shared machine weighs on both.
#
#   tools/ceiling.sh [ROUNDS] [CLIENTS] [OPS...]
#     ROUNDS   alternations per op (default 2)
#     CLIENTS  connections (default 64; kvraft's are spread over its three nodes)
#     OPS      put and/or get (default: get put)
#
# Prints, per round, each side's ops/s, p99 and server CPU per op, and kvraft's share of
# redis-server's rate. Both hold compare.py's 100k keys before the first round (loadgen
# --op fill). Ports: kvraft as tools/compare.sh (COMPARE_PORT_BASE, default 27900: clients
# BASE+11..13), redis-server BASE+77. Needs redis-server (redis-server package) and the
# load generator, which it builds like compare.py (cargo, protobuf-compiler) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
clients=${2:-64}
shift $(($# < 2 ? $# : 2))
ops=("$@")
[[ ${#ops[@]} -gt 0 ]] || ops=(get put)
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "ceiling: ROUNDS is a positive count, not '$rounds'" >&2; exit 2; }
[[ $clients =~ ^[1-9][0-9]*$ ]] || { echo "ceiling: CLIENTS is a positive count, not '$clients'" >&2; exit 2; }
for op in "${ops[@]}"; do
  [[ $op == put || $op == get ]] || { echo "ceiling: an op is put or get, not '$op'" >&2; exit 2; }
done
command -v redis-server >/dev/null || { echo "ceiling: redis-server missing: apt-get install -y redis-server" >&2; exit 2; }
base=${COMPARE_PORT_BASE:-27900}
rport=$((base + 77))
target=${LOADGEN_TARGET:-/tmp/kvraft-loadgen-target}
loadgen=$target/release/loadgen
if [[ ! -x $loadgen ]]; then
  manifest=../shared/bench/loadgen/Cargo.toml
  [[ -f $manifest ]] || manifest=$(git rev-parse --path-format=absolute --git-common-dir)/../../shared/bench/loadgen/Cargo.toml
  cargo build --release --quiet --manifest-path "$manifest" --target-dir "$target"
fi
cargo build --release --bins --quiet

dir=$(mktemp -d /tmp/kvraft-ceiling.XXXXXX)
cleanup() {
  redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1 || true
  tools/compare.sh _stop "$dir" || true
  rm -rf "$dir"
}
trap cleanup EXIT
tools/compare.sh _start "$dir" >/dev/null
redis-server --port "$rport" --save "" --appendonly no --daemonize yes \
  --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir"
for _ in $(seq 1 100); do
  redis-cli -p "$rport" ping >/dev/null 2>&1 && break
  sleep 0.05
done
kv_endpoints=127.0.0.1:$((base + 11)),127.0.0.1:$((base + 12)),127.0.0.1:$((base + 13))
redis_endpoint=127.0.0.1:$rport
kv_pids=$(tools/compare.sh _pids "$dir" | tr '\n' ' ')
redis_pid=$(cat "$dir/redis.pid")
for ep in "$kv_endpoints" "$redis_endpoint"; do
  "$loadgen" --backend resp --endpoints "$ep" --clients 64 --op fill >/dev/null
done

# cpu_ticks PID...: their utime + stime, in clock ticks.
cpu_ticks() {
  local total=0 pid f
  for pid in "$@"; do
    f=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    read -r -a a <<<"$f"
    total=$((total + a[11] + a[12]))
  done
  echo "$total"
}

# run ENDPOINTS OP PIDS...: one run of 10 s after a 1 s warm-up; prints "ops/s p99_ms
# cpu_us_per_op", the CPU taken over the measured window as compare.py does (the servers'
# CPU seconds from the end of the warm-up to the end, over the rate times that wall time).
run() {
  local ep=$1 op=$2
  shift 2
  local out=$dir/run.json t0 c0 t1 c1
  "$loadgen" --backend resp --endpoints "$ep" --clients "$clients" --duration 10 --warmup 1 \
    --op "$op" > "$out" &
  local lg=$!
  sleep 1
  t0=$(date +%s.%N) c0=$(cpu_ticks "$@")
  wait "$lg"
  t1=$(date +%s.%N) c1=$(cpu_ticks "$@")
  python3 -c '
import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
cpu_s = int(sys.argv[2]) / int(sys.argv[3])
wall = float(sys.argv[5]) - float(sys.argv[4])
print("%.0f %.2f %.1f" % (d["ops_per_sec"], d["p99_us"] / 1000, cpu_s * 1e6 / (d["ops_per_sec"] * wall)))
' "$out" $((c1 - c0)) "$(getconf CLK_TCK)" "$t0" "$t1"
}

echo "kvraft $(git rev-parse --short HEAD) against redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') (no persistence), $clients connections, 10 s per row"
printf '%-4s %5s | %13s %8s %8s | %13s %8s %8s | %9s\n' op round "redis ops/s" "p99 ms" "cpu us" "kvraft ops/s" "p99 ms" "cpu us" "x redis"
for op in "${ops[@]}"; do
  for r in $(seq 1 "$rounds"); do
    read -r r_ops r_p99 r_cpu <<<"$(run "$redis_endpoint" "$op" "$redis_pid")"
    # shellcheck disable=SC2086 # one PID per word
    read -r k_ops k_p99 k_cpu <<<"$(run "$kv_endpoints" "$op" $kv_pids)"
    printf '%-4s %5s | %13s %8s %8s | %13s %8s %8s | %9s\n' "$op" "$r" "$r_ops" "$r_p99" "$r_cpu" \
      "$k_ops" "$k_p99" "$k_cpu" "$(python3 -c "print('%.2f' % ($k_ops / max($r_ops, 1)))")"
  done
done
