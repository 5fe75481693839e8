"""discd features issue 14 listed as having no test at all, on real networks: --node-id,
--cluster isolation, --no-detector, --heartbeat-port, SIGINT, the status file's schema, a
real-daemon ID collision, IPv6 gateway relay and IPv6 routed -m, leave and death crossing a
gateway, `discd simulate` as a command, interface address changes and the default-route
interface.  Each test reads only `showmap --json`, the --status JSON, exit codes and process
state; each states its bounds in its code and in its PASS line."""
import json
import math
import os
import signal
import subprocess
import time

from gaplib import (DROP_REASONS, journal_records, pid_alive, pids_of, run_daemon_mode, STATUS_SCHEMA, addresses, drops, entry, gateway_view_problems, id_table, is_int,
                    schema_problems, state_is, status_int, wait_all)
import netlab  # noqa: E402
from netlab import Daemon, GROUP6, PORT, build_two_lans, find_node, norm_addr, probe, wait_until
from test_discd import (CONVERGE_BOUND, CONVERGE_BOUND_GW, LEAVE_BOUND, ROUTED_BOUND, ROUTED_NEGATIVE,
                        STOP_BOUND, _junk, describe_maps, wait_converged)

# discd's detector defaults (Sources/discd/Discd.swift): η=150 ms, δ=450 ms.  The ring is armed
# after the startup grace δ + 1 s + ceil(log2 N)·η; we wait that plus a margin before a SIGKILL.
PERIOD, TIMEOUT = 0.15, 0.45
DETECT_BOUND = 2.5          # s: SIGKILL -> dead in every survivor's map (expected ~δ + confirm ≈ 1.05 s)
DETECT_BOUND_GW = 3.0       # s: the same, for nodes behind a gateway (the notice crosses it)
EXPIRY_ANNOUNCE = 0.1       # s: --announce-interval of the no-detector test (expiry = 3.5 intervals)
EXPIRY_BOUND = 1.5          # s: SIGKILL -> dead by discovery expiry (expected 0.35-0.45 s + map write)
ISOLATION_WINDOW = 3.0      # s: two clusters on one LAN must stay apart this long
ALIAS_BOUND = 7.5           # s: an address added/removed shows in the others' maps (5 s poll + announce)
SIM_BOUND = 60.0            # s: wall time limit of one `discd simulate` run


def settle(n):
    """Seconds to wait after convergence before a SIGKILL (startup grace + 1 s margin)."""
    return TIMEOUT + 1.0 + math.ceil(math.log2(max(n, 2))) * PERIOD + 1.0


def one_lan(lab, n, y=3):
    lan = lab.add_lan("", 1, y)   # 10.1.y.0/24 -> derived ids y*256+i
    nodes = [lab.add_node("n%d" % i, lan, i) for i in range(1, n + 1)]
    lab.wait_addresses()
    return lan, nodes


def converge(daemons, addrs, bound=CONVERGE_BOUND, what=""):
    ok, conv, per = wait_converged(daemons, addrs, bound)
    assert ok, "%snot all maps complete within %.1fs (%d/%d)\n%s" % (
        what, bound, len(per), len(daemons), describe_maps(daemons))
    return conv


def fmt_lat(lat):
    v = sorted(lat.values())
    return "%.2fs max / %.2fs min" % (v[-1], v[0]) if v else "-"


# --------------------------------------------------------------------------- --node-id

def test_node_id_explicit(ctx):
    """--node-id 4242 on one of 3 nodes: every map shows it with id 4242 (explicit), the others derived"""
    ctx.need_discd()
    explicit = 4242
    with ctx.lab() as lab:
        _, nodes = one_lan(lab, 3)
        ds = [lab.start_daemon(nodes[0]), lab.start_daemon(nodes[1], args=["--node-id", str(explicit)]),
              lab.start_daemon(nodes[2])]
        addrs = [n.ip4 for n in nodes]
        conv = converge(ds, addrs)
        want = {addrs[0]: (3 * 256 + 1, False), addrs[1]: (explicit, True), addrs[2]: (3 * 256 + 3, False)}
        for d in ds:
            m = d.showmap_json(cached=False)
            for a, (wid, wexp) in want.items():
                e = find_node(m, a)
                assert e["id"] == wid and e["explicit_id"] is wexp and e["preferred_id"] == wid, \
                    "%s's map: %s has id=%s explicit_id=%s preferred_id=%s, expected id %d explicit %s" % (
                        d.node.name, a, e["id"], e["explicit_id"], e["preferred_id"], wid, wexp)
        return ("3 maps complete in %.2fs; in all 3, %s has id %d explicit_id=true, %s/%s derived %d/%d" % (
            conv, addrs[1], explicit, addrs[0], addrs[2], want[addrs[0]][0], want[addrs[2]][0]))


# --------------------------------------------------------------------------- --cluster

def test_cluster_isolation(ctx):
    """two clusters on one LAN: each map holds only its own 2 nodes for 3s; other_cluster drops > 0 on all"""
    ctx.need_discd()
    with ctx.lab() as lab:
        _, nodes = one_lan(lab, 4)
        ai = ["--announce-interval", "300ms"]
        red = [lab.start_daemon(n, args=["--cluster", "red"] + ai) for n in nodes[:2]]
        blue = [lab.start_daemon(n, args=["--cluster", "blue"] + ai) for n in nodes[2:]]
        groups = [(red, sorted(n.ip4 for n in nodes[:2])), (blue, sorted(n.ip4 for n in nodes[2:]))]
        conv = max(converge(ds, want, what="cluster %s: " % c) for (ds, want), c in zip(groups, ("red", "blue")))
        end = time.monotonic() + ISOLATION_WINDOW
        polls = 0
        while time.monotonic() < end:
            for ds, want in groups:
                for d in ds:
                    got = addresses(d.showmap_json())
                    assert got == want, "%s's map holds %s, expected only its cluster's %s" % (
                        d.node.name, got, want)
            polls += 1
            time.sleep(0.1)
        time.sleep(1.2)   # the status file is rewritten every second
        oc = {d.node.name: drops(d, "other_cluster") for d in red + blue}
        assert all(v > 0 for v in oc.values()), \
            "every daemon heard the other cluster, so each must count other_cluster drops: %s" % oc
        return ("both clusters complete in %.2fs; %d polls over %.0fs: every map only its own 2 nodes; "
                "other_cluster drops %s (all > 0)" % (conv, polls, ISOLATION_WINDOW, oc))


