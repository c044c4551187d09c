// C shim for what Swift cannot call directly: TUNSETIFF and other function-like ioctl macros,
// packet-socket options with their structs, signalfd. Every function returns 0 or a
// non-negative value on success and -errno on failure (errno is not relied on across calls).
#ifndef CTAPBRIDGE_H
#define CTAPBRIDGE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/// Size of struct virtio_net_hdr, which PACKET_VNET_HDR and IFF_VNET_HDR put in front of
/// every frame.
#define CTB_VNET_HDR_LEN 10

/// Opens /dev/net/tun and attaches (or creates) the TAP `name` with IFF_TAP | IFF_NO_PI,
/// non-blocking and close-on-exec. `vnet_hdr` adds IFF_VNET_HDR. Returns the fd or -errno:
/// -EBUSY if another process holds the TAP, -EINVAL if `name` exists and is not a TAP,
/// -EPERM without CAP_NET_ADMIN, -ENOENT if /dev/net/tun is missing.
int ctb_tap_open(const char *name, int vnet_hdr);

/// Offloads a TAP opened with the vnet header takes (ctb_tap_negotiate_offload's result).
#define CTB_OFFLOAD_CSUM 1
#define CTB_OFFLOAD_TSO 2
#define CTB_OFFLOAD_USO 4

/// On a TAP opened with `vnet_hdr`: sets the header to 10 bytes and tells the kernel which
/// offloads this reader takes (TUNSETOFFLOAD): checksum, TSO4+TSO6, USO4+USO6, the most the
/// kernel knows. Returns CTB_OFFLOAD_* bits, or -errno.
int ctb_tap_negotiate_offload(int fd);
/// readv(2) of one frame with its virtio-net header: the frame's length, or -errno (-EAGAIN:
/// nothing to read).
ssize_t ctb_tap_read(int fd, uint8_t *vnet, void *buf, size_t cap);
/// writev(2) of one frame after its virtio-net header: bytes written or -errno.
ssize_t ctb_tap_write(int fd, const uint8_t *vnet, const void *frame, size_t len);
/// Sets IFF_UP on `name`. 0 or -errno.
int ctb_if_set_up(const char *name);
/// Sets the MAC address of `name` (6 bytes, SIOCSIFHWADDR). 0 or -errno.
int ctb_if_set_mac(const char *name, const uint8_t *mac);
/// Sets the MTU of `name`. 0 or -errno.
int ctb_if_set_mtu(const char *name, int mtu);
/// The MTU of `name` or -errno.
int ctb_if_get_mtu(const char *name);
/// The ifindex of `name` or -errno.
int ctb_if_index(const char *name);
/// Whether ifindex `index` still exists in this namespace: 1, 0, or -errno.
int ctb_if_index_exists(int index);


/// A link event from rtnetlink (RTMGRP_LINK): an interface made or changed (RTM_NEWLINK),
/// or deleted / moved out of this namespace (RTM_DELLINK).
struct ctb_link_event {
    int deleted;    // 1: RTM_DELLINK, 0: RTM_NEWLINK
    int index;      // its ifindex
    char name[16];  // its name (IFLA_IFNAME), "" if the message had none
};
/// Puts interface `ifindex` in interface group `group` (rtnetlink RTM_NEWLINK, IFLA_GROUP).
/// 0 or -errno.
int ctb_if_set_group(int ifindex, unsigned int group);
/// Deletes every interface of group `group` in this namespace at once (RTM_DELLINK with
/// IFLA_GROUP: one unregister for all, where closing TAPs one by one waits for an RCU grace
/// period each, ~20 ms). 0 or -errno.
int ctb_links_delete_group(unsigned int group);
/// Adds (`add` 1: RTM_NEWNEIGH, NLM_F_APPEND, permanent) or deletes (0) the entry `mac` ->
/// `dst` (an IPv4 or IPv6 address of `family`, in network order) of device `ifindex`'s own FDB
/// (a vxlan device's; NTF_SELF), as `bridge fdb append|del MAC dev DEV dst DST`. 0 or -errno.
int ctb_fdb_change(int add, int ifindex, const uint8_t *mac, int family, const uint8_t *dst);
/// Deletes every entry of device `ifindex`'s own FDB that leads to `dst`, other than the
/// all-zero one (the MACs a vxlan device learned behind a remote): one dump, then deletions in
/// batches of 128 on one netlink socket. How many went, or -errno.
int ctb_fdb_forget(int ifindex, int family, const uint8_t *dst);
/// Makes vxlan device `name` (as `ip link add NAME mtu MTU type vxlan id VNI dstport PORT
/// remote REMOTE [local LOCAL] maxaddress LIMIT`; addresses of `family`, network order), gives
/// it alias `alias` and no IPv6 link-local address, and brings it up; deleted again if a step
/// fails. 0 or -errno.
int ctb_vxlan_create(const char *name, unsigned mtu, unsigned vni, unsigned short port, int family, const uint8_t *remote,
                     const uint8_t *local, unsigned limit, const char *alias);
