// relay.c: the smallest useful userspace switch, the anchor tapbridge is measured against.
//
//   relay [-v] [-u] TAP0 TAP1
//
// Creates two TAPs and copies every frame read from one into the other, from one poll(2)
// loop (as vtun's br_select.c does): no learning, no parsing, no counters. Up to 64 frames
// are read from a ready TAP per wake-up.
//   -v  open the TAPs with IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|TSO6): the kernel hands
//       over, and takes back, checksum-partial 64 KiB super-frames, each behind a 10-byte
//       virtio-net header that is passed through untouched.
//   -u  (built with -DWITH_URING -luring) the frames read from one TAP in a wake-up are written
//       to the other by io_uring, one io_uring_enter for the lot instead of one write(2) each:
//       what batching the TAP side would buy (Benchmarks.md, "Batching TAP writes").
//   -m  (with -DWITH_URING) no poll(2) at all: a multishot read on each TAP (Linux 6.7) fills
//       buffers from a provided-buffer ring, and each frame read is written to the other TAP
//       in the next submission: what batching the reads too would buy.
// SIGINT or SIGTERM ends it (the TAPs go with it).
// Build: cc -O2 -Wall -o relay relay.c   (with -u: cc -O2 -Wall -DWITH_URING -o relay relay.c -luring)
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#ifdef WITH_URING
#include <liburing.h>
#endif

static volatile sig_atomic_t done;
static int run_multishot(int fd0, int fd1);
static void stop(int sig) { (void)sig; done = 1; }

static int open_tap(const char *name, int vnet) {
	int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) { perror("/dev/net/tun"); exit(1); }
	struct ifreq ifr = {0};
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet ? IFF_VNET_HDR : 0);
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) { perror("TUNSETIFF"); exit(1); }
	if (vnet) {
		int size = 10;
		if (ioctl(fd, TUNSETVNETHDRSZ, &size) < 0) { perror("TUNSETVNETHDRSZ"); exit(1); }
		if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)) < 0) {
			perror("TUNSETOFFLOAD");
			exit(1);
		}
	}
	return fd;
}

int main(int argc, char **argv) {
	int vnet = 0, uring = 0, a = 1;
	for (; a < argc && argv[a][0] == '-'; a++) {
		if (strcmp(argv[a], "-v") == 0) vnet = 1;
		else if (strcmp(argv[a], "-u") == 0) uring = 1;
		else if (strcmp(argv[a], "-m") == 0) uring = 2;
		else break;
	}
	if (argc != a + 2) {
		fprintf(stderr, "usage: relay [-v] [-u] TAP0 TAP1\n");
		return 2;
	}
#ifdef WITH_URING
	struct io_uring ring;
	if (uring && io_uring_queue_init(128, &ring, 0) < 0) { perror("io_uring_queue_init"); return 1; }
#else
	if (uring) { fprintf(stderr, "relay: built without io_uring (-DWITH_URING -luring)\n"); return 2; }
#endif
	signal(SIGINT, stop);
	signal(SIGTERM, stop);
	struct pollfd fds[2] = {{open_tap(argv[a], vnet), POLLIN, 0}, {open_tap(argv[a + 1], vnet), POLLIN, 0}};
	if (uring == 2) return run_multishot(fds[0].fd, fds[1].fd);
	static char buffers[64][65536 + 64];
	while (!done) {
		if (poll(fds, 2, 500) < 0) {
			if (errno == EINTR) continue;
			perror("poll");
			return 1;
		}
		for (int i = 0; i < 2; i++) {
			if (!(fds[i].revents & POLLIN)) continue;
			int k = 0;
			for (; k < 64; k++) {
				ssize_t n = read(fds[i].fd, buffers[k], sizeof buffers[k]);
				if (n <= 0) break;
				if (!uring) {
					(void)!write(fds[1 - i].fd, buffers[k], (size_t)n);  // a full queue drops the frame
					continue;
				}
#ifdef WITH_URING
				struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
				io_uring_prep_write(sqe, fds[1 - i].fd, buffers[k], (unsigned)n, 0);
#endif
			}
#ifdef WITH_URING
			if (uring && k > 0) {
				io_uring_submit_and_wait(&ring, (unsigned)k);  // (TAP writes complete at once)
				struct io_uring_cqe *cqe;
				unsigned head, seen = 0;
				io_uring_for_each_cqe(&ring, head, cqe) { seen++; }
				io_uring_cq_advance(&ring, seen);
			}
#endif
		}
	}
	return 0;
}

