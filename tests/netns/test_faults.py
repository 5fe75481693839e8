"""Fault tests (issue 13) on real daemons in namespaces: a partition cut in the bridge and healed,
a node restarted with a higher incarnation while its old life's datagrams are replayed, the map
file under thousands of SIGKILLs and corrupt at start, and a 60 s flood of forged and garbage
datagrams from one namespace.  Each test reads only `showmap --json`, the status file's typed
counters, the JSON log's event names and process state; each states its bounds in its code and
its figures in its PASS line."""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

from gaplib import drops, state_is, status_int, wait_all
from netlab import GROUP4, MCAST_TOOL, PORT, Daemon, find_node, proc_cpu_ticks, proc_rss_kb, wait_until
from test_gaps import DETECT_BOUND, converge, one_lan, settle
from test_security import keygen

PARTITION_BOUND = 12.0   # s: after the cut, each side has the whole other side dead (4 deaths, one ring each side)
HEAL_BOUND = 8.0         # s: after the heal, every map holds all 8 nodes alive (next announce + refutation)
RESTART_BOUND = 5.0      # s: a restarted node is alive again, at its new incarnation, in every map
TORTURE_KILLS = int(os.environ.get("DISCD_TORTURE_KILLS", "2000"))
TORTURE_LIMIT = 420.0    # s: wall-time limit of the SIGKILL loop (a bound, not a target)
FLOOD_SECONDS = float(os.environ.get("DISCD_FLOOD_SECONDS", "60"))
FLOOD_RSS_GROWTH_KB = 32 * 1024   # a daemon's RSS may not grow by more than this over the flood
FLOOD_DETECT_BOUND = 3.0          # s: a real SIGKILL during the flood is dead in every map


def json_events(d, name):
    """Records of the daemon's JSON log (stderr, --log-format json) whose event is `name`."""
    out = []
    for l in d.log_lines():
        if not l.startswith("{"):
            continue
        try:
            ev = json.loads(l)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("event") == name:
            out.append(ev)
    return out


def all_states(daemons, addrs, states):
    def pred(m):
        return all((find_node(m, a) or {}).get("state") in states for a in addrs)
    return pred


# --------------------------------------------------------------------------- partition and heal

def test_partition_and_heal(ctx):
    """8 nodes on one LAN split 4+4 by cutting the link between two bridges: each side marks the other dead, keeps its own; after the heal every map has all 8 alive, no restart"""
    ctx.need_discd()
    with ctx.lab() as lab:
        lan, nodes = one_lan(lab, 8, y=11)
        a_nodes, b_nodes = nodes[:4], nodes[4:]
        # Two bridges joined by one veth pair: B's ports move to br1; cutting the pair partitions the LAN.
        ns = lan.ns
        lab_sh = lambda *a: subprocess.run(["ip", "-n", ns] + list(a), check=True, capture_output=True, timeout=10)
        lab_sh("link", "add", "br1", "type", "bridge", "stp_state", "0", "mcast_snooping", "0", "forward_delay", "0")
        lab_sh("link", "add", "cutA", "type", "veth", "peer", "name", "cutB")
        lab_sh("link", "set", "cutA", "master", "br0")
        lab_sh("link", "set", "cutB", "master", "br1")
        for n in b_nodes:
            lab_sh("link", "set", n.ifaces[0].port, "nomaster")
            lab_sh("link", "set", n.ifaces[0].port, "master", "br1")
        for l in ("br1", "cutA", "cutB"):
            lab_sh("link", "set", l, "up")
        ds = [lab.start_daemon(n) for n in nodes]
        da, db = ds[:4], ds[4:]
        a_addr, b_addr = [n.ip4 for n in a_nodes], [n.ip4 for n in b_nodes]
        conv = converge(ds, a_addr + b_addr)
        time.sleep(settle(8))
        pids = [d.pid for d in ds]

        lab_sh("link", "set", "cutA", "down")
        t_cut = time.monotonic()
        seen_a = wait_all(da, all_states(da, b_addr, ("dead",)), PARTITION_BOUND)
        seen_b = wait_all(db, all_states(db, a_addr, ("dead",)), PARTITION_BOUND)
        missing = [d.node.name for d in ds if d not in seen_a and d not in seen_b]
        assert not missing, "after %.0fs these nodes still do not have the other side dead: %s" % (
            PARTITION_BOUND, missing)
        t_split = time.monotonic() - t_cut
        # Nobody lost a node of its own side.
        for group, own in ((da, a_addr), (db, b_addr)):
            for d in group:
                m = d.showmap_json(cached=False)
                bad = [a for a in own if (find_node(m, a) or {}).get("state") != "alive"]
                assert not bad, "%s lost nodes of its own side during the partition: %s" % (d.node.name, bad)
        deaths = sum(status_int(d, "deaths_declared") for d in ds)

        lab_sh("link", "set", "cutA", "up")
        heal = converge(ds, a_addr + b_addr, bound=HEAL_BOUND, what="after the heal: ")
        for d, pid in zip(ds, pids):
            assert d.alive() and d.pid == pid, "%s restarted or exited (%s)" % (d.node.name, d.proc.poll())
        # Stays whole: a second look 2 s later.
        time.sleep(2.0)
        heal2 = converge(ds, a_addr + b_addr, bound=1.0, what="2 s after the heal: ")
        refutations = sum(status_int(d, "refutations") for d in ds)
        return ("8 converged in %.2fs; cut: each side had the other 4 dead within %.2fs (max per side A %.2fs, "
                "B %.2fs; deaths declared %d), own side kept; healed: all 8 alive in every map %.2fs after the "
                "link came back (%.2fs later still), %d refutations, 0 restarts, 0 nodes lost" % (
                    conv, t_split, max(seen_a.values()), max(seen_b.values()), deaths,
                    heal, heal2 or 0.0, refutations))


