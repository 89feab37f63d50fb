#!/usr/bin/env python3
"""The client matrix, redis-py edition: the same short script every client runs.

Usage: matrix.py [--proto 2|3] PORT RUN
  --proto  the RESP protocol to ask for (default: redis-py's own default)
  PORT     a kvraft node's client port (the leader or a follower)
  RUN      a unique prefix for this run's keys
With MATRIX_PASSWORD set, every connection authenticates as the default user with it, and
the admin connection (TRANSFER) as `admin` with MATRIX_ADMINPASS.
Prints "OK redis-py <version> proto=<p>" and exits 0 when every step passed.
"""
import os
import sys
import threading
import time

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import (ClusterDownError, ConnectionError, TryAgainError,
                              WatchError)
from redis.retry import Retry

args = sys.argv[1:]
proto = "default"
if args[:1] == ["--proto"]:
    proto, args = args[1], args[2:]
port, run = int(args[0]), args[1]

# The client's own retry: kvraft answers -TRYAGAIN or -CLUSTERDOWN while leadership moves.
retry = Retry(ExponentialBackoff(cap=0.5, base=0.02), 40)
kwargs = dict(host="127.0.0.1", port=port, retry=retry, socket_timeout=20,
              retry_on_error=[TryAgainError, ClusterDownError, ConnectionError])
if proto != "default":
    kwargs["protocol"] = int(proto)
admin_auth = {}
if os.environ.get("MATRIX_PASSWORD"):
    # redis-py sends AUTH, or HELLO 3 AUTH default <password> when it speaks RESP3.
    kwargs["password"] = os.environ["MATRIX_PASSWORD"]
    admin_auth = dict(username="admin", password=os.environ["MATRIX_ADMINPASS"])
pool = redis.ConnectionPool(max_connections=60, **kwargs)
r = redis.Redis(connection_pool=pool)


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def k(name):
    return f"{run}:{name}"


# 1. Connect, and the basic commands.
check(r.ping() is True, "PING")
check(r.set(k("a"), "1") is True, "SET")
check(r.get(k("a")) == b"1", "GET")
check(r.incr(k("n")) == 1 and r.incr(k("n")) == 2, "INCR")
check(r.mget([k("a"), k("n"), k("missing")]) == [b"1", b"2", None], "MGET")
check(r.delete(k("a"), k("n"), k("missing")) == 2, "DEL")

# A transaction pipeline (MULTI/EXEC) runs whole; a WATCHed key changed by another
# connection makes it raise WatchError, having applied nothing.
with r.pipeline(transaction=True) as p:
    check(p.set(k("tx"), "x").incr(k("tx2")).execute() == [True, 1], "MULTI/EXEC pipeline")
check(r.mget([k("tx"), k("tx2")]) == [b"x", b"1"], "MULTI/EXEC applied")
with r.pipeline() as p:
    p.watch(k("w"))
    r.set(k("w"), "other")  # another connection of the pool
    p.multi()
    p.set(k("w"), "mine").set(k("w2"), "mine")
    try:
        p.execute()
        check(False, "EXEC after a watched key changed should abort")
    except WatchError:
        pass
check(r.mget([k("w"), k("w2")]) == [b"other", None], "nothing of an aborted EXEC is applied")

# 2. A pipeline of 1,000 commands.
with r.pipeline(transaction=False) as p:
    for i in range(1000):
        p.set(k(f"p:{i}"), i)
    check(all(x is True for x in p.execute()), "pipelined SETs")
with r.pipeline(transaction=False) as p:
    for i in range(1000):
        p.get(k(f"p:{i}"))
    check(p.execute() == [str(i).encode() for i in range(1000)], "pipelined GETs")

# 3. SCAN over 10,000 keys: every key exactly once.
for base in range(0, 10000, 1000):
    r.mset({k(f"s:{i}"): "v" for i in range(base, base + 1000)})
seen = list(r.scan_iter(match=k("s:*"), count=500))
check(len(seen) == 10000 and len(set(seen)) == 10000, f"SCAN saw {len(seen)} keys, {len(set(seen))} distinct")

# 4. A pool of 50 concurrent users.
errors = []


def user(i):
    try:
        for _ in range(20):
            r.incr(k("pool"))
        r.set(k(f"user:{i}"), i)
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(repr(e))


threads = [threading.Thread(target=user, args=(i,)) for i in range(50)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check(not errors, f"pool users failed: {errors[:3]}")
check(r.get(k("pool")) == b"1000", f"pool counter {r.get(k('pool'))}")

# 5. A leader change in the middle of a stream of writes, ridden out by the client's retry.
def set_idempotent(key, value):
    """SET, resent on -UNKNOWN too (a write forwarded by a follower whose leader changed
    before it answered): setting a fixed value twice changes nothing."""
    for attempt in range(40):
        try:
            return r.set(key, value)
        except redis.exceptions.ResponseError as e:
            if not str(e).startswith("UNKNOWN") or attempt == 39:
                raise
            time.sleep(min(0.5, 0.02 * 2 ** attempt))


info = r.info("raft")
# redis-py reads "voters:1,2,3" as a list, or as text, depending on its version.
raw = info["voters"]
voters = [int(v) for v in (raw if isinstance(raw, list) else str(raw).split(","))]
leader = int(info["leader_id"])
target = next(v for v in voters if v != leader)
leader_host, leader_port = info["leader_client_addr"].rsplit(":", 1)
admin = redis.Redis(host=leader_host, port=int(leader_port), socket_timeout=20, **admin_auth)
for i in range(200):
    if i == 50:
        check(admin.execute_command("TRANSFER", target) == b"OK", "TRANSFER")
    check(set_idempotent(k(f"lc:{i}"), i) is True, f"SET during the leader change ({i})")
check(r.mget([k(f"lc:{i}") for i in range(200)]) == [str(i).encode() for i in range(200)],
      "every write of the leader change is there")

# The leader did change (poll with a deadline: the node learns of it within an election).
deadline = time.monotonic() + 20
while int(r.info("raft")["leader_id"]) in (0, leader):
    check(time.monotonic() < deadline, f"the leader never moved from {leader}")
    time.sleep(0.05)

auth = " auth" if admin_auth else ""
print(f"OK redis-py {redis.__version__} proto={proto}{auth}")
