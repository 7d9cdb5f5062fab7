//! The background worker and the manual terminate_idle() and cancel_statements(), against a
//! real server with real sessions. Run through `./dev.sh test`; one test at a time (they change
//! server settings).

use dbconn_guard_integration::*;
use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

/// Background processes that live as long as the server (autovacuum and parallel workers come
/// and go on their own, so they are left out).
const STABLE_BACKGROUND: &str = "SELECT pid FROM pg_stat_activity WHERE backend_type IN \
    ('checkpointer', 'background writer', 'walwriter', 'autovacuum launcher', \
     'logical replication launcher', 'dbconn_guard', 'dbconn_guard metrics') ORDER BY pid";

#[test]
fn worker_runs_with_its_own_backend_type() {
    let mut a = guard_admin();
    let pid = worker_pid(&mut a);
    let bt: String = a
        .query_one(
            "SELECT backend_type FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap()
        .get(0);
    assert!(bt.starts_with("dbconn_guard"), "{bt}");
    let r = a.query_one("SELECT cycles > 0, last_error IS NULL, policy->>'enabled' FROM dbconn_guard.worker_status()", &[]).unwrap();
    assert!(r.get::<_, bool>(0));
    assert_eq!(r.get::<_, String>(2), "on");
}

#[test]
fn idle_in_transaction_session_is_ended_at_its_deadline() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.idle_in_transaction_timeout", "2s"),
            ("dbconn_guard.idle_timeout", "0"),
        ],
    );
    let (mut s, first) = stale_in_transaction("it_w_iit");
    // a failed statement leaves its session "idle in transaction (aborted)"
    let mut ab = connect_as(APP_ROLE, "it_w_iit_aborted");
    let ab_pid = pid(&mut ab);
    ab.batch_execute("BEGIN").unwrap();
    assert!(ab.batch_execute("SELECT 1/0").is_err());
    wait_gone(&mut a, first, Duration::from_secs(10));
    wait_gone(&mut a, ab_pid, Duration::from_secs(10));
    assert!(
        s.batch_execute("SELECT 1").is_err(),
        "the session was ended"
    );
    for p in [first, ab_pid] {
        let rows = audit(&mut a, p);
        assert_eq!(rows.len(), 1, "{rows:?}");
        let (rule, dry, actor, age) = &rows[0];
        assert_eq!(
            (rule.as_str(), *dry, actor.as_str()),
            ("idle_in_transaction_timeout", false, "worker")
        );
        assert!(
            (2.0..3.0).contains(age),
            "ended {age}s after going idle in transaction (deadline 2s)"
        );
    }
    let state: String = a
        .query_one(
            "SELECT state FROM dbconn_guard.terminations WHERE pid = $1",
            &[&ab_pid],
        )
        .unwrap()
        .get(0);
    assert_eq!(state, "idle in transaction (aborted)");
    reset_system(&mut a);
}

#[test]
fn idle_session_is_ended_and_logged() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.idle_timeout", "2s"),
            ("dbconn_guard.idle_in_transaction_timeout", "0"),
        ],
    );
    let (_s, p) = stale_idle("it_w_idle");
    let (_t, in_xact) = stale_in_transaction("it_w_idle");
    wait_gone(&mut a, p, Duration::from_secs(10));
    let rows = audit(&mut a, p);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "idle_timeout");
    assert!((2.0..3.0).contains(&rows[0].3), "{rows:?}");
    // the audit says what it last ran, and that it held up nobody
    let r = a
        .query_one(
            "SELECT query, held_up, held_up_seconds IS NULL AND held_up_lock IS NULL FROM dbconn_guard.terminations WHERE pid = $1",
            &[&p],
        )
        .unwrap();
    let (query, held_up, no_hold): (Option<String>, Option<i32>, bool) =
        (r.get(0), r.get(1), r.get(2));
    assert_eq!(query.as_deref(), Some("SELECT pg_backend_pid()"));
    assert_eq!((held_up, no_hold), (Some(0), true));
    assert!(
        alive(&mut a, in_xact),
        "idle_in_transaction_timeout = 0 turns that rule off"
    );
    let recent: i64 = a
        .query_one("SELECT count(*) FROM dbconn_guard.recent_terminations() WHERE pid = $1 AND persisted AND actor = 'worker'", &[&p])
        .unwrap()
        .get(0);
    assert_eq!(recent, 1);
    reset_system(&mut a);
}

