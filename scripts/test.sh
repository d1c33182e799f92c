#!/usr/bin/env bash
# Runs the whole test suite (unit + integration against a real etcd) after installing what is
# missing. Extra arguments go to `cargo nextest run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
cargo build --all-targets --locked
cargo nextest run --locked --no-fail-fast "$@"
