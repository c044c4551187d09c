// relay.c: the smallest useful userspace switch, the anchor tapbridge is measured against.
//
//   relay [-v] TAP0 TAP1
//
// Creates two TAPs and copies every frame read from one into the other, from one poll(2)
// loop (as vtun's br_select.c does): no learning, no parsing, no counters. Up to 64 frames
// are read from a ready TAP per wake-up.
//   -v  open the TAPs with IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|TSO6): the kernel hands
//       over, and takes back, checksum-partial 64 KiB super-frames, each behind a 10-byte
//       virtio-net header that is passed through untouched.
// SIGINT or SIGTERM ends it (the TAPs go with it).
// Build: cc -O2 -Wall -o relay relay.c
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

static volatile sig_atomic_t done;
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
	int vnet = argc > 1 && strcmp(argv[1], "-v") == 0;
	if (argc != 3 + vnet) {
		fprintf(stderr, "usage: relay [-v] TAP0 TAP1\n");
		return 2;
	}
	signal(SIGINT, stop);
	signal(SIGTERM, stop);
	struct pollfd fds[2] = {{open_tap(argv[1 + vnet], vnet), POLLIN, 0}, {open_tap(argv[2 + vnet], vnet), POLLIN, 0}};
	static char buffer[65536 + 64];
	while (!done) {
		if (poll(fds, 2, 500) < 0) {
			if (errno == EINTR) continue;
			perror("poll");
			return 1;
		}
		for (int i = 0; i < 2; i++) {
			if (!(fds[i].revents & POLLIN)) continue;
			for (int k = 0; k < 64; k++) {
				ssize_t n = read(fds[i].fd, buffer, sizeof buffer);
				if (n <= 0) break;
				(void)!write(fds[1 - i].fd, buffer, (size_t)n);  // a full queue drops the frame
			}
		}
	}
	return 0;
}