# --------------------------------------------------------------------------- --no-detector

def test_no_detector(ctx):
    """--no-detector: maps converge, heartbeats_tx/rx stay 0; a SIGKILLed node is declared dead by expiry <=1.5s"""
    ctx.need_discd()
    with ctx.lab() as lab:
        _, nodes = one_lan(lab, 3)
        ds = lab.start_daemons(nodes, args=["--no-detector", "--announce-interval", "%dms" % (EXPIRY_ANNOUNCE * 1000)])
        addrs = [n.ip4 for n in nodes]
        conv = converge(ds, addrs)
        time.sleep(2.0)   # longer than the detector's startup grace: it would be sending by now
        st = {d.node.name: d.status_json() or {} for d in ds}
        hb = {k: (v.get("heartbeats_tx"), v.get("heartbeats_rx")) for k, v in st.items()}
        assert all(v == (0, 0) for v in hb.values()), "heartbeats (tx, rx) with --no-detector: %s" % hb
        ann = {k: v.get("announces_tx", 0) for k, v in st.items()}
        assert all(v >= 5 for v in ann.values()), "announces_tx after 2s at 100ms: %s (expected >= 5)" % ann
        # nobody is falsely expired while everyone announces
        for d in ds:
            m = d.showmap_json(cached=False)
            bad = [n["address"] for n in m["nodes"] if n["state"] != "alive"]
            assert not bad, "%s: %s not alive before any kill" % (d.node.name, bad)
        victim, surv = ds[2], ds[:2]
        t0 = time.monotonic()
        victim.proc.kill()
        lat = wait_all(surv, state_is(addrs[2], "dead"), EXPIRY_BOUND + 3.0)
        missing = [d.node.name for d in surv if d not in lat]
        assert not missing, "SIGKILLed %s not dead in %s's map after %.1fs\n%s" % (
            addrs[2], missing, EXPIRY_BOUND + 3.0, describe_maps(surv))
        assert max(lat.values()) <= EXPIRY_BOUND, "expiry took %s (bound %.1fs)" % (fmt_lat(lat), EXPIRY_BOUND)
        time.sleep(1.2)
        dd = {d.node.name: (status_int(d, "deaths_declared"), status_int(d, "heartbeats_tx")) for d in surv}
        assert all(v == (0, 0) for v in dd.values()), "no detector, yet (deaths_declared, heartbeats_tx) %s" % dd
        return ("converged in %.2fs; heartbeats tx/rx 0 on all 3 after 2s (announces_tx %s); SIGKILL -> dead by "
                "expiry in %s (bound %.1fs, killed at +%.1fs)" % (
                    conv, sorted(ann.values()), fmt_lat(lat), EXPIRY_BOUND, t0 - ds[0].started_mono))


# --------------------------------------------------------------------------- --heartbeat-port

def test_heartbeat_port(ctx):
    """per-node --heartbeat-port 9101..9104: maps carry each port, heartbeats flow, SIGKILL dead everywhere <=2.5s"""
    ctx.need_discd()
    n = 4
    with ctx.lab() as lab:
        _, nodes = one_lan(lab, n)
        ports = {nd.ip4: 9100 + i for i, nd in enumerate(nodes, 1)}
        ds = [lab.start_daemon(nd, args=["--heartbeat-port", str(ports[nd.ip4])]) for nd in nodes]
        addrs = [nd.ip4 for nd in nodes]
        conv = converge(ds, addrs)
        for d in ds:
            m = d.showmap_json(cached=False)
            got = {a: find_node(m, a)["heartbeat_port"] for a in addrs}
            assert got == ports, "%s's map heartbeat ports %s, configured %s" % (d.node.name, got, ports)
        time.sleep(settle(n))
        s0 = {d: d.status_json() or {} for d in ds}
        time.sleep(1.2)
        s1 = {d: d.status_json() or {} for d in ds}
        hbrx = {d.node.name: s1[d].get("heartbeats_rx", 0) - s0[d].get("heartbeats_rx", 0) for d in ds}
        assert all(v >= 3 for v in hbrx.values()), \
            "heartbeats received per daemon over 1.2s %s (expected >= 3 at η=150ms)" % hbrx
        for d in ds:
            bad = [e["address"] for e in d.showmap_json(cached=False)["nodes"] if e["state"] != "alive"]
            assert not bad, "%s: %s not alive before the kill (heartbeats to the wrong port?)" % (d.node.name, bad)
        victim, surv = ds[1], [ds[0]] + ds[2:]
        victim.proc.kill()
        lat = wait_all(surv, state_is(addrs[1], "dead"), DETECT_BOUND + 5.0)
        missing = [d.node.name for d in surv if d not in lat]
        assert not missing, "SIGKILLed %s not dead in %s after %.1fs\n%s" % (
            addrs[1], missing, DETECT_BOUND + 5.0, describe_maps(surv))
        assert max(lat.values()) <= DETECT_BOUND, "detection %s (bound %.1fs)" % (fmt_lat(lat), DETECT_BOUND)
        time.sleep(1.2)
        declared = sum(status_int(d, "deaths_declared") for d in surv)
        assert declared >= 1, "the detector declared nothing (deaths_declared 0): the death came from elsewhere"
        return ("%d maps carry ports 9101-9104 after %.2fs; heartbeats rx/1.2s %s; SIGKILL n2 -> dead in %s "
                "(bound %.1fs), deaths_declared %d" % (n, conv, sorted(hbrx.values()), fmt_lat(lat),
                                                       DETECT_BOUND, declared))