#[test]
fn protected_sessions_survive() {
    let mut a = guard_admin();
    ensure_role(&mut a, "it_w_app", "");
    ensure_role(&mut a, "it_w_excluded", "");
    if a.query_one(
        "SELECT count(*) = 0 FROM pg_database WHERE datname = 'it_w_db'",
        &[],
    )
    .unwrap()
    .get::<_, bool>(0)
    {
        a.batch_execute("CREATE DATABASE it_w_db").unwrap();
    }
    // a non-client backend in an idle state: a logical-replication walsender of an ordinary
    // (REPLICATION) role, connected and left waiting for its first command
    ensure_role(&mut a, "it_w_repl", "ALTER ROLE it_w_repl REPLICATION");
    let walsender = IdleWalsender::start("it_w_repl", "it_w_walsender");
    wait_until(
        &mut a,
        "SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'it_w_walsender' \
           AND backend_type = 'walsender' AND state = 'idle'",
        Duration::from_secs(10),
    );
    let walsender_pid: i32 = a
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'it_w_walsender'",
            &[],
        )
        .unwrap()
        .get(0);
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.idle_in_transaction_timeout", "1s"),
            ("dbconn_guard.idle_timeout", "1s"),
            (
                "dbconn_guard.exclude_applications",
                "it_w_keep*, \"odd, name\"",
            ),
            ("dbconn_guard.exclude_users", "it_w_excluded"),
            ("dbconn_guard.exclude_databases", "it_w_db"),
        ],
    );
    let background: Vec<i32> = a
        .query(STABLE_BACKGROUND, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        background.len() >= 6,
        "checkpointer, background writer, walwriter, autovacuum launcher, the worker, the metrics endpoint"
    );
    let (_su, superuser) = idle_in_transaction("it_w_superuser", "SELECT 1");
    let (_e1, excluded_app) = idle_in_transaction_as("it_w_app", "it_w_keep_me");
    let (_e2, quoted_app) = idle_in_transaction_as("it_w_app", "odd, name");
    let (_e3, excluded_user) = idle_in_transaction_as("it_w_excluded", "it_w_plain");
    let mut other_db = connect_to("it_w_app", "it_w_db", "it_w_plain");
    let other_db_pid = pid(&mut other_db);
    other_db.batch_execute("BEGIN; SELECT 1").unwrap();
    let (active, active_h) = in_background("it_w_active", "", "BEGIN; SELECT pg_sleep(3); COMMIT");
    let (_c, control) = idle_in_transaction_as("it_w_app", "it_w_plain");
    wait_gone(&mut a, control, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(1500));
    for (what, p) in [
        ("superuser", superuser),
        ("excluded application", excluded_app),
        ("quoted excluded application", quoted_app),
        ("excluded user", excluded_user),
        ("excluded database", other_db_pid),
        ("active query", active),
        ("idle walsender", walsender_pid),
    ] {
        assert!(alive(&mut a, p), "{what} (pid {p}) was ended");
        assert!(audit(&mut a, p).is_empty(), "{what} has an audit row");
    }
    active_h.join().unwrap().unwrap();
    drop(walsender);
    // no background process (checkpointer, autovacuum, walwriter, the worker itself, ...) was
    // touched while the worker was ending sessions around them
    let after: Vec<i32> = a
        .query(STABLE_BACKGROUND, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(after, background, "background processes survive");
    let audited_background: i64 = a
        .query_one(
            "SELECT count(*) FROM dbconn_guard.terminations WHERE pid = ANY($1)",
            &[&background],
        )
        .unwrap()
        .get(0);
    assert_eq!(audited_background, 0);

    // include_applications narrows the scope
    alter_system(
        &mut a,
        &[("dbconn_guard.include_applications", "it_w_only*")],
    );
    let (_n, not_included) = idle_in_transaction_as("it_w_app", "it_w_plain");
    let (_i, included) = idle_in_transaction_as("it_w_app", "it_w_only_this");
    wait_gone(&mut a, included, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(500));
    assert!(alive(&mut a, not_included));

    // superusers only when allowed
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.include_applications", ""),
            ("dbconn_guard.terminate_superusers", "on"),
        ],
    );
    wait_gone(&mut a, superuser, Duration::from_secs(10));
    reset_system(&mut a);
}

