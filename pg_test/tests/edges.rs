//! Exact at the edges: waits that make no pile-up (a concurrent index build waiting for older
//! snapshots), a parallel query that waits through its workers (one session, shown under its
//! leader; a deadlock between two such groups is a cycle with no root), what a dry run
//! recorded ended once the dry run is off, `terminate_idle()` behind the same gates as the
//! rules, and a guard whose database a plain role owns that this owner cannot switch off.

use dbconn_guard_integration::*;
use postgres::Client;
use std::thread;
use std::time::Duration;

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn a_concurrent_index_build_waiting_for_older_snapshots_is_no_pile_up() {
    let mut a = guard_admin();
    ensure_role(&mut a, "it_e_builder", "");
    // its own schema (CREATE INDEX needs CREATE there) and table
    a.batch_execute(
        "DROP SCHEMA IF EXISTS it_e_builder CASCADE; \
         CREATE SCHEMA it_e_builder AUTHORIZATION it_e_builder; \
         CREATE TABLE it_e_builder.own (id int); \
         INSERT INTO it_e_builder.own SELECT generate_series(1, 100); \
         ALTER TABLE it_e_builder.own OWNER TO it_e_builder",
    )
    .unwrap();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.blocker_timeout", "1s"),
            ("dbconn_guard.cancel_active_blockers", "on"),
            ("dbconn_guard.idle_in_transaction_timeout", "1h"),
            (
                "dbconn_guard.idle_in_transaction_timeout_overrides",
                "app:it_e_reporting=0",
            ),
            ("dbconn_guard.naptime", "200ms"),
        ],
    );
    // another role's REPEATABLE READ reader, idle in its transaction and exempted from the
    // idle-in-transaction rule, and another role's running query: both hold snapshots
    let mut reader = connect_as(APP_ROLE, "it_e_reporting");
    let reader_pid = pid(&mut reader);
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .unwrap();
    let (active_pid, active) = in_background_as(APP_ROLE, "it_e_active", "SELECT pg_sleep(5)");
    wait_until(
        &mut a,
        &format!("SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = {active_pid} AND state = 'active'"),
        Duration::from_secs(10),
    );
    // a plain role builds an index on its own table: it waits for both snapshots
    let (builder_pid, builder) = in_background_as(
        "it_e_builder",
        "it_e_builder",
        "CREATE INDEX CONCURRENTLY own_idx ON it_e_builder.own (id)",
    );
    wait_until(
        &mut a,
        &format!(
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = {builder_pid} AND wait_event = 'virtualxid'"
        ),
        Duration::from_secs(20),
    );
    // its owner's ALTER TABLE queues behind the build (a relation wait that counts): the
    // build, waiting for snapshots itself, is held up, not the root of a pile-up
    let (alter_pid, alter) = in_background_as(
        "it_e_builder",
        "it_e_alter",
        "ALTER TABLE it_e_builder.own ADD COLUMN x int",
    );
    wait_for_lock_waits(&mut a, &[alter_pid]);
    thread::sleep(Duration::from_secs(3));
    assert!(
        alive(&mut a, reader_pid),
        "a virtualxid wait made the exempted reader a root blocker"
    );
    assert!(
        audit(&mut a, builder_pid).is_empty(),
        "the index build was cancelled"
    );
    assert!(audit(&mut a, reader_pid).is_empty());
    assert!(audit(&mut a, active_pid).is_empty());
    let (r, _c) = active.join().unwrap();
    r.unwrap_or_else(|e| panic!("the running query was cancelled: {}", db_error(&e)));
    // the reader commits: the build completes
    reader.batch_execute("COMMIT").unwrap();
    let (r, _c) = builder.join().unwrap();
    r.unwrap_or_else(|e| panic!("the index build: {}", db_error(&e)));
    let (r, _c) = alter.join().unwrap();
    r.unwrap_or_else(|e| panic!("the ALTER TABLE: {}", db_error(&e)));
    reset_system(&mut a);
}

