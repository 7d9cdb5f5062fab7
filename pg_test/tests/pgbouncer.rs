//! The guard behind a real pgbouncer (Debian's 1.18, started by the test on a loopback port in
//! front of the test cluster), in transaction and in session pool mode (issue 10, section 3).
//!
//! * Reaping pgbouncer's idle server connections: pgbench (and bursts of clients that grow the
//!   pool) through pgbouncer for 30 s with `dbconn_guard.idle_timeout = 2s`, then 30 s more
//!   with pgbouncer's own `server_idle_timeout` and the guard's idle rule kept off the pooler's
//!   role (`idle_timeout_overrides = 'user:it_pgb=0'`). Client errors are counted three ways:
//!   pgbench's failed transactions and aborted clients, the burst clients' errors, and the
//!   errors pgbouncer logs it sent a client (`pooler error`). The measurements are printed
//!   (`--nocapture`) and the README's "Behind pgbouncer" reports them.
//! * A client leaking a transaction through pgbouncer: the idle-in-transaction rule ends its
//!   server connection, that client gets an error, the other clients never do.
//! * What the DBA sees: pgbouncer's server connections in `connection_analysis`.
//!
//! Every test uses a database of its own (`it_pgbouncer`, pgbench's tables) and the role
//! `it_pgb` (not a superuser: the guard never ends superusers), dropped at the end.

use dbconn_guard_integration::pgbouncer::{pgbench_bin, Pgbench, Pgbouncer};
use dbconn_guard_integration::*;
use postgres::{Client, NoTls, SimpleQueryMessage};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The role pgbouncer logs in to the server as (its clients log in to pgbouncer as it too).
const POOLER: &str = "it_pgb";
/// The database behind pgbouncer.
const DB: &str = "it_pgbouncer";
/// Seconds of load per phase (the issue asks for a minute per mode: two phases of 30 s).
const LOAD_SECONDS: u64 = 30;

/// The port of the `n`th pgbouncer (`ports::PGBOUNCER`).
fn bouncer_port(n: usize) -> u16 {
    ports::port(ports::PGBOUNCER[n])
}

