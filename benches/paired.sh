#!/usr/bin/env bash
# Time of this tree against another revision, in alternating runs: the way to tell a
# change of a few per cent on a VM whose speed moves by 2x between minutes (the dev
# VMs: docs/performance.md). Each pair runs both profile_burst binaries back to back,
# in alternating order, and the pair's difference is what counts: the median of the
# differences, and in how many pairs this tree was faster. A sign count of 15 of 20
# happens by chance about 2 % of the time, 29 of 40 about 0.3 %; 12 of 24 is no
# evidence either way. Timings include the burst generator, the same in both.
#
#   benches/paired.sh <git rev>                        # 1M flows, mixed burst, 24 pairs
#   FLOWS=10000 MODE=flood PAIRS=40 benches/paired.sh <git rev>
#
# Run nothing else meanwhile. About 5 s a pair at 1M flows, 2 s at 10k.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: benches/paired.sh <git rev>}
FLOWS=${FLOWS:-1000000}
MODE=${MODE:-mixed}
PAIRS=${PAIRS:-24}
BURSTS=${BURSTS:-100000}
WORK=$(mktemp -d /tmp/hf-paired.XXXXXX)
cleanup() {
    git worktree remove --force "$WORK/base" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

git worktree add -q --detach "$WORK/base" "$BASE"
(cd "$WORK/base" && CARGO_TARGET_DIR="$WORK/target-base" cargo build --release -q -p holdfast-benches --example profile_burst)
cargo build --release -q -p holdfast-benches --example profile_burst
cp "$WORK/target-base/release/examples/profile_burst" "$WORK/base.bin"
cp target/release/examples/profile_burst "$WORK/this.bin"

ns() { "$1" "$FLOWS" "$BURSTS" "$MODE" | awk '{print $3}'; }
for i in $(seq 1 "$PAIRS"); do
    if [ $((i % 2)) = 1 ]; then
        t=$(ns "$WORK/this.bin"); b=$(ns "$WORK/base.bin")
    else
        b=$(ns "$WORK/base.bin"); t=$(ns "$WORK/this.bin")
    fi
    echo "$b $t"
done | awk -v base="$BASE" -v flows="$FLOWS" -v mode="$MODE" '
    function median(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { n++; b[n] = $1; t[n] = $2; d[n] = $2 - $1; if ($2 < $1) lower++; lo = (n == 1 || $1 < lo) ? $1 : lo; hi = (n == 1 || $1 > hi) ? $1 : hi }
    END {
        printf "%s flows, %s burst, %d pairs, ns a packet (generation included)\n", flows, mode, n
        printf "median: %s %.1f, this tree %.1f; paired difference median %+.1f, this tree faster in %d of %d pairs (%s alone spread %.1f-%.1f)\n", base, median(b, n), median(t, n), median(d, n), lower, n, base, lo, hi
    }'
