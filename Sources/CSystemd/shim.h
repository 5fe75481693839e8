#ifndef DISCD_CSYSTEMD_SHIM_H
#define DISCD_CSYSTEMD_SHIM_H
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
#include <syslog.h>

/* sd_journal_send is variadic and cannot be called from Swift; this wrapper can. */
static inline int discd_journal_print(int priority, const char *message, const char *identifier) {
    return sd_journal_send("MESSAGE=%s", message, "PRIORITY=%i", priority,
                           "SYSLOG_IDENTIFIER=%s", identifier, NULL);
}

/* sd_notify with a plain string. */
static inline int discd_notify(const char *state) { return sd_notify(0, state); }
#endif