#[test]
fn a_parallel_query_waiting_through_its_workers_is_one_session_shown_under_its_leader() {
    let mut a = guard_admin();
    a.batch_execute(&format!(
        "DROP TABLE IF EXISTS it_e_par, it_e_locked; \
         CREATE TABLE it_e_par AS SELECT g FROM generate_series(1, 20000) g; \
         ALTER TABLE it_e_par SET (parallel_workers = 2); \
         CREATE TABLE it_e_locked (x int); \
         CREATE OR REPLACE FUNCTION it_e_peek() RETURNS bigint LANGUAGE plpgsql PARALLEL SAFE \
           AS $$ BEGIN RETURN (SELECT count(*) FROM it_e_locked); END $$; \
         GRANT SELECT ON it_e_par TO {APP_ROLE}; GRANT SELECT, UPDATE ON it_e_locked TO {APP_ROLE}; \
         ANALYZE it_e_par"
    ))
    .unwrap();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.blocker_timeout", "1s"),
            ("dbconn_guard.blocker_min_waiters", "2"),
            ("dbconn_guard.naptime", "200ms"),
        ],
    );
    let (mut root_c, root) = idle_in_transaction_as(APP_ROLE, "it_e_root");
    root_c
        .batch_execute("LOCK TABLE it_e_locked IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    // a parallel query whose two workers (not its leader) wait for the lock
    let (leader, query) = in_background_as(
        APP_ROLE,
        "it_e_parallel",
        "SET max_parallel_workers_per_gather = 2; SET parallel_leader_participation = off; \
         SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; \
         SELECT sum(it_e_peek()) FROM it_e_par",
    );
    wait_until(
        &mut a,
        &format!(
            "SELECT count(*) = 2 FROM pg_stat_activity WHERE leader_pid = {leader} AND pid <> {leader} AND wait_event_type = 'Lock'"
        ),
        Duration::from_secs(20),
    );
    // pg_blocking_pids() reports the workers' blocker under the leader too: so does the view
    let expected: Vec<i32> = a
        .query(
            &format!("SELECT pid FROM pg_stat_activity WHERE {root} = ANY(pg_blocking_pids(pid)) ORDER BY pid"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(expected.contains(&leader), "{expected:?}");
    let pairs: Vec<i32> = a
        .query(
            &format!("SELECT blocked_pid FROM dbconn_guard.blocking_pairs WHERE blocking_pid = {root} ORDER BY blocked_pid"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pairs, expected, "blocking_pairs equals pg_blocking_pids()");
    let leader_root: Option<i32> = a
        .query_one(
            &format!("SELECT root_pid FROM dbconn_guard.blocking_chains() WHERE pid = {leader}"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(leader_root, Some(root), "the leader's chain names the root");

    // one parallel query is one waiting session: two waiters are asked for
    thread::sleep(Duration::from_secs(3));
    assert!(
        alive(&mut a, root),
        "a parallel query's workers were counted as separate waiters"
    );
    // a second session waits: now two
    let (plain, plain_h) =
        in_background_as(APP_ROLE, "it_e_plain", "SELECT count(*) FROM it_e_locked");
    wait_for_lock_waits(&mut a, &[plain]);
    wait_gone(&mut a, root, Duration::from_secs(10));
    let rows = audit(&mut a, root);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "blocker_timeout");
    for (h, what) in [(query, "the parallel query"), (plain_h, "the plain waiter")] {
        let (r, _c) = h.join().unwrap();
        r.unwrap_or_else(|e| panic!("{what}: {}", db_error(&e)));
    }
    reset_system(&mut a);
}

#[test]
fn a_deadlock_between_two_parallel_groups_is_a_cycle_under_the_leaders_with_no_root() {
    let mut a = guard_admin();
    // the deadlock detector is held off for this role (its parallel workers take the
    // leader's settings), so that the cycle stays for the test to see it
    ensure_role(&mut a, "it_e_dl", "");
    a.batch_execute(
        "ALTER ROLE it_e_dl SET deadlock_timeout = '10min'; \
         DROP TABLE IF EXISTS it_e_dl_par, it_e_dl_a, it_e_dl_b; \
         CREATE TABLE it_e_dl_par AS SELECT g FROM generate_series(1, 20000) g; \
         ALTER TABLE it_e_dl_par SET (parallel_workers = 2); \
         CREATE TABLE it_e_dl_a (x int); CREATE TABLE it_e_dl_b (x int); \
         CREATE OR REPLACE FUNCTION it_e_dl_peek_a() RETURNS bigint LANGUAGE plpgsql PARALLEL SAFE \
           AS $$ BEGIN RETURN (SELECT count(*) FROM it_e_dl_a); END $$; \
         CREATE OR REPLACE FUNCTION it_e_dl_peek_b() RETURNS bigint LANGUAGE plpgsql PARALLEL SAFE \
           AS $$ BEGIN RETURN (SELECT count(*) FROM it_e_dl_b); END $$; \
         GRANT SELECT ON it_e_dl_par TO it_e_dl; GRANT ALL ON it_e_dl_a, it_e_dl_b TO it_e_dl; \
         ANALYZE it_e_dl_par",
    )
    .unwrap();
    // the root-blocker rule at its most eager: it must find no root in a cycle
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.blocker_timeout", "1s"),
            ("dbconn_guard.blocker_min_waiters", "1"),
            ("dbconn_guard.cancel_active_blockers", "on"),
            ("dbconn_guard.naptime", "200ms"),
        ],
    );
    // each leader holds its table, then runs a parallel query whose workers (not the leader)
    // read the other's table
    let parallel = "SET max_parallel_workers_per_gather = 2; SET parallel_leader_participation = off; \
         SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; ";
    let group = |mine: &str, app: &str| {
        let mut c = connect_as("it_e_dl", app);
        let p = pid(&mut c);
        c.batch_execute(&format!(
            "{parallel} BEGIN; LOCK TABLE it_e_dl_{mine} IN ACCESS EXCLUSIVE MODE"
        ))
        .unwrap();
        (c, p)
    };
    let (mut ca, la) = group("a", "it_e_dl_a");
    let (mut cb, lb) = group("b", "it_e_dl_b");
    // a failed assertion leaves no cycle behind for the next test
    struct EndOnDrop(Vec<i32>);
    impl Drop for EndOnDrop {
        fn drop(&mut self) {
            terminate(&mut guard_admin(), &self.0);
        }
    }
    let _end = EndOnDrop(vec![la, lb]);
    let qa =
        thread::spawn(move || ca.batch_execute("SELECT sum(it_e_dl_peek_b()) FROM it_e_dl_par"));
    let qb =
        thread::spawn(move || cb.batch_execute("SELECT sum(it_e_dl_peek_a()) FROM it_e_dl_par"));
    wait_until(
        &mut a,
        &format!(
            "SELECT count(*) = 4 FROM pg_stat_activity WHERE leader_pid IN ({la}, {lb}) \
               AND pid NOT IN ({la}, {lb}) AND wait_event_type = 'Lock'"
        ),
        Duration::from_secs(20),
    );
    let members: Vec<i32> = first_column(
        &mut a,
        &format!("SELECT pid FROM pg_stat_activity WHERE leader_pid IN ({la}, {lb}) OR pid IN ({la}, {lb})"),
    );
    assert_eq!(
        members.len(),
        6,
        "two leaders and four workers: {members:?}"
    );
    // the pairs are pg_blocking_pids() for every pid, the leaders included: each group is
    // blocked by the other's leader
    let pairs = |a: &mut Client, sql: &str| -> Vec<(i32, i32)> {
        let mut v: Vec<(i32, i32)> = a
            .query(sql, &[&members])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        v.sort();
        v
    };
    // pg_blocking_pids() names a blocker once per waiting member of a group (the leader's
    // array holds lb twice); a pair is one row
    let mut theirs_distinct = pairs(
        &mut a,
        "SELECT pid, unnest(pg_blocking_pids(pid)) FROM pg_stat_activity WHERE pid = ANY($1)",
    );
    theirs_distinct.dedup();
    let theirs = theirs_distinct;
    let ours = pairs(
        &mut a,
        "SELECT blocked_pid, blocking_pid FROM dbconn_guard.blocking_pairs WHERE blocked_pid = ANY($1)",
    );
    assert_eq!(ours, theirs, "blocking_pairs equals pg_blocking_pids()");
    assert!(
        ours.contains(&(la, lb)) && ours.contains(&(lb, la)),
        "{ours:?}"
    );
    assert!(ours.iter().all(|&(_, k)| k == la || k == lb), "{ours:?}");
    // the chains over those edges: every member is caught in the cycle, with no root
    let roots: Vec<(i32, Option<i32>)> = a
        .query(
            "SELECT pid, root_pid FROM dbconn_guard.blocking_chains() WHERE pid = ANY($1)",
            &[&members],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        roots.iter().any(|&(p, _)| p == la) && roots.iter().any(|&(p, _)| p == lb),
        "both leaders wait: {roots:?}"
    );
    assert!(
        roots.iter().all(|(_, r)| r.is_none()),
        "a cycle has no root: {roots:?}"
    );
    // and the root-blocker rule finds none to end
    thread::sleep(Duration::from_secs(3));
    assert!(
        alive(&mut a, la) && alive(&mut a, lb),
        "a leader of the cycle was ended"
    );
    assert!(audit(&mut a, la).is_empty() && audit(&mut a, lb).is_empty());
    terminate(&mut a, &[la, lb]);
    for q in [qa, qb] {
        assert!(q.join().unwrap().is_err(), "the parallel query was ended");
    }
    a.batch_execute("ALTER ROLE it_e_dl RESET deadlock_timeout")
        .unwrap();
    reset_system(&mut a);
}

#[test]
fn what_a_dry_run_recorded_is_ended_once_the_dry_run_is_switched_off() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.idle_in_transaction_timeout", "1s"),
            ("dbconn_guard.naptime", "200ms"),
            ("dbconn_guard.dry_run", "on"),
        ],
    );
    let (_s, p) = stale_in_transaction("it_e_dry");
    wait_until(
        &mut a,
        &format!("SELECT count(*) = 1 FROM dbconn_guard.terminations WHERE pid = {p} AND dry_run"),
        Duration::from_secs(10),
    );
    thread::sleep(Duration::from_millis(600));
    assert!(alive(&mut a, p), "a dry run ends nothing");
    assert_eq!(audit(&mut a, p).len(), 1, "recorded once");
    alter_system(&mut a, &[("dbconn_guard.dry_run", "off")]);
    wait_gone(&mut a, p, Duration::from_secs(10));
    let rows = audit(&mut a, p);
    assert_eq!(
        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![true, false],
        "the dry run's record, then the termination: {rows:?}"
    );
    reset_system(&mut a);
}

