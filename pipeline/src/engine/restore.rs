//! A table taken out as snapshot records and put back after a restart
//! ([`crate::snapshot`] has the bytes): every time becomes an age on the way out and a
//! tick of the new clock on the way in, moved on by the time the process was down.

use super::Engine;
use super::lifecycle::{NoRoom, admission_of};
use super::timers::{abs_ticks, idle_ticks};
use crate::conntrack::conn::cflag;
use crate::conntrack::pressure::Admission;
use crate::parse::proto;
use crate::snapshot::{FlowRecord, TombRecord};
use crate::time::{Duration, Instant};

/// Why a flow record was not put back: the file is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreError {
    /// The flow is already in the table: the snapshot lists it twice.
    Duplicate,
}

/// What putting one flow record back did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    Flow,
    /// Its timeout ran out while the process was down: not put back.
    Expired,
    /// Its source is over `per_source_limit` (a lower limit than when it was taken).
    OverSourceLimit,
    /// No room left but assured entries (a smaller `conntrack.capacity`, or this
    /// worker's share of the flows under another worker count): not put back.
    NoRoom,
    /// An IPv6 flow, and the IPv6 address pool (`conntrack.ipv6_share`) holds only
    /// assured flows: not put back.
    NoIpv6Room,
}

impl Engine {
    /// Every live flow as a snapshot record at `now`, each admission class list from
    /// its oldest entry, so that eviction picks the same victims after a restart.
    pub fn export(&self, now: Instant) -> impl Iterator<Item = FlowRecord> + '_ {
        self.lists.in_order().map(move |s| self.record_of(s, now))
    }

    /// The live flows among slots `range` as records: a snapshot of a running table
    /// taken a slice at a time between bursts (flows created or removed meanwhile in
    /// slices already passed are missed: such a snapshot is fuzzy, as `conntrack -L`).
    pub fn export_in(&self, range: std::ops::Range<u32>, now: Instant) -> impl Iterator<Item = FlowRecord> + '_ {
        let end = range.end.min(self.table.capacity() as u32);
        (range.start.min(end)..end).filter(|&s| self.table.is_live(s)).map(move |s| self.record_of(s, now))
    }

    pub(super) fn record_of(&self, s: u32, now: Instant) -> FlowRecord {
        let t = now.ticks();
        let mut conn = self.table.conns[s as usize];
        let aux = self.table.aux[s as usize];
        let mut stats = self.table.stats_of(s);
        // Without accounting the creation tick is not kept: age 0.
        let age = if self.table.accounting() { idle_ticks(t, stats.created()) } else { 0 };
        let idle = idle_ticks(t, conn.last_seen);
        // Ticks of this process's clock mean nothing to the next one: ages only.
        conn.last_seen = 0;
        stats.set_created(0);
        let stream_age = if conn.proto() == proto::TCP {
            0
        } else {
            let a = idle_ticks(t, conn.peer[0].end);
            conn.peer[0].end = 0;
            a
        };
        conn.flags &= !cflag::REFERENCED;
        if conn.is_v6() {
            // Its place in this table's IPv6 pool: the key carries the addresses.
            conn.addr = [0, 0];
        }
        FlowRecord { key: self.table.key_of(s), conn, stats, aux, idle, age, stream_age }
    }

    /// Tombstone sets of this engine (a snapshot's tombstones restore only into an
    /// engine with as many).
    pub fn tombstone_sets(&self) -> u32 {
        self.tombs.sets() as u32
    }

    /// Every tombstone as a snapshot record at `now`.
    pub fn export_tombstones(&self, now: Instant) -> impl Iterator<Item = TombRecord> + '_ {
        let t = now.ticks();
        self.tombs.records().map(move |(set, fp, when, why, class)| TombRecord { set, fp, age: idle_ticks(t, when), why, class })
    }

    /// Puts a flow back at `now`, `down` after the snapshot was taken: its times
    /// rebased on this engine's clock, its timer armed at what is left, its admission
    /// class as its state says, charged to its source again. Not put back when its
    /// timeout ran out meanwhile. Room is made as for a packet's new flow: a table
    /// smaller than the snapshot keeps what a full table keeps at run time (by-class:
    /// an assured flow takes the place of the oldest non-assured entry; a flow finding
    /// only assured entries is left out, counted by the caller).
    pub fn restore(&mut self, rec: &FlowRecord, now: Instant, down: Duration) -> Result<Restored, RestoreError> {
        let down = down.ticks();
        let t = now.ticks();
        let mut conn = rec.conn;
        let idle = rec.idle.saturating_add(down);
        // Ages past half the tick wrap would read as the future: cap them (a flow
        // idle that long has expired anyway; a creation that old only shows in age).
        let half = u32::MAX / 2;
        let adm = self.within_stream_share(&conn, admission_of(&conn));
        conn.set_admission(adm);
        let timeout = self.timeout_of(&conn);
        if idle >= timeout || idle >= half {
            return Ok(Restored::Expired);
        }
        let h = self.table.hash(&rec.key);
        if self.table.lookup(h, &rec.key).is_some() {
            return Err(RestoreError::Duplicate);
        }
        let src = rec.key.addr[conn.charged()];
        let left_out = |r: NoRoom| match r {
            NoRoom::Source => Restored::OverSourceLimit,
            NoRoom::Ipv6Pool => Restored::NoIpv6Room,
            NoRoom::Table => Restored::NoRoom,
        };
        if let Err(why) = self.make_room(now, src, rec.key.v6, adm) {
            return Ok(left_out(self.no_room(why, rec.key.v6)));
        }
        conn.last_seen = t.wrapping_sub(idle);
        if conn.proto() != proto::TCP {
            conn.peer[0].end = t.wrapping_sub(rec.stream_age.saturating_add(down).min(half));
        }
        let mut stats = rec.stats;
        stats.set_created(t.wrapping_sub(rec.age.saturating_add(down).min(half)));
        let left = timeout - idle;
        let when = abs_ticks(now) + u64::from(left.min(self.cfg.timeouts.floor_ticks(conn.timer_class())));
        let slot = match self.insert_counted(h, &rec.key, conn, rec.aux, stats, when) {
            Ok(s) => s,
            Err(e) => return Ok(left_out(e.into())),
        };
        self.lists.push(slot, adm, rec.key.v6);
        self.count_stream(&conn, adm, 1);
        let charged = self.sources.add(src, rec.key.v6, slot, adm != Admission::Assured);
        debug_assert!(charged, "checked above");
        Ok(Restored::Flow)
    }

    /// Puts a tombstone back at `now`, `down` after the snapshot; `false` when its
    /// set is full (records of several old workers merged into one) or the engine has
    /// another number of sets.
    pub fn restore_tombstone(&mut self, rec: &TombRecord, now: Instant, down: Duration) -> bool {
        let age = rec.age.saturating_add(down.ticks()).min(u32::MAX / 2);
        self.tombs.put_back(rec.set, rec.fp, now.ticks().wrapping_sub(age), rec.why, rec.class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::policy::Zone;
    use crate::snapshot::{FLOW_V4, FormatError};
    use crate::testutil::*;
    use crate::verdict::{DropReason, PassKind, Verdict};
    use crate::wire::build::FrameSpec;
    use crate::wire::tcp::flags::*;

    /// Every record of `l`, through its bytes and back.
    fn through_bytes(l: &Lab) -> Vec<FlowRecord> {
        let mut out = Vec::new();
        let recs: Vec<_> = l.e.export(l.now).collect();
        for r in &recs {
            r.encode(&mut out);
        }
        let (mut at, mut back) = (0, Vec::new());
        while at < out.len() {
            let (r, n) = FlowRecord::decode(&out[at..], at as u64).unwrap();
            assert_eq!(n, r.encoded_len());
            back.push(r);
            at += n;
        }
        assert_eq!(back, recs, "records survive their bytes");
        back
    }

    fn restored_lab(recs: &[FlowRecord], down: Duration) -> Lab {
        let mut l = Lab::new();
        for r in recs {
            l.e.restore(r, l.now, down).unwrap();
        }
        l.e.audit().unwrap();
        l
    }

    #[test]
    fn an_established_connection_goes_on_after_a_restart() {
        let mut l = Lab::new();
        l.handshake();
        assert!(l.c(ACK | PSH, 500).is_pass());
        assert!(l.s(ACK | PSH, 1400).is_pass());
        l.advance(Duration::from_secs(10));
        let before = l.flows()[0];
        let recs = through_bytes(&l);
        // The new process's clock starts elsewhere; 30 s passed while it was down.
        let mut r = restored_lab(&recs, Duration::from_secs(30));
        r.now = T0 + Duration::from_secs(5000);
        r.e = {
            let mut e = crate::engine::Engine::new(EngineConfig { capacity: 1024, ..EngineConfig::default() }, std::sync::Arc::new(policy()), r.now);
            for rec in &recs {
                assert_eq!(e.restore(rec, r.now, Duration::from_secs(30)), Ok(Restored::Flow));
            }
            e
        };
        let after = r.flows()[0];
        assert_eq!((after.key, after.state, after.packets, after.bytes), (before.key, before.state, before.packets, before.bytes));
        assert_eq!(after.expires_in + Duration::from_secs(30), before.expires_in, "the time down counts");
        assert_eq!((before.age, after.age), (Some(Duration::from_secs(10)), Some(Duration::from_secs(40))), "so for its age");
        // The next segments of both sides are judged on the restored windows.
        (r.cseq, r.sseq) = (l.cseq, l.sseq);
        assert_eq!(r.s(ACK | PSH, 1400), Verdict::Pass(PassKind::Established));
        assert_eq!(r.c(ACK, 0), Verdict::Pass(PassKind::Established));
        // A segment far outside the window is still caught.
        let bad = r.seg(SERVER, SPORT, CLIENT, CPORT, ACK, r.sseq.wrapping_add(1 << 30), r.cseq, 1000, 10, Zone::Inside);
        assert!(matches!(bad, Verdict::Drop(DropReason::OutOfWindow)), "{bad:?}");
        r.e.audit().unwrap();
    }

    #[test]
    fn an_icmp_flow_keeps_its_type_and_origin_zone_through_a_snapshot() {
        // In the entry: the zone in a spare bit, the type in the key; in the record:
        // bytes of their own, which must agree with the key.
        let mut l = Lab::new();
        let ping = FrameSpec::icmp(ip(CLIENT), ip(SERVER), 8, 0, 7 << 16 | 1, b"ping").build();
        assert_eq!(l.send(&ping, Zone::Inside), Verdict::Pass(PassKind::New));
        let recs = through_bytes(&l);
        let mut bytes = Vec::new();
        recs[0].encode(&mut bytes);
        let at = bytes.len() - 2;
        assert_eq!(bytes[at], 8, "the type's own byte");
        bytes[at] = 13;
        assert!(FlowRecord::decode(&bytes, 0).is_err(), "a type the key does not have");
        let mut r = restored_lab(&recs, Duration::from_secs(1));
        assert_eq!(r.flows()[0].from, Zone::Inside);
        // A reload's recheck asks the rules about the request's type: an echo request,
        // which the policy allows ...
        let cfg = *r.e.config();
        r.e.reconfigure(&cfg, std::sync::Arc::new(policy()));
        assert_eq!(r.e.maintain(0..1024, r.now, true).revoked, 0);
        assert_eq!(r.flows().len(), 1);
        let only_timestamps = crate::policy::Classifier::new(
            vec![crate::policy::Rule {
                proto: crate::policy::ProtoMatch::Icmp,
                icmp_types: vec![crate::policy::IcmpMatch { v4: Some(13), v6: None }],
                ..crate::policy::Rule::any("timestamps", crate::policy::Action::Allow)
            }],
            crate::policy::Action::Deny,
        );
        // ... and one allowing only timestamp requests does not.
        r.e.reconfigure(&cfg, std::sync::Arc::new(only_timestamps));
        assert_eq!(r.e.maintain(0..1024, r.now, true).revoked, 1, "the recheck does ask about the type");
    }

    #[test]
    fn flows_that_expired_while_down_are_not_restored_and_say_so() {
        let mut l = Lab::new();
        // A UDP flow (30 s unreplied) and a TCP flow (5 days established).
        let q = FrameSpec::udp(ip(SERVER), 5353, ip("192.0.2.53"), 53, b"q").build();
        assert!(l.send(&q, Zone::Inside).is_pass());
        l.handshake();
        let recs = through_bytes(&l);
        let mut e = Lab::new();
        let got: Vec<_> = recs.iter().map(|r| e.e.restore(r, e.now, Duration::from_secs(60)).unwrap()).collect();
        assert_eq!(got.iter().filter(|&&g| g == Restored::Expired).count(), 1);
        assert_eq!(e.flows().len(), 1);
        assert_eq!(e.flows()[0].key.proto, 6);
    }

    #[test]
    fn a_smaller_table_keeps_what_a_full_table_keeps_and_a_duplicate_is_an_error() {
        let mut l = Lab::new();
        let q = FrameSpec::udp(ip(SERVER), 5353, ip("192.0.2.53"), 53, b"q").build();
        assert!(l.send(&q, Zone::Inside).is_pass());
        l.handshake();
        let recs = through_bytes(&l);
        // Exported by class: the unreplied UDP query, then the assured connection.
        assert_eq!(recs.iter().map(|r| r.key.proto).collect::<Vec<_>>(), [17, 6]);
        let mut small = Lab::with(EngineConfig { capacity: 1, ..EngineConfig::default() });
        assert_eq!(small.e.restore(&recs[0], small.now, Duration::ZERO), Ok(Restored::Flow));
        assert_eq!(small.e.restore(&recs[1], small.now, Duration::ZERO), Ok(Restored::Flow), "the assured flow takes the unreplied one's place");
        assert_eq!(small.state(), Some("ESTABLISHED"));
        assert_eq!(small.e.restore(&recs[0], small.now, Duration::ZERO), Ok(Restored::NoRoom), "and keeps it");
        small.e.audit().unwrap();
        let mut dup = Lab::new();
        assert_eq!(dup.e.restore(&recs[0], dup.now, Duration::ZERO), Ok(Restored::Flow));
        assert_eq!(dup.e.restore(&recs[0], dup.now, Duration::ZERO), Err(RestoreError::Duplicate));
    }

    #[test]
    fn tombstones_come_back_with_their_reasons() {
        let mut l = Lab::new();
        let q = FrameSpec::udp(ip(SERVER), 5353, ip("192.0.2.53"), 53, b"q").build();
        assert!(l.send(&q, Zone::Inside).is_pass());
        l.advance(Duration::from_secs(31));
        assert_eq!(l.e.expire(l.now, 100), 1);
        let tombs: Vec<_> = l.e.export_tombstones(l.now).collect();
        assert_eq!(tombs.len(), 1);
        let mut bytes = Vec::new();
        tombs[0].encode(&mut bytes);
        let back = TombRecord::decode(&bytes, 0, l.e.tombstone_sets()).unwrap();
        let mut r = Lab::new();
        assert!(r.e.restore_tombstone(&back, r.now, Duration::from_secs(5)));
        let reply = FrameSpec::udp(ip("192.0.2.53"), 53, ip(SERVER), 5353, b"r").build();
        assert_eq!(r.send(&reply, Zone::Outside), Verdict::Drop(DropReason::ReplyToExpired));
        // Another number of sets: the record is refused as out of range.
        assert!(matches!(TombRecord::decode(&bytes, 0, 0), Err(FormatError::BadRecord { .. })));
    }

    #[test]
    fn the_decoder_refuses_what_no_engine_writes() {
        let mut l = Lab::new();
        l.handshake();
        let recs = through_bytes(&l);
        let mut good = Vec::new();
        recs[0].encode(&mut good);
        assert_eq!(good.len(), FLOW_V4);
        let refuse = |at: usize, v: u8| {
            let mut b = good.clone();
            b[at] = v;
            FlowRecord::decode(&b, 1000).err()
        };
        assert!(matches!(refuse(0, 2), Some(FormatError::BadRecord { offset: 1000, .. })), "address family");
        assert!(refuse(17, 0x0f).is_some(), "TCP state 15");
        assert!(refuse(17, 0x73).is_some(), "last index 7");
        assert!(refuse(18, 0x01 | recs[0].conn.flags).is_some(), "IPv6 flag on an IPv4 record");
        assert!(refuse(19, 0x0d).is_some(), "an ICMP timer class on a TCP flow");
        assert!(refuse(20, 0xff).is_some(), "window scale 15");
        assert!(refuse(110, 2).is_some(), "origin zone 2");
        assert!(refuse(109, 8).is_some(), "an ICMP type on a TCP flow");
        // Packet counts are 48 bits in the entry: a larger one names its first byte.
        assert!(matches!(refuse(79, 1), Some(FormatError::BadRecord { offset: 1073, .. })), "original packets 2^48");
        assert!(matches!(refuse(88, 1), Some(FormatError::BadRecord { offset: 1081, .. })), "reply packets 2^56");
        assert!(refuse(78, 0xff).is_none(), "2^48 - 1 and below are counts");
        // Swap the endpoints: not canonical.
        let mut b = good.clone();
        b[1..5].copy_from_slice(&good[5..9]);
        b[5..9].copy_from_slice(&good[1..5]);
        assert!(FlowRecord::decode(&b, 0).is_err());
        assert!(FlowRecord::decode(&good[..FLOW_V4 - 1], 0).is_err(), "short");
    }

    #[test]
    fn eviction_order_survives_the_snapshot() {
        let mut l = Lab::with(EngineConfig { capacity: 64, ..EngineConfig::default() });
        for i in 0..10u16 {
            let q = FrameSpec::udp(ip(SERVER), 6000 + i, ip("192.0.2.53"), 53, b"q").build();
            assert!(l.send(&q, Zone::Inside).is_pass());
            l.advance(Duration::from_secs(1));
        }
        let ports: Vec<u16> = l.e.export(l.now).map(|r| r.key.port[0]).collect();
        let mut r = Lab::with(EngineConfig { capacity: 64, ..EngineConfig::default() });
        for rec in l.e.export(l.now) {
            r.e.restore(&rec, r.now, Duration::ZERO).unwrap();
        }
        let again: Vec<u16> = r.e.export(r.now).map(|r| r.key.port[0]).collect();
        assert_eq!(ports, again);
        assert_eq!(ports, (6000..6010).collect::<Vec<_>>(), "oldest first");
    }
}

#[cfg(test)]
mod chunking {
    use crate::snapshot::{RECORDS_PER_BLOCK, TOMB, TombRecord, chunks};

    #[test]
    fn records_are_cut_into_blocks_of_at_most_the_block_size() {
        let recs = (0..2500u32).map(|i| TombRecord { set: 0, fp: 1, age: i, why: 1, class: 0 });
        let got: Vec<(usize, usize)> = chunks(recs).map(|(n, b)| (n, b.len())).collect();
        let r = RECORDS_PER_BLOCK;
        assert_eq!(got, vec![(r, r * TOMB), (r, r * TOMB), (2500 - 2 * r, (2500 - 2 * r) * TOMB)]);
        assert_eq!(chunks(core::iter::empty::<TombRecord>()).count(), 0, "no records, no block");
    }
}
