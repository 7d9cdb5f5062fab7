//! Scenarios that need a server of their own: installing without the preload, stopping a server
//! while the audit table is locked, a hostile owner of the worker's database, roles and schemas
//! squatted before CREATE EXTENSION, a missing worker database. Each starts (initdb) its own
//! throwaway cluster (`Cluster`), on a port of its own.

use dbconn_guard_integration::*;
use postgres::Client;
use std::thread;
use std::time::{Duration, Instant};

const PRELOAD: &str = "shared_preload_libraries = 'dbconn_guard'";

/// `CREATE EXTENSION dbconn_guard` must fail, saying `why`.
fn refused(su: &mut Client, what: &str, why: &str) {
    let err = su
        .batch_execute("CREATE EXTENSION dbconn_guard")
        .expect_err(what);
    let text = db_error(&err);
    assert!(text.contains(why), "{what}: {text}");
}

/// Is dbconn_guard_admin a member of pg_signal_backend?
fn admin_signals(su: &mut Client) -> bool {
    su.query_one(
        "SELECT pg_has_role('dbconn_guard_admin', 'pg_signal_backend', 'MEMBER')",
        &[],
    )
    .unwrap()
    .get(0)
}

fn is_superuser(c: &mut Client, role: &str) -> bool {
    c.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
        .unwrap()
        .get(0)
}

#[test]
fn installing_without_the_preload_keeps_the_session_and_the_views_work() {
    // another library preloaded (plpgsql: in every build), not this one
    let cluster = Cluster::start(
        "nopreload",
        ports::NO_PRELOAD,
        &["shared_preload_libraries = 'plpgsql'"],
    );
    let mut c = cluster.connect("postgres", "postgres", "it_nopreload");
    // a PGC_POSTMASTER setting defined after startup used to be a FATAL error here
    c.batch_execute("CREATE EXTENSION dbconn_guard")
        .unwrap_or_else(|e| panic!("CREATE EXTENSION: {}", db_error(&e)));
    let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1, "the session survived CREATE EXTENSION");
    query_every_view(&mut c, "without the preload");
    let r = c
        .query_one(
            "SELECT running, last_error, policy->>'idle_timeout' FROM dbconn_guard.worker_status()",
            &[],
        )
        .unwrap();
    assert!(!r.get::<_, bool>(0));
    let hint: String = r.get(1);
    assert!(
        hint.contains("shared_preload_libraries") && hint.contains("restart"),
        "{hint}"
    );
    assert_eq!(
        r.get::<_, String>(2),
        "0",
        "the policy is shown all the same"
    );
    // diagnose() says what it could not check, and its preload action, pasted, writes a list
    // the server can start with (one name per library)
    let preload: String = c
        .query_one(
            "SELECT action FROM dbconn_guard.diagnose() WHERE area = 'guard' AND status <> 'ok'",
            &[],
        )
        .unwrap()
        .get(0);
    let alter = preload.split("  --").next().unwrap();
    assert_eq!(
        alter,
        "ALTER SYSTEM SET shared_preload_libraries = 'plpgsql', 'dbconn_guard';"
    );
    c.batch_execute(alter).unwrap();
    let written: String = c
        .query_one(
            "SELECT setting FROM pg_file_settings WHERE name = 'shared_preload_libraries' AND applied IS NOT NULL ORDER BY seqno DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(written, "plpgsql, dbconn_guard", "two libraries, not one");
    c.batch_execute("ALTER SYSTEM RESET shared_preload_libraries")
        .unwrap();
    let err = c
        .query(
            "SELECT * FROM dbconn_guard.terminate_idle('0', dry_run => true)",
            &[],
        )
        .expect_err("terminate_idle needs the worker");
    assert!(
        db_error(&err).contains("shared_preload_libraries"),
        "{}",
        db_error(&err)
    );
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("55000"),
        "object_not_in_prerequisite_state"
    );
    // LOAD in a new session, then settings and views
    let mut l = cluster.connect("postgres", "postgres", "it_nopreload_load");
    l.batch_execute("LOAD 'dbconn_guard'").unwrap();
    let t: String = l
        .query_one("SHOW dbconn_guard.idle_in_transaction_timeout", &[])
        .unwrap()
        .get(0);
    assert_eq!(t, "0");
    query_every_view(&mut l, "after LOAD");
    drop((c, l));
    assert!(!cluster.log().contains("FATAL"), "{}", cluster.log());

    // and with the preload after a restart: the worker runs
    cluster.append_conf(PRELOAD);
    cluster.restart();
    let mut c = cluster.connect("postgres", "postgres", "it_nopreload_after");
    wait_until(
        &mut c,
        "SELECT running AND extension_ready FROM dbconn_guard.worker_status()",
        Duration::from_secs(30),
    );
    let db: String = c
        .query_one("SHOW dbconn_guard.database", &[])
        .unwrap()
        .get(0);
    assert_eq!(db, "postgres");
}

