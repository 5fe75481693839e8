#!/bin/sh
# Builds heartbeat.ko and fdmod.ko out of tree: the sources are copied to OUT, so the
# repository stays clean.  Any warning fails the build (the compiler's, by -Werror in the
# Makefile, and modpost's).
#
#   kernel/build.sh [KDIR [OUT]]
#
# KDIR: a kernel build directory (default /lib/modules/$(uname -r)/build).
# OUT:  the build directory (default <repo>/.build/kernel/<KDIR's kernel release>); emptied first.
# Prints OUT/heartbeat/heartbeat.ko and OUT/fdmod/fdmod.ko on success.  MAKEFLAGS and OFA_DIR
# (kernel/Makefile) are passed through.  The guest tests build with tests/guests/kbuild.py,
# which points KDIR at the Debian headers they downloaded.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
kdir=${1:-/lib/modules/$(uname -r)/build}
[ -f "$kdir/Makefile" ] || { echo "build.sh: no kernel build directory at $kdir" >&2; exit 2; }
if [ $# -ge 2 ]; then
    out=$2
else
    # The release modules are built for (their vermagic): UTS_RELEASE, e.g. 6.1.0-56-amd64.
    rel=$(sed -n 's/^#define UTS_RELEASE "\(.*\)"$/\1/p' "$kdir/include/generated/utsrelease.h" 2>/dev/null)
    out=$here/../.build/kernel/${rel:-$(basename "$(cd "$kdir" && pwd -P)")}
fi
rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)
cp -R "$here/Makefile" "$here/include" "$here/heartbeat" "$here/fdmod" "$out/"
log=$out/build.log
if ! make -C "$kdir" M="$out" modules > "$log" 2>&1; then
    cat "$log" >&2
    echo "build.sh: make failed (log: $log)" >&2
    exit 1
fi
if grep -Eiq '(^|[^a-z])warning' "$log"; then
    cat "$log" >&2
    echo "build.sh: the build warned (log: $log)" >&2
    exit 1
fi
for m in heartbeat/heartbeat.ko fdmod/fdmod.ko; do
    [ -f "$out/$m" ] || { echo "build.sh: $out/$m was not built" >&2; exit 1; }
    echo "$out/$m"
done
