//! What the pipeline decides for each frame, and why every drop happened.

/// Why a packet passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PassKind {
    /// First packet of a flow that policy allowed; an entry was created.
    New = 0,
    /// A packet of a tracked flow, either direction.
    Established,
    /// An ICMP error or later fragment that belongs to a tracked flow.
    Related,
    /// A TCP packet Linux would let through without touching the entry (the `IGNORE`
    /// transitions, stale retransmissions under the window's lower bound).
    Ignored,
    /// Not tracked: ARP, IPv6 neighbor discovery or another EtherType allowed by config,
    /// or an ICMP message that cannot start a flow and that a rule allows.
    Untracked,
}

impl PassKind {
    pub const COUNT: usize = 5;
    pub const ALL: [PassKind; Self::COUNT] = [PassKind::New, PassKind::Established, PassKind::Related, PassKind::Ignored, PassKind::Untracked];

    pub fn name(self) -> &'static str {
        match self {
            PassKind::New => "new",
            PassKind::Established => "established",
            PassKind::Related => "related",
            PassKind::Ignored => "ignored",
            PassKind::Untracked => "untracked",
        }
    }
}

/// Why a packet was dropped. Every drop has exactly one, counted per core. After pf's
/// `PFRES_*` codes: a typed reason at each place a packet can be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// A header failed a length or format check.
    Malformed = 0,
    /// An EtherType other than IPv4, IPv6 and ARP, with `policy.non_ip: deny`.
    NonIp,
    /// ARP with `policy.arp: deny`.
    Arp,
    /// IPv6 neighbor discovery with `policy.ndp: deny`.
    Ndp,
    /// A new flow that the rules (or the default action) deny.
    Policy,
    /// A TCP flag combination no stack sends (Linux `tcp_valid_flags`).
    InvalidTcpFlags,
    /// A TCP packet the state table calls invalid in the entry's state (Linux `sIV`).
    InvalidTcpState,
    /// Sequence or acknowledgement number outside the tracked window.
    OutOfWindow,
    /// An RST whose sequence number lies before what the peer has acknowledged.
    InvalidRst,
    /// A packet that can only belong to an existing flow (TCP without SYN, ICMP reply)
    /// found no state, and pickup did not apply.
    MidstreamNoState,
    /// No entry could be created: the table is full.
    TableFull,
    /// A non-first fragment whose first fragment was not seen (or was forgotten).
    FragmentUnmatched,
    /// An ICMP error whose quoted packet matches no tracked flow.
    IcmpUnrelated,
    /// An ICMP error whose quoted packet is unusable: truncated, itself an ICMP error, or
    /// not sent by the error's destination.
    IcmpInvalid,
    /// The source address already holds `conntrack.per_source_limit` entries.
    SourceLimit,
    /// The per-source counts found no room for another source address (a bounded
    /// search came up empty): refused rather than searched for longer.
    SourceTableFull,
    /// A packet of a flow whose entry was evicted to make room (tombstone found): the
    /// origin story's "denied outbound" reply.
    ReplyToEvicted,
    /// A packet of a flow whose entry timed out (tombstone found).
    ReplyToExpired,
    /// A packet of a flow whose entry was removed by TCP (an RST answering a flow
    /// without replies).
    ReplyToClosed,
    /// A packet of a flow whose entry a reload removed because the new rules deny it
    /// (`policy.on_reload: recheck`).
    Revoked,
    /// An ICMP error quoting a TCP segment whose sequence number the tracked flow's
    /// sender cannot have sent lately (`conntrack.icmp_error_window`): forged by
    /// someone who knows only the addresses and ports (RFC 5927; pf checks likewise).
    IcmpOutOfWindow,
}

impl DropReason {
    pub const COUNT: usize = 21;
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Malformed,
        DropReason::NonIp,
        DropReason::Arp,
        DropReason::Ndp,
        DropReason::Policy,
        DropReason::InvalidTcpFlags,
        DropReason::InvalidTcpState,
        DropReason::OutOfWindow,
        DropReason::InvalidRst,
        DropReason::MidstreamNoState,
        DropReason::TableFull,
        DropReason::FragmentUnmatched,
        DropReason::IcmpUnrelated,
        DropReason::IcmpInvalid,
        DropReason::SourceLimit,
        DropReason::SourceTableFull,
        DropReason::ReplyToEvicted,
        DropReason::ReplyToExpired,
        DropReason::ReplyToClosed,
        DropReason::Revoked,
        DropReason::IcmpOutOfWindow,
    ];

    /// The name used in JSON output, logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NonIp => "non_ip",
            DropReason::Arp => "arp",
            DropReason::Ndp => "ndp",
            DropReason::Policy => "policy",
            DropReason::InvalidTcpFlags => "invalid_tcp_flags",
            DropReason::InvalidTcpState => "invalid_tcp_state",
            DropReason::OutOfWindow => "out_of_window",
            DropReason::InvalidRst => "invalid_rst",
            DropReason::MidstreamNoState => "midstream_no_state",
            DropReason::TableFull => "table_full",
            DropReason::FragmentUnmatched => "fragment_unmatched",
            DropReason::IcmpUnrelated => "icmp_unrelated",
            DropReason::IcmpInvalid => "icmp_invalid",
            DropReason::SourceLimit => "source_limit",
            DropReason::SourceTableFull => "source_table_full",
            DropReason::ReplyToEvicted => "reply_to_evicted",
            DropReason::ReplyToExpired => "reply_to_expired",
            DropReason::ReplyToClosed => "reply_to_closed",
            DropReason::Revoked => "revoked",
            DropReason::IcmpOutOfWindow => "icmp_out_of_window",
        }
    }
}

/// The decision for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Pass(PassKind),
    Drop(DropReason),
}

impl DropReason {
    /// Drops of packets whose flow Holdfast had admitted and then lost: the figure
    /// that must stay at zero (`reply_denied`).
    pub fn is_reply_denied(self) -> bool {
        matches!(self, DropReason::ReplyToEvicted | DropReason::ReplyToExpired)
    }
}

impl Verdict {
    pub fn is_pass(self) -> bool {
        matches!(self, Verdict::Pass(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_are_complete_and_names_unique() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, p) in PassKind::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i);
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }
}
