#!/usr/bin/env bash
# dbconn_guard: the test suite's steps: `cargo pgrx test`, the integration tests (pg_test/) per
# version and in the quick tier's shards, the expected-output tests (pg_regress, as `make
# installcheck` runs them), the soak, the lints and the benchmarks. Sourced by dev.sh.

run_pg_tests() {
    local v=$1 pgdata
    pgdata="$(state_dir)/pgrx-test-pg$v"
    as_root mkdir -p "$pgdata"
    as_root chown "$PGUSER_OS" "$pgdata"
    log "unit tests and #[pg_test]s on PostgreSQL $v"
    CARGO_PGRX_TEST_RUNAS=$PGUSER_OS CARGO_PGRX_TEST_PGDATA=$pgdata cargo pgrx test "pg$v"
}

# it_port VERSION: the port of that version's integration cluster. Each version has a block of
# 1000 ports (its clusters, replicas, poolers, exporters and endpoint sit at fixed offsets under
# 1000 from it), so that the suites of two versions can run at the same time
it_port() {
    case "$1" in
        15) echo $((TEST_PORT_BASE + 15)) ;;
        16) echo $((TEST_PORT_BASE + 1016)) ;;
        18) echo $((TEST_PORT_BASE + 2018)) ;;
        *) die "unknown PostgreSQL version $1" ;;
    esac
}

# install_for_integration VERSION: the build the integration tests run against, installed
install_for_integration() {
    local v=$1
    # test_hooks: a setting that delays the guard's last look, for the race tests
    log "building and installing dbconn_guard (with test hooks) into PostgreSQL $v"
    cargo pgrx install --pg-config "$(bin_dir "$v")/pg_config" --no-default-features --features "pg$v test_hooks" >&2
    install_released "$v"
}

# build_integration: the integration tests' executables (pg_test/), built once for every
# version (they are clients); their paths, one per line, into target/dbconn_guard-it.list
IT_LIST="$ROOT/target/dbconn_guard-it.list"
build_integration() {
    log "building the integration tests (pg_test/)"
    cargo build -q -p dbconn_guard_integration --bins >&2
    # in cargo test's order (the library's tests, the programs', then the files by name): a
    # file's tests may find what an earlier file left in the cluster
    cargo test -q --no-run -p dbconn_guard_integration ${DBCONN_GUARD_IT_TEST:+--test "$DBCONN_GUARD_IT_TEST"} \
        --message-format=json 2>/dev/null | python3 -c '
import json, sys
found = []
for line in sys.stdin:
    m = json.loads(line) if line.startswith("{") else {}
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        kind = m["target"]["kind"][0]
        found.append(({"lib": 0, "bin": 1}.get(kind, 2), m["target"]["name"], m["executable"]))
for _, _, exe in sorted(found):
    print(exe)
' >"$IT_LIST"
    [ -s "$IT_LIST" ] || die "building the integration tests gave no executable"
}

# run_integration_tests VERSION [PORTS LIST]: a fresh cluster of that version, the integration
# tests built by build_integration against it, then the small benchmark check; no cargo runs
# here, so that two versions can run at the same time. With PORTS and LIST (the quick tier's
# shards): the executables of LIST only, on the port block of version PORTS, and no benchmark
run_integration_tests() {
    local v=$1 port name="it-pg$1" list=${3:-$IT_LIST}
    port=$(it_port "${2:-$v}")
    [ -z "${3:-}" ] || name="it-pg$v-on-$2"
    # a fresh cluster every time: the tests assert exact rows
    stop_cluster "$name" "$v"
    as_root rm -rf "$(state_dir)/$name"
    # the metrics endpoint runs through the whole suite (the guard must never end it)
    local metrics="127.0.0.1:$((port + 900))"
    local extra=("dbconn_guard.metrics_listen = '$metrics'")
    # PostgreSQL 16's reserved_connections, counted by the utilization view
    [ "$v" -ge 16 ] && extra+=("reserved_connections = 2")
    start_cluster "$name" "$v" "$port" "${extra[@]}"
    psql_on "$v" "$port" -q -c "CREATE EXTENSION dbconn_guard" >/dev/null
    log "integration tests (pg_test/) on PostgreSQL $v, port $port"
    # the tests behind a real pgbouncer run on 15 only: what they test does not differ by version
    local include_ignored=""
    [ "$v" = 15 ] && include_ignored="--include-ignored"
    local rc=0 exe
    while read -r exe; do
        # as cargo test runs them: from the package's directory, each file's tests one at a time
        (cd "$ROOT/pg_test" && DBCONN_GUARD_TEST_PORT=$port DBCONN_GUARD_PG_BIN=$(bin_dir "$v") \
            DBCONN_GUARD_TEST_LOG="$(state_dir)/$name/server.log" DBCONN_GUARD_TEST_STATE="$(state_dir)" \
            "$exe" --test-threads=1 ${include_ignored} ${DBCONN_GUARD_IT_FILTER:-}) || rc=$?
    done <"$list"
    if [ $rc -eq 0 ] && [ -z "${DBCONN_GUARD_IT_TEST:-}" ] && [ -z "${3:-}" ]; then
        log "benchmark harness, small (--check: wrong results fail, timings do not) on PostgreSQL $v"
        # the history and endpoint section (section 8) on 15 only: it exercises no code that
        # differs between versions beyond what the integration tests above cover
        local bench_metrics=""
        [ "$v" = 15 ] && bench_metrics=$metrics
        DBCONN_GUARD_TEST_PORT=$port DBCONN_GUARD_BENCH_METRICS=$bench_metrics \
            "$ROOT/target/debug/bench" --check || rc=$?
    fi
    if [ $rc -ne 0 ]; then
        log "server log of $name (last 60 lines):"
        tail -n 60 "$(state_dir)/$name/server.log" >&2 || true
    fi
    stop_cluster "$name" "$v"
    return $rc
}

