#!/usr/bin/env bash
# Installs what electd needs to build and test on a fresh Debian/Ubuntu machine:
# etcd (server + etcdctl) for the demo and the integration tests, protoc for etcd-client's
# build script, promtool for the alert rules' tests, lintian for the Debian package, and
# cargo-nextest (the test runner) and cargo-deb (scripts/package.sh, tests/package.rs) when they
# are missing.
set -euo pipefail

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v protoc >/dev/null || need+=(protobuf-compiler libprotobuf-dev)
command -v curl >/dev/null || need+=(curl)
# The demo formats its output with python3 and bc.
command -v python3 >/dev/null || need+=(python3)
command -v bc >/dev/null || need+=(bc)
# scripts/package.sh (and tests/package.rs through it) unpacks and checks the Debian package.
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v lintian >/dev/null || need+=(lintian)
# tests/haproxy.rs and the routing benchmark put HAProxy in front of the replicas.
command -v haproxy >/dev/null || need+=(haproxy)
# scripts/etcd.sh (CI's second etcd) reads Debian's package lists, signed with this keyring.
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# promtool ships in Debian's prometheus package; without recommends (the node exporter).
if ! command -v promtool >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing prometheus (for promtool)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi
if ! cargo deb --version >/dev/null 2>&1; then
  echo "setup: installing cargo-deb" >&2
  cargo install --locked cargo-deb
fi
