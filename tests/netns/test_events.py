"""The event stream (docs/EVENTS.md): `discd events` subscribers on a real daemon's control socket
see membership changes as numbered events in transition order, resume after --since without a
gap (or get an explicit HISTORY_LOST marker), filter by name and severity; a malformed request is
refused with an error line, and a stalled subscriber never stalls the node."""
import json
import os
import signal
import socket
import subprocess
import time

from netlab import wait_until
from test_gaps import converge, one_lan, settle

EVENT_BOUND = 2.5   # s: SIGKILL of a member -> NODE_DEAD on a subscriber (detection ~1.05 s + margin)


class Sub:
    """A `discd events` subprocess whose stdout lines are collected."""

    def __init__(self, lab, d, *args):
        self.argv = [os.path.join(lab.bindir, "discd"), "events", "--control", d.control] + list(args)
        self.path = os.path.join(d.node.dir, "events.%d.out" % time.monotonic_ns())
        self.out = open(self.path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def lines(self):
        with open(self.path, errors="replace") as f:
            return [l.rstrip("\n") for l in f if l.strip()]

    def objects(self):
        out = []
        for l in self.lines():
            try:
                out.append(json.loads(l))
            except ValueError:
                out.append({"unparsed": l})
        return out

    def events(self):
        return [o for o in self.objects() if "seq" in o]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self.out.close()


def _start(lab, n):
    _, nodes = one_lan(lab, n, y=5)
    ds = lab.start_daemons(nodes)
    conv = converge(ds, [nd.ip4 for nd in nodes])
    return nodes, ds, conv


def test_events_membership_stream_and_resume(ctx):
    """discd events --json: NODE_DEAD after a SIGKILL, seq strictly increasing, every NODE_SUSPECT has one
    outcome; --since resumes without a gap; --name filters; a seq beyond the daemon's is HISTORY_LOST"""
    ctx.need_discd()
    with ctx.lab() as lab:
        nodes, ds, conv = _start(lab, 4)
        time.sleep(settle(4))
        live = Sub(lab, ds[0], "--json", "--since", "0")
        dead_only = Sub(lab, ds[0], "--json", "--name", "NODE_DEAD", "--count", "1")
        try:
            ok, _ = wait_until(lambda: len(live.objects()) >= 1, 3.0)
            assert ok, "no acknowledgement from the daemon: %s" % live.lines()
            ack = live.objects()[0]
            assert ack.get("ok") is True and ack["history"] >= 1024, ack
            # History from 0: the 4 joins this node saw (itself included).
            joins = [e for e in live.events() if e["name"] == "NODE_JOIN"]
            assert sorted(e["node"] for e in joins) == sorted(nd.ip4 for nd in nodes), live.lines()
            victim = nodes[3].ip4
            t0 = time.monotonic()
            ds[3].proc.send_signal(signal.SIGKILL)

            def dead_seen():
                return any(e["name"] == "NODE_DEAD" and e["node"] == victim for e in live.events())
            ok, lat = wait_until(dead_seen, EVENT_BOUND + 2)
            assert ok, "no NODE_DEAD for %s within %.1fs:\n%s" % (victim, EVENT_BOUND + 2, "\n".join(live.lines()))
            assert lat <= EVENT_BOUND, "NODE_DEAD after %.2fs (bound %.1fs)" % (lat, EVENT_BOUND)
            evs = live.events()
            seqs = [e["seq"] for e in evs]
            assert seqs == sorted(set(seqs)) and seqs[0] >= 1, "seq not strictly increasing: %s" % seqs
            assert all(e["epoch"] == ack["epoch"] for e in evs)
            # Transition order per node: every NODE_SUSPECT is followed by exactly one outcome before
            # the next NODE_SUSPECT of that node.
            for addr in {e["node"] for e in evs if e["node"]}:
                names = [e["name"] for e in evs if e["node"] == addr]
                open_suspect = False
                for nm in names:
                    if nm == "NODE_SUSPECT":
                        assert not open_suspect, "%s: two NODE_SUSPECT without an outcome: %s" % (addr, names)
                        open_suspect = True
                    elif nm in ("NODE_REFUTE", "NODE_DEAD", "NODE_LEAVE"):
                        open_suspect = False
                assert names.count("NODE_DEAD") <= 1, (addr, names)
            d = [e for e in evs if e["name"] == "NODE_DEAD"][0]
            assert d["space"] == "discd.membership" and d["severity"] == "ERROR" and d["node_id"] == 5 * 256 + 4, d
            # The filtered subscriber got exactly that one event and exited (--count 1).
            dead_only.proc.wait(5)
            fe = dead_only.events()
            assert [e["name"] for e in fe] == ["NODE_DEAD"] and fe[0]["seq"] == d["seq"], dead_only.lines()
            # Resume: after the first join, a new subscriber gets everything later, nothing missing.
            k = seqs[0]
            want = [e["seq"] for e in evs if e["seq"] > k]
            again = Sub(lab, ds[0], "--json", "--since", str(k), "--count", str(len(want)))
            again.proc.wait(5)
            got = [e["seq"] for e in again.events()]
            assert got == want, "resume after %d: got %s, want %s" % (k, got, want)
            # A sequence number this daemon never reached: it must say so (another daemon life).
            lost = Sub(lab, ds[0], "--json", "--since", "999999")
            ok, _ = wait_until(lambda: any(o.get("marker") == "HISTORY_LOST" for o in lost.objects()), 3.0)
            assert ok, "no HISTORY_LOST for --since 999999: %s" % lost.lines()
            m = [o for o in lost.objects() if o.get("marker") == "HISTORY_LOST"][0]
            assert m["reason"] == "daemon_restarted", m
            lost.stop()
            again.stop()
            return "acknowledged (history %d); NODE_DEAD %s after %.2fs (bound %.1fs); %d events, seq strictly " \
                   "increasing, every NODE_SUSPECT one outcome; --name filter 1 event; resume after seq %d: %d events, " \
                   "none missing; --since 999999 -> HISTORY_LOST" % (
                       ack["history"], victim, lat, EVENT_BOUND, len(evs), k, len(got))
        finally:
            live.stop()
            dead_only.stop()


def test_events_bad_requests_and_stalled_subscriber(ctx):
    """malformed, oversized and unknown control requests: an error line and a closed connection, the daemon
    unharmed; a subscriber that never reads does not delay heartbeats (no suspicion, no late tick)"""
    ctx.need_discd()
    with ctx.lab() as lab:
        nodes, ds, conv = _start(lab, 3)
        replies = []
        for req in (b"not json\n", b'{"op":"launch"}\n', b'{"op":"subscribe","since":-1}\n',
                    b'{"op":"subscribe","severity":"LOUD"}\n', b"{" + b"x" * 5000 + b"\n"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(3)
            s.connect(ds[0].control)
            s.sendall(req)
            data = b""
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except socket.timeout:
                pass
            s.close()
            line = data.decode(errors="replace").strip()
            replies.append(line)
            obj = json.loads(line.splitlines()[0])
            assert obj.get("ok") is False and obj.get("error"), "request %r: reply %r" % (req[:40], line)
        assert ds[0].alive(), "the daemon died on a bad control request"
        # A subscriber that never reads, while events flow (another node restarts repeatedly).
        stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(ds[0].control)
        stalled.sendall(b'{"op":"subscribe","since":0}\n')
        ok, _ = wait_until(lambda: ds[0].status_json() is not None, 3.0)
        assert ok, "no status file"
        before = ds[0].status_json()
        for i in range(6):
            ds[2].stop()
            ds[2] = lab.start_daemon(nodes[2])
            time.sleep(0.5)
        time.sleep(1.5)
        after = ds[0].status_json()
        stalled.close()
        assert ds[0].alive()
        late = after["late_ticks"] - before["late_ticks"]
        assert late == 0, "late ticks while a subscriber stalled: %d" % late
        susp = after["suspicions"] - before["suspicions"]
        assert susp == 0, "suspicions while a subscriber stalled: %d" % susp
        return "%d bad requests refused with an error line (%s); stalled subscriber through 6 restarts: " \
               "0 late ticks, 0 suspicions" % (len(replies), " | ".join(r[:50] for r in replies))


PROC_BOUND = 1.0    # s: a watched process's exit -> PROC_EXIT on another node's subscriber (veth: ~ms)


def _proc_exits(sub):
    return [e for e in sub.events() if e["name"] == "PROC_EXIT"]


def test_watched_process_exit_reaches_other_nodes(ctx):
    """discd watch -- CMD: SIGKILL and a normal exit reach another node's subscriber as PROC_EXIT (node, pid,
    tag, signal / exit code) once each; discd watch exits with the child's status; --pid; a foreign PID as non-root"""
    ctx.need_discd()
    with ctx.lab() as lab:
        nodes, ds, conv = _start(lab, 3)
        far = Sub(lab, ds[2], "--json", "--space", "discd.process")
        near = Sub(lab, ds[0], "--json", "--space", "discd.process")
        discd = os.path.join(lab.bindir, "discd")
        try:
            ok, _ = wait_until(lambda: len(far.objects()) >= 1 and len(near.objects()) >= 1, 3.0)
            assert ok, "subscribers not acknowledged: %s / %s" % (far.lines(), near.lines())
            # 1. killed by a signal: `discd watch` exits 128 + 9.
            t0 = time.monotonic()
            p = subprocess.run(nodes[0].exec_argv([discd, "watch", "--control", ds[0].control, "--tag", "7", "--",
                                                   "sh", "-c", "sleep 0.3; kill -9 $$"]),
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
            assert p.returncode == 128 + 9, "discd watch exited %d: %s" % (p.returncode, p.stderr[-300:])
            ok, lat = wait_until(lambda: len(_proc_exits(far)) >= 1, 5.0, 0.005)
            assert ok, "no PROC_EXIT on n3:\n%s" % "\n".join(far.lines())
            e = _proc_exits(far)[0]
            assert e["node"] == nodes[0].ip4 and e["payload"]["tag"] == 7 and e["payload"]["signal"] == 9, e
            assert e["payload"]["exit_code"] is None and e["payload"]["name"] == "sh", e
            # 2. a normal exit with code 3.
            p = subprocess.run(nodes[0].exec_argv([discd, "watch", "--control", ds[0].control, "--tag", "8", "--",
                                                   "sh", "-c", "exit 3"]),
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
            assert p.returncode == 3, "discd watch exited %d: %s" % (p.returncode, p.stderr[-300:])
            ok, _ = wait_until(lambda: len(_proc_exits(far)) >= 2, 5.0, 0.005)
            assert ok, "no second PROC_EXIT on n3:\n%s" % "\n".join(far.lines())
            e2 = _proc_exits(far)[1]
            assert e2["payload"]["tag"] == 8 and e2["payload"]["exit_code"] == 3 and e2["payload"]["signal"] is None, e2
            # 3. --pid of a running process of ours, then SIGKILL it.
            victim = subprocess.Popen(nodes[0].exec_argv(["sleep", "30"]), stdin=subprocess.DEVNULL)
            time.sleep(0.2)
            vpid = int(subprocess.run(["pgrep", "-n", "-x", "sleep"], capture_output=True, text=True).stdout.split()[0])
            p = subprocess.run([discd, "watch", "--control", ds[0].control, "--tag", "9", "--pid", str(vpid)],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
            assert p.returncode == 0, "discd watch --pid: %d %s" % (p.returncode, p.stderr)
            os.kill(vpid, signal.SIGKILL)
            ok, _ = wait_until(lambda: len(_proc_exits(far)) >= 3, 5.0, 0.005)
            victim.wait(5)
            assert ok, "no PROC_EXIT for --pid %d:\n%s" % (vpid, "\n".join(far.lines()))
            e3 = _proc_exits(far)[2]
            assert e3["payload"]["pid"] == vpid and e3["payload"]["tag"] == 9, e3
            # Each exit once, on the node itself too (3 copies were multicast per exit).
            time.sleep(0.6)
            assert len(_proc_exits(far)) == 3 and len(_proc_exits(near)) == 3, (far.lines(), near.lines())
            # 4. A non-root caller may not watch another user's process (pid 1 is root's).
            p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", discd, "watch",
                                "--control", ds[0].control, "--pid", "1"],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
            assert p.returncode != 0 and p.stderr.strip(), "non-root watch of pid 1: rc %d %r" % (p.returncode, p.stderr)
            assert len(_proc_exits(far)) == 3
            # Cluster latency (one host clock for both): the watching node multicasts the exit before it
            # publishes its own event, so the far node may publish first; |far - near| stays within the bound.
            spread = [f["time_unix_ms"] - n["time_unix_ms"] for f, n in zip(_proc_exits(far), _proc_exits(near))]
            assert all(abs(d) <= PROC_BOUND * 1000 for d in spread), "far - near publish times %s ms" % spread
            return "SIGKILL of a watched child -> PROC_EXIT (signal 9, tag 7) on another node; exit 3 -> exit_code 3; " \
                   "--pid works; each exit reported once per node; far - watching node publish times %s ms " \
                   "(bound ±%.0f ms); non-root watch of pid 1 refused (rc %d)" % (spread, PROC_BOUND * 1000, p.returncode)
        finally:
            far.stop()
            near.stop()


def test_event_hooks(ctx):
    """--hook NODE_DEAD=PROG runs with the event's fields in its environment; a hook over its time limit is
    killed and logged (hook.failed), a failing hook is logged; heartbeats are never delayed (no suspicion)"""
    ctx.need_discd()
    with ctx.lab() as lab:
        _, nodes = one_lan(lab, 3, y=6)
        d0 = nodes[0].dir
        good = os.path.join(d0, "hook-good.sh")
        slow = os.path.join(d0, "hook-slow.sh")
        bad = os.path.join(d0, "hook-bad.sh")
        out = os.path.join(d0, "hook.env")
        # Written to a temporary name and renamed, so the test never reads a half-written file.
        tmp = os.path.join(d0, "hook.tmp")
        for path, body in ((good, "env | grep ^DISCD_ | sort > %s.$DISCD_EVENT_SEQ && mv %s.$DISCD_EVENT_SEQ %s.$DISCD_EVENT_SEQ\n"
                            % (tmp, tmp, out)),
                           (slow, "exec sleep 30\n"), (bad, "exit 4\n")):
            with open(path, "w") as f:
                f.write("#!/bin/sh\n" + body)
            os.chmod(path, 0o755)
        ds = [lab.start_daemon(nodes[0], args=["--log-format", "json", "--hook", "NODE_DEAD=" + good,
                                               "--hook", "NODE_DEAD,NODE_LEAVE=" + slow, "--hook", "NODE_DEAD=" + bad,
                                               "--hook-timeout", "500ms"])]
        ds += [lab.start_daemon(n) for n in nodes[1:]]
        converge(ds, [nd.ip4 for nd in nodes])
        time.sleep(settle(3))
        victim = nodes[2].ip4
        ds[2].proc.send_signal(signal.SIGKILL)

        def env_files():
            return [f for f in os.listdir(d0) if f.startswith("hook.env.")]
        ok, lat = wait_until(lambda: env_files(), EVENT_BOUND + 3)
        assert ok, "the NODE_DEAD hook never ran"
        with open(os.path.join(d0, env_files()[0])) as f:
            env = dict(l.rstrip("\n").split("=", 1) for l in f if "=" in l)
        assert env.get("DISCD_EVENT_NAME") == "NODE_DEAD" and env.get("DISCD_EVENT_NODE") == victim, env
        assert env.get("DISCD_EVENT_SPACE") == "discd.membership" and env.get("DISCD_PAYLOAD_TO") == "dead", env
        assert json.loads(env["DISCD_EVENT_JSON"])["seq"] == int(env["DISCD_EVENT_SEQ"])

        def failures():
            out = []
            with open(ds[0].log, errors="replace") as f:
                for l in f:
                    if l.startswith("{") and '"event":"hook.failed"' in l:
                        out.append(json.loads(l))
            return out
        ok, _ = wait_until(lambda: len(failures()) >= 2, 5.0)
        fails = failures()
        assert ok, "hook failures not logged: %s" % fails
        progs = sorted(f["program"] for f in fails)
        assert progs == sorted([slow, bad]), fails
        # The status file is rewritten every second: wait for the one written after the death.
        ok, _ = wait_until(lambda: (ds[0].status_json() or {}).get("members") == 2, 3.0)
        st = ds[0].status_json()
        assert ok and st["late_ticks"] == 0, st
        return "NODE_DEAD hook ran %.2fs after the SIGKILL with DISCD_EVENT_*/DISCD_PAYLOAD_* set; slow hook killed " \
               "at its 500 ms limit and failing hook logged (%s); 0 late ticks, both live nodes still members" % (
                   lat, "; ".join(f["reason"] for f in fails))