# test_stream VERSIONS...: the integration tests of each version in turn, and after 15's the
# expected-output tests, the 60-second soak and the package test ($PACKAGE_DEB, built
# beforehand). The first failure ends it, with its status (each step is checked: in cmd_test's
# `|| rc=$?`, set -e does not apply inside)
test_stream() {
    local v
    for v in "$@"; do
        run_integration_tests "$v" || return $?
        if [ "$v" = 15 ]; then
            run_regress || return $?
            # the soak's short version: every kind of session, every disturbance, 60 seconds
            run_soak 60 || return $?
            [ -z "${PACKAGE_DEB:-}" ] || test_package "$PACKAGE_DEB" || return $?
        fi
    done
}

cmd_test() {
    setup
    local versions=${DBCONN_GUARD_TEST_VERSIONS:-"15 16 18"} v
    local out
    out=$(mktemp)
    log "unit tests of the core (crates/dbconn_guard_core: no PostgreSQL, no pgrx)"
    cargo test -p dbconn_guard_core 2>&1 | tee -a "$out"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { rm -f "$out"; die "unit tests of the core failed"; }
    # first what keeps both cores busy, one after the other: the #[pg_test]s, the builds
    for v in $versions; do
        [ -n "${DBCONN_GUARD_ONLY_INTEGRATION:-}" ] || run_pg_tests "$v" 2>&1 | tee -a "$out"
        [ "${PIPESTATUS[0]}" -eq 0 ] || { rm -f "$out"; die "tests failed on PostgreSQL $v"; }
    done
    PACKAGE_DEB=""
    case " $versions " in *" 15 "*) PACKAGE_DEB=$(build_package 15) ;; esac
    export PACKAGE_DEB
    for v in $versions; do install_for_integration "$v"; done
    build_integration
    # then the suites, which mostly wait for sessions and the worker: PostgreSQL 15's (with the
    # expected-output tests, the soak and the package) beside the other versions' in turn, each
    # on clusters and ports of its own (it_port)
    local first=() rest=()
    for v in $versions; do
        if [ "$v" = 15 ] || [ ${#first[@]} -eq 0 ]; then first+=("$v"); else rest+=("$v"); fi
    done
    local side rc_first=0 rc_rest=0 pid=""
    side=$(mktemp)
    if [ ${#rest[@]} -gt 0 ]; then
        log "PostgreSQL ${rest[*]}: at the same time as ${first[*]} (its output follows when both are done)"
        test_stream "${rest[@]}" >"$side" 2>&1 &
        pid=$!
    fi
    test_stream "${first[@]}" 2>&1 | tee -a "$out" || rc_first=$?
    if [ -n "$pid" ]; then
        wait "$pid" || rc_rest=$?
        log "the output of PostgreSQL ${rest[*]}:"
        cat "$side"
        cat "$side" >>"$out"
    fi
    rm -f "$side"
    if [ "$rc_first" -ne 0 ] || [ "$rc_rest" -ne 0 ]; then
        awk '/^test result:/ { p += $4; f += $6 } /^(bench|package|soak|regress): [0-9]+ passed/ { p += $2; f += $4 }
             END { printf "all: %d passed, %d failed\n", p, f }' "$out"
        rm -f "$out"
        die "tests failed (PostgreSQL ${first[*]}: exit $rc_first; ${rest[*]:-none}: exit $rc_rest)"
    fi
    log "all tests passed on PostgreSQL $versions"
    # one closing tally of every runner above (the tests' "test result" lines and the bench check)
    awk '/^test result:/ { p += $4; f += $6 } /^(bench|package|soak|regress): [0-9]+ passed/ { p += $2; f += $4 }
         END { printf "all: %d passed, %d failed\n", p, f }' "$out"
    rm -f "$out"
}

# The quick tier's shards: PostgreSQL 15's integration test files in three groups of about the
# same length (measured on 7 Dec 2026: about 3.5 minutes each), each on a cluster and the port
# block of a version the quick tier does not otherwise use; a file in neither list runs in the
# third shard
CHECK_SHARD_1="pgbouncer clusters history endpoint docs"
CHECK_SHARD_2="diagnose incidents blockers dashboards views"

cmd_check() {
    setup
    local out k rc=0 pids=() exe base
    out=$(mktemp)
    log "unit tests of the core (crates/dbconn_guard_core)"
    cargo test -q -p dbconn_guard_core 2>&1 | tee -a "$out"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { rm -f "$out"; die "unit tests of the core failed"; }
    install_for_integration 15
    build_integration
    for k in 1 2 3; do : >"$IT_LIST.$k"; done
    while read -r exe; do
        base=$(basename "$exe")
        base=${base%-*}
        k=3
        case " $CHECK_SHARD_1 " in *" $base "*) k=1 ;; esac
        case " $CHECK_SHARD_2 " in *" $base "*) k=2 ;; esac
        echo "$exe" >>"$IT_LIST.$k"
    done <"$IT_LIST"
    log "PostgreSQL 15's integration tests in three shards side by side (the ports of 15, 16 and 18)"
    local ports=(x 15 16 18)
    for k in 1 2 3; do
        run_integration_tests 15 "${ports[$k]}" "$IT_LIST.$k" >"$out.$k" 2>&1 &
        pids[k]=$!
    done
    for k in 1 2 3; do
        local r=0
        wait "${pids[k]}" || r=$?
        cat "$out.$k" >>"$out"
        # a shard that passed: its tallies; one that failed: all it printed
        if [ $r -eq 0 ]; then
            grep -E '^test result:' "$out.$k" || true
        else
            log "shard $k failed (exit $r); its output:"
            cat "$out.$k" >&2
            rc=$r
        fi
        rm -f "$out.$k"
    done
    if [ $rc -eq 0 ]; then
        # (pipefail: the pipeline fails as run_regress does, and set -e does not stop here)
        run_regress 2>&1 | tee -a "$out" || rc=$?
    fi
    awk '/^test result:/ { p += $4; f += $6 } /^regress: [0-9]+ passed/ { p += $2; f += $4 }
         END { printf "check: %d passed, %d failed\n", p, f }' "$out"
    rm -f "$out"
    [ $rc -eq 0 ] || die "the quick tier failed: rerun a file alone with DBCONN_GUARD_IT_TEST=<file> ./dev.sh it 15"
    log "the quick tier passed; CI runs the whole suite (./dev.sh test)"
}

cmd_lint() {
    setup
    log "cargo fmt --check"
    cargo fmt --all --check
    local v versions=${DBCONN_GUARD_TEST_VERSIONS:-"15 16 18"}
    for v in $versions; do
        log "cargo clippy -D warnings (PostgreSQL $v, with the test hooks)"
        cargo clippy --workspace --all-targets --no-default-features --features "pg$v test_hooks" -- -D warnings
    done
}

# run_soak SECONDS [OUT]: the soak (pg_test/src/bin/soak/, built beforehand) on a fresh
# PostgreSQL 15 cluster with the installed library preloaded; OUT: the markdown file whose soak
# section it rewrites
run_soak() {
    local seconds=$1 out=${2:-} port=$((TEST_PORT_BASE + 70)) name=soak-pg15 rc=0
    stop_cluster "$name" 15
    as_root rm -rf "$(state_dir)/$name"
    start_cluster "$name" 15 "$port" "max_connections = 700"
    psql_on 15 "$port" -q -c "CREATE EXTENSION dbconn_guard" >/dev/null
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    log "soak: $seconds s, 500+ sessions, on PostgreSQL 15 (port $port)"
    env DBCONN_GUARD_TEST_PORT=$port DBCONN_GUARD_PG_BIN=$PG15_BIN DBCONN_GUARD_SOAK_SECONDS="$seconds" DBCONN_GUARD_TEST_STATE="$(state_dir)" \
        DBCONN_GUARD_SOAK_LOG="$(state_dir)/$name/server.log" ${out:+"DBCONN_GUARD_SOAK_OUT=$out"} \
        "$ROOT/target/debug/soak" || rc=$?
    if [ $rc -ne 0 ]; then
        log "server log of $name (last 60 lines):"
        tail -n 60 "$(state_dir)/$name/server.log" >&2 || true
    fi
    stop_cluster "$name" 15
    return $rc
}

cmd_soak() {
    local minutes=${1:-10}
    [[ "$minutes" =~ ^[0-9]+$ ]] && [ "$minutes" -ge 1 ] || die "soak: minutes must be a whole number, at least 1 (got '$minutes')"
    setup_packages
    setup_cargo_pgrx
    setup_pgrx_init_15
    install_ext 15 --release
    cargo build -q -p dbconn_guard_integration --bin soak >&2
    run_soak $((minutes * 60)) "$ROOT/BENCHMARKS.md"
}

# run_regress [accept]: the expected-output tests (test/sql, test/expected) with pg_regress on a
# temporary PostgreSQL 15 instance with the installed library preloaded (test/regress.conf);
# `accept` copies the results over the expected files, for review with git diff
REGRESS_TESTS="surface settings refusals"
ISOLATION_TESTS="blocking"
run_regress() {
    local dir pg_regress rc=0
    dir="$(state_dir)/regress"
    pg_regress="$("$PG15_BIN/pg_config" --pkglibdir)/pgxs/src/test/regress/pg_regress"
    as_root rm -rf "$dir"
    as_root mkdir -p "$dir"
    as_root cp -a "$ROOT/test/." "$dir/"
    as_root chown -R "$PGUSER_OS" "$dir"
    log "expected-output tests (test/): $REGRESS_TESTS"
    # shellcheck disable=SC2086
    (cd "$dir" && as_pg "$pg_regress" --bindir="$PG15_BIN" --inputdir="$dir" --outputdir="$dir" \
        --temp-instance="$dir/tmp_check" --temp-config="$dir/regress.conf" \
        --port=$((TEST_PORT_BASE + 80)) --dbname=dbconn_guard_regression $REGRESS_TESTS) || rc=$?
    # the blocking scenarios, deterministic under isolationtester (test/specs)
    log "isolation tests (test/specs): $ISOLATION_TESTS"
    # shellcheck disable=SC2086
    (cd "$dir" && as_pg "$(dirname "$pg_regress")/../isolation/pg_isolation_regress" --bindir="$PG15_BIN" \
        --inputdir="$dir" --outputdir="$dir/isolation" \
        --temp-instance="$dir/tmp_check_iso" --temp-config="$dir/regress.conf" \
        --port=$((TEST_PORT_BASE + 81)) --dbname=dbconn_guard_isolation \
        --load-extension=dbconn_guard $ISOLATION_TESTS) || rc=$?
    if [ "${1:-}" = accept ]; then
        for t in $REGRESS_TESTS; do cp "$dir/results/$t.out" "$ROOT/test/expected/$t.out"; done
        for t in $ISOLATION_TESTS; do cp "$dir/isolation/results/$t.out" "$ROOT/test/expected/$t.out"; done
        log "copied the results to test/expected/: review them with git diff"
        return 0
    fi
    if [ $rc -ne 0 ]; then
        cat "$dir/regression.diffs" "$dir/isolation/regression.diffs" 2>/dev/null >&2
        return $rc
    fi
    echo "regress: $(echo $REGRESS_TESTS $ISOLATION_TESTS | wc -w) passed, 0 failed"
}

cmd_bench() {
    setup_packages
    setup_cargo_pgrx
    setup_pgrx_init_15
    local port=$((TEST_PORT_BASE + 50)) name=bench-pg15
    # test_hooks: the worker can write 24 hours of synthetic samples (section 8)
    install_ext 15 --release --features test_hooks
    stop_cluster "$name" 15
    as_root rm -rf "$(state_dir)/$name"
    local metrics="127.0.0.1:$((port + 1000))"
    start_cluster "$name" 15 "$port" "max_connections = 2300" "shared_buffers = '256MB'" \
        "dbconn_guard.metrics_listen = '$metrics'"
    psql_on 15 "$port" -q -c "CREATE EXTENSION dbconn_guard" >/dev/null
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    log "benchmarks on PostgreSQL 15, port $port (about 10 minutes); results go to BENCHMARKS.md"
    local rc=0
    DBCONN_GUARD_TEST_PORT=$port DBCONN_GUARD_PG_BIN=$PG15_BIN DBCONN_GUARD_BENCH_DATA="$(state_dir)/$name" \
        DBCONN_GUARD_BENCH_METRICS=$metrics \
        DBCONN_GUARD_BENCH_OUT="$ROOT/BENCHMARKS.md" \
        cargo run --release -q -p dbconn_guard_integration --bin bench || rc=$?
    stop_cluster "$name" 15
    return $rc
}
