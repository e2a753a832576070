#!/usr/bin/env bash
# Lab benchmark: Holdfast (AF_XDP, inline, layer 2) against Linux kernel forwarding with
# an equivalent nftables stateful rule set, on the same veth topology
# (hf-out -- hf-fw -- hf-in) with the same 64-byte UDP generator (`holdfast blast`),
# at 1, 10k and 100k flows, RUNS runs each. Prints medians and ratios.
#
# Needs root. Build first: cargo build --release
#   sudo benches/lab_bench.sh            # RUNS=3 SECONDS_PER_RUN=5 FLOWS="1 10000 100000"
#
# Cores: the generator is pinned to GEN_CORE (0); Holdfast's worker to APP_CORE (1); for
# the kernel, RPS steers hf-out0's receive work to APP_CORE, so the router gets a core of
# its own too. "cycles/pkt" = (busy CPU time of the whole machine during the run, from
# /proc/stat, minus the generator's own CPU time) x clock rate / frames forwarded: the
# appliance's cost including the kernel work done for it. For Holdfast, "worker
# cycles/pkt" is the worker's own count of busy time (polls that found work).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=lab_bench
. benches/lab_common.sh
SECS=${SECONDS_PER_RUN:-5}
FLOWS=${FLOWS:-"1 10000 100000"}
SYSTEMS=${SYSTEMS:-"holdfast kernel"}
GEN_CORE=${GEN_CORE:-0}
APP_CORE=${APP_CORE:-1}

HZ=$(getconf CLK_TCK)
MHZ=$(awk -F: '/cpu MHz/ {gsub(/ /, "", $2); print $2; exit}' /proc/cpuinfo)
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
rx_count() { ip netns exec hf-in cat /sys/class/net/hf-in1/statistics/rx_packets; }
mac_of() { ip netns exec "$1" cat "/sys/class/net/$2/address"; }

# One run: prints "mpps cycles_per_packet".
run_once() { # dst_mac flows
    local r0 b0 r1 b1 out sent cpu
    r0=$(rx_count); b0=$(busy_ticks)
    out=$(taskset -c "$GEN_CORE" ip netns exec hf-out "$HF" blast --interface hf-out1 --dst-mac "$1" --flows "$2" --seconds "$SECS")
    sleep 0.2
    r1=$(rx_count); b1=$(busy_ticks)
    cpu=$(echo "$out" | sed -E 's/.*"cpu_s":([0-9.e-]+).*/\1/')
    sent=$(echo "$out" | sed -E 's/.*"sent":([0-9]+).*/\1/')
    awk -v r=$((r1 - r0)) -v b=$((b1 - b0)) -v hz="$HZ" -v mhz="$MHZ" -v cpu="$cpu" -v s="$SECS" -v sent="$sent" \
        'BEGIN { app = b / hz - cpu; if (app < 0) app = 0; printf "%.4f %.0f %.4f\n", r / s / 1e6, (r > 0 ? app * mhz * 1e6 / r : 0), sent / s / 1e6 }'
}

# The receiving end host drops the benchmark's UDP at its ingress hook: otherwise the
# inside namespace's IP stack would look up a socket for port 9, find none and try to
# send a (rate-limited) ICMP port unreachable -- about half of the appliance core's
# cycles, spent by the sink, not the appliance. Same sink for both systems.
cheap_sink() {
    ip netns exec hf-in nft -f - <<NFT
table netdev hfsink {
    chain ingress { type filter hook ingress device "hf-in1" priority 0; udp dport 9 drop; }
}
NFT
}


# --- Holdfast -------------------------------------------------------------------------
setup_holdfast() {
    "$HF" lab up
    cheap_sink
    cat > "$WORK/bench.yaml" <<YAML
zones:
  outside: { interface: hf-out0, queues: 1 }
  inside:  { interface: hf-in0, queues: 1, networks: [10.0.2.0/24] }
workers: { cores: [$APP_CORE], burst: 64, idle: adaptive, umem_frames: 8192, ring_size: 2048 }
conntrack: { capacity: 262144 }
policy:
  rules:
    - { from: outside, to: inside, proto: udp, dst: 10.0.2.0/24, dst_port: 9, action: allow }
    - { proto: icmp, action: allow }
YAML
    ip netns exec hf-fw "$HF" run --config "$WORK/bench.yaml" --quiet --json > "$WORK/holdfast.json" 2> "$WORK/holdfast.err" &
    APP_PID=$!
    for _ in $(seq 200); do
        ip -n hf-fw link show hf-in0 | grep -q " xdp" && return 0
        sleep 0.05
    done
    cat "$WORK/holdfast.err"; return 1
}

