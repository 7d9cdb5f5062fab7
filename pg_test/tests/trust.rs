//! The guard's promises, each tried the way an attacker or a careless admin would on the shared
//! test cluster: it never freezes, never ends anyone unrecorded, never runs another role's code,
//! never ends a session that just got busy, never spins. Run through `./dev.sh test`, one test
//! at a time (they change server settings).

use dbconn_guard_integration::*;
use postgres::Client;
use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

/// A member of dbconn_guard_admin.
fn dba() -> Client {
    let mut a = connect("it_admin");
    ensure_role(&mut a, "it_t_dba", "GRANT dbconn_guard_admin TO it_t_dba");
    connect_as("it_t_dba", "it_t_dba")
}

fn worker_error_since(a: &mut Client, since: f64, like: &str) -> bool {
    a.query_one(
        "SELECT coalesce(last_error LIKE $2 AND extract(epoch FROM last_error_at)::float8 >= $1, false) FROM dbconn_guard.worker_status()",
        &[&since, &like],
    )
    .unwrap()
    .get(0)
}

fn server_epoch(a: &mut Client) -> f64 {
    a.query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .unwrap()
        .get(0)
}

fn wait_for_worker_error(a: &mut Client, since: f64, like: &str) {
    let start = Instant::now();
    while !worker_error_since(a, since, like) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the worker never reported {like}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn server_log() -> String {
    std::env::var("DBCONN_GUARD_TEST_LOG")
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

#[test]
fn a_locked_audit_table_stalls_no_check_and_the_record_waits_in_memory() {
    let mut a = guard_admin();
    // an admin can no longer take the lock that froze the worker
    let mut d = dba();
    d.batch_execute("BEGIN").unwrap();
    let err = d
        .batch_execute("LOCK TABLE dbconn_guard.terminations IN SHARE MODE")
        .expect_err("an admin locking the audit table");
    assert!(
        db_error(&err).contains("permission denied"),
        "{}",
        db_error(&err)
    );
    d.batch_execute("ROLLBACK").unwrap();

    // a superuser (or DDL, or the database's owner with VACUUM) still can: the worker waits a
    // second at most, records the session in shared memory and the server log instead, ends
    // it, and writes the record to the table once it can
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.idle_in_transaction_timeout", "1s"),
            ("dbconn_guard.naptime", "1s"),
        ],
    );
    let since = server_epoch(&mut a);
    let mut holder = connect("it_t_holder");
    holder
        .batch_execute("BEGIN; LOCK TABLE dbconn_guard.terminations IN SHARE MODE")
        .unwrap();
    let (_s, victim) = stale_in_transaction("it_t_locked");
    wait_for_worker_error(&mut a, since, "%could not lock dbconn_guard.terminations%");
    wait_gone(&mut a, victim, Duration::from_secs(10));
    let in_memory: bool = a
        .query_one(
            "SELECT NOT persisted FROM dbconn_guard.recent_terminations() WHERE pid = $1",
            &[&victim],
        )
        .unwrap()
        .get(0);
    assert!(in_memory, "recorded in memory while the table is locked");
    // each check waits a second for the lock at most, and goes on
    let before = worker_checks(&mut a);
    thread::sleep(Duration::from_millis(5000));
    let after = worker_checks(&mut a);
    assert!(
        after >= before + 2,
        "the worker is stuck: {before} -> {after} checks"
    );
    assert!(audit(&mut a, victim).is_empty(), "the table is locked");
    holder.batch_execute("COMMIT").unwrap();
    wait_until(
        &mut a,
        &format!("SELECT count(*) = 1 FROM dbconn_guard.terminations WHERE pid = {victim}"),
        Duration::from_secs(5),
    );
    let rows = audit(&mut a, victim);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1, rows[0].2.as_str()),
        ("idle_in_transaction_timeout", false, "worker")
    );
    let persisted: bool = a
        .query_one(
            "SELECT persisted FROM dbconn_guard.recent_terminations() WHERE pid = $1",
            &[&victim],
        )
        .unwrap()
        .get(0);
    assert!(persisted);
    reset_system(&mut a);
}

