#!/usr/bin/env python3
"""A stream port's peer, as QEMU's -netdev stream speaks: each Ethernet frame after its length
(4 bytes, big-endian). Used by the stream port tests.

Usage: stream_peer.py ENDPOINT MODE [ARGS]
  ENDPOINT: unix:PATH or HOST:PORT
  exchange ME PEER COUNT TIMEOUT  once PEER is heard (hellos until then), send COUNT broadcast
                                  frames from MAC 02:00:00:00:00:ME (ME, PEER: two hex digits),
                                  paced; read until COUNT frames from PEER came or TIMEOUT seconds
                                  passed; prints "sent N received M"
  never-read SECONDS              send one frame (to be learned), never read, stay SECONDS
  vanish-mid-frame                send one whole frame, then a length and half its frame; close
  bad-length LENGTH               send one frame with that length field and nothing after it; print
                                  "closed" if the bridge closes the connection within 5 s
"""
import socket
import struct
import sys
import time


def connect(endpoint):
    if endpoint.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(endpoint[5:])
    else:
        host, port = endpoint.rsplit(":", 1)
        s = socket.create_connection((host.strip("[]"), int(port)))
    return s


def mac(k):
    return bytes.fromhex("0200000000" + k)


def frame(src, dst, seq, size=1400):
    body = struct.pack("!I", seq) + bytes(size - 18)
    return dst + src + b"\x88\xb5" + body


def framed(f):
    return struct.pack("!I", len(f)) + f


HELLO = 0xFFFFFFFF


def exchange(s, me, peer, count, timeout):
    """Says hello (a broadcast, every 50 ms) until something from PEER came, so no frame is sent
    before PEER is connected; then sends COUNT frames and counts PEER's, hellos aside."""
    src, want = mac(me), mac(peer)
    s.setblocking(False)
    deadline = time.monotonic() + timeout
    sent = received = 0
    seen = False
    last_hello = 0.0
    buf = b""
    out = b""
    while time.monotonic() < deadline and (received < count or sent < count or out):
        if not seen and time.monotonic() - last_hello > 0.05:
            out += framed(frame(src, b"\xff" * 6, HELLO, 64))
            last_hello = time.monotonic()
        if seen and sent < count and len(out) < 64 * 1024:
            for _ in range(min(20, count - sent)):
                out += framed(frame(src, b"\xff" * 6, sent))
                sent += 1
        if out:
            try:
                n = s.send(out)
                out = out[n:]
            except BlockingIOError:
                pass
        try:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
        except BlockingIOError:
            time.sleep(0.0005)
        while len(buf) >= 4:
            n = struct.unpack("!I", buf[:4])[0]
            if len(buf) < 4 + n:
                break
            f, buf = buf[4 : 4 + n], buf[4 + n :]
            if f[6:12] == want:
                seen = True
                if struct.unpack("!I", f[14:18])[0] != HELLO:
                    received += 1
    print(f"sent {sent} received {received}", flush=True)


def main():
    endpoint, mode = sys.argv[1], sys.argv[2]
    s = connect(endpoint)
    if mode == "exchange":
        exchange(s, sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]))
    elif mode == "never-read":
        s.sendall(framed(frame(mac("ee"), b"\xff" * 6, 0, 64)))
        print("connected", flush=True)
        time.sleep(float(sys.argv[3]))
    elif mode == "vanish-mid-frame":
        f = frame(mac("dd"), b"\xff" * 6, 0)
        s.sendall(framed(f) + struct.pack("!I", len(f)) + f[: len(f) // 2])
        time.sleep(0.2)
        s.close()
        print("vanished", flush=True)
    elif mode == "bad-length":
        f = frame(mac("cc"), b"\xff" * 6, 0, 64)
        s.sendall(framed(f) + struct.pack("!I", int(sys.argv[3])))
        s.settimeout(5)
        try:
            while s.recv(65536):
                pass
            print("closed", flush=True)
        except (socket.timeout, ConnectionResetError) as e:
            print("closed" if isinstance(e, ConnectionResetError) else "still open", flush=True)
    else:
        sys.exit(f"unknown mode {mode}")


main()
