#!/usr/bin/env bash
# Local demo: starts a throwaway etcd and three electd replicas wrapping a small job, shows who
# leads (with the leader's budget, valid_ms), kills the leader's electd with SIGKILL, and shows
# how many milliseconds later the new leader's job started (the dead electd's watchdog kills
# its job and releases its lease at once) and the new fencing token.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
# The dev profile: the demo needs no optimised code, and it builds in half the time.
cargo build --locked --bin electd
bin=${CARGO_TARGET_DIR:-target}/debug/electd

work=$(mktemp -d)
pids=()
cleanup() {
  # Replicas first (they stop their job and release their lease), etcd last.
  for ((i = ${#pids[@]} - 1; i >= 1; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  for ((i = ${#pids[@]} - 1; i >= 1; i--)); do wait "${pids[$i]}" 2>/dev/null || true; done
  kill "${pids[0]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cport=$(port); pport=$(port)
etcd --name demo --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
  --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
  --initial-cluster "demo=http://127.0.0.1:$pport" >"$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$cport/health" >/dev/null && break; sleep 0.1; done
echo "etcd is up on 127.0.0.1:$cport"

declare -A http
for r in 1 2 3; do
  http[$r]=127.0.0.1:$(port)
  "$bin" --endpoints "http://127.0.0.1:$cport" --election demo --id "replica-$r" --ttl 3s \
    --stop-grace 1s --http "${http[$r]}" --socket "$work/replica-$r.sock" --log-level warn \
    -- sh -c 'date +%s%N > "$0/started-$ELECTD_ID"; echo "  [$ELECTD_ID] job started with fencing token $ELECTD_FENCING_TOKEN"; exec sleep 1000' "$work" &
  pids+=($!)
  sleep 0.2
done

show() {
  for r in 1 2 3; do
    doc=$(curl -fs "http://${http[$r]}/role" 2>/dev/null) || { echo "  replica-$r: (not running)"; continue; }
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("  %-10s role=%-9s leader=%-10s fencing_token=%-4s valid_ms=%s" % (d["id"], d["role"], (d["leader"] or {}).get("id"), d["fencing_token"], d.get("valid_ms") if d.get("valid_ms") is not None else "-"))' "$doc"
  done
}
leader() {
  for r in 1 2 3; do
    curl -fs -o /dev/null "http://${http[$r]}/leader" 2>/dev/null && { echo "$r"; return; }
  done
  echo ""
}

sleep 1.5
echo "== three replicas, one leader:"; show
l=$(leader)
echo "== kill -9 of replica-$l's electd (the leader): its watchdog kills the job and releases the lease"
rm -f "$work"/started-*
killed=$(date +%s%N)
kill -9 "${pids[$l]}"
wait "${pids[$l]}" 2>/dev/null || true
for _ in $(seq 500); do
  started=$(cat "$work"/started-* 2>/dev/null | head -n1 || true)
  [ -n "$started" ] && break
  sleep 0.01
done
if [ -n "$started" ]; then
  echo "== the new leader's job started $(( (started - killed) / 1000000 )) ms after the kill -9 (TTL 3s: without the handover it would wait out the lease):"
else
  echo "== no new leader's job within 5 s:"
fi
show
echo "== etcdctl elect -l demo (etcd's own view of the election):"
ETCDCTL_API=3 timeout 2 etcdctl --endpoints "http://127.0.0.1:$cport" elect -l demo | sed 's/^/  /' || true
