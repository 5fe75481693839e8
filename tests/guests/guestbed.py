#!/usr/bin/env python3
"""qemu guest test bed: N guests running Debian's stock kernel under qemu TCG, with Soft-RoCE
(rdma_rxe) between them, so that tests can run discd's RDMA transport over real verbs.
Python 3 stdlib only.

  python3 tests/guests/guestbed.py prepare [--headers]
  python3 tests/guests/guestbed.py run NAME|--script PATH [--guests N] [--no-rxe I,J]
                                       [--timeout S] [--env K=V]... [--keep]

How a guest is made
  * Kernel: the package linux-image-amd64 currently depends on (apt-cache; `apt-get update` once
    if apt knows none), fetched with `apt-get download`, unpacked with `dpkg -x` into
    $DISCD_GUEST_CACHE/<version>/root (default /var/cache/discd-guests), `depmod -b`.  The
    bzImage's xz payload is unpacked to a vmlinux, booted through its PVH entry (faster).
  * Initramfs: a static busybox, the virtio + 9p modules (dependency order from modules.dep) and
    tests/guests/initramfs-init.sh, which mounts the host's / read-only over 9p, tmpfs on /tmp
    /run /var/tmp, the run's shared dir on /run/shared, and switch_roots into
    tests/guests/guest-init.sh (network, rxe0, then the scenario).  Guests therefore run the
    host's binaries, e.g. the discd just built.
  * Network: one virtio-net NIC per guest on qemu's socket netdev (UDP multicast on 127.0.0.1,
    a private port per run); guest i is 10.99.0.(10+i)/24 on eth0, rxe0 on top of it.

A scenario is tests/guests/scenarios/<name>.sh (or any script, run(script=PATH)), run by
/bin/sh in every guest with GUEST_INDEX GUEST_COUNT GUEST_ADDR GUEST_ADDRS GUEST_RXE
GUEST_GID_INDEX SHARED REPO DISCD_BIN and run()'s extra env; it sources tests/guests/lib.sh
(barrier, wait_for, result, fail, now_ms).  Its exit status, its output and the JSON lines it
records in $SHARED come back in the RunResult.

Guests see the host's / except /tmp, /run and /var/tmp (their own tmpfs); the repository,
DISCD_BIN and the kernel cache are bound back into place when they live there (a clone in /tmp).
Needs root (9p as root, /var/cache).
"""
import argparse
import ctypes
import fcntl
import glob
import gzip
import hashlib
import json
import lzma
import os
import random
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SCENARIOS = os.path.join(HERE, "scenarios")
INITRAMFS_INIT = os.path.join(HERE, "initramfs-init.sh")
GUEST_INIT = os.path.join(HERE, "guest-init.sh")

CACHE_ENV = "DISCD_GUEST_CACHE"
DEFAULT_CACHE = "/var/cache/discd-guests"
QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
# What the initramfs loads so that the 9p root can be mounted; their dependencies (modules.dep)
# come first.  On Debian 12 this is virtio_ring virtio virtio_pci_modern_dev
# virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
GUEST_NET = "10.99.0."          # guest i: GUEST_NET + (10 + i)
MCAST_GROUP = "230.0.0.1"       # qemu socket netdev group, on 127.0.0.1 only
MEMORY = "256M"
KERNEL_ARGS = "quiet"
# Directories guest-init mounts tmpfs on: host paths below them are invisible in the guests.
MASKED = ("/tmp", "/run", "/var/tmp")
MAX_GUESTS = 32
POLL = 0.1                      # s: host-side poll interval
KILL_GRACE = 5.0                # s: SIGTERM -> SIGKILL for qemu
OWNER_FILE = "owner.pid"        # in a run dir while its run is live


class GuestbedError(Exception):
    """Something went wrong preparing or running guests (a bug or a broken setup): a failure."""


class Unavailable(GuestbedError):
    """Guests cannot run on this host at all (not root, no qemu, kernel not downloadable):
    tests are skipped with this reason."""


# --------------------------------------------------------------------------- small helpers

def _log(msg):
    print("guestbed: %s" % msg, flush=True)