#[test]
fn terminate_idle_obeys_the_gates_of_the_rules_and_bounds_dry_runs() {
    let mut a = guard_admin();
    ensure_role(
        &mut a,
        "it_e_flooder",
        "GRANT dbconn_guard_admin TO it_e_flooder",
    );
    let (_s, p) = stale_idle("it_e_manual");
    let call = |c: &mut Client, extra: &str| {
        c.query(
            &format!("SELECT pid, action FROM dbconn_guard.terminate_idle('0', application_name => 'it_e_manual'{extra})"),
            &[],
        )
    };
    // disabled: refused, nothing ended
    alter_system(&mut a, &[("dbconn_guard.enabled", "off")]);
    let e = call(&mut a, "").expect_err("terminate_idle() while the guard is disabled");
    assert_eq!(
        e.code(),
        Some(&postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
    );
    assert!(
        db_error(&e).contains("dbconn_guard.enabled is off"),
        "{}",
        db_error(&e)
    );
    assert!(alive(&mut a, p));
    assert!(audit(&mut a, p).is_empty());
    // in a dry run: a dry run too
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.enabled", "on"),
            ("dbconn_guard.dry_run", "on"),
        ],
    );
    let rows = call(&mut a, "").unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(1), "dry run: would terminate");
    thread::sleep(Duration::from_millis(300));
    assert!(alive(&mut a, p), "ended in a dry run");
    assert_eq!(
        audit(&mut a, p).iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![true]
    );
    alter_system(&mut a, &[("dbconn_guard.dry_run", "off")]);

    // dry runs in a loop: bounded per role, with a clear error
    let _flood: Vec<(Client, i32)> = (0..24).map(|_| stale_idle("it_e_manual")).collect();
    let mut f = connect_as("it_e_flooder", "it_e_flooder");
    let mut refused = None;
    for n in 0..80 {
        match call(&mut f, ", dry_run => true") {
            Ok(rows) => assert_eq!(rows.len(), 25),
            Err(e) => {
                refused = Some((n, e));
                break;
            }
        }
    }
    let (n, e) = refused.expect("80 dry runs of 25 sessions in a row were all accepted");
    assert_eq!(n, 40, "refused once 1000 rows were recorded in the minute");
    assert_eq!(
        e.code(),
        Some(&postgres::error::SqlState::CONFIGURATION_LIMIT_EXCEEDED)
    );
    assert!(
        db_error(&e).contains("too many dry runs"),
        "{}",
        db_error(&e)
    );
    // a real call of the same role is not bounded (each session ends once)
    let rows = call(&mut f, "").unwrap();
    assert!(rows.iter().all(|r| r.get::<_, String>(1) == "terminated"));
    wait_gone(&mut a, p, Duration::from_secs(10));
    reset_system(&mut a);
}

