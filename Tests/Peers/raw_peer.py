#!/usr/bin/python3
"""A raw-encapsulation UDP peer for tapbridge's tests: one Ethernet frame per datagram, as
QEMU's -netdev dgram speaks. Frames are built and parsed by scapy, not by tapbridge's code.

  raw_peer.py --listen PORT --bridge HOST:PORT --ip A.B.C.D --target A.B.C.D [--count N]

It ARPs for --target, pings it --count times (answering ARP for its own --ip), and prints one
JSON line: {"arp_reply": bool, "target_mac": str, "echo_replies": n, "arp_requests": n}
(ARP requests are repeated every 0.5 s until one is answered). Exit 0 if every echo
was answered. Bounded: gives up after 10 seconds.
"""
import argparse, json, socket, sys, time

from scapy.layers.l2 import ARP, Ether
from scapy.layers.inet import ICMP, IP

p = argparse.ArgumentParser()
p.add_argument("--listen", type=int, required=True)
p.add_argument("--bridge", required=True)
p.add_argument("--ip", required=True)
p.add_argument("--target", required=True)
p.add_argument("--mac", default="02:00:00:00:77:09")
p.add_argument("--count", type=int, default=3)
a = p.parse_args()
host, port = a.bridge.rsplit(":", 1)
bridge = (host, int(port))

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", a.listen))
s.settimeout(0.2)

def send(frame):
    s.sendto(bytes(frame), bridge)

target_mac = None
replies = set()
deadline = time.time() + 10
next_arp = 0.0
next_echo = 0.0
seq = 0
arp_requests = 0
while time.time() < deadline and len(replies) < a.count:
    now = time.time()
    if target_mac is None and now >= next_arp:
        send(Ether(dst="ff:ff:ff:ff:ff:ff", src=a.mac) / ARP(op=1, hwsrc=a.mac, psrc=a.ip, pdst=a.target))
        next_arp = now + 0.5
        arp_requests += 1
    if target_mac is not None and seq < a.count and now >= next_echo:
        seq += 1
        send(Ether(dst=target_mac, src=a.mac) / IP(src=a.ip, dst=a.target) / ICMP(type=8, id=0x7777, seq=seq) / b"tapbridge-raw-peer")
        next_echo = now + 0.1
    try:
        data, _ = s.recvfrom(65535)
    except socket.timeout:
        continue
    f = Ether(data)
    if f.haslayer(ARP):
        arp = f[ARP]
        if arp.op == 2 and arp.psrc == a.target:
            target_mac = arp.hwsrc
        elif arp.op == 1 and arp.pdst == a.ip:
            send(Ether(dst=arp.hwsrc, src=a.mac) / ARP(op=2, hwsrc=a.mac, psrc=a.ip, hwdst=arp.hwsrc, pdst=arp.psrc))
    elif f.haslayer(ICMP) and f[ICMP].type == 0 and f[ICMP].id == 0x7777:
        replies.add(f[ICMP].seq)

print(json.dumps({"arp_reply": target_mac is not None, "target_mac": target_mac, "echo_replies": len(replies), "arp_requests": arp_requests}))
sys.exit(0 if len(replies) == a.count else 1)
