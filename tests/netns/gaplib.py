"""Helpers for tests/netns/test_gaps.py (the features issue 14 found untested).

Python 3 stdlib only.  Everything is read through the interfaces a script would use:
`showmap --json` (Daemon.showmap_json), the --status JSON file (Daemon.status_json),
exit codes and process state -- never the daemons' English log text.
"""
import os
import re
import shlex
import subprocess
import sys
import time

from netlab import Daemon, Skip, discd_problem, find_node, norm_addr

# The --status file's schema: every key NodeDriver.statusJSON (Sources/discd/NodeDriver.swift)
# writes, with its JSON type, and the drop reasons (DropReason in Sources/Cluster/ClusterEvent.swift)
# that "drops" always lists.  The one place the test suite states it: a key added to or removed
# from the daemon must be added or removed here (the schema test fails on either).
STATUS_SCHEMA = {
    "datagrams_rx": int,
    "datagrams_tx": int,
    "multicast_tx": int,
    "unicast_tx": int,
    "relayed_tx": int,
    "duplicates": int,
    "heartbeats_tx": int,
    "heartbeats_rx": int,
    "send_errors": int,
    "members": int,
    "nodes": int,
    "incarnation": int,
    "generation": int,
    "map_writes": int,
    "announces_tx": int,
    "refutations": int,
    "suspicions": int,
    "suspicions_answered": int,
    "deaths_declared": int,
    "deaths_learned": int,
    "late_ticks": int,
    "late_heartbeats": int,
    "socket_drops": int,    # datagrams the receive sockets dropped (the kernel's SO_MEMINFO count)
    "loss_graces": int,     # suspects given one more confirm window because of them
    "map_refused_full": int,
    "drops": dict,          # {reason: int}, every reason of DROP_REASONS
    "rdma": "rdma",         # the RDMA transport's object, RDMA_SCHEMA (docs/RDMA.md, "Status")
    "processes": "processes",  # watched processes and exit notices, PROCESSES_SCHEMA (docs/EVENTS.md)
    "kernel": "kernel",     # the kernel-module link, KERNEL_SCHEMA (kernel/README.md)
}
DROP_REASONS = (
    "too_short", "too_long", "bad_magic", "bad_version", "unknown_type", "unknown_flags", "bad_cluster",
    "bad_length", "malformed", "missing_tag", "other_cluster", "unverifiable_tag", "own", "stale_incarnation",
    "unknown_notice", "unauthenticated", "unknown_key", "bad_tag", "replayed", "not_allowed",
)
# RDMAStatus.fields (Sources/discd/RDMATransport.swift): strings and non-negative integers.
RDMA_SCHEMA = {
    "state": str, "reason": str, "device": str, "port": int, "gid": str, "qpn": int, "qkey": int, "mtu": int,
    "datagrams_rx": int, "datagrams_tx": int, "multicast_tx": int, "unicast_tx": int, "immediate_rx": int,
    "loopback": int, "oversize": int, "send_errors": int, "receive_errors": int, "ups": int, "downs": int,
}
RDMA_STATES = ("up", "down", "off")
# The status file's "processes" object (NodeDriver.statusJSON) and "kernel" object (KernelLink.fields).
PROCESSES_SCHEMA = {"watched": int, "exit_forwards_tx": int, "duplicate_exit_notices": int, "paired_kernel_exits": int}
KERNEL_SCHEMA = {
    "state": str, "reason": str, "exits": int, "lost": int, "read_errors": int, "map_writes": int,
    "map_write_errors": int, "attaches": int,
}
KERNEL_STATES = ("off", "absent", "attached", "detached", "refused")
NESTED = {"rdma": (RDMA_SCHEMA, RDMA_STATES), "processes": (PROCESSES_SCHEMA, None), "kernel": (KERNEL_SCHEMA, KERNEL_STATES)}


def is_int(v):
    """A JSON integer (Python bool is an int subclass: not accepted)."""
    return isinstance(v, int) and not isinstance(v, bool)


