// In-process tests (`#[pg_test]`): each runs inside a PostgreSQL backend, in a transaction that
// is rolled back. Multi-session scenarios live in `pg_test/` (real client sessions).

use pgrx::prelude::*;

#[pg_test]
fn views_exist_with_comments() {
    for view in ["connection_analysis", "blocking_pairs", "utilization", "leak_suspects"] {
        let comment = Spi::get_one::<String>(&format!("SELECT obj_description('dbconn_guard.{view}'::regclass, 'pg_class')"))
            .unwrap();
        assert!(comment.is_some_and(|c| c.len() > 20), "{view} has no comment");
    }
}

#[pg_test]
fn own_session_is_counted() {
    let mine = Spi::get_one::<i64>(
        "SELECT connection_count FROM dbconn_guard.connection_analysis WHERE pg_backend_pid() = ANY(pids)",
    )
    .unwrap();
    assert!(mine.is_some_and(|n| n >= 1));
    let state = Spi::get_one::<String>(
        "SELECT state FROM dbconn_guard.connection_analysis WHERE pg_backend_pid() = ANY(pids)",
    )
    .unwrap();
    assert_eq!(state.as_deref(), Some("active"));
}

#[pg_test]
fn utilization_matches_pg_stat_activity() {
    let (pct, expected) = Spi::get_two::<f64, f64>(
        "SELECT dbconn_guard.utilization_pct(), \
         (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') * 100.0 \
           / current_setting('max_connections')::float8",
    )
    .unwrap();
    assert_eq!(pct, expected);
    let max = Spi::get_one::<i32>("SELECT max_connections FROM dbconn_guard.utilization").unwrap();
    assert_eq!(max, Some(Spi::get_one::<String>("SHOW max_connections").unwrap().unwrap().parse().unwrap()));
}

#[pg_test]
fn health_has_every_check_and_a_status() {
    let names = Spi::get_one::<String>("SELECT string_agg(check_name, ',' ORDER BY check_name) FROM dbconn_guard.health()")
        .unwrap();
    assert_eq!(names.as_deref(), Some("idle_in_transaction,idle_sessions,lock_waits,oldest_transaction,utilization"));
    let status = Spi::get_one::<String>("SELECT dbconn_guard.health_status()").unwrap().unwrap();
    assert!(["ok", "warning", "critical"].contains(&status.as_str()));
}

#[pg_test]
fn health_follows_the_thresholds() {
    // this test's own transaction is old enough for a 1 second warning threshold after a sleep
    Spi::run("SET dbconn_guard.transaction_age_warning = '1s'").unwrap();
    Spi::run("SET dbconn_guard.transaction_age_critical = 0").unwrap();
    Spi::run("SELECT pg_sleep(1.1)").unwrap();
    let status = Spi::get_one::<String>("SELECT status FROM dbconn_guard.health() WHERE check_name = 'oldest_transaction'")
        .unwrap();
    assert_eq!(status.as_deref(), Some("warning"));
    Spi::run("SET dbconn_guard.warning_pct = 1").unwrap();
    Spi::run("SET dbconn_guard.critical_pct = 1").unwrap();
    assert_eq!(Spi::get_one::<String>("SELECT dbconn_guard.health_status()").unwrap().as_deref(), Some("critical"));
}

#[pg_test(error = "1000 is outside the valid range for parameter \"dbconn_guard.warning_pct\" (1 .. 100)")]
fn out_of_range_setting_is_refused() {
    Spi::run("SET dbconn_guard.warning_pct = 1000").unwrap();
}

#[pg_test]
fn age_settings_take_units() {
    Spi::run("SET dbconn_guard.leak_idle_age = '15min'").unwrap();
    assert_eq!(Spi::get_one::<String>("SHOW dbconn_guard.leak_idle_age").unwrap().as_deref(), Some("15min"));
}

