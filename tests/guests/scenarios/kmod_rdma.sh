#!/bin/sh
# discd's kernel modules on their own (tests/guests/test_kernel.py): 2 guests with rxe0, discd in
# both with --no-kernel (the modules are driven here, not by discd's kernel link).
# Guest 0:
#   1. heartbeat alone (queue_len=16 max_watched=8): a bad queue_len is refused; the 9th opt-in is
#      refused (ENOSPC); 40 exits: 16 records, the next record counts the 24 lost; a 5-thread
#      process ending by exit_group or thread by thread: one record, wait(2)'s status;
#   2. heartbeat, then fdmod: fdmod up on rxe0 with heartbeat's callback; the map written by the
#      shell and in pieces, read back; bad input refused (ioctl, write, read, map) with the old map
#      kept; an opted-in shell SIGKILLed: its record (status 9, start time); guest 1's discd logs
#      process.notice (our node ID, tag 7); then, a watched process alive, rmmod heartbeat (first)
#      and rmmod fdmod;
#   3. fdmod, then heartbeat (fdmod's module notifier registers the callback): an exit before the
#      map is counted (sends_without_id) and not sent; with the map, tag 9 reaches guest 1;
#   4. rdma link delete rxe0: fdmod down (an exit counted in sends_without_device); rdma link add:
#      fdmod up again by itself; tag 12 reaches guest 1;
#   5. a watched process alive: kernel/unload.sh unloads both; again with nothing loaded.
# Guest 1, once guest 0 is done: 6. 12 cycles of loading both modules and unloading them at the
#   same time (two rmmods at once) while opted-in processes keep exiting.
# Guest 1 times each notice from seeing guest 0's kill mark (created just before the kill) to its
# discd's log line (its clock only; hbtool polls both every 1-2 ms) and records which tags it saw.  Both save dmesg and the taint flags in $SHARED.
# Environment: HEARTBEAT_KO FDMOD_KO HBTOOL (built on the host by test_kernel.py).
. "$REPO/tests/guests/lib.sh"
. "$REPO/tests/guests/discd-lib.sh"

[ "$GUEST_COUNT" -eq 2 ] && [ "$GUEST_RXE" = 1 ] || fail "kmod_rdma needs 2 guests with rxe0"
[ -r "$HEARTBEAT_KO" ] && [ -r "$FDMOD_KO" ] && [ -x "$HBTOOL" ] ||
    fail "modules or hbtool missing: '$HEARTBEAT_KO' '$FDMOD_KO' '$HBTOOL'"
PEER=$(addr_of $((1 - GUEST_INDEX)))
ADDR0=$(addr_of 0)
ID0=$(id_of "$ADDR0")
ID1=$(id_of "$(addr_of 1)")

# The value of a "name value" line of /proc/fdmod/stats or /proc/heartbeat.
fd_stat() { sed -n "s/^$1 //p" /proc/fdmod/stats 2>/dev/null; }
hb_stat() { sed -n "s/^$1 //p" /proc/heartbeat 2>/dev/null; }
fd_is() { [ "$(fd_stat "$1")" = "$2" ]; }
# stats_json FILE: its "name value" lines as one JSON object (numbers as numbers).
stats_json() {
    printf '{%s}' "$(sed -e 's/"/\\"/g' -e 's/^\([A-Za-z0-9_]*\) \(-\{0,1\}[0-9][0-9]*\)$/"\1":\2/;t' \
        -e 's/^\([A-Za-z0-9_]*\) \(.*\)$/"\1":"\2"/' "$1" 2>/dev/null | tr '\n' ',' | sed 's/,$//')"
}
fd_stats_json() { stats_json /proc/fdmod/stats; }
is_sleep() { [ "$(cat "/proc/$1/comm" 2>/dev/null)" = sleep ]; }
loaded() { [ -d "/sys/module/$1" ]; }

# watch TAG: a shell opts itself in by writing TAG, then becomes `sleep`; sets W to its pid.
watch() {
    sh -c "echo $1 > /dev/heartbeat && exec sleep 120" > /dev/null 2>&1 &
    W=$!
    wait_until 10 is_sleep "$W" || fail "the shell watched with tag $1 did not opt in"
}

