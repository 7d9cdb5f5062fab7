//! The root-blocker rule (`dbconn_guard.blocker_timeout`, `blocker_min_waiters`,
//! `cancel_active_blockers`), with real sessions and real lock waits: the idle root of a pile-up
//! is ended once its waits are old, and only the root; its waiters go on; a protected root is
//! kept; fewer waiters than asked for keep it; an active root is only ever cancelled, and only
//! when asked, once per statement, and ended when it still holds its pile-up
//! `blocker_terminate_after` past its first cancel; a root whose waiters gave up between the
//! record and the signal is spared at the last look; a dry run records a root once. And the
//! lock-queue rule (`lock_queue_timeout`): a queued ALTER TABLE is cancelled, not its root.

use dbconn_guard_integration::*;
use std::thread;
use std::time::{Duration, Instant};

/// A table the application role may update, with rows 1..=9.
fn table(a: &mut postgres::Client) {
    a.batch_execute(&format!(
        "DROP TABLE IF EXISTS it_b_t; CREATE TABLE it_b_t (id int PRIMARY KEY, v int NOT NULL DEFAULT 0);
         INSERT INTO it_b_t (id) SELECT g FROM generate_series(1, 9) g;
         GRANT SELECT, UPDATE ON it_b_t TO {APP_ROLE}"
    ))
    .unwrap();
}

fn update(id: i32) -> String {
    format!("UPDATE it_b_t SET v = v + 1 WHERE id = {id}")
}

/// A session of the application role that waits on row `id` in the background.
fn waiter(app: &str, id: i32) -> (i32, Finished) {
    in_background_as(APP_ROLE, app, &update(id))
}

/// Waits until `pid` reports the wait event `event` (`PgSleep`, `SyncRep`, ...).
fn wait_for_event(a: &mut postgres::Client, pid: i32, event: &str) {
    wait_until(
        a,
        &format!(
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = {pid} AND wait_event = '{event}'"
        ),
        Duration::from_secs(10),
    );
}

fn finished_ok(h: Finished, what: &str) {
    let (r, _c) = h.join().unwrap();
    r.unwrap_or_else(|e| panic!("{what}: {}", db_error(&e)));
}

