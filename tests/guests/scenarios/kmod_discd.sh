#!/bin/sh
# discd with its kernel modules (tests/guests/test_kernel.py), 2 guests, discd in both; with rxe0
# (GUEST_RXE=1) fdmod multicasts over RDMA, without it only discd's IP path carries the exits:
#   1. guest 0 loads heartbeat.ko and fdmod.ko ($HEARTBEAT_KO, $FDMOD_KO) under its running discd: the link
#      attaches to /dev/heartbeat and writes the map into /proc/fdmod/map ("self <our ID>" first);
#   2. a shell opts in (echo 21 > /dev/heartbeat; exec sleep) and is SIGKILLed; with rxe0 fdmod
#      multicasts the immediate and discd sends the full notice: guest 1 reports the exit exactly
#      once (process.notice or process.exited, tag 21) and counts the other path as paired; without
#      rxe0 the full notice alone (fdmod counts a send without a device);
#   3. IP only: fdmod unloaded, another opted-in process (tag 22) is SIGKILLed: guest 1 reports
#      process.exited with source kernel, tag 22, signal 9, once;
#   4. unload under a running discd with an opted-in process alive: discd kernel detach, rmmod
#      heartbeat; insmod it again, discd kernel attach: attached again (attaches 2).
# Guest 1 runs `discd events --json --space discd.process --since 0` from before the exits (the live
# stream), and at the end reads the daemon's history the same way with --count 2; the events give
# the latencies (event time_unix_ms - kill time on guest 0: one unknown clock offset for both paths).
. "$REPO/tests/guests/lib.sh"
. "$REPO/tests/guests/discd-lib.sh"

[ "$GUEST_COUNT" -eq 2 ] || fail "kmod_discd needs 2 guests"
[ -r "$HEARTBEAT_KO" ] && [ -r "$FDMOD_KO" ] || fail "modules not readable: '$HEARTBEAT_KO' '$FDMOD_KO'"
PEER=$(addr_of $((1 - GUEST_INDEX)))
kernel_is() { [ "$(status_field kernel state)" = "$1" ]; }
kernel_at_least() { _v=$(status_field kernel "$1"); [ -n "$_v" ] && [ "$_v" -ge "$2" ]; }
barrier booted

start_discd
if [ "$GUEST_RXE" = 1 ]; then
    wait_until 60 rdma_is up || fail "RDMA transport not up: $(rdma_field reason)"
fi
wait_until 90 members_are 2 || fail "members $(status_num members), not 2, after 90 s"
kernel_is absent || fail "kernel link $(status_field kernel state) before any module was loaded"
barrier converged 120

# reports TAG: how many times guest 1's discd reported an exit with this tag (either path).
reports() {
    grep -E '"event":"process\.(exited|notice)"' "$SHARED/discd.1.log" 2>/dev/null | grep -c "\"tag\":$1[,}]"
}
reported() { [ "$(reports "$1")" -ge 1 ]; }

