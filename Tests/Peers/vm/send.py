#!/usr/bin/env python3
"""Connects to ADDRESS:PORT (trying again until TIMEOUT seconds passed), sends BYTES bytes of the
guest's pattern ("tapbridge\\n" repeated, cut at BYTES) and closes. Prints "sent N md5 HEX" (the
md5 of what it sent, for the guest's TB-RECEIVED line). Usage: send.py ADDRESS PORT BYTES TIMEOUT"""
import hashlib
import socket
import sys
import time

address, port, size, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
data = (b"tapbridge\n" * (size // 10 + 1))[:size]
deadline = time.monotonic() + timeout
while True:
    try:
        s = socket.create_connection((address, port), timeout=2)
        break
    except OSError as e:
        if time.monotonic() > deadline:
            sys.exit(f"cannot connect: {e}")
        time.sleep(0.5)
s.settimeout(max(1.0, deadline - time.monotonic()))
s.sendall(data)
s.shutdown(socket.SHUT_WR)
while s.recv(65536):
    pass
print(f"sent {len(data)} md5 {hashlib.md5(data).hexdigest()}", flush=True)