#[test]
fn the_idle_root_of_a_pile_up_is_ended_once_its_waits_are_old_and_only_the_root() {
    let mut a = guard_admin();
    table(&mut a);
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.blocker_timeout", "2s"),
            ("compute_query_id", "on"),
        ],
    );
    // the root: idle in the transaction that holds row 1
    let (mut root_c, root) = idle_in_transaction_as(APP_ROLE, "it_b_root");
    root_c.batch_execute(&update(1)).unwrap();
    // idle in a transaction as old, blocking nobody: not this rule's business
    let (_by_c, bystander) = stale_in_transaction("it_b_bystander");
    // a superuser root: protected
    let (mut su_c, su_root) = idle_in_transaction("it_b_su_root", "SELECT 1");
    su_c.batch_execute(&update(2)).unwrap();

    let (w1, h1) = waiter("it_b_w1", 1);
    let (w2, h2) = waiter("it_b_w2", 1); // queued behind w1: held up by the root too
    let (w3, h3) = waiter("it_b_w3", 2);
    wait_for_lock_waits(&mut a, &[w1, w2, w3]);
    let seen = Instant::now();
    wait_gone(&mut a, root, Duration::from_secs(15));
    assert!(
        seen.elapsed() >= Duration::from_millis(1500),
        "ended {:?} after its waits began: before blocker_timeout",
        seen.elapsed()
    );
    finished_ok(h1, "the first waiter");
    finished_ok(h2, "the second waiter");
    let rows = audit(&mut a, root);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "blocker_timeout");
    assert!(!rows[0].1, "not a dry run");
    assert_eq!(rows[0].2, "worker");
    // the audit says what the root last ran and what it held up: two sessions (the second
    // behind the first), for as long as the rule waited, on the first's row lock
    let r = a
        .query_one(
            "SELECT query, query_id, held_up, held_up_seconds, held_up_lock FROM dbconn_guard.terminations WHERE pid = $1",
            &[&root],
        )
        .unwrap();
    let query: Option<String> = r.get(0);
    let query_id: Option<i64> = r.get(1);
    let held_up: Option<i32> = r.get(2);
    let held_for: Option<f64> = r.get(3);
    let lock: Option<String> = r.get(4);
    assert_eq!(query.as_deref(), Some(update(1).as_str()));
    assert!(query_id.is_some(), "compute_query_id is on");
    assert_eq!(held_up, Some(2));
    assert!(
        held_for.is_some_and(|s| (1.5..10.0).contains(&s)),
        "{held_for:?}"
    );
    assert_eq!(lock.as_deref(), Some("ShareLock on transactionid"));
    // which statement keeps causing this: by its query_id, over the window and per hour
    let (acted_on, held): (i64, i64) = {
        let r = a
            .query_one(
                "SELECT acted_on, sessions_held_up FROM dbconn_guard.top_blockers_between(now() - interval '1 hour') WHERE query_id = $1",
                &[&query_id],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(acted_on >= 1 && held >= 2, "{acted_on} {held}");
    let by_hour: i64 = a
        .query_one(
            "SELECT coalesce(sum(sessions_held_up), 0)::int8 FROM dbconn_guard.top_blockers WHERE query_id = $1 AND hour >= date_trunc('hour', now() - interval '1 hour')",
            &[&query_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(by_hour, held);
    // the LOG line says how many it held up
    let log = std::fs::read_to_string(std::env::var("DBCONN_GUARD_TEST_LOG").unwrap()).unwrap();
    assert!(
        log.contains(&format!("terminated pid {root} (idle in transaction for"))
            && log
                .contains("rule blocker_timeout, the root of a lock pile-up holding up 2 sessions"),
        "the LOG line of pid {root}"
    );
    thread::sleep(Duration::from_millis(1000));
    assert!(alive(&mut a, bystander), "blocking nobody: kept");
    assert!(alive(&mut a, su_root), "a superuser root: kept");
    assert!(alive(&mut a, w3), "still waiting on the superuser");
    assert!(audit(&mut a, su_root).is_empty());
    assert!(audit(&mut a, bystander).is_empty());
    su_c.batch_execute("ROLLBACK").unwrap();
    finished_ok(h3, "the superuser's waiter");
    reset_system(&mut a);
}

#[test]
fn fewer_waiters_than_blocker_min_waiters_keep_the_root() {
    let mut a = guard_admin();
    table(&mut a);
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.blocker_timeout", "1s"),
            ("dbconn_guard.blocker_min_waiters", "2"),
        ],
    );
    let (mut root_c, root) = idle_in_transaction_as(APP_ROLE, "it_b_root2");
    root_c.batch_execute(&update(3)).unwrap();
    let (w1, h1) = waiter("it_b_w1", 3);
    wait_for_lock_waits(&mut a, &[w1]);
    thread::sleep(Duration::from_millis(2500));
    assert!(alive(&mut a, root), "one waiter of the two asked for");
    let (w2, h2) = waiter("it_b_w2", 3);
    wait_for_lock_waits(&mut a, &[w2]);
    let seen = Instant::now();
    wait_gone(&mut a, root, Duration::from_secs(10));
    assert!(
        seen.elapsed() >= Duration::from_millis(700),
        "the second wait had not lasted blocker_timeout: {:?}",
        seen.elapsed()
    );
    finished_ok(h1, "waiter 1");
    finished_ok(h2, "waiter 2");
    assert_eq!(audit(&mut a, root)[0].0, "blocker_timeout");
    // a bad value is refused, the old one kept
    let e = a
        .batch_execute("ALTER SYSTEM SET dbconn_guard.blocker_min_waiters = 0")
        .expect_err("0 waiters");
    assert!(
        db_error(&e).contains("blocker_min_waiters"),
        "{}",
        db_error(&e)
    );
    let e = a
        .batch_execute("ALTER SYSTEM SET dbconn_guard.blocker_timeout = '200ms'")
        .expect_err("too short");
    assert!(db_error(&e).contains("at least 1s"), "{}", db_error(&e));
    let shown: String = a
        .query_one(
            "SELECT policy->>'blocker_min_waiters' FROM dbconn_guard.worker_status()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(shown, "2");
    reset_system(&mut a);
}

#[test]
fn an_active_root_is_cancelled_only_when_asked_and_never_ended() {
    let mut a = guard_admin();
    table(&mut a);
    alter_system(&mut a, &[("dbconn_guard.blocker_timeout", "1s")]);
    // one statement, outside a transaction block, that holds row 4 while it runs
    let (root, hr) = in_background_as(
        APP_ROLE,
        "it_b_active_root",
        "WITH u AS (UPDATE it_b_t SET v = v + 1 WHERE id = 4 RETURNING 1) SELECT pg_sleep(60) FROM u",
    );
    wait_for_event(&mut a, root, "PgSleep");
    let (w, hw) = waiter("it_b_w", 4);
    wait_for_lock_waits(&mut a, &[w]);
    thread::sleep(Duration::from_millis(2500));
    assert!(alive(&mut a, root), "cancel_active_blockers is off");
    assert!(audit(&mut a, root).is_empty());
    alter_system(&mut a, &[("dbconn_guard.cancel_active_blockers", "on")]);
    let (r, mut root_c) = hr.join().unwrap();
    let e = r.expect_err("its statement is cancelled");
    assert!(
        db_error(&e).contains("canceling statement due to user request"),
        "{}",
        db_error(&e)
    );
    finished_ok(hw, "the waiter");
    // the session itself goes on
    assert!(alive(&mut a, root));
    root_c.batch_execute("SELECT 1").unwrap();
    let rows = audit(&mut a, root);
    assert_eq!(rows.len(), 1, "once: {rows:?}");
    assert_eq!(rows[0].0, "blocker_cancel");
    let log = std::fs::read_to_string(std::env::var("DBCONN_GUARD_TEST_LOG").unwrap()).unwrap();
    assert!(
        log.contains(&format!(
            "cancelled the statement of pid {root} (active for"
        )),
        "the LOG line says cancelled"
    );
    reset_system(&mut a);
}

#[test]
fn a_root_cancelled_inside_its_transaction_releases_its_locks_and_stays() {
    let mut a = guard_admin();
    table(&mut a);
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.blocker_timeout", "1s"),
            ("dbconn_guard.cancel_active_blockers", "on"),
        ],
    );
    // the cancelled statement aborts its transaction, which releases its locks at once
    let (root, hr) = in_background_as(
        APP_ROLE,
        "it_b_xact_root",
        &format!("BEGIN; {}; SELECT pg_sleep(60)", update(5)),
    );
    wait_for_event(&mut a, root, "PgSleep");
    let (w, hw) = waiter("it_b_w", 5);
    wait_for_lock_waits(&mut a, &[w]);
    finished_ok(hw, "the waiter");
    let (r, mut root_c) = hr.join().unwrap();
    assert!(r.is_err(), "its statement was cancelled");
    let state: String = a
        .query_one(
            "SELECT state FROM pg_stat_activity WHERE pid = $1",
            &[&root],
        )
        .unwrap()
        .get(0);
    assert_eq!(state, "idle in transaction (aborted)");
    thread::sleep(Duration::from_millis(2000));
    assert!(alive(&mut a, root), "holding nothing now: kept");
    let rules: Vec<String> = audit(&mut a, root).into_iter().map(|r| r.0).collect();
    assert_eq!(rules, vec!["blocker_cancel"]);
    root_c.batch_execute("ROLLBACK").unwrap();
    reset_system(&mut a);
}

