#ifndef CTAPBRIDGE_URING_H
#define CTAPBRIDGE_URING_H

#include <stddef.h>
#include <stdint.h>

/// Batched writes to TAP descriptors through one io_uring (liburing): each queued frame is
/// copied, behind its virtio-net header if it has one, into a slot of its own; a flush submits
/// them all with one io_uring_enter and collects each write's result.
typedef struct ctb_writer ctb_writer;

/// A writer of `entries` slots of `slot_size` bytes, or NULL with errno set (io_uring not
/// available: an old kernel, io_uring_disabled, a seccomp filter).
ctb_writer *ctb_writer_open(unsigned entries, unsigned slot_size);
void ctb_writer_close(ctb_writer *w);

/// Queues a write of `header` (`header_len` bytes, may be 0) and `frame` to `fd`. Returns the
/// slot it took, or -1 if every slot is taken or it does not fit one.
int ctb_writer_queue(ctb_writer *w, int fd, const void *header, size_t header_len, const void *frame, size_t len);

/// Slots queued and not yet flushed.
unsigned ctb_writer_queued(const ctb_writer *w);

/// Submits every queued write and waits for them all (a TAP write completes at once); stores
/// each slot's result (bytes written, or -errno) in `results[slot]`. Returns how many were
/// queued (slots 0..<n). If submitting failed, every result is that -errno and the ring is made
/// anew; if that failed too, `*broken` is set and the writer must not be used again.
int ctb_writer_flush(ctb_writer *w, int32_t *results, int *broken);

#endif
