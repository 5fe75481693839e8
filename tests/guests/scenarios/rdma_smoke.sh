#!/bin/sh
# Smoke test of Soft-RoCE between 2 guests (both with rxe0), run by tests/guests/test_bed.py:
#   devices  ibv_devices lists rxe0                                      (each guest)
#   ud       UD unicast: ibv_ud_pingpong, server guest 0, client guest 1 (each guest)
#   mckey    UD multicast on 239.1.1.1 via rdma_cm: mckey, receiver guest 0, sender guest 1
# Each check records `result NAME {"ok":true|false,...}`; the scenario exits 1 if any failed.
. "$REPO/tests/guests/lib.sh"

[ "$GUEST_COUNT" -eq 2 ] || fail "rdma_smoke needs exactly 2 guests (got $GUEST_COUNT)"
[ "$GUEST_RXE" = 1 ] || fail "rdma_smoke needs rxe0 on every guest"
SERVER=$(addr_of 0)
GROUP=239.1.1.1
UD_PORT=18515
failed=0

# check NAME RC DETAIL: record {"ok":RC==0,"rc":RC,"ms":elapsed since $t0,"detail":DETAIL}.
check() {
    ms=$(( $(now_ms) - t0 ))
    ok=false
    [ "$2" -eq 0 ] && ok=true
    [ "$ok" = true ] || failed=1
    result "$1" "{\"ok\":$ok,\"rc\":$2,\"ms\":$ms,\"detail\":$(json_str "$3")}"
    log "$1: ok=$ok rc=$2 (${ms} ms) $3"
}

# --- devices
t0=$(now_ms)
devs=$(ibv_devices 2>&1)
echo "$devs" | grep -qw rxe0
check devices $? "$(echo "$devs" | tr -s ' ' | tail -n +3)"

# --- UD unicast.  The server listens on TCP $UD_PORT for the address exchange; the client starts
# only once it listens (the barrier), else it would give up with "Couldn't connect".
UD_ARGS="-d rxe0 -g $GUEST_GID_INDEX -s 512 -n 200 -p $UD_PORT"
if [ "$GUEST_INDEX" = 0 ]; then
    t0=$(now_ms)
    timeout 60 ibv_ud_pingpong $UD_ARGS > /tmp/ud.log 2>&1 &
    ud_pid=$!
    n=0
    until ss -Hltn "sport = :$UD_PORT" | grep -q LISTEN; do
        n=$((n + 1))
        [ "$n" -le 100 ] || break
        sleep 0.1
    done
    barrier ud_listening
    wait "$ud_pid"
    rc=$?
else
    barrier ud_listening
    t0=$(now_ms)
    timeout 60 ibv_ud_pingpong $UD_ARGS "$SERVER" > /tmp/ud.log 2>&1
    rc=$?
fi
cat /tmp/ud.log >&2
check ud "$rc" "$(grep -E 'bytes in|iters in' /tmp/ud.log | tr '\n' ' ')"
barrier ud_done

# --- UD multicast.  The receiver prints "receiving data transfers" once it has joined; the
# sender starts after that (the barrier) and sends 10 messages; the receiver exits after 10.
if [ "$GUEST_INDEX" = 0 ]; then
    t0=$(now_ms)
    timeout 60 stdbuf -oL mckey -m "$GROUP" -b "$GUEST_ADDR" > /tmp/mckey.log 2>&1 &
    mc_pid=$!
    n=0
    until grep -q "receiving data transfers" /tmp/mckey.log; do
        n=$((n + 1))
        [ "$n" -le 300 ] || break
        kill -0 "$mc_pid" 2>/dev/null || break
        sleep 0.1
    done
    barrier mc_joined
    wait "$mc_pid"
    rc=$?
    # Success needs the line printed after all messages arrived, not only exit status 0.
    [ "$rc" -eq 0 ] && ! grep -q "data transfers complete" /tmp/mckey.log && rc=99
else
    barrier mc_joined
    t0=$(now_ms)
    timeout 60 mckey -m "$GROUP" -b "$GUEST_ADDR" -s > /tmp/mckey.log 2>&1
    rc=$?
fi
cat /tmp/mckey.log >&2
check mckey "$rc" "$(tail -n 3 /tmp/mckey.log | tr '\n' ' ')"
barrier mc_done

exit "$failed"
