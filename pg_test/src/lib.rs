//! Helpers for the integration tests: real client sessions against the throwaway cluster that
//! `./dev.sh test` starts with dbconn_guard preloaded.
//!
//! The cluster is named by `DBCONN_GUARD_TEST_PORT` (and optionally `DBCONN_GUARD_TEST_HOST`,
//! default 127.0.0.1); the tests connect as the superuser `postgres` unless they say otherwise.

use postgres::{Client, Config, NoTls};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub fn config(user: &str, application_name: &str) -> Config {
    let port: u16 = std::env::var("DBCONN_GUARD_TEST_PORT")
        .expect(
            "DBCONN_GUARD_TEST_PORT is not set: run the integration tests through ./dev.sh test",
        )
        .parse()
        .expect("DBCONN_GUARD_TEST_PORT must be a port number");
    let host = std::env::var("DBCONN_GUARD_TEST_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let mut c = Config::new();
    c.host(&host)
        .port(port)
        .user(user)
        .dbname("postgres")
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
