#!/usr/bin/env bash
# Produce latency at a steady 1,000 msg/s, side by side with what the disk itself allows,
# in one run (ROUNDS times, interleaved):
#   disk      1 KiB append + fdatasync on the data directory's file system, paced and
#             measured exactly like the broker's messages (open loop: a write held up by
#             the one before it counts from when it was due): the floor for any broker
#             that syncs before it acknowledges;
#   strata    `strata bench --rate`: produce-to-ack and produce-to-consume;
#   librdkafka rdkafka_performance -r (when scripts/bench-compare.sh has built it): its
#             delivery-report latency, acks=all, linger.ms=0.
#
#   scripts/bench-latency.sh [MESSAGES] [ROUNDS]     defaults: 20000 messages, 2 rounds
#
# Environment: RATE (1000), BENCH_DIR (the data directory's file system, default /tmp),
# STRATA_BIN (default: a release build). Measures, asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-20000}
ROUNDS=${2:-2}
RATE=${RATE:-1000}
source scripts/bench-common.sh
strata_binary
perf=.tools/bench-compare/rdkafka_performance
scratch latency

# Percentiles of a file of microsecond samples, in bench's format.
percentiles() {
  python3 - "$1" <<'PY'
import sys
v = sorted(int(x) for x in open(sys.argv[1]) if x.strip())
at = lambda q: v[round((len(v) - 1) * q)] / 1000
print(", ".join(f"p{q * 100:g} {at(q):.2f} ms" for q in (0.5, 0.95, 0.99, 0.999)) + f", max {v[-1] / 1000:.2f} ms")
PY
}

disk() {
  python3 - "$root/disk.log" "$MESSAGES" "$RATE" >"$root/disk.txt" <<'PY'
import os, sys, time
path, n, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
record, step = b"x" * 1024, 1_000_000_000 // rate
t0 = time.perf_counter_ns(); previous = 0
for i in range(n):
    due = t0 + i * step
    now = time.perf_counter_ns()
    if due > now:
        time.sleep((due - now) / 1e9)
    start = due if previous > due else time.perf_counter_ns()
    os.write(fd, record)
    os.fdatasync(fd)
    previous = time.perf_counter_ns()
    print((previous - start) // 1000)
os.close(fd)
os.unlink(path)
PY
  echo "disk (append + fdatasync)   $(percentiles "$root/disk.txt")"
}

strata() {
  start_broker
  "$STRATA_BIN" bench --bootstrap "127.0.0.1:$port" --rate "$RATE" --messages "$MESSAGES" \
    --partitions 1 2>/dev/null | sed -n 's/^  produce-to-ack */strata produce-to-ack       /p; s/^  produce-to-consume */strata produce-to-consume   /p'
  stop_broker
}

librdkafka() {
  [ -x "$perf" ] || return 0
  start_broker
  "$perf" -P -t lat -b "127.0.0.1:$port" -s 1024 -r "$RATE" -c "$MESSAGES" -p 0 -u -l \
    -A "$root/rdkafka.txt" -X acks=all -X linger.ms=0 >/dev/null 2>&1
  echo "librdkafka delivery report  $(percentiles "$root/rdkafka.txt")"
  stop_broker
}

echo "$MESSAGES messages of 1 KiB at $RATE msgs/s, data on $(df --output=source "$root" | tail -1)"
for round in $(seq "$ROUNDS"); do
  echo "round $round"
  disk
  strata
  librdkafka
done
