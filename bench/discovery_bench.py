#!/usr/bin/env python3
"""Discovery benchmark on a real (namespaced) network: N discd daemons, one per
network namespace, all on one Linux bridge, started at once.

  sudo python3 bench/discovery_bench.py [--sizes 16,64] [--repeats 3] [--window 10] [--family ipv4|ipv6]
                                        [--args "--announce-interval 1s ..."]

Per size it prints (median and max over the repeats):
  * convergence: time from starting the daemons until every map lists all N members
    (from each daemon's own 'member ... joined' log timestamps, checked against the maps);
  * steady state over --window seconds (after the maps are complete + --settle s):
    packets/s each node sent and received (its bridge port veth counters, all traffic),
    CPU % per daemon (/proc/PID/stat utime+stime), RSS (VmRSS) at the end.
Output: a markdown table.  Needs root; cleans up every namespace it made.
Binaries: $DISCD_BIN, else the first of .build/release, .build/debug that has discd.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "netns"))
import netlab  # noqa: E402
from netlab import find_node, proc_cpu_ticks, proc_rss_kb  # noqa: E402

LOG_ARGS = ["--log-format", "json"]   # every stderr line one JSON object {"t", "level", "event", ...}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def complete(m, addrs):
    return bool(m) and all((find_node(m, a) or {}).get("state") == "alive" for a in addrs)


def log_completion(d, addrs):
    """Seconds after d's start at which its log shows the last of addrs joined (None if not all)."""
    want = set(netlab.norm_addr(a) for a in addrs)
    seen = {}
    for line in d.log_lines():
        try:
            ev = json.loads(line) if line.startswith("{") else None
        except ValueError:
            ev = None
        if isinstance(ev, dict) and ev.get("event") == "member.joined":
            a = netlab.norm_addr(ev["address"])
            if a in want and a not in seen:
                seen[a] = float(ev["t"])
    if len(seen) < len(want):
        return None
    return max(seen.values())


