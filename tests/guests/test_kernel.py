"""discd's kernel modules (kernel/): heartbeat.ko and fdmod.ko, built on the host against the guest
kernel's Debian headers (tests/guests/kbuild.py; any warning fails the build, and so the test),
then loaded in qemu guests with Soft-RoCE next to a running discd (scenarios/kmod_rdma.sh).
The guests record what the modules did (records read from /dev/heartbeat, /proc/fdmod/stats,
errno names of bad input) and what the other node's discd logged (JSON events by name and
field); both guests' console logs and dmesg must be free of kernel warnings, and the taint
flags may say only out-of-tree and unsigned."""
import json
import os
import re
import subprocess

import guestbed
import kbuild
from test_rdma import finished, first

HBTOOL_SRC = os.path.join(guestbed.REPO, "tests", "guests", "tools", "hbtool.c")
UAPI = os.path.join(guestbed.REPO, "kernel", "include", "uapi", "discd_heartbeat.h")
BAD_KERNEL_LOG = re.compile(r"BUG:|WARNING:|Oops|kmemleak|general protection|Call Trace")
# /proc/sys/kernel/tainted bits that mean trouble: forced rmmod, machine check, bad page, oops
# (die), warning, soft lockup.  Out-of-tree (12) and unsigned (13) modules are expected.
BAD_TAINTS = {3: "forced rmmod", 4: "machine check", 5: "bad page", 7: "oops", 9: "warning", 14: "soft lockup"}

_built = {}


def modules():
    """{'heartbeat': path, 'fdmod': path}: the modules built for the guests' kernel (once per run).
    A failed build (or a warning) is an assertion failure: the test fails, never skips."""
    if "ko" not in _built:
        try:
            _built["ko"] = kbuild.build(guestbed.prepare(headers=True))
        except kbuild.BuildError as e:
            raise AssertionError("kernel module build failed: %s" % e)
    return _built["ko"]


def module_env():
    """The environment of the kmod_* scenarios: HEARTBEAT_KO and FDMOD_KO (paths the guests see)."""
    ko = modules()
    return {"HEARTBEAT_KO": ko["heartbeat"], "FDMOD_KO": ko["fdmod"]}


def hbtool():
    """tests/guests/tools/hbtool.c built with the host's gcc (warnings are errors)."""
    out_dir = os.path.join(guestbed.REPO, ".build", "guest-tools")
    out = os.path.join(out_dir, "hbtool")
    newest = max(os.path.getmtime(HBTOOL_SRC), os.path.getmtime(UAPI))
    if not os.path.exists(out) or os.path.getmtime(out) < newest:
        os.makedirs(out_dir, exist_ok=True)
        r = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", out, HBTOOL_SRC],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, "hbtool build failed:\n%s" % (r.stderr + r.stdout)[-3000:]
    return out


def kernel_log_problems(r, need_dmesg=True):
    """Lines of each guest's console log and saved dmesg ($SHARED/dmesg.<index>, required unless
    need_dmesg is false) that show a kernel problem, and recorded taint flags ("tainted") that do."""
    problems = []
    for g in r.guests:
        logs = [("console", g.console), ("dmesg", os.path.join(r.run_dir, "shared", "dmesg.%d" % g.index))]
        for label, path in logs:
            try:
                with open(path, errors="replace") as f:
                    text = f.read()
            except (OSError, TypeError):
                if label == "dmesg" and need_dmesg:
                    problems.append("guest %d saved no dmesg" % g.index)
                continue
            for line in text.splitlines():
                if BAD_KERNEL_LOG.search(line):
                    problems.append("guest %d %s: %s" % (g.index, label, line.strip()[:200]))
        taint = g.value("tainted")
        if taint is not None:
            bad = [name for bit, name in sorted(BAD_TAINTS.items()) if int(taint) >> bit & 1]
            if bad:
                problems.append("guest %d kernel tainted %s (%s)" % (g.index, taint, ", ".join(bad)))
    return problems


def node_id(addr):
    a, b, c, d = (int(x) for x in addr.split("."))
    return c * 256 + d