#[test]
fn sigterm_ends_the_worker_even_in_the_middle_of_a_lock_wait() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.idle_in_transaction_timeout", "1s"),
            ("dbconn_guard.naptime", "1s"),
        ],
    );
    let w = worker_pid(&mut a);
    let mut holder = connect("it_t_holder");
    holder
        .batch_execute("BEGIN; LOCK TABLE dbconn_guard.terminations IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let (_s, victim) = stale_in_transaction("it_t_sigterm");
    // caught in the middle of its (at most one second) wait for the lock
    let start = Instant::now();
    loop {
        let waiting: bool = a
            .query_one(
                "SELECT count(*) > 0 FROM pg_locks WHERE pid = $1 AND NOT granted",
                &[&w],
            )
            .unwrap()
            .get(0);
        if waiting {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the worker never waited"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let fatal = "terminating background worker \"dbconn_guard\" due to administrator command";
    let fatal_before = server_log().matches(fatal).count();
    let t0 = Instant::now();
    a.execute("SELECT pg_terminate_backend($1)", &[&w]).unwrap();
    wait_gone(&mut a, w, Duration::from_secs(5));
    assert!(
        t0.elapsed() < Duration::from_millis(800),
        "the worker took {:?} to exit",
        t0.elapsed()
    );
    if std::env::var("DBCONN_GUARD_TEST_LOG").is_ok() {
        assert!(
            server_log().matches(fatal).count() > fatal_before,
            "it ended through PostgreSQL's die(), at the interrupt check in the lock wait"
        );
    }
    assert!(alive(&mut a, victim), "nothing ended unrecorded");
    holder.batch_execute("COMMIT").unwrap();
    // the postmaster brings it back, and it finishes the job
    wait_until(
        &mut a,
        &format!("SELECT running AND pid <> {w} FROM dbconn_guard.worker_status()"),
        Duration::from_secs(30),
    );
    wait_gone(&mut a, victim, Duration::from_secs(15));
    assert_eq!(audit(&mut a, victim).len(), 1);
    reset_system(&mut a);
}

#[test]
fn a_row_that_cannot_be_written_spares_that_session_only() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.enabled", "off"),
            ("dbconn_guard.idle_in_transaction_timeout", "1s"),
        ],
    );
    let (_s1, first) = stale_in_transaction("it_t_rows");
    let (_s2, second) = stale_in_transaction("it_t_rows");
    a.batch_execute(&format!(
        "ALTER TABLE dbconn_guard.terminations ADD CONSTRAINT it_not_second CHECK (pid <> {second}) NOT VALID"
    ))
    .unwrap();
    thread::sleep(Duration::from_millis(1200));
    let since = server_epoch(&mut a);
    alter_system(&mut a, &[("dbconn_guard.enabled", "on")]);
    wait_gone(&mut a, first, Duration::from_secs(10));
    wait_for_worker_error(&mut a, since, "%it_not_second%");
    assert_eq!(
        audit(&mut a, first).len(),
        1,
        "the first is ended and recorded"
    );
    assert!(alive(&mut a, second), "the second is not ended");
    assert!(audit(&mut a, second).is_empty(), "nor recorded");
    let ring: i64 = a
        .query_one(
            "SELECT count(*) FROM dbconn_guard.recent_terminations() WHERE pid = $1",
            &[&second],
        )
        .unwrap()
        .get(0);
    assert_eq!(ring, 0);
    a.batch_execute("ALTER TABLE dbconn_guard.terminations DROP CONSTRAINT it_not_second")
        .unwrap();
    wait_gone(&mut a, second, Duration::from_secs(15));
    assert_eq!(audit(&mut a, second).len(), 1);
    let persisted: bool = a
        .query_one(
            "SELECT persisted FROM dbconn_guard.recent_terminations() WHERE pid = $1",
            &[&first],
        )
        .unwrap()
        .get(0);
    assert!(persisted);
    reset_system(&mut a);
}

