//! Scalar config values with their own syntax: durations (`30s`, `5d`, `1h30m`),
//! prefixes (`10.0.2.0/24`, `2001:db8::/64`, a bare address), port ranges (`80`,
//! `1024-65535`), ICMP types (`echo-request` or a number), protocols and zones.
//! Each parses inside `Deserialize`, so a bad value is reported at its line and column.

use std::fmt;
use std::net::IpAddr;

use holdfast_pipeline::Duration;
use holdfast_pipeline::policy::{Cidr, IcmpMatch, PortRange, ProtoMatch, Zone};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Parses `30s`, `500ms`, `2m`, `1h30m`, `5d`, or a bare number of seconds. Every step
/// is checked: a value that does not fit (about 584 years) is an error, never a wrap.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration: write e.g. 30s, 5m, 2h or 5d".into());
    }
    if s.starts_with('-') {
        return Err(format!("bad duration {s:?}: a duration cannot be negative"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1_000_000_000))
            .map(Duration::from_nanos)
            .ok_or_else(|| format!("bad duration {s:?}: too large (a bare number counts seconds; at most about 584 years)"));
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("bad duration {s:?}: expected a number, e.g. 30s, 5m, 2h, 5d"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("bad duration {s:?}: too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            u => return Err(format!("bad duration {s:?}: unknown unit {u:?} (use ms, s, m, h or d; fractions as 1500ms)")),
        };
        total = n.checked_mul(nanos_per).and_then(|x| total.checked_add(x)).ok_or_else(|| format!("bad duration {s:?}: too large"))?;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_nanos(total))
}

/// Formats a duration the way configs write it.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    for (unit, per) in [("d", 86_400_000_000_000u64), ("h", 3_600_000_000_000), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000)] {
        if ns >= per && ns.is_multiple_of(per) {
            return format!("{}{unit}", ns / per);
        }
    }
    format!("{:.3}s", d.as_secs_f64())
}

/// Accepts a string or an integer and hands the text to `parse`.
struct TextOrInt<F>(&'static str, F);

impl<'de, T, F: Fn(&str) -> Result<T, String>> Visitor<'de> for TextOrInt<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.1)(v).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.1)(&v.to_string()).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.1)(&v.to_string()).map_err(E::custom)
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<T, E> {
        (self.1)(&v.to_string()).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        if v.is_finite() && v.fract() == 0.0 && v.abs() >= 1.8e19 {
            return Err(E::custom(format!("{v:e} is too large: expected {}", self.0)));
        }
        Err(E::custom(format!("{v:e} is not valid here (a number with a fraction or an exponent): expected {}", self.0)))
    }
}

/// A whole number (a count, a size), with messages that say what was wrong: negative,
/// not whole, written as a float, or too large — instead of serde's "invalid u64".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Count(pub u64);

struct CountVisitor;

impl<'de> Visitor<'de> for CountVisitor {
    type Value = Count;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number such as 65536")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
        Ok(Count(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
        u64::try_from(v).map(Count).map_err(|_| E::custom(format!("{v} is negative: a count is 0 or more")))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Count, E> {
        u64::try_from(v).map(Count).map_err(|_| E::custom(format!("{v} is too large")))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Count, E> {
        if v < 0 {
            return Err(E::custom(format!("{v} is negative: a count is 0 or more")));
        }
        self.visit_u128(v as u128)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
        if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 1.8e19 {
            Err(E::custom(format!("{v:e} is written as a floating-point number: write the whole number, {}", v as u64)))
        } else if v < 0.0 {
            Err(E::custom(format!("{v} is negative: a count is 0 or more")))
        } else if v.is_finite() && v.fract() != 0.0 {
            Err(E::custom(format!("{v} is not a whole number")))
        } else {
            Err(E::custom(format!("{v:e} is too large (at most {})", u64::MAX)))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Count, E> {
        let t = v.trim().replace('_', "");
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return t.parse::<u64>().map(Count).map_err(|_| E::custom(format!("{} is too large (at most {})", shorten(v, 40), u64::MAX)));
        }
        Err(E::custom(format!("{} is not a whole number", shorten(&format!("{v:?}"), 40))))
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CountVisitor)
    }
}

/// `s` cut to about `max` characters, with an ellipsis in the middle when cut.
pub fn shorten(s: &str, max: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= max {
        return s.to_string();
    }
    let half = max / 2;
    format!("{}…{} ({} characters)", chars[..half].iter().collect::<String>(), chars[chars.len() - half..].iter().collect::<String>(), chars.len())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrInt("a duration such as 30s, 5m, 2h or 5d", |s: &str| parse_duration(s).map(Dur)))
    }
}

pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.trim().parse().map_err(|_| format!("bad address {addr:?} in {s:?}"))?;
    let (v6, a, max) = match ip {
        IpAddr::V4(v) => (false, u128::from(u32::from(v)), 32u8),
        IpAddr::V6(v) => (true, u128::from(v), 128u8),
    };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().ok().filter(|&l| l <= max).ok_or_else(|| format!("bad prefix length in {s:?} (0..={max})"))?,
        None => max,
    };
    let c = Cidr { v6, addr: a, len };
    if c.range().0 != a {
        return Err(format!("{s:?} has host bits set; did you mean {}/{len}?", holdfast_pipeline::flow::to_ip(c.range().0, v6)));
    }
    Ok(c)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrVal(pub Cidr);

