//! Helpers for the integration tests: real client sessions against the throwaway cluster that
//! `./dev.sh test` starts with dbconn_guard preloaded.
//!
//! The cluster is named by `DBCONN_GUARD_TEST_PORT` (and optionally `DBCONN_GUARD_TEST_HOST`,
//! default 127.0.0.1); the tests connect as the superuser `postgres` unless they say otherwise.

use postgres::{Client, Config, NoTls};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub fn config(user: &str, application_name: &str) -> Config {
    config_db(user, "postgres", application_name)
}

/// The test cluster's port.
pub fn test_port() -> u16 {
    std::env::var("DBCONN_GUARD_TEST_PORT")
        .expect(
            "DBCONN_GUARD_TEST_PORT is not set: run the integration tests through ./dev.sh test",
        )
        .parse()
        .expect("DBCONN_GUARD_TEST_PORT must be a port number")
}

pub fn config_db(user: &str, dbname: &str, application_name: &str) -> Config {
    config_at(test_port(), user, dbname, application_name)
}

/// A session of another server on this machine (a standby), by port.
pub fn config_at(port: u16, user: &str, dbname: &str, application_name: &str) -> Config {
    let host = std::env::var("DBCONN_GUARD_TEST_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let mut c = Config::new();
    c.host(&host)
        .port(port)
        .user(user)
        .dbname(dbname)
        .application_name(application_name)
        .connect_timeout(Duration::from_secs(10));
    c
}

/// A new superuser session with the given application_name.
pub fn connect(application_name: &str) -> Client {
    connect_as("postgres", application_name)
}

pub fn connect_as(user: &str, application_name: &str) -> Client {
    config(user, application_name)
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

/// A session of `user` in database `dbname`.
pub fn connect_to(user: &str, dbname: &str, application_name: &str) -> Client {
    config_db(user, dbname, application_name)
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect as {user} to {dbname}: {e}"))
}

/// A session's backend pid.
pub fn pid(c: &mut Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// A session left idle.
pub fn idle(app: &str) -> (Client, i32) {
    let mut c = connect(app);
    let p = pid(&mut c);
    (c, p)
}

/// A session left idle in transaction (BEGIN; then `sql`).
pub fn idle_in_transaction(app: &str, sql: &str) -> (Client, i32) {
    let mut c = connect(app);
    let p = pid(&mut c);
    c.batch_execute("BEGIN").unwrap();
    c.batch_execute(sql).unwrap();
    (c, p)
}

/// Runs `sql` on a new session in a thread; returns the pid at once and the thread, which ends
/// when the statement does (or its session is terminated).
pub fn in_background(
    app: &str,
    setup: &str,
    sql: &str,
) -> (i32, JoinHandle<Result<(), postgres::Error>>) {
    let mut c = connect(app);
    let p = pid(&mut c);
    if !setup.is_empty() {
        c.batch_execute(setup).unwrap();
    }
    let sql = sql.to_string();
    let h = thread::spawn(move || {
        let r = c.batch_execute(&sql);
        // keep the session (and whatever it holds) until the statement returns
        drop(c);
        r
    });
    (p, h)
}

/// Polls `sql` (one boolean) until it is true; panics after `timeout`.
pub fn wait_until(c: &mut Client, sql: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let ok: bool = c.query_one(sql, &[]).unwrap().get(0);
        if ok {
            return;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for: {sql}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until each pid is waiting on a heavyweight lock.
pub fn wait_for_lock_waits(c: &mut Client, pids: &[i32]) {
    let list = pids
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    wait_until(
        c,
        &format!(
            "SELECT count(*) = {} FROM pg_stat_activity WHERE pid IN ({list}) AND wait_event_type = 'Lock'",
            pids.len()
        ),
        Duration::from_secs(20),
    );
}

/// Ends sessions by pid (cleanup after a test).
pub fn terminate(c: &mut Client, pids: &[i32]) {
    for p in pids {
        c.execute("SELECT pg_terminate_backend($1)", &[p]).unwrap();
    }
}

/// Sets `dbconn_guard.*` (or any) settings with ALTER SYSTEM, reloads, and waits until the
/// background worker applies them (its published policy matches what a new session shows).
pub fn alter_system(c: &mut Client, settings: &[(&str, &str)]) {
    for (name, value) in settings {
        c.batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'"))
            .unwrap_or_else(|e| panic!("{name} = {value}: {e}"));
    }
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for_worker_policy(settings);
}

/// ALTER SYSTEM RESET ALL, reload, and wait for the worker to apply the defaults.
pub fn reset_system(c: &mut Client) {
    c.batch_execute("ALTER SYSTEM RESET ALL").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for_worker_policy(&[
        ("dbconn_guard.idle_timeout", ""),
        ("dbconn_guard.dry_run", ""),
    ]);
}

fn wait_for_worker_policy(settings: &[(&str, &str)]) {
    let start = Instant::now();
    'outer: loop {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "worker did not apply {settings:?}"
        );
        thread::sleep(Duration::from_millis(50));
        let mut fresh = connect("it_policy_probe");
        for (name, _) in settings {
            let Some(short) = name.strip_prefix("dbconn_guard.") else {
                continue;
            };
            if matches!(
                short,
                "warning_pct" | "critical_pct" | "leak_idle_age" | "leak_trend_samples"
            ) || short.ends_with("_age")
                || short.starts_with("transaction_age")
                || short == "idle_warning_count"
            {
                continue; // not part of the worker's published policy
            }
            let same: bool = fresh
                .query_one(
                    "SELECT coalesce((SELECT policy->>$1 FROM dbconn_guard.worker_status()) = current_setting($2), false)",
                    &[&short, name],
                )
                .unwrap()
                .get(0);
            if !same {
                continue 'outer;
            }
        }
        return;
    }
}

/// Is a backend with this pid still there?
pub fn alive(c: &mut Client, pid: i32) -> bool {
    c.query_one(
        "SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $1",
        &[&pid],
    )
    .unwrap()
    .get(0)
}

/// Waits until the backend is gone; panics after `timeout`.
pub fn wait_gone(c: &mut Client, pid: i32, timeout: Duration) {
    wait_until(
        c,
        &format!("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = {pid}"),
        timeout,
    );
}

/// The worker's pid (waits until it runs).
pub fn worker_pid(c: &mut Client) -> i32 {
    wait_until(
        c,
        "SELECT running AND extension_ready FROM dbconn_guard.worker_status()",
        Duration::from_secs(30),
    );
    c.query_one("SELECT pid FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0)
}

/// Creates a LOGIN role (no superuser) if it does not exist.
pub fn ensure_role(c: &mut Client, role: &str, extra: &str) {
    c.batch_execute(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN; END IF; END $$; {extra}"
    ))
    .unwrap();
}

/// A session of `user` left idle in transaction.
pub fn idle_in_transaction_as(user: &str, app: &str) -> (Client, i32) {
    let mut c = connect_as(user, app);
    let p = pid(&mut c);
    c.batch_execute("BEGIN; SELECT 1").unwrap();
    (c, p)
}

/// Runs a PostgreSQL program (`pg_ctl`, `pg_basebackup`, `pgbench`, ...) from `bin` as the
/// `postgres` OS user; panics with its stderr when it fails; returns its stdout.
pub fn run_as_postgres(bin: &std::path::Path, program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("sudo")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(program))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One query over every view and function of the read-only surface.
pub const EVERY_VIEW: [&str; 7] = [
    "SELECT count(*) FROM dbconn_guard.connection_analysis",
    "SELECT count(*) FROM dbconn_guard.blocking_pairs",
    "SELECT count(*) FROM dbconn_guard.blocking_chains()",
    "SELECT count(*) FROM dbconn_guard.utilization",
    "SELECT count(*) FROM dbconn_guard.leak_suspects",
    "SELECT count(*) FROM dbconn_guard.health()",
    "SELECT dbconn_guard.health_status(), dbconn_guard.utilization_pct()",
];

/// Runs every query of `EVERY_VIEW`; panics, naming `context` and the query, on an error.
pub fn query_every_view(c: &mut Client, context: &str) {
    for sql in EVERY_VIEW {
        c.query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{context}: {sql}: {e}"));
    }
}
