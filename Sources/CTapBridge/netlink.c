#define _GNU_SOURCE
#include "ctapbridge.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

// Links, addresses and the FDB of a Linux vxlan device over rtnetlink, as iproute2's `ip` and
// `bridge` send them, without a process per operation. The FDB (RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH of
// family AF_BRIDGE with NTF_SELF: the device's own table), as `bridge fdb` does it, without a
// process per entry: forgetting the MACs learned behind a remote is one dump and batches of
// deletions in one socket. Run on tapbridge's control-plane worker, never on the loop.

#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif
#ifndef NETLINK_GET_STRICT_CHK
#define NETLINK_GET_STRICT_CHK 12
#endif

/// A route netlink socket whose waits end after `seconds` (0: never; the kernel answers in
/// microseconds, but unregistering thousands of links takes it longer) and whose
/// acknowledgements do not quote the request.
static int nl_open_waiting(int seconds) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return -errno;
    if (seconds > 0) {
        struct timeval timeout = {.tv_sec = seconds};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    }
    int one = 1;
    setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
    // the kernel filters the dump by ndm_ifindex (4.20 on; older ones dump every device's
    // entries, filtered below)
    setsockopt(fd, SOL_NETLINK, NETLINK_GET_STRICT_CHK, &one, sizeof(one));
    int size = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    return fd;
}

static int nl_open(void) { return nl_open_waiting(5); }

static int address_length(int family) { return family == AF_INET ? 4 : family == AF_INET6 ? 16 : -1; }

// ---- building requests ----

/// Starts a request at `h` (room for `capacity` bytes): the header (`type`, NLM_F_REQUEST |
/// NLM_F_ACK | `flags`, `seq`) and a zeroed family message of `size` bytes, which it returns.
static void *start_message(struct nlmsghdr *h, size_t capacity, int type, int flags, unsigned seq, size_t size) {
    memset(h, 0, NLMSG_SPACE(size) < capacity ? NLMSG_SPACE(size) : capacity);
    h->nlmsg_len = (unsigned)NLMSG_LENGTH(size);
    h->nlmsg_type = (unsigned short)type;
    h->nlmsg_flags = (unsigned short)(NLM_F_REQUEST | NLM_F_ACK | flags);
    h->nlmsg_seq = seq;
    return NLMSG_DATA(h);
}

/// Appends attribute `type` (`length` bytes of `data`; none for a nest, closed by
/// `end_nested`) to the request at `h`; NULL if it does not fit `capacity`.
static struct rtattr *add_attribute(struct nlmsghdr *h, size_t capacity, unsigned short type, const void *data, int length) {
    if (NLMSG_ALIGN(h->nlmsg_len) + RTA_SPACE(length) > capacity) return NULL;
    struct rtattr *a = (struct rtattr *)((char *)h + NLMSG_ALIGN(h->nlmsg_len));
    a->rta_type = type;
    a->rta_len = (unsigned short)RTA_LENGTH(length);
    memset(RTA_DATA(a), 0, RTA_ALIGN(a->rta_len) - RTA_LENGTH(0));
    if (length > 0) memcpy(RTA_DATA(a), data, (size_t)length);
    h->nlmsg_len = NLMSG_ALIGN(h->nlmsg_len) + RTA_ALIGN(a->rta_len);
    return a;
}

static void end_nested(struct nlmsghdr *h, struct rtattr *nest) {
    nest->rta_len = (unsigned short)((char *)h + h->nlmsg_len - (char *)nest);
}

