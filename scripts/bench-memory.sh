#!/usr/bin/env bash
# Broker memory side by side, in one run: for each binary given (default: the release
# build), a fresh broker on its own data directory is measured
#   idle      RSS 3 s after start,
#   load      `strata bench` (MESSAGES x 1 KiB, 4 partitions, acks=all, read back):
#             its throughput lines and the broker's peak RSS (VmHWM),
#   burst     RSS right after CONNECTIONS clients connected at once, each sent
#             ApiVersions and Metadata, and went away,
#   settled   RSS 10 s later,
# and the broker's CPU seconds for the whole run. Rounds alternate the binaries
# (A/B/A/B) so that a noisy machine hits them alike.
#
#   scripts/bench-memory.sh [BINARY...]
#
# Environment: MESSAGES (500000), CONNECTIONS (2000), ROUNDS (2), BENCH_DIR (where the
# data directories go, default /tmp). Measures, asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-500000}
CONNECTIONS=${CONNECTIONS:-2000}
ROUNDS=${ROUNDS:-2}
if [ $# -eq 0 ]; then
  cargo build --release --bin strata
  set -- target/release/strata
fi
bench_bin=$(realpath "$1")
source scripts/bench-common.sh
scratch memory
rss_mb() { awk -v f="$2" '$1 == f":" { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$1/stat"; }

# Opens every connection first, then sends each its requests, then closes them all.
burst() {
  python3 - "$1" "$CONNECTIONS" <<'PY'
import socket, struct, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
def frame(api, version, corr, body=b""):
    head = struct.pack(">hhih", api, version, corr, 5) + b"burst"
    return struct.pack(">i", len(head) + len(body)) + head + body
def read(s):
    size = struct.unpack(">i", s.recv(4, socket.MSG_WAITALL))[0]
    return s.recv(size, socket.MSG_WAITALL)
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
for i, s in enumerate(socks):
    s.sendall(frame(18, 0, i) + frame(3, 1, i, struct.pack(">i", -1)))
for s in socks:
    read(s); read(s); s.close()
PY
}

printf '%-28s %8s %8s %8s %8s %8s  %s\n' binary idle_MB peak_MB burst_MB settled_MB cpu_s "bench (produce / consume)"
for round in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    dir="$root/$round-$(basename "$bin")"
    port=$(free_port) http=$(free_port) meta=$(free_port)
    env -u STRATA_BIN "$bin" serve --data-dir "$dir" --kafka-listen "127.0.0.1:$port" \
      --http-listen "127.0.0.1:$http" --meta-listen "127.0.0.1:$meta" >"$root/log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf "127.0.0.1:$http/readyz" >/dev/null && break; sleep 0.1; done
    sleep 3
    idle=$(rss_mb "$pid" VmRSS)
    load=$("$bench_bin" bench --bootstrap "127.0.0.1:$port" --messages "$MESSAGES" 2>/dev/null |
      grep -oE '^(produce|consume)|[0-9.]+ MB/s' | paste -sd' ')
    peak=$(rss_mb "$pid" VmHWM)
    burst "$port"
    after=$(rss_mb "$pid" VmRSS)
    sleep 10
    settled=$(rss_mb "$pid" VmRSS)
    cpu=$(cpu_s "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    rm -rf "$dir"
    printf '%-28s %8s %8s %8s %8s %8s  %s\n' "$(basename "$(dirname "$bin")")/$(basename "$bin")" \
      "$idle" "$peak" "$after" "$settled" "$cpu" "$load"
  done
done