#[test]
fn a_root_whose_waiter_gave_up_before_the_signal_is_spared_at_the_last_look() {
    let mut a = guard_admin();
    table(&mut a);
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.blocker_timeout", "1s"),
            // recorded at ~1s; the waiter gives up at 2s; the signal would go at ~3s
            ("dbconn_guard.test_delay_before_signal", "2000"),
        ],
    );
    let (mut root_c, root) = idle_in_transaction_as(APP_ROLE, "it_b_spared");
    root_c.batch_execute(&update(6)).unwrap();
    let (w, hw) = in_background_as(
        APP_ROLE,
        "it_b_w",
        &format!("SET lock_timeout = '2s'; {}", update(6)),
    );
    wait_for_lock_waits(&mut a, &[w]);
    let (r, _wc) = hw.join().unwrap();
    assert!(
        db_error(&r.expect_err("lock timeout")).contains("lock timeout"),
        "the waiter gave up"
    );
    thread::sleep(Duration::from_millis(2500));
    assert!(alive(&mut a, root), "no longer blocking anybody: spared");
    assert!(
        audit(&mut a, root).is_empty(),
        "its row is withdrawn: {:?}",
        audit(&mut a, root)
    );
    let log = std::fs::read_to_string(std::env::var("DBCONN_GUARD_TEST_LOG").unwrap()).unwrap();
    assert!(
        log.contains(&format!(
            "spared pid {root} at the last moment (it no longer holds up other sessions past dbconn_guard.blocker_timeout)"
        )),
        "the LOG line of the spared root"
    );
    alter_system(&mut a, &[("dbconn_guard.test_delay_before_signal", "0")]);
    reset_system(&mut a);
}

