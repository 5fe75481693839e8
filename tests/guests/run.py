#!/usr/bin/env python3
"""Guest tests: qemu guests (Debian's kernel, TCG) with Soft-RoCE, built by
tests/guests/guestbed.py.  Python 3 stdlib only.

  python3 tests/guests/run.py [-k SUBSTRING] [--list] [--keep] [--timeout S]

Runs every test_* function of every tests/guests/test_*.py module (in file order), prints
one PASS/FAIL/SKIP line per test with its timing, and ends with
`guests: N passed, M failed, K skipped`.

No silent skips: the exit code is 1 if any test failed, if any was skipped, or if no test
was selected.  Skips are accepted (exit 0 when nothing failed) only with the documented
opt-out DISCD_TESTS_ALLOW_SKIP=1, which CI never sets.  Tests are skipped only when guests
cannot run here at all (not root, qemu or a guest tool missing after
scripts/install-deps.sh --test, the kernel package not downloadable); the reason is printed.
Any other problem preparing the guest kernel fails every test.

Each test gets a Context: ctx.run(...) is guestbed.run() with the prepared kernel and this
test's log directory (/var/tmp/guestbed-tests-*/<test>/), which is removed when the test
passes (unless --keep) and kept, and printed, when it fails.  The guests see $DISCD_BIN if
set, else `swift build --show-bin-path` (printed first).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "lib"))

import guestbed  # noqa: E402
import testrun  # noqa: E402

DEFAULT_TEST_TIMEOUT = 300



class Context:
    """Handed to every test: the prepared kernel and a run() bound to this test's log dir."""

    def __init__(self, kernel, base, keep):
        self.kernel = kernel
        self.base = base
        self.keep = keep
        self.dir = None
        self.runs = []

    def start(self, name):
        self.dir = os.path.join(self.base, name)
        self.runs = []

    def run(self, scenario=None, **kw):
        """guestbed.run() with the prepared kernel, logs under this test's directory."""
        kw.setdefault("kernel", self.kernel)
        kw.setdefault("out_dir", self.dir)
        r = guestbed.run(scenario, **kw)
        self.runs.append(r)
        return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    testrun.add_common_args(ap, DEFAULT_TEST_TIMEOUT, "keep every test's logs, even on success")
    a = ap.parse_args()

    tests = testrun.select(testrun.collect(HERE), a)
    if a.list:
        testrun.print_list(tests, 40)
        return 0
    if not tests:
        return testrun.no_tests("guests")

    guestbed.install_signal_handlers()
    guestbed.cleanup_stale()
    tally = testrun.Tally()
    kernel, skip_why, fail_why = None, None, None
    try:
        kernel = guestbed.prepare()
    except guestbed.Unavailable as e:
        skip_why = str(e)
    except guestbed.GuestbedError as e:
        fail_why = "cannot prepare the guest kernel: %s" % e
    if kernel:
        print("# guest kernel %s (%s), initramfs %s" % (kernel.version, kernel.base,
                                                       os.path.basename(kernel.initramfs)), flush=True)
        print("# DISCD_BIN in the guests: %s%s" % (guestbed.discd_bin() or "(none)",
              " (from $DISCD_BIN)" if os.environ.get("DISCD_BIN") else " (from `swift build --show-bin-path`)"),
              flush=True)
    if skip_why or fail_why:
        for n, _ in tests:
            status = "SKIP" if skip_why else "FAIL"
            testrun.report(status, n, 0.0, skip_why or fail_why)
            tally.add(status)
        return testrun.finish("guests", tally)

    base = tempfile.mkdtemp(prefix="guestbed-tests-", dir="/var/tmp")
    owner = os.path.join(base, guestbed.OWNER_FILE)
    with open(owner, "w") as f:
        f.write("%d\n" % os.getpid())
    ctx = Context(kernel, base, a.keep)

    def classify(e):
        return ("SKIP", str(e)) if isinstance(e, guestbed.Unavailable) else None

    t_all = time.monotonic()
    kept_any = False
    try:
        for name, fn in tests:
            ctx.start(name)
            status, detail, el = testrun.run_one(fn, ctx, a.timeout, classify)
            tally.add(status)
            testrun.report(status, name, el, detail)
            if status == "FAIL" or a.keep:
                if os.path.isdir(ctx.dir):
                    print("    logs kept in %s" % ctx.dir)
                    kept_any = True
            else:
                shutil.rmtree(ctx.dir, ignore_errors=True)
    finally:
        if kept_any:
            os.unlink(owner)
        else:
            shutil.rmtree(base, ignore_errors=True)
    print("# total %.1fs" % (time.monotonic() - t_all))
    return testrun.finish("guests", tally)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("guests: interrupted; guests stopped", file=sys.stderr)
        sys.exit(130)
    except guestbed.Terminated as e:
        print("guests: %s; guests stopped" % e, file=sys.stderr)
        sys.exit(128 + e.signum)
