#!/usr/bin/python3
"""soak: one tapbridge under mixed, changing and hostile load for MINUTES (default 10), its
resources sampled all along. Not a test (it takes minutes and judges trends): run it after a
change to the event loop, the ports or the control socket, as root, from the repository root:

    Docs/bench/soak.py [-m MINUTES] [-o RUN.jsonl] [--plot RUN.png] [--binary PATH]

The bridge under test has two TAPs in namespaces a and b, a VXLAN remote (a second tapbridge,
with a TAP in namespace c), a stream listener and a control socket. Each minute it gets:
  - TCP both ways between a and b (iperf3, 20 s each way), and 64-byte UDP from a to c across
    the remote (iperf3, 20 Mbit/s);
  - MAC churn: frames from random source MACs into a's TAP (a packet socket, ~2,000/s), so the
    table fills to --max-macs 2048 and keeps evicting;
  - the remote going away (its bridge killed) for 15 s and coming back;
  - a port hot-added and removed (port add/del), twice;
  - control clients: show stats, show fdb, one that connects and says nothing, one that sends
    garbage, one that sends 100 KB without a newline, one that vanishes mid-request;
  - stream clients: one exchanging frames, one vanishing in the middle of a frame.
Every 15 s it samples the bridge: RSS, open descriptors, MAC table entries, and error or
critical log lines since the last sample. At the end it prints one line per minute and a
verdict: flat (after the first two minutes, RSS within 10 % and 4 MiB of its level then,
descriptors within 4, no error line that the load does not explain) or not. --plot draws the
four series (gnuplot).
"""
import argparse
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TAG = f"sk{os.getpid() % 10000}"
NS = {k: f"{TAG}{k}" for k in "abc"}
CONTROL = f"/run/tapbridge/{TAG}.sock"
STREAM = f"/tmp/{TAG}-stream.sock"
PORT_A, PORT_C = 48900 + os.getpid() % 500, 49500 + os.getpid() % 500
# error lines the load is meant to cause (the remote going away, hostile clients)
EXPECTED = ("unreachable", "control", "stream")


