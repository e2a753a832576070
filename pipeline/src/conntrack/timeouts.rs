//! Timeouts per state, with Linux's defaults (`nf_conntrack_proto_tcp.c`,
//! `nf_conntrack_proto_udp.c`, `nf_conntrack_proto_icmp.c`, `nf_conntrack_proto_generic.c`).

use crate::time::Duration;

/// Which timeout applies to an entry. TCP classes mirror Linux's `tcp_timeouts[]`
/// indices, RETRANS and UNACK included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TimerClass {
    TcpSynSent = 0,
    TcpSynRecv,
    TcpEstablished,
    TcpFinWait,
    TcpCloseWait,
    TcpLastAck,
    TcpTimeWait,
    TcpClose,
    TcpSynSent2,
    /// After `tcp_max_retrans` identical retransmissions, or a zero window.
    TcpRetrans,
    /// While data is unacknowledged, or a picked-up flow has seen no reply.
    TcpUnack,
    UdpUnreplied,
    UdpReplied,
    Icmp,
    Generic,
}

impl TimerClass {
    pub const COUNT: usize = 15;
    pub const ALL: [TimerClass; Self::COUNT] = [
        TimerClass::TcpSynSent,
        TimerClass::TcpSynRecv,
        TimerClass::TcpEstablished,
        TimerClass::TcpFinWait,
        TimerClass::TcpCloseWait,
        TimerClass::TcpLastAck,
        TimerClass::TcpTimeWait,
        TimerClass::TcpClose,
        TimerClass::TcpSynSent2,
        TimerClass::TcpRetrans,
        TimerClass::TcpUnack,
        TimerClass::UdpUnreplied,
        TimerClass::UdpReplied,
        TimerClass::Icmp,
        TimerClass::Generic,
    ];

    /// The class in the low nibble of `Conn::timer` (the high bits hold the admission
    /// class).
    #[inline]
    pub fn from_u8(v: u8) -> TimerClass {
        Self::ALL[usize::from(v & 0x0f).min(Self::COUNT - 1)]
    }

    /// True when an entry of protocol `p` can be in this class.
    pub fn fits(self, p: u8) -> bool {
        match p {
            crate::parse::proto::TCP => self <= TimerClass::TcpUnack,
            crate::parse::proto::UDP => matches!(self, TimerClass::UdpUnreplied | TimerClass::UdpReplied),
            crate::parse::proto::ICMP | crate::parse::proto::ICMPV6 => self == TimerClass::Icmp,
            _ => self == TimerClass::Generic,
        }
    }

    /// The config key (`conntrack.timeouts.<name>`).
    pub fn name(self) -> &'static str {
        match self {
            TimerClass::TcpSynSent => "tcp_syn_sent",
            TimerClass::TcpSynRecv => "tcp_syn_recv",
            TimerClass::TcpEstablished => "tcp_established",
            TimerClass::TcpFinWait => "tcp_fin_wait",
            TimerClass::TcpCloseWait => "tcp_close_wait",
            TimerClass::TcpLastAck => "tcp_last_ack",
            TimerClass::TcpTimeWait => "tcp_time_wait",
            TimerClass::TcpClose => "tcp_close",
            TimerClass::TcpSynSent2 => "tcp_syn_sent2",
            TimerClass::TcpRetrans => "tcp_max_retrans",
            TimerClass::TcpUnack => "tcp_unacknowledged",
            TimerClass::UdpUnreplied => "udp_unreplied",
            TimerClass::UdpReplied => "udp_replied",
            TimerClass::Icmp => "icmp",
            TimerClass::Generic => "generic",
        }
    }

    /// Linux's default, in seconds.
    pub fn linux_default_secs(self) -> u64 {
        match self {
            TimerClass::TcpSynSent => 120,
            TimerClass::TcpSynRecv => 60,
            TimerClass::TcpEstablished => 432_000,
            TimerClass::TcpFinWait => 120,
            TimerClass::TcpCloseWait => 60,
            TimerClass::TcpLastAck => 30,
            TimerClass::TcpTimeWait => 120,
            TimerClass::TcpClose => 10,
            TimerClass::TcpSynSent2 => 120,
            TimerClass::TcpRetrans => 300,
            TimerClass::TcpUnack => 300,
            TimerClass::UdpUnreplied => 30,
            TimerClass::UdpReplied => 120,
            TimerClass::Icmp => 30,
            TimerClass::Generic => 600,
        }
    }
}