impl<'de> Deserialize<'de> for CidrVal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrInt("an address or prefix such as 10.0.2.0/24", |s: &str| parse_cidr(s).map(CidrVal)))
    }
}

pub fn parse_ports(s: &str) -> Result<PortRange, String> {
    let p = |x: &str| x.trim().parse::<u16>().map_err(|_| format!("bad port {x:?} (0..=65535)"));
    let r = match s.split_once('-') {
        Some((a, b)) => PortRange { lo: p(a)?, hi: p(b)? },
        None => {
            let v = p(s)?;
            PortRange { lo: v, hi: v }
        }
    };
    if r.lo > r.hi {
        return Err(format!("bad port range {s:?}: {} > {}", r.lo, r.hi));
    }
    Ok(r)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports(pub PortRange);

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrInt("a port or range such as 80 or 1024-65535", |s: &str| parse_ports(s).map(Ports)))
    }
}

/// ICMP type names and their ICMPv4 / ICMPv6 numbers.
const ICMP_NAMES: &[(&str, Option<u8>, Option<u8>)] = &[
    ("echo-reply", Some(0), Some(129)),
    ("destination-unreachable", Some(3), Some(1)),
    ("redirect", Some(5), Some(137)),
    ("echo-request", Some(8), Some(128)),
    ("router-advertisement", Some(9), Some(134)),
    ("router-solicitation", Some(10), Some(133)),
    ("time-exceeded", Some(11), Some(3)),
    ("parameter-problem", Some(12), Some(4)),
    ("timestamp-request", Some(13), None),
    ("timestamp-reply", Some(14), None),
    ("packet-too-big", None, Some(2)),
    ("neighbor-solicitation", None, Some(135)),
    ("neighbor-advertisement", None, Some(136)),
];

pub fn parse_icmp_type(s: &str) -> Result<IcmpMatch, String> {
    if let Ok(n) = s.trim().parse::<u8>() {
        return Ok(IcmpMatch { v4: Some(n), v6: Some(n) });
    }
    ICMP_NAMES.iter().find(|(n, _, _)| *n == s.trim()).map(|&(_, v4, v6)| IcmpMatch { v4, v6 }).ok_or_else(|| {
        let names: Vec<&str> = ICMP_NAMES.iter().map(|n| n.0).collect();
        format!("unknown ICMP type {s:?}; use a number or one of: {}", names.join(", "))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpType(pub IcmpMatch);

impl<'de> Deserialize<'de> for IcmpType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrInt("an ICMP type name or number", |s: &str| parse_icmp_type(s).map(IcmpType)))
    }
}