#[test]
fn a_manual_termination_is_recorded_even_when_the_caller_rolls_back() {
    let mut a = guard_admin();
    let (_s, victim) = stale_in_transaction("it_t_rollback");
    let mut d = dba();
    d.batch_execute("BEGIN").unwrap();
    let rows: BTreeMap<i32, String> = d
        .query(
            "SELECT pid, action FROM dbconn_guard.terminate_idle('0', application_name => 'it_t_rollback')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    d.batch_execute("ROLLBACK").unwrap();
    assert_eq!(rows.get(&victim).map(String::as_str), Some("terminated"));
    wait_gone(&mut a, victim, Duration::from_secs(5));
    let rows = audit(&mut a, victim);
    assert_eq!(rows.len(), 1, "recorded despite the ROLLBACK: {rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].2.as_str()),
        ("manual", "manual:it_t_dba")
    );
}

#[test]
fn admins_read_the_audit_and_cannot_forge_or_delete_it() {
    let _a = guard_admin();
    let mut d = dba();
    d.query("SELECT count(*) FROM dbconn_guard.terminations", &[])
        .unwrap();
    for sql in [
        "INSERT INTO dbconn_guard.terminations (pid, state, state_age_seconds, rule, dry_run, actor) VALUES (1, 'idle', 0, 'manual', false, 'worker')",
        "DELETE FROM dbconn_guard.terminations",
        "UPDATE dbconn_guard.terminations SET actor = 'worker'",
        "TRUNCATE dbconn_guard.terminations",
    ] {
        let err = d.batch_execute(sql).expect_err(sql);
        assert!(db_error(&err).contains("permission denied"), "{sql}: {}", db_error(&err));
    }
}

#[test]
fn a_session_that_runs_a_query_after_it_was_recorded_is_spared_at_the_last_look() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.idle_in_transaction_timeout", "2s"),
            // test builds only: the worker waits this long between the record and its last look
            ("dbconn_guard.test_delay_before_signal", "2000"),
        ],
    );
    let (mut s, victim) = stale_in_transaction("it_t_race");
    // its row is committed before the last look; then, inside the delay, it runs a query
    wait_until(
        &mut a,
        &format!("SELECT count(*) = 1 FROM dbconn_guard.terminations WHERE pid = {victim}"),
        Duration::from_secs(10),
    );
    s.batch_execute("SELECT 2").unwrap();
    wait_until(
        &mut a,
        &format!("SELECT count(*) = 0 FROM dbconn_guard.terminations WHERE pid = {victim}"),
        Duration::from_secs(10),
    );
    assert!(alive(&mut a, victim), "a session that got busy was ended");
    s.batch_execute("SELECT 3").unwrap();
    let ring: i64 = a
        .query_one(
            "SELECT count(*) FROM dbconn_guard.recent_terminations() WHERE pid = $1",
            &[&victim],
        )
        .unwrap()
        .get(0);
    assert_eq!(ring, 0, "no record of a termination that did not happen");
    if std::env::var("DBCONN_GUARD_TEST_LOG").is_ok() {
        assert!(
            server_log().contains(&format!("spared pid {victim} at the last moment")),
            "the withdrawal is logged"
        );
    }
    // left alone through the delay, it is ended, with the window measured
    wait_gone(&mut a, victim, Duration::from_secs(15));
    assert_eq!(audit(&mut a, victim).len(), 1);
    wait_until(
        &mut a,
        &format!(
            "SELECT count(*) = 1 FROM dbconn_guard.recent_terminations() WHERE pid = {victim}"
        ),
        Duration::from_secs(5),
    );
    let window: Option<i64> = a
        .query_one(
            "SELECT signal_window_us FROM dbconn_guard.recent_terminations() WHERE pid = $1",
            &[&victim],
        )
        .unwrap()
        .get(0);
    assert!(window.is_some_and(|w| w < 1_000_000), "{window:?}");
    reset_system(&mut a);
}

/// A process stopped with SIGSTOP for as long as this lives: continued when dropped, also when
/// the test fails, and in any case by a watchdog after a minute (should this test's process be
/// killed, a stopped backend would hold up the shared cluster's shutdown).
struct Stopped(i32);

impl Stopped {
    fn stop(pid: i32) -> Stopped {
        // (in the background of a shell that exits at once: it outlives this process)
        let watchdog = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("(sleep 60; kill -CONT {pid}) >/dev/null 2>&1 &"),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        assert!(watchdog.is_ok_and(|s| s.success()), "the watchdog");
        assert!(send_signal(pid, "STOP"), "kill -STOP {pid}");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // never a panic here: this may run while a failed assertion unwinds
        send_signal(self.0, "CONT");
    }
}