/// Writes one FDB request (`type`, `flags`) for `mac` behind `dst` on device `ifindex` at
/// `buffer` (room for `capacity` bytes); its aligned length, or 0 if it does not fit.
static int fdb_message(char *buffer, size_t capacity, int type, int flags, unsigned seq, int ifindex, const uint8_t mac[6], const uint8_t *dst, int dst_length) {
    struct nlmsghdr *h = (struct nlmsghdr *)buffer;
    struct ndmsg *n = start_message(h, capacity, type, flags, seq, sizeof(struct ndmsg));
    n->ndm_family = AF_BRIDGE;
    n->ndm_ifindex = ifindex;
    n->ndm_flags = NTF_SELF;
    n->ndm_state = type == RTM_NEWNEIGH ? (NUD_NOARP | NUD_PERMANENT) : 0;
    if (!add_attribute(h, capacity, NDA_LLADDR, mac, 6) || !add_attribute(h, capacity, NDA_DST, dst, dst_length)) return 0;
    return (int)NLMSG_ALIGN(h->nlmsg_len);
}

/// Sends `length` bytes of `count` requests (sequence numbers first_seq...) and reads their
/// acknowledgements; how many succeeded, or -errno if the socket failed. `first_error`: the
/// first refusal's errno (0: none).
static int send_and_count(int fd, const char *buffer, int length, unsigned first_seq, int count, int *first_error) {
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(fd, buffer, (size_t)length, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) return -errno;
    int acknowledged = 0, succeeded = 0;
    char answer[16384] __attribute__((aligned(NLMSG_ALIGNTO)));
    while (acknowledged < count) {
        ssize_t n = recv(fd, answer, sizeof(answer), 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        int left = (int)n;
        for (struct nlmsghdr *h = (struct nlmsghdr *)answer; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_type != NLMSG_ERROR || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr))) continue;
            if (h->nlmsg_seq < first_seq || h->nlmsg_seq >= first_seq + (unsigned)count) continue;
            struct nlmsgerr *err = NLMSG_DATA(h);
            acknowledged++;
            if (err->error == 0) {
                succeeded++;
            } else if (*first_error == 0) {
                *first_error = -err->error;
            }
        }
    }
    return succeeded;
}

/// A request of one message under construction.
struct request {
    char buffer[1024] __attribute__((aligned(NLMSG_ALIGNTO)));
};

static struct nlmsghdr *header(struct request *r) { return (struct nlmsghdr *)r->buffer; }

/// Sends `r` on `fd` (a fresh socket if -1) and waits for its acknowledgement: 0 or -errno.
static int transact(int fd, struct request *r) {
    int own = fd < 0;
    if (own) {
        fd = nl_open();
        if (fd < 0) return fd;
    }
    int first_error = 0;
    int rc = send_and_count(fd, r->buffer, (int)header(r)->nlmsg_len, header(r)->nlmsg_seq, 1, &first_error);
    if (own) close(fd);
    if (rc < 0) return rc;
    return rc == 1 ? 0 : -first_error;
}

int ctb_fdb_change(int add, int ifindex, const uint8_t *mac, int family, const uint8_t *dst) {
    int dst_length = address_length(family);
    if (dst_length < 0) return -EAFNOSUPPORT;
    struct request r;
    if (!fdb_message(r.buffer, sizeof(r.buffer), add ? RTM_NEWNEIGH : RTM_DELNEIGH, add ? (NLM_F_CREATE | NLM_F_APPEND) : 0, 1, ifindex, mac, dst, dst_length)) return -EINVAL;
    return transact(-1, &r);
}