# --- Linux: a router with nf_conntrack and the same rules ------------------------------
setup_kernel() {
    "$HF" lab up
    cheap_sink
    ip -n hf-out addr flush dev hf-out1
    ip -n hf-out addr add 10.0.1.1/24 dev hf-out1
    ip -n hf-out addr add 10.0.1.2/24 dev hf-out1
    ip -n hf-out route add 10.0.2.0/24 via 10.0.1.254
    ip -n hf-in addr flush dev hf-in1
    ip -n hf-in addr add 10.0.2.1/24 dev hf-in1
    ip -n hf-in route add 10.0.1.0/24 via 10.0.2.254
    ip -n hf-fw addr add 10.0.1.254/24 dev hf-out0
    ip -n hf-fw addr add 10.0.2.254/24 dev hf-in0
    ip netns exec hf-fw sysctl -qw net.ipv4.ip_forward=1
    ip netns exec hf-fw nft -f - <<NFT
table inet hfbench {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ct state new iifname "hf-out0" ip daddr 10.0.2.0/24 udp dport 9 accept
        ct state new icmp type echo-request accept
    }
}
NFT
    ip netns exec hf-fw sysctl -qw net.netfilter.nf_conntrack_max=262144 2>/dev/null || true
    # The router's receive work on its own core, as Holdfast's worker has.
    ip netns exec hf-fw sh -c "printf %x $((1 << APP_CORE)) > /sys/class/net/hf-out0/queues/rx-0/rps_cpus"
    ip netns exec hf-out ping -c 1 -W 1 10.0.2.1 >/dev/null   # ARP on both sides
}

declare -A MPPS CYC OFFER WORKER_CYC
for system in $SYSTEMS; do
    for flows in $FLOWS; do
        "setup_$system" >/dev/null
        if [ "$system" = holdfast ]; then dst=$(mac_of hf-in hf-in1); else dst=$(mac_of hf-fw hf-out0); fi
        : > "$WORK/runs"
        for _ in $(seq "$RUNS"); do run_once "$dst" "$flows" >> "$WORK/runs"; done
        MPPS[$system,$flows]=$(awk '{print $1}' "$WORK/runs" | median)
        CYC[$system,$flows]=$(awk '{print $2}' "$WORK/runs" | median)
        OFFER[$system,$flows]=$(awk '{print $3}' "$WORK/runs" | median)
        if [ "$system" = holdfast ]; then
            kill -TERM "$APP_PID"; wait "$APP_PID" || true; APP_PID=""
            fwd=$(sed -E 's/.*"totals":.*"tx":\{"inside":([0-9]+).*/\1/' "$WORK/holdfast.json")
            busy=$(sed -E 's/.*"totals":.*"busy_ns":([0-9]+).*/\1/' "$WORK/holdfast.json")
            WORKER_CYC[$flows]=$(awk -v b="$busy" -v f="$fwd" -v mhz="$MHZ" 'BEGIN {printf "%.0f", (f > 0 ? b * mhz / 1000 / f : 0)}')
        fi
        "$HF" lab down >/dev/null
    done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a != "" && b > 0) printf "%.2f", a / b; else printf "-"}'; }
echo
echo "Lab benchmark: 64-byte UDP, ${RUNS} runs of ${SECS} s each, medians; generator on core $GEN_CORE, appliance on core $APP_CORE; ${MHZ} MHz"
echo "(offered: what the generator sent; forwarded equal to offered means the generator, not the appliance, was the limit)"
printf "%-7s| %-37s| %-28s| %-s\n" "" "Holdfast (AF_XDP, copy mode)" "Linux forwarding + nftables" "Holdfast/Linux"
printf "%-7s| %8s %8s %8s %8s | %8s %8s %8s | %6s %7s\n" flows Mpps offered cyc/pkt wcyc/pkt Mpps offered cyc/pkt Mpps cyc/pkt
for flows in $FLOWS; do
    printf "%-7s| %8s %8s %8s %8s | %8s %8s %8s | %6s %7s\n" "$flows" \
        "${MPPS[holdfast,$flows]:--}" "${OFFER[holdfast,$flows]:--}" "${CYC[holdfast,$flows]:--}" "${WORKER_CYC[$flows]:--}" \
        "${MPPS[kernel,$flows]:--}" "${OFFER[kernel,$flows]:--}" "${CYC[kernel,$flows]:--}" \
        "$(ratio "${MPPS[holdfast,$flows]:-}" "${MPPS[kernel,$flows]:-}")" \
        "$(ratio "${CYC[holdfast,$flows]:-}" "${CYC[kernel,$flows]:-}")"
done