if [ "$GUEST_INDEX" = 0 ]; then
    insmod "$HEARTBEAT_KO" || fail "insmod heartbeat.ko"
    insmod "$FDMOD_KO" || fail "insmod fdmod.ko"
    wait_until 10 kernel_is attached || fail "kernel link $(status_field kernel state): $(status_field kernel reason)"
    wait_until 10 kernel_at_least map_writes 1 || fail "discd never wrote /proc/fdmod/map"
    first=$(head -n 1 /proc/fdmod/map)
    [ "$first" = "self $(id_of "$GUEST_ADDR")" ] || fail "fdmod map starts with '$first'"
    result fdmod_map "$(json_str "$(cat /proc/fdmod/map)")"
    result fdmod_stats "$(json_str "$(cat /proc/fdmod/stats 2>&1)")"
    barrier loaded 60

    # kill_opted_in TAG: a shell opts in with TAG, becomes `sleep`, is SIGKILLed (result kill_TAG:
    # the time), and guest 1 says it reported the exit.
    kill_opted_in() {
        sh -c "echo $1 > /dev/heartbeat && exec sleep 30" &
        _victim=$!
        sleep 0.5
        _t=$(now_ms)
        kill -9 "$_victim"
        result "kill_$1" "$_t"
        wait "$_victim" 2>/dev/null
        wait_for "$SHARED/seen_$1" 60 || fail "guest 1 never reported tag $1"
    }

    # 2. Both paths.
    kill_opted_in 21
    result fdmod_stats_after "$(json_str "$(cat /proc/fdmod/stats 2>&1)")"

    # 3. IP only: fdmod gone, heartbeat stays.
    rmmod fdmod || fail "rmmod fdmod (heartbeat loaded, discd attached)"
    kill_opted_in 22

    # 4. Unload under the running discd, an opted-in process alive.
    sh -c 'echo 23 > /dev/heartbeat && exec sleep 60' &
    alive=$!
    sleep 0.5
    "$DISCD_BIN/discd" kernel detach > /tmp/detach.json || fail "discd kernel detach: $(cat /tmp/detach.json)"
    result detach "$(cat /tmp/detach.json)"
    kernel_is detached || wait_until 3 kernel_is detached || fail "kernel link $(status_field kernel state) after detach"
    rmmod heartbeat || fail "rmmod heartbeat after discd kernel detach (opted-in $alive alive)"
    kill -9 "$alive"
    wait "$alive" 2>/dev/null
    insmod "$HEARTBEAT_KO" || fail "insmod heartbeat.ko again"
    "$DISCD_BIN/discd" kernel attach > /tmp/attach.json || fail "discd kernel attach: $(cat /tmp/attach.json)"
    wait_until 10 kernel_is attached || fail "not attached again: $(status_field kernel state)"
    result attaches "$(status_field kernel attaches)"
    "$DISCD_BIN/discd" kernel detach > /dev/null || fail "second detach"
    rmmod heartbeat || fail "rmmod heartbeat (second time)"
    record_status
    : > "$SHARED/unloaded"
else
    "$DISCD_BIN/discd" events --json --space discd.process --since 0 > /tmp/proc.jsonl 2>&1 &
    events=$!
    barrier loaded 60
    wait_until 30 reported 21 || fail "no report of tag 21 (module path)"
    sleep 2  # the other path's copies arrive and pair
    result reports_21 "$(reports 21)"
    : > "$SHARED/seen_21"
    wait_until 30 reported 22 || fail "no report of tag 22 (IP path)"
    sleep 1
    result reports_22 "$(reports 22)"
    result exit_22 "$(grep '"event":"process.exited"' "$SHARED/discd.1.log" | grep '"tag":22,' | head -n 1)"
    : > "$SHARED/seen_22"
    wait_for "$SHARED/unloaded" 120 || fail "guest 0 never finished unloading"
    sleep 1
    result reports_23 "$(reports 23)"
    # The history (--since 0): the daemon published each exit once; bounded by --count and timeout.
    timeout 60 "$DISCD_BIN/discd" events --json --space discd.process --since 0 --count 2 > /tmp/history.jsonl 2>&1
    result history_rc "$?"
    while read -r l; do
        case "$l" in *'"PROC_EXIT"'*) result proc_event "$l" ;; esac
    done < /tmp/history.jsonl
    # The live subscriber, started before the exits: what it printed, and whether it still ran.
    if kill -0 "$events" 2>/dev/null; then result live_running true; else result live_running false; fi
    kill "$events" 2>/dev/null
    while read -r l; do
        case "$l" in
            *'"PROC_EXIT"'*) result live_event "$l" ;;
            *) result live_other "$(json_str "$l")" ;;
        esac
    done < /tmp/proc.jsonl
    record_status
fi
barrier done 120
members_are 2 || fail "members $(status_num members) at the end, not 2"
declared_dead "$PEER" && fail "$PEER was declared dead"
stop_discd
dmesg > "$SHARED/dmesg.$GUEST_INDEX"
result tainted "$(cat /proc/sys/kernel/tainted)"
exit 0
