#!/usr/bin/env bash
# Seeds fuzz/corpus/ from real client traffic: builds strata, runs it behind a recording
# proxy with confluent-kafka and kafka-python clients (scripts/fuzz_corpus.py), and adds
# the request frames, Fetch responses, stored batches and partition directories it saw.
# Needs the test dependencies (scripts/install-test-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --bin strata
.venv/bin/python scripts/fuzz_corpus.py