fn send_signal(pid: i32, sig: &str) -> bool {
    std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// The server log written after `from` bytes.
fn server_log_since(from: usize) -> String {
    server_log().get(from..).unwrap_or_default().to_string()
}

#[test]
fn a_statement_that_reached_a_backend_not_yet_running_is_not_ended_with_it() {
    // The race of a pooler handing a connection to its next client: the statement is in the
    // backend's socket, but the backend has not run yet, so its status entry still says idle.
    // Made deterministic by stopping the backend: its status entry stays "idle in
    // transaction", unchanged, past the timeout, with the client's statement waiting.
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[("dbconn_guard.idle_in_transaction_timeout", "2s")],
    );
    let log_from = server_log().len();
    let (mut s, victim) = stale_in_transaction("it_t_stopped");
    let stopped = Stopped::stop(victim);
    let client = thread::spawn(move || {
        let r = s.batch_execute("SELECT 42");
        (s, r)
    });
    let since = Instant::now();
    let spared = format!(
        "did not end pid {victim} (rule idle_in_transaction_timeout): its process is stopped or traced"
    );
    if std::env::var("DBCONN_GUARD_TEST_LOG").is_ok() {
        // the worker looked past the timeout, and left it (logged once)
        while !server_log_since(log_from).contains(&spared) {
            assert!(
                since.elapsed() < Duration::from_secs(20),
                "the worker never said it left the stopped backend alone"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    // well past the timeout and a back-off or two
    thread::sleep(Duration::from_secs(5).saturating_sub(since.elapsed()));
    assert!(
        audit(&mut a, victim).is_empty(),
        "a session whose client's statement was on its way was recorded for ending"
    );
    // a DBA's call says why, and leaves it too
    let actions: Vec<String> = first_column(
        &mut a,
        "SELECT action FROM dbconn_guard.terminate_idle('0', application_name => 'it_t_stopped')",
    );
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert!(
        actions[0].starts_with("skipped: its process is stopped or traced"),
        "{actions:?}"
    );
    assert_eq!(
        a.query_one(
            "SELECT state FROM pg_stat_activity WHERE pid = $1",
            &[&victim]
        )
        .unwrap()
        .get::<_, String>(0),
        "idle in transaction"
    );
    drop(stopped);
    let (s, r) = client.join().unwrap();
    r.expect("the statement sent while its backend was stopped ran, and its session lives");
    // idle in its transaction again, it is ended after the timeout like any other
    wait_gone(&mut a, victim, Duration::from_secs(20));
    assert_eq!(audit(&mut a, victim).len(), 1);
    drop(s);
    reset_system(&mut a);
}

#[test]
fn a_backend_kept_busy_holds_its_rule_up_for_a_few_checks_only() {
    // An idle backend wakes for work that leaves its status alone (a NOTIFY to a listener, a
    // cache invalidation); one kept busy so must not escape its rule. The test build's hook
    // reads the victim's process as busy whenever the kernel says asleep.
    let mut a = guard_admin();
    let log_from = server_log().len();
    let (s, victim) = stale_in_transaction("it_t_busy");
    let before = worker_checks(&mut a);
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.idle_in_transaction_timeout", "2s"),
            ("dbconn_guard.test_busy_pid", &victim.to_string()),
        ],
    );
    // a DBA's call is told, and leaves it
    let actions: Vec<String> = first_column(
        &mut a,
        "SELECT action FROM dbconn_guard.terminate_idle('0', application_name => 'it_t_busy')",
    );
    assert_eq!(
        actions,
        ["skipped: its process was not asleep (its client's next statement may be on its way)"]
    );
    // the worker: past the timeout, three checks find it busy, the next one ends it
    wait_gone(&mut a, victim, Duration::from_secs(30));
    let checks = worker_checks(&mut a) - before;
    assert!(
        checks > i64::from(dbconn_guard_core::recheck::WOKEN_LOOKS),
        "ended after {checks} checks: the first ones must leave a busy process alone"
    );
    assert_eq!(audit(&mut a, victim).len(), 1);
    if std::env::var("DBCONN_GUARD_TEST_LOG").is_ok() {
        let log = server_log_since(log_from);
        let at = |what: &str| {
            log.find(what)
                .unwrap_or_else(|| panic!("not in the log: {what}"))
        };
        let first = at(&format!("did not end pid {victim} yet (rule idle_in_transaction_timeout): its process was not asleep"));
        let gave_up = at(&format!("pid {victim} was found busy at 3 checks in a row"));
        let ended = at(&format!("terminated pid {victim} "));
        assert!(first < gave_up && gave_up < ended, "{log}");
    }
    drop(s);
    reset_system(&mut a);
}

#[test]
fn a_dry_run_past_the_cap_records_everyone_once_and_does_not_spin() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.enabled", "off"),
            ("dbconn_guard.dry_run", "on"),
            ("dbconn_guard.idle_in_transaction_timeout", "1s"),
            ("dbconn_guard.max_terminations_per_cycle", "2"),
        ],
    );
    let sessions: Vec<_> = (0..5).map(|_| stale_in_transaction("it_t_spin")).collect();
    let pids: Vec<i32> = sessions.iter().map(|(_, p)| *p).collect();
    thread::sleep(Duration::from_millis(1200));
    alter_system(&mut a, &[("dbconn_guard.enabled", "on")]);
    wait_until(
        &mut a,
        &format!(
            "SELECT count(DISTINCT pid) = 5 FROM dbconn_guard.terminations WHERE pid = ANY('{{{}}}') AND dry_run",
            pids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
        ),
        Duration::from_secs(10),
    );
    let w = worker_pid(&mut a);
    let (c0, t0) = (cpu_seconds(w), Instant::now());
    // 5 s: a spinning worker takes a whole core; 1% of it is 5 clock ticks
    thread::sleep(Duration::from_secs(5));
    let share = (cpu_seconds(w) - c0) / t0.elapsed().as_secs_f64();
    assert!(
        share < 0.01,
        "the worker used {:.1}% of a core",
        share * 100.0
    );
    for p in &pids {
        assert!(alive(&mut a, *p));
        assert_eq!(audit(&mut a, *p).len(), 1, "pid {p} recorded once");
    }
    drop(sessions);
    reset_system(&mut a);
}