def test_kernel_modules_over_rxe(ctx):
    """heartbeat.ko + fdmod.ko with discd on 2 rxe guests: exit records, RDMA notices logged by the other node's discd, bad input refused, limits, both load orders and unload with watched processes alive, rxe0 deleted and re-added; clean kernel logs"""
    env = dict(module_env(), HBTOOL=hbtool())
    r = ctx.run("kmod_rdma", guests=2, timeout=200, env=env)
    finished(r)
    problems = kernel_log_problems(r)
    assert not problems, "kernel log: " + "; ".join(problems[:10])
    g0, g1 = r.guests
    id0 = node_id(g0.addr)

    # 1. Limits (max_watched=8, queue_len=16).
    cap = first(g0, "capacity")
    assert (cap["ok"], cap["enospc"], cap["other"]) == (8, 1, 0), cap
    fl = first(g0, "flood")
    assert fl["optin_failed"] == 0 and fl["records"] == 16 and fl["bad_status"] == 0 and fl["bad_tag"] == 0, fl
    assert fl["lost_in_records"] == 0 and fl["next_lost"] == 40 - 16, fl
    for mode in ("group", "each"):
        t = first(g0, "threads_" + mode)
        assert t["records"] == 1 and t["status"] == t["wait_status"], t
    assert first(g0, "threads_group")["status"] == 5 << 8, first(g0, "threads_group")
    hb = first(g0, "hb_stats_flood")
    assert hb["lost"] == 24 and hb["watched"] == 0 and hb["queue_size"] == 16 and hb["watched_max"] == 8, hb

    # 2. Bad input, the map, the first exit.
    probe = first(g0, "probe")
    want = {"tag_70000": "EINVAL", "optin_self": "OK", "optin_again": "EEXIST", "optin_again_by_pid": "EEXIST",
            "optout_self": "OK", "optout_again": "ENOENT", "no_such_pid": "ESRCH", "pid_too_big": "ESRCH",
            "unknown_ioctl": "ENOTTY", "bad_pointer": "EFAULT", "write_garbage": "EINVAL",
            "write_bad_pid": "EINVAL", "write_big_tag": "EINVAL", "write_two_lines": "EINVAL", "write_self": "OK",
            "write_self_again": "EEXIST", "optout_after_write": "OK", "read_short": "EINVAL",
            "read_empty": "EAGAIN", "poll_empty": "OUT"}
    assert probe == want, {k: (probe.get(k), v) for k, v in want.items() if probe.get(k) != v}
    pu = first(g0, "probe_user")
    assert pu["uid"] == 65534 and pu["read"] == "EPERM" and pu["optin_pid1"] == "EPERM", pu
    assert pu["optout_pid1"] == "EPERM" and pu["optin_self"] == "OK" and pu["optout_self"] == "OK", pu
    assert first(g0, "map_user") == {"open": "EACCES"}, first(g0, "map_user")
    split = first(g0, "map_split")
    assert split["writes"] == ["OK"] * 3 and split["close"] == "OK", split
    assert first(g0, "map_bad")["writes"] == ["OK", "EINVAL", "EINVAL"], first(g0, "map_bad")
    for w in first(g0, "map_bad_more"):
        assert w["writes"] == ["EINVAL"], first(g0, "map_bad_more")
    assert first(g0, "map_bad_tail")["writes"] == ["OK"], first(g0, "map_bad_tail")
    st = first(g0, "fd_stats_probed")
    assert st["node_id"] == id0 and st["map_entries"] == 3 and st["map_updates"] == 2, st
    assert st["map_rejects"] == 8 and st["sends"] == 0, st

    k7 = first(g0, "kill_7")
    assert k7["tag"] == 7 and k7["status"] == 9 and k7["lost"] == 0 and k7["flags"] == 0, k7
    # start_ns is the start time /proc/PID/stat shows (in clock ticks).
    assert k7["start_ns"] // (10 ** 9 // k7["ticks_per_s"]) == k7["stat_start_ticks"], k7
    assert k7["exit_ns"] > k7["start_ns"] and 0 <= k7["hook_us"] <= k7["read_us"], k7
    st7 = first(g0, "fd_stats_7")
    assert st7["state"] == "up" and st7["device"] == "rxe0" and st7["heartbeat"] == "attached", st7
    assert st7["sends"] == 1 and st7["send_errors"] == 0 and st7["completions"] == 1, st7

    # 3./4. The reloaded modules: exits without a map or a device counted, not sent.
    for tag in (10, 9, 11, 12):
        rec = first(g0, "kill_%d" % tag)
        assert rec["tag"] == tag and rec["status"] == 9, rec
    end = first(g0, "fd_stats_end")
    assert end["state"] == "up" and end["present"] == "yes" and end["node_id"] == id0, end
    assert (end["sends"], end["send_errors"], end["sends_without_id"], end["sends_without_device"]) == (2, 0, 1, 1), end
    assert end["completions"] == 2 and end["map_updates"] == 1 and end["map_rejects"] == 0, end
    hb_end = first(g0, "hb_stats_end")
    assert hb_end["exits"] == 4 and hb_end["callback_calls"] == 4 and hb_end["lost"] == 0, hb_end

    # Guest 1's discd logged each sent exit once, with guest 0's node ID and the tag.
    for tag in (7, 9, 12):
        n = first(g1, "notice_%d" % tag)["event"]
        assert n["event"] == "process.notice" and n["id"] == id0 and n["tag"] == tag, n
        assert n["node"] == g0.addr, n
    assert sorted(first(g1, "notice_tags")) == [7, 9, 12], first(g1, "notice_tags")
    churn = first(g1, "churn")
    assert churn["cycles"] == 12 and churn["callback_calls"] > 0, churn
    for g in r.guests:
        assert g.value("discd_exit") == 0, "guest %d discd exit %s" % (g.index, g.value("discd_exit"))

    ms = [first(g1, "notice_%d" % t)["ms"] for t in (7, 9, 12)]
    return ("SIGKILL -> remote process.notice %s ms, exit hook %d us, record read %.1f ms "
            "after kill; rxe0 re-added -> fdmod up %s ms; churn %d callbacks (%d dropped by heartbeat); "
            "cycle %.1f s" % ("/".join("%.0f" % m for m in ms), k7["hook_us"], k7["read_us"] / 1000.0,
                              g0.value("rdma_back_ms"), churn["callback_calls"], churn["dropped"], r.wall_s))


