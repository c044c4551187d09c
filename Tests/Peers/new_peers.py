#!/usr/bin/env python3
"""Many new senders at once, for a bridge with --accept-peers --encap raw: each sender (its own
UDP socket on 127.0.0.1) sends bursts of raw Ethernet frames (EtherType 0x88b5, a source
MAC of its own) to --destination (default: broadcast). With --train each burst leaves as one UDP_SEGMENT train (the receiving socket
takes it whole with UDP_GRO); without, one datagram at a time.

Bounded: senders x bursts x per-burst datagrams, paced by --gap seconds between bursts.
Prints {"sent": N}.
Run: new_peers.py --bridge 127.0.0.1:PORT --senders 1 --bursts 50 --per-burst 64 --train
"""
import argparse, json, socket, struct, time

SOL_UDP, UDP_SEGMENT = 17, 103

def frame(sender, k, destination=b"\xff" * 6):
    src = bytes([0x02, 0x00, (sender >> 16) & 0xFF, (sender >> 8) & 0xFF, sender & 0xFF, 0x01])
    return destination + src + b"\x88\xb5" + struct.pack("!HH", sender, k) + bytes(96)

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bridge", required=True)
    p.add_argument("--senders", type=int, default=1)
    p.add_argument("--bursts", type=int, default=1)
    p.add_argument("--per-burst", type=int, default=64)
    p.add_argument("--train", action="store_true")
    p.add_argument("--gap", type=float, default=0.002)
    p.add_argument("--destination", default="ff:ff:ff:ff:ff:ff", help="the frames' destination MAC")
    a = p.parse_args()
    destination = bytes(int(x, 16) for x in a.destination.split(":"))
    host, port = a.bridge.rsplit(":", 1)
    target = (host, int(port))
    socks = []
    for _ in range(min(a.senders, 1000)):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    sent = 0
    for burst in range(min(a.bursts, 1000)):
        for n, s in enumerate(socks):
            frames = [frame(n, burst * a.per_burst + k, destination) for k in range(min(a.per_burst, 64))]
            if a.train:
                size = len(frames[0])
                s.sendmsg([b"".join(frames)], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))], 0, target)
            else:
                for f in frames:
                    s.sendto(f, target)
            sent += len(frames)
            time.sleep(a.gap)
    print(json.dumps({"sent": sent}))

main()
