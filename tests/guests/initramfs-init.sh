#!/bin/busybox sh
# /init of the guest initramfs (tests/guests/guestbed.py packs it with a static busybox and the
# modules the 9p root needs).  Debian's kernel builds virtio and 9p as modules, so this script:
#   1. insmods /lib/modules/*.ko in the order listed in /modules.list (dependencies first),
#   2. mounts the host's / (9p tag "hostroot", read-only) on /newroot,
#   3. mounts tmpfs over the few places guests must write (/tmp /run /var/tmp),
#   4. mounts the run's writable share (9p tag "shared") on /newroot/run/shared, and binds back
#      the host paths under those tmpfs the run needs (gb_keep),
#   5. moves /dev /proc /sys and switch_roots into $gb_init (tests/guests/guest-init.sh) run by
#      the host's /bin/sh.
# gb_index and gb_init come from the kernel command line (unknown key=value parameters reach
# /init as environment variables).  Any failure prints a line starting with "guestbed initramfs:"
# on the console and powers the guest off; the host sees a guest that never became ready.
export PATH=/bin
/bin/busybox mkdir -p /bin /dev /proc /sys /newroot
/bin/busybox --install -s /bin

die() {
    echo "guestbed initramfs: $*"
    echo o > /proc/sysrq-trigger
    sleep 30
    poweroff -f
}

mount -t devtmpfs devtmpfs /dev || die "cannot mount devtmpfs"
mount -t proc proc /proc || die "cannot mount proc"
mount -t sysfs sysfs /sys || die "cannot mount sysfs"
[ -n "${gb_init:-}" ] && [ -n "${gb_index:-}" ] || die "gb_init / gb_index missing from the kernel command line"

for m in $(cat /modules.list); do
    insmod "/lib/modules/$m.ko" || die "insmod $m failed"
done

# The 9p transport binds to the virtio devices while virtio_pci probes; retry briefly (bounded).
opts=trans=virtio,version=9p2000.L,msize=262144
tries=0
until mount -t 9p -o "$opts,ro,cache=loose" hostroot /newroot; do
    tries=$((tries + 1))
    [ "$tries" -lt 50 ] || die "cannot mount the host root (9p tag hostroot)"
    sleep 0.1
done
# Host paths the run needs that lie under the directories masked below (a repository cloned in
# /tmp, say; gb_keep=PATH,PATH from guestbed.py): held by a bind mount here, put back after.
keep=$(echo "${gb_keep:-}" | tr ',' ' ')
n=0
for p in $keep; do
    mkdir -p "/keep/$n" && mount --bind "/newroot$p" "/keep/$n" || die "cannot hold $p"
    n=$((n + 1))
done
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp || die "tmpfs /tmp"
mount -t tmpfs -o mode=0755 tmpfs /newroot/run || die "tmpfs /run"
mount -t tmpfs -o mode=1777 tmpfs /newroot/var/tmp || die "tmpfs /var/tmp"
n=0
for p in $keep; do
    mkdir -p "/newroot$p" && mount --bind "/keep/$n" "/newroot$p" || die "cannot bind $p back"
    n=$((n + 1))
done
mkdir -p /newroot/run/shared
# cache=none (the default, spelled out): every guest must see the others' files at once (barriers).
mount -t 9p -o "$opts,cache=none" shared /newroot/run/shared || die "cannot mount the shared dir (9p tag shared)"

mount --move /dev /newroot/dev || die "move /dev"
mount --move /proc /newroot/proc || die "move /proc"
mount --move /sys /newroot/sys || die "move /sys"
exec switch_root /newroot /bin/sh "$gb_init"
die "switch_root failed"
