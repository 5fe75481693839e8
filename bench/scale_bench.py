#!/usr/bin/env python3
"""Scale benchmark (issue #9): runs `discd simulate` (release build) and prints, per cluster size
and loss level, the figures the issue asks for:

- convergence: time from the last start until every live map holds exactly the live set;
- start storm: datagrams sent per node in the first 10 s, heartbeats excluded (by type as well);
- the time until the last map learned of each join (restart into the running cluster), leave and
  death: p50 / p99 / max over the events;
- steady load after convergence: messages/s and bytes/s sent per node;
- a partition of the cluster in two halves for PART_S seconds, then the heal: time until every map
  holds every live node again;
- wall time and peak RSS of the simulator.

    bench/scale_bench.py                         # 1,000 and 3,000 nodes, 0/2/5 % loss
    bench/scale_bench.py --sizes 10000 --loss 5 --one-run   # one run per row (docs/SIMULATOR.md)

--one-run: one simulation per row instead of three. The crashes, stops and restarts come at 12 s,
after the first 10 s (the storm is counted there) and after the settled window (convergence to
12 s, the steady load); no partition run (at 10,000 nodes each side would declare 5,000 deaths,
which the simulator cannot run in reasonable time).

Figures are virtual time (the simulator runs the real protocol cores; docs/SIMULATOR.md).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(scratch):
    print("== building discd (release, scratch %s)" % scratch, flush=True)
    subprocess.run(["swift", "build", "-c", "release", "--scratch-path", scratch, "--product", "discd"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return os.path.join(ROOT, scratch, "release", "discd")


def simulate(binary, args):
    t0 = time.monotonic()
    p = subprocess.run([binary, "simulate", "--json", "--progress", "0"] + args, cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit("discd simulate %s failed (%d): %s" % (" ".join(args), p.returncode, p.stderr[-2000:]))
    r = json.loads(p.stdout)
    r["_wall"] = time.monotonic() - t0
    return r


def ms(v):
    return "-" if v is None else ("%.0f" % v)


def pct(d, kind):
    e = (d.get("last_map_learned") or {}).get(kind) or {}
    lat = e.get("latency")
    if not e.get("events"):
        return "-"
    inc = e.get("incomplete", 0)
    s = "%s/%s/%s" % (ms(lat and lat["p50_ms"]), ms(lat and lat["p99_ms"]), ms(lat and lat["max_ms"])) if lat else "none"
    return s + (" (%d never)" % inc if inc else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,3000")
    ap.add_argument("--loss", default="0,2,5", help="percent, comma-separated")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--events", type=int, default=10, help="crashes, and as many clean stops, then all restart")
    ap.add_argument("--spread", default="1s", help="start spread")
    ap.add_argument("--partition-s", type=int, default=5)
    ap.add_argument("--scratch", default=".build-sim")
    ap.add_argument("--binary", help="use this discd instead of building one")
    ap.add_argument("--one-run", action="store_true", help="one simulation per row (large sizes; see above)")
    a = ap.parse_args()
    binary = a.binary or build(a.scratch)
    spread_ms = float(a.spread[:-2]) if a.spread.endswith("ms") else float(a.spread[:-1]) * 1000

    print("\nsizes %s, loss %s %%, seed %d, %d crashes + %d stops then restarts, start spread %s\n" % (
        a.sizes, a.loss, a.seed, a.events, a.events, a.spread))
    head = ("%6s %5s | %9s | %7s | %-17s | %-17s | %-17s | %12s | %8s | %7s %7s" % (
        "nodes", "loss", "conv ms", "storm", "join p50/p99/max", "leave p50/p99/max", "death p50/p99/max",
        "steady m/s B/s", "heal ms", "wall s", "RSS MiB"))
    print(head)
    print("-" * len(head))
    for n in [int(x) for x in a.sizes.split(",")]:
        for loss in [float(x) for x in a.loss.split(",")]:
            common = ["--nodes", str(n), "--loss", "%g" % (loss / 100), "--seed", str(a.seed), "--start-spread", a.spread]
            events = ["--crash", str(a.events), "--stop", str(a.events), "--restart-after", "3s", "--duration", "20s"]
            if a.one_run:
                r = simulate(binary, common + events + ["--crash-at", "12s"])
                steady = r
                sb = r.get("steady_before_events") or {}
                steady_load = (sb.get("sent_msgs_per_node_s", 0), sb.get("sent_bytes_per_node_s", 0))
            else:
                r = simulate(binary, common + events)
                # The storm and the load from a run without crashes (the crash run's deaths fall in its first 10 s).
                steady = simulate(binary, common + ["--crash", "0", "--duration", "20s"])
                steady_load = (steady.get("sent_msgs_per_node_s", 0), steady.get("sent_bytes_per_node_s", 0))
            conv = r.get("convergence_ms")
            conv_after_last = None if conv is None else max(0.0, conv - spread_ms)
            storm = steady.get("storm_first_10s_per_node")
            runs = [r, steady]
            heal_ms = None
            if not a.one_run:
                part_at = 10
                heal = simulate(binary, common + ["--crash", "0", "--partition", "%ds+%ds" % (part_at, a.partition_s),
                                                  "--duration", "%ds" % (part_at + a.partition_s + 15)])
                runs.append(heal)
                end_ms = (part_at + a.partition_s) * 1000
                for e in heal.get("epochs", []):
                    if abs(e["since_ms"] - end_ms) < 1:
                        heal_ms = None if e["converged_ms"] is None else e["converged_ms"] - e["since_ms"]
            rss = max(x.get("peak_rss_bytes") or 0 for x in runs) / 1048576
            print("%6d %4g%% | %9s | %7s | %-17s | %-17s | %-17s | %5.1f %6.0f | %8s | %7.1f %7.0f" % (
                n, loss, ms(conv_after_last), "-" if storm is None else "%.1f" % storm, pct(r, "join"), pct(r, "leave"),
                pct(r, "death"), steady_load[0], steady_load[1],
                "not run" if a.one_run else (ms(heal_ms) if heal_ms is not None else "never"), r["_wall"], rss), flush=True)
            if storm is not None:
                by = steady.get("storm_first_10s_by_type") or {}
                print("         storm by type (all nodes): " + ", ".join("%s %d" % (k, v) for k, v in by.items()
                                                                         if v and k != "heartbeat"))
    print("\nconv: after the last start (the start spread is subtracted from the time after the first start); "
          "storm: datagrams per node beyond heartbeats in the first 10 s of the run without crashes (--one-run: before its events); "
          "join/leave/death: ms until the last map "
          "learned of each event (p50/p99/max over events); steady: per node after convergence; heal: after a "
          "%d s partition in two halves; wall: the crash run." % a.partition_s)


if __name__ == "__main__":
    main()
