#define _GNU_SOURCE
#include "ctapbridge_pcap.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pcap/pcap.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct ctb_mirror {
    pcap_t *dead;
    pcap_dumper_t *dumper;
    FILE *stream;
    int fd;
    int is_stdout;
    int saved_flags;
    int broken;
    char *path;
    long long rotate_bytes;
    int rotate_count;
    long long file_bytes;  // bytes handed to the buffer for the current file
    long rotations;
    uint8_t *buf;
    size_t cap, start, end;
    // Where each buffered frame's record ends, as a count of bytes ever appended: a ring, so
    // that a partial write tells how many frames reached the file, and an error how many were
    // lost with the buffer.
    unsigned long long bytes_in, bytes_out;
    unsigned long long *ends;
    size_t ends_cap, ends_head, ends_count;
    unsigned long long flushed, lost;
    // pcapng: blocks written here (no libpcap dumper); the interfaces (one per port) are
    // written again at the start of every rotated file.
    int ng;
    uint32_t snaplen;
    char **ifnames;
    size_t nifs, ifcap;
    long long header_bytes;  // the current file's header: 24 (pcap), or the SHB and IDBs
};

// Frames whose records are now wholly written.
static void count_flushed(struct ctb_mirror *m) {
    while (m->ends_count > 0 && m->ends[m->ends_head] <= m->bytes_out) {
        m->ends_head = (m->ends_head + 1) % m->ends_cap;
        m->ends_count--;
        m->flushed++;
    }
}

// The buffer is given up (a write error, or closing with a reader that does not read): its
// frames are lost.
static void discard(struct ctb_mirror *m) {
    m->lost += m->ends_count;
    m->ends_count = 0;
    m->bytes_out = m->bytes_in;
    m->start = m->end = 0;
}

// fopencookie write: append to the buffer. ctb_mirror_write checks room first, so this
// always fits; refusing (0) would make stdio report an error.
static ssize_t cookie_write(void *cookie, const char *data, size_t size) {
    struct ctb_mirror *m = cookie;
    if (m->cap - m->end < size && m->start > 0) {
        memmove(m->buf, m->buf + m->start, m->end - m->start);
        m->end -= m->start;
        m->start = 0;
    }
    if (m->cap - m->end < size) return 0;
    memcpy(m->buf + m->end, data, size);
    m->end += size;
    m->bytes_in += size;
    m->file_bytes += (long long)size;
    return (ssize_t)size;
}

static int cookie_close(void *cookie) {
    (void)cookie;
    return 0;
}

static size_t pending(const struct ctb_mirror *m) { return m->end - m->start; }
static size_t room(const struct ctb_mirror *m) { return m->cap - pending(m); }

// pcapng blocks go straight into the buffer (the caller checked the room).
static void put(struct ctb_mirror *m, const void *data, size_t size) { cookie_write(m, data, size); }
static void put32(struct ctb_mirror *m, uint32_t v) { put(m, &v, 4); }
static void pad(struct ctb_mirror *m, size_t n) {
    static const uint8_t zero[4] = {0};
    put(m, zero, (4 - n % 4) % 4);
}
static size_t padded(size_t n) { return (n + 3) & ~(size_t)3; }

// Section Header Block: byte-order magic, version 1.0, section length unknown.
static void put_shb(struct ctb_mirror *m) {
    static const char app[] = "tapbridge";
    uint32_t len = 28 + 4 + (uint32_t)padded(sizeof(app) - 1) + 4;
    put32(m, 0x0A0D0D0A);
    put32(m, len);
    put32(m, 0x1A2B3C4D);
    uint16_t version[2] = {1, 0};
    put(m, version, 4);
    uint64_t unknown = UINT64_MAX;
    put(m, &unknown, 8);
    uint16_t opt[2] = {4, (uint16_t)(sizeof(app) - 1)};  // shb_userappl
    put(m, opt, 4);
    put(m, app, sizeof(app) - 1);
    pad(m, sizeof(app) - 1);
    put32(m, 0);  // opt_endofopt
    put32(m, len);
}

static size_t idb_size(const char *name) { return 20 + 4 + padded(strlen(name)) + 4; }

// Interface Description Block: Ethernet, the snap length, if_name.
static void put_idb(struct ctb_mirror *m, const char *name) {
    size_t n = strlen(name);
    uint32_t len = (uint32_t)idb_size(name);
    put32(m, 1);
    put32(m, len);
    uint16_t link[2] = {1, 0};  // LINKTYPE_ETHERNET, reserved
    put(m, link, 4);
    put32(m, m->snaplen);
    uint16_t opt[2] = {2, (uint16_t)n};  // if_name
    put(m, opt, 4);
    put(m, name, n);
    pad(m, n);
    put32(m, 0);
    put32(m, len);
}

