#!/usr/bin/python3
"""Crafted TCP/UDP/ICMP sequences for the differential test against Linux conntrack.

Runs in the client namespace; the kernel's own RSTs (TTL 64) are dropped by an nft
rule there so that scapy can hold connections the kernel does not know about.
Scapy's packets use TTL 63. Each case prints one line, for the test log.
"""
import sys
import time

import subprocess

from scapy.all import IP, IPv6, TCP, UDP, ICMP, ICMPv6EchoRequest, IPv6ExtHdrFragment, Raw, AsyncSniffer, conf, fragment, send, sr1

conf.verb = 0
CLIENT, SERVER = sys.argv[1], sys.argv[2]
IFACE = sys.argv[3]
conf.iface = IFACE
TTL = 63


def ip():
    return IP(src=CLIENT, dst=SERVER, ttl=TTL)


class Conn:
    """A TCP connection driven by hand, tracking the server's sequence numbers."""

    def __init__(self, sport, isn):
        self.sport, self.seq = sport, isn
        self.ack = 0
        self.best = None
        self.sniffer = AsyncSniffer(iface=IFACE, filter=f"tcp and src host {SERVER} and dst port {sport}",
                                    store=False, prn=self.saw)
        self.sniffer.start()
        time.sleep(0.3)

    def saw(self, p):
        t = p[TCP]
        end = (t.seq + len(t.payload) + (1 if t.flags & 0x03 else 0)) & 0xFFFFFFFF
        if self.best is None or (end - self.best) & 0xFFFFFFFF < 0x80000000:
            self.best = end

    def server_next(self):
        """Highest seq + len (+1 for SYN/FIN) the server has sent."""
        return self.ack if self.best is None else self.best

    def open(self, data=b"", options=None):
        opts = [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)] if options is None else options
        syn = ip() / TCP(sport=self.sport, dport=80, flags="S", seq=self.seq, window=64240, options=opts)
        synack = sr1(syn / Raw(data) if data else syn, timeout=2)
        assert synack is not None and synack[TCP].flags == "SA", "no SYN/ACK"
        self.seq += 1
        self.ack = synack[TCP].seq + 1
        self.send("A")

    def send(self, flags, data=b"", seq=None, ack=None, window=502):
        t = TCP(sport=self.sport, dport=80, flags=flags, seq=self.seq if seq is None else seq,
                ack=(self.ack if ack is None else ack) if "A" in flags else 0, window=window)
        send(ip() / t / Raw(data) if data else ip() / t)
        if seq is None:
            self.seq += len(data) + (1 if ("F" in flags or "S" in flags) else 0)

    def stop(self):
        self.sniffer.stop()


def case(name):
    print(f"case: {name}", flush=True)


# 1. A mid-stream ACK with no connection behind it.
case("midstream ACK")
send(ip() / TCP(sport=41001, dport=80, flags="A", seq=123456, ack=654321, window=502))
time.sleep(0.2)

# 2. Invalid flag combination.
case("SYN+FIN")
send(ip() / TCP(sport=41002, dport=80, flags="SF", seq=1, window=502))
time.sleep(0.2)

# 3. A connection: out-of-window RSTs and data while ESTABLISHED, an in-window but
#    inexact RST (RFC 5961: the state stays), a request, an orderly close, reuse.
case("handshake")
c = Conn(41003, 1_000_000)
c.open()
time.sleep(0.2)
case("RST below what the server acknowledged")
c.send("R", seq=(c.seq - 5000) & 0xFFFFFFFF)
case("RST far out of window")
c.send("R", seq=(c.seq + 1_000_000_000) & 0xFFFFFFFF)
case("data far beyond the window")
c.send("PA", b"x" * 100, seq=(c.seq + 50_000_000) & 0xFFFFFFFF)
case("RST in window but not exact")
c.send("R", seq=(c.seq + 10) & 0xFFFFFFFF)
time.sleep(0.3)
case("request")
c.send("PA", b"GET / HTTP/1.0\r\nHost: server\r\n\r\n")
time.sleep(0.5)
c.ack = c.server_next()
c.send("A")
time.sleep(0.2)
case("orderly close")
c.ack = c.server_next()
c.send("FA")
time.sleep(0.3)
c.ack = c.server_next()
c.send("A")
time.sleep(0.3)
c.stop()
case("SYN reusing the closed connection's ports")
c2 = Conn(41003, 5_000_000)
c2.open()
c2.send("R")
c2.stop()
time.sleep(0.2)

# 4. ICMP error about a flow that never existed.
case("unrelated ICMP error")
quoted = IP(src=SERVER, dst=CLIENT, ttl=64) / UDP(sport=5555, dport=6666)
send(IP(src=CLIENT, dst=SERVER, ttl=TTL) / ICMP(type=3, code=3) / bytes(quoted)[:28])
time.sleep(0.2)

# 5. A fragmented datagram to the UDP echo port; the echo comes back fragmented too.
case("fragmented UDP")
frags = fragment(IP(src=CLIENT, dst=SERVER, ttl=TTL, id=4242) / UDP(sport=41010, dport=7) / Raw(b"f" * 2500), fragsize=1000)
for f in frags:
    send(f)
