//! The sampled history (`dbconn_guard.history`, `history_by_group`), against a real server with
//! real sessions: what a sample counts, its alignment to the wall clock, the top groups and the
//! remainder, terminations by rule, privileges, and the ring's bounds in a server of its own.

use dbconn_guard_integration::*;
use postgres::Client;
use std::thread;
use std::time::Duration;

/// Waits until the worker has taken a sample after this moment (by the server's clock); returns
/// that moment, for queries of the samples after it.
fn next_samples(a: &mut Client, n: i64) -> String {
    let t0: String = a
        .query_one("SELECT clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    wait_until(
        a,
        &format!("SELECT count(*) >= {n} FROM dbconn_guard.history WHERE time > '{t0}'"),
        Duration::from_secs(10 + 2 * n as u64),
    );
    t0
}

#[test]
fn a_sample_counts_real_sessions_by_state_and_lock_waits() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.sample_interval", "1s"),
            ("compute_query_id", "on"),
        ],
    );
    let idle: Vec<_> = (0..3).map(|_| stale_idle("it_h_idle")).collect();
    let (_iit, _) = idle_in_transaction_as(APP_ROLE, "it_h_iit");
    let mut ab = connect_as(APP_ROLE, "it_h_iit");
    ab.batch_execute("BEGIN").unwrap();
    assert!(ab.batch_execute("SELECT 1/0").is_err());
    // a lock wait: a holder idle in transaction, a waiter behind it
    a.batch_execute("DROP TABLE IF EXISTS it_h_lock; CREATE TABLE it_h_lock(i int)")
        .unwrap();
    let mut holder = connect_as("postgres", "it_h_holder");
    let holder_pid = pid(&mut holder);
    // (its last statement through the simple protocol: before PostgreSQL 18, a statement run
    // through the extended one leaves no query id in pg_stat_activity once it is done)
    holder.batch_execute("BEGIN").unwrap();
    holder
        .batch_execute("LOCK TABLE it_h_lock IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let holder_query_id: i64 = a
        .query_one(
            "SELECT query_id FROM pg_stat_activity WHERE pid = $1",
            &[&holder_pid],
        )
        .unwrap()
        .get(0);
    let (waiter, h) = in_background("it_h_waiter", "", "SELECT count(*) FROM it_h_lock");
    wait_for_lock_waits(&mut a, &[waiter]);
    thread::sleep(Duration::from_millis(1100));
    let t0 = next_samples(&mut a, 1);

    let r = a
        .query_one(
            &format!(
                "SELECT pg_typeof(time)::text, idle, idle_in_transaction, idle_in_transaction_aborted, \
                        lock_waiters, longest_lock_wait_seconds, longest_idle_in_transaction_seconds, \
                        oldest_xact_age_seconds, client_backends, \
                        active + idle + idle_in_transaction + idle_in_transaction_aborted + other_states, \
                        max_connections, available_connections, utilization_pct, \
                        (extract(epoch FROM time)::numeric % 1)::float8, \
                        (SELECT setting::int FROM pg_settings WHERE name = 'max_connections') \
                   FROM dbconn_guard.history WHERE time > '{t0}' ORDER BY time LIMIT 1"
            ),
            &[],
        )
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "timestamp with time zone");
    assert!(r.get::<_, i64>(1) >= 3, "idle");
    assert!(
        r.get::<_, i64>(2) >= 2,
        "idle in transaction: the holder and one session"
    );
    assert!(r.get::<_, i64>(3) >= 1, "aborted");
    assert!(r.get::<_, i64>(4) >= 1, "lock waiters");
    assert!(r.get::<_, f64>(5) >= 1.0, "the wait lasted a second");
    assert!(
        r.get::<_, f64>(6) >= 1.0,
        "idle in transaction for a second"
    );
    assert!(r.get::<_, f64>(7) >= 1.0, "oldest transaction");
    assert_eq!(r.get::<_, i64>(8), r.get::<_, i64>(9), "states add up");
    assert_eq!(r.get::<_, i32>(10), r.get::<_, i32>(14));
    assert!(r.get::<_, i64>(11) < i64::from(r.get::<_, i32>(10)));
    assert!(r.get::<_, f64>(12) > 0.0);
    // aligned to the wall clock: the worker wakes at the whole second, reads, records
    let frac: f64 = r.get(13);
    assert!(frac < 0.5, "sample {frac}s past the second");

    // the groups: it_h_idle's three idle sessions, and each sample's rows add up
    let g: i64 = a
        .query_one(
            &format!(
                "SELECT idle FROM dbconn_guard.history_by_group \
                  WHERE time = (SELECT min(time) FROM dbconn_guard.history WHERE time > '{t0}') \
                    AND application_name = 'it_h_idle' AND NOT other"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(g, 3);
    // the largest pile-up's root: the holder, one waiter, and the query id pg_stat_activity
    // shows for it (its latest statement's)
    let (top_pid, top_held, top_query_id): (Option<i32>, i64, Option<i64>) = {
        let r = a
            .query_one(
                &format!(
                    "SELECT top_root_pid, top_root_held_up, top_root_query_id FROM dbconn_guard.history \
                      WHERE time > '{t0}' ORDER BY time LIMIT 1"
                ),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((top_pid, top_held), (Some(holder_pid), 1));
    assert_eq!(
        top_query_id,
        Some(holder_query_id),
        "compute_query_id is on"
    );
    // top_blockers counts the samples in which the statement was the top root
    let samples: i64 = a
        .query_one(
            "SELECT samples_as_top_root FROM dbconn_guard.top_blockers_between(now() - interval '1 hour') WHERE query_id = $1",
            &[&top_query_id],
        )
        .unwrap()
        .get(0);
    assert!(samples >= 1, "{samples}");
    let mismatched: i64 = a
        .query_one(
            "SELECT count(*) FROM dbconn_guard.history h \
               LEFT JOIN (SELECT time, sum(connections) AS n, sum(idle) AS idle \
                            FROM dbconn_guard.history_by_group GROUP BY time) g USING (time) \
              WHERE coalesce(g.n, 0) <> h.client_backends OR coalesce(g.idle, 0) <> h.idle",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(mismatched, 0, "every sample's groups add up to its totals");
    // ascending, one row per sample
    let ordered: bool = a
        .query_one(
            "SELECT bool_and(time > prev) FROM (SELECT time, lag(time) OVER () AS prev FROM dbconn_guard.history) s WHERE prev IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(ordered);

    holder.batch_execute("ROLLBACK").unwrap();
    h.join().unwrap().unwrap();
    drop(idle);
    reset_system(&mut a);
}

#[test]
fn terminations_are_counted_by_rule_in_the_next_sample() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.sample_interval", "1s"),
            ("dbconn_guard.idle_in_transaction_timeout", "1s"),
        ],
    );
    let t0 = next_samples(&mut a, 1);
    let (_s, p) = stale_in_transaction("it_h_ended");
    wait_gone(&mut a, p, Duration::from_secs(10));
    next_samples(&mut a, 1);
    let r = a
        .query_one(
            &format!(
                "SELECT sum(terminated_idle_in_transaction_timeout)::bigint, sum(terminated_idle_timeout)::bigint, sum(terminated_manual)::bigint \
                   FROM dbconn_guard.history WHERE time > '{t0}'"
            ),
            &[],
        )
        .unwrap();
    let (iit, idle, manual): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    assert_eq!((iit, idle, manual), (1, 0, 0));
    reset_system(&mut a);
}

#[test]
fn the_top_groups_and_one_remainder_row() {
    let mut a = guard_admin();
    alter_system(&mut a, &[("dbconn_guard.sample_interval", "1s")]);
    // 20 groups of one session each, and one of three: more than the 16 kept
    let mut keep: Vec<_> = (0..20)
        .map(|i| stale_idle(&format!("it_h_g{i:02}")))
        .collect();
    keep.extend((0..3).map(|_| stale_idle("it_h_big")));
    let t0 = next_samples(&mut a, 1);
    let rows = a
        .query(
            &format!(
                "SELECT application_name, other, connections FROM dbconn_guard.history_by_group \
                  WHERE time = (SELECT min(time) FROM dbconn_guard.history WHERE time > '{t0}')"
            ),
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 17, "16 groups and the remainder");
    let first: Option<String> = rows[0].get(0);
    assert_eq!(first.as_deref(), Some("it_h_big"), "largest first");
    let other: Vec<_> = rows.iter().filter(|r| r.get::<_, bool>(1)).collect();
    assert_eq!(other.len(), 1);
    assert!(other[0].get::<_, Option<String>>(0).is_none());
    assert!(
        other[0].get::<_, i64>(2) >= 5,
        "at least 21 groups: 5 or more in the remainder"
    );
    assert!(
        rows.last().unwrap().get::<_, bool>(1),
        "the remainder comes last"
    );
    drop(keep);
    reset_system(&mut a);
}

#[test]
fn a_time_range_returns_exactly_the_samples_the_views_hold_in_it() {
    let mut a = guard_admin();
    alter_system(&mut a, &[("dbconn_guard.sample_interval", "1")]);
    next_samples(&mut a, 4);
    // no further sample while the ranges are compared (the next one is due at the full hour)
    alter_system(&mut a, &[("dbconn_guard.sample_interval", "3600")]);
    thread::sleep(Duration::from_millis(1100));
    // ranges by the samples' own times: all, the whole span, one sample, the inner ones, none
    let ranges = [
        ("'-infinity'", "'infinity'", true),
        (
            "(SELECT min(time) FROM dbconn_guard.history)",
            "(SELECT max(time) FROM dbconn_guard.history)",
            true,
        ),
        (
            "(SELECT max(time) FROM dbconn_guard.history)",
            "(SELECT max(time) FROM dbconn_guard.history)",
            true,
        ),
        (
            "(SELECT min(time) + interval '1 microsecond' FROM dbconn_guard.history)",
            "(SELECT max(time) - interval '1 microsecond' FROM dbconn_guard.history)",
            true,
        ),
        ("now() + interval '1 day'", "'infinity'", false),
        (
            "'-infinity'",
            "(SELECT min(time) - interval '1 second' FROM dbconn_guard.history)",
            false,
        ),
        (
            "(SELECT max(time) FROM dbconn_guard.history)",
            "(SELECT min(time) FROM dbconn_guard.history)",
            false,
        ),
    ];
    for (since, until, some) in ranges {
        for (view, f) in [
            ("history", "history_between"),
            ("history_by_group", "history_by_group_between"),
        ] {
            let r = a
                .query_one(
                    &format!(
                        "WITH r AS (SELECT ({since})::timestamptz AS s, ({until})::timestamptz AS u), \
                              f AS (SELECT h.* FROM r, dbconn_guard.{f}(r.s, r.u) h), \
                              v AS (SELECT h.* FROM r, dbconn_guard.{view} h WHERE h.time BETWEEN r.s AND r.u) \
                         SELECT (SELECT count(*) FROM f), \
                                (SELECT count(*) FROM f) = (SELECT count(*) FROM v) \
                                AND NOT EXISTS (SELECT * FROM v EXCEPT ALL SELECT * FROM f)"
                    ),
                    &[],
                )
                .unwrap();
            let (n, same): (i64, bool) = (r.get(0), r.get(1));
            assert!(
                same,
                "{f}({since}, {until}) differs from {view} in that range"
            );
            assert_eq!(n > 0, some, "{f}({since}, {until}): {n} rows");
        }
    }
    let none: i64 = a
        .query_one(
            "SELECT count(*) FROM dbconn_guard.history_between(NULL)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(none, 0, "a NULL bound: no rows (the function is strict)");
    reset_system(&mut a);
}

#[test]
fn the_history_is_for_monitoring_roles_only() {
    let mut a = guard_admin();
    ensure_role(&mut a, "it_h_plain", "");
    ensure_role(&mut a, "it_h_monitor", "GRANT pg_monitor TO it_h_monitor");
    let mut plain = connect_as("it_h_plain", "it_h_plain");
    for view in ["history", "history_by_group"] {
        let e = plain
            .query(&format!("SELECT * FROM dbconn_guard.{view}"), &[])
            .expect_err("PUBLIC may not read the history");
        assert!(
            db_error(&e).contains("permission denied"),
            "{}",
            db_error(&e)
        );
        let e = plain
            .query(&format!("SELECT * FROM dbconn_guard._{view}()"), &[])
            .expect_err("nor call its function");
        assert!(
            db_error(&e).contains("permission denied"),
            "{}",
            db_error(&e)
        );
    }
    for f in ["history_between", "history_by_group_between"] {
        let e = plain
            .query(&format!("SELECT * FROM dbconn_guard.{f}('-infinity')"), &[])
            .expect_err("nor the range functions");
        assert!(
            db_error(&e).contains("permission denied"),
            "{}",
            db_error(&e)
        );
    }
    let mut mon = connect_as("it_h_monitor", "it_h_monitor");
    mon.query(
        "SELECT * FROM dbconn_guard.history_by_group_between(now() - interval '1 hour', now())",
        &[],
    )
    .unwrap();
    let n: i64 = mon
        .query_one("SELECT count(*) FROM dbconn_guard.history", &[])
        .unwrap()
        .get(0);
    assert!(n > 0, "pg_monitor reads the samples");
    mon.query_one("SELECT count(*) FROM dbconn_guard.history_by_group", &[])
        .unwrap();
}

#[test]
fn sample_interval_is_validated_and_the_old_value_stays() {
    let mut a = guard_admin();
    for bad in ["0", "500ms", "2h", "often"] {
        let e = a
            .batch_execute(&format!(
                "ALTER SYSTEM SET dbconn_guard.sample_interval = '{bad}'"
            ))
            .expect_err(bad);
        assert!(
            db_error(&e).contains("sample_interval"),
            "{bad}: {}",
            db_error(&e)
        );
    }
    let v: String = a
        .query_one("SHOW dbconn_guard.sample_interval", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "10s");
    // a server-start setting cannot change at a reload
    let ctx: String = a
        .query_one(
            "SELECT string_agg(name || '=' || context, ',' ORDER BY name) FROM pg_settings WHERE name IN ('dbconn_guard.history_size', 'dbconn_guard.history_groups')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        ctx,
        "dbconn_guard.history_groups=postmaster,dbconn_guard.history_size=postmaster"
    );
}

#[test]
fn the_ring_keeps_history_size_samples_in_the_memory_it_says() {
    let cluster = Cluster::start(
        "history",
        ports::HISTORY_RING,
        &[
            "shared_preload_libraries = 'dbconn_guard'",
            "dbconn_guard.history_size = 4",
            "dbconn_guard.history_groups = 1",
            "dbconn_guard.sample_interval = 1",
        ],
    );
    let mut c = cluster.connect("postgres", "postgres", "it_h_ring");
    c.batch_execute("CREATE EXTENSION dbconn_guard").unwrap();
    let mut others: Vec<_> = (0..3)
        .map(|i| cluster.connect("postgres", "postgres", &format!("it_h_ring{i}")))
        .collect();
    wait_until(
        &mut c,
        "SELECT count(*) = 4 FROM dbconn_guard.history",
        Duration::from_secs(15),
    );
    let first: String = c
        .query_one("SELECT min(time)::text FROM dbconn_guard.history", &[])
        .unwrap()
        .get(0);
    // the ring wraps: the oldest sample gives way, never more than 4
    wait_until(
        &mut c,
        &format!("SELECT min(time) > '{first}' FROM dbconn_guard.history"),
        Duration::from_secs(10),
    );
    let n: i64 = c
        .query_one("SELECT count(*) FROM dbconn_guard.history", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 4);
    // one group per sample and the remainder
    let most: i64 = c
        .query_one(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM dbconn_guard.history_by_group GROUP BY time) s",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(most, 2);
    // the memory it takes, as docs/reference.md gives it: 32 + samples × (168 + 224 × (groups + 1))
    let size: i64 = c
        .query_one(
            "SELECT size FROM pg_shmem_allocations WHERE name = 'dbconn_guard history'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(size, 32 + 4 * (168 + 224 * 2));
    others.clear();
}

#[test]
fn an_empty_application_name_is_a_name_of_its_own_and_not_a_growing_leak() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.sample_interval", "1s"),
            ("dbconn_guard.leak_trend_samples", "3"),
        ],
    );
    // drivers that set no application_name: '' in pg_stat_activity, not NULL
    let unnamed: Vec<_> = (0..2).map(|_| stale_idle("")).collect();
    next_samples(&mut a, 4);
    let r = a
        .query_one(
            "SELECT idle, application_name IS NULL FROM dbconn_guard.history_by_group \
              WHERE time = (SELECT max(time) FROM dbconn_guard.history) AND application_name = '' \
                AND usename = 'it_w_app' AND NOT other",
            &[],
        )
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, bool>(1)), (2, false));
    // a steady count is no growing leak
    let growing: i64 = a
        .query_one(
            "SELECT count(*) FROM dbconn_guard.leak_suspects WHERE application_name = '' AND reason = 'growing'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(growing, 0);
    if let Ok(log) = std::env::var("DBCONN_GUARD_TEST_LOG") {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            !text.lines().any(|l| l.contains("connection leak suspect")
                && l.contains("application=\"\"")
                && l.contains("growing")),
            "no growing-leak warning for the unnamed sessions"
        );
    }
    drop(unnamed);
    reset_system(&mut a);
}