def sh(*args, check=False, timeout=30, **kw):
    """Runs a command; one that overruns `timeout` is killed and counts as failed (124): a
    load step stalled by the remote going away must not stop the soak."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check, **kw)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 124, "", "timed out")


def ns(name, *args, **kw):
    return sh("ip", "netns", "exec", NS[name], *args, **kw)


class Soak:
    def __init__(self, binary, minutes):
        self.binary = binary
        self.minutes = minutes
        self.procs = []
        self.stop = threading.Event()
        self.log = open(f"/tmp/{TAG}-bridge.log", "w+")
        self.peer = None
        self.samples = []
        self.errors_seen = 0

    def start_bridge(self):
        args = [self.binary, "--name", TAG, "--max-macs", "2048",
                "--port", f"{TAG}a,netns={NS['a']},addr=10.97.0.1/24",
                "--port", f"{TAG}b,netns={NS['b']},addr=10.97.0.2/24",
                "--listen", f"127.0.0.1:{PORT_A}", "--remote", f"127.0.0.1:{PORT_C}",
                "--stream-listen", f"unix:{STREAM}"]
        self.bridge = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        sh(self.binary, "wait", "--name", TAG, check=True)

    def start_peer(self):
        self.peer_log = open(f"/tmp/{TAG}-peer.log", "a")
        self.peer = subprocess.Popen([self.binary, "--name", f"{TAG}p", "--control", "none",
                                      "--port", f"{TAG}c,netns={NS['c']},addr=10.97.0.3/24",
                                      "--listen", f"127.0.0.1:{PORT_C}", "--remote", f"127.0.0.1:{PORT_A}"],
                                     stdout=self.peer_log, stderr=self.peer_log)

    def stop_peer(self):
        if self.peer:
            self.peer.send_signal(signal.SIGTERM)
            self.peer.wait(timeout=10)
            self.peer = None

    def sample(self, t):
        pid = self.bridge.pid
        status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
        rss = int(status["VmRSS"].split()[0])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        stats = sh(self.binary, "show", "stats", "--json", "--name", TAG)
        try:
            entries = json.loads(stats.stdout)["fdb"]["entries"]
        except (ValueError, KeyError):
            entries = -1
        self.log.flush()
        lines = open(self.log.name).read().splitlines()
        new = lines[self.errors_seen:]
        self.errors_seen = len(lines)
        errors = [l for l in new if " error " in l or " critical " in l]
        unexplained = [l for l in errors if not any(e in l for e in EXPECTED)]
        s = {"t": round(t, 1), "rss_kib": rss, "fds": fds, "fdb": entries, "errors": len(errors), "unexplained": unexplained[:3]}
        self.samples.append(s)
        return s

    # --- load ---------------------------------------------------------------------------

    def iperf(self, client, server, address, extra, seconds):
        port = str(5500 + random.randrange(400))
        srv = subprocess.Popen(["ip", "netns", "exec", NS[server], "iperf3", "-s", "-1", "-p", port],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        ns(client, "iperf3", "-c", address, "-p", port, "-t", str(seconds), "--connect-timeout", "3000", *extra, timeout=seconds + 20)
        try:
            srv.wait(timeout=5)
        except subprocess.TimeoutExpired:
            srv.kill()

    def traffic(self):
        while not self.stop.is_set():
            self.iperf("a", "b", "10.97.0.2", [], 20)
            self.iperf("a", "b", "10.97.0.2", ["-R"], 20)
            self.iperf("a", "c", "10.97.0.3", ["-u", "-l", "64", "-b", "20M"], 15)

    def churn(self):
        code = ("import socket,os,time,random\n"
                f"s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW);s.bind(('{TAG}a',0))\n"
                "end=time.time()+60\n"
                "while time.time()<end:\n"
                "  for _ in range(100): s.send(b'\\xff'*6+bytes([2])+os.urandom(5)+b'\\x88\\xb5'+bytes(46))\n"
                "  time.sleep(0.05)\n")
        while not self.stop.is_set():
            ns("a", "/usr/bin/python3", "-c", code, timeout=90)

    def remote_flap(self):
        while not self.stop.wait(45):
            self.stop_peer()
            if self.stop.wait(15):
                break
            self.start_peer()

    def hot_ports(self):
        k = 0
        while not self.stop.wait(30):
            name = f"{TAG}h{k % 2}"
            sh(self.binary, "port", "add", name, "--name", TAG)
            time.sleep(5)
            sh(self.binary, "port", "del", name, "--name", TAG)
            k += 1

    def control_clients(self):
        while not self.stop.wait(5):
            sh(self.binary, "show", "stats", "--name", TAG)
            sh(self.binary, "show", "fdb", "--json", "--name", TAG)
            for payload, linger in ((b"", 2), (b"\x00garbage\xff\n", 0.2), (b"x" * 100_000, 0.5), (b'{"command":"show-', 0.1)):
                try:
                    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    c.connect(CONTROL)
                    if payload:
                        c.sendall(payload)
                    time.sleep(linger)
                    c.close()
                except OSError:
                    pass

    def stream_clients(self):
        f = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x77" + b"\x88\xb5" + bytes(50)
        while not self.stop.wait(7):
            try:
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.connect(STREAM)
                for _ in range(200):
                    c.sendall(struct.pack("!I", len(f)) + f)
                c.sendall(struct.pack("!I", len(f)) + f[:20])  # half a frame, then gone
                time.sleep(0.5)
                c.close()
            except OSError:
                pass

    # --- run ----------------------------------------------------------------------------

    def run(self):
        self.start_bridge()
        self.start_peer()
        workers = [threading.Thread(target=f, daemon=True) for f in
                   (self.traffic, self.churn, self.remote_flap, self.hot_ports, self.control_clients, self.stream_clients)]
        for w in workers:
            w.start()
        start = time.monotonic()
        end = start + self.minutes * 60
        while time.monotonic() < end:
            time.sleep(15)
            if self.bridge.poll() is not None:
                print(f"the bridge exited ({self.bridge.returncode})", file=sys.stderr)
                break
            s = self.sample(time.monotonic() - start)
            print(f"  t={s['t']:6.0f}s rss={s['rss_kib']} KiB fds={s['fds']} fdb={s['fdb']} errors={s['errors']}", flush=True)
        self.stop.set()
        for w in workers:
            w.join(timeout=90)

    def cleanup(self):
        self.stop.set()
        self.stop_peer()
        if getattr(self, "bridge", None) and self.bridge.poll() is None:
            self.bridge.send_signal(signal.SIGTERM)
            try:
                self.bridge.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.bridge.kill()
        for n in NS.values():
            sh("ip", "netns", "del", n)
        for h in ("h0", "h1"):
            sh("ip", "link", "del", f"{TAG}{h}")

    def verdict(self):
        later = [s for s in self.samples if s["t"] >= 120]
        if len(later) < 2:
            return False, "too short to judge (run at least 3 minutes)"
        base = later[0]
        rss_ok = all(s["rss_kib"] <= base["rss_kib"] * 1.10 + 4096 for s in later)
        fds = [s["fds"] for s in later]
        unexplained = [l for s in self.samples for l in s["unexplained"]]
        ok = rss_ok and max(fds) - min(fds) <= 4 and not unexplained and self.bridge.returncode in (None, 0)
        return ok, (f"RSS {base['rss_kib']} -> {later[-1]['rss_kib']} KiB (max {max(s['rss_kib'] for s in later)}), "
                    f"descriptors {min(fds)}-{max(fds)}, MAC table {min(s['fdb'] for s in later)}-{max(s['fdb'] for s in later)}, "
                    f"error lines {sum(s['errors'] for s in self.samples)} ({len(unexplained)} unexplained{': ' + unexplained[0] if unexplained else ''})")


def plot(samples, path):
    data = path + ".dat"
    with open(data, "w") as f:
        for s in samples:
            f.write(f"{s['t'] / 60:.2f} {s['rss_kib'] / 1024:.2f} {s['fds']} {s['fdb']} {s['errors']}\n")
    script = f"""
set terminal pngcairo size 1000,700
set output '{path}'
set multiplot layout 2,2 title 'tapbridge soak: {len(samples)} samples'
set xlabel 'minutes'
set grid
set yrange [0:*]
plot '{data}' using 1:2 with linespoints title 'RSS (MiB)'
plot '{data}' using 1:3 with linespoints title 'open descriptors'
plot '{data}' using 1:4 with linespoints title 'MAC table entries'
plot '{data}' using 1:5 with impulses lw 3 title 'error lines per sample'
unset multiplot
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    os.remove(data)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--minutes", type=float, default=10)
    p.add_argument("-o", "--output")
    p.add_argument("--plot")
    p.add_argument("--binary", default=os.path.join(ROOT, ".build/release/tapbridge"))
    a = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (namespaces, TAPs)")
    for tool in ("iperf3",) + (("gnuplot",) if a.plot else ()):
        if sh("which", tool).returncode != 0:
            sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", tool, timeout=300)
    soak = Soak(a.binary, a.minutes)
    try:
        soak.run()
    finally:
        soak.cleanup()
    ok, why = soak.verdict()
    if a.output:
        with open(a.output, "w") as f:
            for s in soak.samples:
                f.write(json.dumps(s) + "\n")
    if a.plot:
        plot(soak.samples, a.plot)
    print(("flat: " if ok else "NOT flat: ") + why)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