def one_run(n, args, window, settle, family, timeout):
    with netlab.Lab(label="bench") as lab:
        lan = lab.add_lan("", 1, 3)
        nodes = [lab.add_node("n%d" % i, lan, i) for i in range(1, n + 1)]
        lab.wait_addresses(timeout=20)
        addrs = [nd.ip6 if family == "ipv6" else nd.ip4 for nd in nodes]
        t0 = time.monotonic()
        daemons = [lab.start_daemon(nd, args=LOG_ARGS + list(args), family=family) for nd in nodes]
        # poll the maps (showmap only re-runs when a file changed) until all are complete
        done = set()
        poll_time = None
        while time.monotonic() - t0 < timeout:
            for d in daemons:
                if d not in done and complete(d.showmap_json(), addrs):
                    done.add(d)
            if len(done) == n:
                poll_time = time.monotonic() - t0
                break
            dead = [d.node.name for d in daemons if not d.alive()]
            if dead:
                raise RuntimeError("daemons exited: %s" % dead)
            time.sleep(0.1)
        if poll_time is None:
            raise RuntimeError("N=%d: only %d/%d maps complete after %.0fs" % (n, len(done), n, timeout))
        # precise figure: each daemon's own log timestamps, shifted by when we started it
        per = []
        for d in daemons:
            c = log_completion(d, addrs)
            per.append(None if c is None else d.started_mono - t0 + c)
        log_time = max(per) if all(p is not None for p in per) else None

        time.sleep(settle)
        ports0 = lan.port_stats()
        cpu0 = {d: proc_cpu_ticks(d.pid) for d in daemons}
        st0 = {d: d.status_json() or {} for d in daemons}
        w0 = time.monotonic()
        time.sleep(window)
        ports1 = lan.port_stats()
        cpu1 = {d: proc_cpu_ticks(d.pid) for d in daemons}
        st1 = {d: d.status_json() or {} for d in daemons}
        win = time.monotonic() - w0
        rss = [proc_rss_kb(d.pid) or 0 for d in daemons]
        sent, recv, cpu, dgr = [], [], [], []
        for d in daemons:
            p = d.node.ifaces[0].port
            sent.append((ports1[p][0] - ports0[p][0]) / win)   # bridge port rx = what the node sent
            recv.append((ports1[p][1] - ports0[p][1]) / win)   # bridge port tx = what was delivered to it
            if cpu0[d] is not None and cpu1[d] is not None:
                cpu.append(100.0 * (cpu1[d] - cpu0[d]) / CLK_TCK / win)
            dgr.append((st1[d].get("datagrams_tx", 0) - st0[d].get("datagrams_tx", 0)) / win)
        still = sum(1 for d in daemons if complete(d.showmap_json(cached=False), addrs))
        return {
            "converge": log_time if log_time is not None else poll_time,
            "converge_poll": poll_time,
            "sent": statistics.mean(sent), "recv": statistics.mean(recv),
            "sent_max": max(sent), "recv_max": max(recv),
            "dgram_tx": statistics.mean(dgr),
            "cpu": statistics.mean(cpu) if cpu else float("nan"), "cpu_max": max(cpu) if cpu else float("nan"),
            "rss": statistics.mean(rss) / 1024.0, "rss_max": max(rss) / 1024.0,
            "complete_at_end": still,
        }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16,64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--window", type=float, default=10.0, help="steady-state window (s)")
    ap.add_argument("--settle", type=float, default=3.0, help="wait after convergence before the window (s)")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up on convergence after this (s)")
    ap.add_argument("--family", default="ipv4", choices=["ipv4", "ipv6"])
    ap.add_argument("--args", default="", help="extra discd arguments, one string")
    a = ap.parse_args()
    prob = netlab.env_problem()
    if prob:
        sys.exit("discovery_bench: cannot run: " + prob)
    bindir = netlab.find_bindir()
    prob = netlab.discd_problem(bindir)
    if prob:
        sys.exit("discovery_bench: " + prob)
    netlab.install_cleanup_handlers()
    sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
    if any(s < 2 or s > 250 for s in sizes):
        sys.exit("sizes must be 2..250 (one /24)")
    extra = a.args.split()
    print("# discd: %s  family %s  args %r  repeats %d  window %.0fs  cores %d" % (
        bindir, a.family, " ".join(extra), a.repeats, a.window, os.cpu_count()), flush=True)
    rows = []
    for n in sizes:
        runs = []
        for r in range(a.repeats):
            res = one_run(n, extra, a.window, a.settle, a.family, a.timeout)
            print("# N=%d run %d: converge %.2fs (poll %.2fs), sent %.1f pkt/s, recv %.1f pkt/s, "
                  "cpu %.1f%% (max %.1f%%), rss %.1f MiB, complete at end %d/%d" % (
                      n, r + 1, res["converge"], res["converge_poll"], res["sent"], res["recv"], res["cpu"],
                      res["cpu_max"], res["rss"], res["complete_at_end"], n), flush=True)
            runs.append(res)
        conv = [x["converge"] for x in runs]
        rows.append((n, len(runs), statistics.median(conv), max(conv),
                     statistics.median(x["sent"] for x in runs), max(x["sent_max"] for x in runs),
                     statistics.median(x["recv"] for x in runs), max(x["recv_max"] for x in runs),
                     statistics.median(x["cpu"] for x in runs), max(x["cpu_max"] for x in runs),
                     statistics.median(x["rss"] for x in runs), max(x["rss_max"] for x in runs)))
    print()
    print("| N | runs | converge median (s) | converge max (s) | sent pkt/s/node (max) | "
          "recv pkt/s/node (max) | CPU %/daemon (max) | RSS MiB/daemon (max) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %d | %d | %.2f | %.2f | %.1f (%.1f) | %.1f (%.1f) | %.1f (%.1f) | %.1f (%.1f) |" % r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