# kill_watched TAG [MARK]: watch TAG, SIGKILL it, record its /dev/heartbeat record as kill_TAG.
# With MARK: $SHARED/soon.MARK first (guest 1 then waits for the kill), $SHARED/MARK just before
# the kill.
kill_watched() {
    [ -n "${2:-}" ] && : > "$SHARED/soon.$2"
    watch "$1"
    _rec=$("$HBTOOL" killwait "$W" ${2:+"$SHARED/$2"}) || fail "hbtool killwait (tag $1) failed"
    result "kill_$1" "$_rec"
    wait "$W" 2>/dev/null
    case "$_rec" in *'"error"'*) fail "tag $1: $_rec" ;; esac
}

# map text for the node map we write: us, guest 1, and a node with an IPv6 address.
MAP="self $ID0
$ID0 $ADDR0
$ID1 $PEER
4242 fd00::d15c:1"

save_kernel_state() {
    dmesg > "$SHARED/dmesg.$GUEST_INDEX" 2>&1
    result tainted "$(cat /proc/sys/kernel/tainted)"
}

# discd must not take /dev/heartbeat (nor write the map): this scenario reads and writes them.
args=
"$DISCD_BIN/discd" --help 2>&1 | grep -q -- '--no-kernel' && args=--no-kernel
barrier booted
start_discd $args
wait_until 60 rdma_is up || fail "RDMA transport not up: $(rdma_field reason)"
wait_until 90 members_are 2 || fail "members $(status_num members), not 2, after 90 s"
barrier converged 120