#[test]
fn a_fast_stop_completes_while_a_prepared_transaction_holds_the_audit_table() {
    let cluster = Cluster::start(
        "faststop",
        ports::FAST_STOP,
        &[
            PRELOAD,
            "max_prepared_transactions = 2",
            "dbconn_guard.idle_in_transaction_timeout = '1s'",
            "dbconn_guard.naptime = '1s'",
        ],
    );
    let mut c = cluster.connect("postgres", "postgres", "it_faststop");
    c.batch_execute("CREATE EXTENSION dbconn_guard; CREATE ROLE it_app LOGIN")
        .unwrap();
    wait_until(
        &mut c,
        "SELECT running AND extension_ready FROM dbconn_guard.worker_status()",
        Duration::from_secs(30),
    );
    let mut holder = cluster.connect("postgres", "postgres", "it_faststop_holder");
    holder
        .batch_execute(
            "BEGIN; LOCK TABLE dbconn_guard.terminations IN ACCESS EXCLUSIVE MODE; PREPARE TRANSACTION 'it_hold'",
        )
        .unwrap();
    let mut victim = cluster.connect("it_app", "postgres", "it_faststop_victim");
    let victim_pid = pid(&mut victim);
    victim.batch_execute("BEGIN; SELECT 1").unwrap();
    // the worker cannot write its table: it waits a second at most, records the session in
    // shared memory and the server log instead, ends it, and says why
    wait_until(
        &mut c,
        "SELECT coalesce(last_error LIKE '%could not lock dbconn_guard.terminations within lock_timeout%', false) FROM dbconn_guard.worker_status()",
        Duration::from_secs(15),
    );
    wait_gone(&mut c, victim_pid, Duration::from_secs(10));
    let kept: bool = c
        .query_one(
            "SELECT NOT persisted FROM dbconn_guard.recent_terminations() WHERE pid = $1",
            &[&victim_pid],
        )
        .unwrap()
        .get(0);
    assert!(kept, "recorded in memory, the table being locked");
    assert!(cluster
        .log()
        .contains(&format!("dbconn_guard: terminated pid {victim_pid} ")));
    let cycles: i64 = c
        .query_one("SELECT cycles FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0);
    thread::sleep(Duration::from_millis(2500));
    let later: i64 = c
        .query_one("SELECT cycles FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0);
    assert!(
        later > cycles,
        "the worker is not frozen: {cycles} -> {later}"
    );
    drop((c, holder, victim));
    let t0 = Instant::now();
    let stopped = cluster.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "30"]);
    let took = t0.elapsed();
    assert!(stopped.is_ok(), "fast stop failed: {stopped:?}");
    assert!(took < Duration::from_secs(10), "fast stop took {took:?}");
    // clean up the prepared transaction
    cluster
        .pg_ctl(&["start", "-w", "-t", "60", "-l", &cluster.log_path()])
        .unwrap();
    let mut c = cluster.connect("postgres", "postgres", "it_faststop_cleanup");
    c.batch_execute("ROLLBACK PREPARED 'it_hold'").unwrap();
}

