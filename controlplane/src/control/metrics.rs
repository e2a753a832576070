//! `/metrics`: the workers' counters and the saturation report in Prometheus text
//! format (0.0.4), through prometheus-client. Names start with `holdfast_`, counters
//! end in `_total`, and the only labels are `worker`, `interface`, `reason`, `class`
//! and `timeout` — never anything per flow, so the series count is fixed by the
//! number of workers.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use holdfast_dataplane::stats::ForwardDrop;
use holdfast_pipeline::conntrack::TimerClass;
use holdfast_pipeline::conntrack::pressure::Admission;
use holdfast_pipeline::{DropReason, PassKind};

use super::View;
use super::saturation::all_events;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
struct Metrics(View);

fn write<V: EncodeCounterValue + EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    rows: Vec<(Labels, V)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in rows {
        let mut f = m.encode_family(&labels)?;
        match ty {
            MetricType::Counter => f.encode_counter::<NoLabelSet, V, f64>(&v, None)?,
            _ => f.encode_gauge(&v)?,
        }
    }
    Ok(())
}

fn w(i: usize) -> Labels {
    vec![("worker", i.to_string())]
}

fn wl(i: usize, k: &'static str, v: &str) -> Labels {
    vec![("worker", i.to_string()), (k, v.to_string())]
}

const SIDES: [&str; 2] = ["outside", "inside"];

