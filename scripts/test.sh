#!/usr/bin/env bash
# Runs the whole test suite (unit + integration against a real etcd) after installing what is
# missing. Extra arguments go to `cargo nextest run`.
#
#   scripts/test.sh                   # everything, on the etcd scripts/setup.sh installs (3.4.23)
#   scripts/test.sh --etcd 3.5 [...]  # the etcd-matrix subset (.config/nextest.toml: election,
#                                     # faults, security, IPv6, the short chaos run) on Debian's
#                                     # newest etcd 3.5, fetched by scripts/etcd.sh
#
# To run everything on another etcd: ELECTD_TEST_ETCD=$(scripts/etcd.sh 3.5 | tail -n1) scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
profile=()
if [ "${1:-}" = --etcd ]; then
  [ -n "${2:-}" ] || { echo "usage: scripts/test.sh --etcd VERSION [nextest args]" >&2; exit 64; }
  dir=$(scripts/etcd.sh "$2" | tail -n1)
  export ELECTD_TEST_ETCD=$dir
  profile=(--profile etcd-matrix)
  shift 2
  echo "test.sh: the etcd-matrix tests on $("$dir/etcd" --version | sed -n 1p) from $dir" >&2
fi
cargo nextest run --locked --no-fail-fast "${profile[@]}" "$@"
