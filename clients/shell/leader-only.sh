#!/bin/sh
# leader-only.sh [-g GRACE] SOCKET CMD [ARG...]: run CMD only if the electd at SOCKET leads, and
# only within the budget of its answer (docs/app-contract.md) — for cron-like jobs that are
# shorter than the budget (for longer ones use `elect-run --socket SOCKET -- CMD`, which renews
# it). The budget counts from before the request was sent; CMD gets SIGTERM when it runs out
# and SIGKILL GRACE seconds later (default 1; give electd's --stop-grace or less). CMD sees the
# fencing token in ELECTD_FENCING_TOKEN.
#
# Exit codes: CMD's own; 124 if it was stopped at the end of the budget; 75 not the leader (CMD
# did not run); 69 electd did not answer; 64 usage. Needs curl, GNU date and timeout.
set -eu
grace=1
if [ "${1:-}" = "-g" ]; then
    grace=$2
    shift 2
fi
if [ $# -lt 2 ]; then
    echo "usage: leader-only.sh [-g GRACE] SOCKET CMD [ARG...]" >&2
    exit 64
fi
sock=$1
shift
sent=$(date +%s%N)
doc=$(curl -fsS --max-time 2 --unix-socket "$sock" http://electd/role) || {
    echo "leader-only.sh: electd at $sock did not answer; $1 not run" >&2
    exit 69
}
got=$(date +%s%N)
valid=$(printf '%s' "$doc" | sed -n 's/.*"valid_ms":\([0-9][0-9]*\).*/\1/p')
token=$(printf '%s' "$doc" | sed -n 's/.*"fencing_token":\([0-9][0-9]*\).*/\1/p')
if [ -z "$valid" ] || [ -z "$token" ]; then
    exit 75
fi
left_ms=$((valid - (got - sent) / 1000000))
if [ "$left_ms" -le 0 ]; then
    exit 75
fi
ELECTD_FENCING_TOKEN=$token
export ELECTD_FENCING_TOKEN
exec timeout --kill-after="$grace" "$((left_ms / 1000)).$(printf '%03d' $((left_ms % 1000)))" "$@"