/// The rule table is the one list of rules: the audit table's CHECK list and the rule columns of
/// `history` and `history_between()`, as the server has them, are its names and its columns,
/// in its order.
#[test]
fn the_audit_check_list_and_the_history_columns_are_the_rule_tables() {
    use dbconn_guard_core::rules::RULE_TABLE;
    let mut a = guard_admin();
    let check: String = a
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = 'dbconn_guard.terminations'::regclass AND contype = 'c' \
               AND pg_get_constraintdef(oid) LIKE '%rule%'",
            &[],
        )
        .unwrap()
        .get(0);
    // CHECK ((rule = ANY (ARRAY['idle_timeout'::text, ...])))
    let mut in_check: Vec<&str> = check.split('\'').skip(1).step_by(2).collect();
    let mut names: Vec<&str> = RULE_TABLE.iter().map(|r| r.name).collect();
    in_check.sort_unstable();
    names.sort_unstable();
    assert_eq!(in_check, names, "{check}");
    let columns: Vec<&str> = RULE_TABLE.iter().map(|r| r.history_column).collect();
    for q in [
        "SELECT * FROM dbconn_guard.history",
        "SELECT * FROM dbconn_guard.history_between(now() - interval '1 hour', now())",
    ] {
        let st = a.prepare(q).unwrap();
        let rule_columns: Vec<&str> = st
            .columns()
            .iter()
            .map(|c| c.name())
            .filter(|n| n.starts_with("terminated_") || n.starts_with("cancelled_"))
            .collect();
        assert_eq!(rule_columns, columns, "{q}");
    }
}

