#!/usr/bin/env python3
"""Fuzzing (libFuzzer): the parsers that take untrusted bytes, through FuzzTarget
(Sources/FuzzTargets): datagrams to a node without and with a cluster key, the map file, mosix.map,
control requests.  Python 3 stdlib only.

  python3 tests/fuzz/run.py [--seconds S] [-k TARGET]

Builds `discd-fuzz` with `swift build --sanitize=fuzzer` into .build-fuzz/, then runs each target
for S seconds (default $DISCD_FUZZ_SECONDS or 30; `make fuzz` runs 600) on a scratch copy of its
committed corpus (Tests/Fuzz/corpus/<target>/) plus the built-in seeds.  One PASS/FAIL line per
target with the executions done, then `fuzz: N passed, M failed, K skipped`.  A crash fails its
target and prints the input (hex) and the command to reproduce it; add that input to the corpus
directory: FuzzCorpusTests then replays it in every `swift test` (a regression test).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGETS = ("datagram", "keyed", "mapfile", "mosix", "control")
BUILD = os.path.join(REPO, ".build-fuzz")


def build():
    cmd = ["swift", "build", "--sanitize=fuzzer", "--product", "discd-fuzz", "--build-path", BUILD]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        return None, "%s failed (%d):\n%s" % (" ".join(cmd), r.returncode, (r.stdout + r.stderr)[-4000:])
    b = subprocess.run(cmd + ["--show-bin-path"], cwd=REPO, capture_output=True, text=True, timeout=120).stdout.strip()
    print("# fuzzer built in %.0fs: %s" % (time.monotonic() - t0, os.path.join(b, "discd-fuzz")), flush=True)
    return os.path.join(b, "discd-fuzz"), None


def run_target(binary, target, seconds, work):
    corpus = os.path.join(work, target)
    committed = os.path.join(REPO, "Tests", "Fuzz", "corpus", target)
    shutil.copytree(committed, corpus) if os.path.isdir(committed) else os.makedirs(corpus)
    artifacts = os.path.join(work, target + "-artifacts") + "/"
    os.makedirs(artifacts)
    env = dict(os.environ, DISCD_FUZZ=target, DISCD_FUZZ_SEED_DIR=corpus, SWIFT_BACKTRACE="enable=no")
    cmd = [binary, "-max_total_time=%d" % seconds, "-max_len=1500", "-timeout=10", "-rss_limit_mb=2048",
           "-print_final_stats=1", "-artifact_prefix=" + artifacts, corpus]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 120)
    out = r.stdout + r.stderr
    m = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
    execs = int(m.group(1)) if m else 0
    crashes = sorted(os.listdir(artifacts))
    if r.returncode != 0 or crashes:
        detail = []
        for c in crashes[:3]:
            with open(os.path.join(artifacts, c), "rb") as f:
                data = f.read()
            detail.append("%s (%d bytes): %s" % (c, len(data), data[:200].hex()))
        tail = "\n".join(l for l in out.splitlines()[-25:])
        return False, "exit %d after %d executions; %s\n  reproduce: DISCD_FUZZ=%s SWIFT_BACKTRACE=enable=no %s FILE\n%s" % (
            r.returncode, execs, "; ".join(detail) or "no crash file", target, binary, tail)
    if execs == 0:
        return False, "no executions reported:\n" + "\n".join(out.splitlines()[-15:])
    units = len(os.listdir(corpus))
    return True, "%d executions in %ds, corpus %d inputs" % (execs, seconds, units)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("DISCD_FUZZ_SECONDS", "30")))
    ap.add_argument("-k", action="append", default=[])
    a = ap.parse_args()
    targets = [t for t in TARGETS if not a.k or any(k in t for k in a.k)]
    binary, err = build()
    passed = failed = 0
    if err:
        print(err)
        for t in targets:
            print("FAIL fuzz.%s - the fuzzer did not build" % t)
        failed = len(targets)
    else:
        with tempfile.TemporaryDirectory(prefix="discd-fuzz-") as work:
            for t in targets:
                t0 = time.monotonic()
                ok, detail = run_target(binary, t, a.seconds, work)
                print("%s fuzz.%s (%.0fs) - %s" % ("PASS" if ok else "FAIL", t, time.monotonic() - t0, detail), flush=True)
                passed += ok
                failed += not ok
    print("fuzz: %d passed, %d failed, 0 skipped" % (passed, failed))
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
