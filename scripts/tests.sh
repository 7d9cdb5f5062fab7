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

# run_integration_tests VERSION [PORTS LIST [bench]]: a fresh cluster of that version, the
# integration tests built by build_integration against it, then the small benchmark check; no
# cargo runs here, so that several can run at the same time. With PORTS and LIST (a group of
# files, as the suite's jobs and the quick tier's shards run them): the executables of LIST
# only, on the port block of version PORTS, and the benchmark check only when told `bench`
run_integration_tests() {
    local v=$1 port name="it-pg$1" list=${3:-$IT_LIST} bench=yes
    port=$(it_port "${2:-$v}")
    if [ -n "${3:-}" ]; then
        name="it-pg$v-on-$2"
        [ "${4:-}" = bench ] || bench=""
    fi
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
    if [ $rc -eq 0 ] && [ -z "${DBCONN_GUARD_IT_TEST:-}" ] && [ -n "$bench" ]; then
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

# The integration test files in three groups of about the same length (measured on PostgreSQL
# 15, 7 Dec 2026: 3.5 to 4 minutes each); a file in neither list is in the third, with the
# tests of the harness and its programs
IT_GROUP_1="pgbouncer clusters history endpoint docs"
IT_GROUP_2="diagnose incidents blockers dashboards views"

# split_groups: $IT_LIST into $IT_LIST.1, .2 and .3 (in the same order)
split_groups() {
    local k exe base
    for k in 1 2 3; do : >"$IT_LIST.$k"; done
    while read -r exe; do
        base=$(basename "$exe")
        base=${base%-*}
        k=3
        case " $IT_GROUP_1 " in *" $base "*) k=1 ;; esac
        case " $IT_GROUP_2 " in *" $base "*) k=2 ;; esac
        echo "$exe" >>"$IT_LIST.$k"
    done <"$IT_LIST"
}

# The whole suite's jobs, on three runners side by side; each runner has the port block of a
# version (it_port) for its clusters, and runs its jobs one after the other. A line: runner,
# then the job: `it VERSION GROUP [bench]`, `regress`, `soak` or `package`. Balanced by the
# measured lengths (about 9.5 minutes of jobs each); in each runner PostgreSQL 15's jobs come
# first (nothing to wait for), then 16's, then 18's, in the order their builds finish.
SUITE_JOBS="
1 it 15 1 bench
1 it 16 2
1 it 18 1 bench
1 package
2 soak
2 it 15 3
2 it 16 3
2 it 16 1 bench
3 it 15 2
3 regress
3 it 18 2
3 it 18 3
"

# wait_for MARK: until $MARKS/MARK.ok (0) or $MARKS/MARK.failed (1) exists
wait_for() {
    while :; do
        [ -e "$MARKS/$1.ok" ] && return 0
        [ -e "$MARKS/$1.failed" ] && return 1
        sleep 1
    done
}

# run_job PORTS JOB...: one job of the suite, on the port block of version PORTS; a job of
# PostgreSQL 15 leaves $MARKS/pg15-job-N.done behind, whatever its outcome (the package test,
# which installs and removes PostgreSQL 15's files, waits for all of them)
run_job() {
    local ports=$1 kind=$2 rc=0
    shift 2
    case "$kind" in
        it)
            if ! wait_for "pg$1"; then
                log "PostgreSQL $1 was not built (see the builds' output): its tests did not run"
                return 1
            fi
            run_integration_tests "$1" "$ports" "$IT_LIST.$2" "${3:-}" || rc=$?
            ;;
        regress) run_regress || rc=$? ;;
        soak) run_soak 60 || rc=$? ;;
        package)
            local n=0 want
            want=$(printf '%s\n' "$SUITE_JOBS" | grep -cE '^[0-9] (it 15|regress|soak)' || true)
            while [ "$(find "$MARKS" -name 'pg15-job-*.done' | wc -l)" -lt "$want" ]; do sleep 1; done
            if ! wait_for package; then
                log "the package was not built (see the builds' output)"
                return 1
            fi
            test_package "$(cat "$MARKS/package.ok")" || rc=$?
            ;;
        *) die "unknown job $kind" ;;
    esac
    case "$kind $*" in "it 15"* | regress* | soak*) : >"$MARKS/pg15-job-$RANDOM$RANDOM.done" ;; esac
    return $rc
}

# run_runner K VERSIONS: runner K's jobs of VERSIONS, one after the other; every job runs (a
# failed one does not keep the others from running); the status: the first failure's
run_runner() {
    local k=$1 versions=" $2 " ports=(x 15 16 18) rc=0 e r job v
    while read -r r job; do
        [ "$r" = "$k" ] || continue
        v=15
        case "$job" in it\ *) v=$(echo "$job" | cut -d' ' -f2) ;; esac
        case "$versions" in *" $v "*) ;; *) continue ;; esac
        log "runner $k: $job"
        # (stdin: not the job list, which a program of the job could read)
        # shellcheck disable=SC2086
        run_job "${ports[$k]}" $job </dev/null || {
            e=$?
            [ $rc -ne 0 ] || rc=$e
            log "runner $k: $job failed (exit $e)"
        }
    done <<<"$SUITE_JOBS"
    return $rc
}

