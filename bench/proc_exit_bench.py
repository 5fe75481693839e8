#!/usr/bin/env python3
"""Process-exit notice benchmark (docs/EVENTS.md, "Watching processes"): N discd daemons, one
namespace each on one Linux bridge (veth); a watched process on n1 is SIGKILLed K times, and every
other node has a subscriber on its event stream. Per kill and per subscriber: the time from the
kill (stamped right before os.kill) to the PROC_EXIT line being readable on the subscriber's
socket (one listener thread selects on all of them and stamps each batch of readable sockets when
select returns). Prints the median, p99 and max over all kills x subscribers.

  sudo python3 bench/proc_exit_bench.py [--nodes 16] [--kills 100] [--json FILE]

Binaries: $DISCD_BIN (a directory), else .build/release, else .build/debug. Needs root; cleans up
every namespace it made.
"""
import argparse
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "netns"))
import netlab  # noqa: E402
from netlab import wait_until  # noqa: E402
from test_detector import Cluster  # noqa: E402



class Listeners(threading.Thread):
    """Raw subscribers on the daemons' control sockets, all served by one selector loop (no GIL
    contention between reader threads): (arrival ns, pid) of every PROC_EXIT, per socket."""

    def __init__(self, paths):
        super().__init__(daemon=True)
        self.sel = selectors.DefaultSelector()
        self.got = []
        self.acked = [threading.Event() for _ in paths]
        self.socks = []
        for i, path in enumerate(paths):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            s.sendall(b'{"op":"subscribe","spaces":["discd.process"]}\n')
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, i)
            self.socks.append(s)
            self.got.append([])
        self.bufs = [b""] * len(paths)
        self.stop = False

    def run(self):
        while not self.stop:
            ready = self.sel.select(0.2)
            # One arrival time for every socket select() found readable: each event was in its socket
            # by then (stamping after each recv and parse would charge the later sockets for this
            # thread's own work on the earlier ones).
            t = time.time_ns()
            for key, _ in ready:
                i = key.data
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    continue
                if not data:
                    self.sel.unregister(key.fileobj)
                    continue
                self.bufs[i] += data
                while b"\n" in self.bufs[i]:
                    line, self.bufs[i] = self.bufs[i].split(b"\n", 1)
                    o = json.loads(line)
                    if o.get("ok"):
                        self.acked[i].set()
                    elif o.get("name") == "PROC_EXIT":
                        self.got[i].append((t, o["payload"]["pid"]))


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--json")
    a = ap.parse_args()
    with netlab.Lab(label="procbench") as lab:
        c = Cluster(lab, a.nodes)
        conv = c.wait_converged(timeout=max(10, a.nodes * 0.5))
        assert conv is not None, "maps not complete"
        ds = c.daemons
        L = Listeners([d.control for d in ds])
        L.start()
        for ev in L.acked:
            assert ev.wait(5), "a subscriber was not acknowledged"
        listeners = L.got[1:]     # the other nodes; L.got[0] is the watching node's own stream
        discd = os.path.join(lab.bindir, "discd")
        lat_ms, local_ms, missing = [], [], 0
        t_start = time.monotonic()
        for k in range(a.kills):
            before = [len(g) for g in listeners]
            before0 = len(L.got[0])
            w = subprocess.Popen(c.nodes[0].exec_argv([discd, "watch", "--control", ds[0].control, "--tag",
                                                       str(k % 65536), "--", "sleep", "30"]),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # The watched child, once the daemon has registered it (its process.watching log event).
            child = None

            def registered():
                nonlocal child
                kids = subprocess.run(["pgrep", "-P", str(w.pid)], capture_output=True, text=True).stdout.split()
                if not kids:
                    return False
                child = int(kids[0])
                with open(ds[0].log, errors="replace") as f:
                    return any('"event":"process.watching"' in l and '"pid":%d,' % child in l for l in f)
            assert wait_until(registered, 5.0, 0.005)[0], "watch of the child never registered"
            t_kill = time.time_ns()
            os.kill(child, 9)
            w.wait(10)
            ok, _ = wait_until(lambda: all(len(g) > b for g, b in zip(listeners, before)), 5.0, 0.002)
            for g, b in zip(listeners, before):
                if len(g) > b:
                    lat_ms.append((g[b][0] - t_kill) / 1e6)
                else:
                    missing += 1
            if len(L.got[0]) > before0:
                local_ms.append((L.got[0][before0][0] - t_kill) / 1e6)
        wall = time.monotonic() - t_start
        L.stop = True
        L.join(2)
    res = dict(nodes=a.nodes, kills=a.kills, samples=len(lat_ms), missing=missing,
               median_ms=statistics.median(lat_ms), p99_ms=pct(lat_ms, 0.99), max_ms=max(lat_ms), min_ms=min(lat_ms),
               wall_s=wall, convergence_s=conv, local_median_ms=statistics.median(local_ms))
    print("N=%d, %d kills x %d subscribers: %d samples, %d missing; SIGKILL -> PROC_EXIT at the subscriber: "
          "median %.3f ms, p99 %.3f ms, max %.3f ms, min %.3f ms; on the watching node itself median %.3f ms (%.0f s)" % (
              a.nodes, a.kills, len(listeners), len(lat_ms), missing, res["median_ms"], res["p99_ms"], res["max_ms"],
              res["min_ms"], res["local_median_ms"], wall))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
