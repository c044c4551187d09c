#!/usr/bin/python3
"""Sends malformed datagrams to a tapbridge UDP socket, for its tests.

  garbage.py --to HOST:PORT --from HOST [--vni N]

From HOST (any port) it sends: an empty datagram, 3 bytes, a VXLAN header with the I flag
clear, a valid header for the wrong VNI (N + 1), a valid header for VNI N with a 10-byte inner
frame (a runt), and 100 seeded random datagrams of 0-1500 bytes. It prints one JSON line with
what a VXLAN receiver expecting VNI N must make of them: {"sent", "malformed_encapsulation",
"vni_mismatch", "runt", "other"}.
"""
import argparse, json, random, socket, struct

p = argparse.ArgumentParser()
p.add_argument("--to", required=True)
p.add_argument("--from", dest="source", required=True)
p.add_argument("--vni", type=int, default=1)
a = p.parse_args()
host, port = a.to.rsplit(":", 1)
dest = (host, int(port))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((a.source, 0))

def vxlan(flags, vni):
    return struct.pack("!B3xI", flags, vni << 8)

rng = random.Random(7)
datagrams = [b"", b"\x08\x00\x00", vxlan(0x00, a.vni) + b"\xff" * 20,
             vxlan(0x08, a.vni + 1) + b"\xff" * 60, vxlan(0x08, a.vni) + b"\xff" * 10]
datagrams += [rng.randbytes(rng.randint(0, 1500)) for _ in range(100)]

expect = {"sent": len(datagrams), "malformed_encapsulation": 0, "vni_mismatch": 0, "runt": 0, "other": 0}
for d in datagrams:
    if len(d) < 8 or not d[0] & 0x08:
        expect["malformed_encapsulation"] += 1
    elif int.from_bytes(d[4:7], "big") != a.vni:
        expect["vni_mismatch"] += 1
    elif len(d) - 8 < 14:
        expect["runt"] += 1
    else:
        expect["other"] += 1
    s.sendto(d, dest)
print(json.dumps(expect))
