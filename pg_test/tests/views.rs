//! The read-only views and functions, against a real server with real client sessions.
//! Run through `./dev.sh test` (which starts the cluster); one test at a time.

use dbconn_guard_integration::*;
use postgres::Client;
use std::collections::BTreeSet;
use std::thread;
use std::time::Duration;

/// (pid, root_pid, depth, path, root_blocked_count, root_application) of blocking_chains().
type ChainRow = (i32, Option<i32>, Option<i32>, Vec<i32>, i64, Option<String>);

fn admin() -> Client {
    connect("it_admin")
}

#[test]
fn connection_analysis_groups_real_sessions() {
    let app = "it_ca";
    let mut idles = Vec::new();
    for _ in 0..3 {
        idles.push(idle(app));
        thread::sleep(Duration::from_millis(30)); // distinct state_change, oldest first
    }
    let mut in_xact = Vec::new();
    for _ in 0..2 {
        in_xact.push(idle_in_transaction(app, "SELECT 1"));
    }
    let (active_pid, active) = in_background(app, "", "SELECT pg_sleep(30)");
    let mut a = admin();
    wait_until(
        &mut a,
        &format!("SELECT state = 'active' FROM pg_stat_activity WHERE pid = {active_pid}"),
        Duration::from_secs(10),
    );

    let rows = a
        .query(
            "SELECT state, connection_count, pids, oldest_xact_age_seconds IS NOT NULL, \
                    datname, usename, client_addr::text, avg_age_seconds <= max_age_seconds \
               FROM dbconn_guard.connection_analysis WHERE application_name = $1 ORDER BY state",
            &[&app],
        )
        .unwrap();
    let got: Vec<(String, i64, Vec<i32>, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let mut xact_pids: Vec<i32> = in_xact.iter().map(|(_, p)| *p).collect();
    // both began at almost the same moment: compare as a set, order is checked for idle
    let xact_row_pids: BTreeSet<i32> = got[2].2.iter().copied().collect();
    xact_pids.sort();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], ("active".into(), 1, vec![active_pid], true));
    assert_eq!(
        got[1],
        (
            "idle".into(),
            3,
            idles.iter().map(|(_, p)| *p).collect(),
            false
        )
    );
    assert_eq!(
        (got[2].0.as_str(), got[2].1, got[2].3),
        ("idle in transaction", 2, true)
    );
    assert_eq!(xact_row_pids, xact_pids.into_iter().collect());
    for r in &rows {
        assert_eq!(r.get::<_, String>(4), "postgres");
        assert_eq!(r.get::<_, String>(5), "postgres");
        assert_eq!(r.get::<_, String>(6), "127.0.0.1/32");
        assert!(r.get::<_, bool>(7));
    }

    // ages agree with pg_stat_activity
    let (max_age, expected): (f64, f64) = {
        let r = a
            .query_one(
                "SELECT (SELECT max_age_seconds FROM dbconn_guard.connection_analysis WHERE application_name = $1 AND state = 'idle'), \
                        (SELECT extract(epoch FROM clock_timestamp() - min(state_change))::float8 FROM pg_stat_activity \
                          WHERE application_name = $1 AND state = 'idle')",
                &[&app],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        (max_age - expected).abs() < 0.5,
        "max_age {max_age} vs {expected}"
    );

    terminate(&mut a, &[active_pid]);
    let _ = active.join();
}

