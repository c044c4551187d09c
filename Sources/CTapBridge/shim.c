#define _GNU_SOURCE
#include "ctapbridge.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <linux/errqueue.h>
#include <net/ethernet.h>
#include <arpa/inet.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

static int copy_name(struct ifreq *ifr, const char *name) {
    memset(ifr, 0, sizeof(*ifr));
    size_t n = strlen(name);
    if (n == 0 || n >= IFNAMSIZ) return -EINVAL;
    memcpy(ifr->ifr_name, name, n);
    return 0;
}

int ctb_tap_open(const char *name, int vnet_hdr) {
    struct ifreq ifr;
    int rc = copy_name(&ifr, name);
    if (rc < 0) return rc;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -errno;
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet_hdr ? IFF_VNET_HDR : 0);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#define TUN_F_USO6 0x40
#endif

int ctb_tap_negotiate_offload(int fd) {
    int size = CTB_VNET_HDR_LEN;
    if (ioctl(fd, TUNSETVNETHDRSZ, &size) < 0) return -errno;
    // what this reader takes; an unknown bit (USO before Linux 6.2) is EINVAL: try less
    static const struct { unsigned flags; int got; } tries[] = {
        {TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6, CTB_OFFLOAD_CSUM | CTB_OFFLOAD_TSO | CTB_OFFLOAD_USO},
        {TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, CTB_OFFLOAD_CSUM | CTB_OFFLOAD_TSO},
        {TUN_F_CSUM, CTB_OFFLOAD_CSUM},
        {0, 0},
    };
    for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
        if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)tries[i].flags) == 0) return tries[i].got;
    }
    return -errno;
}

ssize_t ctb_tap_read(int fd, uint8_t *vnet, void *buf, size_t cap) {
    struct iovec iov[2] = {{.iov_base = vnet, .iov_len = CTB_VNET_HDR_LEN}, {.iov_base = buf, .iov_len = cap}};
    for (;;) {
        ssize_t n = readv(fd, iov, 2);
        if (n >= 0) return n < CTB_VNET_HDR_LEN ? -EPROTO : n - CTB_VNET_HDR_LEN;
        if (errno != EINTR) return -errno;
    }
}

ssize_t ctb_tap_write(int fd, const uint8_t *vnet, const void *frame, size_t len) {
    struct iovec iov[2] = {{.iov_base = (void *)vnet, .iov_len = CTB_VNET_HDR_LEN}, {.iov_base = (void *)frame, .iov_len = len}};
    for (;;) {
        ssize_t n = writev(fd, iov, 2);
        if (n >= 0) return n;
        if (errno != EINTR) return -errno;
    }
}

// Runs an interface ioctl on `ifr` (whose name is already set) through a throwaway socket.
static int ifreq_ioctl(unsigned long req, struct ifreq *ifr) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) s = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -errno;
    int rc = ioctl(s, req, ifr) < 0 ? -errno : 0;
    close(s);
    return rc;
}

int ctb_if_set_up(const char *name) {
    struct ifreq ifr;
    int rc = copy_name(&ifr, name);
    if (rc == 0) rc = ifreq_ioctl(SIOCGIFFLAGS, &ifr);
    if (rc < 0 || (ifr.ifr_flags & IFF_UP)) return rc;
    ifr.ifr_flags |= IFF_UP;
    return ifreq_ioctl(SIOCSIFFLAGS, &ifr);
}

int ctb_if_set_mac(const char *name, const uint8_t *mac) {
    struct ifreq ifr;
    int rc = copy_name(&ifr, name);
    if (rc < 0) return rc;
    ifr.ifr_hwaddr.sa_family = 1;  // ARPHRD_ETHER
    memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
    return ifreq_ioctl(SIOCSIFHWADDR, &ifr);
}

int ctb_if_set_mtu(const char *name, int mtu) {
    struct ifreq ifr;
    int rc = copy_name(&ifr, name);
    if (rc < 0) return rc;
    ifr.ifr_mtu = mtu;
    return ifreq_ioctl(SIOCSIFMTU, &ifr);
}

int ctb_if_get_mtu(const char *name) {
    struct ifreq ifr;
    int rc = copy_name(&ifr, name);
    if (rc == 0) rc = ifreq_ioctl(SIOCGIFMTU, &ifr);
    return rc < 0 ? rc : ifr.ifr_mtu;
}

