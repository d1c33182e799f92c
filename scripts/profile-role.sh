#!/usr/bin/env bash
# Where `GET /role`'s time goes next to the bare axum baseline: runs the benchmark's no-socket
# loops (benches/scenarios/api.rs, ELECTD_BENCH_PROFILE) under callgrind and prints the
# instructions per request of each, and of the functions that make the difference.
#
#   scripts/profile-role.sh            # 20000 requests per loop
#   scripts/profile-role.sh 5000 DIR   # fewer; keep the callgrind files in DIR
#
# The loops: `electd-role` (electd's `api::router`, GET /role over a fixed leader status),
# `electd-healthz` (the same router, a constant body: the router's own layers), `bare-role` (a
# bare axum router answering the same bytes) and `render` (`Status::doc` + serde_json alone).
# Only the loop itself is counted (--toggle-collect), not the set-up. Instruction counts are
# exact and do not depend on what else the machine does; callgrind_annotate DIR/LOOP.out
# --inclusive=yes shows the whole tree. Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-20000}"
OUT="${2:-$(mktemp -d /tmp/electd-profile-role.XXXXXX)}"
mkdir -p "$OUT"
command -v valgrind >/dev/null || {
    echo "profile-role: valgrind is missing: sudo apt-get install -y valgrind" >&2
    exit 69
}
BIN=$(cargo bench --bench electd --no-run --locked 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | head -1)
[ -x "$BIN" ] || {
    echo "profile-role: cannot find the benchmark executable" >&2
    exit 69
}
declare -A IR
for loop in bare-role electd-healthz electd-role render; do
    fn='*profile_loop*'
    [ "$loop" = render ] && fn='*render_loop*'
    ELECTD_BENCH_PROFILE="$loop:$N" valgrind --tool=callgrind --toggle-collect="$fn" \
        --callgrind-out-file="$OUT/$loop.out" "$BIN" >/dev/null 2>"$OUT/$loop.log"
    total=$(sed -n 's/.*Collected : *\([0-9]*\).*/\1/p' "$OUT/$loop.log")
    IR[$loop]=$((total / N))
    callgrind_annotate --inclusive=yes "$OUT/$loop.out" >"$OUT/$loop.txt" 2>/dev/null
done

# The inclusive cost per request of the functions whose name contains PATTERN (the first match).
per_request() {
    local ir
    ir=$(grep -F -- "$2" "$OUT/$1.txt" | head -1 | awk '{gsub(",", "", $1); print $1}')
    echo $((${ir:-0} / N))
}

echo "instructions per request ($N requests per loop, callgrind; files in $OUT)"
printf '  %-58s %8s\n' "bare axum router, GET /role (constant body)" "${IR[bare-role]}"
printf '  %-58s %8s\n' "electd's router, GET /healthz (constant body)" "${IR[electd-healthz]}"
printf '  %-58s %8s\n' "electd's router, GET /role" "${IR[electd-role]}"
printf '  %-58s %8s\n' "rendering the /role body alone (Status::doc + serde_json)" "${IR[render]}"
echo
echo "electd GET /role, inclusive per request:"
for f in 'electd::api::role_response' 'Serialize for electd::api::doc::RoleDoc' \
    'serde_json::ser::format_escaped_str_contents' 'collect_str' \
    'http::extensions::Extensions::insert' 'RawTable<T,A>::reserve_rehash' \
    'boxed_clone_sync::CloneService<R>>::clone_box ' 'drop_in_place<http::request::Parts>'; do
    printf '  %-58s %8s\n' "$f" "$(per_request electd-role "$f")"
done
echo "bare GET /role, inclusive per request:"
for f in 'http::extensions::Extensions::insert' 'drop_in_place<http::request::Request'; do
    printf '  %-58s %8s\n' "$f" "$(per_request bare-role "$f")"
done
