#!/usr/bin/python3
"""netbench: tapbridge against the kernel and other userspace forwarders, in one interleaved run.

usage (as root, from the repository root):
    Docs/bench/netbench.py [-r ROUNDS] [-t SECONDS] [-o RUN.jsonl] [--plot RUN.png]
                           [-x 'TAPBRIDGE ARGS' --tag NAME] [--baseline OLD-BUILD] [CASE ...]
    Docs/bench/netbench.py --summarize RUN.jsonl [--plot RUN.png]

Every case joins two network namespaces, A (10.99.0.1/24) and B (10.99.0.2/24), MTU 1500, and
measures, A to B: iperf3 TCP (Gbit/s, retransmits), iperf3 UDP with 64-byte payloads at an
unlimited offered rate (datagrams delivered per second), the ping round trip on an idle path
(median of 40 pings, 20 ms apart or --ping-interval, in ms), the forwarder's CPU during the TCP
test (% of one core, all its processes) and its peak memory (VmHWM). Rounds are interleaved
(round 1 of every case, then round 2, ...); the summary gives median (min-max) per case and
the ratios of tapbridge to each anchor, from the same run. Raw results: one JSON object per
line in RUN.jsonl. The plot (gnuplot) shows TCP medians with min-max bars.

Cases:
  tap-tap          tapbridge, one TAP in A and one in B (offloads on, the default)
  tap-tap-off      the same with --offload off
  kernel-bridge    veth pairs on a kernel bridge (the anchor of TAP-TAP and TAP-veth)
  relay            Docs/bench/anchors/relay.c: poll(2) TAP-to-TAP copy, one frame per syscall
  relay-vnet       relay -v: the same with the vnet header and TSO (64 KiB super-frames)
  relay-vnet-uring relay-vnet writing each wake-up's frames with one io_uring submission (liburing):
                   what batching the TAP writes buys a minimal relay
  relay-vnet-multishot  relay -v -m: no poll(2); a multishot read per TAP (provided buffers) and the
                   writes batched: what batching the reads too would buy
  vde              vde_switch with two TAPs
  tap-veth         tapbridge, a veth in A reached through a packet port, a TAP in B
  tap-veth-off     the same with --offload off
  tap-remote-tap   two tapbridges, one TAP each, joined by VXLAN over 127.0.0.1
  tap-remote-tap-off  the same with --offload off (no trains, no offloads: as before them)
  tap-remote-tap-sealed  the same with encap=sealed (WireGuard's protocol: a key per bridge by tapbridge genkey, peer=)
  tap-remote-tap-1500  tap-remote-tap over a veth underlay of MTU 1500 between two namespaces (each
                   datagram at most 1500 bytes, as between two hosts), and -sealed-1500 the same sealed
  tap-remote-tap-sealed-1500-attacked  -sealed-1500 while Docs/bench/anchors/flood.c, from B's host, floods
                   A's bridge with keyless initiations and transport datagrams of random indexes from
                   B's bridge's address (spoofed), as fast as one core can (attack_datagrams, attack_kpps; then 3 s
                   of the flood alone: attack_cpu_us_per_datagram, bridge A's CPU per datagram refused);
                   -nullflood the same flood to a port nothing listens on (its cost to the machine alone)
  tap-remote-tap-kernel  two tapbridges on two namespaces as -1500, over a veth of MTU 1600 (as
                   kernel-vxlan's), each remote datapath=kernel: a Linux vxlan device tapbridge makes
  tap-tap-busy, tap-remote-tap-busy, tap-remote-tap-kernel-busy  the same with --busy-poll 50ms on every
                   tapbridge (polls without sleeping while traffic comes within 50 ms: the RTT
                   without wake-ups, for a busy core)
  kernel-vxlan     two Linux vxlan devices over a veth underlay (MTU 1600)
  kernel-bridge-vxlan  the kernel doing what tapbridge-remote-tapbridge does: on each of two hosts a
                   Linux bridge of a vxlan device and a veth from A (B), underlay MTU 1600
  eight-ports      tapbridge with 8 TAPs in 8 namespaces, 4 TCP flows at once (memory under load)
  idle-0, idle-254, idle-1022  tap-tap with the bridge in a namespace of its own (IPv6 off there) and
                   that many idle TAPs beside the two: what ports that do nothing cost the others
  lab-256, lab-256-querier, lab-256-flood  one tapbridge with 256 netns= ports, IPv6 on (every host's
                   router solicitations, MLD reports and address probes at start): from the moment the
                   bridge answers, 10 s of pings (20 ms apart) between the first two hosts (lab_rtt_p99_ms,
                   lab_rtt_max_ms, lab_lost) and the frames the bridge wrote to its ports since it started
                   (lab_tap_writes); -querier with --multicast-querier (snooping narrows once its first
                   query's 10 s are over), -flood with --no-multicast-snooping (every multicast frame to
                   every port, as before snooping)
  many-remotes-1, many-remotes  tap-remote-tap, bridge A with 1 remote (B) or 64 (B and 63 sinks: UDP
                   sockets on 127.0.0.1 that count what they get): the unicast figures A to B, then 3 s
                   of IPv4 broadcasts from A's host, 2,000 a second: bridge A's CPU time per
                   broadcast (bcast_us_per_frame) and the share of the copies the sinks got
                   (bcast_delivered): what a flood costs per remote
  tap-linux-vxlan  WireFormats.md's "The Linux vxlan device" as written: a tapbridge (TAP in A) with a
                   VXLAN remote to a Linux vxlan device that is B's interface (no dev, MTU 1500), over
                   a veth of MTU 1500; linux-vxlan-tap the same with the Linux device in A (the other
                   direction: every case measures A to B); -kernel: the remote datapath=kernel;
                   linux-vxlan-tap-txoff: the Linux device with ethtool -K DEV tx off (advice once logged)
Default: all of them. -x adds arguments to every tapbridge command of the run (say, a mirror) and
--tag names its cases CASE+NAME in the results, so that variants run one after the other can be
summarized together (Docs/bench/mirror-bench.sh does that). --baseline PATH runs every tapbridge
case a second time, right after the first, with the tapbridge binary at PATH (an older build),
recorded as CASE+base: what a change bought, from one interleaved run. The anchors are built or installed by this script: relay from its source
here (cc), vde_switch from Debian's vde2, iperf3 and gnuplot from Debian.

Traffic stays inside the namespaces the script creates and on 127.0.0.1. Every process it starts
is stopped by PID, and every namespace and link it creates carries the prefix "tbnb" and is
removed on every path (leftovers of an interrupted run are removed at start).
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TAPBRIDGE = os.environ.get("TAPBRIDGE") or os.path.join(ROOT, ".build/release/tapbridge")  # TAPBRIDGE=...: another build
BUILD = [TAPBRIDGE]  # the binary the current run of a case uses (--baseline switches it)
PREFIX = "tbnb"
NS_A, NS_B = PREFIX + "a", PREFIX + "b"
IP_A, IP_B = "10.99.0.1", "10.99.0.2"
TAP0, TAP1 = PREFIX + "t0", PREFIX + "t1"
EXTRA = []  # -x: added to every tapbridge command
PING_INTERVAL = ["0.02"]  # --ping-interval: seconds between the pings of the RTT figure
SECONDS = [5]  # -t
UDP_A, UDP_B = 47301, 47302
HZ = os.sysconf("SC_CLK_TCK")

BUSY_POLL = "50ms"  # the -busy cases' --busy-poll: longer than the pings' 20 ms gaps
CASES = ["tap-tap", "tap-tap-off", "tap-tap-busy", "kernel-bridge", "relay", "relay-vnet", "relay-vnet-uring", "relay-vnet-multishot", "vde", "tap-veth", "tap-veth-off",
         "tap-remote-tap", "tap-remote-tap-off", "tap-remote-tap-busy", "tap-remote-tap-sealed", "tap-remote-tap-1500", "tap-remote-tap-sealed-1500",
         "tap-remote-tap-sealed-1500-attacked", "tap-remote-tap-sealed-1500-nullflood", "tap-remote-tap-kernel", "tap-remote-tap-kernel-busy", "kernel-vxlan", "kernel-bridge-vxlan", "eight-ports",
         "tap-linux-vxlan", "linux-vxlan-tap", "tap-linux-vxlan-kernel", "linux-vxlan-tap-kernel",
         "linux-vxlan-tap-txoff", "idle-0", "idle-254", "idle-1022", "lab-256", "lab-256-querier", "lab-256-flood",
         "many-remotes-1", "many-remotes"]
# (tapbridge case, anchor case): the ratios the summary prints
RATIOS = [("tap-tap", "kernel-bridge"), ("tap-tap", "relay-vnet"), ("relay-vnet-uring", "relay-vnet"), ("relay-vnet-uring", "kernel-bridge"),
          ("relay-vnet-multishot", "relay-vnet-uring"), ("relay-vnet-multishot", "kernel-bridge"), ("tap-tap", "relay"), ("tap-tap", "vde"),
          ("tap-tap-off", "relay"), ("tap-tap-off", "vde"), ("tap-veth", "kernel-bridge"), ("tap-veth-off", "kernel-bridge"),
          ("tap-remote-tap", "kernel-vxlan"), ("tap-remote-tap", "tap-remote-tap-off"), ("tap-tap", "tap-tap-off"),
          ("tap-remote-tap-sealed", "tap-remote-tap"), ("tap-remote-tap-sealed-1500", "tap-remote-tap-1500"), ("tap-remote-tap-sealed-1500-attacked", "tap-remote-tap-sealed-1500"), ("tap-remote-tap-sealed-1500-attacked", "tap-remote-tap-sealed-1500-nullflood"), ("tap-remote-tap-1500", "kernel-vxlan"),
          ("tap-tap-busy", "kernel-bridge"), ("tap-tap-busy", "tap-tap"), ("tap-remote-tap-busy", "kernel-vxlan"),
          ("tap-remote-tap-busy", "tap-remote-tap"), ("tap-remote-tap-kernel", "kernel-vxlan"), ("tap-remote-tap-kernel", "tap-remote-tap"),
          ("tap-remote-tap-kernel-busy", "kernel-vxlan"), ("tap-remote-tap", "kernel-bridge-vxlan"),
          ("tap-remote-tap-kernel", "kernel-bridge-vxlan"), ("tap-remote-tap-kernel-busy", "kernel-bridge-vxlan"),
          ("many-remotes", "many-remotes-1"), ("tap-linux-vxlan", "linux-vxlan-tap"), ("tap-linux-vxlan", "kernel-vxlan"), ("linux-vxlan-tap", "kernel-vxlan"),
          ("tap-linux-vxlan-kernel", "linux-vxlan-tap-kernel"), ("tap-linux-vxlan-kernel", "kernel-vxlan"), ("linux-vxlan-tap-kernel", "kernel-vxlan"),
          ("tap-linux-vxlan-kernel", "tap-linux-vxlan"), ("linux-vxlan-tap-kernel", "linux-vxlan-tap"),
          ("linux-vxlan-tap-txoff", "linux-vxlan-tap"), ("idle-254", "idle-0"), ("idle-1022", "idle-0")]
LAB_METRICS = [("lab_rtt_p99_ms", "ping p99 ms"), ("lab_rtt_max_ms", "ping max ms"), ("lab_lost", "pings lost"), ("lab_tap_writes", "port writes")]
METRICS = [("tcp_gbps", "TCP Gbit/s"), ("tcp_retransmits", "TCP retr"), ("udp64_kpps", "UDP64 kpps"), ("rtt_ms", "ping RTT ms"),
           ("cpu_pct", "fwd CPU %"), ("cpu_per_gbps", "CPU %/Gbit/s"), ("rss_mib", "peak RSS MiB")]
BCAST_METRICS = [("bcast_sent", "broadcasts sent"), ("bcast_us_per_frame", "bridge A µs per broadcast"), ("bcast_cpu_pct", "bridge A CPU %"),
                 ("bcast_delivered", "copies the sinks got")]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd, check=True, timeout=60, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stdout.strip()[:400]}")
    return r.stdout


def ns(name, *cmd, **kw):
    return run(["ip", "netns", "exec", name, *cmd], **kw)


class Run:
    """One case, one round: its processes, namespaces and links, removed by `close`."""

    def __init__(self, work):
        self.work = work
        self.procs = []  # Popen objects we started
        self.pids = []  # forwarder PIDs (CPU, memory)
        self.extra_pids = []  # daemons that are not our children (vde_switch)
        self.sink = None  # many-remotes: the sinks' count file

    def start(self, name, cmd, forwarder=True):
        out = open(os.path.join(self.work, name + ".log"), "w")
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        if forwarder:
            self.pids.append(p.pid)
        return p

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for pid in self.extra_pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 3
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        cleanup()


def cleanup():
    """Removes every namespace and link whose name starts with PREFIX."""
    for name in os.listdir("/var/run/netns") if os.path.isdir("/var/run/netns") else []:
        if name.startswith(PREFIX):
            run(["ip", "netns", "del", name], check=False)
    for dev in os.listdir("/sys/class/net"):
        if dev.startswith(PREFIX):
            run(["ip", "link", "del", dev], check=False)
    for _ in range(40):  # TAPs vanish when their process exits
        if not any(d.startswith(PREFIX) for d in os.listdir("/sys/class/net")):
            break
        time.sleep(0.05)


def wait_for(devices, r, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if all(os.path.exists("/sys/class/net/" + d) for d in devices):
            return
        for p in r.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{' '.join(p.args)[:200]} exited with {p.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{devices} did not appear within {seconds} s")


def namespaces(*names):
    for n in names:
        run(["ip", "netns", "add", n])
        ns(n, "ip", "link", "set", "lo", "up")
        ns(n, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1", check=False)


def address(n, dev, ip):
    ns(n, "ip", "link", "set", dev, "mtu", "1500")
    ns(n, "ip", "addr", "add", ip + "/24", "dev", dev)
    ns(n, "ip", "link", "set", dev, "up")


def taps_into_namespaces(r, taps=(TAP0, TAP1), spaces=(NS_A, NS_B)):
    wait_for(list(taps), r)
    for tap, n, ip in zip(taps, spaces, (IP_A, IP_B)):
        run(["ip", "link", "set", tap, "netns", n])
        address(n, tap, ip)


def setup(case, r, tools):
    """Builds the case between NS_A and NS_B."""
    namespaces(NS_A, NS_B)
    off = ["--offload", "off"] if case.endswith("-off") else []
    if case.endswith("-busy"):
        off = ["--busy-poll", BUSY_POLL]  # (the flags every tapbridge of the case gets)
    base = case.removesuffix("-off").removesuffix("-busy")
    if base == "tap-tap":
        r.start("tapbridge", [BUILD[0], "--name", PREFIX, "--port", TAP0, "--port", TAP1, *off, *EXTRA])
        taps_into_namespaces(r)
    elif base in ("relay", "relay-vnet", "relay-vnet-uring", "relay-vnet-multishot"):
        flags = {"relay": [], "relay-vnet": ["-v"], "relay-vnet-uring": ["-v", "-u"], "relay-vnet-multishot": ["-v", "-m"]}[base]
        r.start("relay", [tools["relay-uring" if base.endswith(("-uring", "-multishot")) else "relay"], *flags, TAP0, TAP1])
        taps_into_namespaces(r)
    elif base == "vde":
        pidfile = os.path.join(r.work, "vde.pid")
        run(["vde_switch", "-t", TAP0, "-t", TAP1, "-s", os.path.join(r.work, "vde.ctl"), "-M", os.path.join(r.work, "vde.mgmt"),
             "-p", pidfile, "-d"])
        for _ in range(100):
            if os.path.exists(pidfile) and open(pidfile).read().strip():
                break
            time.sleep(0.05)
        pid = int(open(pidfile).read())
        r.extra_pids.append(pid)
        r.pids.append(pid)
        taps_into_namespaces(r)
    elif base == "kernel-bridge":
        run(["ip", "link", "add", PREFIX + "br", "type", "bridge"])
        for n, side, ip in ((NS_A, "a", IP_A), (NS_B, "b", IP_B)):
            run(["ip", "link", "add", PREFIX + "v" + side, "netns", n, "type", "veth", "peer", "name", PREFIX + "p" + side])
            run(["ip", "link", "set", PREFIX + "p" + side, "master", PREFIX + "br", "up"])
            address(n, PREFIX + "v" + side, ip)
        run(["ip", "link", "set", PREFIX + "br", "up"])
    elif base == "tap-veth":
        run(["ip", "link", "add", PREFIX + "h", "type", "veth", "peer", "name", PREFIX + "va", "netns", NS_A])
        address(NS_A, PREFIX + "va", IP_A)
        r.start("tapbridge", [BUILD[0], "--name", PREFIX, "--port", PREFIX + "h,mode=packet", "--port", TAP1, *off, *EXTRA])
        wait_for([TAP1], r)
        run(["ip", "link", "set", TAP1, "netns", NS_B])
        address(NS_B, TAP1, IP_B)
    elif base.startswith("tap-remote-tap"):
        for flood in ("-attacked", "-nullflood"):
            if base.endswith(flood):
                base = base[: -len(flood)]
        # sealed: a key per bridge (tapbridge genkey), each naming the other's public key
        sealed = {"a": ([], ""), "b": ([], "")}
        if "-sealed" in base:
            keys = {}
            for side in ("a", "b"):
                key = os.path.join(r.work, "key-" + side)
                if os.path.exists(key):
                    os.unlink(key)  # (genkey never overwrites one)
                run([BUILD[0], "genkey", key])
                with open(key) as f:
                    keys[side] = (key, subprocess.run([BUILD[0], "pubkey"], stdin=f, capture_output=True, text=True, check=True).stdout.strip())
            sealed = {side: (["--key-file", keys[side][0]], ",encap=sealed,peer=" + keys[other][1]) for side, other in (("a", "b"), ("b", "a"))}
        if base.endswith("-1500") or base.endswith("-kernel"):
            # two hosts: each tapbridge in its own namespace, a veth between them (MTU 1500; for
            # -kernel 1600, as kernel-vxlan's); the TAPs are made there and moved on into A and B.
            # -kernel: the remote is datapath=kernel, a Linux vxlan device each tapbridge makes
            hosts = (PREFIX + "ha", PREFIX + "hb")
            namespaces(*hosts)
            kernel = [",datapath=kernel"] if base.endswith("-kernel") else [""]
            run(["ip", "link", "add", PREFIX + "ua", "netns", hosts[0], "type", "veth", "peer", "name", PREFIX + "ub", "netns", hosts[1]])
            for h, side, mine in ((hosts[0], "a", "10.97.0.1"), (hosts[1], "b", "10.97.0.2")):
                ns(h, "ip", "addr", "add", mine + "/24", "dev", PREFIX + "u" + side)
                ns(h, "ip", "link", "set", PREFIX + "u" + side, "mtu", "1600" if kernel[0] else "1500", "up")
            for h, name, tap, theirs in ((hosts[0], "a", TAP0, "10.97.0.2"), (hosts[1], "b", TAP1, "10.97.0.1")):
                r.start("tapbridge-" + name, ["ip", "netns", "exec", h, BUILD[0], "--name", PREFIX + name, "--port", tap,
                                              "--remote", f"{theirs}:4789{kernel[0]}{sealed[name][1]}", *sealed[name][0], *off, *EXTRA])
            if case.endswith("-attacked") or case.endswith("-nullflood"):
                # a keyless sender floods bridge a from bridge b's address (spoofed): initiations
                # and transport datagrams with random indexes, on one core, for the whole measure;
                # -nullflood: the same flood to a port nothing listens on (what the flood costs the
                # machine, with no bridge work: the control of -attacked)
                port = "4789" if case.endswith("-attacked") else "9"
                r.start("flood", ["ip", "netns", "exec", hosts[1], tools["flood"], "10.97.0.2", "10.97.0.1", port, str(2 * SECONDS[0] + 25)],
                        forwarder=False)
                r.attack_started = time.time()
            for h, tap, dest, ip in ((hosts[0], TAP0, NS_A, IP_A), (hosts[1], TAP1, NS_B, IP_B)):
                for _ in range(200):
                    if subprocess.run(["ip", "-n", h, "link", "show", tap], capture_output=True).returncode == 0:
                        break
                    time.sleep(0.05)
                ns(h, "ip", "link", "set", tap, "netns", dest)
                # the MTU the TAP was made with (what fits the path), as a user gets it
                ns(dest, "ip", "addr", "add", ip + "/24", "dev", tap)
                ns(dest, "ip", "link", "set", tap, "up")
        else:
            for name, tap, mine, theirs in (("a", TAP0, UDP_A, UDP_B), ("b", TAP1, UDP_B, UDP_A)):
                r.start("tapbridge-" + name, [BUILD[0], "--name", PREFIX + name, "--port", tap, "--listen", f"127.0.0.1:{mine}",
                                              "--remote", f"127.0.0.1:{theirs}{sealed[name][1]}", *sealed[name][0], *off, *EXTRA])
            taps_into_namespaces(r)
    elif base.startswith("many-remotes"):
        sinks = [] if base.endswith("-1") else [SINK_BASE + k for k in range(63)]
        if sinks:
            r.sink = os.path.join(r.work, "sink-count")
            r.start("sink", [sys.executable, "-c", SINK, r.sink, *map(str, sinks)], forwarder=False)
        for name, tap, mine, theirs, more in (("a", TAP0, UDP_A, UDP_B, sinks), ("b", TAP1, UDP_B, UDP_A, [])):
            r.start("tapbridge-" + name, [BUILD[0], "--name", PREFIX + name, "--port", tap, "--listen", f"127.0.0.1:{mine}",
                                          "--remote", f"127.0.0.1:{theirs}", *[a for k in more for a in ("--remote", f"127.0.0.1:{k}")], *off, *EXTRA])
        taps_into_namespaces(r)
    elif base == "kernel-vxlan":
        run(["ip", "link", "add", PREFIX + "ua", "netns", NS_A, "type", "veth", "peer", "name", PREFIX + "ub", "netns", NS_B])
        for n, side, underlay, peer, ip in ((NS_A, "a", "10.98.0.1", "10.98.0.2", IP_A), (NS_B, "b", "10.98.0.2", "10.98.0.1", IP_B)):
            ns(n, "ip", "link", "set", PREFIX + "u" + side, "mtu", "1600", "up")
            ns(n, "ip", "addr", "add", underlay + "/24", "dev", PREFIX + "u" + side)
            ns(n, "ip", "link", "add", PREFIX + "x" + side, "type", "vxlan", "id", "42", "local", underlay, "remote", peer,
               "dstport", "4789", "dev", PREFIX + "u" + side)
            address(n, PREFIX + "x" + side, ip)
    elif base.startswith("idle-"):
        # the bridge in a host namespace with IPv6 off, so the idle TAPs say nothing
        host = PREFIX + "ha"
        namespaces(host)
        idle = [PREFIX + "i%d" % k for k in range(int(base.split("-")[1]))]
        r.start("tapbridge", ["ip", "netns", "exec", host, BUILD[0], "--name", PREFIX, "--port", TAP0, "--port", TAP1,
                              *[a for t in idle for a in ("--port", t)], *off, *EXTRA])
        for tap, dest, ip in ((TAP0, NS_A, IP_A), (TAP1, NS_B, IP_B)):
            for _ in range(600):
                if subprocess.run(["ip", "-n", host, "link", "show", tap], capture_output=True).returncode == 0:
                    break
                time.sleep(0.05)
            ns(host, "ip", "link", "set", tap, "netns", dest)
            address(dest, tap, ip)
    elif base.removesuffix("-kernel").removesuffix("-txoff") in ("tap-linux-vxlan", "linux-vxlan-tap"):
        kernel = ",datapath=kernel" if base.endswith("-kernel") else ""
        txoff = base.endswith("-txoff")
        base = base.removesuffix("-kernel").removesuffix("-txoff")
        # WireFormats.md's recipe: the Linux side is an endpoint namespace itself (its vxlan
        # device, made without dev, MTU 1500, holds the endpoint's address); the tapbridge side
        # is a host namespace whose TAP moves into the other endpoint namespace
        linux, tap_side = (NS_B, NS_A) if base == "tap-linux-vxlan" else (NS_A, NS_B)
        tap, tap_ip, linux_ip = (TAP0, IP_A, IP_B) if base == "tap-linux-vxlan" else (TAP1, IP_B, IP_A)
        host = PREFIX + "ha"
        namespaces(host)
        run(["ip", "link", "add", PREFIX + "ua", "netns", host, "type", "veth", "peer", "name", PREFIX + "ub", "netns", linux])
        for n, dev, mine in ((host, PREFIX + "ua", "10.97.0.1"), (linux, PREFIX + "ub", "10.97.0.2")):
            ns(n, "ip", "addr", "add", mine + "/24", "dev", dev)
            ns(n, "ip", "link", "set", dev, "up")
        ns(linux, "ip", "link", "add", PREFIX + "x", "type", "vxlan", "id", "42", "local", "10.97.0.2", "remote", "10.97.0.1", "dstport", "4789")
        address(linux, PREFIX + "x", linux_ip)
        if txoff:
            ns(linux, "ethtool", "-K", PREFIX + "x", "tx", "off")
        r.start("tapbridge", ["ip", "netns", "exec", host, BUILD[0], "--name", PREFIX, "--port", tap, "--remote", "10.97.0.2:4789,vni=42" + kernel, *off, *EXTRA])
        for _ in range(200):
            if subprocess.run(["ip", "-n", host, "link", "show", tap], capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        ns(host, "ip", "link", "set", tap, "netns", tap_side)
        ns(tap_side, "ip", "addr", "add", tap_ip + "/24", "dev", tap)  # at the MTU tapbridge made it with
        ns(tap_side, "ip", "link", "set", tap, "up")
    elif base == "kernel-bridge-vxlan":
        # what a tapbridge remote stands in for, done by the kernel: on each of two hosts a
        # Linux bridge joining a vxlan device (underlay MTU 1600, as kernel-vxlan's) and a veth
        # from A (B)
        hosts = (PREFIX + "ha", PREFIX + "hb")
        namespaces(*hosts)
        run(["ip", "link", "add", PREFIX + "ua", "netns", hosts[0], "type", "veth", "peer", "name", PREFIX + "ub", "netns", hosts[1]])
        for h, n, side, underlay, peer, ip in ((hosts[0], NS_A, "a", "10.97.0.1", "10.97.0.2", IP_A), (hosts[1], NS_B, "b", "10.97.0.2", "10.97.0.1", IP_B)):
            ns(h, "ip", "addr", "add", underlay + "/24", "dev", PREFIX + "u" + side)
            ns(h, "ip", "link", "set", PREFIX + "u" + side, "mtu", "1600", "up")
            ns(h, "ip", "link", "add", PREFIX + "br", "type", "bridge")
            ns(h, "ip", "link", "add", PREFIX + "x" + side, "type", "vxlan", "id", "42", "local", underlay, "remote", peer,
               "dstport", "4789", "dev", PREFIX + "u" + side)
            run(["ip", "link", "add", PREFIX + "v" + side, "netns", n, "type", "veth", "peer", "name", PREFIX + "p" + side, "netns", h])
            for port in (PREFIX + "x" + side, PREFIX + "p" + side):
                ns(h, "ip", "link", "set", port, "master", PREFIX + "br", "up")
            ns(h, "ip", "link", "set", PREFIX + "br", "up")
            address(n, PREFIX + "v" + side, ip)
    else:
        raise RuntimeError(f"unknown case {case}")


def ticks(pids):
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def peak_rss_mib(pids):
    peak = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except FileNotFoundError:
            pass
    return round(peak, 1)


def iperf(client_ns, server_ip, seconds, udp=False, port=5201):
    args = ["iperf3", "-c", server_ip, "-p", str(port), "-t", str(seconds), "-J"]
    if udp:
        args += ["-u", "-l", "64", "-b", "0"]
    out = ns(client_ns, *args, timeout=seconds + 30)
    return json.loads(out)["end"]


def measure(case, r, seconds):
    for _ in range(20):
        if subprocess.run(["ip", "netns", "exec", NS_A, "ping", "-c", "1", "-W", "1", IP_B], stdout=subprocess.DEVNULL).returncode == 0:
            break
    else:
        raise RuntimeError(f"no connectivity {IP_A} -> {IP_B}")
    rtt = ping_rtt_ms()
    r.start("iperf3-server", ["ip", "netns", "exec", NS_B, "iperf3", "-s", "-B", IP_B], forwarder=False)
    time.sleep(0.3)
    before, t0 = ticks(r.pids), time.time()
    tcp = iperf(NS_A, IP_B, seconds)
    cpu = (ticks(r.pids) - before) / HZ / (time.time() - t0) * 100
    udp = iperf(NS_A, IP_B, seconds, udp=True)["sum"]
    gbps = tcp["sum_received"]["bits_per_second"] / 1e9
    return {
        "tcp_gbps": round(gbps, 3),
        "tcp_retransmits": tcp["sum_sent"].get("retransmits", 0),
        "udp64_kpps": round((udp["packets"] - udp["lost_packets"]) / udp["seconds"] / 1000, 1),
        "rtt_ms": rtt,
        "cpu_pct": round(cpu, 1) if r.pids else None,
        "cpu_per_gbps": round(cpu / gbps, 2) if r.pids and gbps > 0 else None,
        "rss_mib": peak_rss_mib(r.pids) if r.pids else None,
    }


def attack_received(r):
    """The attacking datagrams bridge a refused (unknown_index, bad_mac1 on its remote) since the
    flood began, and their rate; then, with the flood still on and no other traffic, bridge a's
    CPU over 3 s per attacking datagram refused meanwhile (microseconds)."""
    def refused():
        out = subprocess.run([BUILD[0], "show", "ports", "--json", "--name", PREFIX + "a"], capture_output=True, text=True, timeout=10).stdout
        remote = next(p for p in json.loads(out) if p["kind"] == "remote")
        return sum(remote["drops"].get(k, 0) for k in ("unknown_index", "bad_mac1", "malformed_encapsulation"))
    n = refused()
    row = {"attack_datagrams": n, "attack_kpps": round(n / (time.time() - r.attack_started) / 1000, 1)}
    before, ticks0, t0 = n, ticks(r.pids[:1]), time.time()
    time.sleep(3)
    during = refused() - before
    cpu_s = (ticks(r.pids[:1]) - ticks0) / HZ
    row["attack_idle_kpps"] = round(during / (time.time() - t0) / 1000, 1)
    row["attack_cpu_pct"] = round(cpu_s / (time.time() - t0) * 100, 1)
    row["attack_cpu_us_per_datagram"] = round(cpu_s * 1e6 / during, 3) if during > 0 else None
    return row


SINK_BASE = 47400  # many-remotes: the sinks' ports on 127.0.0.1
# many-remotes: counts the datagrams that reach the ports given, writes the count to a file
# every 0.2 s (path first), until it is stopped
SINK = """
import os, select, socket, sys, time
path, socks = sys.argv[1], []
for port in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(("127.0.0.1", int(port)))
    s.setblocking(False)
    socks.append(s)
