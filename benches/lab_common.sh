# Sourced by the lab benchmarks: the binary, a work directory, cleanup on any exit
# (the appliance stopped, the lab's namespaces removed), the root check, medians.
# Expects NAME (for messages) to be set.
HF=${HOLDFAST:-$PWD/target/release/holdfast}
RUNS=${RUNS:-3}
WORK=$(mktemp -d "/tmp/hf-$NAME.XXXXXX")
APP_PID=""

cleanup() {
    [ -n "$APP_PID" ] && kill -TERM "$APP_PID" 2>/dev/null && wait "$APP_PID" 2>/dev/null || true
    "$HF" lab down >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || { echo "$NAME: needs root (network namespaces, XDP)"; exit 1; }
[ -x "$HF" ] || { echo "$NAME: build first: cargo build --release"; exit 1; }

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
