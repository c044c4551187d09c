// Dropping root for --user: the capability system calls Swift cannot make.
#define _GNU_SOURCE
#include "ctapbridge.h"

#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

// `ambient` (a subset of `keep`): capabilities the programs it runs (iproute2's ip and bridge)
// inherit, as ambient capabilities.
int ctb_drop_privileges(unsigned int uid, unsigned int gid, const unsigned int *groups, int ngroups, unsigned long long keep, unsigned long long ambient) {
    // the bounding set first: dropping from it needs CAP_SETPCAP, which goes with root
    for (int c = 0; c <= 63; c++) {
        if (keep & (1ULL << c)) continue;
        if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) != 1) continue;  // not a capability of this kernel, or gone already
        if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0) return -errno;
    }
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) return -errno;
    if (setgroups((size_t)ngroups, (const gid_t *)groups) < 0) return -errno;
    if (setresgid(gid, gid, gid) < 0) return -errno;
    if (setresuid(uid, uid, uid) < 0) return -errno;
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2] = {{0, 0, 0}, {0, 0, 0}};
    data[0].permitted = data[0].effective = (unsigned int)keep;
    data[1].permitted = data[1].effective = (unsigned int)(keep >> 32);
    ambient &= keep;
    data[0].inheritable = (unsigned int)ambient;  // an ambient capability must be inheritable too
    data[1].inheritable = (unsigned int)(ambient >> 32);
    if (syscall(SYS_capset, &header, data) < 0) return -errno;
    for (int c = 0; c <= 63; c++) {
        if ((ambient & (1ULL << c)) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0) < 0) return -errno;
    }
    if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0) return -errno;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return -errno;
    return 0;
}

long long ctb_effective_capabilities(void) {
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &header, data) < 0) return -errno;
    return (long long)data[0].effective | ((long long)data[1].effective << 32);
}

#include <spawn.h>
#include <sys/wait.h>
#include <fcntl.h>

extern char **environ;

// Runs `path` and waits for it; its standard error (and output, `with_stdout`) in `errors`.
int ctb_run(const char *path, char *const argv[], char *errors, int errors_size, int with_stdout, int timeout_ms) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) return -errno;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    if (with_stdout)
        posix_spawn_file_actions_adddup2(&actions, pipefd[1], 1);
    else
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, pipefd[1], 2);
    // the child starts with no signal blocked (tapbridge blocks the ones its signalfd reads)
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    // its own process group, so that a timeout kills whatever it started too
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP);
    pid_t pid;
    int rc = posix_spawn(&pid, path, &actions, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    close(pipefd[1]);
    if (rc != 0) {
        close(pipefd[0]);
        return -rc;
    }
    int used = 0, timed_out = 0;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        struct pollfd p = {.fd = pipefd[0], .events = POLLIN};
        int ready = poll(&p, 1, elapsed >= timeout_ms ? 0 : (int)(timeout_ms - elapsed));
        if (ready < 0 && errno == EINTR) continue;
        if (ready == 0) {
            timed_out = 1;
            kill(-pid, SIGKILL);
            break;
        }
        char scratch[256];
        char *into = used < errors_size - 1 ? errors + used : scratch;
        int room = used < errors_size - 1 ? errors_size - 1 - used : (int)sizeof(scratch);
        ssize_t n = read(pipefd[0], into, (size_t)room);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (into != scratch) used += (int)n;
    }
    if (errors_size > 0) errors[used] = 0;
    close(pipefd[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return -errno;
    }
    if (timed_out) return -ETIMEDOUT;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
