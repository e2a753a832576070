#!/usr/bin/python3
"""Crafted TCP/UDP/ICMP sequences for the differential test against Linux conntrack.

Runs in the client namespace; the kernel's own RSTs (TTL 64) are dropped by an nft
rule there so that scapy can hold connections the kernel does not know about.
Scapy's packets use TTL 63. Each case prints one line, for the test log.
"""
import sys
import time

from scapy.all import IP, TCP, UDP, ICMP, Raw, AsyncSniffer, conf, fragment, send, sr1

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

    def open(self):
        syn = ip() / TCP(sport=self.sport, dport=80, flags="S", seq=self.seq, window=64240,
                         options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)])
        synack = sr1(syn, timeout=2)
        assert synack is not None and synack[TCP].flags == "SA", "no SYN/ACK"
        self.seq += 1
        self.ack = synack[TCP].seq + 1
        self.send("A")

    def send(self, flags, data=b"", seq=None, ack=None):
        t = TCP(sport=self.sport, dport=80, flags=flags, seq=self.seq if seq is None else seq,
                ack=(self.ack if ack is None else ack) if "A" in flags else 0, window=502)
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
print("done", flush=True)
