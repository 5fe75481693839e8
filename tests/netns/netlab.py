"""Reusable Linux network-namespace topology for discd's real-network tests.

Everything a Lab makes lives in namespaces named ``<prefix>-<name>`` where the
prefix is ``dd`` + 4 random hex digits (one prefix per Lab), so parallel or stale
runs never clash.  Nothing is created in the root namespace except through
``ip`` (veths are created inside the node namespace and their peer moved into the
LAN's bridge namespace in the same netlink call).

Topology per LAN: one namespace holding bridge ``br0`` (multicast_snooping 0,
stp 0, IPv6 disabled so it emits nothing); each node namespace gets a veth (by
default ``e0``) whose peer is a port of that bridge.  Addresses are
10.X.Y.i/24 and fd00:X:Y::i/64 (i written in hex for IPv6, so ::10 is host 16).

Python 3 stdlib only.  Used by tests/netns/run.py and bench/discovery_bench.py.
"""

import atexit
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MCAST_TOOL = os.path.join(HERE, "mcast.py")

GROUP4 = "239.192.77.77"
GROUP6 = "ff05::d15c:77"
PORT = 7777

NS_RE = re.compile(r"^dd[0-9a-f]{4}-")

_live_labs = []


class LabError(Exception):
    pass


class Skip(Exception):
    """Raised by a test (or Lab) when it cannot run here; the reason is printed."""


# --------------------------------------------------------------------------- helpers

def sh(argv, check=True, timeout=20, input=None):
    """Run a command (list), return CompletedProcess with text output."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired:
        raise LabError("timed out after %ss: %s" % (timeout, " ".join(argv)))
    if check and r.returncode != 0:
        raise LabError("%s -> rc=%d: %s" % (" ".join(argv), r.returncode, (r.stderr or r.stdout).strip()))
    return r


def wait_until(pred, timeout, interval=0.05):
    """Poll pred() until it returns a truthy value or timeout seconds pass.

    Returns (value, elapsed_seconds); value is the last pred() result (falsy on timeout).
    """
    t0 = time.monotonic()
    while True:
        v = pred()
        el = time.monotonic() - t0
        if v or el >= timeout:
            return v, el
        time.sleep(min(interval, max(0.0, timeout - el)))


def env_problem():
    """None if namespaces and every tool the tests run can be used here, else a reason string.

    Every external program the netns tests run is checked (scripts/install-deps.sh --test installs
    them); a missing one makes the environment unusable, and run.py then reports every test as
    skipped and exits non-zero (docs/TESTING.md)."""
    required = (("ip", "iproute2"), ("sysctl", "procps"), ("nft", "nftables"), ("smcrouted", "smcroute"),
                ("smcroutectl", "smcroute"), ("taskset", "util-linux"))
    if os.geteuid() != 0:
        return "not root (euid %d)" % os.geteuid()
    missing = ["%s (%s)" % (tool, pkg) for tool, pkg in required if not shutil.which(tool)]
    if missing:
        return "missing %s; run scripts/install-deps.sh --test" % ", ".join(missing)
    name = "dd%04x-probe" % random.getrandbits(16)
    try:
        r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            return "'ip netns add' failed: " + r.stderr.strip()
        r = subprocess.run(["ip", "-n", name, "link", "add", "b0", "type", "bridge"],
                           capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            return "cannot create a bridge in a namespace: " + r.stderr.strip()
    except Exception as e:  # noqa
        return "ip netns unusable: %s" % e
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return None


def find_bindir():
    """Directory holding the discd and showmap under test: $DISCD_BIN if set, else the output of
    `swift build --show-bin-path` (the debug build `swift build --build-tests` just made) run in
    the repository.  Never guesses among .build/release and .build/debug.  None if neither works
    (discd_problem(None) then says why)."""
    find_bindir.error = None
    env = os.environ.get("DISCD_BIN")
    if env:
        return os.path.abspath(env)
    try:
        r = subprocess.run(["swift", "build", "--show-bin-path"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        find_bindir.error = "DISCD_BIN not set and 'swift build --show-bin-path' failed: %s" % e
        return None
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        find_bindir.error = "DISCD_BIN not set and 'swift build --show-bin-path' failed (rc=%d): %s" % (
            r.returncode, (r.stderr or r.stdout).strip())
        return None
    return lines[-1].strip()


_discd_checked = {}


def discd_problem(bindir):
    """None if bindir holds a usable discd + showmap, else why not (cached per dir and mtime).

    run.py reports a test that meets such a problem as FAILED, never skipped: the test command
    has just built these binaries, so a missing or broken one is a failure of the build."""
    if not bindir:
        why = getattr(find_bindir, "error", None) or "set DISCD_BIN to the directory holding discd and showmap"
        return "no discd binary: " + why
    for b in ("discd", "showmap"):
        if not os.access(os.path.join(bindir, b), os.X_OK):
            return "%s/%s missing or not executable" % (bindir, b)
    exe = os.path.join(bindir, "discd")
    key = (exe, os.stat(exe).st_mtime_ns)
    if key not in _discd_checked:
        try:
            r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10)
            txt = r.stdout + r.stderr
            if r.returncode != 0:
                _discd_checked[key] = "'%s --help' exited %d: %s" % (exe, r.returncode, txt.strip()[-300:])
            elif "--map" not in txt:
                _discd_checked[key] = "%s is not the real daemon ('discd --help' lacks --map)" % exe
            else:
                _discd_checked[key] = None
        except Exception as e:  # noqa
            _discd_checked[key] = "%s --help failed: %s" % (exe, e)
    return _discd_checked[key]


def norm_addr(a):
    try:
        return str(ipaddress.ip_address(a))
    except ValueError:
        return a


def proc_cpu_ticks(pid):
    """utime+stime of a process in clock ticks, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
        fields = s[s.rindex(")") + 2:].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


