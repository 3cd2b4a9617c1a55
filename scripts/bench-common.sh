# Shared by the scripts/bench-*.sh scripts, which source it from the repository root:
# the binary to measure, a scratch directory removed at exit (with the broker it ran),
# free loopback ports, and a single broker on the scratch directory.

# strata_binary: STRATA_BIN, or else a release build of this checkout.
strata_binary() {
  if [[ -z "${STRATA_BIN:-}" ]]; then
    cargo build --release --bin strata
    STRATA_BIN="$PWD/target/release/strata"
  fi
}

# scratch NAME: sets root to a new directory under BENCH_DIR (default TMPDIR, /tmp),
# removed at exit together with the broker whose process id is in pid.
scratch() {
  root=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/strata-$1.XXXXXX")
  pid=""
  trap scratch_cleanup EXIT
}

scratch_cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$root"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_broker: STRATA_BIN serving on root/data (Kafka on port, HTTP on http), once ready.
start_broker() {
  port=$(free_port) http=$(free_port) meta=$(free_port)
  # (STRATA_BIN is the scripts': Strata refuses STRATA_* variables it does not know.)
  env -u STRATA_BIN "$STRATA_BIN" serve --data-dir "$root/data" --kafka-listen "127.0.0.1:$port" \
    --http-listen "127.0.0.1:$http" --meta-listen "127.0.0.1:$meta" >"$root/broker.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$http/readyz" >/dev/null && return; sleep 0.1; done
  echo "the broker did not become ready: see $root/broker.log" >&2
  exit 1
}

# stop_broker: stops it and deletes its data.
stop_broker() {
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  rm -rf "$root/data"
}