#[test]
fn dry_run_records_once_and_ends_nothing() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.idle_in_transaction_timeout", "1s"),
            ("dbconn_guard.dry_run", "on"),
        ],
    );
    let (mut s, p) = stale_in_transaction("it_w_dry");
    wait_until(
        &mut a,
        &format!("SELECT count(*) = 1 FROM dbconn_guard.terminations WHERE pid = {p}"),
        Duration::from_secs(10),
    );
    // several more checks: still alive, and recorded once
    wait_for_checks(&mut a, 3, Duration::from_secs(15));
    assert!(alive(&mut a, p));
    s.batch_execute("SELECT 1").unwrap();
    let rows = audit(&mut a, p);
    assert_eq!(rows.len(), 1, "recorded once, not every cycle: {rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1),
        ("idle_in_transaction_timeout", true)
    );
    // back to real: the same (now renewed) session is ended
    alter_system(&mut a, &[("dbconn_guard.dry_run", "off")]);
    wait_gone(&mut a, p, Duration::from_secs(10));
    reset_system(&mut a);
}

#[test]
fn reload_changes_behaviour_without_restart_and_bad_values_are_refused() {
    let mut a = guard_admin();
    let before = worker_pid(&mut a);
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.enabled", "off"),
            ("dbconn_guard.idle_in_transaction_timeout", "1s"),
        ],
    );
    let (_s, p) = stale_in_transaction("it_w_reload");
    thread::sleep(Duration::from_millis(2500));
    assert!(alive(&mut a, p), "enabled = off ends nothing");
    let t0 = Instant::now();
    alter_system(&mut a, &[("dbconn_guard.enabled", "on")]);
    wait_gone(&mut a, p, Duration::from_secs(5));
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "picked up the reload in {:?}",
        t0.elapsed()
    );
    assert_eq!(worker_pid(&mut a), before, "no restart needed");

    for (bad, why) in [
        (
            "ALTER SYSTEM SET dbconn_guard.idle_timeout = '-1s'",
            "outside the valid range",
        ),
        (
            "ALTER SYSTEM SET dbconn_guard.naptime = '10ms'",
            "outside the valid range",
        ),
        (
            "ALTER SYSTEM SET dbconn_guard.max_terminations_per_cycle = 0",
            "outside the valid range",
        ),
        (
            "ALTER SYSTEM SET dbconn_guard.min_utilization_pct = 101",
            "outside the valid range",
        ),
        (
            "ALTER SYSTEM SET dbconn_guard.exclude_applications = 'a,,b'",
            "empty name in list",
        ),
        (
            "ALTER SYSTEM SET dbconn_guard.exclude_users = '\"unterminated'",
            "unterminated quoted name",
        ),
        (
            "ALTER SYSTEM SET dbconn_guard.dry_run = 'maybe'",
            "requires a Boolean value",
        ),
        (
            "SET dbconn_guard.database = 'other'",
            "cannot be changed without restarting",
        ),
        (
            "SET dbconn_guard.idle_timeout = '1min'",
            "cannot be changed now",
        ),
    ] {
        let err = a.batch_execute(bad).expect_err(bad);
        let db = err.as_db_error().expect("a server error");
        let text = format!("{} {}", db.message(), db.detail().unwrap_or(""));
        assert!(text.contains(why), "{bad}: {text}");
    }
    let policy: String = a
        .query_one(
            "SELECT policy->>'exclude_applications' FROM dbconn_guard.worker_status()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(policy, "", "the worker kept the last good value");
    reset_system(&mut a);
}