# --------------------------------------------------------------------------- SIGINT

def test_sigint_leaves(ctx):
    """SIGINT: discd exits 0 <=3s, its final map shows itself left, the others see it left <=1s"""
    ctx.need_discd()
    with ctx.lab() as lab:
        _, nodes = one_lan(lab, 3)
        ds = lab.start_daemons(nodes)
        addrs = [nd.ip4 for nd in nodes]
        conv = converge(ds, addrs)
        victim, surv = ds[2], ds[:2]
        t_wall = time.time()
        t0 = time.monotonic()
        victim.proc.send_signal(signal.SIGINT)
        try:
            rc = victim.proc.wait(STOP_BOUND)
        except subprocess.TimeoutExpired:
            rc = None
        t_exit = time.monotonic() - t0
        assert rc == 0, "SIGINT: exit code %s after %.2fs (bound %.0fs, None = still running)" % (
            rc, t_exit, STOP_BOUND)
        lat = wait_all(surv, state_is(addrs[2], "left"), LEAVE_BOUND + 3.0)
        missing = [d.node.name for d in surv if d not in lat]
        assert not missing, "%s not 'left' in %s's map %.1fs after SIGINT\n%s" % (
            addrs[2], missing, LEAVE_BOUND + 3.0, describe_maps(surv))
        worst = max(lat.values())
        assert worst <= LEAVE_BOUND, "leave after SIGINT took %s (bound %.1fs)" % (fmt_lat(lat), LEAVE_BOUND)
        fm = victim.showmap_json(cached=False)
        me = find_node(fm, addrs[2])
        assert fm and me and me["state"] == "left", "final map of the stopped node: self entry %s" % me
        w = fm.get("written_at_unix_ms", 0) / 1000.0
        assert w >= t_wall - 0.05, "final map written at %.3f, before the SIGINT at %.3f" % (w, t_wall)
        return ("converged in %.2fs; SIGINT -> exit 0 in %.2fs (bound %.0fs); others see left in %s (bound %.1fs); "
                "final map written %.2fs after the signal with self left" % (
                    conv, t_exit, STOP_BOUND, fmt_lat(lat), LEAVE_BOUND, w - t_wall))


# --------------------------------------------------------------------------- status file schema

def test_status_schema(ctx):
    """--status JSON: exactly the schema's keys, integers as ints, drops an object of ints; live and rewritten"""
    ctx.need_discd()
    with ctx.lab() as lab:
        _, nodes = one_lan(lab, 2)
        # n2 runs IP only by choice (--no-rdma); n1 looks for a device and finds none here.
        ds = [lab.start_daemon(nodes[0]), lab.start_daemon(nodes[1], args=["--no-rdma", "--no-kernel"])]
        conv = converge(ds, [nd.ip4 for nd in nodes])
        _junk(nodes[1], nodes[0].ip4, 2, "schema-junk")   # makes drops non-empty on n1
        ok, _ = wait_until(lambda: sum((ds[0].status_json() or {}).get("drops", {}).values()) >= 2, 4.0, 0.1)
        assert ok, "2 malformed datagrams never counted in drops: %s" % (ds[0].status_json() or {}).get("drops")
        notes = []
        ok, _ = wait_until(lambda: all(d.status_json() is not None for d in ds), 3.0, 0.05)
        assert ok, "a status file was not written within 3 s of the start"
        for d in ds:
            with open(d.status) as f:
                raw = f.read()
            st = json.loads(raw)
            probs = schema_problems(st)
            assert not probs, "%s status file: %s\n%s" % (d.node.name, "; ".join(probs), raw)
            assert st["members"] == 2 and st["nodes"] == 2, "%s: members=%d nodes=%d, expected 2/2" % (
                d.node.name, st["members"], st["nodes"])
            assert st["datagrams_rx"] > 0 and st["multicast_tx"] > 0 and st["map_writes"] > 0, \
                "%s: counters not live: %s" % (d.node.name, st)
            notes.append("%s rx=%d nonzero drops %s" % (
                d.node.name, st["datagrams_rx"], {k: v for k, v in st["drops"].items() if v}))
        # The RDMA transport's state: looked for and absent, or off by --no-rdma.
        r1, r2 = ds[0].status_json()["rdma"], ds[1].status_json()["rdma"]
        assert r1["state"] == "down" and r1["reason"] and r1["ups"] == 0, "n1 rdma %s" % r1
        assert r2["state"] == "off", "n2 (--no-rdma) rdma %s" % r2
        # The kernel-module link: looked for and absent (no module on this host), or off by --no-kernel.
        k1, k2 = ds[0].status_json()["kernel"], ds[1].status_json()["kernel"]
        assert k1["state"] == "absent" and k1["attaches"] == 0, "n1 kernel %s" % k1
        assert k2["state"] == "off", "n2 (--no-kernel) kernel %s" % k2
        # rewritten every second: the file changes within 2.5 s
        m0 = os.stat(ds[0].status).st_mtime_ns
        ok, t_new = wait_until(lambda: os.stat(ds[0].status).st_mtime_ns != m0, 2.5, 0.05)
        assert ok, "status file not rewritten within 2.5s"
        assert is_int(ds[0].status_json()["incarnation"])
        return ("converged in %.2fs; both status files have exactly the %d schema keys with int values and "
                "drops an object of the %d reasons (%s); rewritten again after %.2fs (bound 2.5s)" % (
                    conv, len(STATUS_SCHEMA), len(DROP_REASONS), "; ".join(notes), t_new))


