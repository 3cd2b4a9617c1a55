#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ with libFuzzer for a bounded time each, on stable Rust.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 20 s, every target)
#
# The targets are built with LLVM's coverage instrumentation (the flags cargo-fuzz passes,
# all stable -C options) in fuzz/target, apart from the main build. Each run starts from
# the committed corpus in fuzz/corpus/<target>/ (real client traffic, from
# scripts/fuzz-corpus.sh, and every input that once crashed), so the corpus is replayed
# first; new inputs libFuzzer finds go to a scratch directory, not into the repository.
# A crash, a hang (-timeout) or a memory blow-up (-rss_limit_mb) fails the script and
# leaves the input in fuzz/artifacts/: fix the bug, then move the input into the target's
# corpus as a regression.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

seconds="${1:-20}"
shift || true
triple="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
cargo build --release --locked --target "$triple" --bins

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(ls fuzz_targets | sed 's/\.rs$//')
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mkdir -p artifacts
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "corpus/$t"
    echo "==> fuzzing $t for ${seconds}s ($(ls "corpus/$t" | wc -l) corpus inputs)"
    if ! "target/$triple/release/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 -artifact_prefix="artifacts/$t-" \
        "$scratch/$t" "corpus/$t" >"$scratch/$t.log" 2>&1; then
        grep -v '^#' "$scratch/$t.log" | tail -40
        echo "fuzz target $t failed; the input is in fuzz/artifacts/" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)|DONE' "$scratch/$t.log" | tr '\n' ' '
    echo
done
