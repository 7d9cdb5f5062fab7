#!/usr/bin/env bash
# dbconn_guard: clusters: installing a build into a PostgreSQL, starting and stopping clusters as
# the postgres user, and the `run` cluster of ./dev.sh run. Sourced by dev.sh.

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