static void set_err(char *err, size_t err_len, const char *fmt, const char *a, const char *b) {
    if (err && err_len) snprintf(err, err_len, fmt, a, b);
}

// Opens the current file and starts a pcap stream on it (the 24-byte header goes to the buffer).
static int start_file(struct ctb_mirror *m, char *err, size_t err_len) {
    if (m->is_stdout) {
        m->fd = STDOUT_FILENO;
    } else {
        m->fd = open(m->path, O_WRONLY | O_CREAT | O_TRUNC | O_NONBLOCK | O_CLOEXEC, 0644);
        if (m->fd < 0) {
            set_err(err, err_len, "%s: %s", m->path, strerror(errno));
            return -1;
        }
    }
    m->file_bytes = 0;
    if (m->ng) {
        put_shb(m);
        for (size_t i = 0; i < m->nifs; i++) put_idb(m, m->ifnames[i]);
        m->header_bytes = m->file_bytes;
        return 0;
    }
    m->header_bytes = 24;
    cookie_io_functions_t io = {.read = NULL, .write = cookie_write, .seek = NULL, .close = cookie_close};
    m->stream = fopencookie(m, "w", io);
    if (!m->stream) {
        set_err(err, err_len, "%s: %s", m->path, strerror(errno));
        return -1;
    }
    setvbuf(m->stream, NULL, _IONBF, 0);
    m->file_bytes = 0;
    m->dumper = pcap_dump_fopen(m->dead, m->stream);
    if (!m->dumper) {
        set_err(err, err_len, "%s: %s", m->path, pcap_geterr(m->dead));
        fclose(m->stream);
        m->stream = NULL;
        return -1;
    }
    return 0;
}

ctb_mirror *ctb_mirror_open(const char *path, int snaplen, size_t buffer_bytes, long long rotate_bytes,
                            int rotate_count, int pcapng, char *err, size_t err_len) {
    struct ctb_mirror *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    m->ng = pcapng;
    m->snaplen = (uint32_t)snaplen;
    m->is_stdout = strcmp(path, "-") == 0;
    m->path = strdup(m->is_stdout ? "standard output" : path);
    m->rotate_bytes = m->is_stdout ? 0 : rotate_bytes;
    m->rotate_count = rotate_count < 1 ? 1 : rotate_count;
    m->cap = buffer_bytes;
    m->buf = malloc(buffer_bytes);
    m->ends_cap = buffer_bytes / 32 + 1;  // a record is at least 16 + 14 bytes
    m->ends = malloc(m->ends_cap * sizeof(m->ends[0]));
    m->fd = -1;
    m->dead = pcap_open_dead(DLT_EN10MB, snaplen);
    if (!m->path || !m->buf || !m->ends || !m->dead) {
        set_err(err, err_len, "%s%s", "out of memory", "");
        ctb_mirror_close(m, 0);
        return NULL;
    }
    if (start_file(m, err, err_len) < 0) {
        ctb_mirror_close(m, 0);
        return NULL;
    }
    if (m->is_stdout) {
        m->saved_flags = fcntl(m->fd, F_GETFL);
        fcntl(m->fd, F_SETFL, m->saved_flags | O_NONBLOCK);
    }
    return m;
}

long ctb_mirror_drain(ctb_mirror *m) {
    while (pending(m) > 0) {
        ssize_t n = write(m->fd, m->buf + m->start, pending(m));
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return (long)pending(m);
            int e = errno;
            discard(m);
            return -e;
        }
        m->start += (size_t)n;
        m->bytes_out += (unsigned long long)n;
        count_flushed(m);
    }
    m->start = m->end = 0;
    return 0;
}

// path.N for N >= 1, path for N == 0
static void numbered(const struct ctb_mirror *m, int n, char *out, size_t len) {
    if (n == 0) snprintf(out, len, "%s", m->path);
    else snprintf(out, len, "%s.%d", m->path, n);
}

// Closes the current file and starts a new one: path -> path.1 -> ... -> path.(count-1).
static int rotate(struct ctb_mirror *m) {
    if (ctb_mirror_drain(m) != 0) return -ENOBUFS;  // the old file's bytes must go first
    if (m->dumper) pcap_dump_close(m->dumper);  // fclose(stream): the cookie close does nothing
    m->dumper = NULL;
    m->stream = NULL;
    close(m->fd);
    m->fd = -1;
    char from[PATH_MAX + 16], to[PATH_MAX + 16];
    numbered(m, m->rotate_count - 1, to, sizeof(to));
    if (m->rotate_count > 1) unlink(to);
    for (int i = m->rotate_count - 1; i >= 1; i--) {
        numbered(m, i - 1, from, sizeof(from));
        numbered(m, i, to, sizeof(to));
        rename(from, to);
    }
    m->rotations++;
    if (start_file(m, NULL, 0) < 0) {
        m->broken = 1;
        return -EIO;
    }
    return 0;
}

