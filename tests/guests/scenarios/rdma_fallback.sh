#!/bin/sh
# The RDMA device goes away under a running discd and comes back (tests/guests/test_rdma.py):
# 2 guests with rxe0 converge over RDMA and IP; guest 0 deletes rxe0 (`rdma link delete`):
# its discd falls back to IP (rdma.down logged, status rdma.state down), keeps its member, and
# nobody is declared dead; then guest 0 adds rxe0 back and its discd's RDMA comes up again
# (status rdma.ups 2), with its new endpoint announced to guest 1. Guest 0's event stream (discd
# events --space discd.config) records the configuration events: RDMA_UP, RDMA_DOWN, RDMA_UP.
. "$REPO/tests/guests/lib.sh"
. "$REPO/tests/guests/discd-lib.sh"

[ "$GUEST_COUNT" -eq 2 ] && [ "$GUEST_RXE" = 1 ] || fail "rdma_fallback needs 2 guests with rxe0"
PEER=$(addr_of $((1 - GUEST_INDEX)))
rdma_back() { [ "$(rdma_field ups)" = 2 ] && [ "$(rdma_field state)" = up ]; }
barrier booted

start_discd
wait_until 60 rdma_is up || fail "RDMA transport not up: $(rdma_field reason)"
wait_until 90 members_are 2 || fail "members $(status_num members), not 2, after 90 s"
sleep 1
record_status
barrier converged 120

if [ "$GUEST_INDEX" = 0 ]; then
    "$DISCD_BIN/discd" events --json --space discd.config --since 0 > /tmp/config.jsonl 2>&1 &
    EVENTS_PID=$!
    t0=$(now_ms)
    timeout 30 rdma link delete rxe0 || fail "rdma link delete rxe0 failed or hung"
    result delete_ms "$(elapsed_ms "$t0")"
    wait_until 10 rdma_is down || fail "still $(rdma_field state) after the device went"
    result fallback_ms "$(elapsed_ms "$t0")"
    result down_event "$(grep '"event":"rdma.down"' "$SHARED/discd.0.log" | grep '"was_up":true' | head -n 1)"
    # Well past the detector's timeout: over IP alone, nobody is lost.
    sleep 5
    members_are 2 || fail "members $(status_num members) after the fallback, not 2"
    record_status
    t0=$(now_ms)
    rdma link add rxe0 type rxe netdev eth0 || fail "rdma link add rxe0 failed"
    wait_until 30 rdma_back ||
        fail "RDMA not back 30 s after rxe0 came back: $(rdma_field state) ($(rdma_field reason))"
    result back_ms "$(elapsed_ms "$t0")"
    sleep 1
    kill "$EVENTS_PID" 2>/dev/null
    result config_events "[$(sed -n 's/.*"name":"\([A-Z_]*\)".*/"\1"/p' /tmp/config.jsonl | tr '\n' ',' | sed 's/,$//')]"
    : > "$SHARED/back"
else
    wait_for "$SHARED/back" 120 || fail "guest 0 never got its device back"
fi
sleep 2  # the new endpoint's announce, and heartbeats over it
members_are 2 || fail "members $(status_num members) at the end, not 2"
declared_dead "$PEER" && fail "$PEER was declared dead"
record_status
record_map
barrier done 60
stop_discd
exit 0