#[test]
fn idle_sessions_are_ended_only_until_utilization_falls_below_the_threshold() {
    let mut a = guard_admin();
    let max: i64 = a
        .query_one("SELECT current_setting('max_connections')::bigint", &[])
        .unwrap()
        .get(0);
    // a threshold of 10%: utilization stays at or above it down to `floor` client backends
    let floor = (max + 9) / 10;
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.enabled", "off"),
            ("dbconn_guard.idle_timeout", "1s"),
            ("dbconn_guard.include_applications", "it_t_util"),
            ("dbconn_guard.min_utilization_pct", "10"),
        ],
    );
    thread::sleep(Duration::from_millis(300)); // the probes' sessions are gone
    let clients = |a: &mut Client| -> i64 {
        a.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let mut sessions = Vec::new();
    while clients(&mut a) < floor + 3 {
        sessions.push(stale_idle("it_t_util"));
    }
    thread::sleep(Duration::from_millis(1200));
    let total = clients(&mut a);
    a.batch_execute("ALTER SYSTEM SET dbconn_guard.enabled = on")
        .unwrap();
    a.batch_execute("SELECT pg_reload_conf()").unwrap();
    thread::sleep(Duration::from_secs(3));
    let ended = sessions.iter().filter(|(_, p)| !alive(&mut a, *p)).count() as i64;
    assert_eq!(
        ended,
        total - floor + 1,
        "from {total} client backends, ended while at or above {floor} ({} sessions of the test)",
        sessions.len()
    );
    drop(sessions);
    reset_system(&mut a);
}