def proc_rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


# --------------------------------------------------------------------------- model

class Lan:
    def __init__(self, lab, name, x, y):
        self.lab, self.name, self.x, self.y = lab, name, x, y
        self.ns = lab.nsname("br" + name)
        self.net4 = ipaddress.ip_network("10.%d.%d.0/24" % (x, y))
        self.net6 = ipaddress.ip_network("fd00:%x:%x::/64" % (x, y))
        self.ports = []  # bridge port names

    def ip4(self, i):
        return "10.%d.%d.%d" % (self.x, self.y, i)

    def ip6(self, i):
        return str(ipaddress.ip_address("fd00:%x:%x::%x" % (self.x, self.y, i)))

    def port_stats(self):
        """{port: (rx_packets, tx_packets, rx_bytes, tx_bytes)} for each bridge port veth.

        rx on a port = packets the attached node sent; tx = packets delivered to it.
        """
        r = sh(["ip", "-n", self.ns, "-s", "-j", "link", "show"])
        out = {}
        for l in json.loads(r.stdout):
            if l.get("ifname") in self.ports:
                st = l.get("stats64") or l.get("stats") or {}
                rx, tx = st.get("rx", {}), st.get("tx", {})
                out[l["ifname"]] = (rx.get("packets", 0), tx.get("packets", 0),
                                    rx.get("bytes", 0), tx.get("bytes", 0))
        return out


class Iface:
    def __init__(self, node, name, lan, host):
        self.node, self.name, self.lan, self.host = node, name, lan, host
        self.ip4 = lan.ip4(host)
        self.ip6 = lan.ip6(host)
        self.port = "p-" + node.name  # peer name in the bridge namespace
        if len(self.port) > 15:
            raise LabError("port name too long: " + self.port)