#[test]
fn a_dry_run_records_a_root_once() {
    let mut a = guard_admin();
    table(&mut a);
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.blocker_timeout", "1s"),
            ("dbconn_guard.dry_run", "on"),
        ],
    );
    let (mut root_c, root) = idle_in_transaction_as(APP_ROLE, "it_b_dry");
    root_c.batch_execute(&update(7)).unwrap();
    let (w, hw) = waiter("it_b_w", 7);
    wait_for_lock_waits(&mut a, &[w]);
    wait_until(
        &mut a,
        &format!("SELECT count(*) > 0 FROM dbconn_guard.terminations WHERE pid = {root}"),
        Duration::from_secs(10),
    );
    thread::sleep(Duration::from_millis(2500));
    let rows = audit(&mut a, root);
    assert_eq!(rows.len(), 1, "once: {rows:?}");
    assert_eq!(rows[0].0, "blocker_timeout");
    assert!(rows[0].1, "a dry run");
    assert!(alive(&mut a, root));
    root_c.batch_execute("ROLLBACK").unwrap();
    finished_ok(hw, "the waiter");
    reset_system(&mut a);
}

#[test]
fn a_commit_waiting_for_a_synchronous_standby_is_never_cancelled() {
    let mut a = guard_admin();
    table(&mut a);
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.blocker_timeout", "1s"),
            ("dbconn_guard.cancel_active_blockers", "on"),
        ],
    );
    // a standby that never answers: every COMMIT that wrote waits for it, holding its locks
    a.batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'it_b_nobody'")
        .unwrap();
    a.batch_execute("SELECT pg_reload_conf()").unwrap();
    thread::sleep(Duration::from_millis(300));
    let (root, hr) = in_background_as(
        APP_ROLE,
        "it_b_sync_root",
        &format!("BEGIN; {}; COMMIT", update(8)),
    );
    wait_for_event(&mut a, root, "SyncRep");
    let (w, hw) = waiter("it_b_w", 8);
    wait_for_lock_waits(&mut a, &[w]);
    thread::sleep(Duration::from_millis(3000));
    let still: bool = a
        .query_one(
            &format!("SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = {root} AND wait_event = 'SyncRep'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        still,
        "its COMMIT still waits for the standby: not cancelled"
    );
    assert!(audit(&mut a, root).is_empty());
    let log = std::fs::read_to_string(std::env::var("DBCONN_GUARD_TEST_LOG").unwrap()).unwrap();
    assert!(
        log.contains(&format!("did not cancel pid {root}, the root of a lock pile-up (rule blocker_cancel): its COMMIT waits for a synchronous standby")),
        "the LOG line says why"
    );
    a.batch_execute("ALTER SYSTEM RESET synchronous_standby_names")
        .unwrap();
    a.batch_execute("SELECT pg_reload_conf()").unwrap();
    finished_ok(hr, "the COMMIT, once the standby is no longer required");
    finished_ok(hw, "the waiter");
    reset_system(&mut a);
}

// --- the lock-queue rule (dbconn_guard.lock_queue_timeout) ----------------------------------

/// A table the application role owns (so that its ALTER TABLE is no superuser's), with rows.
fn queue_table(a: &mut postgres::Client) {
    a.batch_execute(&format!(
        "DROP TABLE IF EXISTS it_b_q; CREATE TABLE it_b_q (id int PRIMARY KEY);
         INSERT INTO it_b_q SELECT g FROM generate_series(1, 9) g;
         ALTER TABLE it_b_q OWNER TO {APP_ROLE}"
    ))
    .unwrap();
}

const QUEUED_ALTER: &str = "ALTER TABLE it_b_q ADD COLUMN c int";