#ifdef WITH_URING
#define CTB_OP_READ_MULTISHOT (IORING_OP_SENDMSG_ZC + 1)  // (Linux 6.7; liburing 2.3 predates it)
enum { NBUF = 256, BUFSZ = 65536 + 64, READ = 1, WRITE = 2 };

static void arm(struct io_uring *ring, int fd, int side) {
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	io_uring_prep_rw(CTB_OP_READ_MULTISHOT, sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = 1;
	io_uring_sqe_set_data64(sqe, (uint64_t)READ << 32 | (unsigned)side);
}

static int run_multishot(int fd0, int fd1) {
	int fds[2] = {fd0, fd1};
	struct io_uring ring;
	if (io_uring_queue_init(512, &ring, 0) < 0) { perror("io_uring_queue_init"); return 1; }
	struct io_uring_buf_ring *br;
	if (posix_memalign((void **)&br, 4096, NBUF * sizeof(struct io_uring_buf))) return 1;
	io_uring_buf_ring_init(br);
	struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)br, .ring_entries = NBUF, .bgid = 1};
	int rc = io_uring_register_buf_ring(&ring, &reg, 0);
	if (rc < 0) { fprintf(stderr, "register_buf_ring: %s\n", strerror(-rc)); return 1; }
	char *bufs = malloc((size_t)NBUF * BUFSZ);
	int mask = io_uring_buf_ring_mask(NBUF);
	for (int i = 0; i < NBUF; i++) io_uring_buf_ring_add(br, bufs + (size_t)i * BUFSZ, BUFSZ, (unsigned short)i, mask, i);
	io_uring_buf_ring_advance(br, NBUF);
	arm(&ring, fds[0], 0);
	arm(&ring, fds[1], 1);
	while (!done) {
		rc = io_uring_submit_and_wait(&ring, 1);
		if (rc < 0 && rc != -EINTR) { fprintf(stderr, "submit: %s\n", strerror(-rc)); return 1; }
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		int recycled = 0;
		io_uring_for_each_cqe(&ring, head, cqe) {
			seen++;
			uint64_t ud = io_uring_cqe_get_data64(cqe);
			if (ud >> 32 == READ) {
				int side = (int)(ud & 1);
				if (cqe->res > 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
					unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
					struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
					if (!sqe) { io_uring_submit(&ring); sqe = io_uring_get_sqe(&ring); }
					io_uring_prep_write(sqe, fds[1 - side], bufs + (size_t)bid * BUFSZ, (unsigned)cqe->res, 0);
					io_uring_sqe_set_data64(sqe, (uint64_t)WRITE << 32 | bid);
				} else if (cqe->res < 0 && cqe->res != -ENOBUFS && cqe->res != -EAGAIN) {
					fprintf(stderr, "read: %s\n", strerror(-cqe->res));
					return 1;
				}
				if (!(cqe->flags & IORING_CQE_F_MORE)) arm(&ring, fds[side], side);
			} else if (ud >> 32 == WRITE) {
				unsigned bid = (unsigned)(ud & 0xFFFF);
				io_uring_buf_ring_add(br, bufs + (size_t)bid * BUFSZ, BUFSZ, (unsigned short)bid, mask, recycled++);
			}
		}
		io_uring_cq_advance(&ring, seen);
		if (recycled) io_uring_buf_ring_advance(br, recycled);
	}
	return 0;
}
#else
static int run_multishot(int fd0, int fd1) {
	(void)fd0;
	(void)fd1;
	fprintf(stderr, "relay: built without io_uring (-DWITH_URING -luring)\n");
	return 2;
}
#endif
