//! The compiled, immutable rule classifier.
//!
//! Rules are first split into groups by what every packet states exactly: ingress and
//! egress zone, address family and protocol class (TCP, UDP, ICMP, other) — a rule
//! that says `any` is copied into every group it fits. Inside a group each of the four
//! range dimensions (source and destination address, source and destination port) is
//! cut into elementary intervals, and each interval lists, in priority order, the rules
//! whose range covers it. Rules that cover most of a dimension (a wildcard, a /0, a
//! wide port range) sit in that dimension's "wide" list instead, which keeps memory
//! linear in practice.
//!
//! A lookup binary-searches each dimension, takes the dimension with the fewest
//! candidates, and tests those candidates in priority order with the full rule: the
//! first match decides. The cost is a few binary searches plus the shortest candidate
//! list, not the number of rules (see `benches/benches/classifier.rs`).

use super::rule::{Action, Rule, Zone};
use super::{Decision, Query};

const PROTO_CLASSES: usize = 4;
const GROUPS: usize = 2 * 2 * 2 * PROTO_CLASSES;
/// Groups of at most this many rules are scanned in order instead of searched: four
/// binary searches over 128-bit bounds and the merge cost more than testing a few rules
/// (a one-rule policy: 519 instructions a decision searched, callgrind).
const SCAN_AT_MOST: usize = 4;

fn proto_class(proto: u8, v6: bool) -> usize {
    match proto {
        6 => 0,
        17 => 1,
        1 if !v6 => 2,
        58 if v6 => 2,
        _ => 3,
    }
}

/// A representative protocol number per class, to test whether a rule's protocol
/// match admits the class ("other" admits any protocol but the three named ones).
fn class_admits(rule: &Rule, class: usize, v6: bool) -> bool {
    use super::rule::ProtoMatch;
    match (rule.proto, class) {
        (ProtoMatch::Any, _) => true,
        (ProtoMatch::Icmp, c) => c == 2,
        (ProtoMatch::Number(n), c) => proto_class(n, v6) == c,
    }
}

fn group_index(from: Zone, to: Zone, v6: bool, class: usize) -> usize {
    ((from as usize * 2 + to as usize) * 2 + usize::from(v6)) * PROTO_CLASSES + class
}

#[derive(Debug, Default)]
struct Dim {
    /// Start of each elementary interval; `bounds[0] == 0`.
    bounds: Vec<u128>,
    /// Per interval: (start, len) into `pool`.
    lists: Vec<(u32, u32)>,
    pool: Vec<u32>,
    /// Positions (in the group) of rules too wide to list per interval.
    wide: Vec<u32>,
}