#[test]
fn a_parallel_pg_dump_by_an_ordinary_role_completes_under_short_timeouts() {
    let mut a = guard_admin();
    ensure_role(&mut a, "it_dumper", "");
    let exists: bool = a
        .query_one(
            "SELECT count(*) = 1 FROM pg_database WHERE datname = 'it_dump'",
            &[],
        )
        .unwrap()
        .get(0);
    if !exists {
        a.batch_execute("CREATE DATABASE it_dump OWNER it_dumper")
            .unwrap();
        let mut o = connect_to("it_dumper", "it_dump", "it_dump_setup");
        // enough rows that the leader sits idle in its transaction past the timeout while
        // the two workers copy them
        o.batch_execute(
            "CREATE TABLE a AS SELECT g, md5(g::text) AS h FROM generate_series(1, 1200000) g; \
             CREATE TABLE b AS SELECT g, md5(g::text) AS h FROM generate_series(1, 1200000) g;",
        )
        .unwrap();
    }
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.idle_in_transaction_timeout", "2s"),
            ("dbconn_guard.idle_timeout", "2s"),
        ],
    );
    let bin = std::path::PathBuf::from(std::env::var("DBCONN_GUARD_PG_BIN").unwrap());
    let out = std::env::temp_dir().join(format!("it_dump_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let port = test_port().to_string();
    let mut dump = std::process::Command::new(bin.join("pg_dump"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "it_dumper",
            "-Fd",
            "-j",
            "2",
            "-Z",
            "9",
        ])
        .arg("-f")
        .arg(&out)
        .arg("it_dump")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // how long the leader sat idle in its transaction
    let mut longest: f64 = 0.0;
    let status = loop {
        if let Some(s) = dump.try_wait().unwrap() {
            break s;
        }
        let age: Option<f64> = a
            .query_one(
                "SELECT max(extract(epoch FROM clock_timestamp() - state_change))::float8 FROM pg_stat_activity \
                  WHERE application_name = 'pg_dump' AND state = 'idle in transaction'",
                &[],
            )
            .unwrap()
            .get(0);
        longest = longest.max(age.unwrap_or(0.0));
        thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    use std::io::Read;
    dump.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let _ = std::fs::remove_dir_all(&out);
    assert!(status.success(), "pg_dump -j 2 failed: {err}");
    assert!(
        longest > 2.5,
        "the leader was idle in transaction for {longest:.1}s only: the dump does not test the timeout"
    );
    reset_system(&mut a);
}

#[test]
fn a_cancel_does_not_restart_the_worker() {
    let mut a = guard_admin();
    let w = worker_pid(&mut a);
    for _ in 0..3 {
        a.execute("SELECT pg_cancel_backend($1)", &[&w]).unwrap();
        thread::sleep(Duration::from_millis(300));
    }
    thread::sleep(Duration::from_millis(1000));
    assert_eq!(worker_pid(&mut a), w, "cancelled, not restarted");
}

#[test]
fn terminate_idle_skips_sessions_the_caller_may_not_signal() {
    let mut a = guard_admin();
    ensure_role(
        &mut a,
        "it_t_exec",
        "GRANT EXECUTE ON FUNCTION dbconn_guard.terminate_idle(interval, text[], text, boolean, text, text, text) TO it_t_exec; \
         GRANT pg_read_all_stats TO it_t_exec",
    );
    let (_s1, others) = idle_in_transaction_as(APP_ROLE, "it_t_perm");
    let (_s2, own) = idle_in_transaction_as("it_t_exec", "it_t_perm");
    let mut e = connect_as("it_t_exec", "it_t_exec");
    let rows: BTreeMap<i32, String> = e
        .query(
            "SELECT pid, action FROM dbconn_guard.terminate_idle('0', application_name => 'it_t_perm')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        rows.get(&others)
            .is_some_and(|a| a.starts_with("skipped: permission denied")),
        "{rows:?}"
    );
    assert_eq!(rows.get(&own).map(String::as_str), Some("terminated"));
    wait_gone(&mut a, own, Duration::from_secs(5));
    assert!(alive(&mut a, others));
    assert!(audit(&mut a, others).is_empty());
    assert_eq!(audit(&mut a, own)[0].2, "manual:it_t_exec");
    a.batch_execute(
        "REVOKE EXECUTE ON FUNCTION dbconn_guard.terminate_idle(interval, text[], text, boolean, text, text, text) FROM it_t_exec",
    )
    .unwrap();
}

#[test]
fn timeouts_take_seconds_and_refuse_values_that_would_end_ordinary_sessions() {
    let mut a = guard_admin();
    for (sql, why) in [
        (
            "ALTER SYSTEM SET dbconn_guard.idle_in_transaction_timeout = '300ms'",
            "at least 1s",
        ),
        (
            "ALTER SYSTEM SET dbconn_guard.idle_timeout = '0.5'",
            "at least 1s",
        ),
        (
            "ALTER SYSTEM SET dbconn_guard.idle_timeout = '-1'",
            "outside the valid range",
        ),
        (
            "ALTER SYSTEM SET dbconn_guard.naptime = '10ms'",
            "outside the valid range",
        ),
    ] {
        let err = a.batch_execute(sql).expect_err(sql);
        assert!(db_error(&err).contains(why), "{sql}: {}", db_error(&err));
    }
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.idle_in_transaction_timeout", "300"),
            ("dbconn_guard.idle_timeout", "1500ms"),
            ("dbconn_guard.naptime", "2"),
        ],
    );
    let r = a
        .query_one(
            "SELECT policy->>'idle_in_transaction_timeout', policy->>'idle_timeout', policy->>'naptime' FROM dbconn_guard.worker_status()",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2)
        ),
        ("5min".into(), "1500ms".into(), "2s".into()),
        "a bare number is seconds"
    );
    reset_system(&mut a);
}

