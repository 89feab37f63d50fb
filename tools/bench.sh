#!/usr/bin/env bash
# The benchmarks (make bench). Each prints its own table of ratios measured side by side in
# one run: the log against plain write+fdatasync, the skiplist against BTreeMap, the codecs,
# and a local three-node cluster under a closed-loop load (with and without snapshots).
#
#   tools/bench.sh            every benchmark
#   tools/bench.sh wal kv     only those
#   tools/bench.sh etcd       kvraft against etcd 3.4, side by side (../shared/bench/compare.py;
#                             needs: apt-get install -y etcd-server protobuf-compiler)
set -euo pipefail
cd "$(dirname "$0")/.."
benches=("$@")
[[ ${#benches[@]} -gt 0 ]] || benches=(wal kv wire resp cluster)
for b in "${benches[@]}"; do
  if [[ $b == etcd ]]; then
    compare=../shared/bench/compare.py
    [[ -f $compare ]] || { echo "no $compare beside the project" >&2; exit 2; }
    command -v etcd >/dev/null || { echo "etcd missing: apt-get install -y etcd-server protobuf-compiler" >&2; exit 2; }
    cargo build --release --bins
    python3 "$compare" \
      --kvraft-start "tools/cluster.sh stop; rm -rf data/node1 data/node2 data/node3; tools/cluster.sh start" \
      --kvraft-stop "tools/cluster.sh stop" \
      --kvraft 127.0.0.1:6001,127.0.0.1:6002,127.0.0.1:6003 --clients 1 8 64 256 --ops put get
    continue
  fi
  echo "== cargo bench --bench $b"
  cargo bench --quiet --bench "$b"
  echo
done