int ctb_if_index(const char *name) {
    struct ifreq ifr;
    int rc = copy_name(&ifr, name);
    if (rc == 0) rc = ifreq_ioctl(SIOCGIFINDEX, &ifr);
    return rc < 0 ? rc : ifr.ifr_ifindex;
}

int ctb_if_index_exists(int index) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_ifindex = index;
    int rc = ifreq_ioctl(SIOCGIFNAME, &ifr);
    if (rc == 0) return 1;
    return rc == -ENODEV ? 0 : rc;
}

int ctb_eventfd(void) {
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int ctb_epoll_open(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static int epoll_control(int ep, int op, int fd, unsigned int events, unsigned long long data) {
    struct epoll_event e;
    memset(&e, 0, sizeof(e));
    e.events = events;
    e.data.u64 = data;
    return epoll_ctl(ep, op, fd, &e) < 0 ? -errno : 0;
}

int ctb_epoll_add(int ep, int fd, int output, unsigned long long data) {
    return epoll_control(ep, EPOLL_CTL_ADD, fd, EPOLLIN | (output ? EPOLLOUT : 0), data);
}

int ctb_epoll_delete(int ep, int fd) { return epoll_control(ep, EPOLL_CTL_DEL, fd, 0, 0); }

int ctb_epoll_modify(int ep, int fd, int output, unsigned long long data) {
    return epoll_control(ep, EPOLL_CTL_MOD, fd, EPOLLIN | (output ? EPOLLOUT : 0), data);
}

int ctb_epoll_wait(int ep, unsigned long long *data, unsigned int *events, int max, int timeout) {
    struct epoll_event ready[256];
    if (max > 256) max = 256;
    int n = epoll_wait(ep, ready, max, timeout);
    if (n < 0) return -errno;
    for (int i = 0; i < n; i++) {
        data[i] = ready[i].data.u64;
        events[i] = ready[i].events;
    }
    return n;
}

int ctb_link_monitor_open(void) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return -errno;
    struct sockaddr_nl sa;
    memset(&sa, 0, sizeof(sa));
    sa.nl_family = AF_NETLINK;
    sa.nl_groups = RTMGRP_LINK;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    int size = 1 << 20;  // room for a burst (a lab making hundreds of interfaces at once)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    return fd;
}

int ctb_link_monitor_read(int fd, struct ctb_link_event *events, int max) {
    // one notification per datagram, a few hundred bytes to a few KiB each (IFLA_* attributes)
    char buffer[32768] __attribute__((aligned(NLMSG_ALIGNTO)));
    int count = 0;
    while (count < max) {
        ssize_t n = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return count;
            return -errno;
        }
        int left = (int)n;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buffer; NLMSG_OK(h, left) && count < max; h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_type != RTM_NEWLINK && h->nlmsg_type != RTM_DELLINK) continue;
            if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct ifinfomsg))) continue;
            struct ifinfomsg *ifi = NLMSG_DATA(h);
            struct ctb_link_event *e = &events[count++];
            memset(e, 0, sizeof(*e));
            e->deleted = h->nlmsg_type == RTM_DELLINK;
            e->index = ifi->ifi_index;
            int attributes = (int)IFLA_PAYLOAD(h);
            for (struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, attributes); a = RTA_NEXT(a, attributes)) {
                if (a->rta_type != IFLA_IFNAME) continue;
                size_t length = RTA_PAYLOAD(a);
                if (length > sizeof(e->name) - 1) length = sizeof(e->name) - 1;
                memcpy(e->name, RTA_DATA(a), length);
                e->name[length] = 0;
            }
        }
    }
    return count;
}

int ctb_packet_open(int ifindex) {
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL));
    if (fd < 0) return -errno;
    int one = 1;
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = ifindex;
    struct packet_mreq mr;
    memset(&mr, 0, sizeof(mr));
    mr.mr_ifindex = ifindex;
    mr.mr_type = PACKET_MR_PROMISC;
    if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_AUXDATA, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    // The default receive buffer (~208 KiB) holds three 64 KiB super-frames: a TCP burst from a
    // veth overflows it and the sender retransmits. 4 MiB, as for the UDP socket (forced when
    // privileged).
    int bytes = 4 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof(bytes)) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
    return fd;
}

