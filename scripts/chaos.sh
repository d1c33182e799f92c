#!/usr/bin/env bash
# The long chaos run behind docs/safety.md: FAULTS faults of the combined nemesis (tests/chaos/),
# seeded with SEED (default: from the clock; printed either way), then its records
# (docs/safety.json), the report rendered from them (docs/safety.md) and its
# timeline pictures in docs/.
#
#   scripts/chaos.sh 1000            # a new schedule
#   scripts/chaos.sh 60 12345        # replay seed 12345's first 60 faults
#
# It runs the ignored `chaos_report` test through `cargo test`, not nextest: the suite's nextest
# profile stops any test after 240 s, and a run of 1000 faults takes about 40 minutes on 2 CPUs.
# `cargo test` has no time limit and streams the test's progress (--nocapture). Same debug build
# as the suite, so nothing else is compiled. ELECTD_CHAOS_REPORT=DIR writes the report elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: scripts/chaos.sh FAULTS [SEED]" >&2
    exit 64
fi
export ELECTD_CHAOS_FAULTS="$1"
if [ $# -eq 2 ]; then
    export ELECTD_CHAOS_SEED="$2"
fi
export ELECTD_CHAOS_REPORT="${ELECTD_CHAOS_REPORT:-docs}"
scripts/setup.sh chaos
cargo build --all-targets --locked
exec cargo test --locked --test chaos chaos_report -- --ignored --exact --nocapture
