# kvraft: build, test, run, benchmark.
#   make test              the whole test suite (what CI runs)
#   make test-clients      the client matrix: redis-py, node-redis, ioredis, redis-cli
#   make cluster / stop    a local three-node cluster in the background (logs in data/)
#   make run ID=2          node 2 of conf/cluster.conf in the foreground
#   make sim SEED=n        replay one simulator seed;  make sim SEEDS=n  run n seeds
#   make soak              long runs: 20,000 simulator seeds, then rounds of process fault tests
#   make bench             the benchmarks (not part of test)
#   make compare           kvraft against etcd 3.4 (../shared/bench/compare.py), put and get
CARGO  ?= cargo
CONF   ?= conf/cluster.conf
ID     ?= 1
BIN    := target/release
SEEDS  ?= 1000

.PHONY: all build test test-clients sim soak run cluster stop status bench bench-etcd compare ceiling fmt lint clean setup

all: build

build:
	$(CARGO) build --release --bins

# Installs what the tests need that cargo does not fetch: redis-server (the differential
# tests), redis-cli and redis-benchmark, redis-py, and node-redis and ioredis (the client
# matrix, installed in tools/clients/node_modules).
setup:
	@{ command -v redis-cli >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null; \
	  else echo "setup: install Debian's redis-server and redis-tools" >&2; fi; }
	@python3 -c 'import redis' 2>/dev/null || pip install -q redis 2>/dev/null \
	  || pip install -q --break-system-packages redis || echo "setup: pip install redis failed" >&2
	@[ -d tools/clients/node_modules/ioredis ] && [ -d tools/clients/node_modules/redis ] \
	  || (cd tools/clients && npm install --no-audit --no-fund --silent) \
	  || echo "setup: npm install in tools/clients failed (needs node and npm)" >&2

# KVRAFT_REQUIRE_CLIENTS: a client tool `make setup` failed to install fails its tests
# instead of skipping them.
test: setup build
	KVRAFT_REQUIRE_CLIENTS=1 $(CARGO) test --release

# The client matrix alone (tests/clients.rs), every row required.
test-clients: setup build
	KVRAFT_REQUIRE_CLIENTS=1 $(CARGO) test --release --test clients -- --nocapture

sim:
ifdef SEED
	SIM_SEED=$(SEED) $(CARGO) test --release --test sim -- --nocapture
else
	SIM_SEEDS=$(SEEDS) $(CARGO) test --release --test sim -- --nocapture
endif

# Long runs, not part of `make test` (SEEDS=.. ROUNDS=.. to scale).
soak: setup build
	@tools/soak.sh

run: build
	$(BIN)/kvraftd --config $(CONF) --id $(ID)

cluster: build
	@tools/cluster.sh start $(CONF)

stop:
	@tools/cluster.sh stop $(CONF)

status: build
	@$(BIN)/kvctl status

bench: build
	@tools/bench.sh

# kvraft and etcd 3.4 side by side (needs: apt-get install -y etcd-server protobuf-compiler).
bench-etcd: build
	@tools/bench.sh etcd

# kvraft against etcd with server CPU per operation, on its own ports and data (tools/compare.sh;
# ARGS passes compare.py options, default --clients 1 64 256 --ops put get).
compare: build
	@tools/compare.sh $(ARGS)

# The ceiling of this machine and load generator: kvraft against a redis-server without
# persistence, alternating (tools/ceiling.sh; ARGS: ROUNDS CLIENTS OPS..., default 2 64 get put).
ceiling: build
	@tools/ceiling.sh $(ARGS)

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf data
