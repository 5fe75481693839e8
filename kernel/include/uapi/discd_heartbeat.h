/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* /dev/heartbeat, the user-space interface of discd's heartbeat module (kernel/README.md).
 * Included by the module, by C programs that opt in, and by discd (Sources/CLinux/shim.h). */
#ifndef DISCD_UAPI_HEARTBEAT_H
#define DISCD_UAPI_HEARTBEAT_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define HEARTBEAT_DEVICE "/dev/heartbeat"

/* Opt a process in: pid 0 = the caller's thread group; tag 0..65535. */
struct heartbeat_optin {
	__u32 pid;
	__u32 tag;
};

#define HEARTBEAT_IOC_OPTIN  _IOW('H', 1, struct heartbeat_optin)
/* Opt out: the pid (0 = the caller). */
#define HEARTBEAT_IOC_OPTOUT _IOW('H', 2, __u32)

/* One record per exit of an opted-in process, read() from /dev/heartbeat (CAP_SYS_ADMIN). */
struct heartbeat_exit {
	__u32 pid;      /* thread group id */
	__u16 tag;
	__u16 flags;
	__s32 status;   /* wait status, as waitpid(2) reports it */
	__u32 lost;     /* records dropped before this one (queue full) */
	__u64 start_ns; /* task start_boottime: ns since boot, suspend included */
	__u64 exit_ns;  /* ktime_get_boottime_ns() at the exit hook */
};

#define HEARTBEAT_EXIT_RECORD_SIZE 32

#endif