if [ "$GUEST_INDEX" = 0 ]; then
    # 1. Limits.
    insmod "$HEARTBEAT_KO" queue_len=100 2> /dev/null && fail "heartbeat.ko loaded with queue_len=100"
    insmod "$HEARTBEAT_KO" queue_len=16 max_watched=8 || fail "insmod heartbeat.ko queue_len=16 max_watched=8"
    result capacity "$("$HBTOOL" capacity 8)"
    result flood "$("$HBTOOL" flood 40 5)"
    result threads_group "$("$HBTOOL" threads group)"
    result threads_each "$("$HBTOOL" threads each)"
    result hb_stats_flood "$(stats_json /proc/heartbeat)"
    rmmod heartbeat || fail "rmmod heartbeat (limits)"

    # 2. heartbeat, then fdmod.
    insmod "$HEARTBEAT_KO" || fail "insmod heartbeat.ko"
    insmod "$FDMOD_KO" || fail "insmod fdmod.ko"
    wait_until 20 fd_is state up || fail "fdmod not up: $(fd_stats_json)"
    fd_is heartbeat attached || fail "fdmod not attached to heartbeat: $(fd_stats_json)"
    [ "$(hb_stat callback)" = set ] || fail "heartbeat has no callback"
    [ -z "$(cat /proc/fdmod/map)" ] || fail "a new fdmod has a map: $(cat /proc/fdmod/map)"
    printf '%s\n' "$MAP" > /proc/fdmod/map || fail "writing /proc/fdmod/map failed"
    [ "$(cat /proc/fdmod/map)" = "$MAP" ] || fail "map read back: $(cat /proc/fdmod/map | tr '\n' '|')"
    # The same map in pieces: lines split across write() calls.
    result map_split "$("$HBTOOL" write /proc/fdmod/map "self $ID0\n$ID0 ${ADDR0%.*}" ".${ADDR0##*.}\n$ID1 $PEER\n42" \
        "42 fd00::d15c:1\n")"
    [ "$(cat /proc/fdmod/map)" = "$MAP" ] || fail "split map read back: $(cat /proc/fdmod/map | tr '\n' '|')"
    # Bad maps: each write with a bad line fails (and every later one), the old map stays.
    result map_bad "$("$HBTOOL" write /proc/fdmod/map 'self 1\n1 10.0.0.1\n' '2 not-an-address\n' '3 10.0.0.3\n')"
    result map_bad_more "[$("$HBTOOL" write /proc/fdmod/map 'self 0\n'),$("$HBTOOL" write /proc/fdmod/map '1 10.0.0.1\n'),$(
        "$HBTOOL" write /proc/fdmod/map 'self 5\nself 6\n'),$("$HBTOOL" write /proc/fdmod/map 'self 5\n70000 10.0.0.1\n'),$(
        "$HBTOOL" write /proc/fdmod/map 'self 5\n7 10.0.0.1 extra\n'),$("$HBTOOL" write /proc/fdmod/map \
        'self 5\n7 1234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890\n')]"
    # A last line without its newline is parsed at close: bad, so nothing changes either.
    result map_bad_tail "$("$HBTOOL" write /proc/fdmod/map 'self 1\n1 10.0.0.1\n2 10.0.0')"
    [ "$(cat /proc/fdmod/map)" = "$MAP" ] || fail "a rejected map changed the map: $(cat /proc/fdmod/map | tr '\n' '|')"
    result map_user "$(setpriv --reuid=65534 --regid=65534 --clear-groups "$HBTOOL" write /proc/fdmod/map 'self 1\n')"
    result probe "$("$HBTOOL" probe)"
    result probe_user "$(setpriv --reuid=65534 --regid=65534 --clear-groups "$HBTOOL" probe-user)"
    result fd_stats_probed "$(fd_stats_json)"

    kill_watched 7 killed.7
    wait_until 5 eval '[ "$(fd_stat completions)" -ge 1 ]' || fail "fdmod's send never completed: $(fd_stats_json)"
    result fd_stats_7 "$(fd_stats_json)"
    "$HBTOOL" optin 8 -- sleep 120 > /dev/null 2>&1 &
    alive=$!
    wait_until 10 is_sleep "$alive" || fail "hbtool optin 8 did not opt in"
    [ "$(hb_stat watched)" = 1 ] || fail "heartbeat watches $(hb_stat watched), not 1"
    rmmod heartbeat || fail "rmmod heartbeat (fdmod loaded, a watched process alive)"
    fd_is heartbeat detached || fail "fdmod still attached after heartbeat left: $(fd_stats_json)"
    rmmod fdmod || fail "rmmod fdmod (after heartbeat)"
    loaded heartbeat || loaded fdmod && fail "a module is still loaded"
    kill -9 "$alive"
    wait "$alive" 2>/dev/null

    # 3. fdmod, then heartbeat.
    insmod "$FDMOD_KO" || fail "insmod fdmod.ko (before heartbeat)"
    wait_until 20 fd_is state up || fail "fdmod not up: $(fd_stats_json)"
    fd_is heartbeat detached || fail "fdmod attached without heartbeat: $(fd_stats_json)"
    insmod "$HEARTBEAT_KO" || fail "insmod heartbeat.ko (after fdmod)"
    wait_until 5 fd_is heartbeat attached || fail "fdmod did not attach to the new heartbeat: $(fd_stats_json)"
    kill_watched 10
    fd_is sends_without_id 1 || fail "an exit without a map was not counted: $(fd_stats_json)"
    printf '%s\n' "$MAP" > /proc/fdmod/map || fail "writing /proc/fdmod/map failed (reloaded fdmod)"
    kill_watched 9 killed.9

    # 4. The device goes and comes back.
    t0=$(now_ms)
    timeout 30 rdma link delete rxe0 || fail "rdma link delete rxe0 failed or hung"
    wait_until 5 fd_is present no || fail "fdmod still has rxe0: $(fd_stats_json)"
    fd_is state down || fail "fdmod not down without its device: $(fd_stats_json)"
    result rdma_delete_ms "$(elapsed_ms "$t0")"
    kill_watched 11
    fd_is sends_without_device 1 || fail "an exit without the device was not counted: $(fd_stats_json)"
    t0=$(now_ms)
    rdma link add rxe0 type rxe netdev eth0 || fail "rdma link add rxe0 failed"
    wait_until 20 fd_is state up || fail "fdmod not up again 20 s after rdma link add: $(fd_stats_json)"
    result rdma_back_ms "$(elapsed_ms "$t0")"
    kill_watched 12 killed.12
    wait_until 5 eval '[ "$(fd_stat completions)" -ge 2 ]' || fail "sends not completed: $(fd_stats_json)"
    result fd_stats_end "$(fd_stats_json)"
    result hb_stats_end "$(stats_json /proc/heartbeat)"

    # 5. Unload with a watched process alive, then with nothing loaded.
    "$HBTOOL" optin 13 -- sleep 120 > /dev/null 2>&1 &
    alive=$!
    wait_until 10 is_sleep "$alive" || fail "hbtool optin 13 did not opt in"
    "$REPO/kernel/unload.sh" || fail "kernel/unload.sh failed"
    loaded heartbeat || loaded fdmod && fail "a module is still loaded after unload.sh"
    "$REPO/kernel/unload.sh" || fail "kernel/unload.sh failed with nothing loaded"
    kill -9 "$alive"
    wait "$alive" 2>/dev/null
    : > "$SHARED/kdone"
