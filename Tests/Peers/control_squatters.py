#!/usr/bin/env python3
"""Clients that squat a control socket: each connects and either trickles a byte every half
second (--mode slow) or sends nothing (--mode idle), reconnecting whenever it is dropped.

Bounded: --clients of them (at most 200), for --seconds (at most 60). Prints {"connects": N}.
Run: control_squatters.py --path /run/tapbridge/NAME.sock --mode slow --clients 20 --seconds 8
"""
import argparse, json, socket, threading, time

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--path", required=True)
    p.add_argument("--mode", choices=["slow", "idle"], default="slow")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seconds", type=float, default=8)
    a = p.parse_args()
    stop = time.monotonic() + min(a.seconds, 60)
    connects = [0]
    lock = threading.Lock()

    def squat():
        while time.monotonic() < stop:
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(a.path)
                with lock:
                    connects[0] += 1
                while time.monotonic() < stop:
                    if a.mode == "slow":
                        s.send(b"{")
                    time.sleep(0.5)
            except OSError:
                time.sleep(0.05)

    threads = [threading.Thread(target=squat) for _ in range(min(a.clients, 200))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"connects": connects[0]}))

main()
