#ifndef DISCD_CLINUX_SHIM_H
#define DISCD_CLINUX_SHIM_H
/* Linux system calls Swift cannot reach directly: glibc's syscall(2) is variadic, and glibc 2.36
 * has no wrapper for pidfd_open in the headers Swift imports. */
#include <sys/syscall.h>
#include <unistd.h>
#include <signal.h>
#include <sys/wait.h>
#include <errno.h>
#include <sys/ioctl.h>

/* /dev/heartbeat's records and ioctls: the one definition, shared with the kernel module. */
#include "../../kernel/include/uapi/discd_heartbeat.h"
_Static_assert(sizeof(struct heartbeat_exit) == HEARTBEAT_EXIT_RECORD_SIZE, "heartbeat_exit record size");

/* ioctl(2) is variadic: opt a process in through /dev/heartbeat (0, or -1 with errno). */
static inline int discd_heartbeat_optin(int fd, unsigned pid, unsigned tag) {
    struct heartbeat_optin o = { .pid = pid, .tag = tag };
    return ioctl(fd, HEARTBEAT_IOC_OPTIN, &o);
}

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

/* A pidfd for `pid` (readable once the process has exited), or -1 with errno. */
static inline int discd_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

/* Waits for the child `pid` to exit without reaping it (the zombie stays for discd to read its
 * status from /proc); returns its wait status, or -1 with errno. */
static inline int discd_wait_exit_nowait(pid_t pid) {
    siginfo_t si;
    for (;;) {
        si.si_pid = 0;
        if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) == 0) break;
        if (errno != EINTR) return -1;
    }
    if (si.si_code == CLD_EXITED) return (si.si_status & 0xff) << 8;
    return si.si_status & 0x7f;
}

/* struct ucred (SO_PEERCRED), which glibc declares only under _GNU_SOURCE: same layout. */
struct discd_ucred {
    pid_t pid;
    uid_t uid;
    gid_t gid;
};
/* getsockopt(SOL_SOCKET, SO_MEMINFO) fills an array of SK_MEMINFO_VARS u32s; the last,
 * SK_MEMINFO_DROPS, counts the datagrams the socket dropped (receive buffer full). */
#include <sys/socket.h>
#include <linux/sock_diag.h>
_Static_assert(SK_MEMINFO_DROPS == 8 && SK_MEMINFO_VARS == 9, "SO_MEMINFO layout");
static inline int discd_so_meminfo(void) { return SO_MEMINFO; }

#endif