/// The role, the database and pgbench's tables (scale 1), made straight on the server.
fn setup(a: &mut Client) {
    ensure_role(a, POOLER, "");
    a.batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .unwrap();
    a.batch_execute(&format!("CREATE DATABASE {DB} OWNER {POOLER}"))
        .unwrap();
    let port = test_port().to_string();
    let host = std::env::var("DBCONN_GUARD_TEST_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let out = std::process::Command::new(pgbench_bin())
        .args([
            "-i", "-q", "-s", "1", "-h", &host, "-p", &port, "-U", POOLER, DB,
        ])
        .output()
        .expect("pgbench -i");
    assert!(
        out.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        a,
        &format!("SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = '{DB}'"),
        Duration::from_secs(10),
    );
}

/// The policy back to its defaults, the database and the role dropped.
fn teardown(a: &mut Client) {
    reset_system(a);
    a.batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .unwrap();
    a.batch_execute(&format!("DROP ROLE IF EXISTS {POOLER}"))
        .unwrap();
}

/// The newest audit row's id.
fn last_audit_id(a: &mut Client) -> i64 {
    a.query_one(
        "SELECT coalesce(max(id), 0)::int8 FROM dbconn_guard.terminations",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Sessions of the pooler's role the guard ended (not a dry run) since audit row `since`, by
/// rule.
fn pooler_terminations(a: &mut Client, since: i64, rule: &str) -> i64 {
    a.query_one(
        "SELECT count(*) FROM dbconn_guard.terminations WHERE id > $1 AND usename = $2 AND rule = $3 AND NOT dry_run",
        &[&since, &POOLER, &rule],
    )
    .unwrap()
    .get(0)
}

/// One phase of load through pgbouncer, and what the clients saw.
#[derive(Debug)]
struct Load {
    pgbench: Pgbench,
    burst_ok: u64,
    burst_errors: Vec<String>,
    /// pgbouncer's server connections the guard ended while the load ran (idle_timeout)
    guard_ended: i64,
    /// server connections pgbouncer found dead ("server conn crashed?")
    servers_lost: usize,
    /// errors pgbouncer sent its clients ("pooler error")
    pooler_errors: usize,
}

impl Load {
    fn client_errors(&self) -> u64 {
        self.pgbench.errors() + self.burst_errors.len() as u64 + self.pooler_errors as u64
    }

    fn summary(&self, what: &str, mode: &str) -> String {
        format!(
            "pgbouncer {} mode, {what}: {LOAD_SECONDS} s, pgbench {} transactions, {} failed, {} clients aborted (exit {:?}); \
             burst clients {} ok, {} errors; pgbouncer: {} pooler errors sent to clients, {} server connections found dead; \
             the guard ended {} of pgbouncer's server connections{}",
            mode,
            self.pgbench.processed,
            self.pgbench.failed,
            self.pgbench.aborted_clients,
            self.pgbench.exit_code,
            self.burst_ok,
            self.burst_errors.len(),
            self.pooler_errors,
            self.servers_lost,
            self.guard_ended,
            if self.pgbench.abort_lines.is_empty() && self.burst_errors.is_empty() {
                String::new()
            } else {
                format!(
                    "\n  pgbench: {:?}\n  bursts: {:?}",
                    self.pgbench.abort_lines, self.burst_errors
                )
            }
        )
    }
}

/// pgbench through pgbouncer for LOAD_SECONDS at 100 transactions per second from 8 clients
/// (in session mode each transaction on a new connection, `-C`: the clients of a session pool
/// that come and go), and meanwhile, every 3 s, a burst of 8 more clients at once (a 0.3 s
/// statement each) that grows the pool: the server connections it adds sit idle afterwards,
/// below the ones pgbench keeps busy (pgbouncer reuses the most recent one first).
fn run_load(a: &mut Client, b: &Pgbouncer) -> Load {
    let since = last_audit_id(a);
    let log_before_lost = b.log_count("server conn crashed?");
    let log_before_errors = b.log_count("pooler error");
    let stop = Arc::new(AtomicBool::new(false));
    let bursts = {
        let stop = stop.clone();
        let cfg = b.config(POOLER, "it_pgb_burst");
        thread::spawn(move || {
            let mut ok = 0u64;
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let clients: Vec<_> = (0..8)
                    .map(|_| {
                        let cfg = cfg.clone();
                        thread::spawn(move || -> Result<(), String> {
                            let mut c = cfg.connect(NoTls).map_err(|e| db_error(&e))?;
                            c.batch_execute("SELECT pg_sleep(0.3)")
                                .map_err(|e| db_error(&e))
                        })
                    })
                    .collect();
                for c in clients {
                    match c.join().unwrap() {
                        Ok(()) => ok += 1,
                        Err(e) => errors.push(e),
                    }
                }
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(3) && !stop.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(50));
                }
            }
            (ok, errors)
        })
    };
    let seconds = LOAD_SECONDS.to_string();
    let mut args = vec!["-n", "-c", "8", "-j", "2", "-R", "100", "-T", &seconds];
    if b.pool_mode == "session" {
        args.push("-C");
    }
    let pgbench = b.pgbench(POOLER, &args);
    stop.store(true, Ordering::Relaxed);
    let (burst_ok, burst_errors) = bursts.join().unwrap();
    Load {
        guard_ended: pooler_terminations(a, since, "idle_timeout"),
        servers_lost: b.log_count("server conn crashed?") - log_before_lost,
        pooler_errors: b.log_count("pooler error") - log_before_errors,
        pgbench,
        burst_ok,
        burst_errors,
    }
}