#[pg_test(error = "invalid configuration parameter name \"dbconn_guard.no_such_setting\"")]
fn misspelled_setting_is_refused() {
    Spi::run("SET dbconn_guard.no_such_setting = 1").unwrap();
}

#[pg_test]
fn no_waits_no_pairs() {
    assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM dbconn_guard.blocking_pairs").unwrap(), Some(0));
    assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM dbconn_guard.blocking_chains()").unwrap(), Some(0));
}

/// The last look before a signal reads the target's own status entry again, in place: a session
/// that ran anything since it was judged is seen to have changed, however recently, and one
/// that did not is seen unchanged. Every read here is fresh (no per-transaction cache is in
/// the way: this test's transaction is open throughout).
/// The last look reads this very session's entry again: a change of its own state (as any
/// statement makes) shows at once. Runs everywhere, also where dblink is not installed (the
/// PostgreSQL 16 build used here has no contrib modules).
#[pg_test]
fn the_last_look_reads_the_status_entry_again_in_place() {
    use crate::read::backend_status::{read_slot, Slot};
    use crate::core::recheck::{last_word, Fresh, Verdict};
    let me = unsafe { pg_sys::MyProcPid };
    let judge = || {
        let snap = crate::read::snapshot::activity_all();
        snap.backends.iter().find(|b| b.pid == me).expect("this session").clone()
    };
    let look = |judged: &crate::core::session::Backend| {
        let read = read_slot(judged.slot.expect("read in place"));
        let fresh = match &read {
            Slot::Unused => Fresh::Gone,
            Slot::Torn => Fresh::Unreadable,
            Slot::Read(b) => Fresh::Read(b),
        };
        // own_pid 0: this session is not "own" for the judgement here
        last_word(judged, fresh, crate::core::recheck::Task::Unknown, &crate::core::policy::Scope { terminate_superusers: true, ..Default::default() }, 0)
    };
    let judged = judge();
    assert_eq!(judged.state, Some("active"));
    assert_eq!(look(&judged), Verdict::Proceed);
    std::thread::sleep(std::time::Duration::from_millis(2));
    // what PostgreSQL does at the start of every statement: a new state_change
    unsafe {
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, c"SELECT 'again'".as_ptr());
    }
    assert_eq!(look(&judged), Verdict::Changed);
    assert_eq!(look(&judge()), Verdict::Proceed);
}

fn dblink_available() -> bool {
    Spi::get_one::<bool>("SELECT count(*) = 1 FROM pg_available_extensions WHERE name = 'dblink'")
        .unwrap()
        .unwrap_or(false)
}

