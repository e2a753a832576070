#!/usr/bin/env bash
# Lab benchmark: Holdfast (AF_XDP, inline, layer 2) against Linux forwarding with an
# equivalent nftables stateful rule set, and against DPDK's testpmd (io forwarding over
# two net_af_xdp vdevs: a user-space forwarder that keeps no state, the floor of any
# AF_XDP forwarder on these veths). Traffic comes from Holdfast's own replayer
# (`holdfast replay --intf1 --intf2`, AF_XDP), which holds both far ends and counts
# what comes out:
#
#   hf-rp: holdfast replay (hf-out1, hf-in1) ══ (hf-out0, hf-in0) hf-fw: system under test
#
# Workloads: 64-byte one-way UDP at FLOWS distinct flows (a capture of one frame per
# flow, looped: every flow is hit once per pass; never answered, so Holdfast holds them
# as unreplied, at most embryonic_share of the table), and a real TCP capture
# (tests/data/webfarm-small.pcap, both directions, flow order kept, --unique-ip so
# each loop is new connections). Top speed, SECONDS_PER_RUN each, RUNS runs, medians.
#
# Needs root and dpdk-testpmd (apt-get install dpdk-dev). Build first: cargo build --release
#   sudo benches/lab_bench.sh       # RUNS=3 SECONDS_PER_RUN=5 FLOWS="1 10000 100000 1000000"
#
# Cores: the replayer on GEN_CORE (0), the system under test on APP_CORE (1) (Holdfast's
# worker, testpmd's forwarding lcore, the router's receive work through RPS). Per
# forwarded frame: "ucyc" and "kcyc" are APP_CORE's user and kernel (system + irq +
# softirq) busy time from /proc/stat x clock rate — this VM has no cycle counters for
# perf. testpmd busy-polls: its user cycles are spent whether or not frames come, so
# they are a cost per frame only when it is saturated; its kernel cycles are not.
# Copy-mode AF_XDP does its receive copy in the sender's softirq: the frames the
# replayer sends are copied into the appliance's rings on GEN_CORE, and what the
# appliance sends is copied into the replayer's on APP_CORE (the same for all three).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=lab_bench
HOLD_PID=""
. benches/lab_common.sh
trap 'cleanup; [ -n "$HOLD_PID" ] && kill "$HOLD_PID" 2>/dev/null; true' EXIT
SECS=${SECONDS_PER_RUN:-5}
FLOWS=${FLOWS:-"1 10000 100000 1000000"}
SYSTEMS=${SYSTEMS:-"holdfast kernel testpmd"}
GEN_CORE=${GEN_CORE:-0}
APP_CORE=${APP_CORE:-1}
TCP_CAPTURE=${TCP_CAPTURE:-tests/data/webfarm-small.pcap}
REPORT=${REPORT:-}
# Holdfast's rings and frames (the worker sleeps in poll() when idle: bursts must fit).
RING_SIZE=${RING_SIZE:-2048}
UMEM_FRAMES=${UMEM_FRAMES:-8192}

HZ=$(getconf CLK_TCK)
MHZ=$(awk -F: '/cpu MHz/ {gsub(/ /, "", $2); print $2; exit}' /proc/cpuinfo)
# APP_CORE's user and kernel ticks.
core_ticks() { awk -v c="cpu$APP_CORE" '$1 == c {print $2 + $3, $4 + $7 + $8}' /proc/stat; }
mac_of() { ip netns exec "$1" cat "/sys/class/net/$2/address"; }

topology() {
    "$HF" lab down >/dev/null 2>&1 || true
    for ns in hf-fw hf-rp; do
        ip netns add $ns
        ip -n $ns link set lo up
        ip netns exec $ns sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    done
    for side in out in; do
        ip link add hf-${side}1 netns hf-rp numtxqueues 1 numrxqueues 1 type veth peer name hf-${side}0 netns hf-fw numtxqueues 1 numrxqueues 1
        ip -n hf-rp link set hf-${side}1 up
        ip -n hf-fw link set hf-${side}0 up
    done
}

