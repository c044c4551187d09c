#!/usr/bin/python3
"""Plays one scripted sequence of IGMP/MLD joins, leaves, queries and group traffic into the
four ports of a bridge, and prints where each frame came out: the same script against the
Linux bridge (mcast_snooping 1) and against tapbridge must give the same answers. Frames are
built by scapy; each one is sent from one port's far end, and the other ends are read for an
exact copy of it.

  snoop_diff.py IF0 IF1 IF2 IF3     (the far ends of the bridge's ports, in this namespace)

Prints one JSON list: [[step, [ports the frame came out of]], ...]. Bounded: about 8 s.
"""
import json, socket, sys, time

from scapy.all import Ether, IP, IPv6, UDP, Raw, ICMPv6EchoRequest
from scapy.contrib.igmp import IGMP
from scapy.contrib.igmpv3 import IGMPv3, IGMPv3mr, IGMPv3gr, IGMPv3mq
from scapy.layers.inet import IPOption_Router_Alert
from scapy.layers.inet6 import IPv6ExtHdrHopByHop, RouterAlert, PadN, ICMPv6MLReport, ICMPv6MLReport2, ICMPv6MLDMultAddrRec, ICMPv6MLQuery2, ICMPv6MLDone, ICMPv6ND_NS

ifaces = sys.argv[1:5]
socks = []
for name in ifaces:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((name, 0))
    s.setblocking(False)
    socks.append(s)

MAC = "02:00:00:00:00:%02x"
RA = IPOption_Router_Alert()
HBH = IPv6ExtHdrHopByHop(options=[RouterAlert(value=0), PadN(optdata=b"")])

def m4(g):
    o = [int(x) for x in g.split(".")]
    return "01:00:5e:%02x:%02x:%02x" % (o[1] & 0x7F, o[2], o[3])

def m6(g):
    b = socket.inet_pton(socket.AF_INET6, g)
    return "33:33:%02x:%02x:%02x:%02x" % tuple(b[12:16])

serial = [0]
def data4(port, group):
    serial[0] += 1
    return Ether(src=MAC % (port + 1), dst=m4(group)) / IP(src="10.0.0.%d" % (port + 1), dst=group, ttl=4) / UDP(sport=5000, dport=5001) / Raw(b"step %d" % serial[0])

def data6(port, group):
    serial[0] += 1
    return Ether(src=MAC % (port + 1), dst=m6(group)) / IPv6(src="fd00::%d" % (port + 1), dst=group, hlim=4) / UDP(sport=5000, dport=5001) / Raw(b"step %d" % serial[0])

def igmp2(port, kind, group, dst=None):
    dst = dst or group
    return Ether(src=MAC % (port + 1), dst=m4(dst)) / IP(src="10.0.0.%d" % (port + 1), dst=dst, ttl=1, options=[RA]) / IGMP(type=kind, gaddr=group)

def igmp3(port, records):
    return Ether(src=MAC % (port + 1), dst=m4("224.0.0.22")) / IP(src="10.0.0.%d" % (port + 1), dst="224.0.0.22", ttl=1, options=[RA]) / IGMPv3(type=0x22) / IGMPv3mr(records=[IGMPv3gr(rtype=t, maddr=g) for t, g in records])

def query4(port, group="0.0.0.0", mrcode=10):
    dst = "224.0.0.1" if group == "0.0.0.0" else group
    return Ether(src=MAC % (port + 1), dst=m4(dst)) / IP(src="10.0.0.%d" % (port + 1), dst=dst, ttl=1, options=[RA]) / IGMPv3(type=0x11, mrcode=mrcode) / IGMPv3mq(gaddr=group)

def mld(port, msg, dst):
    return Ether(src=MAC % (port + 1), dst=m6(dst)) / IPv6(src="fe80::%d" % (port + 1), dst=dst, hlim=1) / HBH / msg

def query6(port):
    return mld(port, ICMPv6MLQuery2(mrd=1000), "ff02::1")

def ns6(port, target_group):
    serial[0] += 1
    return Ether(src=MAC % (port + 1), dst=m6(target_group)) / IPv6(src="fe80::%d" % (port + 1), dst=target_group, hlim=255) / ICMPv6ND_NS(tgt="fe80::2")