ep, n, last = select.epoll(), 0, 0.0
for s in socks:
    ep.register(s.fileno(), select.EPOLLIN)
by_fd = {s.fileno(): s for s in socks}
while True:
    for fd, _ in ep.poll(0.2):
        try:
            while True:
                by_fd[fd].recv(65536)
                n += 1
        except BlockingIOError:
            pass
    if time.time() - last > 0.2:
        with open(path + ".tmp", "w") as f:
            f.write(str(n))
        os.replace(path + ".tmp", path)
        last = time.time()
"""
# many-remotes: sends `rate` IPv4 broadcasts a second for `seconds` from A's host, in bursts
# every 10 ms; prints how many it sent
BROADCASTER = """
import socket, sys, time
rate, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
burst, sent, t0 = rate // 100, 0, time.time()
while time.time() - t0 < seconds:
    for _ in range(burst):
        s.sendto(b"x" * 18, ("10.99.0.255", 9))
        sent += 1
    time.sleep(max(0.0, t0 + sent / rate - time.time()))
print(sent)
"""


def sink_count(r):
    try:
        return int(open(r.sink).read())
    except (OSError, ValueError):
        return 0


def broadcast_cost(r, rate=2000, seconds=3):
    """Bridge A's CPU per broadcast from A's host, and the share of copies the sinks got."""
    sinks = 0 if r.sink is None else 63
    time.sleep(0.5)
    before_sink = sink_count(r) if sinks else 0
    ticks0, t0 = ticks(r.pids[:1]), time.time()
    sent = int(ns(NS_A, sys.executable, "-c", BROADCASTER, str(rate), str(seconds), timeout=seconds + 30).strip())
    cpu_s = (ticks(r.pids[:1]) - ticks0) / HZ
    row = {"bcast_sent": sent, "bcast_us_per_frame": round(cpu_s * 1e6 / sent, 2) if sent else None,
           "bcast_cpu_pct": round(cpu_s / (time.time() - t0) * 100, 1)}
    if sinks:
        time.sleep(0.6)  # (the sink writes its count every 0.2 s)
        row["bcast_delivered"] = round((sink_count(r) - before_sink) / (sent * sinks), 3) if sent else None
    return row


def is_tapbridge(case):
    return (case.startswith("tap") or case.startswith("linux-vxlan-tap") or case.startswith("idle-") or case == "eight-ports"
            or case.startswith("lab-") or case.startswith("many-remotes"))


def lab(r, case, hosts=256):
    """`hosts` netns= ports, IPv6 on; pings between the first two for 10 s from when the bridge
    answers, and the frames written to the ports since start."""
    extra = {"lab-256-querier": ["--multicast-querier"], "lab-256-flood": ["--no-multicast-snooping"]}.get(case, [])
    ports = []
    for k in range(hosts):
        ports += ["--port", f"{PREFIX}L{k},netns={PREFIX}l{k},addr=10.99.{k // 250}.{k % 250 + 1}/16"]
    r.start("tapbridge", [BUILD[0], "--name", PREFIX, *ports, *extra, *EXTRA])
    subprocess.run([BUILD[0], "wait", "--name", PREFIX, "--timeout", "120"], check=True, capture_output=True, timeout=130)
    out = subprocess.run(["ip", "netns", "exec", f"{PREFIX}l0", "ping", "-n", "-c", "500", "-i", "0.02", "-W", "1", "10.99.0.2"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60).stdout
    times = sorted(float(w.split("=")[1]) for line in out.splitlines() for w in line.split() if w.startswith("time="))
    ports_json = subprocess.run([BUILD[0], "show", "ports", "--json", "--name", PREFIX], capture_output=True, text=True, timeout=30).stdout
    writes = sum(p["tx_frames"] for p in json.loads(ports_json))
    if not times:
        raise RuntimeError("no ping answered: " + out[-300:])
    return {"lab_rtt_p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3), "lab_rtt_max_ms": round(times[-1], 3),
            "lab_lost": 500 - len(times), "lab_tap_writes": writes, "rss_mib": peak_rss_mib(r.pids)}


def ping_rtt_ms():
    """Median round trip A to B of 40 pings 20 ms apart (--ping-interval), on the idle path (ms, 3 decimals)."""
    out = subprocess.run(["ip", "netns", "exec", NS_A, "ping", "-n", "-c", "40", "-i", PING_INTERVAL[0], "-W", "1", IP_B],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30).stdout
    times = [float(w.split("=")[1]) for line in out.splitlines() for w in line.split() if w.startswith("time=")]
    return round(statistics.median(times), 3) if times else None


def eight_ports(r, seconds):
    """8 TAPs on one tapbridge, each in its own namespace; flows 1->2, 3->4, 5->6, 7->8 at once."""
    spaces = [f"{PREFIX}{i}" for i in range(1, 9)]
    taps = [f"{PREFIX}t{i}" for i in range(1, 9)]
    namespaces(*spaces)
    r.start("tapbridge", [BUILD[0], "--name", PREFIX, *sum((["--port", t] for t in taps), []), *EXTRA])
    wait_for(taps, r)
    for i, (t, n) in enumerate(zip(taps, spaces), 1):
        run(["ip", "link", "set", t, "netns", n])
        address(n, t, f"10.99.0.{i}")
    for i in range(1, 9, 2):
        ns(spaces[i - 1], "ping", "-c", "1", "-W", "2", f"10.99.0.{i + 1}", check=False)
        r.start(f"iperf3-server-{i + 1}", ["ip", "netns", "exec", spaces[i], "iperf3", "-s", "-1", "-B", f"10.99.0.{i + 1}"], forwarder=False)
    time.sleep(0.3)
    clients = [subprocess.Popen(["ip", "netns", "exec", spaces[i - 1], "iperf3", "-c", f"10.99.0.{i + 1}", "-t", str(seconds), "-J"],
                                stdout=subprocess.PIPE, text=True) for i in range(1, 9, 2)]
    before, t0 = ticks(r.pids), time.time()
    outs = [c.communicate(timeout=seconds + 30)[0] for c in clients]
    cpu = (ticks(r.pids) - before) / HZ / (time.time() - t0) * 100
    gbps = sum(json.loads(o)["end"]["sum_received"]["bits_per_second"] for o in outs) / 1e9
    return {"tcp_gbps": round(gbps, 3), "tcp_retransmits": sum(json.loads(o)["end"]["sum_sent"].get("retransmits", 0) for o in outs),
            "cpu_pct": round(cpu, 1), "cpu_per_gbps": round(cpu / gbps, 2) if gbps else None, "rss_mib": peak_rss_mib(r.pids)}


def tools_ready(cases, plot):
    """Installs what is missing (Debian) and builds the relay; returns paths."""
    need = {"iperf3": "iperf3"}
    if plot:
        need["gnuplot"] = "gnuplot-nox"
    if "vde" in cases:
        need["vde_switch"] = "vde2"
    missing = [pkg for tool, pkg in need.items() if shutil.which(tool) is None]
    if missing:
        log("installing", " ".join(missing))
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=False, timeout=600)
        if any(shutil.which(t) is None for t in need):
            run(["apt-get", "update", "-qq"], timeout=600)
            run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], timeout=600)
    if not os.access(TAPBRIDGE, os.X_OK):
        log("building tapbridge (release)")
        run(["swift", "build", "-c", "release", "--product", "tapbridge"], cwd=ROOT, timeout=1800)
    work = tempfile.mkdtemp(prefix="netbench-")
    relay = os.path.join(work, "relay")
    run(["cc", "-O2", "-Wall", "-o", relay, os.path.join(ROOT, "Docs/bench/anchors/relay.c")])
    tools_out = {}
    if "relay-vnet-uring" in cases or "relay-vnet-multishot" in cases:
        if not os.path.exists("/usr/include/liburing.h"):
            run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "liburing-dev"], check=False, timeout=600)
        tools_out["relay-uring"] = os.path.join(work, "relay-uring")
        run(["cc", "-O2", "-Wall", "-DWITH_URING", "-o", tools_out["relay-uring"], os.path.join(ROOT, "Docs/bench/anchors/relay.c"), "-luring"])
    flood = os.path.join(work, "flood")
    run(["cc", "-O2", "-Wall", "-o", flood, os.path.join(ROOT, "Docs/bench/anchors/flood.c")])
    return {"relay": relay, "flood": flood, "work": work, **tools_out}


def median_cell(values):
    v = [x for x in values if isinstance(x, (int, float))]
    if not v:
        return "-"
    fmt = lambda x: f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
    m = statistics.median(v)
    return fmt(m) if len(v) == 1 else f"{fmt(m)} ({fmt(min(v))}–{fmt(max(v))})"


def summarize(rows, plot=None):
    cases = list(dict.fromkeys(r["case"] for r in rows))  # in the order they ran
    ok = {c: [r for r in rows if r["case"] == c and r.get("ok")] for c in cases}
    labs = [c for c in cases if c.startswith("lab-")]
    cases = [c for c in cases if not c.startswith("lab-")]
    lines = ["| case | runs ok | " + " | ".join(label for _, label in METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    if labs:
        print("\n".join(["| lab case | runs ok | " + " | ".join(label for _, label in LAB_METRICS) + " |", "|---|---|" + "---|" * len(LAB_METRICS)]
                        + [f"| {c} | {len(ok[c])}/{len([r for r in rows if r['case'] == c])} | " + " | ".join(median_cell([r.get(k) for r in ok[c]]) for k, _ in LAB_METRICS) + " |" for c in labs]))
        print()
    bcasts = [c for c in cases if c.startswith("many-remotes")]
    if bcasts:
        print("\n".join(["| broadcast case | runs ok | " + " | ".join(label for _, label in BCAST_METRICS) + " |", "|---|---|" + "---|" * len(BCAST_METRICS)]
                        + [f"| {c} | {len(ok[c])}/{len([r for r in rows if r['case'] == c])} | " + " | ".join(median_cell([r.get(k) for r in ok[c]]) for k, _ in BCAST_METRICS) + " |" for c in bcasts]))
        print()
    for c in cases:
        all_runs = [r for r in rows if r["case"] == c]
        lines.append(f"| {c} | {len(ok[c])}/{len(all_runs)} | " + " | ".join(median_cell([r.get(k) for r in ok[c]]) for k, _ in METRICS) + " |")
    med = lambda c, k: statistics.median([r[k] for r in ok.get(c, []) if isinstance(r.get(k), (int, float))] or [float("nan")])
    lines += ["", "| tapbridge case ÷ anchor | TCP | UDP64 | ping RTT | CPU per Gbit/s |", "|---|---|---|---|---|"]
    variants = [(t, a) for t, a in RATIOS if t in ok and a in ok]
    variants += [(c, c.split("+")[0]) for c in cases if "+" in c and not c.endswith("+base") and c.split("+")[0] in ok]
    variants += [(c.split("+")[0], c) for c in cases if c.endswith("+base") and c.split("+")[0] in ok]
    for t, a in variants:
        if ok.get(t) and ok.get(a):
            cells = []
            for k in ("tcp_gbps", "udp64_kpps", "rtt_ms", "cpu_per_gbps"):
                x, y = med(t, k), med(a, k)
                cells.append(f"{x / y:.2f}×" if y and y == y and x == x else "-")
            lines.append(f"| {t} ÷ {a} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if plot:
        draw(cases, ok, plot)


def draw(cases, ok, path):
    if shutil.which("gnuplot") is None:
        log("gnuplot not found: no plot")
        return
    data = tempfile.NamedTemporaryFile("w", suffix=".dat", delete=False)
    for i, c in enumerate(c for c in cases if c != "eight-ports"):  # that one sums four flows
        v = [r["tcp_gbps"] for r in ok[c]]
        if v:
            data.write(f'{i} "{c}" {statistics.median(v)} {min(v)} {max(v)}\n')
    data.close()
    script = f"""