test_kernel_modules_over_rxe.timeout = 300


def live_stream(g1):
    """How the live subscriber fared: its events and, when it missed any, what else it printed."""
    n = len(g1.values("live_event"))
    text = "live stream %d/2 events" % n
    if n != 2:
        text += " (running %s; other lines %s)" % (g1.value("live_running"), g1.values("live_other")[:4])
    return text


def _with_discd(ctx, rxe):
    """kmod_discd in 2 guests (rxe0 in both, or in neither); returns (run, guest 0, guest 1) after the
    checks both variants share."""
    r = ctx.run("kmod_discd", guests=2, rxe=[rxe, rxe], timeout=240, env=module_env())
    finished(r)
    problems = kernel_log_problems(r)
    assert not problems, "; ".join(problems)
    g0, g1 = r.guests
    # 1. discd wrote the map into fdmod: our ID first, then every node of the map.
    # (recorded with json_str, which turns the newlines into spaces: "self ID ID ADDR ID ADDR ...")
    words = g0.value("fdmod_map").split()
    assert words[:2] == ["self", str(node_id(g0.addr))], words
    pairs = sorted(zip(words[2::2], words[3::2]))
    assert pairs == sorted((str(node_id(a)), a) for a in (g0.addr, g1.addr)), words
    fmap = ["self"] + pairs
    # 2. The exit of the opted-in shell reported exactly once on guest 1.
    assert g1.value("reports_21") == 1, "tag 21 reported %s times on guest 1" % g1.value("reports_21")
    # 3. With fdmod unloaded: discd's notice alone (source kernel, signal 9), once.
    assert g1.value("reports_22") == 1, g1.value("reports_22")
    e22 = g1.value("exit_22")
    e22 = json.loads(e22) if isinstance(e22, str) else e22
    assert e22["source"] == "kernel" and e22["signal"] == 9 and e22["node"] == g0.addr and e22["tag"] == 22, e22
    # 4. Detached, unloaded, reloaded, attached again; an exit after rmmod goes nowhere.
    assert int(g0.value("attaches")) == 2, g0.value("attaches")
    detach = g0.value("detach")
    detach = json.loads(detach) if isinstance(detach, str) else detach
    assert detach["ok"] is True and detach["state"] == "detached", detach
    assert g1.value("reports_23") == 0
    st0 = g0.value("status")
    assert st0["kernel"]["exits"] == 2 and st0["kernel"]["lost"] == 0 and st0["kernel"]["map_writes"] >= 1, st0["kernel"]
    # 5. The daemon's event stream: its history (read at the end) holds each exit once.
    assert g1.value("history_rc") == 0, (g1.value("history_rc"), g1.values("proc_event"))
    history = [v if isinstance(v, dict) else json.loads(v) for v in g1.values("proc_event")]
    events = {e["payload"]["tag"]: e for e in history}
    assert sorted(e["payload"]["tag"] for e in history) == [21, 22], history
    lat = {t: events[t]["time_unix_ms"] - int(g0.value("kill_%d" % t)) for t in (21, 22)}
    # The live subscriber (started before the exits) printed nothing the history lacks; what it
    # printed, and whether it was still running, is reported with the test's figures.
    live = [v if isinstance(v, dict) else json.loads(v) for v in g1.values("live_event")]
    assert all(e in history for e in live) and len(live) == len({e["seq"] for e in live}), (live, history)
    return r, g0, g1, events, lat