time.sleep(0.5)

def close(c):
    """Acknowledges what the server sent, closes, and acknowledges its FIN."""
    time.sleep(0.3)
    c.ack = c.server_next()
    c.send("FA")
    time.sleep(0.3)
    c.ack = c.server_next()
    c.send("A")
    time.sleep(0.2)
    c.stop()


REQUEST = b"GET / HTTP/1.0\r\nHost: server\r\n\r\n"

# The cases of Linux's own conntrack tests (packetdrill tcp/conntrack) that can be
# driven from the client side, and OpenBSD pf's regress cases.

# 6. SYN on an ESTABLISHED connection: the server answers with a challenge ACK.
case("SYN in ESTABLISHED, challenge ACK")
c = Conn(41020, 2_000_000)
c.open()
c.send("S", seq=(c.seq + 7777) & 0xFFFFFFFF)
time.sleep(0.3)
case("keep-alive below the window")
c.send("A", seq=(c.seq - 1) & 0xFFFFFFFF)
time.sleep(0.3)
case("RST before the window (pf)")
c.send("R", seq=(c.seq - 70000) & 0xFFFFFFFF)
case("fake ACK with RST (pf)")
c.send("RA", seq=c.seq, ack=(c.ack + 3_000_000) & 0xFFFFFFFF)
time.sleep(0.2)
case("request after the bad RSTs")
c.send("PA", REQUEST)
close(c)

# 7. The client closes its window: the server probes it, then sends when it opens.
case("zero window and window probes")
c = Conn(41021, 3_000_000)
c.open()
c.send("PA", REQUEST, window=0)
time.sleep(1.6)
c.ack = c.server_next()
c.send("A", window=502)
close(c)

# 8. FIN sent twice (a retransmission), then the server's data and FIN.
case("retransmitted FIN")
c = Conn(41022, 4_000_000)
c.open()
c.send("PA", REQUEST)
time.sleep(0.3)
c.ack = c.server_next()
c.send("FA")
c.send("FA", seq=(c.seq - 1) & 0xFFFFFFFF)
time.sleep(0.3)
c.ack = c.server_next()
c.send("A")
time.sleep(0.2)
c.stop()

# 9. Half-close: the request and the client's FIN at once; the answer comes after it.
case("half-close, data after FIN")
c = Conn(41023, 5_500_000)
c.open()
c.send("PA", REQUEST)
c.send("FA")
time.sleep(0.4)
c.ack = c.server_next()
c.send("A")
time.sleep(0.2)
c.stop()

# 10. TCP Fast Open: data on the SYN (with a cookie request); this server does not do
#     TFO, so it acknowledges the SYN only and the data is sent again.
case("TCP Fast Open, data on SYN")
c = Conn(41024, 6_000_000)
c.open(data=REQUEST, options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7), (34, b"")])
c.send("PA", REQUEST)
close(c)

# 11. Window scaling offered by the client only: the server has it turned off.
case("window scale on one side only")
subprocess.run(["ip", "netns", "exec", "hfd-s", "sysctl", "-qw", "net.ipv4.tcp_window_scaling=0"], check=True)
try:
    c = Conn(41025, 7_000_000)
    c.open()
    c.send("PA", REQUEST)
    close(c)
finally:
    subprocess.run(["ip", "netns", "exec", "hfd-s", "sysctl", "-qw", "net.ipv4.tcp_window_scaling=1"], check=True)

# 12. Fragments out of order (the first one last), and overlapping fragments (pf).
case("fragments out of order")
frags = fragment(IP(src=CLIENT, dst=SERVER, ttl=TTL, id=4343) / UDP(sport=41030, dport=7) / Raw(b"o" * 2500), fragsize=1000)
for f in reversed(frags):
    send(f)
