#!/bin/sh
# Unloads discd's kernel modules: fdmod, then heartbeat (either order works; this one stops the
# multicasts first).  A module that is not loaded is skipped.  Exit status 0 when neither is
# loaded afterwards.
#
# An open /dev/heartbeat holds heartbeat.ko: a running discd reads it, so it is asked to let go
# first (`discd kernel detach`; `discd kernel attach` takes it again).  Opted-in processes may
# keep running: their exits are simply no longer reported.
# A running discd is asked to let go of /dev/heartbeat first (its control socket: $DISCD_CONTROL,
# default /run/discd/control.sock).
control=${DISCD_CONTROL:-/run/discd/control.sock}
if [ -d /sys/module/heartbeat ] && [ -S "$control" ] && command -v discd > /dev/null 2>&1; then
    discd kernel detach --control "$control" > /dev/null || echo "unload.sh: discd kernel detach failed" >&2
fi
rc=0
for m in fdmod heartbeat; do
    [ -d "/sys/module/$m" ] || continue
    if ! rmmod "$m"; then
        rc=1
        users=$(cat "/sys/module/$m/refcnt" 2>/dev/null)
        if [ "$m" = heartbeat ] && [ "${users:-0}" != 0 ]; then
            echo "unload.sh: /dev/heartbeat is open ($users user(s)): run 'discd kernel detach' first" >&2
        fi
    fi
done
exit $rc
