"""discd's RDMA transport over real verbs: Soft-RoCE (rdma_rxe) in qemu guests running Debian's
stock kernel (tests/guests/guestbed.py).  Each test runs one scenario of tests/guests/scenarios/
and checks what the guests recorded: discd's status file (typed counters), `showmap --json`,
and the times the scenario measured.  Nothing here matches a log phrase: the scenarios read
discd's JSON log events by name and field."""
import json
import os
import subprocess

import guestbed

# Detection bound under TCG: the detector's defaults (η 150 ms, δ 450 ms, confirm 600 ms) plus
# the slowness of emulated guests and the 9p polling of the kill marker.
DETECT_BOUND_MS = 10_000


def imm_send_tool():
    """tests/guests/tools/imm_send.c built with the host's gcc (guests run it from the 9p root)."""
    src = os.path.join(guestbed.REPO, "tests", "guests", "tools", "imm_send.c")
    out_dir = os.path.join(guestbed.REPO, ".build", "guest-tools")
    out = os.path.join(out_dir, "imm_send")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        os.makedirs(out_dir, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", out, src, "-libverbs", "-lrdmacm"], check=True)
    return out


def finished(r):
    """Every guest ran its scenario to exit 0; else the failure with the run's report."""
    problems = []
    for g in r.guests:
        if g.error:
            problems.append("guest %d: %s" % (g.index, g.error))
        for f in g.values("fail"):
            problems.append("guest %d: %s" % (g.index, f))
        if g.exit_code != 0:
            problems.append("guest %d: scenario exit %s" % (g.index, g.exit_code))
    assert not problems, "; ".join(problems) + "\n" + "\n".join(r.report())


def first(g, key):
    v = g.values(key)
    assert v, "guest %d recorded no %s" % (g.index, key)
    return v[0]


def node(map_json, address):
    for n in map_json["nodes"]:
        if n["address"] == address:
            return n
    raise AssertionError("%s not in the map: %s" % (address, json.dumps(map_json)[:400]))


def rdma_capability(n):
    caps = [c for c in n.get("capabilities", []) if c.get("type") == "rdma"]
    return caps[0] if caps else None


def as_object(v):
    """A recorded JSON log line: lib.sh's `result` stores it as the JSON object itself."""
    return json.loads(v) if isinstance(v, str) else v


def ip_rx(status):
    """Datagrams that came in over IP: all of them less those over RDMA."""
    rd = status["rdma"]
    return status["datagrams_rx"] - rd["datagrams_rx"] - rd["immediate_rx"]


def test_rdma_only_discovery_detection_and_notices(ctx):
    """2 guests, discd's UDP blocked: discovery, heartbeats, immediate notices and SIGKILL detection over RDMA"""
    r = ctx.run("rdma_discd", guests=2, timeout=300, env={"IMM_SEND": imm_send_tool()})
    finished(r)
    g0, g1 = r.guests
    for g, other in ((g0, g1), (g1, g0)):
        st = first(g, "status")
        rd = st["rdma"]
        assert rd["state"] == "up" and rd["device"] == "rxe0", rd
        # Everything came over RDMA: IP was blocked both ways.
        assert ip_rx(st) == 0, "guest %d got %d datagrams over IP with IP blocked" % (g.index, ip_rx(st))
        assert rd["datagrams_rx"] > 0 and rd["multicast_tx"] > 0, rd
        # Heartbeats (and the watch request) go by RDMA unicast to the neighbour's queue pair.
        assert rd["unicast_tx"] > 0 and st["heartbeats_rx"] == 0, (rd, st["heartbeats_rx"])
        # The map shows the other's endpoint exactly as the other reports it.
        peer = node(first(g, "map"), other.addr)
        cap = rdma_capability(peer)
        ost = first(other, "status")["rdma"]
        assert cap and cap["gid"] == ost["gid"] and cap["qpn"] == ost["qpn"], (cap, ost)
    # Immediate-only notices: guest 1's (ID, tag 42) reported, the unknown ID counted.
    notice = as_object(g0.value("notice"))
    a, b, c, d = (int(x) for x in g1.addr.split("."))
    assert notice["event"] == "process.notice" and notice["node"] == g1.addr, notice
    assert notice["id"] == c * 256 + d and notice["tag"] == 42, notice
    after = g0.value("status")
    assert after["drops"]["unknown_notice"] >= 1, after["drops"]
    assert after["rdma"]["immediate_rx"] >= 2, after["rdma"]
    detect = g0.value("detect_ms")
    assert detect is not None and detect <= DETECT_BOUND_MS, detect
    assert g0.value("discd_exit") == 0
    return "discover %s ms, detect %s ms over RDMA only, boot-to-ready %s s, cycle %.1f s" % (
        "/".join(str(g.value("discover_ms")) for g in r.guests), detect,
        "/".join("%.1f" % g.ready_s for g in r.guests), r.wall_s)


test_rdma_only_discovery_detection_and_notices.timeout = 360


def test_rdma_mixed_cluster(ctx):
    """3 guests, one without rxe: converge (RDMA where both ends have it, IP otherwise), detect a SIGKILL"""
    r = ctx.run("rdma_mixed", guests=3, rxe=[True, True, False], timeout=360)
    finished(r)
    g0, g1, g2 = r.guests
    s0, s2 = first(g0, "status"), first(g2, "status")
    assert s0["rdma"]["state"] == "up" and s0["rdma"]["datagrams_rx"] > 0, s0["rdma"]
    assert s2["rdma"]["state"] == "down" and s2["rdma"]["datagrams_tx"] == 0, s2["rdma"]
    assert ip_rx(s2) > 0
    # Guest 2 (no RDMA) still knows the others' endpoints; everyone sees guest 2 without one.
    m2 = first(g2, "map")
    for g in (g0, g1):
        assert rdma_capability(node(m2, g.addr)), "guest 2's map lacks %s's RDMA endpoint" % g.addr
        assert rdma_capability(node(first(g, "map"), g2.addr)) is None
    for g in (g0, g2):
        assert len([n for n in first(g, "map")["nodes"] if n["state"] == "alive"]) == 3
        detect = g.value("detect_ms")
        assert detect is not None and detect <= DETECT_BOUND_MS, (g.index, detect)
    return "discover %s ms, detect %s ms (RDMA node) / %s ms (IP-only node), cycle %.1f s" % (
        "/".join(str(g.value("discover_ms")) for g in r.guests), g0.value("detect_ms"), g2.value("detect_ms"), r.wall_s)


test_rdma_mixed_cluster.timeout = 420


def test_rdma_device_removed_and_back(ctx):
    """rdma link delete under a running discd: IP fallback, no member lost; the device back: RDMA again"""
    r = ctx.run("rdma_fallback", guests=2, timeout=300)
    finished(r)
    g0, g1 = r.guests
    before = first(g0, "status")["rdma"]
    down = g0.values("status")[1]
    end = g0.value("status")
    assert down["rdma"]["state"] == "down" and down["rdma"]["downs"] == 1 and down["rdma"]["reason"], down["rdma"]
    assert down["members"] == 2
    ev = as_object(g0.value("down_event"))
    assert ev["event"] == "rdma.down" and ev["was_up"] is True and ev["level"] == "warning", ev
    assert end["rdma"]["state"] == "up" and end["rdma"]["ups"] == 2 and end["members"] == 2, end["rdma"]
    # The peer's map follows the new endpoint (a new queue pair after the device came back).
    cap = rdma_capability(node(g1.value("map"), g0.addr))
    assert cap and cap["qpn"] == end["rdma"]["qpn"], (cap, end["rdma"])
    assert end["rdma"]["qpn"] != before["qpn"] or end["rdma"]["gid"] == before["gid"]
    # The same changes on the event stream, in order (space discd.config, from the start: --since 0).
    config = g0.value("config_events")
    assert config == ["RDMA_UP", "RDMA_DOWN", "RDMA_UP"], "discd.config events %s" % config
    return "rdma link delete %s ms, fallback %s ms, back %s ms after rdma link add, cycle %.1f s; " \
        "config events %s" % (g0.value("delete_ms"), g0.value("fallback_ms"), g0.value("back_ms"), r.wall_s, config)


test_rdma_device_removed_and_back.timeout = 360