#[test]
fn client_chosen_names_cannot_forge_fields_of_the_log_line() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[("dbconn_guard.idle_in_transaction_timeout", "1s")],
    );
    let forged = "x\" client=10.0.0.9 actor=\"manual:alice";
    let (_s, victim) = stale_in_transaction(forged);
    wait_gone(&mut a, victim, Duration::from_secs(10));
    reset_system(&mut a);
    if std::env::var("DBCONN_GUARD_TEST_LOG").is_err() {
        return;
    }
    let log = server_log();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("dbconn_guard: terminated pid {victim} ")))
        .expect("the LOG line");
    assert!(
        line.contains(r#"application="x\" client=10.0.0.9 actor=\"manual:alice""#),
        "{line}"
    );
    assert!(line.ends_with(r#"actor="worker""#), "{line}");
}

#[test]
fn long_name_lists_show_whole_in_the_policy_or_say_why_not() {
    let mut a = guard_admin();
    let long: String = (0..300)
        .map(|i| format!("app-{i:04}"))
        .collect::<Vec<_>>()
        .join(", ");
    alter_system(&mut a, &[("dbconn_guard.exclude_applications", &long)]);
    let shown: String = a
        .query_one(
            "SELECT policy->>'exclude_applications' FROM dbconn_guard.worker_status()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(shown, long);
    let huge: String = (0..2000)
        .map(|i| format!("app-{i:04}"))
        .collect::<Vec<_>>()
        .join(", ");
    a.batch_execute(&format!(
        "ALTER SYSTEM SET dbconn_guard.exclude_applications = '{huge}'"
    ))
    .unwrap();
    a.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until(
        &mut a,
        "SELECT coalesce(policy->>'exclude_applications' LIKE '%too long to show here: SHOW dbconn_guard.exclude_applications%', false) FROM dbconn_guard.worker_status()",
        Duration::from_secs(10),
    );
    let enabled: String = a
        .query_one(
            "SELECT policy->>'enabled' FROM dbconn_guard.worker_status()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        enabled, "on",
        "the rest of the policy is there, as valid JSON"
    );
    reset_system(&mut a);
}

#[test]
fn a_latin1_database_with_non_ascii_text_is_read_and_guarded() {
    let mut a = guard_admin();
    let exists: bool = a
        .query_one(
            "SELECT count(*) = 1 FROM pg_database WHERE datname = 'it_latin1'",
            &[],
        )
        .unwrap()
        .get(0);
    if !exists {
        a.batch_execute(
            "CREATE DATABASE it_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        )
        .unwrap();
    }
    let mut l = connect_to("postgres", "it_latin1", "it_latin1_admin");
    l.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS dbconn_guard; \
         CREATE TABLE IF NOT EXISTS café (id int); GRANT ALL ON café TO PUBLIC",
    )
    .unwrap();
    // a lock pile-up whose queries hold non-ASCII text, by sessions with a non-ASCII
    // application_name
    let mut holder = connect_to(APP_ROLE, "it_latin1", "caféholder");
    let holder_pid = pid(&mut holder);
    holder
        .batch_execute("BEGIN; LOCK TABLE café IN ACCESS EXCLUSIVE MODE; SELECT 'déjà vu'")
        .unwrap();
    let mut w = connect_to(APP_ROLE, "it_latin1", "caféwaiter");
    let waiter = pid(&mut w);
    let h = thread::spawn(move || {
        let _ = w.batch_execute("SELECT count(*) FROM café /* crème brûlée */");
    });
    wait_for_lock_waits(&mut l, &[waiter]);
    query_every_view(&mut l, "in a LATIN1 database");
    // what the views say is what pg_stat_activity says, character for character
    let r = l
        .query_one(
            "SELECT p.blocked_query = a.query, p.blocking_query = h.query, p.blocked_application = a.application_name, \
                    p.relation, p.blocked_query \
               FROM dbconn_guard.blocking_pairs p \
               JOIN pg_stat_activity a ON a.pid = p.blocked_pid \
               JOIN pg_stat_activity h ON h.pid = p.blocking_pid \
              WHERE p.blocked_pid = $1",
            &[&waiter],
        )
        .unwrap();
    assert!(
        r.get::<_, bool>(0),
        "blocked query: {}",
        r.get::<_, String>(4)
    );
    assert!(r.get::<_, bool>(1));
    assert!(r.get::<_, bool>(2));
    // a name outside [a-z0-9_] comes quoted, as regclass shows it in pg_locks
    assert_eq!(r.get::<_, String>(3), "\"café\"");
    assert!(r.get::<_, String>(4).contains("crème brûlée"));
    let same: bool = l
        .query_one(
            "SELECT (SELECT array_agg(application_name ORDER BY application_name) FROM dbconn_guard.connection_analysis WHERE datname = 'it_latin1' AND application_name LIKE 'caf%') \
                  = (SELECT array_agg(DISTINCT application_name ORDER BY application_name) FROM pg_stat_activity WHERE datname = 'it_latin1' AND application_name LIKE 'caf%')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(same, "application names as pg_stat_activity shows them");
    // and the guard ends the holder, recording it
    alter_system(
        &mut a,
        &[("dbconn_guard.idle_in_transaction_timeout", "1s")],
    );
    wait_gone(&mut a, holder_pid, Duration::from_secs(10));
    h.join().unwrap();
    let recorded: i64 = a
        .query_one(
            "SELECT count(*) FROM dbconn_guard.terminations WHERE pid = $1 AND datname = 'it_latin1'",
            &[&holder_pid],
        )
        .unwrap()
        .get(0);
    assert_eq!(recorded, 1);
    reset_system(&mut a);
}

#[test]
fn a_locked_sequence_costs_a_check_one_second_not_one_per_session() {
    let mut a = guard_admin();
    alter_system(
        &mut a,
        &[
            ("dbconn_guard.enabled", "off"),
            ("dbconn_guard.idle_in_transaction_timeout", "1s"),
        ],
    );
    let sessions: Vec<_> = (0..3).map(|_| stale_in_transaction("it_t_seq")).collect();
    thread::sleep(Duration::from_millis(1200));
    // ALTER SEQUENCE holds a lock every nextval() of the audit rows waits for
    let mut holder = connect("it_t_holder");
    holder
        .batch_execute("BEGIN; ALTER SEQUENCE dbconn_guard.terminations_id_seq CACHE 1")
        .unwrap();
    let since = server_epoch(&mut a);
    alter_system(&mut a, &[("dbconn_guard.enabled", "on")]);
    wait_for_worker_error(&mut a, since, "%lock timeout%");
    // the check that met the lock, finished
    let met = worker_checks(&mut a);
    wait_until(
        &mut a,
        &format!("SELECT cycles > {met} FROM dbconn_guard.worker_status()"),
        Duration::from_secs(10),
    );
    let ms: f64 = a
        .query_one(
            "SELECT last_cycle_ms FROM dbconn_guard.worker_status()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        ms < 3000.0,
        "a check waited {ms:.0} ms: one lock timeout per session, not one per step (the batch, then the records kept in memory)"
    );
    // recorded in memory instead, and ended
    for (_, p) in &sessions {
        wait_gone(&mut a, *p, Duration::from_secs(10));
    }
    holder.batch_execute("COMMIT").unwrap();
    for (_, p) in &sessions {
        wait_until(
            &mut a,
            &format!("SELECT count(*) = 1 FROM dbconn_guard.terminations WHERE pid = {p}"),
            Duration::from_secs(10),
        );
    }
    reset_system(&mut a);
}

#[test]
fn a_caller_ended_while_it_waits_leaves_the_mailbox_usable() {
    let mut a = guard_admin();
    // the worker takes a while over each request: time to end its caller meanwhile
    alter_system(&mut a, &[("dbconn_guard.test_delay_before_signal", "1500")]);
    // more rounds than the mailbox has slots
    for _ in 0..6 {
        let (_s, victim) = stale_in_transaction("it_t_mailbox");
        let mut d = dba();
        let caller = pid(&mut d);
        let h = thread::spawn(move || {
            d.query(
                "SELECT * FROM dbconn_guard.terminate_idle('0', application_name => 'it_t_mailbox')",
                &[],
            )
            .map(|rows| rows.len())
        });
        wait_until(
            &mut a,
            &format!("SELECT count(*) = 1 FROM dbconn_guard.terminations WHERE pid = {victim}"),
            Duration::from_secs(10),
        );
        a.execute("SELECT pg_terminate_backend($1)", &[&caller])
            .unwrap();
        assert!(h.join().unwrap().is_err(), "the caller was ended");
        // the request is carried out all the same
        wait_gone(&mut a, victim, Duration::from_secs(10));
    }
    alter_system(&mut a, &[("dbconn_guard.test_delay_before_signal", "0")]);
    let (_s, victim) = stale_in_transaction("it_t_mailbox");
    let mut d = dba();
    let t0 = Instant::now();
    let action: String = d
        .query_one(
            "SELECT action FROM dbconn_guard.terminate_idle('0', application_name => 'it_t_mailbox') WHERE pid = $1",
            &[&victim],
        )
        .unwrap()
        .get(0);
    assert_eq!(action, "terminated");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "waited {:?} for a free slot",
        t0.elapsed()
    );
    reset_system(&mut a);
}