/// The MACs (other than all-zero) of device `ifindex`'s FDB whose destination is `dst`: one
/// RTM_GETNEIGH dump. 0 and `*macs` (6 bytes each, malloc'd) with `*count`, or -errno.
static int learned_behind(int fd, int ifindex, const uint8_t *dst, int dst_length, uint8_t **macs, int *count) {
    struct {
        struct nlmsghdr h;
        struct ndmsg n;
    } request;
    memset(&request, 0, sizeof(request));
    request.h.nlmsg_len = sizeof(request);
    request.h.nlmsg_type = RTM_GETNEIGH;
    request.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.h.nlmsg_seq = 1;
    request.n.ndm_family = AF_BRIDGE;
    request.n.ndm_ifindex = ifindex;
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(fd, &request, sizeof(request), 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) return -errno;
    int capacity = 256, found = 0;
    uint8_t *list = malloc((size_t)capacity * 6);
    if (!list) return -ENOMEM;
    char *answer = malloc(65536);
    if (!answer) {
        free(list);
        return -ENOMEM;
    }
    int rc = 0;
    for (int done = 0; !done;) {
        ssize_t n = recv(fd, answer, 65536, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            rc = -errno;
            break;
        }
        int left = (int)n;
        for (struct nlmsghdr *h = (struct nlmsghdr *)answer; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_type == NLMSG_DONE) {
                done = 1;
                break;
            }
            if (h->nlmsg_type == NLMSG_ERROR) {
                struct nlmsgerr *err = NLMSG_DATA(h);
                rc = err->error ? err->error : -EIO;
                done = 1;
                break;
            }
            if (h->nlmsg_type != RTM_NEWNEIGH || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct ndmsg))) continue;
            struct ndmsg *nd = NLMSG_DATA(h);
            if (nd->ndm_ifindex != ifindex) continue;
            const uint8_t *mac = NULL, *to = NULL;
            int to_length = 0;
            int attributes = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof(*nd)));
            for (struct rtattr *a = (struct rtattr *)((char *)nd + NLMSG_ALIGN(sizeof(*nd))); RTA_OK(a, attributes); a = RTA_NEXT(a, attributes)) {
                if (a->rta_type == NDA_LLADDR && RTA_PAYLOAD(a) == 6) mac = RTA_DATA(a);
                if (a->rta_type == NDA_DST) {
                    to = RTA_DATA(a);
                    to_length = (int)RTA_PAYLOAD(a);
                }
            }
            static const uint8_t zero[6] = {0};
            if (!mac || !to || to_length != dst_length || memcmp(to, dst, (size_t)dst_length) != 0 || memcmp(mac, zero, 6) == 0) continue;
            if (found == capacity) {
                uint8_t *grown = realloc(list, (size_t)capacity * 2 * 6);
                if (!grown) {
                    rc = -ENOMEM;
                    done = 1;
                    break;
                }
                list = grown;
                capacity *= 2;
            }
            memcpy(list + found * 6, mac, 6);
            found++;
        }
    }
    free(answer);
    if (rc < 0) {
        free(list);
        return rc;
    }
    *macs = list;
    *count = found;
    return 0;
}

int ctb_fdb_forget(int ifindex, int family, const uint8_t *dst) {
    int dst_length = address_length(family);
    if (dst_length < 0) return -EAFNOSUPPORT;
    int fd = nl_open();
    if (fd < 0) return fd;
    uint8_t *macs = NULL;
    int count = 0;
    int rc = learned_behind(fd, ifindex, dst, dst_length, &macs, &count);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    // batches of 128 deletions: one send, then their acknowledgements
    enum { batch = 128 };
    char *buffer = malloc(batch * 128);
    int forgotten = 0;
    if (!buffer) rc = -ENOMEM;
    unsigned seq = 2;
    for (int start = 0; rc == 0 && start < count; start += batch) {
        int length = 0, n = count - start < batch ? count - start : batch;
        for (int k = 0; k < n; k++) {
            length += fdb_message(buffer + length, (size_t)(batch * 128 - length), RTM_DELNEIGH, 0, seq + (unsigned)k, ifindex, macs + (start + k) * 6, dst, dst_length);
        }
        int first_error = 0;
        int done = send_and_count(fd, buffer, length, seq, n, &first_error);
        if (done < 0) {
            rc = done;
            break;
        }
        forgotten += done;  // (an entry that moved or aged out meanwhile: ENOENT, not counted)
        seq += (unsigned)n;
    }
    free(buffer);
    free(macs);
    close(fd);
    return rc < 0 ? rc : forgotten;
}

// ---- links and addresses ----