#[test]
fn utilization_counts_client_backends_against_max_connections() {
    let mut a = admin();
    // a session of an earlier test may still be exiting: the count before must hold still
    // (three reads 100 ms apart), or a session that exits in between reads as one less
    let clients_now = |a: &mut Client| -> i64 {
        a.query_one("SELECT client_backends FROM dbconn_guard.utilization", &[])
            .unwrap()
            .get(0)
    };
    let mut before = clients_now(&mut a);
    let mut still = 0;
    let settle = std::time::Instant::now();
    while still < 2 && settle.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(100));
        let n = clients_now(&mut a);
        still = if n == before { still + 1 } else { 0 };
        before = n;
    }
    let extra: Vec<_> = (0..5).map(|_| idle("it_util")).collect();
    let r = a
        .query_one(
            "SELECT u.client_backends, u.idle, u.max_connections, u.superuser_reserved_connections, u.available_connections, \
                    u.utilization_pct, dbconn_guard.utilization_pct(), u.hidden_backends, u.other_backends, \
                    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), \
                    (SELECT count(*) FROM pg_stat_activity WHERE backend_type <> 'client backend'), \
                    current_setting('max_connections')::int, u.reserved_connections, \
                    current_setting('reserved_connections', true)::int \
               FROM dbconn_guard.utilization u",
            &[],
        )
        .unwrap();
    let clients: i64 = r.get(0);
    assert_eq!(clients, before + 5);
    assert_eq!(clients, r.get::<_, i64>(9));
    assert!(r.get::<_, i64>(1) >= 5);
    let max: i32 = r.get(2);
    assert_eq!(max, r.get::<_, i32>(11));
    // reserved_connections: PostgreSQL 16 and later (the test cluster sets 2), NULL on 15
    let reserved: Option<i32> = r.get(12);
    assert_eq!(reserved, r.get::<_, Option<i32>>(13));
    let server: i32 = a
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .unwrap()
        .get(0);
    if server >= 160000 {
        assert_eq!(reserved, Some(2), "set by ./dev.sh for the test cluster");
    }
    assert_eq!(
        r.get::<_, i64>(4),
        i64::from(max) - i64::from(r.get::<_, i32>(3)) - i64::from(reserved.unwrap_or(0)) - clients
    );
    let pct = clients as f64 * 100.0 / f64::from(max);
    assert!((r.get::<_, f64>(5) - pct).abs() < 0.01);
    assert!((r.get::<_, f64>(6) - pct).abs() < 1e-9);
    assert_eq!(r.get::<_, i64>(7), 0, "a superuser sees every backend");
    assert_eq!(
        r.get::<_, i64>(8),
        r.get::<_, i64>(10),
        "background processes are counted apart"
    );
    drop(extra);
}

