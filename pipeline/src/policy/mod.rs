//! Policy: zones, rules and the immutable classifier that judges new flows.
//!
//! Rules decide only whether a *new* flow may start; replies and related packets of a
//! tracked flow pass by state. The classifier is compiled once (off the data path) and
//! shared read-only by all workers.

mod classifier;
mod rule;

pub use classifier::Classifier;
pub use rule::{Action, Cidr, IcmpMatch, PortRange, ProtoMatch, Rule, Zone};

/// What the classifier is asked about a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub from: Zone,
    pub to: Zone,
    pub v6: bool,
    pub proto: u8,
    pub src: u128,
    pub dst: u128,
    pub sport: u16,
    pub dport: u16,
    /// The ICMP type for ICMP queries and untracked ICMP messages.
    pub icmp_type: Option<u8>,
}

/// The classifier's answer: the action and the index of the deciding rule (`None` when
/// the default action applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub rule: Option<u32>,
}