# --------------------------------------------------------------------------- ID collision

def test_id_collision_real(ctx):
    """10.1.1.5/.6 and 10.2.1.5/.6 on one bridge derive ids 261/262 twice: every map has distinct ids, the same address->id table, the lower address winning"""
    ctx.need_discd()
    with ctx.lab() as lab:
        lan = lab.add_lan("", 1, 1)
        # n1, n2 keep 10.1.1.5/.6; n3, n4 are moved to 10.2.1.5/.6 on the same bridge (on-link routes both
        # ways, so unicast mapSync and heartbeats work): 1*256+5 = 261 and 262 are each derived twice.
        low = [lab.add_node("n1", lan, 5), lab.add_node("n2", lan, 6)]
        high = [lab.add_node("n3", lan, 105), lab.add_node("n4", lan, 106)]
        high_addr = ["10.2.1.5", "10.2.1.6"]
        for nd, a in zip(high, high_addr):
            nd.ip("addr", "del", "%s/24" % nd.ip4, "dev", "e0")
            nd.ip("addr", "add", "%s/24" % a, "dev", "e0")
            nd.ip("route", "add", "10.1.1.0/24", "dev", "e0")
        for nd in low:
            nd.ip("route", "add", "10.2.1.0/24", "dev", "e0")
        lab.wait_addresses()
        ds = lab.start_daemons(low + high)
        addrs = [nd.ip4 for nd in low] + high_addr
        conv = converge(ds, addrs)
        # a loser's substitute depends on the full claim set, which every map now holds
        tables = {}

        def agree():
            tables.clear()
            for d in ds:
                tables[d.node.name] = id_table(d.showmap_json(cached=False))
            return len({tuple(sorted(t.items())) for t in tables.values()}) == 1
        ok, t_agree = wait_until(agree, 3.0, 0.1)
        assert ok, "maps disagree on the id assignment: %s" % tables
        t = tables["n1"]
        assert len(set(t.values())) == len(t), "duplicate ids in the agreed table %s" % t
        assert t["10.1.1.5"] == 261 and t["10.1.1.6"] == 262, \
            "the lower addresses must keep their derived ids 261/262: %s" % t
        assert t["10.2.1.5"] not in (261, 262) and t["10.2.1.6"] not in (261, 262), "losers not moved: %s" % t
        for d in ds:
            m = d.showmap_json(cached=False)
            for a, want in (("10.2.1.5", 261), ("10.2.1.6", 262)):
                e = find_node(m, a)
                assert e["preferred_id"] == want and e["explicit_id"] is False, \
                    "%s: loser %s should still prefer %d: %s" % (d.node.name, a, want, e)
        return ("4 maps complete in %.2fs, identical address->id tables after %.2fs: %s; winners 10.1.1.5=261, "
                "10.1.1.6=262; losers got substitutes" % (
                    conv, t_agree, ", ".join("%s=%d" % kv for kv in sorted(t.items()))))


# --------------------------------------------------------------------------- IPv6 gateway and routed -m

def test_gateway_ipv6(ctx):
    """IPv6: LAN A + LAN B + gateway 'discd -i ea,eb --family ipv6': far nodes hops=1, gateway alias, <=8s"""
    ctx.need_discd()
    with ctx.lab() as lab:
        la, lb, an, bn, gws = build_two_lans(lab, gateways=1)
        ds = lab.start_daemons(an + bn, family="ipv6") + [lab.start_daemon(gws[0], family="ipv6")]
        expect = [n.ip6 for n in an + bn] + [gws[0].ifaces[0].ip6]
        conv = converge(ds, expect, CONVERGE_BOUND_GW, "IPv6 through the gateway: ")
        probs = []

        def view_ok():
            probs[:] = gateway_view_problems(ds, an, bn, gws, v6=True)
            return not probs
        ok, _ = wait_until(view_ok, 3.0, 0.2)
        assert ok, "IPv6 gateway view:\n%s\n%s" % ("\n".join(probs), describe_maps(ds))
        relayed, _ = wait_until(lambda: status_int(ds[-1], "relayed_tx"), 2.5, 0.1)   # status: every 1 s
        assert relayed, "the gateway's status shows relayed_tx 0 after 2.5s"
        return ("5 IPv6 daemons converged in %.2fs (bound %.0fs); far side hops=1, near 0; gateway one entry with "
                "its other IPv6 address as interface alias; relayed_tx %d" % (conv, CONVERGE_BOUND_GW, relayed))


def test_routed_multicast_ipv6(ctx):
    """IPv6 smcroute router: discd -m 1 stays local for 4s, -m 2 converges across <=8s"""
    ctx.need_discd()
    with ctx.lab() as lab:
        an, bn, rt = netlab.routed_two_lans(lab, GROUP6)
        nodes = an + bn
        a6, b6 = [n.ip6 for n in an], [n.ip6 for n in bn]
        ds = lab.start_daemons(nodes, family="ipv6", args=["-m", "1"], tag="-m1")
        converge(ds[:2], a6, what="-m 1 LAN A: ")
        converge(ds[2:], b6, what="-m 1 LAN B: ")
        netlab.assert_sides_apart(ds, an, a6, b6, ROUTED_NEGATIVE, "-m 1 over IPv6 ")
        netlab.stop_and_reset(lab, ds)
        ds = lab.start_daemons(nodes, family="ipv6", args=["-m", "2"], tag="-m2")
        conv = converge(ds, a6 + b6, ROUTED_BOUND, "-m 2 across the IPv6 router: ")
        return ("router proven with plain sockets; -m 1: far LAN unseen for %.0fs; -m 2: all 4 IPv6 maps "
                "complete in %.2fs (bound %.0fs)" % (ROUTED_NEGATIVE, conv, ROUTED_BOUND))


# --------------------------------------------------------------------------- leave / death across a gateway

