# Helpers for scenarios that run discd in guests; source after lib.sh:
#   . "$REPO/tests/guests/lib.sh"; . "$REPO/tests/guests/discd-lib.sh"
#
#   start_discd [ARGS...]     discd -n on eth0 in the background (JSON log lines appended to
#                             $SHARED/discd.$GUEST_INDEX.log, map /tmp/discd.map, status
#                             /tmp/discd.status); sets DISCD_PID. $DISCD_ARGS is added first.
#   status_num KEY            a number of the status file's top level ("" if absent)
#   rdma_field KEY            a field of the status file's "rdma" object (strings without quotes)
#   status_field OBJ KEY      a field of the status file's object OBJ (rdma, kernel, processes)
#   wait_until TIMEOUT CMD... run CMD every 0.1 s until it succeeds; 1 after TIMEOUT seconds
#   block_ip_discd            nftables: drop discd's UDP ports (7777, 7778) in and out, so only
#                             RDMA (RoCE v2 is UDP 4791) carries discd's datagrams
#   logged EVENT FIELD VALUE  whether discd logged a JSON event EVENT whose FIELD is VALUE (a string)
#   id_of ADDR                the node ID discd derives from an IPv4 address (last two octets)
#   record_status             result "status" with the status file as JSON
#   record_map                result "map" with `showmap --json` of the map file
#   elapsed_ms T0             milliseconds since T0 (from now_ms)
#   kill_discd_hard           SIGKILL our discd, after marking $SHARED/killed (the others time from it)
#   detect_kill ADDR          wait for the killed mark, then until discd declares ADDR dead (30 s);
#                             result detect_ms, then record_status
#   stop_discd                SIGTERM our discd and wait; result discd_exit (its exit status)
# Every wait is bounded; the JSON fields are read with grep/sed (no interpreter start-up under TCG).

DISCD_MAP=/tmp/discd.map
DISCD_STATUS=/tmp/discd.status

start_discd() {
    "$DISCD_BIN/discd" -n -i eth0 --map "$DISCD_MAP" --status "$DISCD_STATUS" --log-format json \
        $DISCD_ARGS "$@" >> "$SHARED/discd.$GUEST_INDEX.log" 2>&1 &
    DISCD_PID=$!
}

status_num() {
    [ -r "$DISCD_STATUS" ] || return 1
    sed -n "s/^{.*\"$1\":\([0-9-]*\).*/\1/p" "$DISCD_STATUS" | head -n 1
}

status_field() {
    [ -r "$DISCD_STATUS" ] || return 1
    sed -n "s/.*\"$1\":{\([^}]*\)}.*/\1/p" "$DISCD_STATUS" | tr ',' '\n' |
        sed -n "s/^\"$2\":\"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" | head -n 1
}

rdma_field() { status_field rdma "$1"; }

wait_until() {
    _t=$1
    shift
    _uptime_cs
    _until=$((_cs + _t * 100))
    while ! "$@"; do
        _uptime_cs
        [ "$_cs" -lt "$_until" ] || return 1
        if _aborted; then
            echo "wait_until $*: run aborted ($_why)" >&2
            return 1
        fi
        sleep 0.1
    done
}

block_ip_discd() {
    nft -f - <<NFT
table inet discdtest {
    chain in { type filter hook input priority 0; udp dport { 7777, 7778 } drop; }
    chain out { type filter hook output priority 0; udp dport { 7777, 7778 } drop; }
}
NFT
}

logged() {
    grep "\"event\":\"$1\"" "$SHARED/discd.$GUEST_INDEX.log" 2>/dev/null | grep -q "\"$2\":\"$3\""
}

id_of() {
    _o=$IFS; IFS=.; set -- $1; IFS=$_o
    echo $(($3 * 256 + $4))
}

record_status() { result status "$(cat "$DISCD_STATUS")"; }

record_map() {
    _m=$("$DISCD_BIN/showmap" --json --file "$DISCD_MAP" | tr -d '\n')
    result map "$_m"
    log "map: $("$DISCD_BIN/showmap" --file "$DISCD_MAP" | tr '\n' '|')"
}

elapsed_ms() { echo $(($(now_ms) - $1)); }

# declared_dead ADDR: discd logged ADDR's state change to dead.
declared_dead() {
    grep '"event":"member.state"' "$SHARED/discd.$GUEST_INDEX.log" 2>/dev/null | grep "\"address\":\"$1\"" |
        grep -q '"to":"dead"'
}

# dropped_at_least REASON N: the status file's drop counter REASON is at least N.
dropped_at_least() {
    _n=$(sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" "$DISCD_STATUS" 2>/dev/null | head -n 1)
    [ -n "$_n" ] && [ "$_n" -ge "$2" ]
}

kill_discd_hard() {
    : > "$SHARED/killed"
    kill -9 "$DISCD_PID"
    result killed true
}

detect_kill() {
    wait_for "$SHARED/killed" 30 || fail "no discd was killed"
    _t1=$(now_ms)
    wait_until 30 declared_dead "$1" || fail "$1 not declared dead within 30 s of the kill"
    result detect_ms "$(elapsed_ms "$_t1")"
    record_status
}

stop_discd() {
    kill "$DISCD_PID"
    wait "$DISCD_PID"
    result discd_exit "$?"
}

members_are() { [ "$(status_num members)" = "$1" ]; }
rdma_is() { [ "$(rdma_field state)" = "$1" ]; }