def test_kernel_modules_with_discd_over_rxe(ctx):
    """discd's kernel link (2 rxe guests): map into fdmod; an exit over both paths (fdmod's immediate,
    discd's notice) reported once and paired; over IP alone with fdmod unloaded; discd kernel detach,
    rmmod, insmod, attach under a running discd; clean kernel logs"""
    r, g0, g1, events, lat = _with_discd(ctx, rxe=True)
    st1 = g1.value("status")
    assert st1["processes"]["paired_kernel_exits"] >= 1, st1["processes"]
    assert st1["rdma"]["immediate_rx"] >= 1, st1["rdma"]
    assert events[21]["payload"]["source"] in ("rdma_immediate", "kernel"), events[21]
    return ("fdmod map written by discd; tag 21 once via %s (other path paired, %d); tag 22 once over IP with "
            "fdmod unloaded (source kernel); detach, rmmod, insmod, attach; kill -> guest 1's PROC_EXIT: "
            "%d ms with fdmod, %d ms daemon path only (TCG, guest clocks, one offset); %s; cycle %.1f s" % (
                events[21]["payload"]["source"], st1["processes"]["paired_kernel_exits"], lat[21], lat[22],
                live_stream(g1), r.wall_s))


test_kernel_modules_with_discd_over_rxe.timeout = 300


def test_kernel_modules_with_discd_without_rdma(ctx):
    """discd's kernel link on 2 guests without an RDMA device: the exit of a process opted in through
    /dev/heartbeat leaves the node over IP (discd's notice, source kernel), reported once"""
    r, g0, g1, events, lat = _with_discd(ctx, rxe=False)
    st1 = g1.value("status")
    assert st1["processes"]["paired_kernel_exits"] == 0 and st1["rdma"]["immediate_rx"] == 0, (st1["processes"], st1["rdma"])
    assert events[21]["payload"]["source"] == "kernel", events[21]
    m = re.search(r"sends_without_device (\d+)", g0.value("fdmod_stats_after"))
    assert m and int(m.group(1)) >= 1, g0.value("fdmod_stats_after")
    return ("no RDMA device: tags 21 and 22 once each over IP (source kernel); kill -> guest 1's PROC_EXIT %d / "
            "%d ms (TCG); detach, rmmod, insmod, attach; %s; cycle %.1f s" % (lat[21], lat[22], live_stream(g1), r.wall_s))


test_kernel_modules_with_discd_without_rdma.timeout = 300