class Node:
    def __init__(self, lab, name):
        self.lab, self.name = lab, name
        self.ns = lab.nsname(name)
        self.ifaces = []
        self.dir = os.path.join(lab.workdir, name)
        os.makedirs(self.dir, exist_ok=True)

    @property
    def ip4(self):
        return self.ifaces[0].ip4

    @property
    def ip6(self):
        return self.ifaces[0].ip6

    def iface(self, name):
        for i in self.ifaces:
            if i.name == name:
                return i
        raise KeyError(name)

    def exec_argv(self, argv):
        return ["ip", "netns", "exec", self.ns] + list(argv)

    def run(self, argv, check=True, timeout=20):
        return sh(self.exec_argv(argv), check=check, timeout=timeout)

    def ip(self, *args, check=True):
        return sh(["ip", "-n", self.ns] + list(args), check=check)

    def sysctl(self, key, value):
        return self.run(["sysctl", "-q", "-w", "%s=%s" % (key, value)])

    def popen(self, argv, logpath, **kw):
        logf = open(logpath, "ab")
        try:
            p = subprocess.Popen(self.exec_argv(argv), stdout=logf, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        finally:
            logf.close()
        self.lab._procs.append(p)
        return p


class Daemon:
    """One discd process running in a node namespace."""

    def __init__(self, lab, node, argv, tag):
        self.lab, self.node, self.argv, self.tag = lab, node, argv, tag
        self.map = os.path.join(node.dir, "discd.map")
        self.status = os.path.join(node.dir, "status.json")
        self.control = os.path.join(node.dir, "control%s.sock" % tag)
        self.log = os.path.join(node.dir, "discd%s.log" % tag)
        self.proc = None
        self.started_mono = None
        self.started_wall = None
        self.returncode = None
        self._map_cache = (None, None)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, timeout=3.0):
        """SIGTERM, wait up to timeout, then SIGKILL. Returns (returncode, seconds, killed)."""
        if self.proc is None:
            return None, 0.0, False
        if self.proc.poll() is not None:
            self.returncode = self.proc.returncode
            return self.returncode, 0.0, False
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        killed = False
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            killed = True
            self.proc.kill()
            self.proc.wait(5)
        self.returncode = self.proc.returncode
        return self.returncode, time.monotonic() - t0, killed

    def log_text(self):
        try:
            with open(self.log, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_lines(self, level=None):
        lines = self.log_text().splitlines()
        if level:
            pat = " %s:" % level
            lines = [l for l in lines if pat in l]
        return lines

    def status_json(self):
        try:
            with open(self.status) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def showmap_json(self, cached=True):
        """The map as showmap --json prints it (dict), or None if unreadable yet.

        With cached=True, showmap is only re-run when the file's mtime/size changed.
        """
        try:
            st = os.stat(self.map)
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if cached and self._map_cache[0] == key:
            return self._map_cache[1]
        r = sh([os.path.join(self.lab.bindir, "showmap"), "-f", self.map, "--json"], check=False, timeout=10)
        if r.returncode != 0:
            return None
        try:
            m = json.loads(r.stdout)
        except ValueError:
            return None
        self._map_cache = (key, m)
        return m


def map_nodes(m):
    """{normalized address: node dict} of a showmap --json dict."""
    return {norm_addr(n["address"]): n for n in (m or {}).get("nodes", [])}


def find_node(m, addr):
    """The map entry whose address or one of whose aliases is addr, or None."""
    a = norm_addr(addr)
    for n in (m or {}).get("nodes", []):
        if norm_addr(n["address"]) == a:
            return n
        for al in n.get("aliases", []) or []:
            if norm_addr(al.get("address", "")) == a:
                return n
    return None


# --------------------------------------------------------------------------- the lab

class Lab:
    def __init__(self, bindir=None, keep=False, label=""):
        self.id = "dd%04x" % random.getrandbits(16)
        while os.path.exists("/run/netns/%s-probe" % self.id) or \
                any(n.startswith(self.id + "-") for n in list_netns()):
            self.id = "dd%04x" % random.getrandbits(16)
        self.bindir = bindir or find_bindir()
        self.keep = keep
        self.label = label
        self.workdir = os.path.join("/tmp", self.id)
        os.makedirs(self.workdir, exist_ok=True)
        with open(os.path.join(self.workdir, "owner.pid"), "w") as f:
            f.write("%d\n" % os.getpid())
        self.namespaces = []
        self.lans = {}
        self.nodes = {}
        self.daemons = []
        self._procs = []
        self.failed = False
        self.closed = False
        _live_labs.append(self)

    # context manager ---------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is not None and not issubclass(et, Skip):
            self.failed = True
        self.close()
        return False

    def nsname(self, name):
        return "%s-%s" % (self.id, name)

    def _add_ns(self, name):
        ns = self.nsname(name)
        sh(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns

    # topology ----------------------------------------------------------------
    def add_lan(self, name="", x=1, y=1):
        """A LAN: a namespace with bridge br0 (snooping off, stp off). Subnet 10.x.y.0/24, fd00:x:y::/64."""
        if name in self.lans:
            raise LabError("duplicate lan " + name)
        lan = Lan(self, name, x, y)
        self._add_ns("br" + name)
        ns = lan.ns
        # the bridge namespace must never originate traffic of its own
        for k in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
            sh(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", k + "=1"])
        sh(["ip", "-n", ns, "link", "add", "br0", "type", "bridge", "stp_state", "0",
            "mcast_snooping", "0", "forward_delay", "0"])
        sh(["ip", "-n", ns, "link", "set", "br0", "up"])
        self.lans[name] = lan
        return lan

    def add_node(self, name, lan=None, host=None, ifname="e0", mcast_routes=True):
        """A namespace attached to lan (if given) via veth ifname with address host."""
        if name in self.nodes:
            raise LabError("duplicate node " + name)
        node = Node(self, name)
        self._add_ns(name)
        for k in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
            node.sysctl(k, 0)
        for k in ("net.ipv6.conf.all.router_solicitations", "net.ipv6.conf.default.router_solicitations"):
            node.sysctl(k, 0)
        self.nodes[name] = node
        if lan is not None:
            self.attach(node, lan, host, ifname, mcast_routes=mcast_routes)
        return node

    def attach(self, node, lan, host, ifname, mcast_routes=None):
        """Add interface ifname to node, plugged into lan's bridge, with address host."""
        ifc = Iface(node, ifname, lan, host)
        first = not node.ifaces
        if mcast_routes is None:
            mcast_routes = first
        # create the pair inside the node namespace, the peer goes straight to the bridge namespace
        sh(["ip", "-n", node.ns, "link", "add", ifname, "type", "veth", "peer", "name", ifc.port,
            "netns", lan.ns])
        sh(["ip", "-n", lan.ns, "link", "set", ifc.port, "master", "br0"])
        sh(["ip", "-n", lan.ns, "link", "set", ifc.port, "up"])
        node.ip("link", "set", ifname, "up")
        node.ip("addr", "add", "%s/24" % ifc.ip4, "dev", ifname)
        node.ip("-6", "addr", "add", "%s/64" % ifc.ip6, "dev", ifname, "nodad")
        if mcast_routes:
            node.ip("route", "add", "224.0.0.0/4", "dev", ifname)
            node.ip("-6", "route", "add", "ff00::/8", "dev", ifname)
        node.ifaces.append(ifc)
        lan.ports.append(ifc.port)
        return ifc

    def add_gateway(self, name, attachments, forward=True):
        """A node with several interfaces: attachments = [(lan, host, ifname), ...]."""
        node = self.add_node(name)
        for lan, host, ifname in attachments:
            self.attach(node, lan, host, ifname)
        if forward:
            node.sysctl("net.ipv4.ip_forward", 1)
            node.sysctl("net.ipv6.conf.all.forwarding", 1)
        return node

    def add_router(self, name, attachments):
        """A multicast router namespace (forwarding on; start_smcroute() to route groups)."""
        return self.add_gateway(name, attachments, forward=True)

    def add_route(self, node, lan, via_ifc):
        """Route node to lan's IPv4 and IPv6 subnets via interface object via_ifc (of a gateway)."""
        node.ip("route", "add", str(lan.net4), "via", via_ifc.ip4)
        node.ip("-6", "route", "add", str(lan.net6), "via", via_ifc.ip6)

    def wait_addresses(self, timeout=5.0):
        """Wait until no namespace has a tentative IPv6 address."""
        def ok():
            for n in self.nodes.values():
                r = n.ip("-6", "addr", "show", "tentative", check=False)
                if r.stdout.strip():
                    return False
            return True
        v, el = wait_until(ok, timeout, 0.1)
        if not v:
            raise LabError("IPv6 addresses still tentative after %.1fs" % timeout)
        return el

    # processes ----------------------------------------------------------------
    def start_daemon(self, node, args=(), family=None, ifaces=None, tag="", interfaces=True):
        """Start discd in node's namespace: -n -i <ifaces> --map --status [--family] args...

        interfaces=False leaves out -i (discd then picks the default route's interface)."""
        if discd_problem(self.bindir):
            raise Skip(discd_problem(self.bindir))
        d = Daemon(self, node, None, tag)
        argv = [os.path.join(self.bindir, "discd"), "-n"]
        if interfaces:
            argv += ["-i", ",".join(ifaces or [i.name for i in node.ifaces])]
        argv += ["--map", d.map, "--status", d.status, "--control", d.control]
        if family:
            argv += ["--family", family]
        argv += list(args)
        d.argv = argv
        with open(d.log, "ab") as f:
            f.write(("### %s\n" % " ".join(argv)).encode())
        d.started_wall = time.time()
        d.started_mono = time.monotonic()
        d.proc = node.popen(argv, d.log)
        self.daemons.append(d)
        return d

    def start_daemons(self, nodes, **kw):
        return [self.start_daemon(n, **kw) for n in nodes]

    def run_discd(self, node, args, timeout=3.0):
        """Run discd to completion in node (for bad-config tests).

        Returns (returncode or None if still running at timeout, stdout, stderr, seconds)."""
        if discd_problem(self.bindir):
            raise Skip(discd_problem(self.bindir))
        argv = node.exec_argv([os.path.join(self.bindir, "discd")] + list(args))
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        self._procs.append(p)
        try:
            out, err = p.communicate(timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate(timeout=5)
            rc = None
        return rc, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - t0

    def capture(self, node, seconds, group=GROUP4, port=PORT):
        """An eavesdropper in node (no daemon) records `seconds` of group:port (`mcast.py capture`).

        Returns (path of the capture file, for `mcast.py replay`/`flood`; [(source, hex bytes)])."""
        path = os.path.join(self.workdir, "capture-%s.txt" % node.name)
        with open(path, "w") as f:
            r = subprocess.run(node.exec_argv([sys.executable, MCAST_TOOL, "capture", group, str(port),
                                               node.ifaces[0].name, str(seconds)]),
                               stdout=f, stderr=subprocess.PIPE, timeout=seconds + 15)
        if r.returncode != 0:
            raise LabError("capture in %s failed: %s" % (node.name, r.stderr.decode(errors="replace")))
        with open(path) as f:
            return path, [(p[1], p[2]) for p in (l.split() for l in f) if len(p) == 3 and p[0] == "RXHEX"]

    def mcast(self, node, *args, log=None):
        """Start tests/netns/mcast.py in node's namespace (returns Popen; output in log)."""
        logpath = log or os.path.join(node.dir, "mcast.log")
        return node.popen([sys.executable, MCAST_TOOL] + [str(a) for a in args], logpath)

    def start_smcroute(self, router, routes):
        """Run smcrouted in router namespace. routes: [(in_ifname, group, [out_ifnames])] as (*,G) routes."""
        if not shutil.which("smcrouted"):
            raise Skip("smcrouted not installed (apt-get install -y smcroute)")
        conf = os.path.join(router.dir, "smcroute.conf")
        ifs = []
        lines = []
        for i in router.ifaces:
            lines.append("phyint %s enable ttl-threshold 1" % i.name)
        for inif, group, outs in routes:
            lines.append("mroute from %s group %s to %s" % (inif, group, " ".join(outs)))
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        sock = os.path.join(router.dir, "smcroute.sock")
        pidf = os.path.join(router.dir, "smcroute.pid")
        router.smcroute_sock = sock
        p = router.popen(["smcrouted", "-n", "-N", "-f", conf, "-u", sock, "-P", pidf, "-l", "info"],
                         os.path.join(router.dir, "smcroute.log"))
        ok, _ = wait_until(lambda: os.path.exists(sock) or p.poll() is not None, 5.0, 0.05)
        if p.poll() is not None or not os.path.exists(sock):
            raise LabError("smcrouted did not start: " + _read(os.path.join(router.dir, "smcroute.log")))
        return p

    def smcroute_show(self, router):
        return router.run(["smcroutectl", "-u", router.smcroute_sock, "show"], check=False).stdout

    # shutdown -----------------------------------------------------------------
    def stop_all(self, timeout=3.0):
        for d in self.daemons:
            if d.alive():
                d.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for d in self.daemons:
            if d.proc is None:
                continue
            try:
                d.proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                d.proc.kill()
                try:
                    d.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            d.returncode = d.proc.returncode

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            self.stop_all(timeout=3.0)
        except Exception:
            pass
        for p in self._procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        t_end = time.monotonic() + 2.0
        for p in self._procs:
            try:
                p.wait(max(0.05, t_end - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                try:
                    p.wait(3)
                except subprocess.TimeoutExpired:
                    pass
        # node namespaces first (deleting them removes the veths), bridges last
        for ns in reversed(self.namespaces):
            delete_netns(ns)
        if not self.keep and not self.failed:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self in _live_labs:
            _live_labs.remove(self)


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def list_netns():
    try:
        return sorted(os.listdir("/run/netns"))
    except OSError:
        return []


def delete_netns(ns):
    """Kill whatever still runs in ns (only our own processes live there), then delete it."""
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10)
    pids = [int(x) for x in r.stdout.split() if x.isdigit()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if pids:
        time.sleep(0.1)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def cleanup_stale(force=False, out=sys.stdout):
    """Delete dd????-* namespaces whose owning run (tmp/<id>/owner.pid) is gone (all with force)."""
    removed = 0
    for ns in list_netns():
        if not NS_RE.match(ns):
            continue
        lab_id = ns.split("-", 1)[0]
        owner = _read(os.path.join("/tmp", lab_id, "owner.pid")).strip()
        if owner.isdigit() and not force and int(owner) != os.getpid() and os.path.exists("/proc/" + owner):
            print("keeping %s (run pid %s still alive; --force to remove)" % (ns, owner), file=out)
            continue
        delete_netns(ns)
        removed += 1
        print("removed namespace %s" % ns, file=out)
    return removed


def close_all_labs():
    for lab in list(_live_labs):
        try:
            lab.close()
        except Exception as e:  # noqa
            print("cleanup of %s failed: %s" % (lab.id, e), file=sys.stderr)


def install_cleanup_handlers():
    """atexit + SIGTERM/SIGINT/SIGHUP: tear down every live Lab, then exit."""
    atexit.register(close_all_labs)

    def handler(signum, frame):
        signal.signal(signum, signal.SIG_IGN)
        print("\nsignal %d: cleaning up" % signum, file=sys.stderr)
        close_all_labs()
        os._exit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, handler)


# --------------------------------------------------------------------------- shared topologies / probes

PROBE_PORT = 17777


def probe(lab, sender, receivers, dest, ttl=1, count=5, interval=0.05, port=PROBE_PORT, listen=None):
    """Send count datagrams from sender to dest; return {receiver name: number received}.

    Receivers listen on dest (a group) or on `listen` (unicast bind address per receiver: callable)."""
    tag = "p%d" % int(time.monotonic() * 1000)
    logs = {}
    procs = []
    for r in receivers:
        log = os.path.join(r.dir, "probe-%s.log" % tag)
        addr = listen(r) if listen else dest
        procs.append(lab.mcast(r, "recv", addr, port, r.ifaces[0].name, 1.5 + count * interval, count, log=log))
        logs[r.name] = log

    def ready():
        for log in logs.values():
            try:
                with open(log) as f:
                    if "READY" not in f.read():
                        return False
            except OSError:
                return False
        return True
    ok, _ = wait_until(ready, 5.0)
    assert ok, "receivers not ready within 5s"
    r = sender.run([sys.executable, MCAST_TOOL, "send", dest, str(port), sender.ifaces[0].name,
                    str(count), str(interval), str(ttl), tag], timeout=10 + count * interval)
    assert "SENT" in r.stdout, r.stderr
    for p in procs:
        p.wait(10)
    got = {}
    for name, log in logs.items():
        with open(log) as f:
            got[name] = sum(1 for l in f if l.startswith("RX ") and (" %s " % tag) in l)
    return got


def routed_two_lans(lab, group):
    """Two LANs joined by an smcroute multicast router forwarding `group` both ways, proven first
    with plain sockets on discd's own group and port (TTL/hops 1 stays local, 2 crosses).
    Returns (an, bn, router): the nodes of LAN A, of LAN B, and the router."""
    _, _, an, bn, (rt,) = build_two_lans(lab, gateways=1, router=True)
    lab.start_smcroute(rt, [("ra", group, ["rb"]), ("rb", group, ["ra"])])
    g1 = probe(lab, an[0], [an[1], bn[0]], group, ttl=1, count=3, port=PORT)
    g2 = probe(lab, an[0], [an[1], bn[0]], group, ttl=2, count=3, port=PORT)
    assert g1 == {"a2": 3, "b1": 0} and g2 == {"a2": 3, "b1": 3}, \
        "router precheck failed for %s: TTL1 %s TTL2 %s\n%s" % (group, g1, g2, lab.smcroute_show(rt))
    return an, bn, rt


def assert_sides_apart(daemons, side_a, a_addrs, b_addrs, seconds, what=""):
    """For `seconds` (polled every 0.1 s), no daemon's map lists an address of the other side:
    daemons whose node is in side_a must not see b_addrs, the others must not see a_addrs."""
    end = time.monotonic() + seconds
    leaked = []
    while time.monotonic() < end and not leaked:
        for d in daemons:
            far = b_addrs if d.node in side_a else a_addrs
            m = d.showmap_json()
            leaked += ["%s sees %s" % (d.node.name, a) for a in far if find_node(m, a)]
        time.sleep(0.1)
    assert not leaked, "%scrossed: %s" % (what, leaked)


def stop_and_reset(lab, daemons):
    """SIGTERM every daemon of the lab, require exit 0 of `daemons`, remove their map and status
    files (so that the next daemons on the same nodes start from nothing)."""
    lab.stop_all()
    for d in daemons:
        assert d.returncode == 0, "%s: exit %s on SIGTERM" % (d.node.name, d.returncode)
        for f in (d.map, d.status):
            if os.path.exists(f):
                os.unlink(f)


def build_two_lans(lab, gateways=1, per_lan=2, forward=True, router=False):
    """LAN A 10.1.0.0/24 (hosts 1..), LAN B 10.2.0.0/24 (hosts 11..), gateways at .253, .254 (both sides).

    Returns (lanA, lanB, a_nodes, b_nodes, gws). Every node routes the other LAN via the first gateway."""
    la = lab.add_lan("a", 1, 0)
    lb = lab.add_lan("b", 2, 0)
    an = [lab.add_node("a%d" % i, la, i) for i in range(1, per_lan + 1)]
    bn = [lab.add_node("b%d" % i, lb, 10 + i) for i in range(1, per_lan + 1)]
    gws = []
    for g in range(gateways):
        host = 254 - g
        name = ("rt" if router else "gw%d" % (g + 1))
        if router:
            gws.append(lab.add_router(name, [(la, host, "ra"), (lb, host, "rb")]))
        else:
            gws.append(lab.add_gateway(name, [(la, host, "ea"), (lb, host, "eb")], forward=forward))
    if gws:
        for n in an:
            lab.add_route(n, lb, gws[0].ifaces[0])
        for n in bn:
            lab.add_route(n, la, gws[0].ifaces[1])
    lab.wait_addresses()
    return la, lb, an, bn, gws