/// The guard's idle rule on pgbouncer's server connections, then kept off them.
fn reaping(mode: &str, port: u16) {
    let mut a = guard_admin();
    setup(&mut a);

    // 1. the guard ends pgbouncer's server connections idle for 2 s; pgbouncer never would
    // (server_idle_timeout 600 s, its default)
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.idle_timeout", "2s"),
            ("dbconn_guard.min_utilization_pct", "0"),
        ],
    );
    let b = Pgbouncer::start(port, mode, DB, &[POOLER], &[]);
    let reaped = run_load(&mut a, &b);
    eprintln!(
        "{}",
        reaped.summary("the guard reaping (idle_timeout 2s)", mode)
    );
    drop(b);

    // 2. the recommended policy: pgbouncer closes its own idle server connections
    // (server_idle_timeout), the guard's idle rule spares the pooler's role; its other rules
    // still apply to it
    alter_system(
        &mut a,
        &[(
            "dbconn_guard.idle_timeout_overrides",
            &format!("user:{POOLER}=0"),
        )],
    );
    let b = Pgbouncer::start(port, mode, DB, &[POOLER], &[("server_idle_timeout", "5")]);
    let since = last_audit_id(&mut a);
    let kept = run_load(&mut a, &b);
    eprintln!(
        "{}",
        kept.summary(
            "the pooler's role spared (idle_timeout_overrides user:it_pgb=0), server_idle_timeout 5",
            mode
        )
    );
    // once the load is gone, pgbouncer closes its idle server connections itself
    wait_until(
        &mut a,
        &format!("SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = '{DB}'"),
        Duration::from_secs(30),
    );
    let closed_by_pgbouncer = b.log_count("server idle timeout");
    drop(b);

    // what was measured, in a way that can fail
    assert!(
        reaped.guard_ended >= 1,
        "the guard ended none of pgbouncer's idle server connections: {reaped:?}"
    );
    assert!(reaped.pgbench.processed > 0 && kept.pgbench.processed > 0);
    assert!(reaped.burst_ok > 0 && kept.burst_ok > 0);
    // phase 1 keeps the race the README names: pgbouncer hands a server connection to a client
    // and sends its statement while the backend still shows idle (the bytes wait in its
    // socket), and the guard's last look, which sees the status entry, lets the signal go. The
    // client gets an error, in one of the forms seen on 7 Dec 2026, about once in 60
    // connections ended when the machine is loaded: pgbouncer's "invalid server parameter"
    // (session mode), the server's "terminating connection due to administrator command"
    // passed on, a "connection closed" (transaction mode). Only those forms, and rarely: at
    // most one in 20 connections ended (and one in any run).
    let race_bound = (reaped.guard_ended as usize / 20).max(1);
    let race_form = |l: &str| {
        l.contains("invalid server parameter")
            || l.contains("server conn crashed")
            || l.contains("terminating connection due to administrator command")
            || l.contains("connection closed")
    };
    let raced = reaped.pgbench.aborted_clients as usize + reaped.burst_errors.len() <= race_bound
        && reaped.pgbench.failed == 0
        && reaped.pooler_errors <= race_bound
        && reaped.burst_errors.iter().all(|e| race_form(e))
        // each aborted client's own message (pgbench's closing "Run was aborted" is no error
        // of its own)
        && reaped.pgbench.abort_lines.iter().all(|l| race_form(l));
    assert!(
        reaped.client_errors() == 0 || raced,
        "{}",
        reaped.summary("the guard reaping", mode)
    );
    assert!(
        reaped.pgbench.exit_code == Some(0) || (raced && reaped.pgbench.exit_code == Some(2)),
        "{}",
        reaped.pgbench.stderr
    );
    assert_eq!(kept.guard_ended, 0, "the override spares the pooler's role");
    assert_eq!(pooler_terminations(&mut a, since, "idle_timeout"), 0);
    assert_eq!(kept.client_errors(), 0, "{kept:?}");
    assert_eq!(kept.pgbench.exit_code, Some(0), "{}", kept.pgbench.stderr);
    assert!(
        closed_by_pgbouncer >= 1,
        "pgbouncer's server_idle_timeout closed no server connection"
    );
    teardown(&mut a);
}

#[test]
#[ignore = "PostgreSQL 15 only: ./dev.sh runs it there with --include-ignored (pgbouncer interop does not differ by server version)"]
fn transaction_pool_reaping_idle_server_connections() {
    reaping("transaction", bouncer_port(0));
}

#[test]
#[ignore = "PostgreSQL 15 only: ./dev.sh runs it there with --include-ignored (pgbouncer interop does not differ by server version)"]
fn session_pool_reaping_idle_server_connections() {
    reaping("session", bouncer_port(1));
}