set terminal pngcairo size 1100,520 font "sans,10"
set output "{path}"
set title "TCP through each forwarder, A to B (median, min-max of the rounds)"
set ylabel "Gbit/s"
set style fill solid 0.6
set boxwidth 0.6
set xtics rotate by -30
set yrange [0:*]
set grid ytics
unset key
plot "{data.name}" using 1:3:xtic(2) with boxes lc rgb "#4a7fb0", "" using 1:3:4:5 with yerrorbars lc rgb "black" pt 7 ps 0.4
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    os.unlink(data.name)
    log("plot:", path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-r", "--rounds", type=int, default=5)
    p.add_argument("-t", "--seconds", type=int, default=5, help="per iperf3 test (>= 2)")
    p.add_argument("-o", "--output", default="netbench.jsonl")
    p.add_argument("--plot", help="write a PNG of the TCP figures")
    p.add_argument("--summarize", metavar="RUN.jsonl", nargs="+", help="print the summary of earlier runs")
    p.add_argument("-x", "--tapbridge-args", default="", help="extra arguments for every tapbridge command")
    p.add_argument("--tag", help="record cases as CASE+TAG")
    p.add_argument("--baseline", metavar="PATH", help="also run each tapbridge case with this build, as CASE+base")
    p.add_argument("--ping-interval", metavar="SECONDS", type=float, default=0.02,
                   help="between the pings of the RTT figure (default 0.02; a forwarder that sleeps longer between them wakes colder)")
    p.add_argument("cases", nargs="*", metavar="CASE")
    a = p.parse_args()
    if a.summarize:
        summarize([json.loads(line) for f in a.summarize for line in open(f) if line.strip()], a.plot)
        return 0
    if os.geteuid() != 0:
        log("netbench: needs root (namespaces, TAPs)")
        return 2
    if a.seconds < 2 or a.rounds < 1:
        log("netbench: -t must be >= 2 and -r >= 1")
        return 2
    unknown = [c for c in a.cases if c not in CASES]
    if unknown:
        log(f"netbench: unknown case {', '.join(unknown)}; cases: {', '.join(CASES)}")
        return 2
    cases = a.cases or CASES
    EXTRA[:] = a.tapbridge_args.split()
    if not 0.002 <= a.ping_interval <= 1:
        log("netbench: --ping-interval must be between 0.002 and 1 (seconds)")
        return 2
    PING_INTERVAL[0] = f"{a.ping_interval:g}"
    SECONDS[0] = a.seconds
    tools = tools_ready(cases, a.plot)
    cleanup()  # leftovers of an interrupted run
    rows = []
    with open(a.output, "w") as out:
        for rnd in range(1, a.rounds + 1):
            runs = [(c, TAPBRIDGE, f"+{a.tag}" if a.tag else "") for c in cases]
            if a.baseline:
                runs = [x for c in cases for x in [(c, TAPBRIDGE, ""), (c, a.baseline, "+base")][: 2 if is_tapbridge(c) else 1]]
            for case, build, suffix in runs:
                BUILD[0] = build
                r = Run(tools["work"])
                row = {"case": case + suffix, "round": rnd, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
                try:
                    if case == "eight-ports":
                        row.update(eight_ports(r, a.seconds))
                    elif case.startswith("lab-"):
                        row.update(lab(r, case))
                    else:
                        setup(case, r, tools)
                        row.update(measure(case, r, a.seconds))
                        if case.endswith("-attacked"):
                            row.update(attack_received(r))
                        if case.startswith("many-remotes"):
                            row.update(broadcast_cost(r))
                    row["ok"] = True
                except Exception as e:  # one failed run is recorded, the others go on
                    row.update(ok=False, error=str(e)[:300])
                finally:
                    r.close()
                rows.append(row)
                out.write(json.dumps(row) + "\n")
                out.flush()
                log(f"round {rnd} {row['case']}: " + (f"TCP {row.get('tcp_gbps')} Gbit/s, UDP64 {row.get('udp64_kpps')} kpps, CPU {row.get('cpu_pct')} %, RSS {row.get('rss_mib')} MiB"
                                               if row["ok"] else "FAILED: " + row["error"]))
    shutil.rmtree(tools["work"], ignore_errors=True)
    summarize(rows, a.plot)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