ssize_t ctb_packet_recv(int fd, uint8_t *buf, size_t cap, size_t *offset, uint8_t *vnet) {
    if (cap < 4) return -EINVAL;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(struct tpacket_auxdata))];
    } control;
    struct sockaddr_ll from;
    struct iovec iov[2] = {{.iov_base = vnet, .iov_len = CTB_VNET_HDR_LEN}, {.iov_base = buf + 4, .iov_len = cap - 4}};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_name = &from;
    msg.msg_namelen = sizeof(from);
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    msg.msg_control = &control;
    msg.msg_controllen = sizeof(control);
    for (;;) {
        ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_TRUNC);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (from.sll_pkttype == PACKET_OUTGOING) {  // belt and braces: never read our own
            msg.msg_controllen = sizeof(control);
            msg.msg_namelen = sizeof(from);
            continue;
        }
        if (n < CTB_VNET_HDR_LEN) return -EPROTO;
        n -= CTB_VNET_HDR_LEN;
        if ((size_t)n > cap - 4) return -EMSGSIZE;
        *offset = 4;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_PACKET || c->cmsg_type != PACKET_AUXDATA) continue;
            struct tpacket_auxdata aux;
            memcpy(&aux, CMSG_DATA(c), sizeof(aux));
            if (!(aux.tp_status & TP_STATUS_VLAN_VALID) || n < 12) continue;
            if ((size_t)n + 4 > cap) return -EMSGSIZE;
            uint16_t tpid = (aux.tp_status & TP_STATUS_VLAN_TPID_VALID) ? aux.tp_vlan_tpid : ETH_P_8021Q;
            // move the two MAC addresses 4 bytes forward into the headroom, insert the tag
            memmove(buf, buf + 4, 12);
            uint16_t be_tpid = htons(tpid), be_tci = htons(aux.tp_vlan_tci);
            memcpy(buf + 12, &be_tpid, 2);
            memcpy(buf + 14, &be_tci, 2);
            *offset = 0;
            n += 4;
        }
        return n;
    }
}

ssize_t ctb_packet_send(int fd, const uint8_t *vnet, const void *frame, size_t len) {
    struct iovec iov[2] = {{.iov_base = (void *)vnet, .iov_len = CTB_VNET_HDR_LEN}, {.iov_base = (void *)frame, .iov_len = len}};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    for (;;) {
        ssize_t n = sendmsg(fd, &msg, MSG_DONTWAIT);
        if (n >= 0) return n;
        if (errno != EINTR) return -errno;
    }
}

#ifndef UDP_NO_CHECK6_RX
#define UDP_NO_CHECK6_RX 102
#endif

int ctb_udp_open(const struct sockaddr *addr, unsigned int addr_len, int buffer_bytes) {
    int fd = socket(addr->sa_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int zero = 0, one = 1;
    if (addr->sa_family == AF_INET6) {
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) < 0) goto fail;
        (void)setsockopt(fd, IPPROTO_UDP, UDP_NO_CHECK6_RX, &one, sizeof(one));
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &one, sizeof(one));
    }
    // ICMP errors for what we send, with the destination they concern (per-remote liveness);
    // an unconnected socket hears of none without it. On an IPv6 socket, IPv4 peers' too.
    (void)setsockopt(fd, IPPROTO_IP, IP_RECVERR, &one, sizeof(one));
    if (buffer_bytes > 0) {
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buffer_bytes, sizeof(buffer_bytes)) < 0)
            (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof(buffer_bytes));
        if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buffer_bytes, sizeof(buffer_bytes)) < 0)
            (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof(buffer_bytes));
    }
    if (bind(fd, addr, addr_len) < 0) goto fail;
    return fd;
fail:;
    int e = errno;
    close(fd);
    return -e;
}

