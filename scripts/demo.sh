#!/usr/bin/env bash
# Local demo: starts a throwaway etcd and three electd replicas wrapping a small job, shows who
# leads, kills the leader with SIGKILL, and shows the new leader and its fencing token.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
cargo build --release --locked --bin electd
bin=target/release/electd

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
    -- sh -c 'echo "  [$ELECTD_ID] job started with fencing token $ELECTD_FENCING_TOKEN"; exec sleep 1000' &
  pids+=($!)
  sleep 0.2
done

show() {
  for r in 1 2 3; do
    doc=$(curl -fs "http://${http[$r]}/role" 2>/dev/null) || { echo "  replica-$r: (not running)"; continue; }
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("  %-10s role=%-9s leader=%-10s fencing_token=%s" % (d["id"], d["role"], (d["leader"] or {}).get("id"), d["fencing_token"]))' "$doc"
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
echo "== kill -9 replica-$l (the leader); a new leader takes over once its lease expires (TTL 3s)"
kill -9 "${pids[$l]}"
wait "${pids[$l]}" 2>/dev/null || true
start=$(date +%s.%N)
for _ in $(seq 100); do n=$(leader); [ -n "$n" ] && [ "$n" != "$l" ] && break; sleep 0.1; done
printf "== new leader after %.1fs:\n" "$(echo "$(date +%s.%N) - $start" | bc)"
show
echo "== etcdctl elect -l demo (etcd's own view of the election):"
ETCDCTL_API=3 timeout 2 etcdctl --endpoints "http://127.0.0.1:$cport" elect -l demo | sed 's/^/  /' || true
