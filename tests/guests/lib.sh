# Helpers for guest scenarios (tests/guests/scenarios/*.sh); POSIX sh (dash).  Source it with
#   . "$REPO/tests/guests/lib.sh"
# Environment (set by tests/guests/guest-init.sh): GUEST_INDEX GUEST_COUNT GUEST_ADDR GUEST_ADDRS
# GUEST_RXE GUEST_GID_INDEX SHARED REPO DISCD_BIN, plus the extra env of guestbed.run().
#
#   barrier NAME [TIMEOUT]  every guest calls it; returns when all GUEST_COUNT guests have; fails
#                           the scenario after TIMEOUT s (default 60) or when a guest aborted.
#                           Use each NAME once per run.
#   wait_for FILE [TIMEOUT] wait until FILE exists (default 30 s); returns 1 on timeout or abort.
#   result KEY JSONVALUE    append {"guest":I,"key":KEY,"value":JSONVALUE,"t_ms":...} to
#                           $SHARED/results.$GUEST_INDEX.jsonl (KEY: [A-Za-z0-9_.-]).
#   fail MSG                record result "fail" "MSG", tell the other guests (abort file), exit 1.
#   json_str TEXT           TEXT as a JSON string literal.
#   now_ms                  wall-clock time in ms since the epoch (guest clock, from the host RTC).
#   addr_of INDEX           the IPv4 address of guest INDEX.
#   log MSG                 MSG on stderr with the guest index and uptime.
# The shared dir is 9p with cache=none: files written by one guest are visible to the others
# immediately.  Loops are bounded by the guest's uptime, read without forking.

# Sets _cs to the guest uptime in centiseconds (no fork: `read` is a builtin).
_uptime_cs() {
    read -r _up _ < /proc/uptime
    _cs=$((${_up%.*} * 100 + 1${_up#*.} - 100))  # "12.08": 1200 + 108 - 100 (no octal 08)
}

now_ms() { date +%s%3N; }

log() {
    read -r _up _ < /proc/uptime
    echo "[guest $GUEST_INDEX ${_up}s] $*" >&2
}

json_str() {
    printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr '\n\t\r' '   ')"
}

result() {
    case "$1" in
        ''|*[!A-Za-z0-9_.-]*) echo "result: bad key '$1'" >&2; return 1 ;;
    esac
    printf '{"guest":%s,"key":"%s","value":%s,"t_ms":%s}\n' "$GUEST_INDEX" "$1" "$2" "$(now_ms)" \
        >> "$SHARED/results.$GUEST_INDEX.jsonl"
}

fail() {
    echo "FAIL (guest $GUEST_INDEX): $*" >&2
    result fail "$(json_str "$*")"
    echo "guest $GUEST_INDEX: $*" > "$SHARED/abort.guest$GUEST_INDEX"
    exit 1
}

# Returns 0 and sets _why to the first abort file's content if any guest (or the host) aborted
# the run.  No subshell: it runs once per poll.
_aborted() {
    for _f in "$SHARED"/abort.*; do
        [ -e "$_f" ] || return 1
        _why=$(cat "$_f" 2>/dev/null)
        return 0
    done
    return 1
}

addr_of() {
    set -- "$1" $GUEST_ADDRS
    _i=$1
    shift
    [ "$_i" -lt "$#" ] || return 1
    shift "$_i"
    echo "$1"
}

barrier() {
    _name=$1
    _timeout=${2:-60}
    : > "$SHARED/barrier.$_name.$GUEST_INDEX"
    _uptime_cs
    _deadline=$((_cs + _timeout * 100))
    while :; do
        _have=0
        _j=0
        while [ "$_j" -lt "$GUEST_COUNT" ]; do
            [ -e "$SHARED/barrier.$_name.$_j" ] && _have=$((_have + 1))
            _j=$((_j + 1))
        done
        [ "$_have" -ge "$GUEST_COUNT" ] && return 0
        if _aborted; then
            fail "barrier $_name: run aborted ($_why)"
        fi
        _uptime_cs
        if [ "$_cs" -ge "$_deadline" ]; then
            fail "barrier $_name timed out after ${_timeout}s: $_have of $GUEST_COUNT guests arrived"
        fi
        sleep 0.05
    done
}

wait_for() {
    _file=$1
    _uptime_cs
    _deadline=$((_cs + ${2:-30} * 100))
    while [ ! -e "$_file" ]; do
        if _aborted; then
            echo "wait_for $_file: run aborted ($_why)" >&2
            return 1
        fi
        _uptime_cs
        if [ "$_cs" -ge "$_deadline" ]; then
            echo "wait_for $_file: timed out after ${2:-30}s" >&2
            return 1
        fi
        sleep 0.05
    done
}