impl Dim {
    /// `ranges[i]` are the inclusive ranges of the group's i-th rule; empty = all.
    fn build(ranges: &[Vec<(u128, u128)>], max: u128) -> Dim {
        let mut bounds = vec![0u128];
        for r in ranges.iter().flatten() {
            bounds.push(r.0);
            if r.1 < max {
                bounds.push(r.1 + 1);
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        let n = bounds.len();
        let threshold = (n / 16).max(8);
        let mut per: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut wide = Vec::new();
        for (pos, rs) in ranges.iter().enumerate() {
            let spans: Vec<(usize, usize)> =
                rs.iter().map(|&(lo, hi)| (bounds.partition_point(|&b| b <= lo) - 1, bounds.partition_point(|&b| b <= hi) - 1)).collect();
            let covered: usize = spans.iter().map(|&(a, b)| b - a + 1).sum();
            if rs.is_empty() || covered > threshold {
                wide.push(pos as u32);
                continue;
            }
            for (a, b) in spans {
                for list in &mut per[a..=b] {
                    if list.last() != Some(&(pos as u32)) {
                        list.push(pos as u32);
                    }
                }
            }
        }
        let mut pool = Vec::new();
        let mut lists = Vec::with_capacity(n);
        for l in per {
            lists.push((pool.len() as u32, l.len() as u32));
            pool.extend(l);
        }
        Dim { bounds, lists, pool, wide }
    }

    #[inline]
    fn candidates(&self, v: u128) -> (&[u32], &[u32]) {
        let i = self.bounds.partition_point(|&b| b <= v) - 1;
        let (s, l) = self.lists[i];
        (&self.pool[s as usize..(s + l) as usize], &self.wide)
    }
}

#[derive(Debug, Default)]
struct Group {
    /// Global rule indices, in priority order.
    rules: Vec<u32>,
    dims: [Dim; 4],
}

/// An immutable classifier compiled from an ordered rule list and a default action.
#[derive(Debug)]
pub struct Classifier {
    rules: Vec<Rule>,
    default: Action,
    groups: Vec<Group>,
}

impl Classifier {
    pub fn new(rules: Vec<Rule>, default: Action) -> Classifier {
        let mut groups: Vec<Group> = (0..GROUPS).map(|_| Group::default()).collect();
        for from in [Zone::Outside, Zone::Inside] {
            for to in [Zone::Outside, Zone::Inside] {
                for v6 in [false, true] {
                    for class in 0..PROTO_CLASSES {
                        let members: Vec<u32> = rules
                            .iter()
                            .enumerate()
                            .filter(|(_, r)| {
                                r.from.is_none_or(|z| z == from) && r.to.is_none_or(|z| z == to) && r.applies_to_family(v6) && class_admits(r, class, v6)
                            })
                            .map(|(i, _)| i as u32)
                            .collect();
                        let addr_max = if v6 { u128::MAX } else { 0xffff_ffff };
                        let addr = |sel: fn(&Rule) -> &Vec<super::Cidr>| -> Vec<Vec<(u128, u128)>> {
                            members.iter().map(|&i| sel(&rules[i as usize]).iter().filter(|c| c.v6 == v6).map(|c| c.range()).collect()).collect()
                        };
                        let port = |sel: fn(&Rule) -> &Vec<super::PortRange>| -> Vec<Vec<(u128, u128)>> {
                            members.iter().map(|&i| sel(&rules[i as usize]).iter().map(|p| (u128::from(p.lo), u128::from(p.hi))).collect()).collect()
                        };
                        let dims = [
                            Dim::build(&addr(|r| &r.src), addr_max),
                            Dim::build(&addr(|r| &r.dst), addr_max),
                            Dim::build(&port(|r| &r.src_ports), 65_535),
                            Dim::build(&port(|r| &r.dst_ports), 65_535),
                        ];
                        groups[group_index(from, to, v6, class)] = Group { rules: members, dims };
                    }
                }
            }
        }
        Classifier { rules, default, groups }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn default_action(&self) -> Action {
        self.default
    }

    /// Judges a new flow.
    pub fn decide(&self, q: &Query) -> Decision {
        let g = &self.groups[group_index(q.from, q.to, q.v6, proto_class(q.proto, q.v6))];
        if g.rules.len() <= SCAN_AT_MOST {
            for &idx in &g.rules {
                let r = &self.rules[idx as usize];
                if r.matches(q) {
                    return Decision { action: r.action, rule: Some(idx) };
                }
            }
            return Decision { action: self.default, rule: None };
        }
        let values = [q.src, q.dst, u128::from(q.sport), u128::from(q.dport)];
        let mut best = g.dims[0].candidates(values[0]);
        for (dim, &v) in g.dims.iter().zip(&values).skip(1) {
            let c = dim.candidates(v);
            if c.0.len() + c.1.len() < best.0.len() + best.1.len() {
                best = c;
            }
        }
        // Merge the two sorted candidate lists, testing in priority order.
        let (mut a, mut b) = (best.0.iter().peekable(), best.1.iter().peekable());
        loop {
            let pos = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(&&x), None) => {
                    a.next();
                    x
                }
                (None, Some(&&y)) => {
                    b.next();
                    y
                }
                (Some(&&x), Some(&&y)) => {
                    if x <= y {
                        a.next();
                        if x == y {
                            b.next();
                        }
                        x
                    } else {
                        b.next();
                        y
                    }
                }
            };
            let idx = g.rules[pos as usize];
            let r = &self.rules[idx as usize];
            if r.matches(q) {
                return Decision { action: r.action, rule: Some(idx) };
            }
        }
        Decision { action: self.default, rule: None }
    }

    /// The reference answer: the first matching rule, scanning all of them. Used by
    /// tests to check `decide`.
    pub fn decide_linear(&self, q: &Query) -> Decision {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(q))
            .map(|(i, r)| Decision { action: r.action, rule: Some(i as u32) })
            .unwrap_or(Decision { action: self.default, rule: None })
    }
}

#[cfg(test)]
mod tests {
    use super::super::rule::{Cidr, IcmpMatch, PortRange, ProtoMatch};
    use super::*;

    fn web_rules() -> Vec<Rule> {
        vec![
            Rule {
                from: Some(Zone::Outside),
                to: Some(Zone::Inside),
                proto: ProtoMatch::Number(6),
                dst: vec![Cidr { v6: false, addr: 0x0a00_0200, len: 24 }],
                dst_ports: vec![PortRange { lo: 80, hi: 80 }],
                ..Rule::any("web", Action::Allow)
            },
            Rule { proto: ProtoMatch::Icmp, icmp_types: vec![IcmpMatch { v4: Some(8), v6: Some(128) }], ..Rule::any("ping", Action::Allow) },
        ]
    }

