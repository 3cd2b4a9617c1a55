#!/usr/bin/env bash
# Replay throughput side by side, in one run on this machine: a consumer reading a topic
# from offset 0 (1) off the broker's local disk, (1b) again after a broker restart with
# the page cache dropped, (2) from a real S3 server (a throw-away Ceph radosgw from
# scripts/rgw.sh) with the block cache cold, (3) again, from the cache, and (4) once more
# after a broker restart with the page cache dropped, from the cache's recovered disk
# tier (compared with 1 and with 1b, its like).
# Uses the release build (or STRATA_BIN) and `strata bench`; prints bench's lines, the
# ratios, and the CPU time the broker and radosgw spent on each replay (on a small
# machine the S3 server competes with the broker and the consumer for the same cores).
#
#   scripts/bench-replay.sh [MESSAGES] [SIZE]      defaults: 1000000 messages of 1024 B
#
# Environment: BENCH_PARTITIONS (4), BENCH_SEGMENT_BYTES (16 MiB), BENCH_PIN (unset; 1:
# radosgw and its Ceph daemons run on the last CPU, the broker and the consumer on the
# others, for every replay alike, as if the S3 server were another machine). Needs the test
# dependencies (scripts/install-test-deps.sh: radosgw, the Python venv with boto3).
# Not part of the test suite: it measures, it asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES="${1:-1000000}"
SIZE="${2:-1024}"
PARTITIONS="${BENCH_PARTITIONS:-4}"
SEGMENT_BYTES="${BENCH_SEGMENT_BYTES:-16777216}"
rgw_cpus="" strata_cpus=""
if [ -n "${BENCH_PIN:-}" ]; then
  last=$(($(nproc) - 1))
  [ "$last" -ge 1 ] || { echo "BENCH_PIN needs at least 2 CPUs" >&2; exit 2; }
  rgw_cpus="taskset -c $last" strata_cpus="taskset -c 0-$((last - 1))"
fi
TOPIC=replay
BIN="${STRATA_BIN:-target/release/strata}"
PY=.venv/bin/python

work="$(mktemp -d /tmp/strata-bench-replay.XXXXXX)"
broker=""
cleanup() {
  if [ -n "$broker" ]; then
    kill -TERM "$broker" 2>/dev/null || true
    wait "$broker" 2>/dev/null || true
  fi
  scripts/rgw.sh stop "$work/rgw" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ -z "${STRATA_BIN:-}" ]; then
  say "building the release binary"
  CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" cargo build --release --bin strata
fi

say "starting radosgw"
# Room for every object, plus headroom for the OSD's own use.
RGW_MEMSTORE_BYTES=$((MESSAGES * (SIZE + 64) * 3 / 2 + (512 << 20))) \
  $rgw_cpus scripts/rgw.sh start "$work/rgw" >"$work/rgw.env"
set -a
# shellcheck disable=SC1091
. "$work/rgw.env"
set +a
"$PY" - <<EOF
import boto3
boto3.client("s3", endpoint_url="$RGW_ENDPOINT", region_name="$AWS_REGION").create_bucket(Bucket="bench")
EOF

kafka_port="$(free_port)"
http_port="$(free_port)"
start_broker() {
  $strata_cpus env -u STRATA_BIN "$@" "$BIN" serve --data-dir "$work/data" \
    --kafka-listen "127.0.0.1:$kafka_port" --http-listen "127.0.0.1:$http_port" \
    --object-store s3://bench/strata --s3-endpoint "$RGW_ENDPOINT" \
    --s3-allow-http --s3-path-style >>"$work/strata.log" 2>&1 &
  broker=$!
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$broker" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 30 "$work/strata.log" >&2
  echo "the broker did not become ready" >&2
  exit 1
}
stop_broker() {
  kill -TERM "$broker"
  wait "$broker" || true
  broker=""
}
bench() { $strata_cpus env -u STRATA_BIN "$BIN" bench --bootstrap "127.0.0.1:$kafka_port" --topic "$TOPIC" "$@"; }
# Polls the admin API until the Python expression over `ps` (the topic's partitions) holds.
wait_partitions() {
  local what="$1" cond="$2"
  for _ in $(seq 1 600); do
    if curl -fs "http://127.0.0.1:$http_port/api/v1/partitions" |
      "$PY" -c "import json,sys; ps=[p for p in json.load(sys.stdin) if p['topic']=='$TOPIC']; sys.exit(0 if ps and ($cond) else 1)"; then
      return 0
    fi
    sleep 0.5
  done
  echo "timed out waiting for $what" >&2
  exit 1
}
# Ranged GETs the broker has made so far.
get_ranges() {
  curl -fs "http://127.0.0.1:$http_port/metrics" |
    sed -n 's/^strata_objstore_requests_total{op="get_range",outcome="ok"} \([0-9]*\).*/\1/p'
}
# Blocks the cache's disk tier has dropped instead of writing so far.
dropped_blocks() {
  curl -fs "http://127.0.0.1:$http_port/metrics" |
    awk '/^strata_tier_cache_disk_dropped_blocks_total/ { n += $2 } END { print n + 0 }'
}
consume_mbps() { sed -n 's/^consume: .*: \([0-9.]*\) MB\/s.*/\1/p'; }
# CPU seconds (user + system) a process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
# Runs a replay; prints bench's consume line, then the CPU seconds the broker and
# radosgw spent on it.
replay() {
  local rgw b0 r0 out
  rgw="$(cat "$work/rgw/run/radosgw.pid")"
  b0="$(cpu_s "$broker")" r0="$(cpu_s "$rgw")"
  out="$(bench --consume-only)"
  # Shown as it is, on stderr (not `tee /dev/stderr`: reopening it truncates a log file
  # that stderr is redirected to).
  printf '%s\n' "$out" >&2
  grep '^consume:' <<<"$out"
  echo "$(cpu_s "$broker") $b0 $(cpu_s "$rgw") $r0" | awk '{ printf "%.2f %.2f\n", $1 - $2, $3 - $4 }'
}

