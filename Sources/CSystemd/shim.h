#ifndef DISCD_CSYSTEMD_SHIM_H
#define DISCD_CSYSTEMD_SHIM_H
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
#include <syslog.h>
#include <sys/uio.h>

/* sd_journal_send is variadic and cannot be called from Swift; sd_journal_sendv takes an iovec of
   "FIELD=value" strings and can. */
static inline int discd_journal_sendv(const struct iovec *iov, int n) { return sd_journal_sendv(iov, n); }

/* sd_notify with a plain string. */
static inline int discd_notify(const char *state) { return sd_notify(0, state); }
#endif