def schema_problems(st):
    """Every way status dict st departs from STATUS_SCHEMA (empty list: conforms)."""
    if not isinstance(st, dict):
        return ["status is %s, not a JSON object" % type(st).__name__]
    out = []
    missing = sorted(set(STATUS_SCHEMA) - set(st))
    extra = sorted(set(st) - set(STATUS_SCHEMA))
    if missing:
        out.append("missing keys %s" % missing)
    if extra:
        out.append("keys not in the schema %s" % extra)
    for k, t in STATUS_SCHEMA.items():
        if k not in st:
            continue
        v = st[k]
        if t is int:
            if not is_int(v):
                out.append("%s=%r is %s, not an integer" % (k, v, type(v).__name__))
            elif v < 0:
                out.append("%s=%d is negative" % (k, v))
        elif t in NESTED:
            schema, states = NESTED[t]
            if not isinstance(v, dict):
                out.append("%s=%r is not an object" % (k, v))
                continue
            rm, rx = sorted(set(schema) - set(v)), sorted(set(v) - set(schema))
            if rm or rx:
                out.append("%s: keys missing %s, not in the schema %s" % (k, rm, rx))
            for rk, rt in schema.items():
                rv = v.get(rk)
                if rk in v and (not isinstance(rv, str) if rt is str else (not is_int(rv) or rv < 0)):
                    out.append("%s.%s=%r is not a %s" % (k, rk, rv, "string" if rt is str else "non-negative integer"))
            if states and v.get("state") not in states:
                out.append("%s.state=%r is not one of %s" % (k, v.get("state"), states))
        elif t is dict:
            if not isinstance(v, dict):
                out.append("%s=%r is %s, not an object" % (k, v, type(v).__name__))
            else:
                dm, dx = sorted(set(DROP_REASONS) - set(v)), sorted(set(v) - set(DROP_REASONS))
                if dm or dx:
                    out.append("%s: reasons missing %s, not in the schema %s" % (k, dm, dx))
                for dk, dv in v.items():
                    if not is_int(dv) or dv < 0:
                        out.append("%s[%r]=%r is not a non-negative integer" % (k, dk, dv))
    return out


def drops(d, reason):
    """The status file's drops[reason] of daemon d (0 when absent or no status yet)."""
    return ((d.status_json() or {}).get("drops") or {}).get(reason, 0)


def status_int(d, key):
    return (d.status_json() or {}).get(key, 0)


def entry(d, addr):
    """Daemon d's map entry for addr (address or alias), fresh read; None if absent/unreadable."""
    return find_node(d.showmap_json(cached=False), addr)


def state_of(d, addr, cached=True):
    n = find_node(d.showmap_json(cached=cached), addr)
    return n.get("state") if n else None


def wait_all(daemons, pred, timeout, interval=0.02):
    """Poll every daemon's map until pred(map) holds for each; {daemon: seconds first seen}.

    Daemons that never satisfied pred within timeout are absent from the result."""
    t0 = time.monotonic()
    seen = {}
    while True:
        for d in daemons:
            if d in seen:
                continue
            m = d.showmap_json()
            if m is not None and pred(m):
                seen[d] = time.monotonic() - t0
        if len(seen) == len(daemons) or time.monotonic() - t0 > timeout:
            return seen
        time.sleep(interval)


def state_is(addr, *states):
    """A map predicate: addr's entry exists and is in one of states."""
    def p(m):
        n = find_node(m, addr)
        return n is not None and n.get("state") in states
    return p


def addresses(m):
    return sorted(norm_addr(n["address"]) for n in (m or {}).get("nodes", []))


def id_table(m):
    """{address: id} of a map."""
    return {norm_addr(n["address"]): n["id"] for n in (m or {}).get("nodes", [])}