def _gateway_cluster(lab, ctx):
    la, lb, an, bn, gws = build_two_lans(lab, gateways=1)
    ds = lab.start_daemons(an + bn) + [lab.start_daemon(gws[0])]
    expect = [n.ip4 for n in an + bn] + [gws[0].ifaces[0].ip4]
    conv = converge(ds, expect, CONVERGE_BOUND_GW, "through the gateway: ")
    return an, bn, gws, ds, conv


def test_gateway_leave_crosses(ctx):
    """SIGTERM of a LAN A node: both LAN B nodes (behind the gateway) see it 'left' <=1s"""
    ctx.need_discd()
    with ctx.lab() as lab:
        an, bn, gws, ds, conv = _gateway_cluster(lab, ctx)
        victim = ds[0]
        far = [d for d in ds if d.node in bn]
        rc, stop_s, killed = victim.stop(timeout=STOP_BOUND)
        t_stop = time.monotonic()
        assert rc == 0 and not killed, "SIGTERM: exit %s after %.2fs (killed=%s)" % (rc, stop_s, killed)
        lat = wait_all(far, state_is(an[0].ip4, "left"), LEAVE_BOUND + 4.0)
        waited = time.monotonic() - t_stop
        missing = [d.node.name for d in far if d not in lat]
        assert not missing, "%s not 'left' behind the gateway in %s after %.1fs:\n%s" % (
            an[0].ip4, missing, waited, describe_maps(far))
        lat = {d: v + stop_s for d, v in lat.items()}   # counted from the SIGTERM (the leave precedes the exit)
        assert max(lat.values()) <= LEAVE_BOUND, "leave across the gateway took %s (bound %.1fs)" % (
            fmt_lat(lat), LEAVE_BOUND)
        return ("5 daemons converged in %.2fs; SIGTERM a1 -> exit 0 in %.2fs; b1, b2 see it left in %s "
                "(bound %.1fs, from the signal)" % (conv, stop_s, fmt_lat(lat), LEAVE_BOUND))


def test_gateway_death_crosses(ctx):
    """SIGKILL of a LAN A node: both LAN B nodes see it dead <=3s though none of them watches it"""
    ctx.need_discd()
    with ctx.lab() as lab:
        an, bn, gws, ds, conv = _gateway_cluster(lab, ctx)
        time.sleep(settle(len(ds)))
        far = [d for d in ds if d.node in bn]
        for d in ds:
            bad = [e["address"] for e in d.showmap_json(cached=False)["nodes"] if e["state"] != "alive"]
            assert not bad, "%s: %s not alive before the kill" % (d.node.name, bad)
        before = {d: status_int(d, "deaths_declared") for d in far}
        # ids: a1=1, a2=2, b1=11, b2=12, gw=254: a1's ring observer is a2 on its own LAN, so LAN B only
        # learns of the death through the gateway (relayed multicast notice, or forwarded unicasts)
        ds[0].proc.kill()
        lat = wait_all(far, state_is(an[0].ip4, "dead"), DETECT_BOUND_GW + 5.0)
        missing = [d.node.name for d in far if d not in lat]
        assert not missing, "%s not dead behind the gateway in %s after %.1fs\n%s" % (
            an[0].ip4, missing, DETECT_BOUND_GW + 5.0, describe_maps(ds))
        assert max(lat.values()) <= DETECT_BOUND_GW, "death across the gateway took %s (bound %.1fs)" % (
            fmt_lat(lat), DETECT_BOUND_GW)
        time.sleep(1.2)
        own = {d.node.name: status_int(d, "deaths_declared") - before[d] for d in far}
        near = status_int(ds[1], "deaths_declared")
        assert near >= 1, "a2 (a1's observer) declared nothing: deaths_declared %d" % near
        assert all(v == 0 for v in own.values()), \
            "LAN B nodes declared the death themselves %s: it did not have to cross" % own
        return ("converged in %.2fs; SIGKILL a1 -> declared by a2, dead at b1/b2 in %s (bound %.1fs), "
                "their own deaths_declared +0" % (conv, fmt_lat(lat), DETECT_BOUND_GW))


# --------------------------------------------------------------------------- discd simulate

SIM_ARGS = ["--nodes", "30", "--duration", "8s", "--crash", "1", "--stop", "1", "--seed", "7",
            "--progress", "0", "--json"]
SIM_FIELDS = {"nodes": int, "running": int, "seed": int, "convergence_ms": float, "converged_at_end": bool,
              "departures": list, "false_deaths": int, "trace_hash": str, "sent_msgs_per_node_s": float,
              "epochs": list, "virtual_time_ms": float, "wall_seconds": float}


def _simulate(ctx, args, timeout=SIM_BOUND, env=None):
    t0 = time.monotonic()
    r = subprocess.run([os.path.join(ctx.bindir, "discd"), "simulate"] + args, capture_output=True, text=True,
                       timeout=timeout, env=env)
    return r, time.monotonic() - t0