# --------------------------------------------------------------------------- restart, old incarnation

def test_restart_higher_incarnation_old_ignored(ctx):
    """a SIGKILLed node restarted with the same ID comes back at a higher incarnation in every map; its old life's captured announces, replayed, are dropped as stale_incarnation and change nothing"""
    ctx.need_discd()
    with ctx.lab() as lab:
        _, nodes = one_lan(lab, 5, y=12)
        # --no-rdma: with a second transport the shell drops byte-identical copies of recent
        # datagrams (as `duplicates`) before the node sees them; here the node's own check is tested.
        ds = [lab.start_daemon(n, args=["--no-rdma"]) for n in nodes[:4]]
        addrs = [n.ip4 for n in nodes[:4]]
        converge(ds, addrs)
        time.sleep(settle(4))
        victim = nodes[1].ip4
        old = find_node(ds[0].showmap_json(cached=False), victim)
        assert old is not None
        old_inc, old_id = old["incarnation"], old["id"]
        # An eavesdropper (n5, no daemon) captures the group for longer than the longest announce
        # interval (3 s jittered to at most 1.5 x): announces of n2's first life. 4 s missed them
        # about one run in ten.
        window = 1.5 * 3.0 + 0.5
        cap, lines = lab.capture(nodes[4], window)
        from_victim = sum(1 for src, _ in lines if src == victim)
        assert from_victim >= 1, "captured nothing from %s in %.1f s (%d datagrams)" % (victim, window, len(lines))

        ds[1].proc.kill()
        ds[1].proc.wait(5)
        others = [ds[0], ds[2], ds[3]]
        seen = wait_all(others, state_is(victim, "dead"), DETECT_BOUND)
        assert len(seen) == 3, "n2 not dead everywhere within %.1fs" % DETECT_BOUND
        t0 = time.monotonic()
        again = lab.start_daemon(nodes[1], args=["--no-rdma"], tag="-2")

        def back(m):
            n = find_node(m, victim)
            return n is not None and n["state"] == "alive" and n["incarnation"] > old_inc
        seen = wait_all(others + [again], back, RESTART_BOUND)
        assert len(seen) == 4, "restarted n2 not alive at a higher incarnation everywhere within %.1fs: %s" % (
            RESTART_BOUND, [find_node(d.showmap_json(cached=False), victim) for d in others])
        t_back = time.monotonic() - t0
        new = find_node(ds[0].showmap_json(cached=False), victim)
        assert new["id"] == old_id, "n2 came back with id %s, had %s" % (new["id"], old_id)
        # The status file (rewritten every second) names the new life's incarnation too.
        ok, _ = wait_until(lambda: status_int(again, "incarnation") == new["incarnation"], 3.0, 0.1)
        assert ok, "status incarnation %s, map %s" % (status_int(again, "incarnation"), new["incarnation"])

        before = [drops(d, "stale_incarnation") for d in others]
        r = nodes[4].run([sys.executable, MCAST_TOOL, "replay", GROUP4, str(PORT), "e0", cap], timeout=30)
        assert "SENT %d" % len(lines) in r.stdout, r.stdout
        time.sleep(1.0)
        gained = [drops(d, "stale_incarnation") - b for d, b in zip(others, before)]
        assert all(g >= from_victim for g in gained), \
            "each node should drop the %d replayed datagrams of n2's old life as stale_incarnation: +%s" % (
                from_victim, gained)
        for d in others + [again]:
            n = find_node(d.showmap_json(cached=False), victim)
            assert n["state"] == "alive" and n["incarnation"] == new["incarnation"], \
                "%s: n2 is now %s (incarnation %s, expected %s)" % (d.node.name, n["state"], n["incarnation"],
                                                                    new["incarnation"])
        return ("n2 (id %d) killed at incarnation %d, restarted: alive at %d in all 4 maps after %.2fs, same id; "
                "%d captured datagrams of its old life replayed: stale_incarnation +%s, map unchanged" % (
                    old_id, old_inc, new["incarnation"], t_back, from_victim, gained))