/// The backend pid behind a client of pgbouncer (inside a transaction, in transaction mode).
fn server_pid(c: &mut Client) -> i32 {
    let rows = c.simple_query("SELECT pg_backend_pid()").unwrap();
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .unwrap()
}

/// A client leaks a transaction through pgbouncer while three others run transactions through
/// it: the idle-in-transaction rule ends the leaker's server connection, the leaker gets an
/// error at its next statement, the others none.
fn leak(mode: &str, port: u16) {
    let mut a = guard_admin();
    setup(&mut a);
    // the recommended policy behind pgbouncer: idle sessions of the pooler's role are left to
    // pgbouncer, idle-in-transaction ones are the guard's
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.idle_in_transaction_timeout", "2s"),
            ("dbconn_guard.idle_timeout", "2s"),
            (
                "dbconn_guard.idle_timeout_overrides",
                &format!("user:{POOLER}=0"),
            ),
        ],
    );
    let b = Pgbouncer::start(port, mode, DB, &[POOLER], &[]);
    let since = last_audit_id(&mut a);
    let stop = Arc::new(AtomicBool::new(false));
    let done: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let others: Vec<_> = (0..3)
        .map(|i| {
            let mut c = b.connect(POOLER, &format!("it_pgb_busy_{i}"));
            let stop = stop.clone();
            let done = done[i].clone();
            thread::spawn(move || -> Vec<String> {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    // one transaction over three round trips, idle in it between them
                    let r = c
                        .batch_execute("BEGIN")
                        .and_then(|_| c.batch_execute("SELECT count(*) FROM pgbench_branches"))
                        .and_then(|_| {
                            c.batch_execute(&format!(
                                "UPDATE pgbench_tellers SET tbalance = tbalance WHERE tid = {}",
                                i + 1
                            ))
                        })
                        .and_then(|_| c.batch_execute("COMMIT"));
                    match r {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors.push(db_error(&e));
                            if c.is_closed() {
                                break;
                            }
                        }
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                errors
            })
        })
        .collect();

    let mut leaker = b.connect(POOLER, "it_pgb_leaker");
    leaker.batch_execute("BEGIN").unwrap();
    let leaked = server_pid(&mut leaker);
    leaker
        .batch_execute("UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1")
        .unwrap();
    // the others' transactions go on meanwhile (they take other rows' locks)
    wait_gone(&mut a, leaked, Duration::from_secs(20));
    let at_end: Vec<u64> = done.iter().map(|d| d.load(Ordering::Relaxed)).collect();
    let e = leaker
        .batch_execute("SELECT 1")
        .expect_err("the leaker's next statement fails");
    let leaker_error = db_error(&e);
    let leaker_code = e.code().map(|c| c.code().to_string());
    // pgbouncer closed the leaker's connection
    assert!(leaker.batch_execute("SELECT 1").is_err());
    // the others keep working after the leak is ended, and a new client gets in
    thread::sleep(Duration::from_secs(2));
    let mut newcomer = b.connect(POOLER, "it_pgb_newcomer");
    newcomer.batch_execute("SELECT 1").unwrap();
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<Vec<String>> = others.into_iter().map(|h| h.join().unwrap()).collect();
    let after: Vec<u64> = done.iter().map(|d| d.load(Ordering::Relaxed)).collect();
    eprintln!(
        "pgbouncer {mode} mode, a leaked transaction: its server connection (pid {leaked}) ended; the leaker's next statement: \
         {leaker_error} (SQLSTATE {leaker_code:?}); pgbouncer logged {} pooler errors; the other 3 clients: {at_end:?} transactions \
         when the leak was ended, {after:?} at the end, errors {errors:?}",
        b.log_count("pooler error")
    );
    let audit: Vec<(String, String, String, String)> = a
        .query(
            "SELECT rule, usename, application_name, state FROM dbconn_guard.terminations WHERE pid = $1 AND id > $2",
            &[&leaked, &since],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        audit,
        vec![(
            "idle_in_transaction_timeout".to_string(),
            POOLER.to_string(),
            // pgbouncer passes its client's application_name on to the server connection
            "it_pgb_leaker".to_string(),
            "idle in transaction".to_string()
        )]
    );
    // the guard ended nothing else of the pooler's
    let others_ended: i64 = a
        .query_one(
            "SELECT count(*) FROM dbconn_guard.terminations WHERE id > $1 AND usename = $2 AND pid <> $3",
            &[&since, &POOLER, &leaked],
        )
        .unwrap()
        .get(0);
    assert_eq!(others_ended, 0);
    // the server's error reaches the client first ("terminating connection due to administrator
    // command", 57P01); pgbouncer then closes the client ("server conn crashed?")
    assert_eq!(leaker_code.as_deref(), Some("57P01"), "{leaker_error}");
    for (i, e) in errors.iter().enumerate() {
        assert!(e.is_empty(), "client {i}: {e:?}");
        assert!(
            after[i] > at_end[i] && at_end[i] > 0,
            "client {i} kept working: {at_end:?} then {after:?}"
        );
    }
    drop(newcomer);
    drop(b);
    teardown(&mut a);
}

