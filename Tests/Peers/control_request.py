#!/usr/bin/python3
"""Sends one control request (JSON) to a bridge's socket and checks the answer parses as JSON.
Prints {"ok", "bytes", "fdb": N entries}. Usage: control_request.py SOCKET REQUEST-JSON"""
import json, socket, sys

s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(60)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
chunks = []
while True:
    b = s.recv(1 << 20)
    if not b:
        break
    chunks.append(b)
data = b"".join(chunks)
answer = json.loads(data)
print(json.dumps({"ok": answer.get("ok"), "bytes": len(data), "fdb": len(answer.get("fdb") or [])}))
