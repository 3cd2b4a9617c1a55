#!/usr/bin/env bash
# A 3-node Strata cluster on this machine: three combined (broker + metadata voter)
# processes on 127.0.0.1, one shared object store (a local directory), topics of
# replication factor 3 with min.insync.replicas=2 by default.
#
#   scripts/cluster.sh start [DIR]    start the nodes (data under DIR, default ./cluster)
#   scripts/cluster.sh status [DIR]   the cluster as node 1 sees it (GET /api/v1/cluster)
#   scripts/cluster.sh stop [DIR]     SIGTERM every node (controlled shutdown) and wait
#
# Node N (1..3) serves Kafka on 127.0.0.1:1909N, the metadata quorum on 127.0.0.1:1919N
# and HTTP (health, metrics, admin API) on 127.0.0.1:1929N; its log is DIR/nodeN/strata.log.
# Kill one (kill -9 "$(cat DIR/node1/pid)") and clients carry on with the other two;
# start it again with `scripts/cluster.sh start DIR`. The binary is `strata` from PATH
# (the README's first command installs it), or STRATA_BIN.
set -euo pipefail

cmd="${1:-}"
dir="${2:-./cluster}"
bin="${STRATA_BIN:-$(command -v strata || true)}"
nodes=(1 2 3)
voters="1@127.0.0.1:19191,2@127.0.0.1:19192,3@127.0.0.1:19193"

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

running() { [[ -f "$dir/node$1/pid" ]] && kill -0 "$(cat "$dir/node$1/pid")" 2>/dev/null; }

start() {
  [[ -x "$bin" ]] || { echo "no strata binary: run 'cargo install --locked --path crates/strata' or set STRATA_BIN" >&2; exit 1; }
  mkdir -p "$dir/objects"
  for n in "${nodes[@]}"; do
    if running "$n"; then echo "node $n already runs (pid $(cat "$dir/node$n/pid"))"; continue; fi
    mkdir -p "$dir/node$n"
    STRATA_KAFKA_DEFAULT_REPLICATION_FACTOR="${STRATA_KAFKA_DEFAULT_REPLICATION_FACTOR:-3}" \
    STRATA_KAFKA_MIN_INSYNC_REPLICAS="${STRATA_KAFKA_MIN_INSYNC_REPLICAS:-2}" \
      nohup env -u STRATA_BIN "$bin" serve \
        --node-id "$n" \
        --data-dir "$dir/node$n/data" \
        --kafka-listen "127.0.0.1:1909$n" \
        --meta-listen "127.0.0.1:1919$n" \
        --http-listen "127.0.0.1:1929$n" \
        --meta-voters "$voters" \
        --object-store "file://$(cd "$dir/objects" && pwd)" \
        >>"$dir/node$n/strata.log" 2>&1 </dev/null &
    echo $! >"$dir/node$n/pid"
    echo "node $n: pid $!, log $dir/node$n/strata.log"
  done
  for n in "${nodes[@]}"; do
    # Our process must be alive (not another one on the same port) and ready.
    for _ in $(seq 1 120); do
      running "$n" || { echo "node $n exited; see $dir/node$n/strata.log" >&2; tail -5 "$dir/node$n/strata.log" >&2; exit 1; }
      curl -sf "http://127.0.0.1:1929$n/readyz" >/dev/null && break
      sleep 0.5
    done
    running "$n" && curl -sf "http://127.0.0.1:1929$n/readyz" >/dev/null || { echo "node $n is not ready; see $dir/node$n/strata.log" >&2; exit 1; }
  done
  echo "ready: bootstrap servers 127.0.0.1:19091,127.0.0.1:19092,127.0.0.1:19093"
}

stop() {
  for n in "${nodes[@]}"; do
    running "$n" && kill -TERM "$(cat "$dir/node$n/pid")"
  done
  for n in "${nodes[@]}"; do
    for _ in $(seq 1 120); do running "$n" || break; sleep 0.5; done
    if running "$n"; then echo "node $n did not stop" >&2; exit 1; fi
    rm -f "$dir/node$n/pid"
  done
  echo "stopped"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) curl -sf "http://127.0.0.1:19291/api/v1/cluster" ; echo ;;
  *) usage ;;
esac
