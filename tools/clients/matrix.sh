#!/bin/sh
# The client matrix, redis-cli and redis-benchmark edition: the same short script as
# matrix.py. Usage: sh matrix.sh PORT RUN. Prints "OK redis-cli <version>" and exits 0 when
# every step passed. With MATRIX_PASSWORD set, every client authenticates as the default user
# with it (redis-cli through REDISCLI_AUTH, redis-benchmark with -a), and TRANSFER as `admin`
# with MATRIX_ADMINPASS.
set -eu
port=$1
run=$2
bench_auth=""
admin_auth=""
if [ -n "${MATRIX_PASSWORD:-}" ]; then
  export REDISCLI_AUTH="$MATRIX_PASSWORD"
  bench_auth="-a $MATRIX_PASSWORD"
  admin_auth="--user admin --pass $MATRIX_ADMINPASS"
fi
cli() { redis-cli -p "$port" "$@"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
k() { printf '%s:%s' "$run" "$1"; }

# 1. The basic commands, in RESP2 and RESP3 (-3 sends HELLO 3).
[ "$(cli PING)" = PONG ] || fail PING
[ "$(redis-cli -3 -p "$port" PING)" = PONG ] || fail "PING over RESP3"
[ "$(cli SET "$(k a)" 1)" = OK ] || fail SET
[ "$(cli GET "$(k a)")" = 1 ] || fail GET
[ "$(cli INCR "$(k n)")" = 1 ] || fail INCR
[ "$(cli INCR "$(k n)")" = 2 ] || fail INCR
[ "$(cli MGET "$(k a)" "$(k n)" | tr '\n' ,)" = "1,2," ] || fail MGET
[ "$(cli DEL "$(k a)" "$(k n)" "$(k missing)")" = 2 ] || fail DEL
# A MULTI/EXEC transaction runs whole; one with a command that failed to queue runs nothing.
out=$(printf 'MULTI\nSET %s x\nINCR %s\nEXEC\n' "$(k tx)" "$(k tx2)" | cli | tr '\n' ,)
[ "$out" = "OK,QUEUED,QUEUED,OK,1," ] || fail "MULTI/EXEC: $out"
[ "$(cli GET "$(k tx)")" = x ] || fail "MULTI/EXEC did not apply its SET"
out=$(printf 'MULTI\nSET %s x\nGET\nEXEC\n' "$(k never)" | cli)
echo "$out" | grep -q EXECABORT || fail "EXEC after a queueing error: $out"
[ "$(cli EXISTS "$(k never)")" = 0 ] || fail "an aborted MULTI applied its SET"

# 2. A pipeline of 1,000 commands (redis-cli --pipe sends them all, then reads the replies).
i=0
gen() {
  i=0
  while [ $i -lt 1000 ]; do
    key=$(k "p:$i")
    printf '*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%d\r\n' "${#key}" "$key" "${#i}" "$i"
    i=$((i + 1))
  done
}
gen | cli --pipe | grep -q "errors: 0, replies: 1000" || fail "pipe of 1000 SETs"
[ "$(cli GET "$(k p:999)")" = 999 ] || fail "pipelined value"

# 3. SCAN over 10,000 keys: every key exactly once (redis-cli --scan follows the cursor).
b=0
while [ $b -lt 10000 ]; do
  j=$b
  args=""
  while [ $j -lt $((b + 1000)) ]; do
    args="$args $(k "s:$j") v"
    j=$((j + 1))
  done
  # shellcheck disable=SC2086
  [ "$(cli MSET $args)" = OK ] || fail "MSET of scan keys"
  b=$((b + 1000))
done
total=$(cli --scan --pattern "$(k 's:*')" | wc -l)
distinct=$(cli --scan --pattern "$(k 's:*')" | sort -u | wc -l)
[ "$total" -eq 10000 ] && [ "$distinct" -eq 10000 ] || fail "SCAN saw $total keys, $distinct distinct"

# 4. 50 concurrent clients: redis-benchmark (it asks CONFIG GET at start, as a pool would).
# Its progress lines end in CR; the final one per test reads "SET: <n> requests per second".
# shellcheck disable=SC2086
bench=$(redis-benchmark -p "$port" $bench_auth -c 50 -n 2000 -t set,get,incr -q 2>&1 | tr '\r' '\n')
for t in SET GET INCR; do
  echo "$bench" | grep -q "^$t: [0-9.]* requests per second" || fail "redis-benchmark $t: $bench"
done

# 5. A leader change in the middle of a stream of writes, ridden out by a retry loop.
info=$(cli INFO raft | tr -d '\r')
leader=$(echo "$info" | sed -n 's/^leader_id://p')
target=$(echo "$info" | sed -n 's/^voters://p' | tr , '\n' | grep -vx "$leader" | head -n 1)
laddr=$(echo "$info" | sed -n 's/^leader_client_addr://p')
set_retry() {
  tries=0
  until [ "$(cli SET "$1" "$2")" = OK ]; do
    tries=$((tries + 1))
    [ $tries -lt 100 ] || fail "SET $1 kept failing"
    sleep 0.05
  done
}
n=0
while [ $n -lt 200 ]; do
  if [ $n -eq 50 ]; then
    # shellcheck disable=SC2086
    [ "$(redis-cli --no-auth-warning $admin_auth -h "${laddr%:*}" -p "${laddr##*:}" TRANSFER "$target")" = OK ] || fail TRANSFER
  fi
  set_retry "$(k "lc:$n")" "$n"
  n=$((n + 1))
done
[ "$(cli GET "$(k lc:199)")" = 199 ] && [ "$(cli GET "$(k lc:0)")" = 0 ] || fail "writes of the leader change"
tries=0
until now=$(cli INFO raft | tr -d '\r' | sed -n 's/^leader_id://p') && [ -n "$now" ] && [ "$now" != 0 ] && [ "$now" != "$leader" ]; do
  tries=$((tries + 1))
  [ $tries -lt 200 ] || fail "the leader never moved from $leader"
  sleep 0.05
done

echo "OK redis-cli $(redis-cli --version | cut -d' ' -f2) (and redis-benchmark)"
