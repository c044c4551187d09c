#!/usr/bin/env python3
"""Prints the golden vectors of Tests/TapBridgeCoreTests/OffloadVectorTests.swift.

scapy builds each super-frame and, independently of tapbridge's code, the segments the kernel's
GSO would make of it (IPv4 ID + i, lengths, sequence numbers, FIN/PSH only on the last segment,
CWR only on the first, checksums computed by scapy). Payload byte k is k % 251. Only the headers
are printed: the payload is the same pattern, cut at the segment size.
Run: python3 Tests/Peers/offload_vectors.py
"""
from scapy.all import Ether, Dot1Q, IP, IPv6, TCP, UDP, raw

def payload(n, start=0):
    return bytes((start + k) % 251 for k in range(n))

SRC, DST = "02:00:00:00:00:01", "02:00:00:00:00:02"
TS = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))]

def ether(tag):
    e = Ether(src=SRC, dst=DST)
    return e / Dot1Q(vlan=tag) if tag else e

def cases():
    # name, builder(payload bytes, index, count) -> scapy packet, total payload, segment size
    yield ("tcp4Options", lambda p, i, n, seq: ether(None) / IP(src="10.0.0.1", dst="10.0.0.2", id=0x1234, flags="DF", ttl=64) /
           TCP(sport=40000, dport=5201, seq=seq, ack=7, flags=("A" if i < n - 1 else "AFP") if i > 0 else ("AC" if n > 1 else "ACFP"), window=512, options=TS) / p, 2500, 1000, "ACFP")
    yield ("tcp6", lambda p, i, n, seq: ether(None) / IPv6(src="fd00::1", dst="fd00::2", hlim=64) /
           TCP(sport=40001, dport=5201, seq=seq, ack=9, flags="A" if i < n - 1 else "AP", window=512) / p, 2100, 1000, "AP")
    yield ("tcp4Tagged", lambda p, i, n, seq: ether(10) / IP(src="10.0.0.1", dst="10.0.0.2", id=0xFFFF, ttl=64) /
           TCP(sport=40002, dport=5201, seq=seq, ack=11, flags="A" if i < n - 1 else "AP", window=512) / p, 1500, 1000, "AP")
    yield ("udp4", lambda p, i, n, seq: ether(None) / IP(src="10.0.0.1", dst="10.0.0.2", id=100, ttl=64) /
           UDP(sport=40003, dport=5201) / p, 2500, 1000, None)

def header_hex(pkt, payload_len):
    b = raw(pkt)
    return b[: len(b) - payload_len].hex()

for name, build, total, size, superflags in cases():
    seq0 = 0xFFFFF000  # wraps within the frame
    n = (total + size - 1) // size
    sup = build(payload(total), 0, 1, seq0)
    if superflags:
        sup[TCP].flags = superflags
    sup = sup.__class__(raw(sup))
    print(f"{name} super {header_hex(sup, total)}")
    for i in range(n):
        chunk = payload(min(size, total - i * size), i * size)
        seg = build(chunk, i, n, (seq0 + i * size) & 0xFFFFFFFF)
        if IP in seg:
            seg[IP].id = (seg[IP].id + i) & 0xFFFF
        print(f"{name} seg{i} {header_hex(seg.__class__(raw(seg)), len(chunk))}")