/// `n` readers of the table, each in a session of its own, queued behind the ALTER.
fn queued_readers(n: usize) -> Vec<(i32, Finished)> {
    (0..n)
        .map(|_| in_background_as(APP_ROLE, "it_b_q_reader", "SELECT count(*) FROM it_b_q"))
        .collect()
}

/// The root's session and pid, the ALTER's pid and statement, the readers'.
type Queue = (postgres::Client, i32, i32, Finished, Vec<(i32, Finished)>);

/// A root idle in a transaction that read the table, the ALTER queued behind it, and
/// `readers` queued behind the ALTER, all waiting when it returns.
fn queue_behind_an_idle_root(a: &mut postgres::Client, readers: usize) -> Queue {
    let (mut root_c, root) = idle_in_transaction_as(APP_ROLE, "it_b_q_root");
    root_c.batch_execute("SELECT count(*) FROM it_b_q").unwrap();
    let (alter, alter_h) = in_background_as(APP_ROLE, "it_b_q_migrate", QUEUED_ALTER);
    wait_for_lock_waits(a, &[alter]);
    let readers = queued_readers(readers);
    let pids: Vec<i32> = readers.iter().map(|(p, _)| *p).collect();
    wait_for_lock_waits(a, &pids);
    (root_c, root, alter, alter_h, readers)
}

/// The SQLSTATE a background statement ended with (None: it succeeded), and its session,
/// still open.
fn sqlstate(h: Finished) -> (Option<String>, postgres::Client) {
    let (r, c) = h.join().unwrap();
    let state = r.err().map(|e| {
        e.as_db_error()
            .map_or_else(|| e.to_string(), |d| d.code().code().to_string())
    });
    (state, c)
}

#[test]
fn a_queued_alter_table_is_cancelled_and_the_fifty_readers_behind_it_go_on() {
    let mut a = guard_admin();
    queue_table(&mut a);
    alter_system(&mut a, &[("dbconn_guard.lock_queue_timeout", "2s")]);
    // a report that reads the table for a minute
    let (report, report_h) = in_background_as(
        APP_ROLE,
        "it_b_q_report",
        "SELECT pg_sleep(60) FROM it_b_q LIMIT 1",
    );
    wait_for_event(&mut a, report, "PgSleep");
    // the DBA's ALTER TABLE, without lock_timeout: it queues behind the report
    let (alter, alter_h) = in_background_as(APP_ROLE, "it_b_q_migrate", QUEUED_ALTER);
    wait_for_lock_waits(&mut a, &[alter]);
    // and every reader after it queues behind it (none waits before this moment: the rule's
    // 2 s count from here at the earliest, however long a loaded host takes to queue them all)
    let queued = Instant::now();
    let readers = queued_readers(50);
    let pids: Vec<i32> = readers.iter().map(|(p, _)| *p).collect();
    wait_for_lock_waits(&mut a, &pids);
    // the ALTER's statement is cancelled, once the readers have waited 2 s
    let (state, _alter_c) = sqlstate(alter_h);
    assert_eq!(state.as_deref(), Some("57014"), "query_canceled");
    assert!(
        queued.elapsed() >= Duration::from_millis(1500),
        "cancelled {:?} after the readers queued: before lock_queue_timeout",
        queued.elapsed()
    );
    assert!(
        alive(&mut a, alter),
        "its session stays: a cancel, never an end"
    );
    for (p, h) in readers {
        finished_ok(h, &format!("reader {p}"));
    }
    // the report is the root, and no rule here touches it
    assert!(alive(&mut a, report), "the report runs on");
    let rows = audit(&mut a, alter);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1, rows[0].2.as_str()),
        ("lock_queue_cancel", false, "worker")
    );
    assert!(audit(&mut a, report).is_empty());
    let columns: i64 = a
        .query_one(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'it_b_q'::regclass AND attname = 'c'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(columns, 0, "the ALTER did not run");
    // the LOG line says what it waited for, behind whom, and how many it held up
    let log = std::fs::read_to_string(std::env::var("DBCONN_GUARD_TEST_LOG").unwrap()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("cancelled the statement of pid {alter} ")))
        .unwrap_or_else(|| panic!("the LOG line of pid {alter}"));
    assert!(
        line.contains(
            "rule lock_queue_cancel, waiting for AccessExclusiveLock on relation \"it_b_q\" (oid "
        ) && line.contains(&format!("behind pid {report}, holding up 50 sessions")),
        "{line}"
    );
    // the history counts it under its own column
    wait_until(
        &mut a,
        "SELECT coalesce(sum(cancelled_lock_queue_statements), 0) >= 1 FROM dbconn_guard.history",
        Duration::from_secs(15),
    );
    a.batch_execute(&format!("SELECT pg_cancel_backend({report})"))
        .unwrap();
    let _ = report_h.join();
    reset_system(&mut a);
}