/// A link request (`type`, `flags`) for `ifindex` with `ifi_flags`/`ifi_change`.
static struct ifinfomsg *start_link(struct request *r, int type, int flags, int ifindex, unsigned up_flags, unsigned change) {
    struct ifinfomsg *i = start_message(header(r), sizeof(r->buffer), type, flags, 1, sizeof(struct ifinfomsg));
    i->ifi_family = AF_UNSPEC;
    i->ifi_index = ifindex;
    i->ifi_flags = up_flags;
    i->ifi_change = change;
    return i;
}

/// Appends an attribute to `r` (see `add_attribute`).
static struct rtattr *attribute(struct request *r, unsigned short type, const void *data, int length) {
    return add_attribute(header(r), sizeof(r->buffer), type, data, length);
}

/// A link request for `ifindex` with IFLA_GROUP `group`, on a socket that waits as long as the
/// kernel takes (unregistering every TAP of a bridge at once). 0 or -errno.
static int group_request(int type, int ifindex, unsigned int group) {
    struct request r;
    start_link(&r, type, 0, ifindex, 0, 0);
    if (!attribute(&r, IFLA_GROUP, &group, 4)) return -EINVAL;
    int fd = nl_open_waiting(0);
    if (fd < 0) return fd;
    int rc = transact(fd, &r);
    close(fd);
    return rc;
}

int ctb_if_set_group(int ifindex, unsigned int group) { return group_request(RTM_NEWLINK, ifindex, group); }

int ctb_links_delete_group(unsigned int group) { return group_request(RTM_DELLINK, 0, group); }

int ctb_link_delete(const char *name) {
    struct request r;
    start_link(&r, RTM_DELLINK, 0, 0, 0, 0);
    if (!attribute(&r, IFLA_IFNAME, name, (int)strlen(name) + 1)) return -ENAMETOOLONG;
    return transact(-1, &r);
}

int ctb_link_set(int ifindex, int up, const uint8_t *mac) {
    struct request r;
    start_link(&r, RTM_NEWLINK, 0, ifindex, up ? IFF_UP : 0, up ? IFF_UP : 0);
    if (mac && !attribute(&r, IFLA_ADDRESS, mac, 6)) return -EINVAL;
    return transact(-1, &r);
}

int ctb_vxlan_create(const char *name, unsigned mtu, unsigned vni, unsigned short port, int family, const uint8_t *remote,
                     const uint8_t *local, unsigned limit, const char *alias) {
    int length = address_length(family);
    if (length < 0) return -EAFNOSUPPORT;
    struct request r;
    start_link(&r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, 0, 0, 0);
    unsigned short port_be = htons(port);
    int ok = attribute(&r, IFLA_IFNAME, name, (int)strlen(name) + 1) && attribute(&r, IFLA_MTU, &mtu, 4);
    struct rtattr *info = ok ? attribute(&r, IFLA_LINKINFO, NULL, 0) : NULL;
    ok = info && attribute(&r, IFLA_INFO_KIND, "vxlan", 6);
    struct rtattr *data = ok ? attribute(&r, IFLA_INFO_DATA, NULL, 0) : NULL;
    ok = data && attribute(&r, IFLA_VXLAN_ID, &vni, 4) && attribute(&r, IFLA_VXLAN_PORT, &port_be, 2)
        && attribute(&r, family == AF_INET ? IFLA_VXLAN_GROUP : IFLA_VXLAN_GROUP6, remote, length)
        && attribute(&r, IFLA_VXLAN_LIMIT, &limit, 4)
        && (!local || attribute(&r, family == AF_INET ? IFLA_VXLAN_LOCAL : IFLA_VXLAN_LOCAL6, local, length));
    if (!ok) return -EINVAL;
    end_nested(header(&r), data);
    end_nested(header(&r), info);
    int fd = nl_open();
    if (fd < 0) return fd;
    int rc = transact(fd, &r);
    if (rc == 0) {
        // made down; then its alias and no IPv6 link-local address (before it is up: an address
        // made at up would stay), then up
        int index = (int)if_nametoindex(name);
        if (index <= 0) rc = -ENODEV;
        if (rc == 0) {
            start_link(&r, RTM_NEWLINK, 0, index, 0, 0);
            unsigned char none = IN6_ADDR_GEN_MODE_NONE;
            struct rtattr *spec = NULL, *inet6 = NULL;
            ok = attribute(&r, IFLA_IFALIAS, alias, (int)strlen(alias)) && (spec = attribute(&r, IFLA_AF_SPEC, NULL, 0))
                && (inet6 = attribute(&r, AF_INET6, NULL, 0)) && attribute(&r, IFLA_INET6_ADDR_GEN_MODE, &none, 1);
            if (!ok) {
                rc = -EINVAL;
            } else {
                end_nested(header(&r), inet6);
                end_nested(header(&r), spec);
                rc = transact(fd, &r);
            }
        }
        if (rc == 0) {
            start_link(&r, RTM_NEWLINK, 0, index, IFF_UP, IFF_UP);
            rc = transact(fd, &r);
        }
        if (rc != 0) {
            struct request undo;
            start_link(&undo, RTM_DELLINK, 0, 0, 0, 0);
            attribute(&undo, IFLA_IFNAME, name, (int)strlen(name) + 1);
            transact(fd, &undo);
        }
    }
    close(fd);
    return rc;
}