/// Deletes link `name` (RTM_DELLINK by name). 0 or -errno.
int ctb_link_delete(const char *name);
/// Brings link `ifindex` up (`up`) and/or gives it MAC `mac` (nullable). 0 or -errno.
int ctb_link_set(int ifindex, int up, const uint8_t *mac);
/// Moves link `ifindex` into the network namespace at `netns_path` (/run/netns/NS). 0 or -errno.
int ctb_link_to_netns(int ifindex, const char *netns_path);
/// In the namespace at `netns_path`: gives link `name` (NULL: the loopback) `address`/`prefix`
/// (nullable; IPv6 without duplicate detection) and brings it up (`up`). The calling thread
/// enters the namespace only to open a socket there, and comes back. 0 or -errno.
int ctb_netns_configure(const char *netns_path, const char *name, int family, const uint8_t *address, int prefix, int up);
/// A non-blocking, close-on-exec eventfd (a counter a background thread writes to wake the
/// loop). The fd or -errno.
int ctb_eventfd(void);
/// A close-on-exec epoll instance (level-triggered use only). The fd or -errno.
int ctb_epoll_open(void);
/// Adds `fd` to epoll instance `ep`, waiting for input (and output too if `output`), with
/// `data` handed back when it is ready. 0 or -errno.
int ctb_epoll_add(int ep, int fd, int output, unsigned long long data);
/// Removes `fd` from `ep`. 0 or -errno.
int ctb_epoll_delete(int ep, int fd);
/// Changes whether `fd` in `ep` also waits for output. 0 or -errno.
int ctb_epoll_modify(int ep, int fd, int output, unsigned long long data);
/// epoll_wait(2) for at most `timeout` ms (-1: until something is ready): up to `max` ready
/// entries, each its `data` and its events (EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP: the same
/// bits as poll's). Returns how many, or -errno (-EINTR too).
int ctb_epoll_wait(int ep, unsigned long long *data, unsigned int *events, int max, int timeout);
/// Opens a non-blocking NETLINK_ROUTE socket subscribed to link events. The fd or -errno.
int ctb_link_monitor_open(void);
/// Reads up to `max` link events (other messages are skipped). Returns how many (0: none
/// waiting) or -errno: -ENOBUFS when the kernel dropped events because the socket's buffer
/// was full (the caller must then look at every interface it cares about).
int ctb_link_monitor_read(int fd, struct ctb_link_event *events, int max);

/// Opens an AF_PACKET raw socket bound to ifindex `ifindex` for all protocols, non-blocking,
/// close-on-exec, with PACKET_IGNORE_OUTGOING (our own transmissions are never read back),
/// PACKET_AUXDATA (to restore VLAN tags the kernel stripped), PACKET_VNET_HDR (each frame comes
/// with its checksum and GSO state, and each send takes one) and promiscuous membership.
/// Returns the fd or -errno.
int ctb_packet_open(int ifindex);

/// Receives one frame into `buf + 4` (the 4 bytes in front are headroom the shim uses to
/// re-insert a VLAN tag the kernel moved into metadata) and its virtio-net header into `vnet`
/// (CTB_VNET_HDR_LEN bytes; offsets in it do not count a re-inserted tag). On success returns
/// the frame length and sets *offset to where the frame starts (0: a tag was inserted, or 4).
/// Returns -EAGAIN when drained, -EMSGSIZE for a frame larger than the buffer (consumed), and
/// -EINVAL for a super-frame whose GSO type the header cannot express (consumed).
ssize_t ctb_packet_recv(int fd, uint8_t *buf, size_t cap, size_t *offset, uint8_t *vnet);

/// Sends one frame with its virtio-net header `vnet` (CTB_VNET_HDR_LEN bytes; all zero for a
/// complete frame), without blocking. Returns the bytes sent or -errno.
ssize_t ctb_packet_send(int fd, const uint8_t *vnet, const void *frame, size_t len);

struct sockaddr;

/// Opens a non-blocking, close-on-exec UDP socket of the address's family bound to `addr`.
/// An IPv6 socket accepts IPv4 too (IPV6_V6ONLY off) and accepts zero UDP checksums
/// (UDP_NO_CHECK6_RX, as VXLAN allows). Buffers are raised to `buffer_bytes` (forced when
/// privileged). Returns the fd or -errno.
int ctb_udp_open(const struct sockaddr *addr, unsigned int addr_len, int buffer_bytes);

/// Reads one ICMP error from the socket's error queue (IP_RECVERR / IPV6_RECVERR are on): the
/// address the failed datagram was sent to goes to `peer` (28 bytes, sockaddr_in or
/// sockaddr_in6), its errno (ECONNREFUSED, EHOSTUNREACH, EMSGSIZE, ...) to `error`, and for
/// EMSGSIZE (ICMP fragmentation needed / packet too big) the MTU it reported to `mtu` (else 0).
/// The start of the datagram the error quotes (what follows its UDP header, as much as the
/// ICMP message carried, at most `quote_cap` bytes) goes to `quote`, its length to
/// `quote_length`. Returns 1, or 0 when the queue is empty, or -errno.
int ctb_udp_read_error(int fd, unsigned char *peer, int *error, int *mtu, unsigned char *quote, int quote_cap, int *quote_length);
/// The MTU of the route towards `addr` (the kernel's cached path MTU if it learned a smaller
/// one), found by connecting a throwaway UDP socket (nothing is sent); or -errno.
int ctb_path_mtu(const struct sockaddr *addr, unsigned int addr_len);