time.sleep(0.5)
case("overlapping fragments")
whole = bytes(UDP(sport=41031, dport=7, len=8 + 1600) / Raw(b"v" * 1600))
send(IP(src=CLIENT, dst=SERVER, ttl=TTL, id=4444, flags="MF", frag=0, proto=17) / Raw(whole[:1000]))
send(IP(src=CLIENT, dst=SERVER, ttl=TTL, id=4444, flags="MF", frag=100, proto=17) / Raw(whole[800:1208]))
send(IP(src=CLIENT, dst=SERVER, ttl=TTL, id=4444, flags=0, frag=1200 // 8, proto=17) / Raw(whole[1200:]))
time.sleep(0.5)

# 14. Linux's conntrack_synack_reuse: another SYN on an ESTABLISHED connection draws a
#     challenge ACK; an exact RST clears the state; the SYN again opens a new one.
case("SYN-ACK reuse: SYN, challenge ACK, RST, SYN again")
c = Conn(41026, 8_000_000)
c.open()
c.send("PA", b"x" * 100)
time.sleep(0.3)
new_isn = (c.seq + 2000) & 0xFFFFFFFF
c.send("S", seq=new_isn)
time.sleep(0.3)
c.ack = c.server_next()
c.send("RA", seq=c.seq)
time.sleep(0.3)
c.send("S", seq=new_isn)
time.sleep(0.5)
# End it here: left in SYN_RECV, the server's SYN-ACK retransmissions would meet the
# client kernel's RST once the script's RST filter is gone, at a moment the capture
# and the listing of Linux's table race for.
c.send("R", seq=(new_isn + 1) & 0xFFFFFFFF)
time.sleep(0.2)
c.stop()

# 15. Linux's conntrack_ack_loss_stall: data already acknowledged, sent again after
#     more than the receiver's window has passed, is let through. No window scaling,
#     so the server's window stays under 64 KiB.
case("retransmission of data acknowledged long ago")
c = Conn(41027, 9_000_000)
c.open(options=[("MSS", 1460), ("SAckOK", b"")])
first_seq = c.seq
first = b"GET / HTTP/1.0\r\nX-0: " + b"a" * 1420 + b"\r\n"
c.send("PA", first)
for i in range(1, 48):
    c.send("PA", b"X-%d: " % i + b"b" * (1454 - len(b"X-%d: " % i)) + b"\r\n")
    time.sleep(0.002)
time.sleep(0.3)
c.ack = c.server_next()
c.send("PA", first, seq=first_seq)
time.sleep(0.2)
c.send("PA", b"\r\n")
close(c)

# Cases that need a crafted server too: the server's kernel is kept away from these
# client ports (nft in its namespace) and a raw socket there sends what the script
# builds, so both sides are written here.
SERVER_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for line in sys.stdin:
    p = bytes.fromhex(line.strip())
    s.sendto(p, (sys.argv[1], 0))
    sys.stdout.write("sent\\n")
    sys.stdout.flush()
"""
subprocess.run(["ip", "netns", "exec", "hfd-s", "nft", "add table inet hfds; add chain inet hfds in { type filter hook input priority 0; }; add rule inet hfds in tcp sport { 42001, 42002 } drop"], check=True)
peer = subprocess.Popen(["ip", "netns", "exec", "hfd-s", sys.executable, "-c", SERVER_SEND, CLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def from_server(sport_client, flags, seq, ack=0, options=None):
    t = TCP(sport=80, dport=sport_client, flags=flags, seq=seq, ack=ack, window=8192, options=options or [])
    peer.stdin.write(bytes(IP(src=SERVER, dst=CLIENT, ttl=TTL) / t).hex() + "\n")
    peer.stdin.flush()
    peer.stdout.readline()
    time.sleep(0.1)


def from_client(sport, flags, seq, ack=0, data=b"", options=None):
    t = TCP(sport=sport, dport=80, flags=flags, seq=seq, ack=ack, window=8192, options=options or [])
    send(ip() / t / Raw(data) if data else ip() / t)
    time.sleep(0.1)


try:
    # 16. Simultaneous open: both sides send a SYN, then both a SYN-ACK.
    case("simultaneous open")
    a, b = 11_000_000, 22_000_000
    from_client(42001, "S", a, options=[("MSS", 1460)])
    from_server(42001, "S", b, options=[("MSS", 1460)])
    from_client(42001, "SA", a, b + 1, options=[("MSS", 1460)])
    from_server(42001, "SA", b, a + 1, options=[("MSS", 1460)])
    from_client(42001, "A", a + 1, b + 1)
    from_client(42001, "PA", a + 1, b + 1, data=b"hello")
    from_server(42001, "A", b + 1, a + 6)
    from_client(42001, "R", a + 6)

    # 17. Linux's conntrack_synack_old: a SYN-ACK of an old incarnation (wrong ACK),
    #     the SYN again, then the right SYN-ACK: accepted.
    case("old SYN-ACK, then the right one")
    a = 33_000_000
    opts = [("MSS", 1460), ("SAckOK", b""), ("WScale", 8)]
    from_client(42002, "S", a, options=opts)
    from_server(42002, "SA", 145_824_453, 643_160_523, options=[("MSS", 1440), ("WScale", 0)])
    from_client(42002, "S", a, options=opts)
    from_server(42002, "SA", 145_758_918, a + 1, options=[("MSS", 1460), ("WScale", 0)])
    from_client(42002, "PA", a + 1, 145_758_919, data=b"x")
    from_server(42002, "A", 145_758_919, a + 2)
    from_client(42002, "R", a + 2)
finally:
    peer.stdin.close()
    peer.wait()
    subprocess.run(["ip", "netns", "exec", "hfd-s", "nft", "delete table inet hfds"], check=True)

# 13. An IPv6 atomic fragment (offset 0, no more fragments: RFC 6946).
case("IPv6 atomic fragment")
send(IPv6(src="2001:db8:1::2", dst="2001:db8:2::1", hlim=TTL) / IPv6ExtHdrFragment(id=77, offset=0, m=0) / ICMPv6EchoRequest(id=5, seq=1, data=b"atomic"))
time.sleep(0.5)
print("done", flush=True)