pub fn parse_proto(s: &str) -> Result<ProtoMatch, String> {
    Ok(match s.trim() {
        "any" => ProtoMatch::Any,
        "tcp" => ProtoMatch::Number(6),
        "udp" => ProtoMatch::Number(17),
        "icmp" => ProtoMatch::Icmp,
        "icmpv4" => ProtoMatch::Number(1),
        "icmpv6" => ProtoMatch::Number(58),
        "gre" => ProtoMatch::Number(47),
        "esp" => ProtoMatch::Number(50),
        "ah" => ProtoMatch::Number(51),
        "sctp" => ProtoMatch::Number(132),
        n => ProtoMatch::Number(
            n.parse().map_err(|_| format!("unknown protocol {n:?}; use any, tcp, udp, icmp, icmpv4, icmpv6, gre, esp, ah, sctp or a number"))?,
        ),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proto(pub ProtoMatch);

impl Default for Proto {
    fn default() -> Self {
        Proto(ProtoMatch::Any)
    }
}

impl<'de> Deserialize<'de> for Proto {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrInt("a protocol: any, tcp, udp, icmp, icmpv6 or a number", |s: &str| parse_proto(s).map(Proto)))
    }
}

/// `outside`, `inside` or `any`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneSel {
    #[default]
    Any,
    Outside,
    Inside,
}

impl ZoneSel {
    pub fn zone(self) -> Option<Zone> {
        match self {
            ZoneSel::Any => None,
            ZoneSel::Outside => Some(Zone::Outside),
            ZoneSel::Inside => Some(Zone::Inside),
        }
    }
}

/// One value or a list of them. Deserialized by hand rather than as an untagged enum,
/// so that a bad value keeps its own message ("has host bits set; did you mean …")
/// instead of "data did not match any variant".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

struct OneOrManyVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrManyVisitor<T> {
    type Value = OneOrMany<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value or a list of values")
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = seq.next_element::<T>()? {
            v.push(x);
        }
        Ok(OneOrMany::Many(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        T::deserialize(de::value::StrDeserializer::<E>::new(v)).map(OneOrMany::One)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        T::deserialize(de::value::U64Deserializer::<E>::new(v)).map(OneOrMany::One)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        T::deserialize(de::value::I64Deserializer::<E>::new(v)).map(OneOrMany::One)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        T::deserialize(de::value::F64Deserializer::<E>::new(v)).map(OneOrMany::One)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OneOrManyVisitor(std::marker::PhantomData))
    }
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

impl<T> OneOrMany<T> {
    /// `[]`: possible only for the list form.
    pub fn is_empty(&self) -> bool {
        matches!(self, OneOrMany::Many(v) if v.is_empty())
    }
}

impl<T: Clone> OneOrMany<T> {
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5d").unwrap(), Duration::from_secs(432_000));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("5 days").is_err());
        // A bare number of seconds that would wrap the nanosecond count is refused.
        assert!(parse_duration("18446744075").unwrap_err().contains("too large"));
        assert!(parse_duration("18446744073709551616").unwrap_err().contains("too large"));
        assert!(parse_duration("99999999999999999999d").unwrap_err().contains("too large"));
        assert!(parse_duration("300000000000d").unwrap_err().contains("too large"));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert_eq!(parse_duration("18446744073").unwrap(), Duration::from_nanos(18_446_744_073_000_000_000));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(Duration::from_secs(432_000)), "5d");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn prefixes_ports_types() {
        assert_eq!(parse_cidr("10.0.2.0/24").unwrap(), Cidr { v6: false, addr: 0x0a00_0200, len: 24 });
        assert_eq!(parse_cidr("10.0.2.7").unwrap().len, 32);
        assert!(parse_cidr("10.0.2.7/24").unwrap_err().contains("10.0.2.0/24"));
        assert!(parse_cidr("2001:db8:2::/64").unwrap().v6);
        assert!(parse_cidr("10.0.2.0/33").is_err());
        assert!(parse_cidr("10.0.2/24").is_err());
        assert_eq!(parse_ports("1024-65535").unwrap(), PortRange { lo: 1024, hi: 65535 });
        assert!(parse_ports("90-80").is_err());
        assert!(parse_ports("70000").is_err());
        assert_eq!(parse_icmp_type("echo-request").unwrap(), IcmpMatch { v4: Some(8), v6: Some(128) });
        assert!(parse_icmp_type("echo").is_err());
        assert_eq!(parse_proto("tcp").unwrap(), ProtoMatch::Number(6));
        assert!(parse_proto("tcpp").is_err());
    }
}
