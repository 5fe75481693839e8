"""Topology self-tests: prove the namespaces, bridges, gateways and the smcroute
router carry multicast/unicast as the discd scenarios assume, using plain Python
sockets (tests/netns/mcast.py).  They need no discd binary."""
import os
import time

from netlab import GROUP4, GROUP6, build_two_lans, probe, wait_until


def _lan_multicast(ctx, v6):
    with ctx.lab() as lab:
        lan = lab.add_lan("", 1, 3)
        nodes = [lab.add_node("n%d" % i, lan, i) for i in (1, 2, 3)]
        lab.wait_addresses()
        got = probe(lab, nodes[0], nodes[1:], GROUP6 if v6 else GROUP4, count=5)
        assert all(v == 5 for v in got.values()), "multicast on one bridge lost datagrams: %s" % got
        # the bridge ports count what went through
        st = lan.port_stats()
        assert st["p-n1"][0] >= 5, st
        return "5/5 datagrams to %s reached both other nodes through the bridge" % (GROUP6 if v6 else GROUP4)


def test_lan_multicast_ipv4(ctx):
    """one bridge, 3 namespaces: IPv4 multicast 239.192.77.77 reaches every other node"""
    return _lan_multicast(ctx, False)


def test_lan_multicast_ipv6(ctx):
    """one bridge, 3 namespaces: IPv6 multicast ff05::d15c:77 reaches every other node"""
    return _lan_multicast(ctx, True)


def test_gateway_unicast(ctx):
    """two bridges + forwarding gateway: unicast crosses (v4+v6), link-local multicast does not"""
    with ctx.lab() as lab:
        la, lb, an, bn, gws = build_two_lans(lab, gateways=1)
        got = probe(lab, an[0], [bn[0]], bn[0].ip4, count=3, listen=lambda r: r.ip4)
        assert got[bn[0].name] == 3, "IPv4 unicast A->B via gateway: %s" % got
        got = probe(lab, bn[1], [an[1]], an[1].ip6, count=3, listen=lambda r: r.ip6)
        assert got[an[1].name] == 3, "IPv6 unicast B->A via gateway: %s" % got
        got = probe(lab, an[0], [an[1], bn[0]], GROUP4, count=3)
        assert got[an[1].name] == 3 and got[bn[0].name] == 0, \
            "multicast must stay on its LAN without a router: %s" % got
        return "unicast A<->B crosses the gateway (v4, v6); multicast stays on its LAN"


def test_smcroute_ttl(ctx):
    """smcroute router: 239.192.77.77 with TTL 1 stays on LAN A, TTL 2 reaches LAN B"""
    with ctx.lab() as lab:
        la, lb, an, bn, (rt,) = build_two_lans(lab, gateways=1, router=True)
        lab.start_smcroute(rt, [("ra", GROUP4, ["rb"]), ("rb", GROUP4, ["ra"])])
        show = lab.smcroute_show(rt)
        got1 = probe(lab, an[0], [an[1], bn[0], bn[1]], GROUP4, ttl=1, count=4)
        got2 = probe(lab, an[0], [an[1], bn[0], bn[1]], GROUP4, ttl=2, count=4)
        got3 = probe(lab, bn[0], [an[0], bn[1]], GROUP4, ttl=2, count=4)
        assert got1 == {"a2": 4, "b1": 0, "b2": 0}, "TTL 1: %s" % got1
        assert got2 == {"a2": 4, "b1": 4, "b2": 4}, "TTL 2 A->B: %s\nsmcroutectl show:\n%s\n%s" % (
            got2, show, lab.smcroute_show(rt))
        assert got3 == {"a1": 4, "b2": 4}, "TTL 2 B->A: %s" % got3
        return "TTL1 A->B: %s; TTL2 A->B: %s; TTL2 B->A: %s" % (got1, got2, got3)


LOOP_PORT_CEILING = 1000.0  # must match test_discd.PORT_CEILING: the loop check's own ceiling


def test_loop_check_detects_naive_relays(ctx):
    """two naive (no-dedup) Python relays between LAN A and B make a loop that the 1000 pkt/s port ceiling catches"""
    with ctx.lab() as lab:
        la, lb, an, bn, gws = build_two_lans(lab, gateways=2)
        logs = []
        for g in gws:
            log = os.path.join(g.dir, "relay.log")
            logs.append(log)
            lab.mcast(g, "relay", GROUP4, 17779, "ea", "eb", 4.0, 100000, log=log)

        def ready():
            return all("READY" in _read(p) for p in logs)
        ok, _ = wait_until(ready, 5.0)
        assert ok, "relays not ready"
        probe(lab, an[0], [bn[0]], GROUP4, count=1, port=17779)   # one seed datagram
        p0, t0 = la.port_stats(), time.monotonic()
        time.sleep(0.5)
        p1, t1 = la.port_stats(), time.monotonic()
        rate = max(((p1[k][0] - p0[k][0] + p1[k][1] - p0[k][1]) / (t1 - t0)) for k in p1)
        for g in gws:
            wait_until(lambda: "RELAYED" in _read(os.path.join(g.dir, "relay.log")), 5.0)
        relayed = [_read(p).split("RELAYED")[-1].strip() for p in logs]
        assert rate > LOOP_PORT_CEILING, "a real loop made only %.0f pkt/s on the busiest port (relayed %s): " \
            "the loop ceiling would not catch it" % (rate, relayed)
        return "one seed datagram -> %.0f pkt/s on the busiest bridge port (ceiling %.0f), relayed %s" % (
            rate, LOOP_PORT_CEILING, relayed)


def _read(p):
    try:
        with open(p) as f:
            return f.read()
    except OSError:
        return ""