#[test]
fn roles_and_schemas_squatted_before_create_extension_are_refused() {
    let cluster = Cluster::start("squat", ports::SQUAT, &[]);
    let mut su = cluster.connect("postgres", "postgres", "it_squat_su");
    su.batch_execute(
        "CREATE ROLE it_creator LOGIN CREATEROLE; GRANT CREATE ON DATABASE postgres TO it_creator",
    )
    .unwrap();
    let mut creator = cluster.connect("it_creator", "postgres", "it_squat_creator");
    creator
        .batch_execute("CREATE ROLE dbconn_guard_admin")
        .unwrap();
    refused(
        &mut su,
        "a squatted dbconn_guard_admin",
        "already exists and was not set up by dbconn_guard",
    );
    refused(&mut su, "a squatted dbconn_guard_admin", "Drop or rename");
    assert!(!admin_signals(&mut su), "the squatter's role got nothing");

    // a schema planted under the extension's name
    su.batch_execute("DROP ROLE dbconn_guard_admin").unwrap();
    creator
        .batch_execute(
            "CREATE SCHEMA dbconn_guard; CREATE FUNCTION dbconn_guard.planted() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        )
        .unwrap();
    refused(
        &mut su,
        "a planted schema",
        "schema \"dbconn_guard\" existed before",
    );
    su.batch_execute("DROP SCHEMA dbconn_guard CASCADE")
        .unwrap();
    // an empty one a superuser made, but where another role may create objects
    su.batch_execute(
        "CREATE SCHEMA dbconn_guard; GRANT CREATE ON SCHEMA dbconn_guard TO it_creator",
    )
    .unwrap();
    refused(&mut su, "a schema others may create in", "it_creator");
    su.batch_execute("DROP SCHEMA dbconn_guard").unwrap();

    // a clean install, and a reinstall that finds the role an earlier one made
    su.batch_execute("CREATE EXTENSION dbconn_guard").unwrap();
    su.batch_execute("DROP EXTENSION dbconn_guard; CREATE EXTENSION dbconn_guard")
        .unwrap();
    assert!(admin_signals(&mut su));

    // a role someone else can hand out is not trusted either
    su.batch_execute(
        "DROP EXTENSION dbconn_guard; GRANT dbconn_guard_admin TO it_creator WITH ADMIN OPTION",
    )
    .unwrap();
    refused(&mut su, "a role a non-superuser administers", "it_creator");
}

#[test]
fn the_worker_runs_no_code_of_its_database_owner() {
    let cluster = Cluster::start(
        "hostile",
        ports::HOSTILE,
        &[
            PRELOAD,
            "dbconn_guard.database = 'appdb'",
            "dbconn_guard.idle_in_transaction_timeout = '1s'",
            "dbconn_guard.naptime = '1s'",
        ],
    );
    let mut su = cluster.connect("postgres", "postgres", "it_hostile_su");
    su.batch_execute("CREATE ROLE it_owner LOGIN; CREATE ROLE it_app LOGIN")
        .unwrap();
    su.batch_execute("CREATE DATABASE appdb OWNER it_owner")
        .unwrap();
    su.batch_execute("CREATE EXTENSION dbconn_guard").unwrap();
    let status = |su: &mut Client| -> (bool, Option<String>) {
        let r = su
            .query_one(
                "SELECT extension_ready, last_error FROM dbconn_guard.worker_status()",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };

    // 1. the owner plants a look-alike audit table with a trigger, while the extension is
    // absent from appdb: the worker must not write to it (it would run the trigger as a
    // superuser)
    let mut owner = cluster.connect("it_owner", "appdb", "it_hostile_owner");
    owner
        .batch_execute(
            "CREATE SCHEMA dbconn_guard; \
             CREATE TABLE dbconn_guard.terminations (id bigserial PRIMARY KEY, terminated_at timestamptz, pid int, \
               usename text, datname text, application_name text, client_addr inet, state text, \
               state_age_seconds float8, xact_age_seconds float8, backend_start timestamptz, rule text, \
               dry_run bool, actor text, worker_cycle bigint); \
             CREATE FUNCTION dbconn_guard.escalate() RETURNS trigger LANGUAGE plpgsql AS \
               $$ BEGIN EXECUTE 'ALTER ROLE it_owner SUPERUSER'; RETURN NEW; END $$; \
             CREATE TRIGGER escalate BEFORE INSERT ON dbconn_guard.terminations \
               FOR EACH ROW EXECUTE FUNCTION dbconn_guard.escalate();",
        )
        .unwrap();
    let mut victim = cluster.connect("it_app", "postgres", "it_hostile_victim");
    let victim_pid = pid(&mut victim);
    victim.batch_execute("BEGIN; SELECT 1").unwrap();
    let start = Instant::now();
    loop {
        let (_, err) = status(&mut su);
        if err.is_some_and(|e| e.contains("is not the table of the extension")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the worker never refused the planted table"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !is_superuser(&mut su, "it_owner"),
        "the trigger ran as a superuser"
    );
    assert!(alive(&mut su, victim_pid), "ended without a real record");
    let planted: i64 = owner
        .query_one("SELECT count(*) FROM dbconn_guard.terminations", &[])
        .unwrap()
        .get(0);
    assert_eq!(planted, 0);

    // 2. the real extension, and the owner's database settings: an operator of its own before
    // pg_catalog, read-only transactions, a 1 ms statement_timeout, every error fatal, and the
    // owner's own role for everyone connecting (the worker would run as it)
    owner
        .batch_execute("DROP SCHEMA dbconn_guard CASCADE")
        .unwrap();
    let mut su_app = cluster.connect("postgres", "appdb", "it_hostile_su_app");
    su_app
        .batch_execute("CREATE EXTENSION dbconn_guard")
        .unwrap();
    owner
        .batch_execute(
            "CREATE SCHEMA evil; \
             CREATE FUNCTION evil.escalate(timestamptz, timestamptz) RETURNS bool LANGUAGE plpgsql AS \
               $$ BEGIN EXECUTE 'ALTER ROLE it_owner SUPERUSER'; RETURN $1 OPERATOR(pg_catalog.<) $2; END $$; \
             CREATE OPERATOR evil.< (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.escalate); \
             CREATE FUNCTION evil.escalate_eq(bigint, bigint) RETURNS bool LANGUAGE plpgsql AS \
               $$ BEGIN EXECUTE 'ALTER ROLE it_owner SUPERUSER'; RETURN $1 OPERATOR(pg_catalog.=) $2; END $$; \
             CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.escalate_eq); \
             ALTER DATABASE appdb SET search_path = evil, pg_catalog; \
             ALTER DATABASE appdb SET default_transaction_read_only = on; \
             ALTER DATABASE appdb SET statement_timeout = '1ms'; \
             ALTER DATABASE appdb SET exit_on_error = on; \
             ALTER DATABASE appdb SET role = 'it_owner';",
        )
        .unwrap();
    // the settings reach a backend when it starts: restart the worker
    let before: i32 = su
        .query_one("SELECT pid FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0);
    su.execute("SELECT pg_terminate_backend($1)", &[&before])
        .unwrap();
    wait_until(
        &mut su,
        &format!(
            "SELECT running AND extension_ready AND pid <> {before} FROM dbconn_guard.worker_status()"
        ),
        Duration::from_secs(30),
    );
    // an old audit row for the purge to delete (its WHERE compares timestamps)
    su_app
        .batch_execute(
            "SET default_transaction_read_only = off; \
             SET statement_timeout = 0; \
             INSERT INTO dbconn_guard.terminations (terminated_at, pid, state, state_age_seconds, rule, dry_run, actor) \
             VALUES (now() - interval '3 days', -1, 'idle', 1, 'manual', true, 'it_old')",
        )
        .unwrap();
    su.batch_execute("ALTER SYSTEM SET dbconn_guard.audit_retention = '1d'")
        .unwrap();
    su.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_gone(&mut su, victim_pid, Duration::from_secs(15));
    wait_until(
        &mut su_app,
        "SELECT count(*) = 0 FROM dbconn_guard.terminations WHERE actor = 'it_old'",
        Duration::from_secs(15),
    );
    let recorded: i64 = su_app
        .query_one(
            "SELECT count(*) FROM dbconn_guard.terminations WHERE pid = $1 AND actor = 'worker'",
            &[&victim_pid],
        )
        .unwrap()
        .get(0);
    assert_eq!(recorded, 1, "ended and recorded despite read-only defaults");
    assert!(
        !is_superuser(&mut su, "it_owner"),
        "an operator of the owner's ran as a superuser"
    );
}

#[test]
fn a_missing_worker_database_is_logged_and_retried_without_harm() {
    let cluster = Cluster::start(
        "nodb",
        ports::NO_DATABASE,
        &[PRELOAD, "dbconn_guard.database = 'no_such_db'"],
    );
    // two connection attempts at least (the restart interval is 5 s)
    let start = Instant::now();
    let attempts = || {
        cluster
            .log()
            .lines()
            .filter(|l| l.contains("database \"no_such_db\" does not exist"))
            .count()
    };
    while attempts() < 2 && start.elapsed() < Duration::from_secs(20) {
        thread::sleep(Duration::from_millis(200));
    }
    let text = cluster.log();
    assert!(attempts() >= 2, "no retry logged:\n{text}");
    assert!(
        text.contains(
            "dbconn_guard worker: connecting to database \"no_such_db\" (dbconn_guard.database)"
        ),
        "{text}"
    );
    // the server itself is fine
    let mut c = cluster.connect("postgres", "postgres", "it_nodb");
    let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
    assert!(
        !text.contains("PANIC") && !text.contains("terminated by signal"),
        "{text}"
    );
}
