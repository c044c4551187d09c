// Batched TAP writes through liburing (ctapbridge_uring.h).
#include "ctapbridge_uring.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ctb_writer {
	struct io_uring ring;
	unsigned entries, slot_size, queued;
	unsigned char *slab;
	int *fds;          // each queued slot's descriptor
	unsigned *lengths; // and length
};

ctb_writer *ctb_writer_open(unsigned entries, unsigned slot_size) {
	ctb_writer *w = calloc(1, sizeof *w);
	if (!w) return NULL;
	int rc = io_uring_queue_init(entries, &w->ring, 0);
	if (rc < 0) {
		free(w);
		errno = -rc;
		return NULL;
	}
	w->slab = aligned_alloc(64, (size_t)entries * slot_size);
	w->fds = calloc(entries, sizeof *w->fds);
	w->lengths = calloc(entries, sizeof *w->lengths);
	if (!w->slab || !w->fds || !w->lengths) {
		io_uring_queue_exit(&w->ring);
		free(w->slab);
		free(w->fds);
		free(w->lengths);
		free(w);
		errno = ENOMEM;
		return NULL;
	}
	w->entries = entries;
	w->slot_size = slot_size;
	return w;
}

void ctb_writer_close(ctb_writer *w) {
	if (!w) return;
	io_uring_queue_exit(&w->ring);
	free(w->slab);
	free(w->fds);
	free(w->lengths);
	free(w);
}

unsigned ctb_writer_queued(const ctb_writer *w) { return w->queued; }

int ctb_writer_queue(ctb_writer *w, int fd, const void *header, size_t header_len, const void *frame, size_t len) {
	if (w->queued == w->entries || header_len + len > w->slot_size) return -1;
	unsigned slot = w->queued++;
	unsigned char *buffer = w->slab + (size_t)slot * w->slot_size;
	if (header_len) memcpy(buffer, header, header_len);
	memcpy(buffer + header_len, frame, len);
	w->fds[slot] = fd;
	w->lengths[slot] = (unsigned)(header_len + len);
	return (int)slot;
}

int ctb_writer_flush(ctb_writer *w, int32_t *results, int *broken) {
	unsigned n = w->queued, done = 0;
	if (n == 0) return 0;
	w->queued = 0;
	if (n == 1) {
		// one write: write(2) itself costs less than a submission (a ping's frame)
		ssize_t rc;
		do rc = write(w->fds[0], w->slab, w->lengths[0]); while (rc < 0 && errno == EINTR);
		results[0] = rc < 0 ? -errno : (int32_t)rc;
		return 1;
	}
	for (unsigned k = 0; k < n; k++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);  // (the ring has a slot's worth)
		io_uring_prep_write(sqe, w->fds[k], w->slab + (size_t)k * w->slot_size, w->lengths[k], 0);
		io_uring_sqe_set_data64(sqe, k);
		results[k] = -EIO;  // (any slot the ring does not answer for)
	}
	int rc;
	do rc = io_uring_submit_and_wait(&w->ring, n); while (rc == -EINTR);
	if (rc < 0) {
		// the prepared writes may still sit in the submission queue: a new ring, so that
		// they can never go out later from slots written again
		io_uring_queue_exit(&w->ring);
		*broken = io_uring_queue_init(w->entries, &w->ring, 0) < 0;
		for (unsigned k = 0; k < n; k++) results[k] = rc;
		return (int)n;
	}
	while (done < n) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&w->ring, head, cqe) {
			uint64_t slot = io_uring_cqe_get_data64(cqe);
			if (slot < n) results[slot] = cqe->res;
			seen++;
		}
		io_uring_cq_advance(&w->ring, seen);
		done += seen;
		if (done < n) {
			do rc = io_uring_wait_cqe_nr(&w->ring, &cqe, n - done); while (rc == -EINTR);
			if (rc < 0) break;
		}
	}
	return (int)n;
}
