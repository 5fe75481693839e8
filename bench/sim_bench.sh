#!/usr/bin/env bash
# Benchmark of the deterministic cluster simulator (docs/SIMULATOR.md): builds discd in release and
# runs `discd simulate` at 1,000 and 10,000 nodes through the start, one crash and its detection
# (issue 9's run: the crash at the simulator's default time, once every map converged and the
# detector's startup grace passed), printing the report of each run plus CPU and wall time and peak
# RSS from /usr/bin/time. Also checks that a run is reproducible across processes (same seed, same
# trace hash).
#
#   bench/sim_bench.sh                 # 1,000 and 10,000 nodes, 2 % loss, seed 7, 8 s virtual
#   SIM_SIZES="1000 3000" bench/sim_bench.sh
#   SIM_ARGS="--loss 0.05 --pause 200ms" SIM_CRASH_AT=10s SIM_DURATION=20s bench/sim_bench.sh
#
# 10,000 nodes need about 3 GiB of memory (every node holds a full map: N² entries) and about
# 3 minutes of one core on the 2-core build machine (more on a slow day of it); see
# docs/SIMULATOR.md for measured figures.
set -euo pipefail
cd "$(dirname "$0")/.."

SCRATCH=${SIM_SCRATCH:-.build-sim}
SIZES=${SIM_SIZES:-"1000 10000"}
ARGS=${SIM_ARGS:---loss 0.02 --seed 7}
DURATION=${SIM_DURATION:-8s}
# Empty: the simulator's default crash time (convergence, then the startup grace and 1 s).
CRASH_AT=${SIM_CRASH_AT:-}
CRASH=(--crash 1)
if [ -n "$CRASH_AT" ]; then CRASH+=(--crash-at "$CRASH_AT"); fi
OUT=${SIM_OUT:-/tmp/discd-sim-bench}
mkdir -p "$OUT"

echo "== building discd (release, scratch $SCRATCH)"
swift build -c release --scratch-path "$SCRATCH" --product discd 2>&1 | grep -E "error|Compiling discd|Build" || true
BIN="$SCRATCH/release/discd"
[ -x "$BIN" ] || { echo "no binary at $BIN" >&2; exit 1; }

TIME=/usr/bin/time
[ -x "$TIME" ] || TIME=""

for n in $SIZES; do
    echo
    echo "== $n nodes: discd simulate --nodes $n ${CRASH[*]} --duration $DURATION $ARGS"
    log="$OUT/sim-$n"
    if [ -n "$TIME" ]; then
        # shellcheck disable=SC2086
        "$TIME" -v "$BIN" simulate --nodes "$n" "${CRASH[@]}" --duration "$DURATION" --progress 30 $ARGS >"$log.txt" 2>"$log.err"
    else
        # shellcheck disable=SC2086
        "$BIN" simulate --nodes "$n" "${CRASH[@]}" --duration "$DURATION" --progress 30 $ARGS >"$log.txt" 2>"$log.err"
    fi
    cat "$log.txt"
    if [ -n "$TIME" ]; then
        grep -E "Elapsed \(wall clock\)|Maximum resident set size|User time|System time" "$log.err" | sed 's/^\s*/  time: /'
    fi
done

echo
echo "== reproducibility across processes (200 nodes, loss, duplication, pauses, seed 99, twice)"
h1=$("$BIN" simulate --nodes 200 --seed 99 --loss 0.05 --duplication 0.01 --pause 100ms --duration 10s --progress 0 --json | sed 's/.*"trace_hash": *"\([0-9a-f]*\)".*/\1/')
h2=$("$BIN" simulate --nodes 200 --seed 99 --loss 0.05 --duplication 0.01 --pause 100ms --duration 10s --progress 0 --json | sed 's/.*"trace_hash": *"\([0-9a-f]*\)".*/\1/')
echo "trace hashes: $h1 $h2"
if [ "$h1" = "$h2" ]; then echo "reproducible: yes"; else echo "reproducible: NO"; exit 1; fi
