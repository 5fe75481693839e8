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
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "lib"))

import netlab  # noqa: E402
from netlab import Skip  # noqa: E402
import testrun  # noqa: E402

DEFAULT_TEST_TIMEOUT = 180



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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    testrun.add_common_args(ap, DEFAULT_TEST_TIMEOUT, "keep /tmp/ddXXXX work dirs (logs, maps) even on success")
    ap.add_argument("--cleanup", action="store_true", help="remove stale dd????-* namespaces and exit")
    ap.add_argument("--force", action="store_true", help="with --cleanup: also remove namespaces of live runs")
    a = ap.parse_args()

    tests = testrun.select(testrun.collect(HERE), a)
    if a.list:
        testrun.print_list(tests, 55)
        return 0

    if a.cleanup:
        if os.geteuid() != 0:
            print("--cleanup needs root")
            return 1
        n = netlab.cleanup_stale(force=a.force)
        print("netns cleanup: %d namespace(s) removed" % n)
        return 0

    bindir = netlab.find_bindir()
    for line in describe_binaries(bindir):
        print(line, flush=True)
    bin_problem = netlab.discd_problem(bindir)
    if bin_problem:
        print("# discd UNUSABLE, every test that needs it FAILS: %s" % bin_problem, flush=True)
    unusable = "the discd under test is unusable: %s" % bin_problem if bin_problem else None
    if not tests:
        return testrun.no_tests("netns")

    tally = testrun.Tally()
    problem = netlab.env_problem()
    if problem:
        for n, _ in tests:
            testrun.report("SKIP", n, 0.0, problem)
            tally.add("SKIP")
        return testrun.finish("netns", tally, unusable)

    def classify(e):
        if isinstance(e, DiscdUnusable):
            return "FAIL", "discd under test unusable: %s" % e
        if isinstance(e, Skip):
            # a Lab refusing to start the broken binary is a failure, not a skip
            if bin_problem and str(e) == bin_problem:
                return "FAIL", "discd under test unusable: %s" % e
            return "SKIP", str(e)
        return None

    netlab.install_cleanup_handlers()
    ctx = Context(bindir, a.keep)
    t_all = time.monotonic()
    for name, fn in tests:
        ctx.labs = []
        status = "FAIL"
        try:
            status, detail, el = testrun.run_one(fn, ctx, a.timeout, classify)
        finally:
            for lab in ctx.labs:
                if status == "FAIL":
                    lab.failed = True   # keeps its work directory
                try:
                    lab.close()
                except Exception as e:  # noqa
                    print("# cleanup of %s failed: %s" % (lab.id, e))
        tally.add(status)
        testrun.report(status, name, el, detail)
        if status == "FAIL":
            for lab in ctx.labs:
                print("    logs kept in %s" % lab.workdir)
    print("# total %.1fs" % (time.monotonic() - t_all))
    return testrun.finish("netns", tally, unusable)


if __name__ == "__main__":
    sys.exit(main())
