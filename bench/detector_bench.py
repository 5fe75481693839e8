#!/usr/bin/env python3
"""Failure-detection benchmark of discd on a real (namespaced) network, with the
scenarios and columns of ../shared/bench/peers (Serf, Corosync) so the numbers compare.

  sudo python3 bench/detector_bench.py [--sizes 16] [--repeats 3] [--loss 10,30] [--window 60]
                                       [--settle S] [--args "--period 100ms ..."] [--json FILE]

Per size N (all daemons started at once on one Linux bridge, one namespace each):
  * runs 1..repeats: convergence (start -> the last member joined in every map, from the
    daemons' own log stamps); then SIGKILL one victim (n2, nN, n(N/2+1), ... in turn) and per
    survivor the time of its first `-> dead` line for the victim; median and max over the
    survivors per run, then the median over runs (as peerbench does).
  * run 1 only, before the kill: a --window s quiet window at 0 % loss: false deaths, suspicions,
    CPU % per daemon (utime+stime of the PID, all threads), RSS (VmRSS) at the end, packets/s each
    node sent/received (its bridge-side veth counters: rx there = node sent, all traffic).
  * one extra run with --loss levels: --window s of random ingress loss on every node's e0
    (nftables netdev ingress `numgen random mod 100 < P drop`, as peerbench; no netem here),
    counting false deaths (`-> dead` lines, observer x member), distinct members, suspicions
    (status `suspicions` counter deltas, summed), then the time until all maps are all-alive again.
Output: progress lines, then a markdown table comparable to the peers README table.
Binaries: $DISCD_BIN, else .build/release, .build-det/release, .build/debug (the first with discd).
Needs root; cleans up every namespace it made.
"""
import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "netns"))
import netlab  # noqa: E402
from netlab import proc_cpu_ticks, proc_rss_kb  # noqa: E402
import test_detector as td  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")

# peers README (../shared/bench/peers/README.md), same machine, 60 s windows: for the comparison rows
PEERS_N16 = [
    "| serf (peers README) | 16 | – | 0.268 | 6.97 | 7.13 | 0 (0) / 0 (2) / 0 (83) | 0.20 | 14.9 | 10.6 (5.0/5.6) |",
    "| corosync (peers README, stagger 0.2) | 16 | – | 3.17 | 25.72 | 25.72 | 0 (0) / – / – | 0.08 | 14.5 | 1.4 (0.5/0.9) |",
]


def pick_bindir():
    env = os.environ.get("DISCD_BIN")
    if env:
        return env, "DISCD_BIN"
    for d, kind in ((".build/release", "release"), (".build-det/release", "release"), (".build/debug", "debug")):
        p = os.path.join(REPO, d)
        if os.access(os.path.join(p, "discd"), os.X_OK) and os.access(os.path.join(p, "showmap"), os.X_OK):
            return p, kind
    return None, None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def log(msg):
    print(msg, flush=True)