/// The connection churn: connections that authenticated and sessions that ended, per sample in
/// the history, and as counters in the metrics.
#[test]
fn the_churn_counts_the_connections_that_arrived_and_the_sessions_that_ended() {
    let mut a = guard_admin();
    alter_system(&mut a, &[("dbconn_guard.sample_interval", "1s")]);
    let counter = |a: &mut Client, name: &str| -> f64 {
        a.query_one(
            "SELECT coalesce(sum(value), -1)::float8 FROM dbconn_guard.metrics() WHERE metric LIKE $1",
            &[&format!("{name}%")],
        )
        .unwrap()
        .get(0)
    };
    // a sample before the churn, so that the samples after t0 count all of it
    let t0 = next_samples(&mut a, 1);
    let opened_before = counter(&mut a, "dbconn_guard_connections_opened");
    let ended_before = counter(&mut a, "dbconn_guard_sessions_ended");
    assert!(
        opened_before >= 1.0,
        "this test's own sessions: {opened_before}"
    );
    // twelve connections arrive, and five of them leave
    let mut sessions: Vec<_> = (0..12).map(|_| stale_idle("it_h_churn")).collect();
    let gone: Vec<i32> = sessions.drain(7..).map(|(_, p)| p).collect();
    for p in gone {
        wait_gone(&mut a, p, Duration::from_secs(10));
    }
    thread::sleep(Duration::from_millis(1100));
    next_samples(&mut a, 1);
    let (new, ended): (i64, i64) = {
        let r = a
            .query_one(
                &format!(
                    "SELECT sum(new_connections)::int8, sum(ended_sessions)::int8 FROM dbconn_guard.history WHERE time > '{t0}'"
                ),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    // (other sessions come and go too: the worker's probes of alter_system, this test's own)
    assert!(
        new >= 12,
        "12 connections arrived: the history counted {new}"
    );
    assert!(ended >= 5, "5 sessions ended: the history counted {ended}");
    let opened = counter(&mut a, "dbconn_guard_connections_opened") - opened_before;
    let ended_metric = counter(&mut a, "dbconn_guard_sessions_ended") - ended_before;
    assert!(
        opened >= 12.0,
        "the counter of connections rose by {opened}"
    );
    assert!(
        ended_metric >= 5.0,
        "the counter of ended sessions rose by {ended_metric}"
    );
    drop(sessions);
}
