#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for SECONDS each (default 30), starting from the
# checked-in seeds (fuzz/seeds/<target>) in a scratch corpus; prints executions and
# coverage per target; exits non-zero on the first crash, leaving the crashing input in
# the scratch directory. Needs the nightly toolchain and cargo-fuzz (`cargo install
# cargo-fuzz`); with --install, gets them when missing. A crash found here goes into
# fuzz/regressions/<target>/ so that `cargo test` replays it on stable.
set -euo pipefail
cd "$(dirname "$0")/.."
install=0
if [ "${1:-}" = "--install" ]; then install=1; shift; fi
seconds=${1:-30}
# Without the tools (and no way to get them: rustup's server may be out of reach), the
# fuzz runs are skipped loudly rather than failing a build that has nothing wrong.
if ! cargo +nightly --version >/dev/null 2>&1; then
    if [ $install = 1 ] && rustup toolchain install nightly --profile minimal; then :; else
        echo "fuzz: SKIPPED: needs the nightly toolchain (rustup toolchain install nightly)" >&2; exit $((2 - 2 * install)); fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    if [ $install = 1 ] && cargo install cargo-fuzz --locked --version 0.13.2; then :; else
        echo "fuzz: SKIPPED: needs cargo-fuzz (cargo install cargo-fuzz)" >&2; exit $((2 - 2 * install)); fi
fi
scratch=$(mktemp -d /tmp/holdfast-fuzz.XXXXXX)
(cd fuzz && cargo +nightly fuzz build -O)
for t in frame engine config capture snapshot endpoint sync replay; do
    mkdir -p "$scratch/$t/corpus" "$scratch/$t/artifacts"
    log="$scratch/$t/log"
    if ! (cd fuzz && cargo +nightly fuzz run -O "$t" "$scratch/$t/corpus" "seeds/$t" -- \
            -max_total_time="$seconds" -seed=1 -print_final_stats=1 \
            -artifact_prefix="$scratch/$t/artifacts/") >"$log" 2>&1; then
        echo "fuzz: $t FAILED; the input is in $scratch/$t/artifacts/:" >&2
        grep -E "panicked|ERROR|SUMMARY" -A3 "$log" | head -20 >&2
        exit 1
    fi
    execs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
    cov=$(grep -E '^#[0-9]+.*cov:' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+' || echo "cov: ?")
    echo "fuzz: $t ok: $execs executions in ${seconds} s, $cov"
done
rm -rf "$scratch"
