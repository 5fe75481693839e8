/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What discd's two kernel modules export to each other (kernel/README.md).
 *
 * fdmod never links against heartbeat (nor heartbeat against fdmod): it looks
 * heartbeat_set_callback up with symbol_get() when heartbeat is there, so that
 * either module loads and unloads without the other.
 */
#ifndef DISCD_KAPI_H
#define DISCD_KAPI_H

#include <linux/types.h>

/*
 * heartbeat.ko: call cb for every exit of an opted-in process (the last thread
 * of its thread group), at once, in the exiting task's context with preemption
 * disabled: cb must not sleep.  pid is the thread group id in the initial PID
 * namespace, status is in waitpid(2) format.  cb NULL unregisters and returns
 * once no CPU runs the old callback any more.  Returns 0, or -EBUSY if another
 * callback is set (setting the same one again is not an error).  heartbeat
 * forgets a callback whose module goes away without unregistering it.
 */
int heartbeat_set_callback(void (*cb)(u32 pid, u16 tag, int status));

/*
 * fdmod.ko: post one immediate-only UD send (imm_data = cpu_to_be32(imm_data),
 * no payload) to the multicast group of fdmod's parameters.  Callable from any
 * context (it never sleeps).  Returns 0 once posted, -ENODEV while the device
 * is not set up, -ENOBUFS when the send queue is full, or the post's error.
 */
int heartbeat_send_multicast(int imm_data);

#endif
