//! Rules as the classifier sees them (the controlplane turns YAML into these).

/// The two sides of the bump in the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Zone {
    Outside = 0,
    Inside = 1,
}

impl Zone {
    pub fn other(self) -> Zone {
        match self {
            Zone::Outside => Zone::Inside,
            Zone::Inside => Zone::Outside,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Zone::Outside => "outside",
            Zone::Inside => "inside",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
}

/// An address prefix. IPv4 prefixes hold the address in the low 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub v6: bool,
    pub addr: u128,
    pub len: u8,
}

impl Cidr {
    /// Inclusive range of addresses covered.
    pub fn range(&self) -> (u128, u128) {
        let bits: u32 = if self.v6 { 128 } else { 32 };
        let host = u32::from(self.len).min(bits);
        let span = bits - host;
        let mask: u128 = if span == 128 { u128::MAX } else { (1u128 << span) - 1 };
        let lo = self.addr & !mask;
        let hi = if self.v6 { lo | mask } else { (lo | mask) & 0xffff_ffff };
        (lo, hi)
    }

    /// Whether the prefix covers `a` (an IPv4 address in the low 32 bits, the rest 0):
    /// the bits above the host part agree. One shift, where working out the range
    /// first cost ~120 instructions a rule on every new flow.
    #[inline]
    pub fn contains(&self, a: u128, v6: bool) -> bool {
        let bits: u32 = if self.v6 { 128 } else { 32 };
        let span = bits - u32::from(self.len).min(bits);
        v6 == self.v6 && (span == 128 || (a ^ self.addr) >> span == 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// Which protocols a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtoMatch {
    Any,
    /// ICMP in either family: ICMPv4 for IPv4 flows, ICMPv6 for IPv6 flows.
    Icmp,
    Number(u8),
}

impl ProtoMatch {
    pub fn matches(&self, proto: u8, v6: bool) -> bool {
        match *self {
            ProtoMatch::Any => true,
            ProtoMatch::Icmp => proto == if v6 { 58 } else { 1 },
            ProtoMatch::Number(n) => n == proto,
        }
    }
}

/// An ICMP type test. Named types resolve per family (echo-request is 8 in ICMPv4 and
/// 128 in ICMPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    pub v4: Option<u8>,
    pub v6: Option<u8>,
}

impl IcmpMatch {
    pub fn matches(&self, ty: u8, v6: bool) -> bool {
        if v6 { self.v6 == Some(ty) } else { self.v4 == Some(ty) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// `None` = any zone.
    pub from: Option<Zone>,
    pub to: Option<Zone>,
    pub proto: ProtoMatch,
    /// Empty = any address.
    pub src: Vec<Cidr>,
    pub dst: Vec<Cidr>,
    /// Empty = any port.
    pub src_ports: Vec<PortRange>,
    pub dst_ports: Vec<PortRange>,
    /// Empty = any ICMP type.
    pub icmp_types: Vec<IcmpMatch>,
    pub action: Action,
}

impl Rule {
    /// A rule matching everything, for building rule sets in code and tests.
    pub fn any(name: &str, action: Action) -> Rule {
        Rule {
            name: name.to_string(),
            from: None,
            to: None,
            proto: ProtoMatch::Any,
            src: vec![],
            dst: vec![],
            src_ports: vec![],
            dst_ports: vec![],
            icmp_types: vec![],
            action,
        }
    }

    /// Does this rule apply to a family at all? A rule naming only IPv4 prefixes in a
    /// dimension cannot match IPv6 flows, and the other way round.
    pub fn applies_to_family(&self, v6: bool) -> bool {
        let ok = |l: &[Cidr]| l.is_empty() || l.iter().any(|c| c.v6 == v6);
        ok(&self.src) && ok(&self.dst)
    }

    /// The full test, used to confirm candidates.
    pub fn matches(&self, q: &super::Query) -> bool {
        self.from.is_none_or(|z| z == q.from)
            && self.to.is_none_or(|z| z == q.to)
            && self.proto.matches(q.proto, q.v6)
            && (self.src.is_empty() || self.src.iter().any(|c| c.contains(q.src, q.v6)))
            && (self.dst.is_empty() || self.dst.iter().any(|c| c.contains(q.dst, q.v6)))
            && (self.src_ports.is_empty() || self.src_ports.iter().any(|p| p.lo <= q.sport && q.sport <= p.hi))
            && (self.dst_ports.is_empty() || self.dst_ports.iter().any(|p| p.lo <= q.dport && q.dport <= p.hi))
            && (self.icmp_types.is_empty() || q.icmp_type.is_some_and(|t| self.icmp_types.iter().any(|m| m.matches(t, q.v6))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// `contains` is "within `range()`", for every prefix length and family.
        #[test]
        fn contains_is_within_the_range(v6: bool, addr: u128, a: u128, len in 0u8..=130, near: bool) {
            let (addr, a) = if v6 { (addr, a) } else { (addr & 0xffff_ffff, a & 0xffff_ffff) };
            // Half the probes differ from the prefix only in the low bits.
            let a = if near { addr ^ (a & 0xff) } else { a };
            let c = Cidr { v6, addr, len };
            let (lo, hi) = c.range();
            proptest::prop_assert_eq!(c.contains(a, v6), lo <= a && a <= hi);
            proptest::prop_assert!(!c.contains(a, !v6));
        }
    }

    #[test]
    fn cidr_ranges() {
        let c = Cidr { v6: false, addr: 0x0a00_0200, len: 24 };
        assert_eq!(c.range(), (0x0a00_0200, 0x0a00_02ff));
        assert!(c.contains(0x0a00_0201, false) && !c.contains(0x0a00_0301, false) && !c.contains(0x0a00_0201, true));
        let all4 = Cidr { v6: false, addr: 0, len: 0 };
        assert_eq!(all4.range(), (0, 0xffff_ffff));
        let all6 = Cidr { v6: true, addr: 0, len: 0 };
        assert_eq!(all6.range(), (0, u128::MAX));
        let host6 = Cidr { v6: true, addr: 5, len: 128 };
        assert_eq!(host6.range(), (5, 5));
    }
}
