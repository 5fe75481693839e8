#!/usr/bin/env python3
"""Real-network integration tests for discd: real daemons, one per Linux network
namespace, real multicast through Linux bridges.  Python 3 stdlib only.

  python3 tests/netns/run.py [-k SUBSTRING] [--list] [--keep] [--cleanup [--force]]

Runs every test_* function of every tests/netns/test_*.py module (in file order),
prints one PASS/FAIL/SKIP line per test with its timing, and ends with
`netns: N passed, M failed, K skipped`; exit code 1 if any failed.
Without root or usable `ip netns`, every test is skipped (exit 0).
The discd binaries come from $DISCD_BIN (default: first of .build/release,
.build/debug that has discd).
"""
import argparse
import glob
import importlib.util
import os
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import netlab  # noqa: E402
from netlab import Skip  # noqa: E402

DEFAULT_TEST_TIMEOUT = 180


class TestTimeout(Exception):
    pass


class Context:
    """Handed to every test: where the binaries are, and a Lab factory."""

    def __init__(self, bindir, keep):
        self.bindir = bindir
        self.keep = keep
        self.labs = []

    def lab(self, label=""):
        lab = netlab.Lab(bindir=self.bindir, keep=self.keep, label=label)
        self.labs.append(lab)
        return lab

    def need_discd(self):
        p = netlab.discd_problem(self.bindir)
        if p:
            raise Skip(p)


def collect():
    tests = []
    for path in sorted(glob.glob(os.path.join(HERE, "test_*.py"))):
        modname = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(modname, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        fns = [v for k, v in vars(mod).items() if k.startswith("test_") and callable(v)]
        fns.sort(key=lambda f: f.__code__.co_firstlineno)
        for f in fns:
            tests.append(("%s.%s" % (modname, f.__name__), f))
    return tests


def _alarm(signum, frame):
    raise TestTimeout("test exceeded its overall time limit")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", dest="k", action="append", default=[],
                    help="run only tests whose name contains this substring (repeatable: any)")
    ap.add_argument("--list", action="store_true", help="list the tests and exit")
    ap.add_argument("--keep", action="store_true", help="keep /tmp/ddXXXX work dirs (logs, maps) even on success")
    ap.add_argument("--cleanup", action="store_true", help="remove stale dd????-* namespaces and exit")
    ap.add_argument("--force", action="store_true", help="with --cleanup: also remove namespaces of live runs")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TEST_TIMEOUT, help="overall limit per test (s); a test function's `timeout` attribute raises it")
    a = ap.parse_args()

    tests = collect()
    if a.k:
        tests = [(n, f) for n, f in tests if any(k in n for k in a.k)]
    if a.list:
        for n, f in tests:
            doc = (f.__doc__ or "").strip().splitlines()
            print("%-55s %s" % (n, doc[0] if doc else ""))
        return 0

    if a.cleanup:
        if os.geteuid() != 0:
            print("--cleanup needs root")
            return 1
        n = netlab.cleanup_stale(force=a.force)
        print("netns cleanup: %d namespace(s) removed" % n)
        return 0

    problem = netlab.env_problem()
    bindir = netlab.find_bindir()
    passed = failed = skipped = 0
    if problem:
        for n, _ in tests:
            print("SKIP %s (0.0s) - %s" % (n, problem))
            skipped += 1
        print("netns: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
        return 0

    netlab.install_cleanup_handlers()
    signal.signal(signal.SIGALRM, _alarm)
    print("# discd binaries: %s" % (bindir or "(none found)"), flush=True)
    ctx = Context(bindir, a.keep)
    t_all = time.monotonic()
    for name, fn in tests:
        t0 = time.monotonic()
        ctx.labs = []
        # a test may ask for more time with a `timeout` attribute (seconds)
        signal.alarm(int(max(a.timeout, getattr(fn, "timeout", 0))))
        status, detail = None, ""
        try:
            detail = fn(ctx) or ""
            status = "PASS"
        except Skip as e:
            status, detail = "SKIP", str(e)
        except AssertionError as e:
            status, detail = "FAIL", str(e) or "assertion failed"
            detail += "\n" + "".join(traceback.format_tb(e.__traceback__)[-1:])
        except Exception as e:  # noqa
            status, detail = "FAIL", "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc())
        finally:
            signal.alarm(0)
            for lab in ctx.labs:
                if status == "FAIL":
                    lab.failed = True
                try:
                    lab.close()
                except Exception as e:  # noqa
                    print("# cleanup of %s failed: %s" % (lab.id, e))
        el = time.monotonic() - t0
        if status == "PASS":
            passed += 1
        elif status == "SKIP":
            skipped += 1
        else:
            failed += 1
        first, _, rest = str(detail).partition("\n")
        print("%s %s (%.1fs) - %s" % (status, name, el, first), flush=True)
        if status == "FAIL":
            for line in rest.rstrip().splitlines():
                print("    " + line)
            for lab in ctx.labs:
                print("    logs kept in %s" % lab.workdir)
    print("# total %.1fs" % (time.monotonic() - t_all))
    print("netns: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
