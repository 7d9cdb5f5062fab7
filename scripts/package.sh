#!/usr/bin/env bash
# dbconn_guard: the Debian package, and its test. Sourced by dev.sh.

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
    # (the answer printed to stderr as a copy, not through tee /dev/stderr: when stderr is a
    # file, as a runner's log is, opening /dev/stderr again truncates it)
    local answer=""
    {
        answer=$(psql_on 15 "$port" -v ON_ERROR_STOP=1 -qAt -f - <<'SQL'
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
        ) && printf '%s\n' "$answer" >&2 && grep -qx 'worker running: true' <<<"$answer"
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
