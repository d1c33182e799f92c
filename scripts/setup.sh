#!/usr/bin/env bash
# Installs what is missing on a fresh Debian/Ubuntu machine, for one purpose at a time, so the
# demo does not wait for the test and packaging tools:
#
#   scripts/setup.sh demo      scripts/demo.sh: protoc (etcd-client's build script), etcd and
#                              etcdctl, curl, python3 and bc (the demo's output)
#   scripts/setup.sh test      scripts/test.sh: the demo's, and HAProxy (tests/haproxy.rs,
#                              tests/routing.rs), promtool (the alert rules' tests), dpkg-deb,
#                              lintian and cargo-deb (tests/package.rs), cargo-nextest, and
#                              Debian's archive keyring (scripts/etcd.sh: CI's second etcd)
#   scripts/setup.sh package   scripts/package.sh: protoc, python3, dpkg-deb, lintian, cargo-deb
#   scripts/setup.sh chaos     scripts/chaos.sh: protoc, etcd and etcdctl
#   scripts/setup.sh bench     cargo bench --bench electd: protoc, etcd and etcdctl, HAProxy,
#                              python3 (the sidecar scenario's apps)
#   scripts/setup.sh [all]     everything above, the same as `test` (.ci/run)
set -euo pipefail

purpose=${1:-all}
apt=()      # Debian packages, installed with their recommends
bare=()     # Debian packages, installed without them
crates=()   # cargo subcommands, built with cargo install

# Each need_ adds what is missing for one part (named so that no function hides a command).
need_build() { command -v protoc >/dev/null || apt+=(protobuf-compiler libprotobuf-dev); }
need_etcd() {
  command -v etcd >/dev/null || apt+=(etcd-server)
  command -v etcdctl >/dev/null || apt+=(etcd-client)
}
need_python() { command -v python3 >/dev/null || apt+=(python3); }
need_demo_output() {
  command -v curl >/dev/null || apt+=(curl)
  need_python
}
need_haproxy() { command -v haproxy >/dev/null || apt+=(haproxy); }
# promtool ships in Debian's prometheus package; its recommends are the node exporter.
need_promtool() { command -v promtool >/dev/null || bare+=(prometheus); }
need_packaging() {
  need_python
  command -v dpkg-deb >/dev/null || apt+=(dpkg)
  command -v lintian >/dev/null || apt+=(lintian)
  cargo deb --version >/dev/null 2>&1 || crates+=(cargo-deb)
}
need_nextest() { cargo nextest --version >/dev/null 2>&1 || crates+=(cargo-nextest); }
# scripts/etcd.sh reads Debian's package lists of other suites, signed with this keyring.
need_keyring() {
  [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || apt+=(debian-archive-keyring)
}

case "$purpose" in
  demo) need_build; need_etcd; need_demo_output ;;
  test | all)
    need_build; need_etcd; need_demo_output
    need_haproxy; need_promtool; need_packaging; need_nextest; need_keyring
    ;;
  package) need_build; need_packaging ;;
  chaos) need_build; need_etcd ;;
  bench) need_build; need_etcd; need_haproxy; need_python ;;
  *)
    echo "usage: scripts/setup.sh [demo|test|package|chaos|bench|all]" >&2
    exit 64
    ;;
esac

# Each package once, in the order first asked for.
dedup() { printf '%s\n' "$@" | awk 'NF && !seen[$0]++'; }
mapfile -t apt < <(dedup "${apt[@]}")
mapfile -t bare < <(dedup "${bare[@]}")
mapfile -t crates < <(dedup "${crates[@]}")

if [ ${#apt[@]} -gt 0 ] || [ ${#bare[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup ($purpose): installing ${apt[*]} ${bare[*]}" >&2
  $sudo apt-get update -qq
  if [ ${#apt[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt[@]}" >/dev/null
  fi
  if [ ${#bare[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${bare[@]}" >/dev/null
  fi
fi
for crate in "${crates[@]}"; do
  echo "setup ($purpose): installing $crate" >&2
  cargo install --locked "$crate"
done
