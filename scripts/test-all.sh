#!/usr/bin/env bash
# Runs every test the README promises and ends with one summary line: "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test || exit 1
echo "== build"
swift build --build-tests 2>&1 | tail -n 20
[ "${PIPESTATUS[0]}" = 0 ] || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }

echo "== unit and simulator tests (swift test)"
unit_log=$(mktemp)
swift test --skip-build 2>&1 | tee "$unit_log" | grep -E "✘|error|failed|passed after|Executed [0-9]+ test" ; unit_rc=${PIPESTATUS[0]}
# Swift Testing: "Test run with N tests in M suites passed|failed ..."
unit_total=$(grep -Eo "Test run with [0-9]+ tests?" "$unit_log" | tail -1 | grep -Eo "[0-9]+" || echo 0)
unit_failed=$(grep -Eo "with [0-9]+ issues?" "$unit_log" | tail -1 | grep -Eo "[0-9]+" || true)
[ -n "$unit_failed" ] || unit_failed=0
if [ "$unit_rc" != 0 ] && [ "$unit_failed" = 0 ]; then unit_failed=1; fi
rm -f "$unit_log"

echo "== real-network tests (network namespaces)"
net_log=$(mktemp)
python3 tests/netns/run.py 2>&1 | tee "$net_log"; net_rc=${PIPESTATUS[0]}
line=$(grep -E "^netns: [0-9]+ passed, [0-9]+ failed" "$net_log" | tail -1)
net_pass=$(echo "$line" | grep -Eo "[0-9]+ passed" | grep -Eo "[0-9]+" || echo 0)
net_fail=$(echo "$line" | grep -Eo "[0-9]+ failed" | grep -Eo "[0-9]+" || echo 0)
net_skip=$(echo "$line" | grep -Eo "[0-9]+ skipped" | grep -Eo "[0-9]+" || echo 0)
if [ "$net_rc" != 0 ] && [ "${net_fail:-0}" = 0 ]; then net_fail=1; fi
rm -f "$net_log"

passed=$(( unit_total - unit_failed + ${net_pass:-0} ))
failed=$(( unit_failed + ${net_fail:-0} ))
echo "== summary: swift test rc=$unit_rc, netns rc=$net_rc"
echo "$passed passed, $failed failed, ${net_skip:-0} skipped"
[ "$unit_rc" = 0 ] && [ "$net_rc" = 0 ]