int ctb_udp_read_error(int fd, unsigned char *peer, int *error, int *mtu, unsigned char *quote, int quote_cap, int *quote_length) {
    char control[256];
    struct iovec iov = {.iov_base = quote, .iov_len = (size_t)(quote_cap > 0 ? quote_cap : 0)};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    memset(peer, 0, 28);
    msg.msg_name = peer;
    msg.msg_namelen = 28;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t got = recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT);
    if (got < 0) return errno == EAGAIN ? 0 : -errno;
    *quote_length = (int)got;
    *error = 0;
    *mtu = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if ((cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_RECVERR) ||
            (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_RECVERR)) {
            struct sock_extended_err ee;
            memcpy(&ee, CMSG_DATA(cm), sizeof(ee));
            *error = (int)ee.ee_errno;
            // ICMP "fragmentation needed" / ICMPv6 "packet too big": ee_info is the next hop's MTU
            *mtu = ee.ee_errno == EMSGSIZE ? (int)ee.ee_info : 0;
        }
    }
    return 1;
}

int ctb_path_mtu(const struct sockaddr *addr, unsigned int addr_len) {
    int fd = socket(addr->sa_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    // connect(2) on a UDP socket sends nothing: it looks up the route (and its cached path MTU)
    if (connect(fd, addr, addr_len) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    int mtu = 0;
    socklen_t len = sizeof(mtu);
    int rc = addr->sa_family == AF_INET6 ? getsockopt(fd, IPPROTO_IPV6, IPV6_MTU, &mtu, &len)
                                         : getsockopt(fd, IPPROTO_IP, IP_MTU, &mtu, &len);
    int e = errno;
    close(fd);
    return rc < 0 ? -e : mtu;
}

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

int ctb_udp_enable_offloads(int fd, int gro) {
    int bits = 0, zero = 0, one = 1;
    if (setsockopt(fd, IPPROTO_UDP, UDP_SEGMENT, &zero, sizeof(zero)) == 0) bits |= 1;
    if (gro && setsockopt(fd, IPPROTO_UDP, UDP_GRO, &one, sizeof(one)) == 0) bits |= 2;
    return bits;
}

// Room for one control message: a UDP_SEGMENT (uint16_t) or UDP_GRO (int) value.
#define CTB_CMSG_SPACE CMSG_SPACE(sizeof(int))

// One mmsghdr per datagram, one iovec each: the peer buffer to receive into, or the
// destination to send to; a control buffer each for UDP_GRO (receive) or UDP_SEGMENT (send).
static void fill_messages(struct mmsghdr *msgs, struct iovec *iov, char (*control)[CTB_CMSG_SPACE],
                          struct ctb_datagram *d, unsigned int n, int sending) {
    memset(msgs, 0, sizeof(msgs[0]) * n);
    for (unsigned int i = 0; i < n; i++) {
        iov[i].iov_base = d[i].data;
        iov[i].iov_len = d[i].length;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = (void *)d[i].peer;
        msgs[i].msg_hdr.msg_namelen = sending ? d[i].peer_length : sizeof(d[i].peer);
        d[i].result = 0;
        if (!sending) {
            d[i].segment_size = 0;
            msgs[i].msg_hdr.msg_control = control[i];
            msgs[i].msg_hdr.msg_controllen = CTB_CMSG_SPACE;
        } else if (d[i].segment_size > 0 && d[i].segment_size < d[i].length) {
            memset(control[i], 0, CTB_CMSG_SPACE);
            msgs[i].msg_hdr.msg_control = control[i];
            msgs[i].msg_hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t));
            struct cmsghdr *cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr);
            cm->cmsg_level = IPPROTO_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t size = (uint16_t)d[i].segment_size;
            memcpy(CMSG_DATA(cm), &size, sizeof(size));
        }
    }
}

int ctb_udp_recv_batch(int fd, struct ctb_datagram *d, unsigned int n) {
    if (n > CTB_BATCH_MAX) n = CTB_BATCH_MAX;
    struct mmsghdr msgs[CTB_BATCH_MAX];
    struct iovec iov[CTB_BATCH_MAX];
    char control[CTB_BATCH_MAX][CTB_CMSG_SPACE];
    fill_messages(msgs, iov, control, d, n, 0);
    for (;;) {
        int got = recvmmsg(fd, msgs, n, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EINTR) continue;
            return errno == EAGAIN ? 0 : -errno;
        }
        for (int i = 0; i < got; i++) {
            size_t len = msgs[i].msg_len;
            // MSG_TRUNC in msg_flags: the datagram was longer than the buffer
            d[i].length = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) ? d[i].length + 1 : len;
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr); cm; cm = CMSG_NXTHDR(&msgs[i].msg_hdr, cm)) {
                if (cm->cmsg_level == IPPROTO_UDP && cm->cmsg_type == UDP_GRO) {
                    int size;
                    memcpy(&size, CMSG_DATA(cm), sizeof(size));
                    if (size > 0 && (size_t)size < len) d[i].segment_size = (unsigned int)size;
                }
            }
        }
        return got;
    }
}