#[test]
fn worker_survives_an_error_and_records_before_it_signals() {
    let mut a = guard_admin();
    let before = worker_pid(&mut a);
    // make every audit insert fail: the worker must not end a session it cannot record
    a.batch_execute(
        "ALTER TABLE dbconn_guard.terminations ADD CONSTRAINT it_fail CHECK (pid < 0) NOT VALID",
    )
    .unwrap();
    alter_system(
        &mut a,
        &[("dbconn_guard.idle_in_transaction_timeout", "1s")],
    );
    let (_s, p) = stale_in_transaction("it_w_err");
    wait_until(
        &mut a,
        "SELECT coalesce(last_error LIKE '%it_fail%', false) FROM dbconn_guard.worker_status()",
        Duration::from_secs(10),
    );
    assert!(alive(&mut a, p), "not ended without an audit row");
    assert_eq!(
        worker_pid(&mut a),
        before,
        "the error did not end the worker"
    );
    a.batch_execute("ALTER TABLE dbconn_guard.terminations DROP CONSTRAINT it_fail")
        .unwrap();
    // retried every naptime (10s by default): the session goes once the table accepts rows
    wait_gone(&mut a, p, Duration::from_secs(15));
    assert_eq!(audit(&mut a, p).len(), 1);
    reset_system(&mut a);
}

#[test]
fn worker_is_restarted_after_being_terminated() {
    let mut a = guard_admin();
    let before = worker_pid(&mut a);
    a.execute("SELECT pg_terminate_backend($1)", &[&before])
        .unwrap();
    wait_until(
        &mut a,
        &format!("SELECT running AND pid <> {before} FROM dbconn_guard.worker_status()"),
        Duration::from_secs(30),
    );
    // and it works again
    alter_system(
        &mut a,
        &[("dbconn_guard.idle_in_transaction_timeout", "1s")],
    );
    let (_s, p) = stale_in_transaction("it_w_restart");
    wait_gone(&mut a, p, Duration::from_secs(10));
    reset_system(&mut a);
}

#[test]
fn max_terminations_per_cycle_caps_a_burst() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.enabled", "off"),
            ("dbconn_guard.idle_in_transaction_timeout", "1s"),
            ("dbconn_guard.max_terminations_per_cycle", "10"),
        ],
    );
    let sessions: Vec<_> = (0..50)
        .map(|_| stale_in_transaction("it_w_burst"))
        .collect();
    let pids: Vec<i32> = sessions.iter().map(|(_, p)| *p).collect();
    thread::sleep(Duration::from_millis(1200));
    alter_system(&mut a, &[("dbconn_guard.enabled", "on")]);
    for p in &pids {
        wait_gone(&mut a, *p, Duration::from_secs(20));
    }
    let per_cycle: BTreeMap<i64, i64> = a
        .query(
            "SELECT worker_cycle, count(*) FROM dbconn_guard.terminations WHERE pid = ANY($1) GROUP BY worker_cycle",
            &[&pids],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(per_cycle.values().sum::<i64>(), 50);
    assert!(per_cycle.values().all(|&n| n <= 10), "{per_cycle:?}");
    assert!(per_cycle.len() >= 5, "{per_cycle:?}");
    drop(sessions);
    reset_system(&mut a);
}

#[test]
fn waits_for_the_extension_and_starts_within_a_naptime() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.naptime", "1s"),
            ("dbconn_guard.idle_in_transaction_timeout", "1s"),
        ],
    );
    a.batch_execute("DROP EXTENSION dbconn_guard").unwrap();
    let (_s, p) = stale_in_transaction("it_w_noext");
    thread::sleep(Duration::from_millis(2500));
    assert!(
        alive(&mut a, p),
        "nothing is ended while the extension is absent"
    );
    a.batch_execute("CREATE EXTENSION dbconn_guard").unwrap();
    let t0 = Instant::now();
    wait_gone(&mut a, p, Duration::from_secs(5));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    reset_system(&mut a);
}