#[test]
fn with_an_idle_root_the_queued_statement_is_cancelled_and_the_root_kept() {
    // both rules on, due together: the queued ALTER is cancelled (its client can retry), and
    // the root, whose only pile-up was the queue behind the ALTER, is not ended for it
    let mut a = guard_admin();
    queue_table(&mut a);
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.lock_queue_timeout", "2s"),
            ("dbconn_guard.blocker_timeout", "2s"),
        ],
    );
    let (mut root_c, root, alter, alter_h, readers) = queue_behind_an_idle_root(&mut a, 5);
    let (state, _alter_c) = sqlstate(alter_h);
    assert_eq!(state.as_deref(), Some("57014"), "query_canceled");
    for (p, h) in readers {
        finished_ok(h, &format!("reader {p}"));
    }
    // two more timeouts: the root holds nobody up now, and stays
    thread::sleep(Duration::from_millis(4000));
    assert!(alive(&mut a, root), "the idle root is kept");
    assert!(audit(&mut a, root).is_empty(), "{:?}", audit(&mut a, root));
    assert_eq!(audit(&mut a, alter).len(), 1);
    root_c.batch_execute("ROLLBACK").unwrap();
    reset_system(&mut a);
}

#[test]
fn a_queued_statement_the_guard_protects_is_never_cancelled() {
    let mut a = guard_admin();
    queue_table(&mut a);
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.lock_queue_timeout", "1s"),
            ("dbconn_guard.exclude_applications", "it_b_q_migrate"),
        ],
    );
    let (mut root_c, root, alter, alter_h, readers) = queue_behind_an_idle_root(&mut a, 3);
    thread::sleep(Duration::from_millis(3000));
    assert!(
        a.query_one(
            &format!("SELECT count(*) = 1 FROM pg_locks WHERE pid = {alter} AND NOT granted"),
            &[],
        )
        .unwrap()
        .get::<_, bool>(0),
        "the excluded application's ALTER still waits"
    );
    assert!(audit(&mut a, alter).is_empty());
    // once the root ends its transaction, the ALTER runs, and the readers after it
    root_c.batch_execute("ROLLBACK").unwrap();
    finished_ok(alter_h, "the ALTER");
    for (p, h) in readers {
        finished_ok(h, &format!("reader {p}"));
    }
    assert!(alive(&mut a, root));
    reset_system(&mut a);
}

// --- the escalation (dbconn_guard.blocker_terminate_after) ---------------------------------

/// A client of the application role that takes row `id` in a transaction and sleeps in it,
/// and re-issues that right after every cancel, until its session is ended: its pid, and the
/// thread, which returns how many cancels the client saw.
fn retrying_root(app: &str, id: i32) -> (i32, thread::JoinHandle<i32>) {
    let mut c = connect_as(APP_ROLE, app);
    let root = pid(&mut c);
    let retries = thread::spawn(move || {
        let mut cancelled = 0;
        loop {
            let r = c.batch_execute(&format!(
                "BEGIN; {}; SELECT pg_sleep(60); COMMIT",
                update(id)
            ));
            match r {
                Ok(()) => {}
                Err(e) if e.code() == Some(&postgres::error::SqlState::QUERY_CANCELED) => {
                    cancelled += 1;
                    let _ = c.batch_execute("ROLLBACK");
                }
                Err(_) => return cancelled, // its session was ended
            }
        }
    });
    (root, retries)
}

/// A writer of row `id`, again and again, until `stop`.
fn writer_until(
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    app: &str,
    id: i32,
) -> thread::JoinHandle<()> {
    let stop = stop.clone();
    let mut c = connect_as(APP_ROLE, app);
    thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = c.batch_execute(&update(id));
            thread::sleep(Duration::from_millis(20));
        }
    })
}