int ctb_udp_send_batch(int fd, struct ctb_datagram *d, unsigned int n) {
    if (n > CTB_BATCH_MAX) n = CTB_BATCH_MAX;
    struct mmsghdr msgs[CTB_BATCH_MAX];
    struct iovec iov[CTB_BATCH_MAX];
    char control[CTB_BATCH_MAX][CTB_CMSG_SPACE];
    fill_messages(msgs, iov, control, d, n, 1);
    unsigned int done = 0, sent = 0;
    int retried = 0;
    while (done < n) {
        int r = sendmmsg(fd, msgs + done, n - done, MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) continue;
            // With IP_RECVERR, an ICMP error for ANY earlier datagram (a remote whose VM is not
            // running) is also left pending on the socket, and the next send to any peer fails
            // with it, unsent (the call consumes the pending error). So an asynchronous error is
            // not this datagram's: send it again, once. The error itself is charged to the
            // right peer from the error queue, which names the datagram's destination.
            if (!retried && (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH || errno == EHOSTDOWN)) {
                retried = 1;
                continue;
            }
            retried = 0;
            d[done].result = -errno;  // this one failed: skip it, try the rest
            done++;
            continue;
        }
        retried = 0;
        if (r == 0) {  // nothing taken: count it as a full queue for this datagram
            d[done].result = -EAGAIN;
            done++;
            continue;
        }
        done += (unsigned int)r;
        sent += (unsigned int)r;
    }
    return (int)sent;
}

int ctb_signalfd_open(void) {
    // Every signal whose default action ends the process and that a stray kill(1) can send
    // goes to the signalfd, so that none ends the bridge without its clean-up. Faults (SEGV,
    // BUS, ILL, FPE, ABRT, TRAP, SYS) keep their default action.
    static const int asynchronous[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM,
                                       SIGPROF, SIGIO, SIGPWR, SIGSTKFLT, SIGXCPU, SIGXFSZ};
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < sizeof(asynchronous) / sizeof(asynchronous[0]); i++) sigaddset(&set, asynchronous[i]);
    for (int s = SIGRTMIN; s <= SIGRTMAX; s++) sigaddset(&set, s);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) return -errno;
    signal(SIGPIPE, SIG_IGN);
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int ctb_signalfd_read(int fd) {
    struct signalfd_siginfo si;
    for (;;) {
        ssize_t n = read(fd, &si, sizeof(si));
        if (n == (ssize_t)sizeof(si)) return (int)si.ssi_signo;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return 0;
        return n < 0 ? -errno : -EIO;
    }
}

int ctb_accept(int fd) {
    for (;;) {
        int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c >= 0) return c;
        if (errno != EINTR) return -errno;
    }
}

int ctb_notify(const char *path, const char *state) {
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(sun.sun_path)) return -EINVAL;
    memcpy(sun.sun_path, path, n);
    if (path[0] == '@') sun.sun_path[0] = 0;  // abstract namespace
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    ssize_t rc = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sun,
                        (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n));
    int e = errno;
    close(fd);
    return rc < 0 ? -e : 0;
}

int64_t ctb_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

int ctb_peer_pid(int fd, unsigned int *uid) {
    struct ucred cred;
    socklen_t length = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) < 0) return -errno;
    *uid = cred.uid;
    return cred.pid;
}

int ctb_peer_credentials(int fd, unsigned int *uid, unsigned int *gids, int max) {
    struct ucred cred;
    socklen_t length = sizeof(cred);
    if (max < 1) return -EINVAL;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) < 0) return -errno;
    *uid = cred.uid;
    gids[0] = cred.gid;
    gid_t groups[256];
    socklen_t size = sizeof(groups);
    int n = 1;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &size) == 0) {
        for (size_t k = 0; k < size / sizeof(gid_t) && n < max; k++) gids[n++] = groups[k];
    }
    return n;
}