int ctb_link_to_netns(int ifindex, const char *netns_path) {
    int ns = open(netns_path, O_RDONLY | O_CLOEXEC);
    if (ns < 0) return -errno;
    struct request r;
    start_link(&r, RTM_NEWLINK, 0, ifindex, 0, 0);
    unsigned value = (unsigned)ns;
    int rc = attribute(&r, IFLA_NET_NS_FD, &value, 4) ? transact(-1, &r) : -EINVAL;
    close(ns);
    return rc;
}

int ctb_netns_configure(const char *netns_path, const char *name, int family, const uint8_t *address, int prefix, int up) {
    // a netlink socket in that namespace: this thread enters it, makes the socket and finds the
    // link's index there, and comes back (only this thread moves; the socket stays there)
    int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home < 0) return -errno;
    int ns = open(netns_path, O_RDONLY | O_CLOEXEC);
    if (ns < 0) {
        int e = errno;
        close(home);
        return -e;
    }
    if (setns(ns, CLONE_NEWNET) != 0) {
        int e = errno;
        close(ns);
        close(home);
        return -e;
    }
    int fd = nl_open();
    int index = name ? (int)if_nametoindex(name) : 1;
    int back = setns(home, CLONE_NEWNET);
    close(ns);
    close(home);
    if (back != 0) abort();  // a worker thread left in another namespace would do everything after there
    if (fd < 0) return fd;
    if (index <= 0) {
        close(fd);
        return -ENODEV;
    }
    int rc = 0;
    struct request r;
    if (address) {
        int length = address_length(family);
        struct ifaddrmsg *a = start_message(header(&r), sizeof(r.buffer), RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, 1, sizeof(struct ifaddrmsg));
        a->ifa_family = (unsigned char)family;
        a->ifa_prefixlen = (unsigned char)prefix;
        a->ifa_index = (unsigned)index;
        // nodad: an IPv6 address usable at once, not after duplicate detection
        unsigned flags = family == AF_INET6 ? IFA_F_NODAD : 0;
        a->ifa_flags = (unsigned char)flags;
        if (length < 0 || !attribute(&r, IFA_LOCAL, address, length) || !attribute(&r, IFA_ADDRESS, address, length)
            || !attribute(&r, IFA_FLAGS, &flags, 4)) {
            rc = -EINVAL;
        } else {
            rc = transact(fd, &r);
        }
    }
    if (rc == 0 && up) {
        start_link(&r, RTM_NEWLINK, 0, index, IFF_UP, IFF_UP);
        rc = transact(fd, &r);
    }
    close(fd);
    return rc;
}