/// Most datagrams one ctb_udp_recv_batch / ctb_udp_send_batch call handles.
#define CTB_BATCH_MAX 64

/// One datagram for the batch calls.
struct ctb_datagram {
    /// Receive: the buffer; send: the bytes.
    void *data;
    /// Receive: in, the buffer's size; out, the datagram's full length (larger than the buffer
    /// if it was truncated). Send: the length.
    size_t length;
    /// Receive: out, the sender (sockaddr_in or sockaddr_in6). Send: the destination, copied
    /// in when the datagram is queued (the entry owns it: the peer may go before the send).
    unsigned char peer[28];
    /// Send: the length of the destination in `peer`.
    unsigned int peer_length;
    /// Send: out, 0 or -errno for this datagram.
    int result;
    /// UDP GSO/GRO. Send: 0 for one datagram, or the size of each datagram in `data` (the last
    /// may be shorter), sent as a train with one UDP_SEGMENT control message. Receive: out, 0 or
    /// the size of each datagram of a train the kernel coalesced (UDP_GRO; the last may be
    /// shorter).
    unsigned int segment_size;
};

/// Turns on UDP GRO (trains of datagrams delivered as one) on `fd` and probes UDP_SEGMENT.
/// Returns a bit set: 1 = UDP_SEGMENT accepted, 2 = UDP_GRO on.
int ctb_udp_enable_offloads(int fd, int gro);

/// recvmmsg(2): up to `n` (at most CTB_BATCH_MAX) datagrams without blocking. Returns how many
/// (0 when none is waiting) or -errno.
int ctb_udp_recv_batch(int fd, struct ctb_datagram *d, unsigned int n);

/// sendmmsg(2): sends `n` (at most CTB_BATCH_MAX) datagrams without blocking; a datagram the
/// kernel refuses gets its -errno in `result` and the rest are still tried. Returns how many
/// were sent.
int ctb_udp_send_batch(int fd, struct ctb_datagram *d, unsigned int n);

/// Blocks every asynchronous signal whose default action would end the process (SIGINT,
/// SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR,
/// SIGSTKFLT, SIGXCPU, SIGXFSZ and the real-time signals; SIGPIPE is ignored) and returns a
/// non-blocking signalfd for them, or -errno.
int ctb_signalfd_open(void);
/// Reads one signal number from a signalfd: the number, 0 if none is pending, or -errno.
int ctb_signalfd_read(int fd);

/// accept4(2) with SOCK_NONBLOCK | SOCK_CLOEXEC: the new fd, or -errno (-EAGAIN: none waiting).
int ctb_accept(int fd);
/// The credentials of the process at the other end of Unix socket `fd` (SO_PEERCRED,
/// SO_PEERGROUPS): its uid in `*uid`, and up to `max` group IDs in `gids` (the primary group
/// first, then the supplementary ones). Returns how many group IDs were stored, or -errno.
int ctb_peer_credentials(int fd, unsigned int *uid, unsigned int *gids, int max);

/// Becomes user `uid`, group `gid` with supplementary `groups`, keeping only the capabilities
/// in mask `keep` (bit N: capability N) in the permitted, effective and bounding sets, and sets
/// no_new_privs. Must be called as root. Returns 0 or -errno (the process may then be half
/// way: the caller exits).
int ctb_drop_privileges(unsigned int uid, unsigned int gid, const unsigned int *groups, int ngroups, unsigned long long keep, unsigned long long ambient);

/// Runs the program at `path` with `argv` (NULL-terminated), standard input and output on
/// /dev/null, and waits for it (posix_spawn and waitpid, with no signal blocked in the child):
/// its exit status (128 + N if killed by signal N), or -errno if it could not start. Up to
/// `errors_size - 1` bytes of its standard error land in `errors`, NUL-terminated. If its
/// output is not closed within `timeout_ms` (it hangs), its process group is killed and
/// -ETIMEDOUT returned.
int ctb_run(const char *path, char *const argv[], char *errors, int errors_size, int with_stdout, int timeout_ms);

/// The effective capability mask, or -errno.
long long ctb_effective_capabilities(void);

/// The process at the other end of Unix socket `fd` (SO_PEERCRED): its pid, or -errno.
int ctb_peer_pid(int fd, unsigned int *uid);

/// sd_notify(3): sends `state` as one datagram to the Unix socket `path` ($NOTIFY_SOCKET; a
/// leading '@' is an abstract address). 0 or -errno.
int ctb_notify(const char *path, const char *state);

/// Monotonic clock in nanoseconds.
int64_t ctb_monotonic_ns(void);

#endif