def steady(c, window):
    """Quiet window at 0 % loss: per-node cost + false deaths + suspicions."""
    n = len(c.daemons)
    ports = ["p-" + nd.name for nd in c.nodes]
    p0 = c.lan.port_stats()
    k0 = [proc_cpu_ticks(d.pid) for d in c.daemons]
    s0 = c.counter_sum("suspicions")
    t0 = time.monotonic()
    td._quiet_window(c, window)
    t1 = time.monotonic()
    p1 = c.lan.port_stats()
    k1 = [proc_cpu_ticks(d.pid) for d in c.daemons]
    dt = t1 - t0
    time.sleep(1.1)
    per = []
    for i, d in enumerate(c.daemons):
        a, b = p0[ports[i]], p1[ports[i]]
        per.append(dict(cpu_pct=100.0 * (k1[i] - k0[i]) / CLK_TCK / dt, rss_kb=proc_rss_kb(d.pid),
                        sent_pps=(b[0] - a[0]) / dt, recv_pps=(b[1] - a[1]) / dt,
                        sent_Bps=(b[2] - a[2]) / dt, recv_Bps=(b[3] - a[3]) / dt,
                        late_ticks=c.status(i).get("late_ticks", 0)))
    fd = c.false_deaths(t0, t1)
    return dict(window_s=round(dt, 1), fp=len(fd), fp_detail=fd[:20],
                suspicions=c.counter_sum("suspicions") - s0, suspect_lines=c.suspect_lines(t0, t1),
                cpu_pct_mean=statistics.mean(p["cpu_pct"] for p in per),
                cpu_pct_max=max(p["cpu_pct"] for p in per),
                rss_mb_mean=statistics.mean(p["rss_kb"] or 0 for p in per) / 1024.0,
                sent_pps=statistics.mean(p["sent_pps"] for p in per),
                recv_pps=statistics.mean(p["recv_pps"] for p in per),
                Bps=statistics.mean(p["sent_Bps"] + p["recv_Bps"] for p in per),
                late_ticks=sum(p["late_ticks"] for p in per), n=n)


def detect_run(n, rep, victim, args, do_steady, window):
    """One cluster: converge, [steady window], SIGKILL victim (1-based), detection per survivor."""
    res = dict(run=rep, n=n, victim=victim)
    with netlab.Lab(label="detbench") as lab:
        c = td.Cluster(lab, n, args=args)
        conv = c.wait_converged(timeout=max(td.CONVERGE_BOUND, n * 0.5))
        res["convergence_s"] = conv
        if conv is None:
            log("  [N=%d run%d] maps not complete within the timeout" % (n, rep))
            return res
        c.settle()
        if do_steady:
            st = steady(c, window)
            res["steady"] = st
            log("  [N=%d run%d] steady %.0fs: FP %d, suspicions %d, cpu %.2f %%/node (max %.2f), rss %.1f MB, "
                "pkts/s/node %.1f (tx %.1f / rx %.1f), late_ticks %d" % (
                    n, rep, st["window_s"], st["fp"], st["suspicions"], st["cpu_pct_mean"], st["cpu_pct_max"],
                    st["rss_mb_mean"], st["sent_pps"] + st["recv_pps"], st["sent_pps"], st["recv_pps"],
                    st["late_ticks"]))
        v = victim - 1
        t_ready = time.monotonic()
        t_kill = c.kill(v)
        found = c.wait_detected([v], t_kill, timeout=td.DETECT_WAIT)
        surv = c.survivors([v])
        a = c.addrs[v]
        lat = [found[(i, a)] - t_kill for i in surv if (i, a) in found]
        res["detect_missing"] = [c.nodes[i].name for i in surv if (i, a) not in found]
        res["detect_per_node_s"] = {c.nodes[i].name: round(found[(i, a)] - t_kill, 3) for i in surv if (i, a) in found}
        if lat:
            res.update(detect_median_s=statistics.median(lat), detect_max_s=max(lat), detect_min_s=min(lat))
        res["false_deaths_after_kill"] = c.false_deaths(t_ready, victims=[v])
        log("  [N=%d run%d] convergence %.2fs; kill n%d: detection median %s max %s min %s, missing %s%s" % (
            n, rep, conv, victim, _f(res.get("detect_median_s")), _f(res.get("detect_max_s")),
            _f(res.get("detect_min_s")), res["detect_missing"],
            ("; FALSE deaths " + str(res["false_deaths_after_kill"])) if res["false_deaths_after_kill"] else ""))
    return res