# build_later VERSIONS...: in the background, at the lowest CPU priority (the runners' tests
# come first): each version's #[pg_test]s (which install their own build) and then its build
# with the test hooks, then the package; each leaves a mark when done (ok or failed)
build_later() {
    renice -n 19 -p "$BASHPID" >/dev/null 2>&1 || true
    local v deb
    for v in "$@"; do
        if { [ -n "${DBCONN_GUARD_ONLY_INTEGRATION:-}" ] || run_pg_tests "$v"; } && install_for_integration "$v"; then
            : >"$MARKS/pg$v.ok"
        else
            : >"$MARKS/pg$v.failed"
        fi
    done
    if [ -n "$WITH_PACKAGE" ]; then
        if deb=$(build_package 15) && [ -n "$deb" ]; then
            echo "$deb" >"$MARKS/package.ok"
        else
            : >"$MARKS/package.failed"
        fi
    fi
}

tally() {
    awk '/^test result:/ { p += $4; f += $6 } /^(bench|package|soak|regress): [0-9]+ passed/ { p += $2; f += $4 }
         END { printf "'"$1"': %d passed, %d failed\n", p, f }' "$2"
}

cmd_test() {
    setup
    local versions=${DBCONN_GUARD_TEST_VERSIONS:-"15 16 18"} v out first rest=()
    out=$(mktemp)
    log "unit tests of the core (crates/dbconn_guard_core: no PostgreSQL, no pgrx)"
    cargo test -p dbconn_guard_core 2>&1 | tee -a "$out"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { rm -f "$out"; die "unit tests of the core failed"; }
    MARKS=$(mktemp -d)
    export MARKS
    WITH_PACKAGE=""
    case " $versions " in *" 15 "*) WITH_PACKAGE=yes ;; esac
    # first, with both cores: the builds the first jobs need (PostgreSQL 15's, or the first
    # version's when 15 is not tested), and the integration tests' executables
    case " $versions " in *" 15 "*) first=15 ;; *) first=${versions%% *} ;; esac
    for v in $versions; do [ "$v" = "$first" ] || rest+=("$v"); done
    [ -n "${DBCONN_GUARD_ONLY_INTEGRATION:-}" ] || run_pg_tests "$first" 2>&1 | tee -a "$out"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { rm -rf "$out" "$MARKS"; die "tests failed on PostgreSQL $first"; }
    install_for_integration "$first"
    : >"$MARKS/pg$first.ok"
    build_integration
    split_groups
    # then the jobs on three runners, while the other versions build in the background
    log "the suite: three runners side by side; PostgreSQL ${rest[*]:-} and the package build meanwhile, at low priority"
    build_later "${rest[@]}" >"$MARKS/builds.log" 2>&1 &
    local builder=$! k pids=() rcs=(x 0 0 0) rc=0
    for k in 1 2 3; do
        run_runner "$k" "$versions" >"$MARKS/runner-$k.log" 2>&1 &
        pids[k]=$!
    done
    wait "$builder" || true
    log "the builds' output:"
    cat "$MARKS/builds.log"
    cat "$MARKS/builds.log" >>"$out"
    for k in 1 2 3; do
        wait "${pids[k]}" || rcs[k]=$?
        log "runner $k's output (exit ${rcs[k]}):"
        cat "$MARKS/runner-$k.log"
        cat "$MARKS/runner-$k.log" >>"$out"
        [ "${rcs[k]}" -eq 0 ] || rc=${rcs[k]}
    done
    for v in "${rest[@]}"; do [ -e "$MARKS/pg$v.ok" ] || rc=1; done
    if [ -n "$WITH_PACKAGE" ] && [ ! -e "$MARKS/package.ok" ]; then rc=1; fi
    rm -rf "$MARKS"
    if [ $rc -ne 0 ]; then
        tally all "$out"
        rm -f "$out"
        die "tests failed (runners: ${rcs[1]} ${rcs[2]} ${rcs[3]}; see the output above)"
    fi
    log "all tests passed on PostgreSQL $versions"
    # one closing tally of every runner above (the tests' "test result" lines and the checks')
    tally all "$out"
    rm -f "$out"
}

cmd_check() {
    setup
    local out k rc=0 pids=()
    out=$(mktemp)
    log "unit tests of the core (crates/dbconn_guard_core)"
    cargo test -q -p dbconn_guard_core 2>&1 | tee -a "$out"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { rm -f "$out"; die "unit tests of the core failed"; }
    install_for_integration 15
    build_integration
    split_groups
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
    tally check "$out"
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
