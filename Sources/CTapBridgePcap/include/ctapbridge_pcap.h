// libpcap glue for tapbridge's mirror: a pcap writer that never blocks, BPF filters, injection
// into an interface, and reading a pcap file back (for tests). Functions return 0 / a count on
// success and -errno (or NULL with a message in `err`) on failure.
#ifndef CTAPBRIDGE_PCAP_H
#define CTAPBRIDGE_PCAP_H

#include <stddef.h>
#include <stdint.h>

/// A pcap or pcapng file writer. For pcap, libpcap formats the file (DLT_EN10MB) into an
/// in-memory buffer through a fopencookie stream; pcapng blocks (a section header, one
/// interface per port, enhanced packets with a direction flag) are written into the same buffer
/// here. `ctb_mirror_drain` moves the buffer to a non-blocking descriptor.
/// A frame that does not fit in the buffer is dropped (counted by the caller), so a slow
/// reader or a full disk never blocks forwarding.
typedef struct ctb_mirror ctb_mirror;

/// Opens `path` ("-" for standard output). `rotate_bytes` > 0 starts a new file once the
/// current one would grow past it, keeping `rotate_count` files: path, path.1, ... (newest
/// first). `pcapng`: 1 for pcapng, 0 for classic pcap. Returns NULL with a message in `err` on
/// failure.
ctb_mirror *ctb_mirror_open(const char *path, int snaplen, size_t buffer_bytes, long long rotate_bytes,
                            int rotate_count, int pcapng, char *err, size_t err_len);
/// pcapng: declares an interface (a port) named `name`; returns its id for ctb_mirror_write_ng,
/// or -ENOBUFS (no room now: try again later) or -EIO. Every rotated file declares it again.
int ctb_mirror_add_interface(ctb_mirror *m, const char *name);
/// pcapng: adds one frame seen on `interface`, `flags` its epb_flags (1 inbound, 2 outbound);
/// returns as ctb_mirror_write.
int ctb_mirror_write_ng(ctb_mirror *m, uint32_t interface, uint32_t flags, const uint8_t *frame, uint32_t length, int64_t seconds,
                        int32_t microseconds);
/// Adds one frame: 0 taken into the buffer, -ENOBUFS no room (dropped), -EIO writer broken.
int ctb_mirror_write(ctb_mirror *m, const uint8_t *frame, uint32_t length, int64_t seconds, int32_t microseconds);
/// Writes buffered bytes to the descriptor without blocking. Returns the bytes still pending
/// (0 = all written) or -errno of a write error (the bytes stay buffered).
long ctb_mirror_drain(ctb_mirror *m);
/// The descriptor being written (for POLLOUT).
int ctb_mirror_fd(const ctb_mirror *m);
/// Files rotated so far.
long ctb_mirror_rotations(const ctb_mirror *m);
/// Drains (waiting up to `wait_ms` for a slow reader), closes, frees.
/// Writes what it can (waiting up to `wait_ms` for a slow reader), closes and frees; returns
/// the frames still buffered then, which are lost.
unsigned long long ctb_mirror_close(ctb_mirror *m, int wait_ms);
/// Frames whose records reached the file (or pipe) whole.
unsigned long long ctb_mirror_flushed(const ctb_mirror *m);
/// Frames lost from the buffer: a write error gave it up (a reader that went away, a full disk).
unsigned long long ctb_mirror_lost(const ctb_mirror *m);

/// A compiled BPF filter (pcap syntax) for DLT_EN10MB frames.
typedef struct ctb_filter ctb_filter;
/// Compiles `expression`; NULL with libpcap's message in `err` on a syntax error.
ctb_filter *ctb_filter_compile(const char *expression, int snaplen, char *err, size_t err_len);
/// 1 if the frame matches, 0 if not.
int ctb_filter_match(const ctb_filter *f, const uint8_t *frame, uint32_t length, uint32_t captured);
void ctb_filter_free(ctb_filter *f);

/// Sends frames into an interface with pcap_inject (non-blocking).
typedef struct ctb_injector ctb_injector;
ctb_injector *ctb_injector_open(const char *interface, char *err, size_t err_len);
/// 0 sent, -errno (EAGAIN/ENOBUFS when the interface's queue is full).
int ctb_injector_send(ctb_injector *i, const uint8_t *frame, uint32_t length);
void ctb_injector_close(ctb_injector *i);

/// Reads a pcap file with pcap_open_offline and counts the frames matching `filter` (NULL or
/// "" for all). Returns the count, or -1 with a message in `err`.
long ctb_pcap_file_count(const char *path, const char *filter, char *err, size_t err_len);

#endif