def loss_run(n, loss, args, window):
    res = dict(run="loss", n=n)
    with netlab.Lab(label="detbench-loss") as lab:
        c = td.Cluster(lab, n, args=args)
        conv = c.wait_converged(timeout=max(td.CONVERGE_BOUND, n * 0.5))
        res["convergence_s"] = conv
        if conv is None:
            log("  [N=%d loss] maps not complete within the timeout" % n)
            return res
        c.settle()
        for pct in loss:
            s0 = c.counter_sum("suspicions")
            t0 = time.monotonic()
            td.set_loss(c.nodes, pct)
            td._quiet_window(c, window)
            seen, dropped = td.loss_counters(c.nodes)
            td.set_loss(c.nodes, 0)
            t1 = time.monotonic()
            time.sleep(1.1)
            fd = c.false_deaths(t0, t1)
            heal = None
            bad = c.wait_maps([], 30.0)
            if not bad:
                heal = max(0.0, time.monotonic() - t1)
            causes = {k: sum(1 for x in fd if x[3] == k) for k in ("declared", "notice", "other")}
            r = dict(fp=len(fd), distinct=len({x[1] for x in fd}), detail=fd[:20], causes=causes,
                     suspicions=c.counter_sum("suspicions") - s0, suspect_lines=c.suspect_lines(t0, t1),
                     measured_loss_pct=(100.0 * dropped / seen) if seen else None, pkts_seen=seen,
                     heal_s=heal, not_healed=bad or None)
            res["loss%d" % pct] = r
            log("  [N=%d loss %d%%] measured %.1f%% of %d pkts: false deaths %d (distinct %d; by cause: detector "
                "declared %d, notice %d, other/expiry %d), suspicions %d (%d suspect lines); maps all alive again %s" % (
                    n, pct, r["measured_loss_pct"] or -1, seen, r["fp"], r["distinct"], causes["declared"],
                    causes["notice"], causes["other"], r["suspicions"],
                    r["suspect_lines"], ("%.1fs after" % heal) if heal is not None else "NOT within 30s: %s" % bad))
    return res


def _f(x, fmt="%.2f"):
    return "–" if x is None else fmt % x


def summarize(n, runs, loss_res, loss, kind, bindir):
    det = [r for r in runs if "victim" in r]
    st = next((r["steady"] for r in runs if "steady" in r), None)
    s = dict(n=n, binary=kind, bindir=bindir,
             convergence_s_runs=[r.get("convergence_s") for r in runs + ([loss_res] if loss_res else [])],
             detect_median_s_runs=[r.get("detect_median_s") for r in det],
             detect_max_s_runs=[r.get("detect_max_s") for r in det],
             detect_missing=[r.get("detect_missing") for r in det])
    s["convergence_s_median"] = med(s["convergence_s_runs"])
    s["detect_median_s"] = med(s["detect_median_s_runs"])
    s["detect_max_s"] = med(s["detect_max_s_runs"])
    s["detect_worst_s"] = max([x for x in s["detect_max_s_runs"] if x is not None], default=None)
    if st:
        s["steady"] = st
    if loss_res:
        for pct in loss:
            if "loss%d" % pct in loss_res:
                s["loss%d" % pct] = loss_res["loss%d" % pct]
    return s