def _run(argv, timeout=300, cwd=None, check=True, what=None):
    """Run a command; return its CompletedProcess (text).  Raises GuestbedError on timeout or,
    with check, on a non-zero exit."""
    try:
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise GuestbedError("%s: timed out after %ss" % (what or " ".join(argv), timeout))
    except OSError as e:
        raise GuestbedError("%s: %s" % (what or " ".join(argv), e))
    if check and r.returncode != 0:
        raise GuestbedError("%s: exit %d: %s" % (what or " ".join(argv), r.returncode,
                                                 (r.stderr or r.stdout).strip()[-800:]))
    return r


def _is_static_elf(path):
    """True if path is an ELF executable without a PT_INTERP program header (statically linked)."""
    try:
        with open(path, "rb") as f:
            hdr = f.read(64)
            if hdr[:4] != b"\x7fELF" or hdr[4] != 2:  # 64-bit only
                return False
            phoff = int.from_bytes(hdr[32:40], "little")
            phentsize = int.from_bytes(hdr[54:56], "little")
            phnum = int.from_bytes(hdr[56:58], "little")
            f.seek(phoff)
            ph = f.read(phentsize * phnum)
    except OSError:
        return False
    for i in range(phnum):
        if int.from_bytes(ph[i * phentsize:i * phentsize + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def _masked(path):
    """The tmpfs-masked directory path lies under in the guests, or None."""
    real = os.path.realpath(path)
    for m in MASKED:
        if real == m or real.startswith(m + "/"):
            return m
    return None


def host_problem():
    """None if this host has what guests need, else the reason (an Unavailable condition)."""
    if os.geteuid() != 0:
        return "not root (euid %d): the guests' 9p shares and the kernel cache need root" % os.geteuid()
    missing = []
    for tool, pkg in ((QEMU, "qemu-system-x86"), ("depmod", "kmod"), ("dpkg", "dpkg"),
                      ("apt-get", "apt"), ("apt-cache", "apt")):
        if not shutil.which(tool):
            missing.append("%s (%s)" % (tool, pkg))
    if not _is_static_elf(BUSYBOX):
        missing.append("a static %s (busybox-static)" % BUSYBOX)
    for tool, pkg in (("ip", "iproute2"), ("rdma", "iproute2"), ("ibv_devices", "ibverbs-utils"),
                      ("mckey", "rdmacm-utils"), ("stdbuf", "coreutils")):
        if not shutil.which(tool):
            missing.append("%s (%s)" % (tool, pkg))
    if not os.path.exists("/etc/libibverbs.d/rxe.driver"):
        missing.append("the rxe verbs provider (ibverbs-providers)")
    if missing:
        return "missing %s; run scripts/install-deps.sh --test" % ", ".join(missing)
    return None


# --------------------------------------------------------------------------- prepare

class Kernel:
    """A prepared guest kernel: version, unpacked tree, vmlinux, initramfs."""

    def __init__(self, version, base):
        self.version = version
        self.base = base                                   # <cache>/<version>
        self.tree = os.path.join(base, "root")             # dpkg -x of the packages
        self.vmlinux = os.path.join(base, "vmlinux")
        self.initramfs = None                              # set by prepare()

    @property
    def headers(self):
        """The kbuild directory of prepare(headers=True) (make -C it to build modules), or None.
        Its lib/modules/<version>/build symlink points at the host's /usr/src: do not use it."""
        d = os.path.join(self.tree, "usr", "src", "linux-headers-%s" % self.version)
        return d if os.path.isdir(d) else None

    def __repr__(self):
        return "Kernel(%s, %s)" % (self.version, self.base)


def cache_root():
    return os.path.abspath(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _apt_depends(pkg):
    """The packages pkg directly depends on, per apt-cache ([] if apt knows no pkg)."""
    r = _run(["apt-cache", "depends", pkg], timeout=60, check=False)
    return re.findall(r"^\s*Depends:\s*(\S+)", r.stdout, re.M) if r.returncode == 0 else []


def kernel_version(update=True):
    """The version (e.g. 6.1.0-56-amd64) of the kernel package linux-image-amd64 depends on.
    Runs `apt-get update` once if apt knows no candidate and update is true; falls back to the
    newest version already in the cache; raises Unavailable otherwise."""
    for attempt in (0, 1):
        for dep in _apt_depends("linux-image-amd64"):
            m = re.match(r"linux-image-(\d\S*-amd64)$", dep)
            if m:
                return m.group(1)
        if attempt == 0 and update:
            _log("apt knows no linux-image-amd64: running apt-get update")
            r = _run(["apt-get", "update", "-qq"], timeout=600, check=False)
            if r.returncode != 0:
                _log("apt-get update failed: %s" % (r.stderr or r.stdout).strip()[-300:])
                break
    cached = sorted(d for d in os.listdir(cache_root())
                    if os.path.exists(os.path.join(cache_root(), d, ".image-ok"))) \
        if os.path.isdir(cache_root()) else []
    if cached:
        _log("apt cannot resolve linux-image-amd64; using the cached kernel %s" % cached[-1])
        return cached[-1]
    raise Unavailable("cannot resolve the kernel package: `apt-cache depends linux-image-amd64` "
                      "names no linux-image-<version>-amd64 (even after apt-get update)")


def _download_unpack(pkgs, base, tree):
    """apt-get download pkgs into base/debs and dpkg -x them into tree."""
    debs = os.path.join(base, "debs")
    os.makedirs(debs, exist_ok=True)
    _log("downloading %s" % " ".join(pkgs))
    r = _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root"] + list(pkgs),
             cwd=debs, timeout=900, check=False)
    if r.returncode != 0:
        raise Unavailable("apt-get download %s failed: %s" % (" ".join(pkgs),
                                                              (r.stderr or r.stdout).strip()[-500:]))
    for pkg in pkgs:
        found = sorted(glob.glob(os.path.join(debs, pkg + "_*.deb")), key=os.path.getmtime)
        if not found:
            raise GuestbedError("apt-get download %s left no %s_*.deb in %s" % (pkg, pkg, debs))
        _log("unpacking %s" % os.path.basename(found[-1]))
        _run(["dpkg", "-x", found[-1], tree], timeout=600)
    for deb in glob.glob(os.path.join(debs, "*.deb")):
        os.unlink(deb)  # the unpacked tree is the cache


def extract_vmlinux(bzimage, out):
    """Write the ELF vmlinux inside a bzImage whose payload is xz-compressed to out."""
    with open(bzimage, "rb") as f:
        data = f.read()
    magic = b"\xfd7zXZ\x00"
    pos = data.find(magic)
    tries = 0
    while pos >= 0 and tries < 16:
        tries += 1
        try:
            d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            elf = d.decompress(data[pos:])  # stops at the stream's end: trailing bytes are ignored
            if elf[:4] == b"\x7fELF":
                tmp = out + ".tmp"
                with open(tmp, "wb") as f:
                    f.write(elf)
                os.replace(tmp, out)
                return
        except lzma.LZMAError:
            pass
        pos = data.find(magic, pos + 1)
    raise GuestbedError("no xz-compressed ELF kernel found in %s" % bzimage)


def _module_order(tree, version, wanted):
    """Paths (relative to lib/modules/<version>) of wanted modules and their dependencies,
    dependencies first, from modules.dep."""
    mdir = os.path.join(tree, "lib", "modules", version)
    deps, by_name = {}, {}
    with open(os.path.join(mdir, "modules.dep")) as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
            by_name[re.sub(r"\.ko(\.\w+)?$", "", os.path.basename(path)).replace("-", "_")] = path
    order, seen = [], set()

    def visit(path, depth):
        if path in seen:
            return
        if depth > 64:
            raise GuestbedError("module dependency loop at %s" % path)
        seen.add(path)
        for d in deps.get(path, []):
            visit(d, depth + 1)
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise GuestbedError("module %s not in %s/modules.dep (built in? renamed?)" % (name, mdir))
        visit(by_name[name], 0)
    return order


def _read_module(path):
    """A module's bytes, decompressed if it is .ko.xz or .ko.gz (busybox insmod takes plain .ko)."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        raise GuestbedError("%s is zstd-compressed: python's stdlib cannot unpack it" % path)
    return data


def _cpio_newc(entries):
    """A cpio archive (newc) of entries: (name, mode, data bytes, rdev major, rdev minor)."""
    out = bytearray()

    def pad():
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, rmaj, rmin) in enumerate(list(entries) + [("TRAILER!!!", 0, b"", 0, 0)], 1):
        bname = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(bname), 0)
        out.extend(b"070701" + "".join("%08X" % v for v in fields).encode())
        out.extend(bname)
        pad()
        out.extend(data)
        pad()
    return bytes(out)


def build_initramfs(kernel):
    """The initramfs for kernel (cached by content: busybox, modules, init script)."""
    mdir = os.path.join(kernel.tree, "lib", "modules", kernel.version)
    mods = _module_order(kernel.tree, kernel.version, INITRAMFS_MODULES)
    files = [(os.path.basename(re.sub(r"\.(xz|gz|zst)$", "", p))[:-3], _read_module(os.path.join(mdir, p)))
             for p in mods]
    with open(INITRAMFS_INIT, "rb") as f:
        init = f.read()
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    h = hashlib.sha256(init + busybox)
    for name, data in files:
        h.update(name.encode() + data)
    path = os.path.join(kernel.base, "initramfs-%s.cpio.gz" % h.hexdigest()[:16])
    if os.path.exists(path):
        return path
    d, f_, x = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFREG | 0o755
    entries = [(n, d, b"", 0, 0) for n in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules")]
    entries += [("dev/console", stat.S_IFCHR | 0o600, b"", 5, 1),
                ("bin/busybox", x, busybox, 0, 0), ("init", x, init, 0, 0),
                ("modules.list", f_, ("\n".join(n for n, _ in files) + "\n").encode(), 0, 0)]
    entries += [("lib/modules/%s.ko" % n, f_, data, 0, 0) for n, data in files]
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(gzip.compress(_cpio_newc(entries), compresslevel=6, mtime=0))
    os.replace(tmp, path)
    _log("built %s (modules: %s)" % (path, " ".join(n for n, _ in files)))
    for old in glob.glob(os.path.join(kernel.base, "initramfs-*.cpio.gz")):
        if old != path:
            os.unlink(old)
    return path


def prepare(headers=False, update=True):
    """Make sure a guest kernel is ready; return its Kernel.  Idempotent and cached per kernel
    version under $DISCD_GUEST_CACHE (default /var/cache/discd-guests): downloads (and says so)
    only what is missing.  headers=True also fetches linux-headers-<ver>-amd64, its -common
    package and linux-kbuild-* into the same tree (for building out-of-tree modules).
    Raises Unavailable when guests cannot run here, GuestbedError on other problems."""
    problem = host_problem()
    if problem:
        raise Unavailable(problem)
    root = cache_root()
    if _masked(root):
        raise GuestbedError("%s=%s is under %s, which guests mask with a tmpfs" % (CACHE_ENV, root, _masked(root)))
    version = kernel_version(update=update)
    kernel = Kernel(version, os.path.join(root, version))
    os.makedirs(kernel.base, exist_ok=True)
    with open(os.path.join(root, ".%s.lock" % version), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent prepare()s of one version wait for each other
        if not os.path.exists(os.path.join(kernel.base, ".image-ok")):
            shutil.rmtree(kernel.tree, ignore_errors=True)
            _download_unpack(["linux-image-%s" % version], kernel.base, kernel.tree)
            _log("depmod -b %s %s" % (kernel.tree, version))
            _run(["depmod", "-b", kernel.tree, version], timeout=300)
            open(os.path.join(kernel.base, ".image-ok"), "w").close()
        if not os.path.exists(kernel.vmlinux):
            bz = os.path.join(kernel.tree, "boot", "vmlinuz-%s" % version)
            _log("extracting %s from %s" % (kernel.vmlinux, bz))
            extract_vmlinux(bz, kernel.vmlinux)
        if headers and not os.path.exists(os.path.join(kernel.base, ".headers-ok")):
            hdr = "linux-headers-%s" % version
            deps = [p for p in _apt_depends(hdr) if re.match(r"linux-(headers|kbuild)-", p)]
            if not deps:
                raise Unavailable("apt-cache depends %s names no linux-headers-*/linux-kbuild-* package" % hdr)
            _download_unpack([hdr] + deps, kernel.base, kernel.tree)
            open(os.path.join(kernel.base, ".headers-ok"), "w").close()
        kernel.initramfs = build_initramfs(kernel)
    return kernel


# --------------------------------------------------------------------------- run

_bin_path_cache = {}


def discd_bin():
    """$DISCD_BIN if set, else `swift build --show-bin-path` in the repository (prints the path,
    does not build).  That can wait for SwiftPM's lock while another build runs: after 60 s (or
    if swift fails) <repo>/.build/debug is used if it exists, with a note; else "" (scenarios
    that need discd then fail with a message of their own)."""
    env = os.environ.get("DISCD_BIN")
    if env:
        return os.path.abspath(env)
    if "v" not in _bin_path_cache:
        v, why = "", None
        try:
            r = subprocess.run(["swift", "build", "--show-bin-path"], cwd=REPO, capture_output=True,
                               text=True, timeout=60, stdin=subprocess.DEVNULL)
            lines = r.stdout.strip().splitlines()
            if r.returncode == 0 and lines:
                v = lines[-1].strip()
            else:
                why = "exit %d" % r.returncode
        except (OSError, subprocess.TimeoutExpired) as e:
            why = str(e)
        if not v:
            fallback = os.path.join(REPO, ".build", "debug")
            if os.path.isdir(fallback):
                v = os.path.realpath(fallback)
            _log("`swift build --show-bin-path` failed (%s): DISCD_BIN=%s" % (why, v or "(none)"))
        _bin_path_cache["v"] = v
    return _bin_path_cache["v"]


def free_mcast_port(tries=50):
    """A random UDP port in 20000-60000 nobody has bound (qemu binds group:port with
    SO_REUSEADDR, so a port in use by another run makes our non-reusing bind fail)."""
    for _ in range(tries):
        port = random.randint(20000, 60000)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("0.0.0.0", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise GuestbedError("no free UDP port in 20000-60000 after %d tries" % tries)


def _pdeathsig():
    """preexec_fn: qemu gets SIGKILL if this process dies without cleaning up."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class GuestResult:
    """What one guest did.  exit_code is the scenario's exit status, None if it never finished
    (setup failed, qemu died or was killed at the time limit; see error)."""

    def __init__(self, index, addr, rxe):
        self.index = index
        self.addr = addr
        self.rxe = rxe
        self.exit_code = None
        self.results = []        # dicts from $SHARED/results.<i>.jsonl
        self.bad_lines = []      # lines of that file that were not JSON objects
        self.ready_s = None      # host-observed: qemu start -> ready.<i> appeared
        self.guest_ready_s = None  # guest uptime when it became ready
        self.wall_s = None       # qemu start -> qemu exit (or kill)
        self.qemu_rc = None
        self.timed_out = False
        self.error = None        # why exit_code is None, or a setup failure
        self.console = None      # console log path (gone after cleanup unless kept)
        self.scenario_log = None
        self.qemu_log = None
        self.console_tail = ""   # last lines, read before cleanup
        self.scenario_tail = ""

    @property
    def ok(self):
        return self.exit_code == 0

    def values(self, key):
        """Every value recorded under key, in order."""
        return [r.get("value") for r in self.results if r.get("key") == key]

    def value(self, key, default=None):
        """The last value recorded under key (default if none)."""
        v = self.values(key)
        return v[-1] if v else default

    def status_line(self):
        ready = "%.1fs" % self.ready_s if self.ready_s is not None else "-"
        gready = " (guest uptime %.1fs)" % self.guest_ready_s if self.guest_ready_s is not None else ""
        st = "exit %s" % self.exit_code if self.exit_code is not None else "NO EXIT"
        return "guest %d %s rxe=%d: %s, ready %s%s, wall %.1fs, %d result(s)%s" % (
            self.index, self.addr, int(self.rxe), st, ready, gready, self.wall_s or 0.0,
            len(self.results), (" - " + self.error) if self.error else "")


class RunResult:
    """The outcome of run(): one GuestResult per guest, the run's wall time and directory."""

    def __init__(self, name, run_dir, guests):
        self.name = name
        self.run_dir = run_dir
        self.guests = guests
        self.wall_s = None
        self.kept = False
        self.kernel = None

    @property
    def ok(self):
        return all(g.ok for g in self.guests)

    def __getitem__(self, i):
        return self.guests[i]

    def report(self, tails=True):
        """Human-readable lines: per guest status, timings, logs; log tails of failed guests."""
        lines = ["%s: %d guest(s), wall %.1fs, kernel %s" % (
            self.name, len(self.guests), self.wall_s or 0.0, self.kernel.version if self.kernel else "?")]
        for g in self.guests:
            lines.append("  " + g.status_line())
        lines.append("  run dir %s (%s)" % (self.run_dir, "kept" if self.kept else "removed"))
        if tails:
            for g in self.guests:
                if g.ok:
                    continue
                for label, text in (("scenario output", g.scenario_tail), ("console", g.console_tail)):
                    if text.strip():
                        lines.append("  --- guest %d %s (tail)" % (g.index, label))
                        lines.extend("  | " + ln for ln in text.rstrip().splitlines())
        return lines


_ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")


def _tail(path, n=25):
    """The last n lines of a log, without terminal escapes (SeaBIOS clears the screen)."""
    try:
        with open(path, errors="replace") as f:
            return "".join(_ANSI.sub("", line) for line in f.readlines()[-n:])
    except OSError:
        return ""


def cleanup_stale(base="/var/tmp"):
    """Remove base/guestbed-* run dirs whose owning process died without cleaning up (SIGKILL;
    its qemus died with it through PR_SET_PDEATHSIG).  Returns how many were removed."""
    n = 0
    for d in glob.glob(os.path.join(base, "guestbed-*"))[:1000]:
        try:
            with open(os.path.join(d, OWNER_FILE)) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue  # kept on purpose, or not ours
        if not os.path.exists("/proc/%d" % pid):
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n


def _scenario_path(scenario, script):
    if (scenario is None) == (script is None):
        raise GuestbedError("give exactly one of scenario (a name) and script (a path)")
    if script is not None:
        path = os.path.abspath(script)
    else:
        if not re.match(r"^[A-Za-z0-9_.-]+$", scenario):
            raise GuestbedError("bad scenario name %r" % scenario)
        path = os.path.join(SCENARIOS, scenario + ".sh")
    if not os.path.isfile(path):
        raise GuestbedError("no such scenario: %s" % path)
    return path


def _write_env(path, env):
    with open(path, "w") as f:
        for k, v in env.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise GuestbedError("bad environment variable name %r" % k)
            f.write("export %s=%s\n" % (k, shlex.quote(str(v))))


def _qemu_argv(kernel, i, run_dir, shared, port, memory, kernel_args):
    return [
        QEMU, "-accel", "tcg,tb-size=64", "-cpu", "max", "-smp", "1", "-m", memory,
        "-nodefaults", "-nographic", "-no-reboot", "-monitor", "none",
        "-serial", "file:%s" % os.path.join(run_dir, "console.%d.log" % i),
        "-kernel", kernel.vmlinux, "-initrd", kernel.initramfs,
        "-append", "console=ttyS0 %s panic=-1 gb_index=%d gb_init=%s" % (kernel_args, i, GUEST_INIT),
        "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=root,mount_tag=hostroot",
        "-fsdev", "local,id=shared,path=%s,security_model=none" % shared,
        "-device", "virtio-9p-pci,fsdev=shared,mount_tag=shared",
        "-netdev", "socket,id=n0,mcast=%s:%d,localaddr=127.0.0.1" % (MCAST_GROUP, port),
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:99:00:%02x,romfile=" % (10 + i),
    ]


def _stop(proc):
    """SIGTERM, then SIGKILL after KILL_GRACE; always reaps."""
    if proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass


def run(scenario=None, guests=2, rxe=None, timeout=180, env=None, out_dir=None, keep=False,
        script=None, memory=MEMORY, kernel=None, kernel_args=KERNEL_ARGS, verbose=False):
    """Boot `guests` guests in parallel, run the scenario in each, and return a RunResult.

    scenario: a name in tests/guests/scenarios/ (without .sh); script: any script path instead.
    rxe: one bool per guest (default all True): whether the guest gets rxe0.
    timeout: seconds from the first qemu start; guests still running then are killed.
    env: extra environment for the scenario.  out_dir: directory for this run's files (created;
    kept, as the caller owns it); else a /var/tmp/guestbed-* dir removed unless keep=True.
    kernel: a Kernel from prepare() (default: prepare() now); kernel_args: its command line
    (besides console, panic and the guestbed parameters), e.g. "loglevel=7" to debug a boot.
    qemu processes are always stopped and reaped, whatever happens (exceptions, ^C); scripts
    should call install_signal_handlers() so that SIGTERM/SIGHUP do the same."""
    path = _scenario_path(scenario, script)
    name = scenario or os.path.basename(path)
    if not 1 <= guests <= MAX_GUESTS:
        raise GuestbedError("guests must be 1..%d" % MAX_GUESTS)
    rxe = [True] * guests if rxe is None else [bool(x) for x in rxe]
    if len(rxe) != guests:
        raise GuestbedError("rxe has %d entries for %d guests" % (len(rxe), guests))
    kernel = kernel or prepare()
    bindir = discd_bin()
    # Host paths under a directory the guests mask with a tmpfs (a clone in /tmp, say) are bound
    # back into place by the initramfs (gb_keep); the others are seen through the 9p root as is.
    bind_back = []
    for p in sorted({os.path.realpath(x) for x in (REPO, bindir, kernel.base) if x and _masked(x)}):
        if any(p == k or p.startswith(k + "/") for k in bind_back):
            continue
        if not re.match(r"^/[A-Za-z0-9_.+/-]+$", p):
            raise GuestbedError("%s is under %s (masked in guests) and has characters gb_keep cannot carry" % (
                p, _masked(p)))
        bind_back.append(p)
    if bind_back:
        kernel_args = "%s gb_keep=%s" % (kernel_args, ",".join(bind_back))

    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        run_dir = tempfile.mkdtemp(prefix="run-", dir=out_dir)
        keep = True
    else:
        run_dir = tempfile.mkdtemp(prefix="guestbed-", dir="/var/tmp")
    shared = os.path.join(run_dir, "shared")
    os.makedirs(shared)
    owner = os.path.join(run_dir, OWNER_FILE)
    with open(owner, "w") as f:
        f.write("%d\n" % os.getpid())
    addrs = ["%s%d" % (GUEST_NET, 10 + i) for i in range(guests)]
    res = RunResult(name, run_dir, [GuestResult(i, addrs[i], rxe[i]) for i in range(guests)])
    res.kernel = kernel
    procs = {}
    logs = []
    try:
        shutil.copy(path, os.path.join(shared, "scenario.sh"))
        for i in range(guests):
            genv = {"GUEST_INDEX": i, "GUEST_COUNT": guests, "GUEST_ADDR": addrs[i],
                    "GUEST_ADDRS": " ".join(addrs), "GUEST_RXE": int(rxe[i]), "REPO": REPO,
                    "DISCD_BIN": bindir, "GB_KTREE": kernel.tree, "GB_SCRIPT": "/run/shared/scenario.sh"}
            genv.update(env or {})
            _write_env(os.path.join(shared, "guest.%d.env" % i), genv)
        port = free_mcast_port()
        if verbose:
            _log("run dir %s, multicast port %d" % (run_dir, port))
        t0 = time.monotonic()
        starts = {}
        for i in range(guests):
            g = res.guests[i]
            g.console = os.path.join(run_dir, "console.%d.log" % i)
            g.qemu_log = os.path.join(run_dir, "qemu.%d.log" % i)
            g.scenario_log = os.path.join(shared, "scenario.%d.log" % i)
            log = open(g.qemu_log, "w")
            logs.append(log)
            starts[i] = time.monotonic()
            procs[i] = subprocess.Popen(_qemu_argv(kernel, i, run_dir, shared, port, memory, kernel_args),
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        preexec_fn=_pdeathsig, start_new_session=True)
        deadline = t0 + timeout
        aborted = False
        for _ in range(int(timeout / POLL) + 100):  # bounded; the deadline normally ends it first
            now = time.monotonic()
            running = 0
            for i, p in procs.items():
                g = res.guests[i]
                if g.ready_s is None and os.path.exists(os.path.join(shared, "ready.%d" % i)):
                    g.ready_s = now - starts[i]
                if g.wall_s is None:
                    if p.poll() is None:
                        running += 1
                    else:
                        g.wall_s, g.qemu_rc = now - starts[i], p.returncode
                        if not aborted and not os.path.exists(os.path.join(shared, "exit.%d" % i)):
                            # tell the others' barriers to give up instead of waiting it out
                            aborted = True
                            with open(os.path.join(shared, "abort.host"), "w") as f:
                                f.write("guest %d stopped without finishing its scenario\n" % i)
            if not running or now >= deadline:
                break
            time.sleep(POLL)
        for i, p in procs.items():
            g = res.guests[i]
            if p.poll() is None:
                g.timed_out = True
                _stop(p)
                g.wall_s, g.qemu_rc = time.monotonic() - starts[i], p.returncode
        res.wall_s = time.monotonic() - t0
        _collect(res, shared)
    finally:
        for p in procs.values():
            try:
                _stop(p)
            except Exception as e:  # noqa: keep stopping the others
                _log("stopping qemu %d failed: %s" % (p.pid, e))
        for log in logs:
            log.close()
        for g in res.guests:
            g.console_tail = _tail(g.console) if g.console else ""
            g.scenario_tail = _tail(g.scenario_log) if g.scenario_log else ""
        res.kept = keep
        if keep:
            os.unlink(owner)  # a kept dir is no longer a stale candidate
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return res


def _collect(res, shared):
    """Fill in exit codes, results and errors from the shared dir after the guests stopped."""
    for g in res.guests:
        i = g.index
        try:
            with open(os.path.join(shared, "ready.%d" % i)) as f:
                g.guest_ready_s = float(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
        try:
            with open(os.path.join(shared, "exit.%d" % i)) as f:
                g.exit_code = int(f.read().strip())
        except (OSError, ValueError):
            pass
        try:
            with open(os.path.join(shared, "results.%d.jsonl" % i), errors="replace") as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                        if not isinstance(obj, dict):
                            raise ValueError("not an object")
                        g.results.append(obj)
                    except ValueError:
                        g.bad_lines.append(line.rstrip("\n"))
        except OSError:
            pass
        why = []
        try:
            with open(os.path.join(shared, "setup_failed.%d" % i)) as f:
                why.append("setup failed: " + f.read().strip())
        except OSError:
            pass
        if g.timed_out:
            why.append("killed at the time limit")
        elif g.exit_code is None and g.ready_s is None:
            why.append("never became ready (qemu rc %s; see the console log)" % g.qemu_rc)
        elif g.exit_code is None:
            why.append("scenario did not finish (qemu rc %s)" % g.qemu_rc)
        if g.bad_lines:
            why.append("%d result line(s) not JSON objects" % len(g.bad_lines))
        g.error = "; ".join(why) or None


# --------------------------------------------------------------------------- CLI

class Terminated(BaseException):
    """Raised from SIGTERM/SIGHUP (install_signal_handlers) so that run()'s cleanup runs."""

    def __init__(self, signum):
        super().__init__("signal %d" % signum)
        self.signum = signum


def _on_signal(signum, frame):
    raise Terminated(signum)


def install_signal_handlers():
    """SIGTERM/SIGHUP raise Terminated and SIGINT KeyboardInterrupt (even where the caller's
    shell ignored SIGINT), so that run() stops its guests before the process exits."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="download/unpack the guest kernel, build the initramfs")
    p.add_argument("--headers", action="store_true", help="also fetch the kernel headers and kbuild")
    r = sub.add_parser("run", help="boot guests and run a scenario in each")
    r.add_argument("name", nargs="?", help="scenario name (tests/guests/scenarios/NAME.sh)")
    r.add_argument("--script", help="run this script instead of a named scenario")
    r.add_argument("--guests", type=int, default=2)
    r.add_argument("--no-rxe", default="", help="comma-separated guest indexes without rxe0")
    r.add_argument("--timeout", type=float, default=180.0)
    r.add_argument("--env", action="append", default=[], metavar="K=V", help="extra scenario env (repeatable)")
    r.add_argument("--memory", default=MEMORY)
    r.add_argument("--kernel-args", default=KERNEL_ARGS, help="kernel command line extras (default %(default)s)")
    r.add_argument("--keep", action="store_true", help="keep the run dir (console logs, shared dir)")
    a = ap.parse_args(argv)
    install_signal_handlers()
    removed = cleanup_stale()
    if removed:
        _log("removed %d stale run dir(s) of killed runs" % removed)
    try:
        if a.cmd == "prepare":
            k = prepare(headers=a.headers)
            print("kernel %s\n  tree      %s\n  vmlinux   %s\n  initramfs %s" % (k.version, k.tree, k.vmlinux, k.initramfs))
            return 0
        if (a.name is None) == (a.script is None):
            ap.error("give a scenario NAME or --script PATH")
        no_rxe = {int(x) for x in a.no_rxe.split(",") if x.strip()}
        env = dict(kv.split("=", 1) for kv in a.env)
        res = run(a.name, script=a.script, guests=a.guests, rxe=[i not in no_rxe for i in range(a.guests)],
                  timeout=a.timeout, env=env, keep=a.keep,
                  kernel_args=a.kernel_args, verbose=True)
        for line in res.report():
            print(line)
        for g in res.guests:
            for rr in g.results:
                print("  guest %d result %s = %s" % (g.index, rr.get("key"), json.dumps(rr.get("value"))))
        return 0 if res.ok else 1
    except GuestbedError as e:
        print("guestbed: %s%s" % ("unavailable: " if isinstance(e, Unavailable) else "", e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("guestbed: interrupted; guests stopped", file=sys.stderr)
        return 130
    except Terminated as e:
        print("guestbed: %s; guests stopped" % e, file=sys.stderr)
        return 128 + e.signum


if __name__ == "__main__":
    sys.exit(main())
