//! The rules of issue 10, with real sessions. Transaction age (`dbconn_guard.transaction_timeout`):
//! a transaction kept open by a client that never idles long is ended while idle in it, a
//! statement running past the deadline never is. Per-application and per-user timeouts
//! (`dbconn_guard.*_timeout_overrides`): an override ends its sessions, 0 keeps them whatever the
//! global timeout, the first match wins, the protections still win, the policy shows what is in
//! force, and a malformed list is refused naming the bad item, the old value kept.

use dbconn_guard_integration::*;
use std::thread;
use std::time::Duration;

#[test]
fn overrides_end_their_sessions_and_zero_keeps_them() {
    let mut a = guard_admin();
    ensure_role(&mut a, "it_o_user", "");
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.idle_in_transaction_timeout", "1s"),
            ("dbconn_guard.idle_timeout", "0"),
            (
                "dbconn_guard.idle_in_transaction_timeout_overrides",
                "app:it_o_keep*=0, app:it_o_slow=1h",
            ),
            ("dbconn_guard.idle_timeout_overrides", "user:it_o_user=1s"),
        ],
    );
    let (_other, other) = stale_in_transaction("it_o_other"); // the global 1s
    let (_keep, keep) = stale_in_transaction("it_o_keep_me"); // 0: never
    let (_slow, slow) = stale_in_transaction("it_o_slow"); // 1h
    let (_su, su) = idle_in_transaction("it_o_other", "SELECT 1"); // a superuser: protected
    let mut u = connect_as("it_o_user", "it_o_x");
    let user_idle = pid(&mut u); // idle: the override gives 1s, the global is off
    let (_plain, plain_idle) = stale_idle("it_o_x"); // idle, no override: the global is off
    wait_gone(&mut a, other, Duration::from_secs(10));
    wait_gone(&mut a, user_idle, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(1500));
    for (p, what) in [
        (keep, "0 in the override"),
        (slow, "the override's 1h"),
        (su, "a superuser"),
        (plain_idle, "no rule for idle sessions"),
    ] {
        assert!(alive(&mut a, p), "{what}: kept");
    }
    let rows = audit(&mut a, other);
    assert_eq!(rows[0].0, "idle_in_transaction_timeout");
    let rows = audit(&mut a, user_idle);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "idle_timeout");
    assert!(
        (1.0..2.5).contains(&rows[0].3),
        "ended {}s after going idle",
        rows[0].3
    );
    // what is in force, as the worker applies it
    let shown: String = a
        .query_one(
            "SELECT policy->>'idle_in_transaction_timeout_overrides' FROM dbconn_guard.worker_status()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(shown, "app:it_o_keep*=0, app:it_o_slow=1h");

    // a malformed list is refused whole, naming the item; the old value stays
    for (bad, says) in [
        ("app:it_o_keep*=0, db:shop=1h", "item 2"),
        ("app:x=soon", "is not a duration"),
        ("app:x=500ms", "under 1s"),
    ] {
        let e = a
            .batch_execute(&format!(
                "ALTER SYSTEM SET dbconn_guard.idle_in_transaction_timeout_overrides = '{bad}'"
            ))
            .expect_err(bad);
        let text = db_error(&e);
        assert!(text.contains(says), "{bad}: {text}");
        assert!(text.contains("app:<name>=<duration>"), "the hint: {text}");
    }
    a.batch_execute("SELECT pg_reload_conf()").unwrap();
    thread::sleep(Duration::from_millis(300));
    let still: String = a
        .query_one(
            "SELECT policy->>'idle_in_transaction_timeout_overrides' FROM dbconn_guard.worker_status()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(still, "app:it_o_keep*=0, app:it_o_slow=1h");
    drop(u);
    reset_system(&mut a);
}

#[test]
fn an_old_transaction_is_ended_while_idle_in_it_and_never_while_it_runs() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.transaction_timeout", "2s"),
            ("dbconn_guard.naptime", "200ms"),
            (
                "dbconn_guard.transaction_timeout_overrides",
                "app:it_r_exempt=0",
            ),
        ],
    );
    // exempted by its override, idle in an old transaction all along
    let (_exempt, exempt) = stale_in_transaction("it_r_exempt");
    // a client that keeps its transaction open with a statement every 300 ms: never idle in it
    // for long, so no idle-in-transaction timeout would see it
    let mut keeper = connect_as(APP_ROLE, "it_r_keeper");
    let keeper_pid = pid(&mut keeper);
    keeper.batch_execute("BEGIN; SELECT 1").unwrap();
    // a statement that runs past the deadline, in its own transaction
    let (runner, running) = in_background_as(APP_ROLE, "it_r_runner", "BEGIN; SELECT pg_sleep(4)");
    let t0 = std::time::Instant::now();
    let mut ended_after = None;
    while t0.elapsed() < Duration::from_secs(6) {
        if keeper.batch_execute("SELECT 1").is_err() {
            ended_after = Some(t0.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(300));
    }
    let ended_after = ended_after.expect("the keeper's transaction was ended");
    assert!(
        ended_after >= Duration::from_millis(1800) && ended_after < Duration::from_secs(4),
        "ended {ended_after:?} after its transaction began (timeout 2s)"
    );
    let rows = audit(&mut a, keeper_pid);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].2.as_str()),
        ("transaction_timeout", "worker")
    );
    // the running statement went past its deadline untouched, and is ended once idle after it
    assert!(alive(&mut a, runner), "not ended while its statement runs");
    assert!(
        alive(&mut a, exempt),
        "app:it_r_exempt=0 keeps its old transaction"
    );
    let (r, _session) = running.join().unwrap();
    assert!(r.is_ok(), "the statement finished: {r:?}");
    wait_gone(&mut a, runner, Duration::from_secs(5));
    assert_eq!(audit(&mut a, runner)[0].0, "transaction_timeout");
    reset_system(&mut a);
}

