#!/usr/bin/env bash
# Installs the Debian 12 packages discd needs to build, run and test. Idempotent: does nothing
# (and needs no network) when everything is already there. Needs root (or sudo) to install.
set -euo pipefail

# build: C libraries reached through SwiftPM system-library targets (pkg-config)
BUILD_PKGS=(pkg-config libsystemd-dev libibverbs-dev librdmacm-dev)
# run and test: namespaces, veth/bridges (ip), sysctl (procps), multicast routing (smcrouted,
# smcroutectl), packet loss emulation (nft), CPU pinning (taskset: util-linux), python3 for
# tests/netns and bench/, /usr/bin/time (time) for bench/sim_bench.sh. tests/netns/netlab.py's
# env_problem() checks the tools the netns tests run.
TEST_PKGS=(iproute2 nftables smcroute procps python3 kmod util-linux time)
# guest tests (tests/guests): qemu guests running Debian's kernel (fetched by apt-get download)
# with the host's / as root over 9p, so the verbs tools and providers they run come from here:
# qemu + SeaBIOS, a static busybox for the initramfs, depmod/modprobe (kmod), rdma (iproute2),
# ibv_* (ibverbs-utils), mckey (rdmacm-utils), the rxe provider (ibverbs-providers, rdma-core),
# gcc for the test tools tests/guests/tools/*.c. tests/guests/guestbed.py's host_problem() checks
# them. make and libelf1 (objtool) build the kernel modules (kernel/) against the guest kernel's
# headers (tests/guests/kbuild.py checks make).
GUEST_PKGS=(qemu-system-x86 seabios busybox-static kmod iproute2 rdma-core ibverbs-utils rdmacm-utils
    ibverbs-providers gcc libc6-dev make libelf1)

want=("${BUILD_PKGS[@]}")
if [ "${1:-}" = "--test" ]; then want+=("${TEST_PKGS[@]}" "${GUEST_PKGS[@]}"); fi

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ! command -v swift >/dev/null 2>&1; then
    echo "install-deps: the Swift toolchain (swift) is not on PATH; install Swift 6 first (https://swift.org)" >&2
    exit 1
fi

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root to install ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