start_broker
say "producing $MESSAGES messages of $SIZE B to $PARTITIONS partitions"
bench --messages "$MESSAGES" --size "$SIZE" --partitions "$PARTITIONS" \
  --topic-config "segment.bytes=$SEGMENT_BYTES" --produce-only

say "waiting for the uploads (so that they do not compete with the replay)"
# Only the active segments (one per partition) left to upload.
for _ in $(seq 1 1200); do
  pending="$(curl -fs "http://127.0.0.1:$http_port/metrics" | sed -n 's/^strata_unuploaded_segments \([0-9]*\).*/\1/p')"
  [ "${pending:-0}" -le "$PARTITIONS" ] && [ "${pending:-0}" -gt 0 ] && break
  sleep 0.5
done

say "replay 1: from local disk (segments in the page cache, the newest in the tail cache)"
local_out="$(replay)"

say "replay 1b: from local disk after a broker restart, the page cache dropped"
stop_broker
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
start_broker
local_restart_out="$(replay)"

say "waiting until every sealed segment is uploaded and deleted locally"
stop_broker
start_broker STRATA_KAFKA_LOG_LOCAL_RETENTION_BYTES=0 STRATA_KAFKA_LOG_RETENTION_CHECK_INTERVAL_MS=500
# Local copies go only once uploaded: at most the active segment stays.
wait_partitions "uploads and local deletion" "all(p['local_size_bytes'] <= $SEGMENT_BYTES + (1 << 20) for p in ps)"
stop_broker
rm -rf "$work/data/cache"
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
# The cache's disk tier holds the whole topic, so that replay 3 measures the cache
# rather than a cache too small for a sequential replay (which evicts everything first).
cache_bytes=$((MESSAGES * (SIZE + 64) * 5 / 4 + (256 << 20)))
[ "$cache_bytes" -gt 2147483648 ] || cache_bytes=2147483648
cached=(STRATA_KAFKA_LOG_LOCAL_RETENTION_BYTES=0 STRATA_TIER_CACHE_DISK_BYTES="$cache_bytes")
start_broker "${cached[@]}"

say "replay 2: from the object store, block cache cold"
cold_out="$(replay)"
cold_dropped="$(dropped_blocks)"

say "replay 3: from the block cache"
cache_out="$(replay)"

say "replay 4: from the block cache after a restart (its disk tier is recovered)"
stop_broker
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
start_broker "${cached[@]}"
gets_before="$(get_ranges)"
restart_out="$(replay)"
restart_gets=$(($(get_ranges) - gets_before))

local_mbps="$(consume_mbps <<<"$local_out")"
local_restart_mbps="$(consume_mbps <<<"$local_restart_out")"
cold_mbps="$(consume_mbps <<<"$cold_out")"
cache_mbps="$(consume_mbps <<<"$cache_out")"
restart_mbps="$(consume_mbps <<<"$restart_out")"
local_cpu="$(tail -n 1 <<<"$local_out")"
local_restart_cpu="$(tail -n 1 <<<"$local_restart_out")"
cold_cpu="$(tail -n 1 <<<"$cold_out")"
cache_cpu="$(tail -n 1 <<<"$cache_out")"
restart_cpu="$(tail -n 1 <<<"$restart_out")"
say "summary ($MESSAGES x $SIZE B, $PARTITIONS partitions, segment.bytes $SEGMENT_BYTES)"
"$PY" - <<EOF
local, local_restart = $local_mbps, $local_restart_mbps
cold, cache, restart = $cold_mbps, $cache_mbps, $restart_mbps
cpu = {"local": "$local_cpu".split(), "local_restart": "$local_restart_cpu".split(),
       "cold": "$cold_cpu".split(), "cache": "$cache_cpu".split(), "restart": "$restart_cpu".split()}
def line(name, label, mbps, base=None):
    broker, rgw = (float(x) for x in cpu[name])
    ratio = "" if base is None else f"{mbps / base:.2f} x {'local' if base == local else 'local restarted'}"
    print(f"{label:<18}{mbps:8.1f} MB/s   {ratio:<23} CPU s: broker {broker:6.2f}, radosgw {rgw:6.2f}")
line("local", "local disk", local)
line("local_restart", "local, restarted", local_restart, local)
line("cold", "object store cold", cold, local)
line("cache", "block cache", cache, local)
line("restart", "cache, restarted", restart, local)
line("restart", "cache, restarted", restart, local_restart)
print(f"blocks the disk tier dropped during the cold replay: $cold_dropped")
print(f"ranged GETs during the replay after the restart: $restart_gets")
EOF
