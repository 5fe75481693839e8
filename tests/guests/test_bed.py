"""Tests of the guest test bed itself (tests/guests/guestbed.py): two qemu guests with
Soft-RoCE must be able to do verbs, UD unicast and UD multicast, before any discd RDMA test
can mean anything."""
import json

SMOKE_CHECKS = ("devices", "ud", "mckey")


def test_rdma_smoke(ctx):
    """2 guests with rxe0: ibv_devices, ibv_ud_pingpong (UD unicast), mckey (UD multicast)"""
    r = ctx.run("rdma_smoke", guests=2, timeout=180)
    problems = []
    for g in r.guests:
        if g.error:
            problems.append("guest %d: %s" % (g.index, g.error))
        for key in SMOKE_CHECKS:
            v = g.value(key)
            if not (isinstance(v, dict) and v.get("ok") is True):
                problems.append("guest %d %s: %s" % (g.index, key, "no result" if v is None else json.dumps(v)))
        if g.exit_code != 0:
            problems.append("guest %d: scenario exit %s" % (g.index, g.exit_code))
    assert not problems, "; ".join(problems) + "\n" + "\n".join(r.report())
    ready = "/".join("%.1f" % g.ready_s for g in r.guests)
    ud = "/".join(str(g.value("ud").get("ms")) for g in r.guests)
    return "boot-to-ready %ss, cycle %.1fs, ud %s ms, mckey %s ms" % (
        ready, r.wall_s, ud, "/".join(str(g.value("mckey").get("ms")) for g in r.guests))


test_rdma_smoke.timeout = 240
