#!/usr/bin/env bash
# dbconn_guard developer entry point.
#
#   ./dev.sh run     install prerequisites, build + install the extension, start a throwaway
#                    PostgreSQL 15 cluster with it preloaded, CREATE EXTENSION, show a first look
#   ./dev.sh test    install prerequisites, run the whole suite on PostgreSQL 15, 16 and 18
#                    (three runners side by side, each on ports of its own: SUITE_JOBS in
#                    scripts/tests.sh), the expected-output tests (test/), a 60-second soak
#                    and the Debian package test on 15
#   ./dev.sh check   the quick tier, for the edit-and-test loop: the core's unit tests, then
#                    PostgreSQL 15's integration tests in three shards side by side and the
#                    expected-output tests (CI keeps running `test`)
#   ./dev.sh regress [accept]  (or installcheck) the expected-output tests (test/) against the installed PG 15
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

# the steps, one file per job (provisioning is also a script of its own: scripts/provision.sh)
SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/scripts
# shellcheck source=scripts/common.sh
. "$SCRIPTS/common.sh"
# shellcheck source=scripts/provision.sh
. "$SCRIPTS/provision.sh"
# shellcheck source=scripts/clusters.sh
. "$SCRIPTS/clusters.sh"
# shellcheck source=scripts/package.sh
. "$SCRIPTS/package.sh"
# shellcheck source=scripts/tests.sh
. "$SCRIPTS/tests.sh"

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
    regress | installcheck) shift; run_regress "$@" ;;
    package) cmd_package ;;
    stop) cmd_stop ;;
    clean) cmd_clean ;;
    psql) shift; psql_on 15 "$RUN_PORT" "$@" ;;
    setup | provision) setup ;;
    test-package) setup_packages; setup_cargo_pgrx; setup_pgrx_init_15; test_package "$(build_package 15)" ;;
    *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
