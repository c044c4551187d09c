#!/usr/bin/env python3
"""Accepts one TCP connection on ADDRESS:PORT, reads it to the end and checks that it carried
BYTES bytes of the guest's pattern ("tapbridge\\n" repeated, cut at BYTES). Prints
"received N match True|False"; gives up after TIMEOUT seconds. Usage: receive.py ADDRESS PORT BYTES TIMEOUT"""
import socket
import sys
import time

address, port, size, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + timeout
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((address, port))
s.listen(1)
s.settimeout(timeout)
print("listening", flush=True)
c, _ = s.accept()
data = bytearray()
while time.monotonic() < deadline:
    c.settimeout(max(0.1, deadline - time.monotonic()))
    chunk = c.recv(1 << 20)
    if not chunk:
        break
    data += chunk
want = (b"tapbridge\n" * (size // 10 + 1))[:size]
print(f"received {len(data)} match {bytes(data) == want}", flush=True)
