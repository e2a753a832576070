#!/usr/bin/env bash
# Instructions per packet of the pipeline, counted by valgrind (callgrind), not timed:
# the same on every machine of one kind and in every run, so a change that moves them
# by 2 % shows even on a VM whose timings move by 20 % (the dev VM has no hardware
# counters for `perf stat`). profile_burst runs the targets bench's mixed burst (10k
# flows) and its SYN flood on a full table, each at two run lengths; the difference
# divided by the packets between them leaves out building the table. The burst
# generator's own instructions are included (about 75 a packet in the mixed burst).
#
#   benches/instructions.sh                 # this tree
#   BASE=<git rev> benches/instructions.sh  # also that revision, built in a worktree,
#                                           # and the ratio
#   MISSES=1 benches/instructions.sh        # also cache misses per packet (cachegrind)
#
# MISSES=1 stands in for `perf stat`'s cache misses where there are no hardware
# counters: cachegrind simulates the caches with a 1 MiB last level over MISS_FLOWS
# flows (200,000 by default: a table ~20x larger than that cache, so misses behave as
# at 1M flows in a real L3) and prints D1 and LL misses per packet, the same
# difference of two run lengths. Software prefetches are not simulated: the misses
# count the lines a packet touches that were not in cache, hidden by a prefetch or not.
# Needs valgrind (apt-get install valgrind). About 1 minute per revision (2 with
# MISSES=1).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "instructions.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
FLOWS=${FLOWS:-10000}
SHORT=${SHORT:-500}
LONG=${LONG:-1500}
WORK=$(mktemp -d /tmp/hf-instr.XXXXXX)
cleanup() {
    if [ -n "${BASE:-}" ]; then git worktree remove --force "$WORK/base" >/dev/null 2>&1 || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# instructions <binary> <mix: mixed|flood> -> instructions per packet
instructions() {
    local bin=$1 mix=$2 n total=()
    for n in "$SHORT" "$LONG"; do
        valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$bin" "$FLOWS" "$n" "$mix" >/dev/null 2>&1
        total+=("$(awk '/^(summary|totals):/ {print $2; exit}' "$WORK/cg.out")")
    done
    awk -v a="${total[0]}" -v b="${total[1]}" -v s="$SHORT" -v l="$LONG" 'BEGIN { printf "%.1f\n", (b - a) / ((l - s) * 64) }'
}

# misses <binary> <mix> -> "D1 LL" misses per packet at MISS_FLOWS flows
misses() {
    local bin=$1 mix=$2 n d=() l=()
    for n in 300 1300; do
        valgrind --tool=cachegrind --cache-sim=yes --LL=1048576,16,64 --cachegrind-out-file=/dev/null \
            "$bin" "$MISS_FLOWS" "$n" "$mix" >"$WORK/cachegrind.log" 2>&1
        d+=("$(awk '/D1  misses:/ {gsub(",", "", $4); print $4}' "$WORK/cachegrind.log")")
        l+=("$(awk '/LL misses:/ {gsub(",", "", $4); print $4}' "$WORK/cachegrind.log")")
    done
    awk -v d1="${d[0]}" -v d2="${d[1]}" -v l1="${l[0]}" -v l2="${l[1]}" 'BEGIN { printf "%.3f %.3f\n", (d2 - d1) / 64000, (l2 - l1) / 64000 }'
}
MISS_FLOWS=${MISS_FLOWS:-200000}

build() { # <tree> <target dir> -> path of profile_burst
    (cd "$1" && CARGO_TARGET_DIR="$2" cargo build --release -q -p holdfast-benches --example profile_burst)
    echo "$2/release/examples/profile_burst"
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $FLOWS flows; instructions per packet (callgrind)"
cur=$(build . "$PWD/target")
declare -A CUR
for mix in mixed flood; do CUR[$mix]=$(instructions "$cur" "$mix"); done
if [ -n "${BASE:-}" ]; then
    git worktree add --detach -f "$WORK/base" "$BASE" >/dev/null 2>&1
    base=$(build "$WORK/base" "$WORK/base-target")
    for mix in mixed flood; do
        b=$(instructions "$base" "$mix")
        awk -v m="$mix" -v b="$b" -v c="${CUR[$mix]}" -v r="$BASE" 'BEGIN { printf "%-6s %s: %7.1f   this tree: %7.1f   ratio %.3f\n", m, r, b, c, c / b }'
    done
else
    for mix in mixed flood; do printf "%-6s this tree: %7.1f\n" "$mix" "${CUR[$mix]}"; done
fi
if [ -n "${MISSES:-}" ]; then
    echo "cache misses per packet at $MISS_FLOWS flows (cachegrind, 1 MiB last level): D1 / LL"
    for mix in mixed flood; do
        read -r cd cl < <(misses "$cur" "$mix")
        if [ -n "${BASE:-}" ]; then
            read -r bd bl < <(misses "$base" "$mix")
            printf "%-6s %s: %.3f / %.3f   this tree: %.3f / %.3f\n" "$mix" "$BASE" "$bd" "$bl" "$cd" "$cl"
        else
            printf "%-6s this tree: %.3f / %.3f\n" "$mix" "$cd" "$cl"
        fi
    done
fi