def table(summaries, loss, window, kind):
    hdr = ("| impl | N | binary | convergence s (median) | detect median s | detect max s | FP 0%% / %s loss (susp) "
           "| CPU %%/node | RSS MB | pkts/s/node (tx/rx) |" % " / ".join("%d%%" % p for p in loss))
    out = [hdr, "|" + "---|" * 10]
    for s in summaries:
        st = s.get("steady") or {}
        fp = ["%s (%s)" % (st.get("fp", "–"), st.get("suspicions", "–"))]
        for p in loss:
            r = s.get("loss%d" % p)
            fp.append("%d (%d)" % (r["fp"], r["suspicions"]) if r else "–")
        pps = ("%.1f (%.1f/%.1f)" % (st["sent_pps"] + st["recv_pps"], st["sent_pps"], st["recv_pps"])) if st else "–"
        out.append("| discd | %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            s["n"], kind, _f(s.get("convergence_s_median"), "%.3f"), _f(s.get("detect_median_s")),
            _f(s.get("detect_max_s")), " / ".join(fp), _f(st.get("cpu_pct_mean")),
            _f(st.get("rss_mb_mean"), "%.1f"), pps))
    if any(s["n"] == 16 for s in summaries):
        out += PEERS_N16
    out.append("")
    for s in summaries:
        for p in loss:
            r = s.get("loss%d" % p)
            if r and r["fp"]:
                out.append("N=%d, %d%% loss: the %d false deaths by cause: this node's detector declared %d, "
                           "learned from a dead notice %d, other (no detector line: discovery expiry of a silent "
                           "member) %d." % (s["n"], p, r["fp"], r["causes"]["declared"], r["causes"]["notice"],
                                            r["causes"]["other"]))
    out.append("Windows %.0f s. Detection = SIGKILL -> survivor's first `-> dead` line for the victim (daemon log "
               "stamps, calibrated to the bench clock, upper bounds); per run median/max over survivors, then the "
               "median over runs (worst single survivor: %s). FP = `-> dead` lines for live nodes (observer x "
               "member); susp = suspicions (status counters, all nodes). pkts/s from bridge-port veth counters "
               "(all traffic: announces + heartbeats)." % (
                   window, ", ".join("N=%d %s s" % (s["n"], _f(s.get("detect_worst_s"))) for s in summaries)))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loss", default="10,30", help="comma list of ingress loss %% for the FP run ('' = none)")
    ap.add_argument("--window", type=float, default=60.0, help="seconds of each quiet / loss window")
    ap.add_argument("--settle", type=float, default=None, help="seconds after convergence before measuring "
                    "(default: the startup grace δ+1s+log2(N)·η, plus 1 s)")
    ap.add_argument("--args", default="", help="extra discd arguments, e.g. \"--period 100ms --timeout 500ms\"")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("detector_bench: needs root (network namespaces)")
    p = netlab.env_problem()
    if p:
        sys.exit("detector_bench: " + p)
    if td.nft_problem() and a.loss.strip():
        sys.exit("detector_bench: " + td.nft_problem())
    bindir, kind = pick_bindir()
    prob = netlab.discd_problem(bindir)
    if prob:
        sys.exit("detector_bench: " + prob)
    os.environ["DISCD_BIN"] = bindir
    netlab.install_cleanup_handlers()
    # netlab.Lab() picks the binaries via find_bindir(), which honours $DISCD_BIN
    sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
    loss = [int(x) for x in a.loss.split(",") if x.strip()]
    extra = shlex.split(a.args)
    log("# discd binaries: %s (%s build)%s; window %.0f s; loss %s; repeats %d" % (
        bindir, kind, (" args " + a.args) if a.args else "", a.window, loss or "none", a.repeats))
    summaries, raw = [], []
    t_all = time.monotonic()
    for n in sizes:
        if a.settle is not None:
            td.SETTLE = a.settle
        else:
            td.SETTLE = td.TIMEOUT + 1.0 + math.log2(max(n, 2)) * td.PERIOD + 1.0
        victims = [2, n, n // 2 + 1, 3, n - 1]
        runs = []
        for rep in range(1, a.repeats + 1):
            try:
                runs.append(detect_run(n, rep, victims[(rep - 1) % len(victims)], extra, rep == 1, a.window))
            except (AssertionError, netlab.LabError) as e:
                log("  [N=%d run%d] ERROR %s" % (n, rep, e))
                runs.append(dict(run=rep, n=n, error=str(e)))
        lr = None
        if loss:
            try:
                lr = loss_run(n, loss, extra, a.window)
            except (AssertionError, netlab.LabError) as e:
                log("  [N=%d loss] ERROR %s" % (n, e))
                lr = dict(run="loss", n=n, error=str(e))
        s = summarize(n, runs, lr, loss, kind, bindir)
        summaries.append(s)
        raw.append(dict(summary=s, runs=runs, loss_run=lr))
    log("# total %.0f s" % (time.monotonic() - t_all))
    print()
    print(table(summaries, loss, a.window, kind))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(raw, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