#[test]
fn leak_suspects_get_a_trend_and_a_warning_once() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.sample_interval", "1s"),
            ("dbconn_guard.leak_trend_samples", "3"),
        ],
    );
    // the trend is the history's: one more idle session at each sample
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(stale_idle("it_w_trend"));
        let n = sessions.len();
        wait_until(
            &mut a,
            &format!(
                "SELECT coalesce((SELECT idle = {n} FROM dbconn_guard.history_by_group \
                   WHERE application_name = 'it_w_trend' ORDER BY time DESC LIMIT 1), false)"
            ),
            Duration::from_secs(5),
        );
    }
    let r = a
        .query_one("SELECT trend, reason, idle_count FROM dbconn_guard.leak_suspects WHERE application_name = 'it_w_trend'", &[])
        .unwrap();
    assert_eq!(
        (
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2)
        ),
        ("growing".into(), "growing".into(), 4)
    );
    let counted: i64 = a
        .query_one(
            "SELECT leak_suspect_groups FROM dbconn_guard.history ORDER BY time DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(counted >= 1, "the sample counts the suspect");
    // a shrinking group is no suspect (its sessions are young)
    sessions.truncate(1);
    wait_until(
        &mut a,
        "SELECT coalesce((SELECT idle = 1 FROM dbconn_guard.history_by_group \
           WHERE application_name = 'it_w_trend' ORDER BY time DESC LIMIT 1), false)",
        Duration::from_secs(5),
    );
    let n: i64 = a
        .query_one(
            "SELECT count(*) FROM dbconn_guard.leak_suspects WHERE application_name = 'it_w_trend'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    if let Ok(log) = std::env::var("DBCONN_GUARD_TEST_LOG") {
        let text = std::fs::read_to_string(log).unwrap();
        let warnings = text
            .lines()
            .filter(|l| {
                l.contains("connection leak suspect") && l.contains("application=\"it_w_trend\"")
            })
            .count();
        assert_eq!(warnings, 1, "logged once");
    }
    reset_system(&mut a);
}

#[test]
fn terminate_idle_follows_the_same_protections() {
    let mut a = guard_admin();
    ensure_role(&mut a, "it_w_app", "");
    ensure_role(&mut a, "it_w_dba", "GRANT dbconn_guard_admin TO it_w_dba");
    alter_system(
        &mut a,
        &[("dbconn_guard.exclude_applications", "it_m_keep")],
    );
    let (_s1, plain) = idle_in_transaction_as("it_w_app", "it_m_app");
    let (_s2, kept) = idle_in_transaction_as("it_w_app", "it_m_keep");
    let (_s3, su) = idle_in_transaction("it_m_app", "SELECT 1");
    let (_s4, plain_idle) = {
        let mut c = connect_as("it_w_app", "it_m_app");
        let p = pid(&mut c);
        (c, p)
    };
    thread::sleep(Duration::from_millis(300));
    let mut dba = connect_as("it_w_dba", "it_m_dba");

    // bad arguments: a clear error with its SQLSTATE and a hint, nothing ended
    for (sql, why, code) in [
        (
            "SELECT * FROM dbconn_guard.terminate_idle('-1 minute')",
            "must not be negative",
            "22023",
        ),
        (
            "SELECT * FROM dbconn_guard.terminate_idle('0', ARRAY['active'])",
            "unknown state \"active\"",
            "22023",
        ),
        (
            "SELECT * FROM dbconn_guard.terminate_idle('0', ARRAY[]::text[])",
            "must not be empty",
            "22023",
        ),
        (
            "SELECT * FROM dbconn_guard.terminate_idle(NULL)",
            "must not be NULL",
            "22004",
        ),
    ] {
        let err = dba.query(sql, &[]).expect_err(sql);
        let d = err.as_db_error().expect("a server error");
        assert!(d.message().contains(why), "{sql}: {}", d.message());
        assert_eq!(d.code().code(), code, "{sql}");
        assert!(d.hint().is_some_and(|h| h.len() > 10), "{sql}: no hint");
    }
    assert!(alive(&mut a, plain));

    // dry run reports, ends nothing
    let rows: BTreeMap<i32, String> = dba
        .query("SELECT pid, action FROM dbconn_guard.terminate_idle('0', application_name => 'it_m_app', dry_run => true)", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows.get(&plain).map(String::as_str),
        Some("dry run: would terminate")
    );
    assert_eq!(
        rows.get(&plain_idle).map(String::as_str),
        Some("dry run: would terminate")
    );
    assert!(
        rows.get(&su)
            .is_some_and(|a| a.starts_with("skipped: protected (superuser")),
        "{rows:?}"
    );
    assert!(!rows.contains_key(&kept), "other application filtered out");
    assert!(alive(&mut a, plain));

    // only idle in transaction, for real
    let rows: BTreeMap<i32, String> = dba
        .query("SELECT pid, action FROM dbconn_guard.terminate_idle('0', ARRAY['idle in transaction'])", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows.get(&plain).map(String::as_str), Some("terminated"));
    assert!(
        rows.get(&kept)
            .is_some_and(|a| a.contains("exclude_applications")),
        "{rows:?}"
    );
    assert!(!rows.contains_key(&plain_idle), "state idle not asked for");
    wait_gone(&mut a, plain, Duration::from_secs(5));
    for p in [kept, su, plain_idle] {
        assert!(alive(&mut a, p));
    }
    let (rule, _, actor, _) = audit(&mut a, plain).remove(0);
    assert_eq!(
        (rule.as_str(), actor.as_str()),
        ("manual", "manual:it_w_dba")
    );

    // superuser sessions: even with terminate_superusers, only a superuser may end them
    alter_system(&mut a, &[("dbconn_guard.terminate_superusers", "on")]);
    let mut dba = connect_as("it_w_dba", "it_m_dba");
    let action: String = dba
        .query_one("SELECT action FROM dbconn_guard.terminate_idle('0', application_name => 'it_m_app') WHERE pid = $1", &[&su])
        .unwrap()
        .get(0);
    assert!(action.contains("only a superuser"), "{action}");
    assert!(alive(&mut a, su));
    reset_system(&mut a);
}