/// The timeout of every class, in ticks, and each class's *rearm floor*.
///
/// The floor is the shortest timeout an entry of that class can switch to without a
/// state change: a TCP flow flips between its state's timeout, UNACK and RETRANS on
/// ordinary packets (data then its ACK). The timer wheel arms an entry no later than
/// `now + floor`, so these flips never need to look at (or move) the armed timer —
/// only a switch to a class with a lower floor (FIN, RST, ...) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    ticks: [u32; TimerClass::COUNT],
    floor: [u32; TimerClass::COUNT],
    /// The shortest timeout of any class.
    shortest: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        let mut t = Timeouts { ticks: [0; TimerClass::COUNT], floor: [0; TimerClass::COUNT], shortest: 0 };
        for c in TimerClass::ALL {
            t.set(c, Duration::from_secs(c.linux_default_secs()));
        }
        t
    }
}

impl Timeouts {
    pub fn set(&mut self, c: TimerClass, d: Duration) {
        self.ticks[c as usize] = d.ticks().max(1);
        let flip = self.ticks[TimerClass::TcpUnack as usize].min(self.ticks[TimerClass::TcpRetrans as usize]);
        for k in TimerClass::ALL {
            let t = self.ticks[k as usize];
            let tcp = (k as u8) <= TimerClass::TcpUnack as u8;
            // An unset class (during Default) has 0 ticks: ignore it in the minimum.
            self.floor[k as usize] = if tcp && flip > 0 { t.min(flip) } else { t };
        }
        self.shortest = self.ticks.iter().copied().min().unwrap_or(0);
    }

    /// The shortest timeout of any class: an entry idle for less is alive whatever its
    /// class (what lets a lookup skip working out its own timeout).
    #[inline]
    pub fn shortest_ticks(&self) -> u32 {
        self.shortest
    }

    /// The class's rearm floor (see the type's documentation).
    #[inline]
    pub fn floor_ticks(&self, c: TimerClass) -> u32 {
        self.floor[c as usize]
    }

    #[inline]
    pub fn ticks(&self, c: TimerClass) -> u32 {
        self.ticks[c as usize]
    }

    pub fn get(&self, c: TimerClass) -> Duration {
        Duration::from_ticks(self.ticks[c as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_equal_linux() {
        let t = Timeouts::default();
        assert_eq!(t.get(TimerClass::TcpEstablished), Duration::from_secs(5 * 86_400));
        assert_eq!(t.get(TimerClass::TcpSynSent), Duration::from_secs(120));
        assert_eq!(t.get(TimerClass::TcpClose), Duration::from_secs(10));
        assert_eq!(t.get(TimerClass::UdpUnreplied), Duration::from_secs(30));
        assert_eq!(t.get(TimerClass::UdpReplied), Duration::from_secs(120));
        assert_eq!(t.get(TimerClass::Icmp), Duration::from_secs(30));
        assert_eq!(t.floor_ticks(TimerClass::TcpEstablished), Duration::from_secs(300).ticks());
        assert_eq!(t.floor_ticks(TimerClass::TcpFinWait), Duration::from_secs(120).ticks());
        assert_eq!(t.floor_ticks(TimerClass::UdpReplied), Duration::from_secs(120).ticks());
        for (i, c) in TimerClass::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert_eq!(TimerClass::from_u8(i as u8), *c);
        }
    }
}