int ctb_mirror_write(ctb_mirror *m, const uint8_t *frame, uint32_t length, int64_t seconds, int32_t microseconds) {
    if (m->broken) return -EIO;
    uint32_t snaplen = (uint32_t)pcap_snapshot(m->dead);
    uint32_t captured = length < snaplen ? length : snaplen;
    size_t record = 16 + captured;
    if (m->rotate_bytes > 0 && m->file_bytes > m->header_bytes && m->file_bytes + (long long)record > m->rotate_bytes) {
        int rc = rotate(m);
        if (rc < 0) return rc;
    }
    if (room(m) < record || m->ends_count == m->ends_cap) return -ENOBUFS;
    struct pcap_pkthdr h;
    h.ts.tv_sec = (time_t)seconds;
    h.ts.tv_usec = microseconds;
    h.caplen = captured;
    h.len = length;
    pcap_dump((u_char *)m->dumper, &h, frame);
    m->ends[(m->ends_head + m->ends_count) % m->ends_cap] = m->bytes_in;
    m->ends_count++;
    return 0;
}

int ctb_mirror_add_interface(ctb_mirror *m, const char *name) {
    if (m->broken) return -EIO;
    if (room(m) < idb_size(name)) return -ENOBUFS;
    if (m->nifs == m->ifcap) {
        size_t cap = m->ifcap ? m->ifcap * 2 : 16;
        char **names = realloc(m->ifnames, cap * sizeof(*names));
        if (!names) return -ENOMEM;
        m->ifnames = names;
        m->ifcap = cap;
    }
    m->ifnames[m->nifs] = strdup(name);
    if (!m->ifnames[m->nifs]) return -ENOMEM;
    put_idb(m, name);
    m->header_bytes = m->file_bytes;  // a file rotated later starts with it too
    return (int)m->nifs++;
}

int ctb_mirror_write_ng(ctb_mirror *m, uint32_t interface, uint32_t flags, const uint8_t *frame, uint32_t length, int64_t seconds,
                        int32_t microseconds) {
    if (m->broken) return -EIO;
    uint32_t captured = length < m->snaplen ? length : m->snaplen;
    size_t record = 28 + padded(captured) + 12 + 4;
    if (m->rotate_bytes > 0 && m->file_bytes > m->header_bytes && m->file_bytes + (long long)record > m->rotate_bytes) {
        int rc = rotate(m);
        if (rc < 0) return rc;
    }
    if (room(m) < record || m->ends_count == m->ends_cap) return -ENOBUFS;
    uint64_t ts = (uint64_t)seconds * 1000000u + (uint64_t)microseconds;
    put32(m, 6);
    put32(m, (uint32_t)record);
    put32(m, interface);
    put32(m, (uint32_t)(ts >> 32));
    put32(m, (uint32_t)ts);
    put32(m, captured);
    put32(m, length);
    put(m, frame, captured);
    pad(m, captured);
    uint16_t opt[2] = {2, 4};  // epb_flags: bits 0-1 direction (1 inbound, 2 outbound)
    put(m, opt, 4);
    put32(m, flags);
    put32(m, 0);
    put32(m, (uint32_t)record);
    m->ends[(m->ends_head + m->ends_count) % m->ends_cap] = m->bytes_in;
    m->ends_count++;
    return 0;
}

unsigned long long ctb_mirror_flushed(const ctb_mirror *m) { return m->flushed; }
unsigned long long ctb_mirror_lost(const ctb_mirror *m) { return m->lost; }

int ctb_mirror_fd(const ctb_mirror *m) { return m->fd; }
long ctb_mirror_rotations(const ctb_mirror *m) { return m->rotations; }

