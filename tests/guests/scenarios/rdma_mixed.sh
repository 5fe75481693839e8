#!/bin/sh
# A mixed cluster (tests/guests/test_rdma.py): guests 0 and 1 have rxe0, guest 2 has none.
# All three run discd; they converge (3 members everywhere; guests 0 and 1 talk RDMA and IP,
# guest 2 IP only, and its map still shows the others' RDMA endpoints); then guest 1's discd is
# killed with SIGKILL and both survivors detect it (detect_ms).
. "$REPO/tests/guests/lib.sh"
. "$REPO/tests/guests/discd-lib.sh"

[ "$GUEST_COUNT" -eq 3 ] || fail "rdma_mixed needs 3 guests"
VICTIM=$(addr_of 1)
barrier booted

t0=$(now_ms)
start_discd
if [ "$GUEST_RXE" = 1 ]; then
    wait_until 60 rdma_is up || fail "RDMA transport not up: $(rdma_field reason)"
else
    wait_until 30 rdma_is down || fail "no RDMA device, yet the RDMA state is $(rdma_field state)"
    result rdma_reason "$(json_str "$(rdma_field reason)")"
fi
wait_until 90 members_are 3 || fail "members $(status_num members), not 3, after 90 s"
result discover_ms "$(elapsed_ms "$t0")"
sleep 2  # heartbeats both ways, announces carrying the endpoints
record_status
record_map
barrier converged 120

if [ "$GUEST_INDEX" = 1 ]; then
    sleep 1
    kill_discd_hard
else
    detect_kill "$VICTIM"
    stop_discd
fi
barrier done 60
exit 0