else
    for tag in 7 9 12; do
        wait_for "$SHARED/soon.killed.$tag" 150 || fail "guest 0 never came to kill tag $tag"
        out=$("$HBTOOL" noticewait "$SHARED/killed.$tag" "$SHARED/discd.1.log" "$ID0" "$tag" 20 15) ||
            fail "hbtool noticewait failed"
        case "$out" in *'"error"'*) fail "tag $tag: $out" ;; esac
        result "notice_$tag" "$out"
    done
    wait_for "$SHARED/kdone" 120 || fail "guest 0 never finished"
    sleep 1
    tags=$(grep '"event":"process.notice"' "$SHARED/discd.1.log" | grep "\"id\":$ID0[,}]" |
        sed -n 's/.*"tag":\([0-9]*\).*/\1/p' | tr '\n' ',')
    result notice_tags "[${tags%,}]"

    # 6. Churn: opted-in processes exit all the time while both modules load and unload, the
    # rmmods at the same time (fdmod's exit may then find heartbeat going: heartbeat drops the
    # callback itself). No map here, so fdmod sends nothing.
    (
        while [ ! -e /tmp/stop ]; do
            sh -c '[ -c /dev/heartbeat ] && echo 3 > /dev/heartbeat; exit 3' 2> /dev/null
        done
    ) > /dev/null 2>&1 &
    exiter=$!
    both_gone() {
        for _m in fdmod heartbeat; do
            loaded "$_m" && rmmod "$_m" 2> /dev/null
        done
        ! loaded fdmod && ! loaded heartbeat
    }
    calls=0
    busy=0
    n=0
    while [ "$n" -lt 12 ]; do
        insmod "$HEARTBEAT_KO" || fail "churn: insmod heartbeat.ko"
        insmod "$FDMOD_KO" || fail "churn: insmod fdmod.ko"
        sleep 0.3
        c=$(hb_stat callback_calls)
        calls=$((calls + ${c:-0}))
        rmmod fdmod 2> /dev/null &
        a=$!
        rmmod heartbeat 2> /dev/null &
        b=$!
        wait "$a" || busy=$((busy + 1))
        wait "$b" || busy=$((busy + 1))
        # "in use" is fair: an exiter has /dev/heartbeat open, or fdmod holds heartbeat for the
        # moment it unregisters. Then it is retried.
        wait_until 10 both_gone || fail "churn: $(lsmod | grep -E '^(fdmod|heartbeat) ' | tr '\n' ' ')still loaded"
        n=$((n + 1))
    done
    : > /tmp/stop
    wait "$exiter"
    result churn "{\"cycles\":$n,\"callback_calls\":$calls,\"rmmod_busy\":$busy,\"dropped\":$(
        dmesg | grep -c 'callback of module fdmod dropped')}"
fi
barrier done 180
stop_discd
save_kernel_state
exit 0
