//! The `policy.rules` list: each rule checked (names unique, ports and ICMP types only
//! where the protocol has them, no empty lists) and compiled into a classifier rule.

use holdfast_pipeline::policy::{Cidr, ProtoMatch, Rule};
use serde_saphyr::Spanned;

use super::ConfigError;
use super::compile::{Ctx, action};
use super::model::Policy;
use super::values::{self, OneOrMany};

pub(super) fn rules(cx: &Ctx, policy: &Policy) -> Result<Vec<Rule>, ConfigError> {
    let rule_list = match &policy.rules {
        Some(l) if l.value.is_empty() => return Err(cx.empty_list(l.referenced, "policy.rules")),
        Some(l) => l.value.as_slice(),
        None => &[],
    };
    let mut rules = Vec::with_capacity(rule_list.len());
    for (i, sr) in rule_list.iter().enumerate() {
        let r = &sr.value;
        let name = r.name.clone().unwrap_or_else(|| format!("rule-{}", i + 1));
        if let Some(prev) = rules.iter().position(|x: &Rule| x.name == name) {
            return Err(cx.at(sr.referenced, format!("duplicate rule name {name:?} (also rule {})", prev + 1)));
        }
        let icmp_ok = matches!(r.proto.0, ProtoMatch::Icmp | ProtoMatch::Number(1) | ProtoMatch::Number(58));
        if let Some(it) = &r.icmp_type
            && !icmp_ok
        {
            return Err(cx.at(it.referenced, format!("rule {name:?}: icmp_type needs proto icmp, icmpv4 or icmpv6")));
        }
        let ports_ok = matches!(r.proto.0, ProtoMatch::Any | ProtoMatch::Number(6) | ProtoMatch::Number(17) | ProtoMatch::Number(132));
        for p in [&r.src_port, &r.dst_port].into_iter().flatten() {
            if !ports_ok {
                return Err(cx.at(p.referenced, format!("rule {name:?}: ports need proto tcp, udp, sctp or any")));
            }
        }
        // An empty list would match everything (as if the key were absent): refused.
        let list = |v: &Option<Spanned<OneOrMany<values::CidrVal>>>, key: &str| -> Result<Vec<Cidr>, ConfigError> {
            match v {
                None => Ok(vec![]),
                Some(l) if l.value.is_empty() => Err(cx.empty_list(l.referenced, &format!("rule {name:?}: {key}"))),
                Some(l) => Ok(l.value.to_vec().into_iter().map(|c| c.0).collect()),
            }
        };
        let mut src = list(&r.src, "src")?;
        let mut dst = list(&r.dst, "dst")?;
        if let Some(file) = &r.src_file {
            src.extend(cx.prefix_file(file, &format!("rule {name:?}: src_file"))?);
        }
        if let Some(file) = &r.dst_file {
            dst.extend(cx.prefix_file(file, &format!("rule {name:?}: dst_file"))?);
        }
        let many = |v: &Option<Spanned<OneOrMany<_>>>, key: &str| match v {
            Some(l) if l.value.is_empty() => Err(cx.empty_list(l.referenced, &format!("rule {name:?}: {key}"))),
            _ => Ok(()),
        };
        many(&r.src_port, "src_port")?;
        many(&r.dst_port, "dst_port")?;
        if let Some(l) = &r.icmp_type
            && l.value.is_empty()
        {
            return Err(cx.empty_list(l.referenced, &format!("rule {name:?}: icmp_type")));
        }
        rules.push(Rule {
            name,
            from: r.from.zone(),
            to: r.to.zone(),
            proto: r.proto.0,
            src,
            dst,
            src_ports: r.src_port.as_ref().map(|p| p.value.to_vec().into_iter().map(|x| x.0).collect()).unwrap_or_default(),
            dst_ports: r.dst_port.as_ref().map(|p| p.value.to_vec().into_iter().map(|x| x.0).collect()).unwrap_or_default(),
            icmp_types: r.icmp_type.as_ref().map(|p| p.value.to_vec().into_iter().map(|x| x.0).collect()).unwrap_or_default(),
            action: action(r.action),
        });
    }
    Ok(rules)
}
