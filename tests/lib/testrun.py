"""What tests/netns/run.py and tests/guests/run.py share: finding the test_* functions, the common
options, running one test under its time limit, its PASS/FAIL/SKIP line, and the closing summary
with the no-silent-skip rule (docs/TESTING.md). Python 3 stdlib only."""
import glob
import importlib.util
import os
import signal
import time
import traceback

ALLOW_SKIP_ENV = "DISCD_TESTS_ALLOW_SKIP"


class TestTimeout(Exception):
    pass


def collect(directory):
    """(module.function name, function) for every test_* function of every test_*.py, in file order."""
    tests = []
    for path in sorted(glob.glob(os.path.join(directory, "test_*.py"))):
        modname = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(modname, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        fns = [v for k, v in vars(mod).items() if k.startswith("test_") and callable(v)]
        fns.sort(key=lambda f: f.__code__.co_firstlineno)
        tests += [("%s.%s" % (modname, f.__name__), f) for f in fns]
    return tests


def add_common_args(ap, default_timeout, keep_help):
    ap.add_argument("-k", dest="k", action="append", default=[],
                    help="run only tests whose name contains this substring (repeatable: any)")
    ap.add_argument("--list", action="store_true", help="list the tests and exit")
    ap.add_argument("--keep", action="store_true", help=keep_help)
    ap.add_argument("--timeout", type=float, default=default_timeout,
                    help="overall limit per test (s); a test function's `timeout` attribute raises it")


def select(tests, a):
    return [(n, f) for n, f in tests if any(k in n for k in a.k)] if a.k else tests


def print_list(tests, width):
    for n, f in tests:
        doc = (f.__doc__ or "").strip().splitlines()
        print("%-*s %s" % (width, n, doc[0] if doc else ""))


def _alarm(signum, frame):
    raise TestTimeout("test exceeded its overall time limit")


def run_one(fn, ctx, timeout, classify=None):
    """Runs fn(ctx) under max(timeout, fn.timeout) seconds. Returns (status, detail, seconds).
    classify(exception) may return (status, detail) for runner-specific exceptions (skips, an
    unusable binary); assertion failures and any other exception FAIL."""
    signal.signal(signal.SIGALRM, _alarm)
    t0 = time.monotonic()
    signal.alarm(int(max(timeout, getattr(fn, "timeout", 0))))
    try:
        status, detail = "PASS", fn(ctx) or ""
    except AssertionError as e:
        status, detail = "FAIL", (str(e) or "assertion failed") + "\n" + "".join(traceback.format_tb(e.__traceback__)[-1:])
    except Exception as e:  # noqa: any other error fails the test, unless the runner knows it
        known = classify(e) if classify else None
        status, detail = known or ("FAIL", "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc()))
    finally:
        signal.alarm(0)
    return status, detail, time.monotonic() - t0


def report(status, name, seconds, detail):
    first, _, rest = str(detail).partition("\n")
    print("%s %s (%.1fs) - %s" % (status, name, seconds, first), flush=True)
    if status == "FAIL":
        for line in rest.rstrip().splitlines():
            print("    " + line)


class Tally:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def add(self, status):
        if status == "PASS":
            self.passed += 1
        elif status == "SKIP":
            self.skipped += 1
        else:
            self.failed += 1


def finish(prefix, tally, extra_problem=None):
    """The summary line `PREFIX: N passed, M failed, K skipped`; the exit code: 1 on any failure, on
    any skip unless DISCD_TESTS_ALLOW_SKIP=1, and on `extra_problem` (e.g. an unusable discd)."""
    rc = 1 if tally.failed else 0
    if tally.skipped and os.environ.get(ALLOW_SKIP_ENV) != "1":
        print("%s: %d test(s) skipped: a skip fails the run (set %s=1 to accept skips)"
              % (prefix, tally.skipped, ALLOW_SKIP_ENV))
        rc = 1
    if extra_problem:
        print("%s: %s" % (prefix, extra_problem))
        rc = 1
    print("%s: %d passed, %d failed, %d skipped" % (prefix, tally.passed, tally.failed, tally.skipped))
    return rc


def no_tests(prefix):
    print("%s: no test selected" % prefix)
    print("%s: 0 passed, 0 failed, 0 skipped" % prefix)
    return 1
