#!/usr/bin/env python3
"""Real-network integration tests for discd: real daemons, one per Linux network
namespace, real multicast through Linux bridges.  Python 3 stdlib only.

  python3 tests/netns/run.py [-k SUBSTRING] [--list] [--keep] [--cleanup [--force]]

Runs every test_* function of every tests/netns/test_*.py module (in file order),
prints one PASS/FAIL/SKIP line per test with its timing, and ends with
`netns: N passed, M failed, K skipped`.

No silent skips: the exit code is 1 if any test failed, if any was skipped, or if
no test was selected.  Skips are accepted (exit 0 when nothing failed) only with
the documented opt-out DISCD_TESTS_ALLOW_SKIP=1, which CI never sets.  Without a
usable environment (root, `ip netns`, a bridge in a namespace, and every tool the
tests run: ip, sysctl, nft, smcrouted, smcroutectl, taskset) every test is
reported SKIP with the reason.

The binaries under test (discd, showmap) are those in $DISCD_BIN if set (a
directory; scripts/test-all.sh sets it to `swift build --show-bin-path`), else in
the directory `swift build --show-bin-path` prints (the debug build); there is no
guessing among .build/release and .build/debug.  Their path, mtime and size are
printed first.  A missing discd/showmap, or a discd whose `--help` fails or lacks
`--map`, makes every test that needs discd FAIL (never SKIP), and the run exit 1
even when the environment is unusable and skips are allowed.
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
ALLOW_SKIP_ENV = "DISCD_TESTS_ALLOW_SKIP"


class TestTimeout(Exception):
    pass


class DiscdUnusable(Exception):
    """The discd/showmap under test is missing or broken: the test FAILS (it is not a skip)."""


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
            raise DiscdUnusable(p)


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


def describe_binaries(bindir):
    """Lines saying which binaries are tested: path, mtime, size."""
    if not bindir:
        return ["# binaries under test: none found"]
    out = ["# binaries under test: %s%s" % (bindir, " (from $DISCD_BIN)" if os.environ.get("DISCD_BIN") else
                                            " (from `swift build --show-bin-path`)")]
    for b in ("discd", "showmap"):
        p = os.path.join(bindir, b)
        try:
            st = os.stat(p)
            real = os.path.realpath(p)
            out.append("#   %s%s  mtime %s  size %d bytes" % (
                p, (" -> " + real) if real != p else "",
                time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(st.st_mtime)), st.st_size))
        except OSError as e:
            out.append("#   %s: %s" % (p, e.strerror))
    return out


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

    allow_skip = os.environ.get(ALLOW_SKIP_ENV) == "1"
    bindir = netlab.find_bindir()
    for line in describe_binaries(bindir):
        print(line, flush=True)
    bin_problem = netlab.discd_problem(bindir)
    if bin_problem:
        print("# discd UNUSABLE, every test that needs it FAILS: %s" % bin_problem, flush=True)
    if not tests:
        print("netns: no test selected")
        print("netns: 0 passed, 0 failed, 0 skipped")
        return 1

    problem = netlab.env_problem()
    passed = failed = skipped = 0
    if problem:
        for n, _ in tests:
            print("SKIP %s (0.0s) - %s" % (n, problem))
            skipped += 1
        return finish(passed, failed, skipped, allow_skip, bin_problem)

    netlab.install_cleanup_handlers()
    signal.signal(signal.SIGALRM, _alarm)
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
        except DiscdUnusable as e:
            status, detail = "FAIL", "discd under test unusable: %s" % e
        except Skip as e:
            if bin_problem and str(e) == bin_problem:  # a Lab refusing to start the broken binary
                status, detail = "FAIL", "discd under test unusable: %s" % e
            else:
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
    return finish(passed, failed, skipped, allow_skip, bin_problem)


def finish(passed, failed, skipped, allow_skip, bin_problem):
    """Print the summary line; the exit code: 1 on any failure, on any skip unless
    DISCD_TESTS_ALLOW_SKIP=1, and on an unusable discd even if no test got to use it."""
    rc = 0
    if failed:
        rc = 1
    if skipped and not allow_skip:
        print("netns: %d test(s) skipped: a skip fails the run (set %s=1 to accept skips)"
              % (skipped, ALLOW_SKIP_ENV))
        rc = 1
    if bin_problem:
        print("netns: the discd under test is unusable: %s" % bin_problem)
        rc = 1
    print("netns: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return rc


if __name__ == "__main__":
    sys.exit(main())
