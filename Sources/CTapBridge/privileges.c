// Dropping root for --user: the capability system calls Swift cannot make.
#define _GNU_SOURCE
#include "ctapbridge.h"

#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int ctb_drop_privileges(unsigned int uid, unsigned int gid, const unsigned int *groups, int ngroups, unsigned long long keep) {
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
    if (syscall(SYS_capset, &header, data) < 0) return -errno;
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
