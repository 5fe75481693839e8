#!/usr/bin/env bash
# Runs every test the README promises (make -f Makefile.test, CI's .ci/run) and ends with exactly
# one summary line, alone and last: "N passed, M failed, K skipped" (docs/TESTING.md, "Counting").
#
# Counts are tests, never assertions or Swift Testing issues:
#  * Swift Testing: one <testcase> of `swift test --xunit-output` (file <stem>-swift-testing.xml)
#    per @Test function; a parameterized @Test(arguments:) counts once, failed if any case failed.
#    A testcase with <failure>/<error> is failed (however many issues it recorded), one with
#    <skipped> is skipped (e.g. a disabled suite), any other passed.
#  * XCTest (SwiftPM writes no XCTest xUnit file without --parallel): one per
#    "Test Case '...' passed|failed|skipped" line; a test that started and never finished failed.
#  * netns: the "netns: N passed, M failed, K skipped" line of tests/netns/run.py.
#  * guests: the "guests: N passed, M failed, K skipped" line of tests/guests/run.py (qemu guests
#    with Soft-RoCE, after the netns tests; same rules).
#  * fuzz: the "fuzz: N passed, M failed, K skipped" line of tests/fuzz/run.py (libFuzzer, one test
#    per target, $DISCD_FUZZ_SECONDS each, default 30; same rules).
# A runner that exits non-zero (a crash or trap midway, an unreadable result file) with no failed
# test counted is recorded as one failed test. Exit status: non-zero if M > 0, if K > 0 (unless
# DISCD_TESTS_ALLOW_SKIP=1, which CI never sets), or if any runner exited non-zero.
set -uo pipefail
cd "$(dirname "$0")/.."

summary() { echo "$1 passed, $2 failed, $3 skipped"; }

# Prints "passed failed skipped" for one `swift test` run: $1 the Swift Testing xUnit file, $2 its log.
count_swift_tests() {
    python3 - "$1" "$2" <<'PY'
import re, sys
import xml.etree.ElementTree as ET

xml_path, log_path = sys.argv[1], sys.argv[2]
passed = failed = skipped = 0
# Swift Testing: one <testcase> per @Test function.
try:
    root = ET.parse(xml_path).getroot()
    for tc in root.iter("testcase"):
        if tc.find("failure") is not None or tc.find("error") is not None:
            failed += 1
        elif tc.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
except (OSError, ET.ParseError) as e:
    print("swift-testing results unreadable (%s: %s): counted as 1 failed" % (xml_path, e), file=sys.stderr)
    failed += 1
# XCTest: the last verdict per test case; started without a verdict = failed (a crash).
verdict = {}
with open(log_path, errors="replace") as f:
    for line in f:
        m = re.match(r"^Test Case '(.+?)' (started|passed|failed|skipped)\b", line)
        if m:
            verdict[m.group(1)] = m.group(2)
for name, v in verdict.items():
    if v == "passed":
        passed += 1
    elif v == "skipped":
        skipped += 1
    else:
        if v == "started":
            print("XCTest %s started and never finished: counted as failed" % name, file=sys.stderr)
        failed += 1
print(passed, failed, skipped)
PY
}

scripts/install-deps.sh --test || { echo "install-deps failed"; summary 0 1 0; exit 1; }
echo "== build (debug, with tests)"
swift build --build-tests 2>&1 | tail -n 20
[ "${PIPESTATUS[0]}" = 0 ] || { echo "build failed"; summary 0 1 0; exit 1; }

# The netns tests run the binaries this build just made, never a stale .build/release.
bin=$(swift build --show-bin-path) && [ -n "$bin" ] || { echo "swift build --show-bin-path failed"; summary 0 1 0; exit 1; }
export DISCD_BIN="$bin"
echo "== binaries under test: DISCD_BIN=$DISCD_BIN"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== unit and simulator tests (swift test)"
swift test --skip-build --xunit-output "$work/unit.xml" 2>&1 | tee "$work/unit.log" |
    grep -E "✘|error|skipped|passed after|Executed [0-9]+ test|Test run with" ; unit_rc=${PIPESTATUS[0]}
read -r unit_pass unit_fail unit_skip < <(count_swift_tests "$work/unit-swift-testing.xml" "$work/unit.log")
: "${unit_pass:=0}" "${unit_fail:=1}" "${unit_skip:=0}"
if [ "$unit_rc" != 0 ] && [ "$unit_fail" = 0 ]; then
    echo "swift test exited $unit_rc with no failed test counted: counted as 1 failed"
    unit_fail=1
fi
echo "== swift test: $unit_pass passed, $unit_fail failed, $unit_skip skipped (rc=$unit_rc)"

allow_skip=0
[ "${DISCD_TESTS_ALLOW_SKIP:-}" = 1 ] && allow_skip=1

# run_py_suite LABEL SCRIPT: runs a python test runner whose last summary line is
# "LABEL: N passed, M failed, K skipped"; sets py_pass py_fail py_skip py_rc.
run_py_suite() {
    python3 "$2" 2>&1 | tee "$work/$1.log"; py_rc=${PIPESTATUS[0]}
    local line
    line=$(grep -E "^$1: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$" "$work/$1.log" | tail -1)
    if [ -n "$line" ]; then
        read -r py_pass py_fail py_skip < <(echo "${line#*:}" | grep -Eo "[0-9]+" | tr '\n' ' ')
    else
        echo "$2 printed no summary line: counted as 1 failed"
        py_pass=0 py_fail=1 py_skip=0
    fi
    # The runner exits 1 on skips without the opt-out: that is not a crash, the skips already count.
    if [ "$py_rc" != 0 ] && [ "$py_fail" = 0 ] && ! { [ "$py_skip" -gt 0 ] && [ "$allow_skip" = 0 ]; }; then
        echo "$2 exited $py_rc with no failed test counted: counted as 1 failed"
        py_fail=1
    fi
}

echo "== real-network tests (network namespaces)"
run_py_suite netns tests/netns/run.py
net_pass=$py_pass net_fail=$py_fail net_skip=$py_skip net_rc=$py_rc

echo "== RDMA guest tests (qemu, Soft-RoCE)"
run_py_suite guests tests/guests/run.py
gst_pass=$py_pass gst_fail=$py_fail gst_skip=$py_skip gst_rc=$py_rc

echo "== fuzzing (libFuzzer, short run)"
run_py_suite fuzz tests/fuzz/run.py
fz_pass=$py_pass fz_fail=$py_fail fz_skip=$py_skip fz_rc=$py_rc

passed=$((unit_pass + net_pass + gst_pass + fz_pass))
failed=$((unit_fail + net_fail + gst_fail + fz_fail))
skipped=$((unit_skip + net_skip + gst_skip + fz_skip))
echo "== summary: swift test rc=$unit_rc ($unit_pass/$unit_fail/$unit_skip), netns rc=$net_rc ($net_pass/$net_fail/$net_skip), guests rc=$gst_rc ($gst_pass/$gst_fail/$gst_skip), fuzz rc=$fz_rc ($fz_pass/$fz_fail/$fz_skip)"
if [ "$skipped" -gt 0 ] && [ "$allow_skip" = 0 ]; then
    echo "$skipped test(s) skipped: a skip fails the test command (DISCD_TESTS_ALLOW_SKIP=1 accepts skips)"
fi
summary "$passed" "$failed" "$skipped"
[ "$failed" = 0 ] && [ "$unit_rc" = 0 ] && [ "$net_rc" = 0 ] && [ "$gst_rc" = 0 ] && [ "$fz_rc" = 0 ] &&
    { [ "$skipped" = 0 ] || [ "$allow_skip" = 1 ]; }