# --- Holdfast -------------------------------------------------------------------------
setup_holdfast() {
    topology
    cat > "$WORK/bench.yaml" <<YAML
zones:
  outside: { interface: hf-out0, queues: 1 }
  inside:  { interface: hf-in0, queues: 1, networks: [10.0.2.0/24] }
workers: { cores: [$APP_CORE], burst: 64, idle: adaptive, umem_frames: $UMEM_FRAMES, ring_size: $RING_SIZE }
conntrack: { capacity: 2097152 }
policy:
  rules:
    - { from: outside, to: inside, proto: udp, dst: 10.0.2.0/24, dst_port: 9, action: allow }
    - { from: outside, to: inside, proto: tcp, dst: 10.0.2.0/24, dst_port: 80, action: allow }
    - { proto: icmp, action: allow }
control: { listen: "off" }
log: { denials: "off" }
YAML
    ip netns exec hf-fw "$HF" run --config "$WORK/bench.yaml" --quiet --json > "$WORK/holdfast.json" 2> "$WORK/holdfast.err" &
    APP_PID=$!
    for _ in $(seq 400); do
        ip -n hf-fw link show hf-in0 | grep -q " xdp" && { MACS=""; return 0; }
        sleep 0.05
    done
    cat "$WORK/holdfast.err"; return 1
}

# --- Linux: a router with nf_conntrack and the same rules ------------------------------
setup_kernel() {
    topology
    local out1 in1
    out1=$(mac_of hf-rp hf-out1); in1=$(mac_of hf-rp hf-in1)
    ip -n hf-fw addr add 10.0.1.254/24 dev hf-out0
    ip -n hf-fw addr add 10.0.2.254/24 dev hf-in0
    ip -n hf-fw neigh add 10.0.1.1 lladdr "$out1" dev hf-out0 nud permanent
    ip -n hf-fw route add default via 10.0.1.1 dev hf-out0
    for k in $(seq 1 8); do ip -n hf-fw neigh add 10.0.2.$k lladdr "$in1" dev hf-in0 nud permanent; done
    ip netns exec hf-fw sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    ip netns exec hf-fw sysctl -qw net.ipv4.conf.hf-out0.rp_filter=0 net.ipv4.conf.hf-in0.rp_filter=0
    ip netns exec hf-fw nft -f - <<NFT
table inet hfbench {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ct state new iifname "hf-out0" ip daddr 10.0.2.0/24 udp dport 9 accept
        ct state new iifname "hf-out0" ip daddr 10.0.2.0/24 tcp dport 80 accept
        ct state new icmp type echo-request accept
    }
}
NFT
    sysctl -qw net.netfilter.nf_conntrack_max=2097152 2>/dev/null || true
    ip netns exec hf-fw sysctl -qw net.netfilter.nf_conntrack_max=2097152 2>/dev/null || true
    # The router's receive work on its own core, as Holdfast's worker has.
    ip netns exec hf-fw sh -c "printf %x $((1 << APP_CORE)) > /sys/class/net/hf-out0/queues/rx-0/rps_cpus"
    ip netns exec hf-fw sh -c "printf %x $((1 << APP_CORE)) > /sys/class/net/hf-in0/queues/rx-0/rps_cpus"
    MACS="--dst-mac1 $(mac_of hf-fw hf-out0) --dst-mac2 $(mac_of hf-fw hf-in0)"
}

# --- DPDK testpmd: io forwarding between two AF_XDP vdevs -----------------------------
setup_testpmd() {
    topology
    rm -f "$WORK/tp.in"; mkfifo "$WORK/tp.in"
    # Non-interactive testpmd waits on standard input to stop: a fifo kept open.
    sleep 100000 > "$WORK/tp.in" &
    HOLD_PID=$!
    ip netns exec hf-fw dpdk-testpmd -l "$GEN_CORE,$APP_CORE" --main-lcore "$GEN_CORE" --no-pci --no-huge -m 1024 \
        --vdev net_af_xdp0,iface=hf-out0 --vdev net_af_xdp1,iface=hf-in0 -- \
        --forward-mode=io --nb-cores=1 --auto-start < "$WORK/tp.in" > "$WORK/testpmd.log" 2>&1 &
    APP_PID=$!
    # Ready once its AF_XDP PMD has attached XDP to both ports (its output is buffered).
    for _ in $(seq 400); do
        if ip -n hf-fw link show hf-out0 | grep -q " xdp" && ip -n hf-fw link show hf-in0 | grep -q " xdp"; then
            sleep 1; MACS=""; return 0
        fi
        sleep 0.05
    done
    cat "$WORK/testpmd.log"; return 1
}

stop_system() {
    if [ -n "$APP_PID" ]; then kill -TERM "$APP_PID" 2>/dev/null || true; wait "$APP_PID" 2>/dev/null || true; APP_PID=""; fi
    if [ -n "${HOLD_PID:-}" ]; then kill "$HOLD_PID" 2>/dev/null || true; wait "$HOLD_PID" 2>/dev/null || true; HOLD_PID=""; fi
    "$HF" lab down >/dev/null
}

printf '10.0.2.0/24 server\n0.0.0.0/0 client\n' > "$WORK/sides"

