#!/bin/sh
# discd over RDMA alone, between 2 guests with rxe0 (tests/guests/test_rdma.py):
#   * discd's UDP ports are blocked by nftables in both guests, so every datagram discd exchanges
#     goes over RDMA UD (multicast for announces, unicast for heartbeats and probes);
#   * both discover each other (status: members 2, rdma up); the maps show each other's RDMA
#     endpoint (recorded: status, map);
#   * guest 1 sends immediate-only notices (tools/imm_send): one naming its node ID with tag 42,
#     one naming an ID nobody has; guest 0 reports the first (process.notice) and counts the other;
#   * guest 1's discd is killed with SIGKILL; guest 0 detects the death over RDMA (detect_ms).
. "$REPO/tests/guests/lib.sh"
. "$REPO/tests/guests/discd-lib.sh"

[ "$GUEST_COUNT" -eq 2 ] && [ "$GUEST_RXE" = 1 ] || fail "rdma_discd needs 2 guests with rxe0"
PEER=$(addr_of $((1 - GUEST_INDEX)))
block_ip_discd || fail "nft: cannot block discd's UDP ports"
barrier blocked

t0=$(now_ms)
start_discd
wait_until 60 rdma_is up || fail "RDMA transport not up: $(rdma_field reason)"
result rdma_up_ms "$(elapsed_ms "$t0")"
wait_until 60 members_are 2 || fail "members $(status_num members), not 2, after 60 s"
result discover_ms "$(elapsed_ms "$t0")"
sleep 1  # a few heartbeats over RDMA unicast
record_status
record_map
barrier discovered 90

if [ "$GUEST_INDEX" = 1 ]; then
    me=$(id_of "$GUEST_ADDR")
    "$IMM_SEND" "$GUEST_ADDR" 239.192.77.77 $((me * 65536 + 42)) >&2 || fail "imm_send (own ID) failed"
    "$IMM_SEND" "$GUEST_ADDR" 239.192.77.77 $((4242 * 65536 + 7)) >&2 || fail "imm_send (unknown ID) failed"
    : > "$SHARED/notices_sent"
    barrier notices 60
    barrier ready_to_kill 60
    sleep 1
    kill_discd_hard
else
    wait_for "$SHARED/notices_sent" 60 || fail "guest 1 sent no notices"
    wait_until 10 logged process.notice node "$PEER" || fail "no process.notice for $PEER"
    result notice "$(grep '"event":"process.notice"' "$SHARED/discd.0.log" | head -n 1)"
    wait_until 10 dropped_at_least unknown_notice 1 || fail "the unknown node ID was not counted"
    barrier notices 60
    barrier ready_to_kill 60
    detect_kill "$PEER"
    stop_discd
fi
exit 0