#[test]
#[ignore = "PostgreSQL 15 only: ./dev.sh runs it there with --include-ignored (pgbouncer interop does not differ by server version)"]
fn transaction_pool_a_leaked_transaction_is_ended_and_the_others_keep_working() {
    leak("transaction", bouncer_port(2));
}

#[test]
#[ignore = "PostgreSQL 15 only: ./dev.sh runs it there with --include-ignored (pgbouncer interop does not differ by server version)"]
fn session_pool_a_leaked_transaction_is_ended_and_the_others_keep_working() {
    leak("session", bouncer_port(3));
}

/// One row of `connection_analysis`: (usename, application_name, client_addr, state, count).
type Group = (String, String, String, String, i64);

fn pooler_groups(a: &mut Client) -> Vec<Group> {
    a.query(
        "SELECT usename, application_name, host(client_addr), state, connection_count
           FROM dbconn_guard.connection_analysis WHERE datname = $1 ORDER BY application_name",
        &[&DB],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

/// The pooler's sessions in pg_stat_activity: (application_name, state, query).
fn pooler_sessions(a: &mut Client) -> Vec<(String, String, String)> {
    a.query(
        "SELECT application_name, state, query FROM pg_stat_activity
          WHERE datname = $1 AND backend_type = 'client backend' ORDER BY application_name",
        &[&DB],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Six clients with an application_name each, all running a statement at once through
/// pgbouncer, which opens six server connections: what `connection_analysis` shows of them
/// while the clients stay connected, and after they have gone.
///
/// With `add_host` (pgbouncer's `application_name_add_host = 1`), the name pgbouncer sets on
/// the server connection is the client's followed by ` - <client address>:<client port>`.
fn what_the_dba_sees(mode: &str, port: u16, add_host: bool) {
    let mut a = guard_admin();
    setup(&mut a);
    let settings: &[(&str, &str)] = if add_host {
        &[("application_name_add_host", "1")]
    } else {
        &[]
    };
    let b = Pgbouncer::start(port, mode, DB, &[POOLER], settings);
    let clients: Vec<Client> = (0..6)
        .map(|i| b.connect(POOLER, &format!("it_pgb_app_{i}")))
        .collect();
    let barrier = Arc::new(std::sync::Barrier::new(6));
    let clients: Vec<Client> = clients
        .into_iter()
        .map(|mut c| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                c.batch_execute("SELECT pg_sleep(0.5)").unwrap();
                c
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    wait_until(
        &mut a,
        &format!(
            "SELECT count(*) = 6 AND bool_and(state = 'idle') FROM pg_stat_activity WHERE datname = '{DB}'"
        ),
        Duration::from_secs(10),
    );
    let connected = pooler_groups(&mut a);
    let connected_sessions = pooler_sessions(&mut a);
    drop(clients);
    if mode == "session" {
        // each server connection goes back to the pool after its reset query
        wait_until(
            &mut a,
            &format!("SELECT count(*) = 6 AND bool_and(state = 'idle' AND query = 'DISCARD ALL') FROM pg_stat_activity WHERE datname = '{DB}'"),
            Duration::from_secs(10),
        );
    } else {
        thread::sleep(Duration::from_millis(500));
    }
    let gone = pooler_groups(&mut a);
    let gone_sessions = pooler_sessions(&mut a);
    eprintln!(
        "pgbouncer {mode} mode, 6 clients connected: {connected:?}\n  pg_stat_activity: {connected_sessions:?}\n\
         after they disconnected: {gone:?}\n  pg_stat_activity: {gone_sessions:?}"
    );
    let group = |app: &str, n: i64| -> Group {
        (
            POOLER.to_string(),
            app.to_string(),
            "127.0.0.1".to_string(),
            "idle".to_string(),
            n,
        )
    };
    // one server connection per client, each carrying its client's application_name (set by
    // pgbouncer with SET when it links a client to the connection)
    let per_client: Vec<Group> = (0..6)
        .map(|i| group(&format!("it_pgb_app_{i}"), 1))
        .collect();
    if add_host {
        // "it_pgb_app_0 - 127.0.0.1:41234": one group per client connection, the name no
        // longer the application's alone (exclude_applications needs a wildcard: 'it_pgb_app_*')
        assert_eq!(connected.len(), 6, "{connected:?}");
        for (g, want) in connected.iter().zip(&per_client) {
            let suffix = g.1.strip_prefix(&format!("{} - 127.0.0.1:", want.1));
            assert!(
                suffix.is_some_and(|port| port.parse::<u16>().is_ok()),
                "{g:?}"
            );
            assert_eq!((&g.0, &g.2, &g.3, g.4), (&want.0, &want.2, &want.3, 1));
        }
        assert_eq!(gone.len(), 6, "{gone:?}");
        drop(b);
        teardown(&mut a);
        return;
    }
    assert_eq!(connected, per_client);
    if mode == "session" {
        // DISCARD ALL resets application_name to the startup packet's, which pgbouncer sends
        // without one: the pool's idle connections are one group with an empty name
        assert_eq!(gone, vec![group("", 6)]);
        assert!(gone_sessions.iter().all(|(_, _, q)| q == "DISCARD ALL"));
    } else {
        // no reset query in transaction mode (server_reset_query_always = 0): a pooled
        // connection keeps the name of the last client that used it, and its last statement
        assert_eq!(gone, per_client);
        assert!(gone_sessions
            .iter()
            .all(|(_, _, q)| q == "SELECT pg_sleep(0.5)"));
    }
    drop(b);
    teardown(&mut a);
}

#[test]
#[ignore = "PostgreSQL 15 only: ./dev.sh runs it there with --include-ignored (pgbouncer interop does not differ by server version)"]
fn transaction_pool_what_the_dba_sees() {
    what_the_dba_sees("transaction", bouncer_port(4), false);
}

#[test]
#[ignore = "PostgreSQL 15 only: ./dev.sh runs it there with --include-ignored (pgbouncer interop does not differ by server version)"]
fn session_pool_what_the_dba_sees() {
    what_the_dba_sees("session", bouncer_port(5), false);
}

#[test]
#[ignore = "PostgreSQL 15 only: ./dev.sh runs it there with --include-ignored (pgbouncer interop does not differ by server version)"]
fn transaction_pool_with_application_name_add_host_what_the_dba_sees() {
    what_the_dba_sees("transaction", bouncer_port(6), true);
}

#[test]
fn pgbench_output_is_parsed() {
    let ok = Pgbench::parse(
        Some(0),
        "transaction type: <builtin: TPC-B (sort of)>\nnumber of clients: 8\n\
         number of transactions actually processed: 2990\nnumber of failed transactions: 0 (0.000%)\n",
        "",
    );
    assert_eq!((ok.processed, ok.failed, ok.aborted_clients), (2990, 0, 0));
    let aborted = Pgbench::parse(
        Some(2),
        "number of transactions actually processed: 120\nnumber of failed transactions: 3 (2.439%)\n",
        "pgbench: error: client 2 script 0 aborted in command 4 query 0: FATAL:  terminating connection due to administrator command\n\
         pgbench: error: client 5 aborted while establishing connection\n\
         pgbench: fatal: Run was aborted; the above results are incomplete.\n",
    );
    assert_eq!(
        (aborted.processed, aborted.failed, aborted.aborted_clients),
        (120, 3, 2)
    );
    assert_eq!(aborted.errors(), 5);
}