#[test]
fn a_refused_setting_in_the_configuration_file_stops_the_guard_until_it_is_fixed() {
    // a typo in a protection list, written in postgresql.conf by hand: at server start
    // PostgreSQL keeps the default (no exclusions at all) and only warns
    let cluster = Cluster::start(
        "refused",
        ports::REFUSED,
        &[
            "shared_preload_libraries = 'dbconn_guard'",
            "dbconn_guard.idle_in_transaction_timeout = 1",
            "dbconn_guard.exclude_applications = 'it_keep,,it_other'",
        ],
    );
    let mut su = cluster.connect("postgres", "postgres", "it_r_admin");
    su.batch_execute("CREATE EXTENSION dbconn_guard; CREATE ROLE it_r_app LOGIN")
        .unwrap();
    let mut keep = cluster.connect("it_r_app", "postgres", "it_keep");
    let keep_pid = pid(&mut keep);
    keep.batch_execute("BEGIN; SELECT 1").unwrap();
    thread::sleep(Duration::from_secs(3));
    assert!(
        alive(&mut su, keep_pid),
        "nothing is ended while a setting is refused"
    );
    let err: Option<String> = su
        .query_one("SELECT last_error FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0);
    let err = err.unwrap_or_default();
    assert!(
        err.contains("dbconn_guard.exclude_applications") && err.contains("ends no session"),
        "{err}"
    );
    // the error's text names the file and line: only for pg_read_all_settings and the
    // guard's admins, as pg_settings does
    su.batch_execute("CREATE ROLE it_r_plain LOGIN").unwrap();
    let mut plain = cluster.connect("it_r_plain", "postgres", "it_r_plain");
    let shown: String = plain
        .query_one("SELECT last_error FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0);
    assert!(
        shown.starts_with("(hidden") && !shown.contains("postgresql.conf"),
        "{shown}"
    );
    let leaked: i64 = plain
        .query_one(
            "SELECT count(*) FROM dbconn_guard.diagnose() WHERE evidence LIKE '%postgresql.conf%' OR finding LIKE '%postgresql.conf%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0, "diagnose() showed a plain role the file");
    assert!(err.contains("postgresql.conf"), "the admin sees it: {err}");
    // terminate_idle() obeys the same gate: refused, nothing ended
    let e = su
        .query("SELECT * FROM dbconn_guard.terminate_idle('0')", &[])
        .expect_err("terminate_idle() while a setting is refused");
    assert!(
        db_error(&e).contains("PostgreSQL refused"),
        "{}",
        db_error(&e)
    );
    assert!(alive(&mut su, keep_pid));
    // fixed (a later line wins) and reloaded: the protected session stays, the others go
    cluster.append_conf("dbconn_guard.exclude_applications = 'it_keep'");
    su.batch_execute("SELECT pg_reload_conf()").unwrap();
    let mut other = cluster.connect("it_r_app", "postgres", "it_other");
    let other_pid = pid(&mut other);
    other.batch_execute("BEGIN; SELECT 1").unwrap();
    wait_gone(&mut su, other_pid, Duration::from_secs(10));
    assert!(
        alive(&mut su, keep_pid),
        "the exclusion, now in force, protects it"
    );
    assert!(cluster.log().contains("the refused settings are fixed"));
}

#[test]
fn a_dry_run_records_an_old_transaction_once() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.transaction_timeout", "1s"),
            ("dbconn_guard.naptime", "200ms"),
            ("dbconn_guard.dry_run", "on"),
        ],
    );
    let mut keeper = connect_as(APP_ROLE, "it_r_dry");
    let p = pid(&mut keeper);
    keeper.batch_execute("BEGIN; SELECT 1").unwrap();
    // a new state_change every 300 ms, the same transaction
    for _ in 0..12 {
        keeper.batch_execute("SELECT 1").unwrap();
        thread::sleep(Duration::from_millis(300));
    }
    let rows = audit(&mut a, p);
    assert_eq!(rows.len(), 1, "one record per transaction: {rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1),
        ("transaction_timeout", true)
    );
    // a new transaction is a new record
    keeper.batch_execute("COMMIT; BEGIN; SELECT 1").unwrap();
    for _ in 0..8 {
        keeper.batch_execute("SELECT 1").unwrap();
        thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(audit(&mut a, p).len(), 2);
    reset_system(&mut a);
}

/// Connection budgets (`dbconn_guard.connection_budgets`): an application over its budget loses
/// its longest idle sessions, down to the budget; never an active one, nor one idle in a
/// transaction (without the option); an application within its budget loses nothing.
#[test]
fn an_application_over_its_budget_loses_its_longest_idle_sessions_down_to_it() {
    let mut a = guard_admin();
    // "it_b_over": five idle sessions, opened 150 ms apart (the first is the longest idle),
    // one running a statement and one idle in a transaction: 7 of a budget of 3
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(stale_idle("it_b_over"));
        thread::sleep(Duration::from_millis(150));
    }
    let (active, running) = in_background_as(APP_ROLE, "it_b_over", "SELECT pg_sleep(20)");
    let (_iit, iit) = stale_in_transaction("it_b_over");
    // "it_b_within": four idle sessions of a budget of 5; and one of no budget at all
    let within: Vec<(postgres::Client, i32)> = (0..4).map(|_| stale_idle("it_b_within")).collect();
    let (_free, free) = stale_idle("it_b_free");
    alter_system(
        &mut a,
        &[
            (
                "dbconn_guard.connection_budgets",
                "app:it_b_over=3, app:it_b_within=5, app:it_b_free=0",
            ),
            ("dbconn_guard.connection_budget_min_idle", "1s"),
        ],
    );
    // the four longest idle go: 3 are left, the youngest idle session among them
    for (_, p) in &idle[..4] {
        wait_gone(&mut a, *p, Duration::from_secs(10));
    }
    thread::sleep(Duration::from_millis(1500));
    for (p, what) in [
        (
            idle[4].1,
            "the youngest idle session, within the budget once the others went",
        ),
        (active, "a session running a statement"),
        (
            iit,
            "a session idle in a transaction (connection_budget_idle_in_transaction is off)",
        ),
        (free, "an application whose budget is 0 (none)"),
    ] {
        assert!(alive(&mut a, p), "{what}: kept");
    }
    for (_, p) in &within {
        assert!(alive(&mut a, *p), "an application within its budget: kept");
    }
    for (_, p) in &idle[..4] {
        let rows = audit(&mut a, *p);
        assert_eq!(rows.len(), 1, "{p}: {rows:?}");
        assert_eq!(rows[0].0, "budget");
        assert!(
            rows[0].3 >= 1.0,
            "idle at least connection_budget_min_idle: {rows:?}"
        );
    }
    let log = std::fs::read_to_string(std::env::var("DBCONN_GUARD_TEST_LOG").unwrap()).unwrap();
    assert!(
        log.contains(&format!("terminated pid {} (idle for", idle[0].1))
            && log.contains(
                "rule budget, application \"it_b_over\" of user \"it_w_app\" holds 7 sessions, over its budget of 3"
            ),
        "the LOG line says which group, how many, and its budget"
    );
    // the history counts them in its own column
    wait_until(
        &mut a,
        "SELECT coalesce(sum(terminated_budget), 0) >= 4 FROM dbconn_guard.history",
        Duration::from_secs(15),
    );
    // a malformed budget list is refused, naming the item; the old value stays
    let e = a
        .batch_execute("ALTER SYSTEM SET dbconn_guard.connection_budgets = 'app:x=200, app:y=lots'")
        .unwrap_err();
    let text = db_error(&e);
    assert!(
        text.contains("item 2 (\"app:y=lots\")") && text.contains("app:<name>=<sessions>"),
        "{text}"
    );
    reset_system(&mut a);
    terminate(&mut a, &[active]);
    let _ = running.join();
    drop(idle);
}