fn pairs_of(a: &mut Client, pids: &[i32]) -> BTreeSet<(i32, i32)> {
    a.query("SELECT blocked_pid, blocking_pid FROM dbconn_guard.blocking_pairs WHERE blocked_pid = ANY($1)", &[&pids])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn blocking_pids_of(a: &mut Client, pids: &[i32]) -> BTreeSet<(i32, i32)> {
    a.query(
        "SELECT p, unnest(pg_blocking_pids(p)) FROM unnest($1::int[]) p",
        &[&pids],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn three_deep_lock_chain() {
    let mut a = admin();
    a.batch_execute(
        "DROP TABLE IF EXISTS it_chain; CREATE TABLE it_chain (id int PRIMARY KEY, v int); \
         INSERT INTO it_chain SELECT g, 0 FROM generate_series(1, 3) g",
    )
    .unwrap();
    // root holds row 1; b holds row 2 and wants 1; c holds 3 and wants 2; d wants 3
    let (root, root_pid) =
        idle_in_transaction("it_chain_root", "UPDATE it_chain SET v = 1 WHERE id = 1");
    let (b, hb) = in_background(
        "it_chain_b",
        "BEGIN; UPDATE it_chain SET v = 2 WHERE id = 2",
        "UPDATE it_chain SET v = 2 WHERE id = 1",
    );
    wait_for_lock_waits(&mut a, &[b]);
    let (c, hc) = in_background(
        "it_chain_c",
        "BEGIN; UPDATE it_chain SET v = 3 WHERE id = 3",
        "UPDATE it_chain SET v = 3 WHERE id = 2",
    );
    wait_for_lock_waits(&mut a, &[c]);
    let (d, hd) = in_background("it_chain_d", "", "UPDATE it_chain SET v = 4 WHERE id = 3");
    wait_for_lock_waits(&mut a, &[b, c, d]);

    let expected: BTreeSet<(i32, i32)> = [(b, root_pid), (c, b), (d, c)].into();
    assert_eq!(pairs_of(&mut a, &[b, c, d]), expected);
    assert_eq!(
        blocking_pids_of(&mut a, &[b, c, d]),
        expected,
        "same pairs as pg_blocking_pids()"
    );

    let r = a
        .query_one(
            "SELECT blocked_user, blocked_application, blocked_state, blocked_query, abs(blocked_wait_seconds - extract(epoch FROM clock_timestamp() - (SELECT waitstart FROM pg_locks l WHERE l.pid = blocked_pid AND NOT l.granted))::float8) < 0.5, \
                    blocking_application, blocking_state, blocking_query, blocking_xact_age_seconds > 0, \
                    locktype, mode, relation, blocked_datname \
               FROM dbconn_guard.blocking_pairs WHERE blocked_pid = $1",
            &[&b],
        )
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "postgres");
    assert_eq!(r.get::<_, String>(1), "it_chain_b");
    assert_eq!(r.get::<_, String>(2), "active");
    assert_eq!(
        r.get::<_, String>(3),
        "UPDATE it_chain SET v = 2 WHERE id = 1"
    );
    assert!(r.get::<_, bool>(4));
    assert_eq!(r.get::<_, String>(5), "it_chain_root");
    assert_eq!(r.get::<_, String>(6), "idle in transaction");
    assert_eq!(
        r.get::<_, String>(7),
        "UPDATE it_chain SET v = 1 WHERE id = 1"
    );
    assert!(r.get::<_, bool>(8));
    assert_eq!(r.get::<_, String>(9), "transactionid");
    assert_eq!(r.get::<_, String>(10), "ShareLock");
    assert_eq!(r.get::<_, Option<String>>(11), None);
    assert_eq!(r.get::<_, String>(12), "postgres");

    let chains: Vec<ChainRow> = a
        .query(
            "SELECT pid, root_pid, depth, path, root_blocked_count, root_application FROM dbconn_guard.blocking_chains() \
              WHERE pid = ANY($1)",
            &[&vec![b, c, d]],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    let root_app = Some("it_chain_root".to_string());
    assert_eq!(
        chains,
        vec![
            (
                b,
                Some(root_pid),
                Some(1),
                vec![b, root_pid],
                3,
                root_app.clone()
            ),
            (
                c,
                Some(root_pid),
                Some(2),
                vec![c, b, root_pid],
                3,
                root_app.clone()
            ),
            (
                d,
                Some(root_pid),
                Some(3),
                vec![d, c, b, root_pid],
                3,
                root_app
            ),
        ]
    );

    terminate(&mut a, &[d, c, b]);
    drop(root);
    for h in [hb, hc, hd] {
        let _ = h.join();
    }
}

#[test]
fn two_sessions_blocked_by_one_root_and_the_seed_query_overreports() {
    let mut a = admin();
    a.batch_execute("DROP TABLE IF EXISTS it_two; CREATE TABLE it_two (id int)")
        .unwrap();
    let (root, root_pid) =
        idle_in_transaction("it_two_root", "LOCK TABLE it_two IN ACCESS EXCLUSIVE MODE");
    let (x, hx) = in_background("it_two_x", "", "SELECT count(*) FROM it_two");
    let (y, hy) = in_background("it_two_y", "", "SELECT count(*) FROM it_two");
    wait_for_lock_waits(&mut a, &[x, y]);

    let expected: BTreeSet<(i32, i32)> = [(x, root_pid), (y, root_pid)].into();
    assert_eq!(pairs_of(&mut a, &[x, y]), expected);
    assert_eq!(blocking_pids_of(&mut a, &[x, y]), expected);
    let modes: Vec<(String, String, String)> = a
        .query("SELECT locktype, mode, relation FROM dbconn_guard.blocking_pairs WHERE blocked_pid = ANY($1)", &[&vec![x, y]])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        modes,
        vec![("relation".into(), "AccessShareLock".into(), "it_two".into()); 2]
    );

    let chains: Vec<(i32, Option<i32>, i64)> = a
        .query("SELECT pid, root_pid, root_blocked_count FROM dbconn_guard.blocking_chains() WHERE pid = ANY($1)", &[&vec![x, y]])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut want = vec![(x, Some(root_pid), 2), (y, Some(root_pid), 2)];
    want.sort();
    assert_eq!(chains, want);

    // The runbook's pg_locks self-join also pairs the two waiters with each other, though
    // neither blocks the other: the reason the view follows pg_blocking_pids() instead.
    let seed: BTreeSet<(i32, i32)> = a
        .query(
            "SELECT blocked_locks.pid, blocking_locks.pid FROM pg_catalog.pg_locks blocked_locks \
             JOIN pg_catalog.pg_locks blocking_locks ON blocking_locks.locktype = blocked_locks.locktype \
              AND blocking_locks.relation IS NOT DISTINCT FROM blocked_locks.relation \
              AND blocking_locks.pid != blocked_locks.pid \
             WHERE NOT blocked_locks.granted AND blocked_locks.pid = ANY($1)",
            &[&vec![x, y]],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(seed.contains(&(x, y)) && seed.contains(&(y, x)), "{seed:?}");

    drop(root);
    for h in [hx, hy] {
        h.join().unwrap().unwrap();
    }
    assert!(pairs_of(&mut a, &[x, y]).is_empty());
}

#[test]
fn soft_block_in_the_lock_queue() {
    let mut a = admin();
    a.batch_execute("DROP TABLE IF EXISTS it_soft; CREATE TABLE it_soft (id int)")
        .unwrap();
    // root reads (AccessShare); w1 wants AccessExclusive and waits; w2 only wants AccessShare,
    // which root does not block, but it queues behind w1: a soft block.
    let (root, root_pid) = idle_in_transaction("it_soft_root", "SELECT count(*) FROM it_soft");
    let (w1, h1) = in_background(
        "it_soft_w1",
        "",
        "BEGIN; LOCK TABLE it_soft IN ACCESS EXCLUSIVE MODE; COMMIT",
    );
    wait_for_lock_waits(&mut a, &[w1]);
    let (w2, h2) = in_background("it_soft_w2", "", "SELECT count(*) FROM it_soft");
    wait_for_lock_waits(&mut a, &[w1, w2]);

    let expected: BTreeSet<(i32, i32)> = [(w1, root_pid), (w2, w1)].into();
    assert_eq!(pairs_of(&mut a, &[w1, w2]), expected);
    assert_eq!(blocking_pids_of(&mut a, &[w1, w2]), expected);
    let (depth, path): (i32, Vec<i32>) = {
        let r = a
            .query_one(
                "SELECT depth, path FROM dbconn_guard.blocking_chains() WHERE pid = $1",
                &[&w2],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((depth, path), (2, vec![w2, w1, root_pid]));
    drop(root);
    h1.join().unwrap().unwrap();
    h2.join().unwrap().unwrap();
}

#[test]
fn leak_suspects_follow_leak_idle_age() {
    let mut a = admin();
    a.batch_execute("SET dbconn_guard.leak_idle_age = '1s'")
        .unwrap();
    let mut sessions: Vec<_> = (0..3).map(|_| idle("it_leak")).collect();
    let (_fresh_xact, _) = idle_in_transaction("it_leak", "SELECT 1");
    thread::sleep(Duration::from_millis(1300));
    let r = a
        .query_one(
            "SELECT idle_count, pids, max_idle_seconds >= 1, client_addr::text FROM dbconn_guard.leak_suspects WHERE application_name = 'it_leak'",
            &[],
        )
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 3);
    assert_eq!(
        r.get::<_, Vec<i32>>(1),
        sessions.iter().map(|(_, p)| *p).collect::<Vec<_>>()
    );
    assert!(r.get::<_, bool>(2));
    assert_eq!(r.get::<_, String>(3), "127.0.0.1/32");

    // a session that does work is no longer suspect
    sessions[0].0.batch_execute("SELECT 1").unwrap();
    let n: i64 = a
        .query_one(
            "SELECT idle_count FROM dbconn_guard.leak_suspects WHERE application_name = 'it_leak'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // and at the default threshold (10 minutes) nothing here is suspect
    a.batch_execute("RESET dbconn_guard.leak_idle_age").unwrap();
    let n: i64 = a
        .query_one(
            "SELECT count(*) FROM dbconn_guard.leak_suspects WHERE application_name = 'it_leak'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

fn check(a: &mut Client, name: &str) -> (String, f64, String) {
    let r = a
        .query_one(
            "SELECT status, value, detail FROM dbconn_guard.health() WHERE check_name = $1",
            &[&name],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[test]
fn health_reacts_to_real_sessions() {
    let mut a = admin();
    a.batch_execute("DROP TABLE IF EXISTS it_health; CREATE TABLE it_health (id int)")
        .unwrap();
    a.batch_execute(
        "SET dbconn_guard.idle_warning_age = '1s'; SET dbconn_guard.idle_warning_count = 2; \
         SET dbconn_guard.idle_in_transaction_warning_age = '1s'; \
         SET dbconn_guard.lock_wait_warning_age = 0; SET dbconn_guard.lock_wait_critical_age = '1s'",
    )
    .unwrap();
    assert_eq!(check(&mut a, "idle_in_transaction").0, "ok");
    let _idle: Vec<_> = (0..3).map(|_| idle("it_health")).collect();
    let (holder, holder_pid) = idle_in_transaction(
        "it_health_root",
        "LOCK TABLE it_health IN ACCESS EXCLUSIVE MODE",
    );
    let (waiter, hw) = in_background("it_health_w", "", "SELECT count(*) FROM it_health");
    wait_for_lock_waits(&mut a, &[waiter]);
    let (status, _, detail) = check(&mut a, "lock_waits");
    assert_eq!(status, "warning", "{detail}");
    thread::sleep(Duration::from_millis(1300));

    let (status, value, _) = check(&mut a, "idle_sessions");
    assert_eq!(status, "warning");
    assert!(value >= 3.0);
    let (status, value, detail) = check(&mut a, "idle_in_transaction");
    assert_eq!((status.as_str(), value), ("warning", 1.0));
    assert!(detail.contains(&holder_pid.to_string()), "{detail}");
    let (status, value, detail) = check(&mut a, "lock_waits");
    assert_eq!((status.as_str(), value), ("critical", 1.0));
    assert!(detail.contains(&waiter.to_string()), "{detail}");
    let worst: String = a
        .query_one("SELECT dbconn_guard.health_status()", &[])
        .unwrap()
        .get(0);
    assert_eq!(worst, "critical");

    drop(holder);
    hw.join().unwrap().unwrap();
    let (status, _, _) = check(&mut a, "lock_waits");
    assert_eq!(status, "ok");
}

#[test]
fn unprivileged_role_sees_no_more_than_pg_stat_activity() {
    let mut a = admin();
    a.batch_execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'it_plain') THEN CREATE ROLE it_plain LOGIN; END IF; END $$; \
         DROP TABLE IF EXISTS it_priv; CREATE TABLE it_priv (id int)",
    )
    .unwrap();
    let secret = "SELECT 'secret-query-text' AS s";
    let (_idle_su, _) = idle_in_transaction("it_priv_su", secret);
    let (root, root_pid) = idle_in_transaction(
        "it_priv_root",
        "LOCK TABLE it_priv IN ACCESS EXCLUSIVE MODE",
    );
    let (w, hw) = in_background("it_priv_w", "", "SELECT count(*) FROM it_priv");
    wait_for_lock_waits(&mut a, &[w]);

    let mut plain = connect_as("it_plain", "it_plain_app");
    let my_pid = pid(&mut plain);
    // connection_analysis: only the role's own session, as in pg_stat_activity
    let users: Vec<Option<String>> = plain
        .query(
            "SELECT DISTINCT usename FROM dbconn_guard.connection_analysis",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(users, vec![Some("it_plain".to_string())]);
    let pids: Vec<i32> = plain
        .query_one("SELECT pids FROM dbconn_guard.connection_analysis", &[])
        .unwrap()
        .get(0);
    assert_eq!(pids, vec![my_pid]);
    // no query text of others anywhere
    for sql in [
        "SELECT coalesce(string_agg(blocked_query || blocking_query, ','), '') FROM dbconn_guard.blocking_pairs",
        "SELECT coalesce(string_agg(coalesce(query, '') || coalesce(root_query, ''), ','), '') FROM dbconn_guard.blocking_chains()",
        "SELECT coalesce(string_agg(detail, ','), '') FROM dbconn_guard.health()",
    ] {
        let text: String = plain.query_one(sql, &[]).unwrap().get(0);
        assert!(!text.contains("secret") && !text.contains("LOCK TABLE") && !text.contains("it_priv"), "{sql}: {text}");
    }
    // pg_locks is public, so the pair itself is visible; its details are not: no state, no
    // ages, no query text of either side, exactly as pg_stat_activity hides them
    let r = plain
        .query_one(
            "SELECT blocking_pid, blocking_state, blocking_query, blocking_state_age_seconds, \
                    blocking_xact_age_seconds, blocked_state, blocked_xact_age_seconds, blocked_query \
               FROM dbconn_guard.blocking_pairs WHERE blocked_pid = $1",
            &[&w],
        )
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), root_pid);
    assert_eq!(r.get::<_, Option<String>>(1), None);
    assert_eq!(
        r.get::<_, Option<String>>(2).as_deref(),
        Some("<insufficient privilege>")
    );
    assert_eq!(
        r.get::<_, Option<f64>>(3),
        None,
        "blocking_state_age_seconds"
    );
    assert_eq!(
        r.get::<_, Option<f64>>(4),
        None,
        "blocking_xact_age_seconds"
    );
    assert_eq!(r.get::<_, Option<String>>(5), None, "blocked_state");
    assert_eq!(r.get::<_, Option<f64>>(6), None, "blocked_xact_age_seconds");
    assert_eq!(
        r.get::<_, Option<String>>(7).as_deref(),
        Some("<insufficient privilege>")
    );
    let r = plain
        .query_one(
            "SELECT root_state, root_state_age_seconds, root_xact_age_seconds, root_query \
               FROM dbconn_guard.blocking_chains() WHERE pid = $1",
            &[&w],
        )
        .unwrap();
    assert_eq!(r.get::<_, Option<String>>(0), None, "root_state");
    assert_eq!(r.get::<_, Option<f64>>(1), None, "root_state_age_seconds");
    assert_eq!(r.get::<_, Option<f64>>(2), None, "root_xact_age_seconds");
    assert_eq!(
        r.get::<_, Option<String>>(3).as_deref(),
        Some("<insufficient privilege>")
    );
    // pg_stat_activity agrees: the other roles' sessions show no address, start or state
    let (visible_addrs, hidden_starts): (i64, i64) = {
        let r = plain
            .query_one(
                "SELECT count(client_addr), count(*) FILTER (WHERE backend_start IS NULL) \
                   FROM pg_stat_activity WHERE pid IN ($1, $2)",
                &[&root_pid, &w],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((visible_addrs, hidden_starts), (0, 2));
    // and leak_suspects, which shows addresses, lists only the role's own sessions
    let others: i64 = plain
        .query_one(
            "SELECT count(*) FROM dbconn_guard.leak_suspects WHERE usename <> 'it_plain'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(others, 0);
    // utilization says what it could not see; every function runs
    let hidden: i64 = plain
        .query_one("SELECT hidden_backends FROM dbconn_guard.utilization", &[])
        .unwrap()
        .get(0);
    assert!(hidden >= 3, "hidden {hidden}");
    plain
        .query("SELECT * FROM dbconn_guard.leak_suspects", &[])
        .unwrap();
    plain
        .query_one(
            "SELECT dbconn_guard.health_status(), dbconn_guard.utilization_pct()",
            &[],
        )
        .unwrap();

    drop(root);
    hw.join().unwrap().unwrap();
}

#[test]
fn views_never_write() {
    let mut a = admin();
    a.batch_execute("SET default_transaction_read_only = on; BEGIN READ ONLY")
        .unwrap();
    query_every_view(&mut a, "in a read-only transaction");
    a.batch_execute("COMMIT").unwrap();
}

#[test]
fn settings_reload_with_alter_system_and_refuse_bad_values() {
    let mut a = admin();
    for sql in [
        "ALTER SYSTEM SET dbconn_guard.warning_pct = 55",
        "ALTER SYSTEM SET dbconn_guard.leak_idle_age = '2min'",
        "SELECT pg_reload_conf()",
    ] {
        a.batch_execute(sql).unwrap();
    }
    let mut fresh = connect("it_guc");
    wait_until(
        &mut fresh,
        "SELECT current_setting('dbconn_guard.warning_pct') = '55'",
        Duration::from_secs(10),
    );
    assert_eq!(
        fresh
            .query_one("SHOW dbconn_guard.leak_idle_age", &[])
            .unwrap()
            .get::<_, String>(0),
        "2min"
    );
    let detail: String = fresh
        .query_one(
            "SELECT detail FROM dbconn_guard.health() WHERE check_name = 'utilization'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(detail.contains("warning at 55%"), "{detail}");

    for (bad, why) in [
        (
            "ALTER SYSTEM SET dbconn_guard.warning_pct = 101",
            &["outside the valid range"][..],
        ),
        (
            "ALTER SYSTEM SET dbconn_guard.leak_idle_age = '-5s'",
            &["outside the valid range"],
        ),
        (
            "ALTER SYSTEM SET dbconn_guard.leak_idle_age = 'soon'",
            &["invalid value"],
        ),
        // PostgreSQL 15 and 18 word this one differently
        (
            "ALTER SYSTEM SET dbconn_guard.no_such_thing = 1",
            &[
                "unrecognized configuration parameter",
                "invalid configuration parameter name",
            ],
        ),
    ] {
        let err = a.batch_execute(bad).expect_err(bad);
        let msg = err
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| err.to_string());
        assert!(why.iter().any(|w| msg.contains(w)), "{bad}: {msg}");
    }
    assert_eq!(
        a.query_one("SHOW dbconn_guard.warning_pct", &[])
            .unwrap()
            .get::<_, String>(0),
        "55"
    );
    for sql in [
        "ALTER SYSTEM RESET dbconn_guard.warning_pct",
        "ALTER SYSTEM RESET dbconn_guard.leak_idle_age",
        "SELECT pg_reload_conf()",
    ] {
        a.batch_execute(sql).unwrap();
    }
}

#[test]
fn counting_pairs_reads_only_the_edges_and_filters_on_both_sides_stay_hash_joins() {
    let mut a = connect("it_v_plan");
    let plan = |a: &mut Client, sql: &str| -> String {
        a.query(&format!("EXPLAIN (COSTS OFF) {sql}"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // what a dashboard counts, and who blocks the most: the lock manager only
    for sql in [
        "SELECT count(*) FROM dbconn_guard.blocking_pairs",
        "SELECT blocking_pid, count(*) FROM dbconn_guard.blocking_pairs GROUP BY 1",
    ] {
        let p = plan(&mut a, sql);
        assert!(p.contains("_blocking_edges"), "{p}");
        assert!(
            !p.contains("_blocking_sessions") && !p.contains("_blocking_locks"),
            "{sql}: joins not left out:\n{p}"
        );
    }
    // a filter on each side's columns: no nested loop over every pair
    let p = plan(
        &mut a,
        "SELECT * FROM dbconn_guard.blocking_pairs WHERE blocked_application = 'x' AND blocking_application = 'y'",
    );
    assert!(!p.contains("Nested Loop"), "{p}");
}
