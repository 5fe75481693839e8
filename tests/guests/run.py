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
import glob
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import guestbed  # noqa: E402

DEFAULT_TEST_TIMEOUT = 300
ALLOW_SKIP_ENV = "DISCD_TESTS_ALLOW_SKIP"


class TestTimeout(Exception):
    pass


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
    ap.add_argument("--keep", action="store_true", help="keep every test's logs, even on success")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TEST_TIMEOUT,
                    help="overall limit per test (s); a test function's `timeout` attribute raises it")
    a = ap.parse_args()

    tests = collect()
    if a.k:
        tests = [(n, f) for n, f in tests if any(k in n for k in a.k)]
    if a.list:
        for n, f in tests:
            doc = (f.__doc__ or "").strip().splitlines()
            print("%-40s %s" % (n, doc[0] if doc else ""))
        return 0
    allow_skip = os.environ.get(ALLOW_SKIP_ENV) == "1"
    if not tests:
        print("guests: no test selected")
        print("guests: 0 passed, 0 failed, 0 skipped")
        return 1

    guestbed.install_signal_handlers()
    guestbed.cleanup_stale()
    passed = failed = skipped = 0
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
            print("%s %s (0.0s) - %s" % ("SKIP" if skip_why else "FAIL", n, skip_why or fail_why))
        return finish(0, 0 if skip_why else len(tests), len(tests) if skip_why else 0, allow_skip)

    base = tempfile.mkdtemp(prefix="guestbed-tests-", dir="/var/tmp")
    owner = os.path.join(base, guestbed.OWNER_FILE)
    with open(owner, "w") as f:
        f.write("%d\n" % os.getpid())
    ctx = Context(kernel, base, a.keep)
    signal.signal(signal.SIGALRM, _alarm)
    t_all = time.monotonic()
    kept_any = False
    try:
        for name, fn in tests:
            t0 = time.monotonic()
            ctx.start(name)
            signal.alarm(int(max(a.timeout, getattr(fn, "timeout", 0))))
            status, detail = None, ""
            try:
                detail = fn(ctx) or ""
                status = "PASS"
            except guestbed.Unavailable as e:
                status, detail = "SKIP", str(e)
            except AssertionError as e:
                status, detail = "FAIL", str(e) or "assertion failed"
                detail += "\n" + "".join(traceback.format_tb(e.__traceback__)[-1:])
            except Exception as e:  # noqa: any other error fails the test
                status, detail = "FAIL", "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc())
            finally:
                signal.alarm(0)
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
    return finish(passed, failed, skipped, allow_skip)


def finish(passed, failed, skipped, allow_skip):
    """Print the summary line; the exit code: 1 on any failure, on any skip unless
    DISCD_TESTS_ALLOW_SKIP=1."""
    rc = 1 if failed else 0
    if skipped and not allow_skip:
        print("guests: %d test(s) skipped: a skip fails the run (set %s=1 to accept skips)"
              % (skipped, ALLOW_SKIP_ENV))
        rc = 1
    print("guests: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return rc


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("guests: interrupted; guests stopped", file=sys.stderr)
        sys.exit(130)
    except guestbed.Terminated as e:
        print("guests: %s; guests stopped" % e, file=sys.stderr)
        sys.exit(128 + e.signum)
