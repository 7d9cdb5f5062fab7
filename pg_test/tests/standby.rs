//! A hot standby of the test cluster: the views answer there, and the worker still ends stale
//! sessions, keeping its record in shared memory since the audit table is read-only.

use dbconn_guard_integration::*;
use postgres::Client;
use std::time::Duration;

/// A hot standby of the test cluster (`ports::STANDBY`).
fn start_standby(primary_port: u16) -> Replica {
    Replica::start(primary_port, ports::port(ports::STANDBY), &[])
}

fn connect_standby(r: &Replica, user: &str, app: &str) -> Client {
    let mut c = config_at(r.port, user, "postgres", app)
        .connect(postgres::NoTls)
        .unwrap();
    // the database's default (SERIALIZABLE, see below) cannot run on a standby
    c.batch_execute("SET default_transaction_isolation = 'read committed'")
        .unwrap();
    c
}

#[test]
fn views_and_worker_work_on_a_hot_standby() {
    let primary_port = test_port();
    let mut p = connect("it_admin");
    ensure_role(&mut p, "it_w_app", "");
    reset_system(&mut p);
    // a database default a standby cannot run (SERIALIZABLE): the worker pins its own
    p.batch_execute("ALTER DATABASE postgres SET default_transaction_isolation = 'serializable'")
        .unwrap();
    let _reset = ResetDatabaseDefault;
    let standby = start_standby(primary_port);
    let mut s = connect_standby(&standby, "postgres", "it_standby_admin");
    assert!(s
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get::<_, bool>(0));

    query_every_view(&mut s, "on the standby");
    wait_until(
        &mut s,
        "SELECT running AND extension_ready FROM dbconn_guard.worker_status()",
        Duration::from_secs(30),
    );

    // ALTER SYSTEM writes a file, so it works on a standby too
    s.batch_execute("ALTER SYSTEM SET dbconn_guard.idle_in_transaction_timeout = '1s'")
        .unwrap();
    s.batch_execute("ALTER SYSTEM SET dbconn_guard.sample_interval = '1s'")
        .unwrap();
    s.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until(
        &mut s,
        "SELECT policy->>'idle_in_transaction_timeout' = '1s' FROM dbconn_guard.worker_status()",
        Duration::from_secs(10),
    );
    // the worker samples the standby's sessions into its own history
    wait_until(
        &mut s,
        "SELECT count(*) >= 2 FROM dbconn_guard.history WHERE client_backends >= 1",
        Duration::from_secs(10),
    );
    let mut victim = connect_standby(&standby, "it_w_app", "it_standby_victim");
    let victim_pid = pid(&mut victim);
    victim.batch_execute("BEGIN; SELECT 1").unwrap();
    wait_gone(&mut s, victim_pid, Duration::from_secs(10));
    let (persisted, rule): (bool, String) = {
        let r = s
            .query_one(
                "SELECT persisted, rule FROM dbconn_guard.recent_terminations() WHERE pid = $1",
                &[&victim_pid],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        (persisted, rule.as_str()),
        (false, "idle_in_transaction_timeout")
    );
    let errors: Option<String> = s
        .query_one("SELECT last_error FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0);
    assert_eq!(errors, None, "no failed write on the standby");
    s.batch_execute("ALTER SYSTEM RESET ALL").unwrap();
}

/// Puts the primary's database default back, whatever the test's outcome.
struct ResetDatabaseDefault;

impl Drop for ResetDatabaseDefault {
    fn drop(&mut self) {
        if let Ok(mut p) = config("postgres", "it_reset").connect(postgres::NoTls) {
            let _ = p.batch_execute("ALTER DATABASE postgres RESET default_transaction_isolation");
        }
    }
}

/// A standby promoted while the guard runs on it: the terminations it kept in shared memory as
/// a standby stay visible, and from the promotion on its terminations are written to the audit
/// table.
#[test]
fn a_promoted_standby_keeps_its_records_and_audits_from_then_on() {
    let primary_port = test_port();
    let mut p = connect("it_admin");
    ensure_role(&mut p, "it_w_app", "");
    reset_system(&mut p);
    let standby = start_standby(primary_port);
    let mut s = connect_standby(&standby, "postgres", "it_standby_admin");
    wait_until(
        &mut s,
        "SELECT running AND extension_ready FROM dbconn_guard.worker_status()",
        Duration::from_secs(30),
    );
    s.batch_execute("ALTER SYSTEM SET dbconn_guard.idle_in_transaction_timeout = '1s'")
        .unwrap();
    s.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until(
        &mut s,
        "SELECT policy->>'idle_in_transaction_timeout' = '1s' FROM dbconn_guard.worker_status()",
        Duration::from_secs(10),
    );
    let ended = |s: &mut Client, standby: &Replica, app: &str| {
        let mut victim = connect_standby(standby, "it_w_app", app);
        let victim_pid = pid(&mut victim);
        victim.batch_execute("BEGIN; SELECT 1").unwrap();
        wait_gone(s, victim_pid, Duration::from_secs(10));
        victim_pid
    };
    let before = ended(&mut s, &standby, "it_before_promotion");
    let worker_before: i32 = s
        .query_one("SELECT pid FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0);

    standby.promote();
    wait_until(
        &mut s,
        "SELECT NOT pg_is_in_recovery()",
        Duration::from_secs(30),
    );
    // a promotion is not a restart: the shared-memory record is still there, unpersisted
    let kept: Vec<(bool, String)> = s
        .query(
            "SELECT persisted, rule FROM dbconn_guard.recent_terminations() WHERE pid = $1",
            &[&before],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        kept,
        vec![(false, "idle_in_transaction_timeout".to_string())]
    );

    let after = ended(&mut s, &standby, "it_after_promotion");
    let audited: Vec<(String, String)> = s
        .query(
            "SELECT rule, actor FROM dbconn_guard.terminations WHERE pid = $1 AND application_name = 'it_after_promotion'",
            &[&after],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        audited,
        vec![(
            "idle_in_transaction_timeout".to_string(),
            "worker".to_string()
        )],
        "the first termination after the promotion is in the audit table"
    );
    let persisted: bool = s
        .query_one(
            "SELECT persisted FROM dbconn_guard.recent_terminations() WHERE pid = $1",
            &[&after],
        )
        .unwrap()
        .get(0);
    assert!(persisted);
    // the standby-era record is not written after the fact, and the same worker did both
    let n: i64 = s
        .query_one(
            "SELECT count(*) FROM dbconn_guard.terminations WHERE application_name = 'it_before_promotion'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let worker_after: i32 = s
        .query_one("SELECT pid FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        worker_before, worker_after,
        "the worker ran through the promotion"
    );
    let errors: Option<String> = s
        .query_one("SELECT last_error FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0);
    assert_eq!(errors, None);
}
