#!/usr/bin/python3
"""A Geneve (RFC 8926) endpoint for tapbridge's tests, its headers built and parsed by scapy
(scapy.contrib.geneve), not by tapbridge's code: it relays between a TAP it makes and UDP,
as a host's geneve device would (this machine's kernel has none: CONFIG_GENEVE is off).

  geneve_peer.py --tap NAME --listen ADDR:PORT --remote ADDR:PORT --vni N --seconds S

Frames read from the TAP leave as GENEVE(vni=N, proto=0x6558)/frame to --remote; datagrams
whose header scapy parses as version 0, protocol 0x6558, VNI N, no control bit, are written to
the TAP without their header and options. Prints "ready" once the TAP exists, and at exit one
JSON line: {"sent": n, "received": n, "refused": n}. Stops on SIGTERM or after --seconds.
"""
import argparse, fcntl, json, os, select, signal, socket, struct, time

from scapy.contrib.geneve import GENEVE
from scapy.packet import Raw

p = argparse.ArgumentParser()
p.add_argument("--tap", required=True)
p.add_argument("--listen", required=True)
p.add_argument("--remote", required=True)
p.add_argument("--vni", type=int, required=True)
p.add_argument("--seconds", type=float, default=60)
a = p.parse_args()

TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
tap = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", a.tap.encode(), IFF_TAP | IFF_NO_PI))
host, port = a.listen.rsplit(":", 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, int(port)))
rhost, rport = a.remote.rsplit(":", 1)
remote = (rhost, int(rport))

stop = False
def finish(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, finish)
signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])  # (a test runner may start it with SIGTERM blocked)

counts = {"sent": 0, "received": 0, "refused": 0}
print("ready", flush=True)
deadline = time.monotonic() + a.seconds
while not stop and time.monotonic() < deadline:
    ready, _, _ = select.select([tap, s], [], [], 0.2)
    if tap in ready:
        frame = os.read(tap, 65536)
        s.sendto(bytes(GENEVE(vni=a.vni, proto=0x6558) / Raw(frame)), remote)
        counts["sent"] += 1
    if s in ready:
        data, _ = s.recvfrom(65536)
        g = GENEVE(data)
        if g.version != 0 or g.proto != 0x6558 or g.vni != a.vni or g.oam or g.critical or len(data) < 8 + 4 * g.optionlen:
            counts["refused"] += 1
            continue
        os.write(tap, data[8 + 4 * g.optionlen:])
        counts["received"] += 1
print(json.dumps(counts), flush=True)
