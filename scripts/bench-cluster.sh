#!/usr/bin/env bash
# The cluster benchmark of issue 10, on one machine: a 3-node loopback cluster
# (scripts/cluster.sh, release build), `strata bench` produce throughput and ack latency
# with replication factor 1 and 3 in the same run (alternating, ROUNDS times each), then
# the time from losing a partition leader to the first acknowledged produce, after a
# kill -9 and after a controlled shutdown (scripts/failover_probe.py; needs the Python
# clients that scripts/install-test-deps.sh installs into .venv).
#
#   scripts/bench-cluster.sh [MESSAGES] [ROUNDS]      defaults: 300000 messages, 2 rounds
#
# BENCH_DIR=/dev/shm puts the data directories on tmpfs: with all three replicas on one
# disk, replication factor 3 writes three times the bytes to the same device.
set -euo pipefail
cd "$(dirname "$0")/.."
messages="${1:-300000}"
rounds="${2:-2}"
source scripts/bench-common.sh
strata_binary
export STRATA_BIN
dir="$(mktemp -d -p "${BENCH_DIR:-/tmp}")"
trap 'scripts/cluster.sh stop "$dir" >/dev/null || true; rm -rf "$dir"' EXIT
scripts/cluster.sh start "$dir"
for round in $(seq 1 "$rounds"); do
  for rf in 1 3; do
    echo "== round $round, replication factor $rf"
    topic="bench-cluster-$round-$rf"
    # min.insync.replicas: 2 of 3 replicas (the script's cluster default), 1 of 1. No
    # uploads: the earlier rounds' segments would be uploaded during the later ones.
    env -u STRATA_BIN "$STRATA_BIN" bench --bootstrap 127.0.0.1:19091 --replication-factor "$rf" \
      --topic "$topic" --topic-config "min.insync.replicas=$(( rf > 1 ? 2 : 1 ))" \
      --topic-config remote.storage.enable=false \
      --messages "$messages" --partitions 6 --connections 6 --produce-only
    # Each run's topic goes before the next: otherwise every run writes into memory
    # (page cache, or tmpfs) the machine never touched before, and on a virtual machine
    # whose host backs guest memory lazily (Firecracker here) that first touch, not the
    # broker, sets the pace: writing 3 GB to fresh tmpfs pages ran at 156-184 MB/s,
    # rewriting pages just freed at 3.1 GB/s.
    .venv/bin/python - "$topic" <<'PY'
import sys
from confluent_kafka.admin import AdminClient
a = AdminClient({"bootstrap.servers": "127.0.0.1:19091"})
a.delete_topics([sys.argv[1]])[sys.argv[1]].result(30)
PY
    sleep 1
  done
done
.venv/bin/python scripts/failover_probe.py "$dir" kill
.venv/bin/python scripts/failover_probe.py "$dir" stop