#[test]
fn terminate_idle_ends_only_the_group_its_filters_name() {
    let mut a = guard_admin();
    ensure_role(&mut a, "it_w_app", "");
    ensure_role(&mut a, "it_w_other", "");
    ensure_role(&mut a, "it_w_dba", "GRANT dbconn_guard_admin TO it_w_dba");
    a.batch_execute("DROP DATABASE IF EXISTS it_w_filter_db")
        .unwrap();
    a.batch_execute("CREATE DATABASE it_w_filter_db").unwrap();
    // the culprit: application it_f_pool of it_w_app in postgres, over TCP; bystanders: the
    // same application of another role, of the same role in another database, and another
    // application of the same role
    let open = |user: &str, db: &str, app: &str| {
        let mut c = config_db(user, db, app).connect(postgres::NoTls).unwrap();
        let p = pid(&mut c);
        (c, p)
    };
    let (_c1, culprit) = open("it_w_app", "postgres", "it_f_pool");
    let (_c2, other_role) = open("it_w_other", "postgres", "it_f_pool");
    let (_c3, other_db) = open("it_w_app", "it_w_filter_db", "it_f_pool");
    let (_c4, other_app) = open("it_w_app", "postgres", "it_f_web");
    thread::sleep(Duration::from_millis(300));
    let mut dba = connect_as("it_w_dba", "it_m_dba");
    // a client address that is no address: refused, nothing ended
    let err = dba
        .query(
            "SELECT * FROM dbconn_guard.terminate_idle('0', client_addr => 'db.example.com')",
            &[],
        )
        .expect_err("a host name");
    let d = err.as_db_error().expect("a server error");
    assert_eq!(d.code().code(), "22023");
    assert!(d.message().contains("not an IP address"), "{}", d.message());
    assert!(d.hint().is_some_and(|h| h.contains("'local'")));
    // local: these sessions come over TCP, so none
    let n: i64 = dba
        .query_one(
            "SELECT count(*) FROM dbconn_guard.terminate_idle('0', ARRAY['idle'], application_name => 'it_f_pool', client_addr => 'local', dry_run => true)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // what diagnose() pastes: the group by application, role, client and database
    let ended: Vec<i32> = dba
        .query(
            "SELECT pid FROM dbconn_guard.terminate_idle('0', ARRAY['idle'], application_name => 'it_f_pool', \
               usename => 'it_w_app', client_addr => '127.0.0.1', datname => 'postgres') WHERE action = 'terminated'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ended, vec![culprit]);
    wait_gone(&mut a, culprit, Duration::from_secs(5));
    for p in [other_role, other_db, other_app] {
        assert!(alive(&mut a, p), "a bystander was ended");
    }
    drop((_c1, _c2, _c3, _c4));
    a.batch_execute("DROP DATABASE IF EXISTS it_w_filter_db WITH (FORCE)")
        .unwrap();
}

#[test]
fn cancel_statements_cancels_only_the_group_its_filters_name_and_keeps_the_sessions() {
    let mut a = guard_admin();
    ensure_role(&mut a, "it_w_app", "");
    ensure_role(&mut a, "it_w_dba", "GRANT dbconn_guard_admin TO it_w_dba");
    alter_system(
        &mut a,
        &[("dbconn_guard.exclude_applications", "it_c_keep")],
    );
    // the culprit: three long statements of one application; bystanders: the same statement
    // of another application, of an excluded one, and the culprit's idle session
    let slow = "SELECT pg_sleep(60)";
    let culprit: Vec<(i32, Finished)> = (0..3)
        .map(|_| in_background_as("it_w_app", "it_c_report", slow))
        .collect();
    let (other_app, other_h) = in_background_as("it_w_app", "it_c_web", slow);
    let (kept, kept_h) = in_background_as("it_w_app", "it_c_keep", slow);
    let (_idle, idle_pid) = stale_idle("it_c_report");
    let pids: Vec<i32> = culprit.iter().map(|(p, _)| *p).collect();
    wait_until(
        &mut a,
        &format!(
            "SELECT count(*) = 5 FROM pg_stat_activity WHERE state = 'active' AND query = '{slow}'"
        ),
        Duration::from_secs(10),
    );
    thread::sleep(Duration::from_millis(1100));
    let mut dba = connect_as("it_w_dba", "it_c_dba");

    // bad arguments: a clear error, nothing cancelled
    for (sql, why, code) in [
        (
            "SELECT * FROM dbconn_guard.cancel_statements('-1 minute')",
            "must not be negative",
            "22023",
        ),
        (
            "SELECT * FROM dbconn_guard.cancel_statements(NULL)",
            "must not be NULL",
            "22004",
        ),
        (
            "SELECT * FROM dbconn_guard.cancel_statements('0', client_addr => 'db.example.com')",
            "not an IP address",
            "22023",
        ),
    ] {
        let err = dba.query(sql, &[]).expect_err(sql);
        let d = err.as_db_error().expect("a server error");
        assert!(d.message().contains(why), "{sql}: {}", d.message());
        assert!(
            d.message().starts_with("dbconn_guard.cancel_statements"),
            "{}",
            d.message()
        );
        assert_eq!(d.code().code(), code, "{sql}");
        assert!(d.hint().is_some_and(|h| h.len() > 10), "{sql}: no hint");
    }
    // a dry run records and cancels nothing
    let rows: BTreeMap<i32, String> = dba
        .query(
            "SELECT pid, action FROM dbconn_guard.cancel_statements('1 second', application_name => 'it_c_report', dry_run => true)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.values().all(|v| v == "dry run: would cancel"),
        "{rows:?}"
    );
    // statements younger than older_than are not touched
    let young: i64 = dba
        .query_one(
            "SELECT count(*) FROM dbconn_guard.cancel_statements('1 hour', application_name => 'it_c_report')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(young, 0);
    let ended_before: i64 = a
        .query_one(
            "SELECT terminations_total FROM dbconn_guard.worker_status()",
            &[],
        )
        .unwrap()
        .get(0);
    // the paste: every statement of the group, in one call
    let rows: BTreeMap<i32, String> = dba
        .query(
            "SELECT pid, action FROM dbconn_guard.cancel_statements('1 second', usename => 'it_w_app')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for p in &pids {
        assert_eq!(
            rows.get(p).map(String::as_str),
            Some("cancelled"),
            "{rows:?}"
        );
    }
    assert_eq!(rows.get(&other_app).map(String::as_str), Some("cancelled"));
    assert!(
        rows.get(&kept)
            .is_some_and(|v| v.starts_with("skipped: protected")),
        "{rows:?}"
    );
    assert!(
        !rows.contains_key(&idle_pid),
        "an idle session has no statement: {rows:?}"
    );
    // the statements failed with a cancel, and the sessions stayed
    for (p, h) in culprit.into_iter().chain([(other_app, other_h)]) {
        let (r, mut c) = h.join().unwrap();
        let e = r.expect_err("cancelled");
        assert_eq!(
            e.as_db_error().map(|d| d.code().code()),
            Some("57014"),
            "{e}"
        );
        assert!(
            c.is_valid(Duration::from_secs(5)).is_ok(),
            "pid {p}: the session stayed"
        );
        // recorded before it was signalled, as a cancel by the DBA
        let rec = audit(&mut a, p);
        assert_eq!(
            rec.iter()
                .filter(|r| r.0 == "manual_cancel" && !r.1 && r.2 == "manual:it_w_dba")
                .count(),
            1,
            "{rec:?}"
        );
    }
    // a cancel ends no session: the worker's count of ended sessions did not move
    let ended_after: i64 = a
        .query_one(
            "SELECT terminations_total FROM dbconn_guard.worker_status()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ended_after, ended_before);
    // the excluded application's statement runs on
    assert!(alive(&mut a, kept));
    a.query_one("SELECT pg_cancel_backend($1)", &[&kept])
        .unwrap();
    let _ = kept_h.join();
    assert!(alive(&mut a, idle_pid));
    // and the ring of recent actions has them as cancels, besides their dry runs
    let n: i64 = a
        .query_one(
            "SELECT count(*) FROM dbconn_guard.recent_terminations() WHERE rule = 'manual_cancel' AND NOT dry_run AND pid = ANY($1)",
            &[&pids],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    // a plain role may not call it
    ensure_role(&mut a, "it_plain", "");
    let mut plain = connect_as("it_plain", "it_plain_app");
    let err = plain
        .query("SELECT * FROM dbconn_guard.cancel_statements('0')", &[])
        .expect_err("granted to dbconn_guard_admin only");
    assert!(
        db_error(&err).contains("permission denied"),
        "{}",
        db_error(&err)
    );
    reset_system(&mut a);
}

#[test]
fn unprivileged_role_cannot_end_anyone() {
    let mut a = guard_admin();
    ensure_role(&mut a, "it_plain", "");
    let (_s, victim) = idle_in_transaction("it_w_victim", "SELECT 1");
    let mut plain = connect_as("it_plain", "it_plain_app");
    for sql in [
        "SELECT * FROM dbconn_guard.terminate_idle('0')",
        "SELECT * FROM dbconn_guard.recent_terminations()",
        "INSERT INTO dbconn_guard.terminations (pid, state, state_age_seconds, rule, dry_run, actor) VALUES (1, 'idle', 0, 'manual', false, 'x')",
    ] {
        let err = plain.query(sql, &[]).expect_err(sql);
        let msg = err.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
        assert!(msg.contains("permission denied"), "{sql}: {msg}");
    }
    // reading the views needs nothing special
    plain
        .query("SELECT * FROM dbconn_guard.worker_status()", &[])
        .unwrap();
    plain
        .query("SELECT * FROM dbconn_guard.connection_analysis", &[])
        .unwrap();
    assert!(alive(&mut a, victim));
}

#[test]
fn audit_rows_past_their_retention_are_purged() {
    let mut a = guard_admin();
    a.batch_execute(
        "INSERT INTO dbconn_guard.terminations (terminated_at, pid, state, state_age_seconds, rule, dry_run, actor) \
         VALUES (now() - interval '3 days', -1, 'idle', 1, 'manual', true, 'it_purge_old'), \
                (now() - interval '1 hour', -2, 'idle', 1, 'manual', true, 'it_purge_recent')",
    )
    .unwrap();
    // a reload makes the worker purge at its next check (then hourly)
    alter_system(&mut a, &[("dbconn_guard.audit_retention", "2d")]);
    wait_until(
        &mut a,
        "SELECT count(*) = 0 FROM dbconn_guard.terminations WHERE actor = 'it_purge_old'",
        Duration::from_secs(15),
    );
    let recent: i64 = a
        .query_one(
            "SELECT count(*) FROM dbconn_guard.terminations WHERE actor = 'it_purge_recent'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(recent, 1, "rows within the retention stay");
    a.batch_execute("DELETE FROM dbconn_guard.terminations WHERE actor = 'it_purge_recent'")
        .unwrap();
    reset_system(&mut a);
}

/// A `psql` session in logical-replication mode (`replication=database`), left idle: a
/// walsender, not a client backend. Killed when dropped.
struct IdleWalsender(std::process::Child);

impl IdleWalsender {
    fn start(user: &str, app: &str) -> IdleWalsender {
        let bin = std::path::PathBuf::from(std::env::var("DBCONN_GUARD_PG_BIN").unwrap());
        let conninfo = format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres replication=database application_name={app}",
            test_port()
        );
        let child = std::process::Command::new(bin.join("psql"))
            .args(["-X", "-q", &conninfo])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        IdleWalsender(child)
    }
}

impl Drop for IdleWalsender {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
