//! Steering: which worker owns a frame, decided before the owner parses it fully.
//! Used by the offline replay's dispatcher and by cross-core handoff.

use crate::flow::FlowHasher;
use crate::parse::{Frame, parse};

/// What a dispatcher needs to know about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steering {
    /// Owner hash of the flow the frame belongs to (the quoted flow for an ICMP error);
    /// 0 for frames that belong to no flow (ARP, malformed), which all go to worker 0.
    pub owner_hash: u64,
    /// Source address and family of IP frames.
    pub src: Option<(u128, bool)>,
}

pub fn steer(frame: &[u8], hasher: &FlowHasher) -> Steering {
    match parse(frame) {
        Ok(Frame::Ip(m)) => {
            // For an ICMP error the key is already the quoted flow's.
            Steering { owner_hash: hasher.owner_hash(&m.key), src: Some((m.src_addr(), m.key.v6)) }
        }
        _ => Steering { owner_hash: 0, src: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::wire::build::FrameSpec;
    use crate::wire::tcp::flags::*;

    #[test]
    fn both_directions_fragments_and_icmp_errors_reach_the_owner() {
        let h = FlowHasher::new(11);
        let syn = FrameSpec::tcp(ip(CLIENT), CPORT, ip(SERVER), SPORT, SYN, 1, 0);
        let synack = FrameSpec::tcp(ip(SERVER), SPORT, ip(CLIENT), CPORT, SYN | ACK, 1, 2);
        let a = steer(&syn.build(), &h);
        assert_eq!(a.owner_hash, steer(&synack.build(), &h).owner_hash);
        assert_eq!(a.src.unwrap().0, 0xc633_6407);
        let big = FrameSpec::udp(ip(CLIENT), 5, ip(SERVER), 53, &[0; 3000]);
        let frags = big.fragments(1400);
        let first = steer(&frags[0], &h);
        assert!(frags[1..].iter().all(|f| steer(f, &h).owner_hash == first.owner_hash));
        let q = synack.ip_packet();
        let err = FrameSpec::icmp(ip("203.0.113.1"), ip(SERVER), 3, 4, 0, &q[..28]).build();
        assert_eq!(steer(&err, &h).owner_hash, a.owner_hash);
        assert_eq!(steer(&[0u8; 10], &h), Steering { owner_hash: 0, src: None });
    }
}