def gateway_view_problems(daemons, an, bn, gws, v6):
    """Like test_discd._check_gateway_view for either family: ordinary nodes see the far LAN at
    hops=1, their own at hops=0, every gateway as one entry with its other address as an alias of
    source 'interface'.  Returns a list of problems (empty: all good)."""
    fam = (lambda i: i.ip6) if v6 else (lambda i: i.ip4)
    out = []
    for d in daemons:
        if d.node in gws:
            continue
        m = d.showmap_json(cached=False)
        near, far = (an, bn) if d.node in an else (bn, an)
        for o, want in [(x, 1) for x in far] + [(x, 0) for x in near]:
            a = fam(o.ifaces[0])
            e = find_node(m, a)
            if e is None or e.get("hops") != want:
                out.append("%s: %s should have hops=%d: %s" % (d.node.name, a, want, e))
        for g in gws:
            ea, eb = fam(g.ifaces[0]), fam(g.ifaces[1])
            e1, e2 = find_node(m, ea), find_node(m, eb)
            if e1 is None or e1 is not e2:
                out.append("%s: gateway %s: %s and %s are not one entry" % (d.node.name, g.name, ea, eb))
                continue
            other = eb if norm_addr(e1["address"]) == ea else ea
            al = {norm_addr(x["address"]): x.get("source") for x in e1.get("aliases") or []}
            if al.get(other) != "interface":
                out.append("%s: gateway %s lacks alias %s (interface): %s" % (
                    d.node.name, g.name, other, e1.get("aliases")))
    return out


# --------------------------------------------------------------------------- daemon mode (no -n)

# A journal stand-in: binds an AF_UNIX datagram socket at argv[1], writes its pid to argv[2].pid,
# creates argv[2].ready once bound, then appends every datagram to argv[2] followed by a '\x1e' line.
JOURNAL_LISTENER = r'''
import os, socket, sys
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
with open(out + ".pid", "w") as f:
    f.write(str(os.getpid()))
open(out + ".ready", "w").close()
while True:
    data = s.recv(1 << 20)
    with open(out, "ab") as f:
        f.write(data.rstrip(b"\n") + b"\n\x1e\n")
'''
JOURNAL_SOCKET = "/run/systemd/journal/socket"


def journal_records(path):
    """[{KEY: value}] of the datagrams a JOURNAL_LISTENER captured (simple KEY=value lines only)."""
    try:
        with open(path, "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return []
    out = []
    for rec in data.split("\n\x1e\n"):
        kv = {}
        for line in rec.split("\n"):
            if "=" in line:
                k, v = line.split("=", 1)
                kv.setdefault(k, v)
        if kv:
            out.append(kv)
    return out


def run_daemon_mode(lab, node, args, tag="dm", timeout=10.0):
    """Run `discd <args>` WITHOUT -n in node, inside a private mount namespace whose /run is a tmpfs
    with a JOURNAL_LISTENER bound at JOURNAL_SOCKET before discd starts.

    Returns (rc or None on timeout, stdout, stderr, seconds, journal path, listener pid file)."""
    if discd_problem(lab.bindir):
        raise Skip(discd_problem(lab.bindir))
    lst = os.path.join(node.dir, "journal-listener.py")
    with open(lst, "w") as f:
        f.write(JOURNAL_LISTENER)
    jout = os.path.join(node.dir, "journal-%s.log" % tag)
    discd = [os.path.join(lab.bindir, "discd")] + list(args)
    script = ('mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal || exit 97\n'
              '%s %s %s %s </dev/null >/dev/null 2>&1 &\n'
              'i=0; while [ ! -e %s.ready ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done\n'
              '[ -e %s.ready ] || exit 98\n'
              'exec %s\n') % (sys.executable, lst, JOURNAL_SOCKET, jout, jout, jout,
                              " ".join(shlex.quote(a) for a in discd))
    argv = node.exec_argv(["unshare", "-m", "--propagation", "private", "sh", "-c", script])
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        try:
            out, err = p.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            out, err = b"", b"(pipes still held open after kill)"
        rc = None
    return rc, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - t0, jout, jout + ".pid"


def pids_of(pattern):
    """pids (ints) of processes whose command line contains pattern (pgrep -f, fixed string)."""
    r = subprocess.run(["pgrep", "-f", "--", re.escape(pattern)], stdout=subprocess.PIPE, text=True)
    return [int(x) for x in r.stdout.split()]


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as gone
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
