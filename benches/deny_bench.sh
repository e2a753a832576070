#!/usr/bin/env bash
# Deny-log benchmark: a flood of denied 64-byte UDP (nothing is forwarded) through
# Holdfast in the lab, with the deny log off, at the default rate limit (1000/s) and
# with no practical limit (10M/s: every denial the queue takes is formatted and
# written), RUNS runs of SECONDS_PER_RUN each. Prints, per mode, the medians of frames
# judged per second and the worker's busy nanoseconds per frame, and their ratios to
# "off": what logging denials costs the data path.
#
# Needs root. Build first: cargo build --release
#   sudo benches/deny_bench.sh        # RUNS=3 SECONDS_PER_RUN=4
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=deny_bench
. benches/lab_common.sh
SECS=${SECONDS_PER_RUN:-4}
field() { python3 -c "import json,sys; v=json.load(open(sys.argv[1])); t=v['totals']; print(eval(sys.argv[2]))" "$1" "$2"; }

declare -A PPS NS LOGGED
for mode in off 1000 10000000; do
    : > "$WORK/runs"
    for _ in $(seq "$RUNS"); do
        "$HF" lab up >/dev/null
        if [ "$mode" = off ]; then log="off"; rate=0; else log="$WORK/denials.log"; rate=$mode; fi
        rm -f "$WORK/denials.log"
        cat > "$WORK/hf.yaml" <<YAML
zones:
  outside: { interface: hf-out0, queues: 1 }
  inside:  { interface: hf-in0, queues: 1, networks: [10.0.2.0/24] }
workers: { cores: [1] }
control: { listen: off }
log: { denials: "$log", rate_limit: $rate }
policy:
  rules:
    - { name: web, from: outside, to: inside, proto: tcp, dst: 10.0.2.0/24, dst_port: 80, action: allow }
YAML
        ip netns exec hf-fw "$HF" run --config "$WORK/hf.yaml" --quiet --json > "$WORK/out.json" 2> "$WORK/err.txt" &
        APP_PID=$!
        for _ in $(seq 200); do ip -n hf-fw link show hf-in0 | grep -q " xdp" && break; sleep 0.05; done
        dst=$(ip netns exec hf-in cat /sys/class/net/hf-in1/address)
        taskset -c 0 ip netns exec hf-out "$HF" blast --interface hf-out1 --dst-mac "$dst" --flows 10000 --dport 7 --seconds "$SECS" > /dev/null
        kill -TERM "$APP_PID"; wait "$APP_PID" || true; APP_PID=""
        judged=$(field "$WORK/out.json" "t['passed'] + t['dropped']")
        busy=$(field "$WORK/out.json" "t['busy_ns']")
        logged=$(field "$WORK/out.json" "t['log_events']")
        echo "$(awk -v j="$judged" -v s="$SECS" 'BEGIN {printf "%.4f", j / s / 1e6}') $(awk -v b="$busy" -v j="$judged" 'BEGIN {printf "%.1f", b / j}') $logged" >> "$WORK/runs"
        "$HF" lab down >/dev/null
    done
    PPS[$mode]=$(awk '{print $1}' "$WORK/runs" | median)
    NS[$mode]=$(awk '{print $2}' "$WORK/runs" | median)
    LOGGED[$mode]=$(awk '{print $3}' "$WORK/runs" | median)
done

echo
echo "Deny flood: 64-byte UDP to a denied port, 10k flows, ${RUNS} runs of ${SECS} s, medians; generator on core 0, worker on core 1"
printf "%-22s %10s %12s %12s %10s %10s\n" "deny log" "Mpps" "busy ns/pkt" "logged/run" "Mpps/off" "ns/off"
for mode in off 1000 10000000; do
    name=$mode; [ "$mode" = off ] || name="rate_limit $mode"
    printf "%-22s %10s %12s %12s %10s %10s\n" "$name" "${PPS[$mode]}" "${NS[$mode]}" "${LOGGED[$mode]}" \
        "$(awk -v a="${PPS[$mode]}" -v b="${PPS[off]}" 'BEGIN {printf "%.3f", a / b}')" \
        "$(awk -v a="${NS[$mode]}" -v b="${NS[off]}" 'BEGIN {printf "%.3f", a / b}')"
done