impl Collector for Metrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let v = &self.0;
        let s = &v.snaps;
        let per = |f: &dyn Fn(usize) -> u64| s.iter().enumerate().map(|(i, _)| (w(i), f(i))).collect::<Vec<_>>();
        let per_side = |f: &dyn Fn(usize, usize) -> u64| {
            let mut rows = Vec::new();
            for i in 0..s.len() {
                for (k, side) in SIDES.iter().enumerate() {
                    rows.push((wl(i, "interface", side), f(i, k)));
                }
            }
            rows
        };
        write(&mut e, "rx_packets", "Frames received per worker and interface.", Counter, per_side(&|i, k| s[i].rx[k]))?;
        write(&mut e, "rx_bytes", "Bytes received per worker and interface.", Counter, per_side(&|i, k| s[i].rx_bytes[k]))?;
        write(&mut e, "tx_packets", "Frames transmitted per worker and interface.", Counter, per_side(&|i, k| s[i].tx[k]))?;
        write(&mut e, "tx_bytes", "Bytes transmitted per worker and interface.", Counter, per_side(&|i, k| s[i].tx_bytes[k]))?;
        write(
            &mut e,
            "tx_lost",
            "Frames queued for transmission that never left: their socket closed when the interface went away.",
            Counter,
            per_side(&|i, k| s[i].tx_lost[k]),
        )?;
        write(&mut e, "rebinds", "Times a worker re-opened its sockets (an interface came back).", Counter, per(&|i| s[i].rebinds))?;
        let up = SIDES.iter().enumerate().map(|(k, side)| (vec![("interface", side.to_string())], u64::from(v.links[k].up))).collect();
        write(&mut e, "interface_up", "1 while the interface is up and Holdfast is attached to it.", Gauge, up)?;
        let mut rows = Vec::new();
        for (i, x) in s.iter().enumerate() {
            for k in PassKind::ALL {
                rows.push((wl(i, "reason", k.name()), x.counters.passed[k as usize]));
            }
        }
        write(&mut e, "passed_packets", "Frames the pipeline passed, by why.", Counter, rows)?;
        let mut rows = Vec::new();
        for (i, x) in s.iter().enumerate() {
            for r in DropReason::ALL {
                rows.push((wl(i, "reason", r.name()), x.counters.dropped[r as usize]));
            }
        }
        write(&mut e, "dropped_packets", "Frames the pipeline dropped, by reason.", Counter, rows)?;
        let mut rows = Vec::new();
        for (i, x) in s.iter().enumerate() {
            for f in ForwardDrop::ALL {
                rows.push((wl(i, "reason", f.name()), x.forward_drops[f as usize]));
            }
        }
        write(&mut e, "forward_drops", "Frames lost between the NIC and the pipeline or after it, by reason.", Counter, rows)?;
        type Field = fn(&holdfast_dataplane::xsk::XdpStats) -> u64;
        let xdp: [(&str, &str, Field); 7] = [
            ("xdp_rx_dropped", "Kernel XDP_STATISTICS rx_dropped.", |x| x.rx_dropped),
            ("xdp_rx_ring_full", "Kernel XDP_STATISTICS rx_ring_full: frames dropped for a full RX ring.", |x| x.rx_ring_full),
            ("xdp_rx_fill_ring_empty", "Kernel XDP_STATISTICS rx_fill_ring_empty_descs.", |x| x.rx_fill_ring_empty_descs),
            ("xdp_rx_invalid_descs", "Kernel XDP_STATISTICS rx_invalid_descs.", |x| x.rx_invalid_descs),
            ("xdp_tx_invalid_descs", "Kernel XDP_STATISTICS tx_invalid_descs.", |x| x.tx_invalid_descs),
            ("xdp_tx_ring_empty", "Kernel XDP_STATISTICS tx_ring_empty_descs.", |x| x.tx_ring_empty_descs),
            ("xdp_syn_shed", "TCP SYNs the XDP program dropped before the RX ring while the worker's ring was over half full (workers.shed_syns).", |x| {
                x.syn_shed
            }),
        ];
        for (name, help, f) in xdp {
            write(&mut e, name, help, Counter, per_side(&|i, k| f(&s[i].xdp[k])))?;
        }
        let mut rows = Vec::new();
        for (i, x) in s.iter().enumerate() {
            for a in Admission::ALL {
                rows.push((wl(i, "class", a.name()), u64::from(x.classes[a as usize])));
            }
        }
        write(&mut e, "table_entries", "Tracked flows by admission class.", Gauge, rows)?;
        write(&mut e, "table_capacity", "Entries each worker's table holds.", Gauge, per(&|i| s[i].table_capacity as u64))?;
        write(&mut e, "flows_created", "Entries inserted.", Counter, per(&|i| s[i].counters.flows_created))?;
        for (name, help, f) in [
            (
                "evictions",
                "Entries evicted to make room, by the class they had.",
                (|x: &holdfast_dataplane::stats::Snapshot, a: usize| x.counters.evictions[a]) as fn(&_, usize) -> u64,
            ),
            ("expirations", "Entries whose timeout ran out, by the class they had.", |x, a| x.counters.expirations[a]),
        ] {
            let mut rows = Vec::new();
            for (i, x) in s.iter().enumerate() {
                for a in Admission::ALL {
                    rows.push((wl(i, "class", a.name()), f(x, a as usize)));
                }
            }
            write(&mut e, name, help, Counter, rows)?;
        }
        let mut rows = Vec::new();
        for (i, x) in s.iter().enumerate() {
            for t in TimerClass::ALL {
                rows.push((wl(i, "timeout", t.name()), x.counters.assured_expirations[t as usize]));
            }
        }
        write(&mut e, "assured_expirations", "Assured entries whose timeout ran out, by the timeout (conntrack.timeouts key).", Counter, rows)?;
        write(&mut e, "flows_closed", "Entries removed by TCP.", Counter, per(&|i| s[i].counters.flows_closed))?;
        write(&mut e, "flows_revoked", "Entries a reload removed because the new rules deny them.", Counter, per(&|i| s[i].counters.flows_revoked))?;
        write(&mut e, "table_full", "New flows refused because the table was full.", Counter, per(&|i| s[i].counters.dropped[DropReason::TableFull as usize]))?;
        write(&mut e, "tombstone_hits", "No-state packets whose removed flow a tombstone remembered.", Counter, per(&|i| s[i].counters.tombstone_hits))?;
        write(
            &mut e,
            "ipv6_pool_full",
            "IPv6 flows refused (as table_full) because the IPv6 address pool (conntrack.ipv6_share) was full.",
            Counter,
            per(&|i| s[i].counters.ipv6_pool_full),
        )?;
        write(
            &mut e,
            "source_recycled",
            "New flows of a source at conntrack.per_source_limit that took the place of that source's oldest non-assured entry.",
            Counter,
            per(&|i| s[i].counters.source_recycled),
        )?;
        write(
            &mut e,
            "streams_held",
            "Non-TCP flows kept evictable (class replied) when they became streams while streams held conntrack.pressure.stream_share of the table (counted per packet).",
            Counter,
            per(&|i| s[i].counters.streams_held),
        )?;
        let scale = s.iter().enumerate().map(|(i, x)| (w(i), x.adaptive_scale)).collect();
        write(&mut e, "adaptive_timeout_scale", "Factor applied to non-assured timeouts under pressure (1 = none).", Gauge, scale)?;
        write(&mut e, "handoff_out", "Frames handed to the worker that owns their flow.", Counter, per(&|i| s[i].handoff_out))?;
        write(&mut e, "handoff_in", "Frames received from other workers.", Counter, per(&|i| s[i].handoff_in))?;
        write(&mut e, "handoff_ring_depth", "Frames waiting in a worker's incoming handoff rings.", Gauge, per(&|i| s[i].handoff_depth))?;
        write(&mut e, "polls", "Worker polls.", Counter, per(&|i| s[i].polls))?;
        write(&mut e, "busy_polls", "Worker polls that found work (or frames waiting for TX room).", Counter, per(&|i| s[i].busy_polls))?;
        write(
            &mut e,
            "tx_blocked_polls",
            "Worker polls that found frames waiting but no TX room on the other side.",
            Counter,
            per(&|i| s[i].tx_blocked_polls),
        )?;
        let busy = v.report.workers.iter().enumerate().map(|(i, r)| (w(i), r.busy)).collect();
        write(&mut e, "busy_ratio", "Polls that found work / all polls, over the last report interval.", Gauge, busy)?;
        let pubs = s.iter().enumerate().map(|(i, x)| (w(i), x.publish_ns as f64 / 1e9)).collect();
        write(&mut e, "publish_seconds", "Time workers spent publishing their counters.", Counter, pubs)?;
        write(&mut e, "deny_log_events", "Denials queued for the deny log.", Counter, per(&|i| s[i].log_events))?;
        write(&mut e, "deny_log_suppressed", "Denials not logged: over log.rate_limit or the queue was full.", Counter, per(&|i| s[i].log_suppressed))?;
        let fill = v.report.workers.iter().enumerate().map(|(i, r)| (w(i), r.table_fill)).collect();
        write(&mut e, "table_fill_ratio", "Entries / capacity.", Gauge, fill)?;
        let ttf = v.report.workers.iter().enumerate().map(|(i, r)| (w(i), r.time_to_full_s.unwrap_or(f64::INFINITY))).collect();
        write(&mut e, "time_to_full_seconds", "At the last interval's net insert rate, seconds until the table is full.", Gauge, ttf)?;
        let fails = v.report.workers.iter().enumerate().map(|(i, r)| (w(i), r.insert_failure_rate)).collect();
        write(&mut e, "insert_failures_per_second", "New flows refused per second (table_full, source_limit).", Gauge, fails)?;
        let active = all_events().map(|n| (vec![("reason", n.to_string())], v.active.iter().filter(|a| a.name == n).count() as u64)).collect();
        write(&mut e, "saturation_active", "Workers (or interfaces) on which a saturation or fault event is raised now.", Gauge, active)?;
        let raised = all_events().map(|n| (vec![("reason", n.to_string())], v.raised_total.get(n).copied().unwrap_or(0))).collect();
        write(&mut e, "saturation_events", "Saturation and fault events raised.", Counter, raised)?;
        write(&mut e, "config_generation", "Reloads applied since start.", Gauge, vec![(vec![], v.generation)])?;
        write(&mut e, "reloads", "Reloads applied.", Counter, vec![(vec![], v.reloads)])?;
        write(&mut e, "reload_failures", "Reloads rejected (the running configuration stayed).", Counter, vec![(vec![], v.reload_failures)])?;
        write(&mut e, "deny_log_written", "Deny log lines written.", Counter, vec![(vec![], v.log_written)])?;
        write(&mut e, "deny_log_write_errors", "Deny log lines that could not be written.", Counter, vec![(vec![], v.log_write_errors)])?;
        write(
            &mut e,
            "stderr_lines_lost",
            "The appliance's own log lines standard error did not take (its reader gone).",
            Counter,
            vec![(vec![], v.stderr_lost)],
        )?;
        let h = &v.http;
        for (name, help, x) in [
            ("http_requests", "Requests the control endpoint answered.", &h.requests),
            ("http_connections_evicted", "Connections closed to make room (over the connection limit).", &h.evicted),
            ("http_connections_idle_closed", "Connections closed after the idle timeout.", &h.idle_closed),
            ("http_accept_errors", "accept() failures on the control endpoint (descriptors exhausted, ...).", &h.accept_errors),
            (
                "http_unauthorized",
                "Requests refused: missing or wrong token; without one, from another host or from a local user other than root and the appliance's.",
                &h.unauthorized,
            ),
            ("http_bad_bodies", "Request bodies over the limit or not sent in time.", &h.bad_bodies),
            ("http_listings_refused", "Flow listings refused because the most allowed at once were being written.", &h.listings_refused),
        ] {
            write(&mut e, name, help, Counter, vec![(vec![], x.load(std::sync::atomic::Ordering::Relaxed))])?;
        }
        write(
            &mut e,
            "http_connections_open",
            "Connections open on the control endpoint.",
            Gauge,
            vec![(vec![], h.open.load(std::sync::atomic::Ordering::Relaxed))],
        )?;
        write(&mut e, "uptime_seconds", "Seconds since the workers started.", Gauge, vec![(vec![], v.uptime_s)])?;
        if v.sync.is_object() {
            let y = |k: &str| v.sync[k].as_u64().unwrap_or(0);
            for (name, help, key) in [
                ("sync_messages_sent", "Sync messages sent (flows, numbered).", "messages_sent"),
                ("sync_messages_resent", "Sync messages sent again after a NACK.", "messages_resent"),
                ("sync_messages_received", "Sync flow messages received.", "messages_received"),
                ("sync_nacks_sent", "NACKs sent for gaps in the peer's numbering.", "nacks_sent"),
                ("sync_nacks_received", "NACKs the peer sent.", "nacks_received"),
                ("sync_messages_lost", "Messages the peer numbered that never arrived in order.", "messages_lost"),
                ("sync_malformed", "Sync messages refused by the decoder.", "malformed"),
                ("sync_strangers", "Datagrams on the sync port from an address that is not sync.peer (not read).", "strangers"),
                ("sync_cache_full", "Flows the peer sent beyond what the tables can hold (not kept).", "cache_full"),
                ("sync_resend_overflow", "Messages dropped from a full resend queue (a resync recovers them).", "resend_overflow"),
                ("sync_backlog_overflows", "Times the send backlog reached its bound and was dropped (the whole table is sent again).", "backlog_overflows"),
                ("sync_send_errors", "Sync datagrams the socket refused.", "send_errors"),
                ("sync_changes", "Flow changes read from the workers' queues.", "changes"),
                ("sync_changes_lost", "Flow changes that did not fit in a worker's queue (a full sweep recovers them).", "changes_lost"),
                ("sync_sweeps", "Full sweeps of the tables (start, lost changes, resync_interval, the peer's request).", "sweeps"),
                ("sync_not_syncable", "Flows the protocol cannot carry (QinQ ids beyond the 16-bit zone), each time one was to be sent.", "not_syncable"),
            ] {
                write(&mut e, name, help, Counter, vec![(vec![], y(key))])?;
            }
            for (name, help, key) in [
                ("sync_external_cache", "Flows in the external cache (what the peer sent).", "external_cache"),
                ("sync_resend_queue", "Sync messages waiting for the peer's ACK.", "resend_queue"),
                ("sync_send_backlog", "Sync messages made and not yet sent: they wait for room in the window of unacknowledged ones.", "send_backlog"),
            ] {
                write(&mut e, name, help, Gauge, vec![(vec![], y(key))])?;
            }
            write(&mut e, "sync_peer_alive", "1 while the sync peer is heard from.", Gauge, vec![(vec![], u64::from(v.sync["peer_alive"] == true))])?;
            let last = v.sync["last_heard_s"].as_f64().unwrap_or(-1.0);
            write(&mut e, "sync_last_heard_seconds", "Seconds since the sync peer was last heard (-1: never).", Gauge, vec![(vec![], last)])?;
            let took = v.sync["takeover"]["seconds"].as_f64().unwrap_or(0.0);
            write(&mut e, "sync_takeover_seconds", "How long the last takeover's commit took (0: none).", Gauge, vec![(vec![], took)])?;
            let refused: Vec<(Labels, u64)> = ["table_full", "ipv6_pool_full", "source_limit", "invalid"]
                .iter()
                .map(|k| (vec![("reason", k.to_string())], v.sync["takeover"]["refused_by"][*k].as_u64().unwrap_or(0)))
                .collect();
            write(&mut e, "sync_takeover_refused", "Synced flows the last takeover could not commit, by reason.", Gauge, refused)?;
        }
        Ok(())
    }
}

/// The whole `/metrics` page.
pub fn encode(view: &View) -> String {
    let mut reg = Registry::with_prefix("holdfast");
    reg.register_collector(Box::new(Metrics(view.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &reg);
    out
}
