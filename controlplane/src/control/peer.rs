//! Who is asking over loopback: the user that owns the client's end of a local TCP
//! connection, asked of the kernel with one exact `NETLINK_SOCK_DIAG` lookup (what
//! `ss -e` shows as `uid:`). Without a token, the endpoint lets only root and the
//! appliance's own user see flows or change anything (api.rs); Linux's `conntrack -L`
//! needs `CAP_NET_ADMIN` likewise.
//!
//! Only a socket that is still open counts: a closed client's end lingers as a
//! time-wait entry, which the kernel reports as uid 0 — so an answer without an inode
//! (no open socket behind it) or in TIME_WAIT or CLOSE is "cannot tell", refused.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
/// `nlmsghdr` (16) + `inet_diag_req_v2` (8 + the 48-byte `inet_diag_sockid`).
const REQUEST_LEN: usize = 72;
/// `nlmsghdr` + `inet_diag_msg` (4 + sockid 48 + expires, rqueue, wqueue, uid, inode).
const ANSWER_LEN: usize = 16 + 72;
/// TCP_TIME_WAIT and TCP_CLOSE: what is left of a closed end, owned by nobody.
const GONE_STATES: [u8; 2] = [6, 7];

/// The uid owning the socket at `client` that is connected to `server` (both as the
/// server sees them), or why it cannot be told.
pub fn owner(client: SocketAddr, server: SocketAddr) -> Result<u32, String> {
    let family = match (client.ip(), server.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6, // v4-mapped: the kernel looks up the IPv4 socket
        _ => return Err("mixed address families".into()),
    };
    let sock = Socket::new(Domain::from(libc::AF_NETLINK), Type::DGRAM, Some(Protocol::from(libc::NETLINK_SOCK_DIAG)))
        .map_err(|e| format!("sock_diag socket: {e}"))?;
    // The kernel answers within the send (netlink requests run in the sender's
    // context); the timeout only bounds a kernel that does not.
    sock.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| format!("sock_diag: {e}"))?;
    sock.send(&request(family, client, server)).map_err(|e| format!("sock_diag request: {e}"))?;
    let mut buf = [0u8; 512];
    let n = (&sock).read(&mut buf).map_err(|e| format!("sock_diag answer: {e}"))?;
    parse(&buf[..n], client, server)
}

fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => b = a.octets(),
    }
    b
}

/// The lookup of the client's own socket: its source is the client, its destination
/// the server.
fn request(family: i32, client: SocketAddr, server: SocketAddr) -> [u8; REQUEST_LEN] {
    let mut r = [0u8; REQUEST_LEN];
    r[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    r[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    r[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence
    r[16] = family as u8;
    r[17] = libc::IPPROTO_TCP as u8;
    r[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    r[24..26].copy_from_slice(&client.port().to_be_bytes());
    r[26..28].copy_from_slice(&server.port().to_be_bytes());
    r[28..44].copy_from_slice(&addr_bytes(client.ip()));
    r[44..60].copy_from_slice(&addr_bytes(server.ip()));
    // idiag_if 0 (any); the cookie INET_DIAG_NOCOOKIE (all ones): not checked.
    r[64..72].fill(0xff);
    r
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn parse(b: &[u8], client: SocketAddr, server: SocketAddr) -> Result<u32, String> {
    if b.len() < 20 {
        return Err(format!("sock_diag answered {} bytes", b.len()));
    }
    let len = u32_at(b, 0) as usize;
    let kind = u16::from_ne_bytes([b[4], b[5]]);
    if kind == NLMSG_ERROR {
        let errno = -(u32_at(b, 16) as i32);
        return Err(match errno {
            libc::ENOENT => "its socket is gone (closed before it was answered)".into(),
            e => format!("sock_diag: {}", std::io::Error::from_raw_os_error(e)),
        });
    }
    if kind != SOCK_DIAG_BY_FAMILY || len < ANSWER_LEN || b.len() < ANSWER_LEN {
        return Err(format!("sock_diag answered message type {kind} of {len} bytes"));
    }
    let m = &b[16..];
    let (sport, dport) = (u16::from_be_bytes([m[4], m[5]]), u16::from_be_bytes([m[6], m[7]]));
    if (sport, dport) != (client.port(), server.port()) {
        return Err(format!("sock_diag answered about ports {sport} -> {dport}"));
    }
    let (state, uid, inode) = (m[1], u32_at(m, 64), u32_at(m, 68));
    // No inode: no open socket behind the entry (closed by its owner, orphaned).
    if inode == 0 || GONE_STATES.contains(&state) {
        return Err(format!("its socket is closed (TCP state {state}): no owner to tell"));
    }
    Ok(uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn the_owner_of_a_local_connection_is_this_process_user() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = TcpListener::bind(bind) else {
                eprintln!("no {bind} here: that family is not tried");
                continue;
            };
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, client) = l.accept().unwrap();
            let server = s.local_addr().unwrap();
            assert_eq!(owner(client, server), Ok(holdfast_dataplane::sys::euid()), "{bind}");
            // A tuple nobody holds is "gone", not anyone's.
            let nobody = SocketAddr::new(client.ip(), if client.port() == 1 { 2 } else { 1 });
            assert!(owner(nobody, server).unwrap_err().contains("gone"), "{bind}");
            // The client closes: its end is closing or gone, never uid 0 by default.
            drop(c);
            std::thread::sleep(Duration::from_millis(50));
            assert!(owner(client, server).is_err(), "{bind}: a closed client's end has no owner to tell");
            drop(s);
        }
        // A dual-stack listener sees an IPv4 client as v4-mapped: the kernel finds the
        // IPv4 socket behind it.
        if let Ok(l) = TcpListener::bind("[::]:0") {
            let _c = TcpStream::connect(("127.0.0.1", l.local_addr().unwrap().port())).unwrap();
            let (s, client) = l.accept().unwrap();
            assert!(matches!(client.ip(), IpAddr::V6(a) if a.to_ipv4_mapped().is_some()), "{client}");
            assert_eq!(owner(client, s.local_addr().unwrap()), Ok(holdfast_dataplane::sys::euid()), "v4-mapped");
        }
    }

    #[test]
    fn answers_are_checked_before_they_are_believed() {
        let c: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let s: SocketAddr = "127.0.0.1:9477".parse().unwrap();
        let mut a = [0u8; ANSWER_LEN];
        a[0..4].copy_from_slice(&(ANSWER_LEN as u32).to_ne_bytes());
        a[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        a[16 + 1] = 1; // ESTABLISHED
        a[20..22].copy_from_slice(&40000u16.to_be_bytes());
        a[22..24].copy_from_slice(&9477u16.to_be_bytes());
        a[80..84].copy_from_slice(&1000u32.to_ne_bytes());
        a[84..88].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(parse(&a, c, s), Ok(1000));
        assert!(parse(&a[..40], c, s).is_err(), "short");
        let mut other = a;
        other[21] ^= 1;
        assert!(parse(&other, c, s).unwrap_err().contains("ports"));
        let mut tw = a;
        tw[17] = 6; // TIME_WAIT, as the kernel reports a closed end: uid 0, inode 0
        tw[80..88].fill(0);
        assert!(parse(&tw, c, s).is_err(), "a time-wait entry's uid 0 is not root");
        let mut orphan = a;
        orphan[84..88].fill(0);
        assert!(parse(&orphan, c, s).is_err());
        let mut err = [0u8; 36];
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert!(parse(&err, c, s).unwrap_err().contains("gone"));
    }
}
