#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs every test dependency, then checks
# formatting and lints, runs the Rust unit and end-to-end tests (real broker processes,
# librdkafka; strata-tier's object-store conformance suite against a local directory and
# a throw-away Ceph radosgw from scripts/rgw.sh) and the client tests driven by pytest
# (confluent-kafka, kafka-python, kcat, KafkaJS consumer groups run as node processes from
# tests/python/test_groups_kafkajs.py, and tiered storage against both object stores in
# tests/python/test_tiered.py, radosgw outages included), with a bounded libFuzzer run of
# every fuzz target in between (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
./scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "building the strata binary"
cargo build --bin strata

step "Rust unit and end-to-end tests"
cargo nextest run --workspace --no-fail-fast

step "fuzzing every decoder of outside bytes (fuzz/, libFuzzer, 20 s per target)"
./scripts/fuzz.sh 20

step "client tests (Python clients, kcat, KafkaJS, tiered storage on radosgw)"
# What the brokers under test will have: a failure that comes from the machine (a disk
# with little room left, too little memory) shows here rather than only as timeouts.
echo "cores: $(nproc); memory: $(free -m | awk '/^Mem:/ {print $7 " MiB available"}')"
df -h "${TMPDIR:-/tmp}" /dev/shm 2>&1 | sed 's/^/    /' || true
# A systemic failure stops after a few tests, with their broker logs in the summary,
# instead of running every remaining test into its timeout.
.venv/bin/python -m pytest tests/python -q --timeout 300 --maxfail 5

step "all tests passed"