def drain():
    for s in socks:
        while True:
            try:
                s.recvfrom(65535)
            except BlockingIOError:
                break

def send(port, frame):
    """Sends `frame` from `port`'s far end; returns the ports it came out of."""
    raw = bytes(frame)
    drain()
    socks[port].send(raw)
    time.sleep(0.15)
    out = []
    for k, s in enumerate(socks):
        while True:
            try:
                data, addr = s.recvfrom(65535)
            except BlockingIOError:
                break
            if addr[2] != socket.PACKET_OUTGOING and data == raw and k not in out:
                out.append(k)
    return sorted(out)

G, G2, LL = "239.1.2.3", "239.9.9.9", "224.0.0.251"
G6 = "ff3e::1234"
steps = [
    ("data, nobody joined, no querier", lambda: send(0, data4(0, G))),
    ("IGMPv2 report from 1, no querier", lambda: send(1, igmp2(1, 0x16, G))),
    ("data to a group 1 joined, no querier", lambda: send(0, data4(0, G))),
    ("IGMPv3 general query from 3 (1 s)", lambda: send(3, query4(3))),
    ("data at once after the first query", lambda: send(0, data4(0, G))),
    ("wait 1.3 s", lambda: time.sleep(1.3) or []),
    ("data once the querier counts", lambda: send(0, data4(0, G))),
    ("IGMPv3 report TO_EX from 2", lambda: send(2, igmp3(2, [(4, G)]))),
    ("data: members 1 and 2, router 3", lambda: send(0, data4(0, G))),
    ("data to 224.0.0.251", lambda: send(0, data4(0, LL))),
    ("data to a group nobody joined", lambda: send(0, data4(0, G2))),
    ("IGMPv2 leave from 1", lambda: send(1, igmp2(1, 0x17, G, dst="224.0.0.2"))),
    ("data right after the leave", lambda: send(0, data4(0, G))),
    ("group-specific query from 3 (1 s)", lambda: send(3, query4(3, G, mrcode=10))),
    ("IGMPv2 report from 2 (answers)", lambda: send(2, igmp2(2, 0x16, G))),
    ("wait 2.3 s", lambda: time.sleep(2.3) or []),
    ("data after the group query: 1 did not answer", lambda: send(0, data4(0, G))),
    ("IGMPv3 report TO_IN{} from 2", lambda: send(2, igmp3(2, [(3, G)]))),
    ("data right after 2's leave", lambda: send(0, data4(0, G))),
    ("MLDv2 general query from 3 (1 s)", lambda: send(3, query6(3))),
    ("MLDv2 report TO_EX from 1", lambda: send(1, mld(1, ICMPv6MLReport2(records=[ICMPv6MLDMultAddrRec(rtype=4, dst=G6), ICMPv6MLDMultAddrRec(rtype=2, dst="ff02::1:ff00:2")]), "ff02::16"))),
    ("wait 1.3 s", lambda: time.sleep(1.3) or []),
    ("IPv6 data to a group 1 joined", lambda: send(0, data6(0, G6))),
    ("neighbour solicitation to 1's solicited-node group", lambda: send(0, ns6(0, "ff02::1:ff00:2"))),
    ("IPv6 to all nodes", lambda: send(0, Ether(src=MAC % 1, dst="33:33:00:00:00:01") / IPv6(src="fe80::1", dst="ff02::1", hlim=255) / ICMPv6EchoRequest(id=serial[0]))),
    ("MLDv1 report from 2", lambda: send(2, mld(2, ICMPv6MLReport(mladdr=G6), G6))),
    ("IPv6 data: members 1 and 2", lambda: send(0, data6(0, G6))),
    ("MLDv1 done from 1", lambda: send(1, mld(1, ICMPv6MLDone(mladdr=G6), "ff02::2"))),
    ("IPv6 data right after the done", lambda: send(0, data6(0, G6))),
]
out = []
for label, step in steps:
    got = step()
    if not label.startswith("wait"):
        out.append([label, got])
print(json.dumps(out))