#[test]
fn a_root_that_retries_after_every_cancel_is_ended_after_blocker_terminate_after() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut a = guard_admin();
    table(&mut a);
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.blocker_timeout", "1s"),
            ("dbconn_guard.cancel_active_blockers", "on"),
            ("dbconn_guard.blocker_terminate_after", "4s"),
        ],
    );
    // the root: a client that re-issues its locking transaction right after every cancel;
    // its victim: a writer of the same row, again and again
    let (root, retries) = retrying_root("it_b_retry", 3);
    let stop = Arc::new(AtomicBool::new(false));
    let victim = writer_until(&stop, "it_b_retry_victim", 3);
    let started = Instant::now();
    wait_gone(&mut a, root, Duration::from_secs(30));
    let cancelled = retries.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    victim.join().unwrap();
    let rows: Vec<(String, f64)> = a
        .query(
            "SELECT rule, extract(epoch FROM terminated_at)::float8 FROM dbconn_guard.terminations \
              WHERE pid = $1 AND NOT dry_run ORDER BY id",
            &[&root],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let cancels: Vec<f64> = rows
        .iter()
        .filter(|(r, _)| r == "blocker_cancel")
        .map(|(_, t)| *t)
        .collect();
    let ends: Vec<f64> = rows
        .iter()
        .filter(|(r, _)| r == "blocker_terminate")
        .map(|(_, t)| *t)
        .collect();
    assert!(
        cancels.len() >= 2 && cancelled >= 2,
        "cancelled, retried, cancelled again before the end: {rows:?} ({cancelled} cancels seen)"
    );
    assert_eq!(ends.len(), 1, "{rows:?}");
    let after = ends[0] - cancels[0];
    assert!(
        (3.9..10.0).contains(&after),
        "ended {after:.1}s after its first cancel (blocker_terminate_after 4s): {rows:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    reset_system(&mut a);
}

/// diagnose() recognises the escalation's incident: an active root that holds up a pile-up
/// again after the guard cancelled its statement is read as `root_returns`, and its action
/// ends the session (a second cancel would not help); pasted, it does.
#[test]
fn diagnose_reads_a_root_back_after_the_guards_cancel_and_ends_it() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut a = guard_admin();
    table(&mut a);
    // no escalation: the guard cancels, the client retries, again and again
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.blocker_timeout", "8s"),
            ("dbconn_guard.cancel_active_blockers", "on"),
        ],
    );
    let (root, retries) = retrying_root("it_b_returns", 4);
    let stop = Arc::new(AtomicBool::new(false));
    let victim = writer_until(&stop, "it_b_returns_victim", 4);
    // before any cancel, the row is a root blocker's, and cancels
    wait_until(
        &mut a,
        &format!(
            "SELECT count(*) > 0 FROM dbconn_guard.diagnose() WHERE area = 'locks' AND reading = 'root_blocker' AND culprit_pid = {root} AND action = 'SELECT pg_cancel_backend({root});'"
        ),
        Duration::from_secs(20),
    );
    // after the guard's cancel, the pile-up comes back: the row says so, and ends it
    wait_until(
        &mut a,
        &format!(
            "SELECT count(*) > 0 FROM dbconn_guard.terminations WHERE pid = {root} AND rule = 'blocker_cancel' AND NOT dry_run"
        ),
        Duration::from_secs(30),
    );
    let found = format!(
        "SELECT count(*) > 0 FROM dbconn_guard.diagnose() WHERE area = 'locks' AND reading = 'root_returns' AND culprit_pid = {root} AND status IN ('warning', 'critical') AND action_kind = 'end_session'"
    );
    wait_until(&mut a, &found, Duration::from_secs(30));
    let (finding, action): (String, String) = {
        let r = a
            .query_one(
                &format!(
                    "SELECT finding, action FROM dbconn_guard.diagnose() WHERE area = 'locks' AND culprit_pid = {root}"
                ),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        finding.contains("it came back after the guard cancelled its statement"),
        "{finding}"
    );
    assert_eq!(action, format!("SELECT pg_terminate_backend({root});"));
    // pasted, it ends the client for good
    a.batch_execute(&action).unwrap();
    wait_gone(&mut a, root, Duration::from_secs(10));
    let cancelled = retries.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    victim.join().unwrap();
    assert!(cancelled >= 1, "{cancelled} cancels seen by the client");
    reset_system(&mut a);
}
