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

/// The session the worker judged must be the one it signals: same pid, backend start, state and
/// state_change. A target read before the session did something else is left alone.
#[pg_test]
fn a_session_that_changed_since_it_was_read_is_not_ended() {
    use crate::core::policy::{Rule, Target};
    use crate::guard::{self, Action};
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
    let snap = crate::snapshot::activity_all();
    let live = snap.backends.iter().find(|b| b.pid == pid).expect("the dblink session").clone();
    assert_eq!(live.state, Some("idle"));
    let alive = || {
        Spi::get_one::<bool>(&format!("SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = {pid}")).unwrap().unwrap()
    };

    // read a moment "earlier": its state_change no longer matches
    let mut stale = live.clone();
    stale.state_change = stale.state_change.map(|t| t - 1);
    let target = |b| Target { backend: b, rule: Rule::Manual, deadline: snap.now };
    let acted = guard::execute(&[target(stale)], snap.now, "pg_test", None, false);
    assert_eq!(acted, vec![Action::Changed]);
    assert!(alive());

    // the same session as it really is: ended, and recorded
    let acted = guard::execute(&[target(live)], snap.now, "pg_test", None, false);
    assert_eq!(acted, vec![Action::Terminated]);
    let rows = Spi::get_one::<i64>(&format!("SELECT count(*) FROM dbconn_guard.terminations WHERE pid = {pid} AND actor = 'pg_test'"))
        .unwrap();
    assert_eq!(rows, Some(1));
}