unsigned long long ctb_mirror_close(ctb_mirror *m, int wait_ms) {
    if (!m) return 0;
    if (m->fd >= 0 && (m->stream || m->ng)) {
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (;;) {
            long left = ctb_mirror_drain(m);
            if (left <= 0) break;
            clock_gettime(CLOCK_MONOTONIC, &t);
            long spent = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
            if (spent >= wait_ms) break;
            struct pollfd p = {.fd = m->fd, .events = POLLOUT};
            poll(&p, 1, (int)(wait_ms - spent));
        }
    }
    unsigned long long left = m->ends_count;  // still buffered: lost
    if (m->dumper) pcap_dump_close(m->dumper);
    if (m->is_stdout && m->fd >= 0) fcntl(m->fd, F_SETFL, m->saved_flags);
    else if (m->fd >= 0) close(m->fd);
    if (m->dead) pcap_close(m->dead);
    free(m->buf);
    free(m->ends);
    free(m->path);
    for (size_t i = 0; i < m->nifs; i++) free(m->ifnames[i]);
    free(m->ifnames);
    free(m);
    return left;
}

struct ctb_filter {
    struct bpf_program program;
};

ctb_filter *ctb_filter_compile(const char *expression, int snaplen, char *err, size_t err_len) {
    pcap_t *dead = pcap_open_dead(DLT_EN10MB, snaplen);
    if (!dead) return NULL;
    struct ctb_filter *f = calloc(1, sizeof(*f));
    if (!f || pcap_compile(dead, &f->program, expression, 1, PCAP_NETMASK_UNKNOWN) < 0) {
        set_err(err, err_len, "%s%s", pcap_geterr(dead), "");
        free(f);
        pcap_close(dead);
        return NULL;
    }
    pcap_close(dead);
    return f;
}

int ctb_filter_match(const ctb_filter *f, const uint8_t *frame, uint32_t length, uint32_t captured) {
    struct pcap_pkthdr h;
    memset(&h, 0, sizeof(h));
    h.caplen = captured;
    h.len = length;
    return pcap_offline_filter(&f->program, &h, frame) != 0;
}

void ctb_filter_free(ctb_filter *f) {
    if (!f) return;
    pcap_freecode(&f->program);
    free(f);
}

struct ctb_injector {
    pcap_t *p;
};

ctb_injector *ctb_injector_open(const char *interface, char *err, size_t err_len) {
    char errbuf[PCAP_ERRBUF_SIZE] = "";
    pcap_t *p = pcap_create(interface, errbuf);
    if (!p) {
        set_err(err, err_len, "%s%s", errbuf, "");
        return NULL;
    }
    // We only send: a tiny snapshot and buffer, and a filter that matches nothing, so frames
    // arriving on the interface are not queued for us.
    pcap_set_snaplen(p, 64);
    pcap_set_buffer_size(p, 64 * 1024);
    pcap_set_immediate_mode(p, 1);
    int rc = pcap_activate(p);
    if (rc < 0) {
        set_err(err, err_len, "%s%s", rc == PCAP_ERROR_PERM_DENIED ? "permission denied (needs CAP_NET_RAW)" : pcap_geterr(p), "");
        pcap_close(p);
        return NULL;
    }
    struct bpf_program none;
    if (pcap_compile(p, &none, "less 1", 1, PCAP_NETMASK_UNKNOWN) == 0) {
        pcap_setfilter(p, &none);
        pcap_freecode(&none);
    }
    if (pcap_setnonblock(p, 1, errbuf) < 0) {
        set_err(err, err_len, "%s%s", errbuf, "");
        pcap_close(p);
        return NULL;
    }
    struct ctb_injector *i = calloc(1, sizeof(*i));
    i->p = p;
    return i;
}

int ctb_injector_send(ctb_injector *i, const uint8_t *frame, uint32_t length) {
    if (pcap_inject(i->p, frame, length) < 0) return errno ? -errno : -EIO;
    return 0;
}

void ctb_injector_close(ctb_injector *i) {
    if (!i) return;
    pcap_close(i->p);
    free(i);
}

long ctb_pcap_file_count(const char *path, const char *filter, char *err, size_t err_len) {
    char errbuf[PCAP_ERRBUF_SIZE] = "";
    pcap_t *p = pcap_open_offline(path, errbuf);
    if (!p) {
        set_err(err, err_len, "%s%s", errbuf, "");
        return -1;
    }
    struct bpf_program prog;
    int filtered = filter && *filter;
    if (filtered && pcap_compile(p, &prog, filter, 1, PCAP_NETMASK_UNKNOWN) < 0) {
        set_err(err, err_len, "%s%s", pcap_geterr(p), "");
        pcap_close(p);
        return -1;
    }
    long count = 0;
    struct pcap_pkthdr *h;
    const u_char *data;
    while (pcap_next_ex(p, &h, &data) == 1) {
        if (!filtered || pcap_offline_filter(&prog, h, data)) count++;
    }
    if (filtered) pcap_freecode(&prog);
    pcap_close(p);
    return count;
}