def _thp_mode():
    """The kernel's transparent-huge-page mode: always, madvise or never (None: no such file)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def test_simulate_command(ctx):
    """discd simulate: --help exits 0; a 30-node seeded --json run exits 0 with every field typed and sane; same seed same trace; huge pages by default, the same run without"""
    ctx.need_discd()
    r, _ = _simulate(ctx, ["--help"], 10)
    assert r.returncode == 0 and "--nodes" in r.stdout and "--json" in r.stdout, \
        "discd simulate --help: rc %s, stdout %r" % (r.returncode, r.stdout[:300])
    bad, _ = _simulate(ctx, ["--nodes", "0"], 10)
    assert bad.returncode not in (0, None) and bad.stdout == "", \
        "discd simulate --nodes 0 must fail: rc %s stdout %r" % (bad.returncode, bad.stdout[:200])
    r, secs = _simulate(ctx, SIM_ARGS)
    assert r.returncode == 0, "discd simulate %s: rc %s, stderr %s" % (" ".join(SIM_ARGS), r.returncode, r.stderr[-500:])
    rep = json.loads(r.stdout)
    for k, t in SIM_FIELDS.items():
        v = rep.get(k)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) if t is float else \
            (is_int(v) if t is int else isinstance(v, t))
        assert ok, "field %s=%r is not %s" % (k, v, t.__name__)
    assert rep["nodes"] == 30 and rep["seed"] == 7, "nodes/seed echoed wrong: %s/%s" % (rep["nodes"], rep["seed"])
    assert rep["running"] == 28 and rep["converged_at_end"] is True, \
        "after 1 crash + 1 stop, running=%s converged_at_end=%s" % (rep["running"], rep["converged_at_end"])
    assert rep["false_deaths"] == 0, "false deaths on a lossless LAN: %d" % rep["false_deaths"]
    kinds = sorted(d["kind"] for d in rep["departures"])
    assert kinds == ["crash", "stop"], "departures %s, expected one crash and one stop" % kinds
    for d in rep["departures"]:
        assert d["complete"] is True and d["known"] == d["survivors"] == 28 and d["never_knew"] == 0, \
            "departure not learned by all 28 survivors: %s" % d
    crashes = [d for d in rep["departures"] if d["kind"] == "crash"]
    assert all(d["bound_ms"] is not None and d["over_bound"] == 0 and d["latency"]["max_ms"] <= d["bound_ms"]
               for d in crashes), \
        "crash learned later than the promised bound: %s" % crashes
    r2, secs2 = _simulate(ctx, SIM_ARGS)
    rep2 = json.loads(r2.stdout)
    assert r2.returncode == 0 and rep2["trace_hash"] == rep["trace_hash"], \
        "same seed, different run: trace_hash %s vs %s" % (rep["trace_hash"], rep2["trace_hash"])
    c = crashes[0]
    other = [a if a != "7" else "8" for a in SIM_ARGS]
    r3, _ = _simulate(ctx, other)
    h3 = json.loads(r3.stdout)["trace_hash"] if r3.returncode == 0 else None
    assert h3 and h3 != rep["trace_hash"], "seed 8 gave the trace of seed 7 (%s): the seed is ignored" % h3
    # Huge pages: discd simulate runs itself again with glibc's THP tunable (where the kernel offers
    # THP) unless GLIBC_TUNABLES names it. 300 nodes: a few MiB of heap, enough for 2 MiB pages.
    # The run must be the same either way; the pages must be huge only where asked for ("madvise").
    big = ["--nodes", "300", "--duration", "8s", "--crash", "1", "--seed", "7", "--progress", "0", "--json"]
    mode = _thp_mode()
    runs = {}
    for name, extra in (("default", {}), ("hugetlb=0", {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})):
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        env.update(extra)
        rr, _ = _simulate(ctx, big, env=env)
        assert rr.returncode == 0, "discd simulate %s (%s): rc %s, stderr %s" % (" ".join(big), name, rr.returncode,
                                                                                rr.stderr[-500:])
        runs[name] = json.loads(rr.stdout)
    hashes = {k: v["trace_hash"] for k, v in runs.items()}
    pages = {k: v["huge_page_bytes"] for k, v in runs.items()}
    assert hashes["default"] == hashes["hugetlb=0"], "huge pages changed the run: %s" % hashes
    assert all(is_int(v) for v in pages.values()), "huge_page_bytes not an integer: %s" % pages
    if mode in ("madvise", "always"):
        assert pages["default"] > 0, "THP %s, yet no huge pages by default: %s" % (mode, pages)
    if mode in ("madvise", "never"):
        assert pages["hugetlb=0"] == 0, "THP %s and hugetlb=0, yet huge pages: %s" % (mode, pages)
    return ("--help rc 0; --nodes 0 rc %d; 30 nodes seed 7: rc 0 in %.1fs wall (bound %.0fs), converged %.0f ms, "
            "departures %s all known by 28, crash max %.0f ms <= bound %.0f ms, 0 false deaths; rerun same "
            "trace_hash %s, seed 8 another; 300 nodes, THP %s: %d B in huge pages by default, %d with hugetlb=0, "
            "same trace %s" % (bad.returncode, secs, SIM_BOUND, rep["convergence_ms"], kinds, c["latency"]["max_ms"],
                               c["bound_ms"], rep["trace_hash"], mode, pages["default"], pages["hugetlb=0"],
                               hashes["default"]))


test_simulate_command.timeout = 200


# --------------------------------------------------------------------------- interfaces

def test_address_change_alias(ctx):
    """ip addr add on n1's e0: the others list it as n1's alias <=7.5s; ip addr del: the alias goes <=7.5s"""
    ctx.need_discd()
    with ctx.lab() as lab:
        _, nodes = one_lan(lab, 3)
        ds = lab.start_daemons(nodes)
        addrs = [nd.ip4 for nd in nodes]
        conv = converge(ds, addrs)
        extra = "10.1.3.201"
        others = ds[1:]
        id0 = entry(ds[1], addrs[0])["id"]

        def has_alias(m):
            e = find_node(m, extra)
            return (e is not None and norm_addr(e["address"]) == addrs[0] and
                    any(norm_addr(a["address"]) == extra and a["source"] == "interface" for a in e["aliases"]))
        nodes[0].ip("addr", "add", extra + "/24", "dev", "e0")
        lat_add = wait_all(others, has_alias, ALIAS_BOUND + 3.0)
        missing = [d.node.name for d in others if d not in lat_add]
        assert not missing, "%s added on n1 not an alias of %s in %s after %.1fs\n%s" % (
            extra, addrs[0], missing, ALIAS_BOUND + 3.0, describe_maps(others))
        assert max(lat_add.values()) <= ALIAS_BOUND, "alias appeared after %s (bound %.1fs)" % (
            fmt_lat(lat_add), ALIAS_BOUND)
        for d in others:
            m = d.showmap_json(cached=False)
            assert norm_addr(extra) not in addresses(m), "%s lists %s as a node of its own" % (d.node.name, extra)
            assert find_node(m, addrs[0])["id"] == id0, "%s: n1's id changed with the alias" % d.node.name
        nodes[0].ip("addr", "del", extra + "/24", "dev", "e0")
        lat_del = wait_all(others, lambda m: find_node(m, extra) is None and find_node(m, addrs[0]) is not None,
                           ALIAS_BOUND + 3.0)
        missing = [d.node.name for d in others if d not in lat_del]
        assert not missing, "%s removed from n1 still listed in %s after %.1fs\n%s" % (
            extra, missing, ALIAS_BOUND + 3.0, describe_maps(others))
        assert max(lat_del.values()) <= ALIAS_BOUND, "alias removal took %s (bound %.1fs)" % (
            fmt_lat(lat_del), ALIAS_BOUND)
        return ("converged in %.2fs; added %s on n1: alias (interface) of %s in both other maps in %s; removed: "
                "gone in %s (bound %.1fs each)" % (conv, extra, addrs[0], fmt_lat(lat_add), fmt_lat(lat_del),
                                                   ALIAS_BOUND))


def test_default_route_interface(ctx):
    """discd without -i on a node whose default route is via its 2nd interface e0 (d0 first): it runs on e0"""
    ctx.need_discd()
    with ctx.lab() as lab:
        lan = lab.add_lan("", 1, 3)
        side = lab.add_lan("x", 1, 9)
        peers = [lab.add_node("n%d" % i, lan, i) for i in (1, 2)]
        n3 = lab.add_node("n3")
        lab.attach(n3, side, 3, "d0", mcast_routes=False)     # first interface, lower ifindex
        lab.attach(n3, lan, 3, "e0", mcast_routes=False)
        n3.ip("route", "add", "default", "via", peers[0].ip4, "dev", "e0")
        lab.wait_addresses()
        ds = lab.start_daemons(peers)
        d3 = lab.start_daemon(n3, interfaces=False)
        e0, d0 = n3.iface("e0").ip4, n3.iface("d0").ip4
        conv = converge(ds + [d3], [p.ip4 for p in peers] + [e0])
        m = d3.showmap_json(cached=False)
        assert norm_addr(m.get("self") or "") == e0, "discd without -i chose %s, default route is via e0 (%s)" % (
            m.get("self"), e0)
        for d in ds + [d3]:
            e = find_node(d.showmap_json(cached=False), e0)
            al = [a["address"] for a in e.get("aliases") or []]
            assert d0 not in al, "%s: %s carries d0's address %s as alias: more than e0 was used" % (
                d.node.name, e0, d0)
        assert d3.alive(), "discd without -i exited (rc %s)" % d3.proc.poll()
        return ("n3 (d0=%s created first, default route via e0) without -i: self=%s, all 3 maps complete in "
                "%.2fs, no d0 alias" % (d0, e0, conv))


# --------------------------------------------------------------------------- daemon mode, map writes

DAEMON_READY_BOUND = 10.0   # s: `discd` without -n returns 0 once the detached daemon is up
BAD_CONFIG_BOUND = 3.0      # s: a bad config in daemon mode fails with exit 1 this fast
QUIET_WINDOW = 4.5          # s: nothing changes -> map_writes must not grow (the old daemon rewrote every 2 s)


def test_daemon_mode(ctx):
    """discd without -n: returns 0 <=10s, detached daemon joins (3 maps complete), logs daemon.started/stopping
    to the journal socket; SIGTERM -> gone <=3s, left <=1s; bad --map -> exit 1 fast with one stderr line"""
    ctx.need_discd()
    with ctx.lab() as lab:
        _, nodes = one_lan(lab, 3)
        ds = lab.start_daemons(nodes[:2])
        addrs = [nd.ip4 for nd in nodes]
        dm = Daemon(lab, nodes[2], None, "-dm")
        dm.map = os.path.join(nodes[2].dir, "daemon-mode.map")
        dm.status = os.path.join(nodes[2].dir, "daemon-mode-status.json")
        args = ["-i", "e0", "--map", dm.map, "--status", dm.status, "--control", dm.control, "--log-format", "json"]
        pids, lpid = [], None
        try:
            rc, out, err, secs, jout, lpidf = run_daemon_mode(lab, nodes[2], args, timeout=DAEMON_READY_BOUND)
            try:
                lpid = int(open(lpidf).read())
            except (OSError, ValueError):
                lpid = None
            pids = pids_of(dm.map)
            assert rc == 0, "daemon mode: rc %s after %.2fs (bound %.0fs; None = still running)\nstdout %r\nstderr %r" % (
                rc, secs, DAEMON_READY_BOUND, out[-500:], err[-500:])
            assert len(pids) == 1, "expected one detached discd for %s, pgrep found %s" % (dm.map, pids)
            pid = pids[0]
            conv = converge(ds + [dm], addrs, what="daemon mode: ")
            recs = journal_records(jout)
            ev = [r.get("DISCD_EVENT") for r in recs]
            started = [r for r in recs if r.get("DISCD_EVENT") == "daemon.started"]
            assert started and started[0].get("DISCD_DAEMON") == "true", \
                "journal: no daemon.started with DISCD_DAEMON=true; %d records, events %s, first %s" % (
                    len(recs), ev[:10], recs[:1])
            os.kill(pid, signal.SIGTERM)
            lat = wait_all(ds, state_is(addrs[2], "left"), LEAVE_BOUND + 3.0)
            gone, t_gone = wait_until(lambda: not pid_alive(pid), STOP_BOUND, 0.02)
            assert gone, "detached discd pid %d still running %.0fs after SIGTERM" % (pid, STOP_BOUND)
            missing = [d.node.name for d in ds if d not in lat]
            assert not missing, "%s not 'left' in %s's map after SIGTERM\n%s" % (addrs[2], missing, describe_maps(ds))
            worst = max(lat.values())
            assert worst <= LEAVE_BOUND, "leave took %s (bound %.1fs)" % (fmt_lat(lat), LEAVE_BOUND)
            ok, _ = wait_until(lambda: any(r.get("DISCD_EVENT") == "daemon.stopping" for r in journal_records(jout)),
                               1.0, 0.05)
            ev = [r.get("DISCD_EVENT") for r in journal_records(jout)]
            assert ok, "journal: no daemon.stopping after SIGTERM; events %s" % ev[-10:]
        finally:
            for p in pids + ([lpid] if lpid else []):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        # a bad config: the foreground process reports it and exits 1
        bad = ["-i", "e0", "--map", "/nonexistent/dir/x.map", "--status", dm.status + ".bad"]
        rc2, out2, err2, secs2, _, lpidf2 = run_daemon_mode(lab, nodes[2], bad, tag="bad", timeout=BAD_CONFIG_BOUND + 2)
        try:
            os.kill(int(open(lpidf2).read()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        left_over = pids_of("/nonexistent/dir/x.map")
        for p in left_over:
            os.kill(p, signal.SIGKILL)
        elines = [l for l in err2.splitlines() if l.strip()]
        assert rc2 == 1 and secs2 <= BAD_CONFIG_BOUND, "bad --map: rc %s after %.2fs (want 1 within %.0fs); stderr %r" % (
            rc2, secs2, BAD_CONFIG_BOUND, err2[-500:])
        assert len(elines) == 1, "bad --map: want exactly one stderr line, got %d: %r" % (len(elines), elines)
        assert not left_over, "bad --map left a daemon running: %s" % left_over
        return ("daemon mode returned 0 in %.2fs; maps complete in %.2fs; journal %d records (started DISCD_DAEMON=true, "
                "stopping); SIGTERM -> pid gone %.2fs, left %s (bound %.1fs); bad --map -> rc 1 in %.2fs: %s" % (
                    secs, conv, len(journal_records(jout)), t_gone, fmt_lat(lat), LEAVE_BOUND, secs2, elines[0][:80]))


def test_map_written_only_on_change(ctx):
    """3 converged daemons, 4.5s with nothing changing: map_writes unchanged on all 3"""
    ctx.need_discd()
    with ctx.lab() as lab:
        _, nodes = one_lan(lab, 3)
        ds = lab.start_daemons(nodes)
        addrs = [nd.ip4 for nd in nodes]
        conv = converge(ds, addrs)
        time.sleep(settle(3))      # past the startup grace: no detector transitions pending
        w0 = [status_int(d, "map_writes") for d in ds]
        g0 = [status_int(d, "generation") for d in ds]
        time.sleep(QUIET_WINDOW)
        time.sleep(1.1)            # the status file is rewritten every second
        w1 = [status_int(d, "map_writes") for d in ds]
        g1 = [status_int(d, "generation") for d in ds]
        assert all(x > 0 for x in w0), "no map_writes counted at all: %s" % w0
        assert w1 == w0, "map_writes grew over %.1fs of nothing changing: %s -> %s (generation %s -> %s)" % (
            QUIET_WINDOW, w0, w1, g0, g1)
        return "converged %.2fs; map_writes %s unchanged over %.1fs (generation %s -> %s)" % (
            conv, w0, QUIET_WINDOW + 1.1, g0, g1)


TORN_WINDOW = 6.0           # s: reader loop length of the torn-read test
TORN_INTERVAL = 0.02        # s: between showmap reads


def test_map_reads_never_torn(ctx):
    """showmap -f MAP --json every 20ms for 6s on one map while other daemons start/get SIGKILLed: 0 failed reads"""
    ctx.need_discd()
    with ctx.lab() as lab:
        _, nodes = one_lan(lab, 5)
        d0 = lab.start_daemon(nodes[0])
        showmap = os.path.join(lab.bindir, "showmap")
        reads = bad = 0
        samples = []
        churn = {}            # node index -> Daemon
        t0 = time.monotonic()
        t_next = t0
        k = 0
        while time.monotonic() - t0 < TORN_WINDOW:
            if time.monotonic() >= t_next:       # churn: start or SIGKILL one of n2..n5 every 0.3 s
                i = 1 + k % 4
                d = churn.get(i)
                if d is not None and d.alive():
                    os.kill(d.pid, signal.SIGKILL)
                    d.proc.wait(5)
                    churn.pop(i)
                else:
                    churn[i] = lab.start_daemon(nodes[i], tag="-%d" % k)
                k += 1
                t_next += 0.3
            if os.path.exists(d0.map):
                r = subprocess.run([showmap, "-f", d0.map, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, timeout=10)
                reads += 1
                ok = r.returncode == 0
                if ok:
                    try:
                        json.loads(r.stdout)
                    except ValueError:
                        ok = False
                if not ok:
                    bad += 1
                    if len(samples) < 3:
                        samples.append((r.returncode, r.stdout[:120], r.stderr[:200]))
            time.sleep(TORN_INTERVAL)
        writes = status_int(d0, "map_writes")
        assert d0.alive(), "the read daemon exited"
        assert reads > 50, "only %d reads in %.0fs" % (reads, TORN_WINDOW)
        assert bad == 0, "%d/%d showmap reads failed or gave invalid JSON: %s" % (bad, reads, samples)
        return "%d reads over %.0fs, 0 failed; %d churn actions; read map's map_writes %d" % (
            reads, TORN_WINDOW, k, writes)
