#define _GNU_SOURCE
#include "ctapbridge.h"

#include <errno.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

// The FDB of a Linux vxlan device over rtnetlink (RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH of
// family AF_BRIDGE with NTF_SELF: the device's own table), as `bridge fdb` does it, without a
// process per entry: forgetting the MACs learned behind a remote is one dump and batches of
// deletions in one socket. Run on tapbridge's control-plane worker, never on the loop.

#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif
#ifndef NETLINK_GET_STRICT_CHK
#define NETLINK_GET_STRICT_CHK 12
#endif

/// A route netlink socket whose waits end after 5 s (the kernel answers in microseconds) and
/// whose acknowledgements do not quote the request.
static int nl_open(void) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return -errno;
    struct timeval timeout = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    int one = 1;
    setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
    // the kernel filters the dump by ndm_ifindex (4.20 on; older ones dump every device's
    // entries, filtered below)
    setsockopt(fd, SOL_NETLINK, NETLINK_GET_STRICT_CHK, &one, sizeof(one));
    int size = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    return fd;
}

static int address_length(int family) { return family == AF_INET ? 4 : family == AF_INET6 ? 16 : -1; }

/// Appends one FDB request (`type`, `flags`) for `mac` behind `dst` on device `ifindex` at
/// `buffer`; its length.
static int fdb_message(char *buffer, int type, int flags, unsigned seq, int ifindex, const uint8_t mac[6], const uint8_t *dst, int dst_length) {
    struct nlmsghdr *h = (struct nlmsghdr *)buffer;
    memset(h, 0, NLMSG_SPACE(sizeof(struct ndmsg)));
    h->nlmsg_len = NLMSG_LENGTH(sizeof(struct ndmsg));
    h->nlmsg_type = (unsigned short)type;
    h->nlmsg_flags = (unsigned short)(NLM_F_REQUEST | NLM_F_ACK | flags);
    h->nlmsg_seq = seq;
    struct ndmsg *n = NLMSG_DATA(h);
    n->ndm_family = AF_BRIDGE;
    n->ndm_ifindex = ifindex;
    n->ndm_flags = NTF_SELF;
    n->ndm_state = type == RTM_NEWNEIGH ? (NUD_NOARP | NUD_PERMANENT) : 0;
    const void *values[2] = {mac, dst};
    const int lengths[2] = {6, dst_length};
    const unsigned short types[2] = {NDA_LLADDR, NDA_DST};
    for (int k = 0; k < 2; k++) {
        struct rtattr *a = (struct rtattr *)(buffer + NLMSG_ALIGN(h->nlmsg_len));
        a->rta_type = types[k];
        a->rta_len = (unsigned short)RTA_LENGTH(lengths[k]);
        memset(RTA_DATA(a), 0, RTA_ALIGN(a->rta_len) - RTA_LENGTH(0));
        memcpy(RTA_DATA(a), values[k], (size_t)lengths[k]);
        h->nlmsg_len = NLMSG_ALIGN(h->nlmsg_len) + RTA_ALIGN(a->rta_len);
    }
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

int ctb_fdb_change(int add, int ifindex, const uint8_t *mac, int family, const uint8_t *dst) {
    int dst_length = address_length(family);
    if (dst_length < 0) return -EAFNOSUPPORT;
    int fd = nl_open();
    if (fd < 0) return fd;
    char buffer[256] __attribute__((aligned(NLMSG_ALIGNTO)));
    int length = fdb_message(buffer, add ? RTM_NEWNEIGH : RTM_DELNEIGH, add ? (NLM_F_CREATE | NLM_F_APPEND) : 0, 1, ifindex, mac, dst, dst_length);
    int first_error = 0;
    int rc = send_and_count(fd, buffer, length, 1, 1, &first_error);
    close(fd);
    if (rc < 0) return rc;
    return rc == 1 ? 0 : -first_error;
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
            length += fdb_message(buffer + length, RTM_DELNEIGH, 0, seq + (unsigned)k, ifindex, macs + (start + k) * 6, dst, dst_length);
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
