#!/bin/sh
# PID 1 of every guest of tests/guests/guestbed.py, run by the host's /bin/sh after the initramfs
# switch_roots into the host's / (read-only 9p).  It:
#   * reads the guest's settings from $SHARED/guest.$gb_index.env (written by the host),
#   * makes `modprobe` use the unpacked Debian kernel tree ($GB_KTREE) for scenarios and for the
#     kernel's own module requests (/proc/sys/kernel/modprobe),
#   * brings up lo and eth0 (virtio_net) with $GUEST_ADDR/24,
#   * if GUEST_RXE=1: loads rdma_rxe, ib_uverbs, rdma_ucm, creates rxe0 on eth0 and exports
#     GUEST_GID_INDEX, the index of the RoCE v2 GID of $GUEST_ADDR,
#   * writes $SHARED/ready.$GUEST_INDEX (guest uptime in s), runs the scenario ($GB_SCRIPT) with
#     its output on the console and in $SHARED/scenario.$GUEST_INDEX.log, writes its exit status
#     to $SHARED/exit.$GUEST_INDEX and powers off.
# A setup failure writes $SHARED/setup_failed.$GUEST_INDEX and $SHARED/abort.guest$GUEST_INDEX
# (so the other guests' barriers give up at once) and powers off.  PID 1 must never exit.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SHARED=/run/shared
HOME=/tmp/home
export PATH SHARED HOME
I=${gb_index:-x}

log() { echo "guestbed[$I]: $*"; }

poweroff_now() {
    sync
    echo o > /proc/sysrq-trigger
    sleep 20 2>/dev/null
    /bin/busybox poweroff -f
    while :; do sleep 60; done  # unreachable in practice; PID 1 must not return
}

setup_failed() {
    log "setup failed: $*"
    echo "$*" > "$SHARED/setup_failed.$I"
    echo "guest $I setup failed: $*" > "$SHARED/abort.guest$I"
    poweroff_now
}

# wait_path PATH TRIES: poll for a path every 0.1 s, at most TRIES times.
wait_path() {
    n=0
    while [ ! -e "$1" ]; do
        n=$((n + 1))
        [ "$n" -le "$2" ] || return 1
        sleep 0.1
    done
}

[ -r "$SHARED/guest.$I.env" ] || setup_failed "no $SHARED/guest.$I.env"
. "$SHARED/guest.$I.env"
mkdir -p /dev/pts /dev/shm "$HOME"
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
hostname "guest$GUEST_INDEX"

# modprobe on the unpacked kernel tree (the host has no /lib/modules for this kernel).
mkdir -p /run/guestbed/bin
cat > /run/guestbed/bin/modprobe <<EOF
#!/bin/sh
exec /sbin/modprobe -d '$GB_KTREE' "\$@"
EOF
chmod 755 /run/guestbed/bin/modprobe
echo /run/guestbed/bin/modprobe > /proc/sys/kernel/modprobe
PATH=/run/guestbed/bin:$PATH

modprobe virtio_net || setup_failed "modprobe virtio_net"
wait_path /sys/class/net/eth0 100 || setup_failed "no eth0 after loading virtio_net"
ip link set lo up || setup_failed "ip link set lo up"
ip addr add "$GUEST_ADDR/24" dev eth0 || setup_failed "ip addr add $GUEST_ADDR/24 dev eth0"
ip link set eth0 up || setup_failed "ip link set eth0 up"
n=0
until [ "$(cat /sys/class/net/eth0/operstate)" = up ]; do
    n=$((n + 1))
    [ "$n" -le 100 ] || setup_failed "eth0 not up after 10 s"
    sleep 0.1
done

GUEST_GID_INDEX=
if [ "$GUEST_RXE" = 1 ]; then
    modprobe -a rdma_rxe ib_uverbs rdma_ucm || setup_failed "modprobe rdma_rxe ib_uverbs rdma_ucm"
    rdma link add rxe0 type rxe netdev eth0 || setup_failed "rdma link add rxe0 type rxe netdev eth0"
    # The RoCE v2 GID of our IPv4 address: ::ffff:a.b.c.d, written as the kernel shows it.
    old_ifs=$IFS; IFS=.; set -- $GUEST_ADDR; IFS=$old_ifs
    want=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' "$1" "$2" "$3" "$4")
    port=/sys/class/infiniband/rxe0/ports/1
    n=0
    while [ -z "$GUEST_GID_INDEX" ] && [ "$n" -le 100 ]; do
        for g in 0 1 2 3 4 5 6 7; do
            [ "$(cat "$port/gids/$g" 2>/dev/null)" = "$want" ] || continue
            [ "$(cat "$port/gid_attrs/types/$g" 2>/dev/null)" = "RoCE v2" ] || continue
            GUEST_GID_INDEX=$g
            break
        done
        [ -n "$GUEST_GID_INDEX" ] && break
        n=$((n + 1))
        sleep 0.1
    done
    [ -n "$GUEST_GID_INDEX" ] || setup_failed "no RoCE v2 GID $want on rxe0 after 10 s"
    state=$(cat "$port/state" 2>/dev/null)
    case "$state" in *ACTIVE*) ;; *) setup_failed "rxe0 port 1 is '$state', not ACTIVE" ;; esac
fi
export GUEST_GID_INDEX

read -r up _ < /proc/uptime
echo "$up" > "$SHARED/ready.$GUEST_INDEX"
log "ready after ${up}s (addr $GUEST_ADDR, rxe $GUEST_RXE, gid index ${GUEST_GID_INDEX:--})"

cd /tmp
# The subshell writes the status; the pipeline only copies the output to the console.
( sh "$GB_SCRIPT" < /dev/null; echo $? > "$SHARED/exit.$GUEST_INDEX" ) 2>&1 | tee "$SHARED/scenario.$GUEST_INDEX.log"
log "scenario exited $(cat "$SHARED/exit.$GUEST_INDEX" 2>/dev/null)"
poweroff_now