#[pg_test]
fn the_last_look_sees_a_session_that_ran_a_query_since_it_was_judged() {
    use crate::read::backend_status::{read_slot, Slot};
    use crate::core::recheck::{last_word, Fresh, Verdict};
    if !dblink_available() {
        // the integration test trust::a_session_that_runs_a_query_after_it_was_recorded_...
        // covers another session on every version
        notice!("dblink is not installed in this PostgreSQL build: this test checks nothing here");
        return;
    }
    Spi::run("CREATE EXTENSION IF NOT EXISTS dblink").unwrap();
    Spi::run(
        "SELECT dblink_connect('guard_race', format('host=%s port=%s dbname=%s user=%s', \
           split_part(current_setting('unix_socket_directories'), ',', 1), current_setting('port'), \
           current_database(), current_user))",
    )
    .unwrap();
    let pid = Spi::get_one::<i32>("SELECT pid FROM dblink('guard_race', 'SELECT pg_backend_pid()') AS t(pid int)")
        .unwrap()
        .unwrap();
    let judge = || {
        let snap = crate::read::snapshot::activity_all();
        snap.backends.iter().find(|b| b.pid == pid).expect("the dblink session").clone()
    };
    let look = |judged: &crate::core::session::Backend| {
        let read = read_slot(judged.slot.expect("read in place"));
        let fresh = match &read {
            Slot::Unused => Fresh::Gone,
            Slot::Torn => Fresh::Unreadable,
            Slot::Read(b) => Fresh::Read(b),
        };
        last_word(judged, fresh, crate::core::recheck::Task::Unknown, &crate::core::policy::Scope { terminate_superusers: true, ..Default::default() }, 0)
    };
    let judged = judge();
    assert_eq!(judged.state, Some("idle"));
    assert_eq!(look(&judged), Verdict::Proceed, "nothing happened since");
    // the session runs a statement after it was judged
    Spi::run("SELECT * FROM dblink('guard_race', 'SELECT 1') AS t(x int)").unwrap();
    assert_eq!(look(&judged), Verdict::Changed);
    let again = judge();
    assert!(again.state_change > judged.state_change);
    assert_eq!(look(&again), Verdict::Proceed);
    // it ends: its slot is empty, or holds another backend
    Spi::run("SELECT dblink_disconnect('guard_race')").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while look(&again) != Verdict::Gone {
        assert!(std::time::Instant::now() < deadline, "the ended session still looks alive");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The query text is read only for the pids asked for.
#[pg_test]
fn query_text_is_read_only_for_the_sessions_asked_for() {
    let me = unsafe { pg_sys::MyProcPid };
    let snap = crate::read::snapshot::activity_with_queries(|pid| pid == me);
    let mine = snap.backends.iter().find(|b| b.pid == me).unwrap();
    assert!(mine.query.as_deref().is_some_and(|q| !q.is_empty()), "{mine:?}");
    assert!(snap.backends.iter().filter(|b| b.pid != me && !b.is_hidden()).all(|b| b.query.is_none()));
}

#[pg_test]
fn client_backends_are_told_by_backend_type_not_by_name() {
    use crate::core::session::Kind;
    let me = unsafe { pg_sys::MyProcPid };
    Spi::run("SELECT pg_stat_clear_snapshot()").unwrap();
    let listed = Spi::get_one::<pgrx::JsonB>(
        "SELECT jsonb_object_agg(pid::text, backend_type = 'client backend') FROM pg_stat_activity",
    )
    .unwrap()
    .unwrap()
    .0;
    let snap = crate::read::snapshot::activity_all();
    assert_eq!(snap.backends.iter().find(|b| b.pid == me).unwrap().kind, Kind::Client);
    let mut compared = 0;
    // backends may come and go between the two reads: compare those in both
    for b in &snap.backends {
        if let Some(client) = listed.get(b.pid.to_string()).and_then(|v| v.as_bool()) {
            assert_eq!(b.is_client(), client, "{b:?}");
            compared += 1;
        }
    }
    assert!(compared >= 5, "the background processes and this session: {compared}");
    assert_eq!(snap.torn, 0);
}

/// The settings table (`guc::SETTINGS`) is what PostgreSQL registered: every setting, its
/// context, and its boot value (the variable's initial value, kept apart from the table).
#[pg_test]
fn every_setting_is_registered_as_the_settings_table_says() {
    use crate::guc::{Changed, SETTINGS};
    let n = Spi::get_one::<i64>("SELECT count(*) FROM pg_settings WHERE name LIKE 'dbconn_guard.%'")
        .unwrap()
        .unwrap();
    assert_eq!(n as usize, SETTINGS.len());
    for s in SETTINGS.iter() {
        let name = s.name.to_str().unwrap();
        let (boot, context) = Spi::get_two::<String, String>(&format!(
            "SELECT boot_val, context FROM pg_settings WHERE name = '{name}'"
        ))
        .unwrap();
        let want = match s.changed {
            Changed::Superuser => "superuser",
            Changed::Reload => "sighup",
            Changed::ServerStart => "postmaster",
        };
        assert_eq!(
            (boot.as_deref(), context.as_deref()),
            (Some(s.boot.as_shown().as_str()), Some(want)),
            "{name}"
        );
    }
}
