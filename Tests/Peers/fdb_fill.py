#!/usr/bin/python3
"""Holds TAP NAME (so a bridge reaches it through its packet socket) and writes COUNT frames
from COUNT distinct source MACs (02:00:10:00:00:00 + i) to 02:00:00:ff:ff:ff, which is first
announced from the same TAP: the bridge learns every source and forwards nothing. Writes the
whole set (once STOP.1 exists) again until STOP exists or DEADLINE seconds passed, so frames the kernel
dropped are made up for; holds the TAP until STOP.2 exists. Usage: fdb_fill.py NAME COUNT STOP DEADLINE"""
import fcntl, os, struct, sys, time

TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
name, count, stop, deadline = sys.argv[1], int(sys.argv[2]), sys.argv[3], time.monotonic() + float(sys.argv[4])
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
os.system(f"ip link set {name} up")
print("ready", flush=True)
while not os.path.exists(f"{stop}.1") and time.monotonic() < deadline:
    time.sleep(0.05)
dst = bytes.fromhex("020000ffffff")
body = b"\x88\xb5" + bytes(46)  # local experimental EtherType, minimum frame
while not os.path.exists(stop) and time.monotonic() < deadline:
    os.write(fd, bytes.fromhex("ffffffffffff") + dst + body)
    for i in range(count):
        os.write(fd, dst + struct.pack(">HI", 0x0200, 0x10000000 + i) + body)
    time.sleep(0.5)
while not os.path.exists(stop + ".2") and time.monotonic() < deadline:
    time.sleep(0.1)
