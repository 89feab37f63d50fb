#!/usr/bin/env bash
# Long runs, outside `make test`: many simulator seeds, then the real-process fault tests
# (kill -9, SIGSTOP, full-cluster crashes, snapshots, the linearizability check) round after
# round. Stops at the first failure, which names the seed or the test to rerun.
#
#   tools/soak.sh                 20,000 seeds, then 10 rounds
#   SEEDS=100000 ROUNDS=50 tools/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${SEEDS:-20000}
rounds=${ROUNDS:-10}
echo "== simulator: $seeds seeds"
SIM_SEEDS=$seeds cargo test --release --quiet --test sim -- --nocapture
for r in $(seq 1 "$rounds"); do
  echo "== process tests, round $r of $rounds"
  cargo test --release --quiet --test cluster --test daemon --test membership --test snapshots \
    --test linearizability
done
echo "soak passed: $seeds seeds, $rounds rounds of process tests"