# --------------------------------------------------------------------------- the map file under SIGKILL

def _showmap_ok(showmap, path):
    r = subprocess.run([showmap, "-f", path, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=10)
    if r.returncode != 0:
        return False, r.stderr.strip()[:200]
    try:
        json.loads(r.stdout)
    except ValueError as e:
        return False, "invalid JSON: %s" % e
    return True, ""


def test_map_file_survives_sigkill(ctx):
    """discd SIGKILLed at a random moment of its start and first map writes, DISCD_TORTURE_KILLS (2000) times, while a reader runs showmap in a loop: every read and every post-kill check sees a whole map; a killed writer's temporary files are removed by the next start"""
    ctx.need_discd()
    with ctx.lab() as lab:
        _, nodes = one_lan(lab, 4, y=13)
        peers = [lab.start_daemon(n) for n in nodes[1:]]
        converge(peers, [n.ip4 for n in nodes[1:]])
        target = nodes[0]
        mapdir = os.path.join(target.dir, "torture")
        os.makedirs(mapdir)
        mp = os.path.join(mapdir, "discd.map")
        argv = target.exec_argv([os.path.join(lab.bindir, "discd"), "-n", "-i", "e0", "--map", mp,
                                 "--status", os.path.join(mapdir, "status.json"),
                                 "--control", os.path.join(mapdir, "control.sock"), "--no-rdma", "--no-kernel"])
        showmap = os.path.join(lab.bindir, "showmap")
        stop = threading.Event()
        reader = {"reads": 0, "bad": []}

        def read_loop():
            while not stop.is_set():
                if os.path.exists(mp):
                    ok, why = _showmap_ok(showmap, mp)
                    reader["reads"] += 1
                    if not ok and len(reader["bad"]) < 5:
                        reader["bad"].append(why)
                time.sleep(0.005)
        th = threading.Thread(target=read_loop, daemon=True)
        th.start()
        rng = random.Random(13)
        devnull = open(os.devnull, "wb")
        kills = mid_write = written = 0
        bad_after = []
        max_tmp = 0
        t0 = time.monotonic()
        try:
            while kills < TORTURE_KILLS and time.monotonic() - t0 < TORTURE_LIMIT:
                p = subprocess.Popen(argv, stdout=devnull, stderr=devnull, stdin=subprocess.DEVNULL, start_new_session=True)
                # ip netns exec -> discd: the kill lands in its start, first writes or steady state.
                time.sleep(rng.uniform(0.0, 0.12))
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
                kills += 1
                tmps = [f for f in os.listdir(mapdir) if f.startswith("discd.map.tmp.")]
                max_tmp = max(max_tmp, len(tmps))
                if tmps:
                    mid_write += 1
                if os.path.exists(mp):
                    written += 1
                    if kills % 10 == 0 or tmps:
                        ok, why = _showmap_ok(showmap, mp)
                        if not ok and len(bad_after) < 5:
                            bad_after.append("kill %d: %s" % (kills, why))
        finally:
            stop.set()
            th.join(15)
            devnull.close()
        wall = time.monotonic() - t0
        assert kills >= TORTURE_KILLS, "only %d of %d kills in %.0fs" % (kills, TORTURE_KILLS, TORTURE_LIMIT)
        assert written > kills // 2, "the map was written before only %d of %d kills" % (written, kills)
        assert mid_write > 0, "no kill of %d landed in a write (no temporary file ever left)" % kills
        assert not bad_after, "showmap after a kill: %s" % bad_after
        assert reader["reads"] > 100 and not reader["bad"], "concurrent showmap reads: %d, failed: %s" % (
            reader["reads"], reader["bad"])
        # A killed writer leaves at most its own temporary file: the next start removes it.
        assert max_tmp <= 1, "temporary files piled up across kills: %d at once" % max_tmp
        final = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        try:
            ok, _ = wait_until(lambda: os.path.exists(mp) and _showmap_ok(showmap, mp)[0] and
                               not [f for f in os.listdir(mapdir) if f.startswith("discd.map.tmp.")], 5.0, 0.1)
        finally:
            os.killpg(final.pid, signal.SIGTERM)
            final.wait(10)
        assert ok, "after the last kill a normal start did not leave one whole map and no temporaries: %s" % (
            os.listdir(mapdir))
        return ("%d SIGKILLs in %.0fs (%d with a write in flight: a temporary file left, removed by the next start), "
                "map present after %d; showmap after kills and %d concurrent reads: 0 torn or corrupt" % (
                    kills, wall, mid_write, written, reader["reads"]))


def _valid_map_bytes(lab, node):
    d = lab.start_daemon(node, args=["--no-rdma"], tag="-seed")
    ok, _ = wait_until(lambda: d.showmap_json(cached=False) is not None, 5.0, 0.05)
    assert ok, "no map written"
    d.stop()
    with open(d.map, "rb") as f:
        return f.read()


def test_corrupt_map_file_at_start(ctx):
    """a corrupt map file at start (garbage, empty, truncated, one bit flipped) is reported (map.corrupt), set aside as MAP.corrupt and replaced by a whole map; a dead writer's temporary file is removed"""
    ctx.need_discd()
    with ctx.lab() as lab:
        _, nodes = one_lan(lab, 2, y=14)
        peer = lab.start_daemon(nodes[1])
        good = _valid_map_bytes(lab, nodes[0])
        flipped = bytearray(good)
        flipped[len(good) // 2] ^= 0x10
        cases = [("garbage", os.urandom(300)), ("empty", b""), ("truncated", good[:len(good) // 2]),
                 ("bit flipped", bytes(flipped))]
        # A pid that no longer runs, for a temporary file left by a killed writer.
        p = subprocess.Popen(["true"])
        p.wait()
        dead_pid = p.pid
        out = []
        for i, (what, data) in enumerate(cases):
            tag = "-c%d" % i
            probe = Daemon(lab, nodes[0], None, tag)   # the paths start_daemon will use for this tag
            with open(probe.map, "wb") as f:
                f.write(data)
            stale = probe.map + ".tmp.%d" % dead_pid
            with open(stale, "wb") as f:
                f.write(data[:10])
            d = lab.start_daemon(nodes[0], args=["--log-format", "json", "--no-rdma"], tag=tag)
            assert d.map == probe.map
            ok, _ = wait_until(lambda: json_events(d, "map.corrupt"), 5.0, 0.05)
            assert ok, "%s: no map.corrupt event" % what
            ev = json_events(d, "map.corrupt")[0]
            assert ev.get("path") == d.map and ev.get("moved_to") == d.map + ".corrupt" and ev.get("error"), ev
            with open(d.map + ".corrupt", "rb") as f:
                assert f.read() == data, "%s: the set-aside file is not the corrupt one" % what
            ok, _ = wait_until(lambda: (find_node(d.showmap_json(cached=False), nodes[0].ip4) or {}).get("state") == "alive",
                               5.0, 0.05)
            assert ok, "%s: the corrupt map was not replaced by a whole one" % what
            assert not os.path.exists(stale), "%s: the dead writer's temporary file is still there" % what
            assert d.alive()
            out.append("%s (%s)" % (what, ev["error"][:60]))
            d.stop()
        assert peer.alive()
        return "4 corrupt files reported and replaced: " + "; ".join(out)


# --------------------------------------------------------------------------- a flood at line rate

def test_flood_of_forged_datagrams(ctx):
    """keyed 5-node cluster; one namespace floods the group and a node's heartbeat port for DISCD_FLOOD_SECONDS (60) with garbage, replayed, bit-flipped and truncated captures: no member lost, a real SIGKILL halfway is dead everywhere within 3 s, CPU and RSS stay bounded"""
    ctx.need_discd()
    with ctx.lab() as lab:
        _, nodes = one_lan(lab, 6, y=15)
        key = os.path.join(lab.workdir, "cluster.key")
        keygen(lab, key)
        ds = [lab.start_daemon(n, args=["--key-file", key, "--no-rdma"]) for n in nodes[:5]]
        addrs = [n.ip4 for n in nodes[:5]]
        converge(ds, addrs)
        time.sleep(settle(5))
        attacker = nodes[5]
        cap, captured = lab.capture(attacker, 4.0)
        assert captured, "captured nothing"

        reasons = ("too_short", "bad_magic", "bad_version", "unknown_type", "bad_cluster", "bad_length", "malformed",
                   "unauthenticated", "unknown_key", "bad_tag", "replayed")
        before = [dict((d.status_json() or {}).get("drops") or {}) for d in ds]
        cpu0 = [proc_cpu_ticks(d.pid) for d in ds]
        rss0 = [proc_rss_kb(d.pid) for d in ds]
        flood_log = os.path.join(attacker.dir, "flood.log")
        # The group port (every node) and n1's heartbeat port (unicast, port + 1).
        flooder = lab.mcast(attacker, "flood", GROUP4, PORT, "e0", FLOOD_SECONDS, cap,
                            "%s:%d" % (nodes[0].ip4, PORT + 1), log=flood_log)
        t0 = time.monotonic()
        victim, survivors = ds[4], ds[:4]
        killed_at = None
        detect = None
        lost = []
        rss_max = list(rss0[:4])
        susp0 = sum(status_int(d, "suspicions") for d in ds[:4])
        samples = 0
        while time.monotonic() - t0 < FLOOD_SECONDS:
            if killed_at is None and time.monotonic() - t0 >= FLOOD_SECONDS / 2:
                victim.proc.kill()
                killed_at = time.monotonic()
            if killed_at is not None and detect is None:
                if all(find_node(d.showmap_json(cached=False), nodes[4].ip4).get("state") == "dead" for d in survivors):
                    detect = time.monotonic() - killed_at
            live = addrs[:4] if killed_at is not None else addrs
            for d in survivors:
                m = d.showmap_json()
                gone = [a for a in live if (find_node(m, a) or {}).get("state") in (None, "dead", "left")]
                if gone:
                    lost.append((round(time.monotonic() - t0, 1), d.node.name, gone))
            for i, d in enumerate(survivors):
                rss_max[i] = max(rss_max[i], proc_rss_kb(d.pid) or 0)
            samples += 1
            time.sleep(0.05)
        flooder.wait(30)
        elapsed = time.monotonic() - t0
        cpu1 = [proc_cpu_ticks(d.pid) for d in survivors]
        hz = os.sysconf("SC_CLK_TCK")
        cpu = [(b - a) / hz / elapsed * 100.0 for a, b in zip(cpu0[:4], cpu1)]
        suspicions = sum(status_int(d, "suspicions") for d in survivors) - susp0
        with open(flood_log) as f:
            rec = [json.loads(l) for l in f if l.startswith("{")]
        assert rec, "the flooder printed no counts: %s" % open(flood_log).read()[-300:]
        sent = rec[-1]["sent"]
        final = [d.status_json() or {} for d in survivors]
        after = [dict(st.get("drops") or {}) for st in final]
        # n1 takes the unicast flood too: what its sockets dropped, and the suspects it gave grace for it.
        socket_drops = [st.get("socket_drops", 0) for st in final]
        graces = [st.get("loss_graces", 0) for st in final]
        by_reason = {r: sum(a.get(r, 0) - b.get(r, 0) for a, b in zip(after, before[:4])) for r in reasons}
        rejected = sum(by_reason.values())
        for d in survivors:
            assert d.alive(), "%s exited during the flood" % d.node.name
        assert not lost, "members lost during the flood (t, node, missing): %s" % lost[:5]
        assert detect is not None and detect <= FLOOD_DETECT_BOUND, \
            "the SIGKILL during the flood was not dead everywhere within %.1fs (%s)" % (FLOOD_DETECT_BOUND, detect)
        growth = [m - r for m, r in zip(rss_max, rss0[:4])]
        assert max(growth) <= FLOOD_RSS_GROWTH_KB, "RSS grew by %s kB during the flood" % growth
        assert rejected > sent // 10, "only %d of %d flood datagrams were counted as drops" % (rejected, sent)
        nz = ", ".join("%s %d" % (r, v) for r, v in by_reason.items() if v)
        return ("%.0fs flood: %d datagrams sent (%.0f/s; %s), %d drops counted on the 4 survivors (%s); 0 members "
                "lost over %d samples (%d suspicions raised and refuted); socket drops %s, loss graces %s; SIGKILL at %.0fs dead "
                "everywhere in %.2fs; CPU per daemon %s %%; RSS %s MB (max growth %.1f MB)" % (
                    elapsed, sent, sent / elapsed, rec[-1]["by_kind"], rejected, nz, samples, suspicions,
                    "/".join(str(x) for x in socket_drops), "/".join(str(x) for x in graces), FLOOD_SECONDS / 2, detect,
                    "/".join("%.0f" % c for c in cpu), "/".join("%.1f" % (m / 1024) for m in rss_max),
                    max(growth) / 1024))