    fn q(from: Zone, proto: u8, dst: u128, dport: u16) -> Query {
        Query { from, to: from.other(), v6: false, proto, src: 0x0a00_0101, dst, sport: 40000, dport, icmp_type: None }
    }

    #[test]
    fn issue_example_rules() {
        let c = Classifier::new(web_rules(), Action::Deny);
        assert_eq!(c.decide(&q(Zone::Outside, 6, 0x0a00_0201, 80)).rule, Some(0));
        assert_eq!(c.decide(&q(Zone::Outside, 6, 0x0a00_0201, 81)).action, Action::Deny);
        assert_eq!(c.decide(&q(Zone::Inside, 6, 0x0a00_0201, 80)).action, Action::Deny);
        assert_eq!(c.decide(&q(Zone::Outside, 17, 0x0a00_0201, 80)).action, Action::Deny);
        let ping = Query { icmp_type: Some(8), ..q(Zone::Inside, 1, 0x0808_0808, 0) };
        assert_eq!(c.decide(&ping).rule, Some(1));
        let ping6 = Query { v6: true, proto: 58, icmp_type: Some(128), ..ping };
        assert_eq!(c.decide(&ping6).rule, Some(1));
        let reply = Query { icmp_type: Some(0), ..ping };
        assert_eq!(c.decide(&reply).action, Action::Deny);
    }

    #[test]
    fn first_match_wins_even_when_a_later_rule_is_narrower() {
        let rules = vec![
            Rule { proto: ProtoMatch::Number(6), ..Rule::any("deny-tcp", Action::Deny) },
            Rule { dst_ports: vec![PortRange { lo: 22, hi: 22 }], ..Rule::any("ssh", Action::Allow) },
        ];
        let c = Classifier::new(rules, Action::Allow);
        assert_eq!(c.decide(&q(Zone::Outside, 6, 1, 22)), Decision { action: Action::Deny, rule: Some(0) });
        assert_eq!(c.decide(&q(Zone::Outside, 17, 1, 22)), Decision { action: Action::Allow, rule: Some(1) });
    }

    #[test]
    fn agrees_with_linear_scan_on_random_rule_sets() {
        // A deterministic pseudo-random generator keeps the test reproducible.
        let mut rnd = crate::testutil::xorshift(0x9e37_79b9_7f4a_7c15);
        for round in 0..40 {
            // Half the rounds small enough that groups are scanned, half searched.
            let n = 1 + (rnd() % if round % 2 == 0 { 8 } else { 300 }) as usize;
            let mut rules = Vec::new();
            for i in 0..n {
                let mut r = Rule::any(&format!("r{i}"), if rnd().is_multiple_of(2) { Action::Allow } else { Action::Deny });
                if rnd().is_multiple_of(3) {
                    r.from = Some(if rnd().is_multiple_of(2) { Zone::Outside } else { Zone::Inside });
                }
                r.proto = match rnd() % 4 {
                    0 => ProtoMatch::Any,
                    1 => ProtoMatch::Number(6),
                    2 => ProtoMatch::Number(17),
                    _ => ProtoMatch::Icmp,
                };
                for _ in 0..(rnd() % 3) {
                    let len = (rnd() % 33) as u8;
                    r.dst.push(Cidr { v6: false, addr: u128::from(rnd() as u32 & 0x0a0f_ffff), len });
                }
                if rnd().is_multiple_of(2) {
                    let lo = (rnd() % 2000) as u16;
                    r.dst_ports.push(PortRange { lo, hi: lo + (rnd() % 100) as u16 });
                }
                if rnd().is_multiple_of(4) {
                    r.src.push(Cidr { v6: false, addr: u128::from(rnd() as u32 & 0x0a0f_ffff), len: 16 });
                }
                rules.push(r);
            }
            let c = Classifier::new(rules, if round % 2 == 0 { Action::Deny } else { Action::Allow });
            for _ in 0..2000 {
                let proto = [6u8, 17, 1, 47][(rnd() % 4) as usize];
                let qq = Query {
                    from: if rnd().is_multiple_of(2) { Zone::Outside } else { Zone::Inside },
                    to: Zone::Inside,
                    v6: false,
                    proto,
                    src: u128::from(rnd() as u32 & 0x0a0f_ffff),
                    dst: u128::from(rnd() as u32 & 0x0a0f_ffff),
                    sport: (rnd() % 3000) as u16,
                    dport: (rnd() % 3000) as u16,
                    icmp_type: (proto == 1).then_some(8),
                };
                assert_eq!(c.decide(&qq), c.decide_linear(&qq), "round {round}: {qq:?}");
            }
        }
    }
}