# One run: prints "fwd_mpps offered_mpps ucyc kcyc".
run_once() { # capture extra-flags...
    local cap=$1; shift
    local t0 t1 out
    t0=$(core_ticks)
    # shellcheck disable=SC2086
    out=$(taskset -c "$GEN_CORE" ip netns exec hf-rp "$HF" replay --pcap "$cap" --intf1 hf-out1 --intf2 hf-in1 --side-map "$WORK/sides" \
        --topspeed --loop 0 --duration "${SECS}s" --json $MACS "$@")
    t1=$(core_ticks)
    echo "$out" > "$WORK/last.json"
    python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))
t0, t1 = sys.argv[2].split(), sys.argv[3].split()
hz, mhz = float(sys.argv[4]), float(sys.argv[5])
s = v["actual"]["seconds"]; fwd = v["emerged"]["forwarded"]; sent = v["actual"]["packets"]
cyc = lambda a, b: (int(b) - int(a)) / hz * mhz * 1e6 / fwd if fwd else 0
print("%.4f %.4f %.0f %.0f" % (fwd / s / 1e6, sent / s / 1e6, cyc(t0[0], t1[0]), cyc(t0[1], t1[1])))
' "$WORK/last.json" "$t0" "$t1" "$HZ" "$MHZ"
}

WORKLOADS=""
for f in $FLOWS; do
    "$HF" gen udp --flows "$f" --out "$WORK/udp-$f.pcap" >/dev/null
    WORKLOADS="$WORKLOADS udp-$f"
done
WORKLOADS="$WORKLOADS tcp"

declare -A R
NOTES=""
for system in $SYSTEMS; do
    for w in $WORKLOADS; do
        "setup_$system" >/dev/null
        : > "$WORK/runs"
        for _ in $(seq "$RUNS"); do
            if [ "$w" = tcp ]; then
                run_once "$TCP_CAPTURE" --unique-ip --order flow >> "$WORK/runs"
            else
                run_once "$WORK/$w.pcap" --order none >> "$WORK/runs"
            fi
        done
        for k in 1 2 3 4; do R[$system,$w,$k]=$(awk -v k=$k '{print $k}' "$WORK/runs" | median); done
        stop_system
        if [ "$system" = holdfast ]; then
            # Where Holdfast's losses were counted, over all runs of this workload.
            NOTES="$NOTES$(python3 -c '
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{")]
t = json.loads(lines[-1])["totals"] if lines else {}
x = t.get("xdp", {})
ring = sum(x.get(s, {}).get(k, 0) for s in ("outside", "inside") for k in ("rx_ring_full", "rx_dropped"))
fwd = sum(v for v in t.get("forward_drops", {}).values())
print("  %-11s holdfast: pipeline drops %s, RX rings %d, forwarding %d, busy %.0f %%" % (sys.argv[2], t.get("drops", {}), ring, fwd, 100 * t.get("busy_ratio", 0)))
' "$WORK/holdfast.json" "$w")
"
        fi
    done
done

echo
echo "Lab benchmark: ${RUNS} runs of ${SECS} s at top speed, medians; replayer on core $GEN_CORE, system under test on core $APP_CORE; ${MHZ} MHz; $(nproc) cores"
echo "fwd: forwarded Mpps; off: offered (what the replayer sent); ucyc/kcyc: core $APP_CORE's user/kernel cycles per forwarded frame"
printf "%-11s" "workload"
for s in $SYSTEMS; do printf "| %-30s" "$s"; done
echo
printf "%-11s" ""
for _ in $SYSTEMS; do printf "| %7s %7s %7s %6s " fwd off ucyc kcyc; done
echo
for w in $WORKLOADS; do
    printf "%-11s" "$w"
    for s in $SYSTEMS; do printf "| %7s %7s %7s %6s " "${R[$s,$w,1]:--}" "${R[$s,$w,2]:--}" "${R[$s,$w,3]:--}" "${R[$s,$w,4]:--}"; done
    echo
done
[ -n "$NOTES" ] && printf "Where Holdfast lost what it did not forward:\n%s" "$NOTES"
if [ -n "$REPORT" ]; then
    for w in $WORKLOADS; do
        for s in $SYSTEMS; do echo "{\"workload\":\"$w\",\"system\":\"$s\",\"fwd_mpps\":${R[$s,$w,1]:-0},\"offered_mpps\":${R[$s,$w,2]:-0},\"ucyc\":${R[$s,$w,3]:-0},\"kcyc\":${R[$s,$w,4]:-0}}"; done
    done > "$WORK/results.jsonl"
    "$HF" report bench --input "$WORK/results.jsonl" --out "$REPORT"
    echo "report: $REPORT"
fi
