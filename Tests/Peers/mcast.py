#!/usr/bin/python3
"""A host's multicast application for tapbridge's snooping tests: a plain socket join, as any
program makes it (the kernel then sends the IGMPv3 or MLDv2 report), or a sender.

  mcast.py listen GROUP IFACE SECONDS   join GROUP on IFACE, print "joined", count datagrams
                                        for SECONDS (or until SIGTERM), print {"received": n},
                                        and leave (closing the socket: the kernel's leave)
  mcast.py send GROUP IFACE COUNT       send COUNT datagrams to GROUP out of IFACE, 20 ms apart

GROUP is an IPv4 or IPv6 group; the UDP port is 5007.
"""
import json, signal, socket, struct, sys, time

mode, group, iface, n = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
v6 = ":" in group
family = socket.AF_INET6 if v6 else socket.AF_INET
index = socket.if_nametoindex(iface)
s = socket.socket(family, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if mode == "listen":
    stop = False
    def finish(*_):
        global stop
        stop = True
    signal.signal(signal.SIGTERM, finish)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
    if v6:
        s.bind(("::", 5007))
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, socket.inet_pton(family, group) + struct.pack("@I", index))
    else:
        s.bind(("0.0.0.0", 5007))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("@4s4si", socket.inet_aton(group), socket.inet_aton("0.0.0.0"), index))
    print("joined", flush=True)
    s.settimeout(0.2)
    received = 0
    deadline = time.monotonic() + n
    while not stop and time.monotonic() < deadline:
        try:
            s.recv(2048)
            received += 1
        except socket.timeout:
            pass
    s.close()
    print(json.dumps({"received": received}), flush=True)
else:
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
    else:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, struct.pack("@4s4si", socket.inet_aton("0.0.0.0"), socket.inet_aton("0.0.0.0"), index))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    for i in range(int(n)):
        s.sendto(b"tapbridge group datagram %d" % i, (group, 5007))
        time.sleep(0.02)
    print(json.dumps({"sent": int(n)}), flush=True)