/// The worker's database owned by a plain role, as when `dbconn_guard.database` names an
/// application's database: its owner cannot switch the guard off.
#[test]
fn the_owner_of_the_guards_database_cannot_switch_the_guard_off() {
    let cluster = Cluster::start(
        "owned",
        ports::OWNED,
        &[
            "shared_preload_libraries = 'dbconn_guard'",
            "dbconn_guard.database = 'appdb'",
            "dbconn_guard.idle_in_transaction_timeout = '2s'",
            "dbconn_guard.naptime = '500ms'",
        ],
    );
    let mut su = cluster.connect("postgres", "postgres", "it_o_su");
    su.batch_execute("CREATE ROLE it_owner LOGIN; CREATE ROLE it_app LOGIN")
        .unwrap();
    su.batch_execute("CREATE DATABASE appdb OWNER it_owner")
        .unwrap();
    let mut su_app = cluster.connect("postgres", "appdb", "it_o_su");
    su_app
        .batch_execute("CREATE EXTENSION dbconn_guard")
        .unwrap();
    wait_until(
        &mut su_app,
        "SELECT running AND extension_ready FROM dbconn_guard.worker_status()",
        Duration::from_secs(30),
    );
    // said loudly: at CREATE EXTENSION, at worker start, in diagnose()
    let log = cluster.log();
    assert!(
        log.contains("(dbconn_guard.database) is owned by \"it_owner\", which is not a superuser"),
        "CREATE EXTENSION did not warn"
    );
    assert!(
        log.contains("dbconn_guard worker: its database \"appdb\" (dbconn_guard.database) is owned by \"it_owner\""),
        "the worker did not warn"
    );
    let row: (String, String) = {
        let r = su_app
            .query_one(
                "SELECT status, finding FROM dbconn_guard.diagnose() WHERE area = 'guard'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(row.0, "warning", "{row:?}");
    assert!(row.1.contains("\"it_owner\""), "{row:?}");
    let stale = |cluster: &Cluster| {
        let mut v = cluster.connect("it_app", "appdb", "it_o_victim");
        let p = pid(&mut v);
        v.batch_execute("BEGIN; SELECT 1").unwrap();
        (v, p)
    };

    // 1. the lock queue: ANALYZE held open (under a client tool's name, which the guard
    // spares), VACUUM FULL queued behind it; every later lock on the table waits
    let mut holder = cluster.connect("it_owner", "appdb", "pg_dump");
    holder
        .batch_execute("BEGIN; ANALYZE dbconn_guard.terminations")
        .unwrap();
    let holder_pid = pid(&mut holder);
    let mut queuer = cluster.connect("it_owner", "appdb", "it_o_vacuum");
    let queuer_pid = pid(&mut queuer);
    let vacuum = thread::spawn(move || {
        let r = queuer.batch_execute("VACUUM FULL dbconn_guard.terminations");
        (r, queuer)
    });
    wait_for_lock_waits(&mut su, &[queuer_pid]);
    let (_v, victim) = stale(&cluster);
    wait_gone(&mut su, victim, Duration::from_secs(15));
    let in_memory: (bool, bool) = {
        let r = su_app
            .query_one(
                "SELECT persisted, rule = 'idle_in_transaction_timeout' FROM dbconn_guard.recent_terminations() WHERE pid = $1",
                &[&victim],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        in_memory,
        (false, true),
        "recorded in memory, not in the table yet"
    );
    let err: String = su_app
        .query_one("SELECT last_error FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0);
    assert!(
        err.contains("could not lock dbconn_guard.terminations"),
        "{err}"
    );
    let pending: f64 = su_app
        .query_one(
            "SELECT value FROM dbconn_guard.metrics() WHERE metric = 'dbconn_guard_audit_records_in_memory'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(pending >= 1.0, "{pending}");
    // the queue goes: the record is written to the table
    su.execute("SELECT pg_terminate_backend($1)", &[&holder_pid])
        .unwrap();
    let (r, q) = vacuum.join().unwrap();
    r.unwrap();
    drop(q);
    wait_until(
        &mut su_app,
        &format!("SELECT count(*) = 1 FROM dbconn_guard.terminations WHERE pid = {victim} AND rule = 'idle_in_transaction_timeout' AND actor = 'worker'"),
        Duration::from_secs(15),
    );
    assert!(su_app
        .query_one(
            "SELECT persisted FROM dbconn_guard.recent_terminations() WHERE pid = $1",
            &[&victim],
        )
        .unwrap()
        .get::<_, bool>(0));

    // 1b. the same queue on pg_depend, which proves the table is the extension's: the last
    // proof stands, and the record goes to the table as usual
    let mut holder = cluster.connect("it_owner", "appdb", "pg_dump");
    holder
        .batch_execute("BEGIN; ANALYZE pg_catalog.pg_depend")
        .unwrap();
    let holder_pid = pid(&mut holder);
    let mut queuer = cluster.connect("it_owner", "appdb", "it_o_vacuum");
    let queuer_pid = pid(&mut queuer);
    let vacuum = thread::spawn(move || {
        let r = queuer.batch_execute("VACUUM FULL pg_catalog.pg_depend");
        (r, queuer)
    });
    wait_for_lock_waits(&mut su, &[queuer_pid]);
    let (_v, victim) = stale(&cluster);
    wait_gone(&mut su, victim, Duration::from_secs(15));
    wait_until(
        &mut su_app,
        &format!("SELECT count(*) = 1 FROM dbconn_guard.terminations WHERE pid = {victim}"),
        Duration::from_secs(15),
    );
    su.execute("SELECT pg_terminate_backend($1)", &[&holder_pid])
        .unwrap();
    let (r, q) = vacuum.join().unwrap();
    r.unwrap();
    drop(q);

    // 2. the owner, with pg_signal_backend, can neither signal the worker nor force the
    // database away from under it
    su.batch_execute("GRANT pg_signal_backend TO it_owner")
        .unwrap();
    let worker: i32 = su_app
        .query_one("SELECT pid FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0);
    let mut owner = cluster.connect("it_owner", "postgres", "it_o_owner");
    owner
        .query_one("SELECT pg_terminate_backend($1)", &[&worker])
        .expect_err("the owner ended the worker");
    drop(su_app);
    // no superuser session left in appdb (its own would make the FORCE fail for another reason)
    wait_until(
        &mut su,
        "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = 'appdb' AND backend_type = 'client backend' AND usename = 'postgres'",
        Duration::from_secs(10),
    );
    let e = owner
        .batch_execute("DROP DATABASE appdb WITH (FORCE)")
        .expect_err("the owner dropped the guard's database");
    assert!(
        db_error(&e).to_lowercase().contains("superuser"),
        "{}",
        db_error(&e)
    );

    // 3. the owner's database settings, at the worker's next start: connections refused, its
    // own role for every session, a 1 ms statement timeout
    owner
        .batch_execute(
            "ALTER DATABASE appdb SET session_authorization = 'it_owner'; \
             ALTER DATABASE appdb SET statement_timeout = '1ms'; \
             ALTER DATABASE appdb ALLOW_CONNECTIONS false",
        )
        .unwrap();
    su.execute("SELECT pg_terminate_backend($1)", &[&worker])
        .unwrap();
    wait_until(
        &mut su,
        &format!("SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'dbconn_guard' AND datname = 'appdb' AND pid <> {worker}"),
        Duration::from_secs(30),
    );
    // a leaked transaction in another database: the guard covers every database
    let mut v = cluster.connect("it_app", "postgres", "it_o_victim");
    let victim = pid(&mut v);
    v.batch_execute("BEGIN; SELECT 1").unwrap();
    wait_gone(&mut su, victim, Duration::from_secs(15));
    su.batch_execute("ALTER DATABASE appdb ALLOW_CONNECTIONS true")
        .unwrap();
    let mut su_app = cluster
        .config("postgres", "appdb", "it_o_su")
        .options("-c statement_timeout=0")
        .connect(postgres::NoTls)
        .unwrap();
    assert_eq!(
        count(
            &mut su_app,
            &format!("SELECT count(*) FROM dbconn_guard.terminations WHERE pid = {victim} AND actor = 'worker'")
        ),
        1,
        "ended and recorded under the owner's settings"
    );
    assert_eq!(
        count(
            &mut su_app,
            "SELECT count(*) FROM dbconn_guard.terminations WHERE actor = 'worker'"
        ),
        3,
        "the audit is whole"
    );
}

/// Sessions spared at every check for a reason that will not change soon (COMMITs waiting for
/// a synchronous standby that is not there, each the root of a pile-up, which is never
/// cancelled) are looked at again on a back-off and logged once; the cap counts sessions ended,
/// so a leaked transaction behind them is ended at once, and the worker does not spin.
#[test]
fn sessions_spared_for_a_lasting_reason_neither_spin_the_worker_nor_starve_others() {
    const N: i32 = 150;
    let cluster = Cluster::start(
        "syncrep",
        ports::SYNC_REP,
        &[
            "shared_preload_libraries = 'dbconn_guard'",
            "max_connections = 400",
            "dbconn_guard.naptime = '200ms'",
            "dbconn_guard.blocker_timeout = '1s'",
            "dbconn_guard.cancel_active_blockers = on",
            "dbconn_guard.idle_in_transaction_timeout = '3s'",
            "dbconn_guard.max_terminations_per_cycle = 1",
        ],
    );
    let mut su = cluster.connect("postgres", "postgres", "it_s_su");
    su.batch_execute(&format!(
        "CREATE EXTENSION dbconn_guard; CREATE ROLE it_app LOGIN; \
         CREATE TABLE it_s (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); \
         INSERT INTO it_s (id) SELECT generate_series(1, {N}); GRANT SELECT, UPDATE ON it_s TO it_app"
    ))
    .unwrap();
    wait_until(
        &mut su,
        "SELECT running AND extension_ready FROM dbconn_guard.worker_status()",
        Duration::from_secs(30),
    );
    // the synchronous standby named is never there
    su.batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'it_nowhere'")
        .unwrap();
    su.batch_execute("SELECT pg_reload_conf()").unwrap();
    thread::sleep(Duration::from_millis(500));
    // N commits waiting for it, each holding a row another session waits for
    let mut threads = Vec::new();
    for id in 1..=N {
        let mut c = cluster.connect("it_app", "postgres", "it_s_commit");
        c.batch_execute(&format!("BEGIN; UPDATE it_s SET v = v + 1 WHERE id = {id}"))
            .unwrap();
        threads.push(thread::spawn(move || {
            let r = c.batch_execute("COMMIT");
            (r, c)
        }));
        let mut w = cluster.connect("it_app", "postgres", "it_s_waiter");
        threads.push(thread::spawn(move || {
            let r = w.batch_execute(&format!("UPDATE it_s SET v = v + 1 WHERE id = {id}"));
            (r, w)
        }));
    }
    wait_until(
        &mut su,
        &format!("SELECT count(*) = {N} FROM pg_stat_activity WHERE wait_event = 'SyncRep'"),
        Duration::from_secs(60),
    );
    wait_until(
        &mut su,
        &format!("SELECT count(*) = {N} FROM pg_stat_activity WHERE application_name = 'it_s_waiter' AND wait_event_type = 'Lock'"),
        Duration::from_secs(60),
    );
    // the roots' waits are past the timeout: let the worker meet them
    thread::sleep(Duration::from_secs(2));
    // a leaked transaction beside them is ended within its timeout and a check
    let mut leak = cluster.connect("it_app", "postgres", "it_s_leak");
    let leak_pid = pid(&mut leak);
    leak.batch_execute("BEGIN; SELECT 1").unwrap();
    let before = worker_checks(&mut su);
    wait_gone(&mut su, leak_pid, Duration::from_secs(6));
    // reached only after the kill path spared the roots before it (one at a time, at the cap of
    // 1), its audit row still says what it ran (described when reached, not at planning)
    let ran: Option<String> = su
        .query_one(
            "SELECT query FROM dbconn_guard.terminations WHERE pid = $1 AND rule = 'idle_in_transaction_timeout'",
            &[&leak_pid],
        )
        .unwrap()
        .get(0);
    assert_eq!(ran.as_deref(), Some("BEGIN; SELECT 1"));
    // no spin: at most a check per naptime or deadline, not one per 10 ms
    thread::sleep(Duration::from_secs(3));
    let checks = worker_checks(&mut su) - before;
    assert!(
        checks < 80,
        "{checks} checks in about 6 s: the worker spins"
    );
    // each COMMIT logged once, none cancelled
    let log = cluster.log();
    let said: Vec<&str> = log
        .split("did not cancel pid ")
        .skip(1)
        .map(|rest| rest.split(',').next().unwrap_or(""))
        .collect();
    let distinct: std::collections::HashSet<&&str> = said.iter().collect();
    assert!(!said.is_empty(), "the sessions spared were not logged");
    assert_eq!(
        said.len(),
        distinct.len(),
        "a session spared for the same reason was logged more than once"
    );
    assert_eq!(
        count(
            &mut su,
            "SELECT count(*) FROM dbconn_guard.terminations WHERE rule = 'blocker_cancel'"
        ),
        0
    );
    // the standby requirement goes: every commit completes
    su.batch_execute("ALTER SYSTEM RESET synchronous_standby_names")
        .unwrap();
    su.batch_execute("SELECT pg_reload_conf()").unwrap();
    for t in threads {
        let (r, _c) = t.join().unwrap();
        r.unwrap_or_else(|e| panic!("{}", db_error(&e)));
    }
}

#[test]
fn the_ring_keeps_a_manual_actor_whole() {
    let mut a = guard_admin();
    // "manual:" and a role name of 63 bytes: 70 bytes
    let role = format!("it_e_{}", "r".repeat(58));
    assert_eq!(role.len(), 63);
    ensure_role(
        &mut a,
        &role,
        &format!("GRANT dbconn_guard_admin TO {role}"),
    );
    let (_s, p) = stale_idle("it_e_actor");
    let mut caller = connect_as(&role, "it_e_actor_caller");
    let rows = caller
        .query(
            "SELECT action FROM dbconn_guard.terminate_idle('0', application_name => 'it_e_actor')",
            &[],
        )
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "terminated");
    wait_gone(&mut a, p, Duration::from_secs(10));
    let (ring, table): (String, String) = {
        let r = a
            .query_one(
                "SELECT (SELECT actor FROM dbconn_guard.recent_terminations() WHERE pid = $1), \
                        (SELECT actor FROM dbconn_guard.terminations WHERE pid = $1)",
                &[&p],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(ring, format!("manual:{role}"));
    assert_eq!(table, ring);
}
