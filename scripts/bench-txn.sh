#!/usr/bin/env bash
# Transactional produce beside plain idempotent produce, measured in one run with the same
# client (confluent-kafka, i.e. librdkafka; acks=all, linger.ms=5, 4 partitions), ROUNDS
# times interleaved:
#   idempotent   enable.idempotence, no transactions;
#   txn-1000     a transaction per 1,000 records (begin, produce, commit);
#   txn-100ms    a transaction per 100 ms of producing.
#
#   scripts/bench-txn.sh [MESSAGES] [SIZE] [ROUNDS]     defaults: 200000, 1024 bytes, 2
#
# Needs the test dependencies (the README's second command installs them: .venv).
# Environment: BENCH_DIR (the data directory's file system, default /tmp), STRATA_BIN
# (default: a release build). Measures, asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-200000}
SIZE=${2:-1024}
ROUNDS=${3:-2}
source scripts/bench-common.sh
strata_binary
scratch txn
start_broker

echo "$MESSAGES messages of $SIZE bytes per mode, $ROUNDS rounds"
for round in $(seq "$ROUNDS"); do
  echo "round $round"
  for mode in idempotent txn-1000 txn-100ms; do
    .venv/bin/python scripts/bench_txn.py "127.0.0.1:$port" "$MESSAGES" "$SIZE" "$mode"
  done
done
