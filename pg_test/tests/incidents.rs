//! The incident suite: incidents an on-call DBA meets, staged with real sessions on the test
//! server, each beside a healthy busy pool (the bystanders). diagnose() is run as the DBA would
//! run it, and each incident is scored: detected (a row that is not ok in the incident's area),
//! the culprit named in that row's finding, the pasted action fixing it while sparing the
//! bystanders (where the action is one that ends or cancels), and false alarms (warning or
//! critical rows elsewhere). The table is printed and written to target/incidents.md (what
//! diagnose() said of each, to target/incident-rows.md); docs/incidents.md holds the one of a
//! real run.

use dbconn_guard_integration::pgbouncer::pgbench_bin;
use dbconn_guard_integration::*;
use postgres::Client;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

#[derive(Debug, Clone)]
struct Row {
    area: String,
    finding: String,
    status: String,
    action: Option<String>,
}

fn diagnose(c: &mut Client, slow: &str) -> Vec<Row> {
    c.query(
        "SELECT area, finding, status, action FROM dbconn_guard.diagnose($1::text::interval)",
        &[&slow],
    )
    .unwrap()
    .iter()
    .map(|r| Row {
        area: r.get(0),
        finding: r.get(1),
        status: r.get(2),
        action: r.get(3),
    })
    .collect()
}

fn alarm(r: &Row) -> bool {
    r.status == "warning" || r.status == "critical"
}

/// A healthy pool: `n` sessions of one application, each running a short statement every half
/// second (so each is idle for half a second at most), until dropped.
struct BusyPool {
    pids: Vec<i32>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl BusyPool {
    fn start(app: &str, n: usize) -> BusyPool {
        let stop = Arc::new(AtomicBool::new(false));
        let mut pids = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..n {
            let mut c = connect_as(APP_ROLE, app);
            pids.push(pid(&mut c));
            let stop = stop.clone();
            threads.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if c.batch_execute("SELECT 1").is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(500));
                }
            }));
        }
        BusyPool {
            pids,
            stop,
            threads,
        }
    }
}

impl Drop for BusyPool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One incident's score.
struct Score {
    incident: &'static str,
    /// The incident's row: (area, status), or what was found instead.
    detected: Option<(String, String)>,
    culprit_named: bool,
    /// `None`: the row's action looks, it does not end or cancel (nothing to fix by pasting).
    fixed: Option<bool>,
    spared: Option<bool>,
    false_alarms: Vec<String>,
    /// The first row (`incident`) names the culprit, when the incident's row is warning or
    /// critical; `ok` on the healthy server.
    first_row: bool,
    note: &'static str,
    /// What diagnose() said: its rows that are not ok (the first row always), as psql shows them.
    output: String,
}

/// `rows` that are not ok, and the first row, as `SELECT area, status, finding, action` shows
/// them in psql (unaligned, `|` between columns).
fn render(rows: &[Row]) -> String {
    let mut out = String::from("area | status | finding | action\n");
    for (i, r) in rows.iter().enumerate() {
        if i == 0 || r.status != "ok" {
            let _ = writeln!(
                out,
                "{} | {} | {} | {}",
                r.area,
                r.status,
                r.finding,
                r.action.as_deref().unwrap_or("")
            );
        }
    }
    out
}

/// Scores `rows` for an incident whose row is in one of `areas` and names `culprit`.
fn score(incident: &'static str, rows: &[Row], areas: &[&str], culprit: &str) -> Score {
    let mine = rows
        .iter()
        .find(|r| {
            areas.contains(&r.area.as_str()) && r.status != "ok" && r.finding.contains(culprit)
        })
        .or_else(|| {
            rows.iter()
                .find(|r| areas.contains(&r.area.as_str()) && r.status != "ok")
        });
    Score {
        incident,
        detected: mine.map(|r| (r.area.clone(), r.status.clone())),
        culprit_named: mine.is_some_and(|r| r.finding.contains(culprit)),
        fixed: None,
        spared: None,
        false_alarms: rows
            .iter()
            .filter(|r| alarm(r) && r.area != "incident" && !areas.contains(&r.area.as_str()))
            .map(|r| format!("{}: {}", r.area, r.finding))
            .collect(),
        first_row: rows.first().is_some_and(|f| {
            f.area == "incident"
                && if mine.is_some_and(alarm) {
                    alarm(f) && f.finding.contains(culprit)
                } else {
                    !alarm(f)
                }
        }),
        note: "",
        output: render(rows),
    }
}

/// Pastes `row`'s action as the DBA would (statement by statement, in psql).
fn paste(c: &mut Client, row: &Row) {
    let action = row
        .action
        .as_deref()
        .expect("a row that is not ok has an action");
    c.simple_query(action)
        .unwrap_or_else(|e| panic!("{action}: {}", db_error(&e)));
}

fn the_row<'a>(rows: &'a [Row], area: &str, culprit: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.area == area && r.status != "ok" && r.finding.contains(culprit))
        .unwrap_or_else(|| panic!("no {area} row naming {culprit}: {rows:#?}"))
}

fn all_gone(a: &mut Client, pids: &[i32]) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if pids.iter().all(|&p| !alive(a, p)) {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

fn all_alive(a: &mut Client, pids: &[i32]) -> bool {
    pids.iter().all(|&p| alive(a, p))
}

#[test]
fn the_incident_suite() {
    let mut a = guard_admin();
    // every incident applies to every version; PostgreSQL 15's run writes the files the
    // documentation is taken from (target/incidents.md), the others theirs beside them
    let version: i32 = a
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .unwrap()
        .get(0);
    let suffix = match version / 10000 {
        15 => String::new(),
        v => format!("-pg{v}"),
    };
    ensure_role(
        &mut a,
        "it_i_dba",
        "GRANT dbconn_guard_admin, pg_monitor TO it_i_dba",
    );
    a.batch_execute(&format!(
        "DROP TABLE IF EXISTS it_i_t, it_i_victim; CREATE TABLE it_i_t (id int PRIMARY KEY); \
         INSERT INTO it_i_t VALUES (1); GRANT SELECT, UPDATE ON it_i_t TO {APP_ROLE}; \
         CREATE TABLE it_i_victim ()"
    ))
    .unwrap();
    alter_system(&mut a, &[("dbconn_guard.sample_interval", "1")]);
    // the DBA's thresholds for a test's ages (superuser-settable: set for the role)
    for (name, value) in [
        ("dbconn_guard.leak_idle_age", "3s"),
        ("dbconn_guard.idle_warning_age", "3s"),
        ("dbconn_guard.idle_in_transaction_warning_age", "3s"),
        ("dbconn_guard.diagnose_window", "2min"),
    ] {
        a.batch_execute(&format!("ALTER ROLE it_i_dba SET {name} = '{value}'"))
            .unwrap();
    }
    let mut dba = connect_as("it_i_dba", "psql");
    let bystanders = BusyPool::start("it_i_web", 10);
    let mut scores = Vec::new();

    // 0. healthy: the busy pool, short transactions contending for one row
    {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<JoinHandle<()>> = (0..4)
            .map(|_| {
                let mut c = connect_as(APP_ROLE, "it_i_oltp");
                let stop = stop.clone();
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = c.batch_execute("BEGIN; UPDATE it_i_t SET id = id WHERE id = 1; SELECT pg_sleep(0.01); COMMIT");
                        thread::sleep(Duration::from_millis(20));
                    }
                })
            })
            .collect();
        thread::sleep(Duration::from_secs(6));
        let rows = diagnose(&mut dba, "5 minutes");
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            let _ = w.join();
        }
        let mut s = score(
            "healthy: a busy pool of 10 and short contending transactions",
            &rows,
            &[],
            "",
        );
        s.detected = None;
        s.note = "no row may be warning or critical";
        scores.push(s);
    }

    // 0b. healthy: pgbench's TPC-B-like load (8 clients contending for pgbench_branches'
    // rows), the issue's first incident: its sessions are idle in transaction for a moment
    // between statements and wait on each other for milliseconds; nothing is wrong
    {
        a.batch_execute("DROP DATABASE IF EXISTS it_i_bench WITH (FORCE)")
            .unwrap();
        a.batch_execute(&format!("CREATE DATABASE it_i_bench OWNER {APP_ROLE}"))
            .unwrap();
        let port = test_port().to_string();
        let host = std::env::var("DBCONN_GUARD_TEST_HOST").unwrap_or_else(|_| "127.0.0.1".into());
        let init = std::process::Command::new(pgbench_bin())
            .args([
                "-i",
                "-q",
                "-s",
                "1",
                "-h",
                &host,
                "-p",
                &port,
                "-U",
                APP_ROLE,
                "it_i_bench",
            ])
            .output()
            .expect("pgbench -i");
        assert!(
            init.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let bench = std::process::Command::new(pgbench_bin())
            .args([
                "-c",
                "8",
                "-j",
                "2",
                "-T",
                "7",
                "-h",
                &host,
                "-p",
                &port,
                "-U",
                APP_ROLE,
                "it_i_bench",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("pgbench");
        thread::sleep(Duration::from_secs(5));
        let rows = diagnose(&mut dba, "5 minutes");
        let out = bench.wait_with_output().expect("pgbench");
        let mut s = score("healthy: pgbench, 8 clients (TPC-B-like)", &rows, &[], "");
        s.detected = None;
        s.note = "no row may be warning or critical";
        scores.push(s);
        assert!(
            out.status.success(),
            "pgbench: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        a.batch_execute("DROP DATABASE IF EXISTS it_i_bench WITH (FORCE)")
            .unwrap();
    }

    // 1. an application leaking idle connections
    {
        let leak: Vec<(Client, i32)> = (0..40).map(|_| stale_idle("it_i_leaky")).collect();
        let pids: Vec<i32> = leak.iter().map(|(_, p)| *p).collect();
        // past leak_idle_age (3s) and the 5 s under which no action ends an idle session
        thread::sleep(Duration::from_secs(6));
        let rows = diagnose(&mut dba, "5 minutes");
        let mut s = score(
            "an application leaking idle connections (40)",
            &rows,
            &["leaks"],
            "\"it_i_leaky\"",
        );
        paste(&mut dba, the_row(&rows, "leaks", "\"it_i_leaky\""));
        s.fixed = Some(all_gone(&mut a, &pids));
        s.spared = Some(all_alive(&mut a, &bystanders.pids));
        scores.push(s);
    }

    // 1b. a leak growing by one connection a second
    {
        let mut leak: Vec<(std::time::Instant, Client, i32)> = Vec::new();
        for _ in 0..12 {
            let (c, p) = stale_idle("it_i_dripping");
            leak.push((std::time::Instant::now(), c, p));
            thread::sleep(Duration::from_secs(1));
        }
        let rows = diagnose(&mut dba, "5 minutes");
        let mut s = score(
            "a leak growing by one connection a second",
            &rows,
            &["leaks"],
            "\"it_i_dripping\"",
        );
        let pasted = std::time::Instant::now();
        paste(&mut dba, the_row(&rows, "leaks", "\"it_i_dripping\""));
        // what the paste ends: the sessions idle past 5 s (younger ones are never offered
        // for ending: a healthy client's session is idle for a moment between two uses)
        let (old, young): (Vec<i32>, Vec<i32>) = leak
            .iter()
            .map(|(t, _, p)| (pasted.duration_since(*t), *p))
            .fold((Vec::new(), Vec::new()), |(mut o, mut y), (age, p)| {
                if age > Duration::from_secs(7) {
                    o.push(p);
                } else if age < Duration::from_secs(5) {
                    y.push(p);
                }
                (o, y)
            });
        s.fixed = Some(!old.is_empty() && all_gone(&mut a, &old));
        s.spared = Some(all_alive(&mut a, &bystanders.pids) && all_alive(&mut a, &young));
        s.note = "the paste ends the sessions idle past 5 s; younger ones stay, and the application leaks on until it is fixed";
        let pids: Vec<i32> = leak.iter().map(|(_, _, p)| *p).collect();
        drop(leak);
        terminate(&mut a, &pids);
        scores.push(s);
    }

    // 2. an idle-in-transaction root holding up five sessions
    {
        let (mut root_c, root) = idle_in_transaction_as(APP_ROLE, "it_i_root");
        root_c
            .batch_execute("UPDATE it_i_t SET id = id WHERE id = 1")
            .unwrap();
        let waiters: Vec<(i32, Finished)> = (0..5)
            .map(|_| {
                in_background_as(
                    APP_ROLE,
                    "it_i_waiter",
                    "UPDATE it_i_t SET id = id WHERE id = 1",
                )
            })
            .collect();
        let wpids: Vec<i32> = waiters.iter().map(|(p, _)| *p).collect();
        wait_for_lock_waits(&mut a, &wpids);
        thread::sleep(Duration::from_secs(6));
        let rows = diagnose(&mut dba, "5 minutes");
        let culprit = format!("pid {root}");
        let mut s = score(
            "an idle-in-transaction root holding up 5 sessions",
            &rows,
            &["locks", "idle in transaction"],
            &culprit,
        );
        // the DBA pastes the first row, which names the root and ends it
        assert!(
            rows[0].finding.contains(&culprit),
            "the first row: {:#?}",
            rows[0]
        );
        paste(&mut dba, &rows[0]);
        s.fixed = Some(
            all_gone(&mut a, &[root])
                && waiters
                    .into_iter()
                    .all(|(_, h)| h.join().unwrap().0.is_ok()),
        );
        s.spared = Some(all_alive(&mut a, &bystanders.pids));
        scores.push(s);
    }

    // 3. thirty slow queries from one application
    {
        let slow: Vec<(i32, Finished)> = (0..30)
            .map(|_| in_background_as(APP_ROLE, "it_i_report", "SELECT pg_sleep(120)"))
            .collect();
        let pids: Vec<i32> = slow.iter().map(|(p, _)| *p).collect();
        thread::sleep(Duration::from_secs(6));
        let rows = diagnose(&mut dba, "5 seconds");
        let mut s = score(
            "thirty 2-minute queries from one application",
            &rows,
            &["slow queries"],
            "\"it_i_report\"",
        );
        // one row for the group, one paste for its thirty statements
        paste(&mut dba, the_row(&rows, "slow queries", "\"it_i_report\""));
        let running =
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1) AND state = 'active'";
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(5)
            && a.query_one(running, &[&pids]).unwrap().get::<_, i64>(0) > 0
        {
            thread::sleep(Duration::from_millis(100));
        }
        let missed: i64 = a.query_one(running, &[&pids]).unwrap().get(0);
        // what the paste missed is cancelled here, so that the threads return
        a.execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = ANY($1) AND state = 'active'",
            &[&pids],
        )
        .unwrap();
        // the sessions are kept open until checked
        let returned: Vec<_> = slow.into_iter().map(|(_, h)| h.join().unwrap()).collect();
        let cancelled = returned
            .iter()
            .filter(|(r, _)| {
                r.as_ref()
                    .err()
                    .and_then(|e| e.as_db_error())
                    .is_some_and(|d| d.code().code() == "57014")
            })
            .count();
        // every statement ended by the paste's cancel (not by the clean-up above)
        s.fixed = Some(missed == 0 && cancelled == pids.len());
        // a cancel: the sessions stay, as do the bystanders
        s.spared = Some(all_alive(&mut a, &bystanders.pids) && all_alive(&mut a, &pids));
        s.note = "one paste: cancel_statements() for the group, its sessions kept";
        drop(returned);
        terminate(&mut a, &pids);
        scores.push(s);
    }

    // 4. a deployment opening many connections at once
    {
        let burst: Vec<(Client, i32)> = (0..40).map(|_| stale_idle("it_i_deploy_v2")).collect();
        let rows = diagnose(&mut dba, "5 minutes");
        let s = score(
            "a new deployment opening 40 connections at once",
            &rows,
            &["connection storm", "deployment"],
            "\"it_i_deploy_v2\"",
        );
        scores.push(s);
        drop(burst);
    }

    // 5. a configuration change
    {
        alter_system(&mut a, &[("work_mem", "64MB")]);
        thread::sleep(Duration::from_millis(500));
        let rows = diagnose(&mut dba, "5 minutes");
        let s = score(
            "ALTER SYSTEM SET work_mem and a reload",
            &rows,
            &["recent changes"],
            "work_mem",
        );
        scores.push(s);
        a.batch_execute("ALTER SYSTEM RESET work_mem").unwrap();
        a.batch_execute("SELECT pg_reload_conf()").unwrap();
    }

    // 6. three forgotten BEGINs
    {
        let forgotten: Vec<(Client, i32)> = (0..3)
            .map(|_| idle_in_transaction_as(APP_ROLE, "it_i_forgot"))
            .collect();
        thread::sleep(Duration::from_secs(6));
        let rows = diagnose(&mut dba, "5 minutes");
        let first = format!("pid {}", forgotten[0].1);
        let mut s = score(
            "three forgotten BEGINs",
            &rows,
            &["idle in transaction"],
            "idle in transaction",
        );
        s.culprit_named = rows
            .iter()
            .filter(|r| r.area == "idle in transaction" && r.status != "ok")
            .count()
            == 3
            && rows.iter().any(|r| r.finding.contains(&first));
        s.note =
            "the action sets the guard's idle-in-transaction timeout (5min): it ends them then";
        scores.push(s);
        drop(forgotten);
    }

    // 7. a leak under a hostile application_name
    {
        let evil = "x'); DROP TABLE it_i_victim; --";
        let leak: Vec<(Client, i32)> = (0..12).map(|_| stale_idle(evil)).collect();
        let pids: Vec<i32> = leak.iter().map(|(_, p)| *p).collect();
        // past leak_idle_age (3s) and the 5 s under which no action ends an idle session
        thread::sleep(Duration::from_secs(6));
        let rows = diagnose(&mut dba, "5 minutes");
        let mut s = score(
            "a leak under a hostile application_name",
            &rows,
            &["leaks"],
            "DROP TABLE it_i_victim",
        );
        paste(&mut dba, the_row(&rows, "leaks", "DROP TABLE it_i_victim"));
        let table: bool = a
            .query_one("SELECT to_regclass('it_i_victim') IS NOT NULL", &[])
            .unwrap()
            .get(0);
        s.fixed = Some(all_gone(&mut a, &pids) && table);
        s.spared = Some(all_alive(&mut a, &bystanders.pids) && table);
        scores.push(s);
    }

    drop(bystanders);
    a.batch_execute("ALTER ROLE it_i_dba RESET ALL").unwrap();
    reset_system(&mut a);

    // 8. a leak taking 92% of the slots, on a server of its own (50 slots): the pool is
    // critical, and the pasted first row ends the leak's sessions only
    scores.push(leak_to_92_percent());

    // the table
    let mut t = String::from(
        "| incident | detected (area, status) | culprit in the finding | the first row names it | the pasted action fixed it | bystanders spared | false alarms | note |\n|---|---|---|---|---|---|---|---|\n",
    );
    let yes = |b: bool| if b { "yes" } else { "**no**" };
    for s in &scores {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            s.incident,
            s.detected
                .as_ref()
                .map_or("—".to_string(), |(a, st)| format!("{a}, {st}")),
            if s.detected.is_some() {
                yes(s.culprit_named)
            } else {
                "—"
            },
            yes(s.first_row),
            s.fixed.map_or("— (the action looks)", yes),
            s.spared.map_or("—", yes),
            if s.false_alarms.is_empty() {
                "none".to_string()
            } else {
                s.false_alarms.join("; ").replace('|', "\\|")
            },
            s.note
        );
    }
    println!("{t}");
    let _ = std::fs::create_dir_all("../target");
    let _ = std::fs::write(format!("../target/incidents{suffix}.md"), &t);
    // what diagnose() said of each incident, for the documentation
    let mut said = String::new();
    for s in &scores {
        let _ = writeln!(said, "## {}\n\n```text\n{}```\n", s.incident, s.output);
    }
    let _ = std::fs::write(format!("../target/incident-rows{suffix}.md"), &said);

    // what the suite holds diagnose() to
    for s in &scores {
        assert!(
            s.false_alarms.is_empty(),
            "{}: false alarms {:?}\n{t}",
            s.incident,
            s.false_alarms
        );
        assert!(
            s.first_row,
            "{}: the first row does not name it\n{t}",
            s.incident
        );
        if !s.note.starts_with("no row") {
            assert!(s.detected.is_some(), "{}: not detected\n{t}", s.incident);
            assert!(
                s.culprit_named,
                "{}: culprit not in the finding\n{t}",
                s.incident
            );
        }
        if s.spared == Some(false) {
            panic!("{}: a bystander was ended\n{t}", s.incident);
        }
        if s.fixed == Some(false) && !s.note.contains("still to come") {
            panic!("{}: the pasted action did not fix it\n{t}", s.incident);
        }
    }
}

/// An application leaking idle connections until 92% of the slots are taken (46 of 50), beside
/// a busy pool of 4, on a cluster of its own (the shared test server has 300 slots).
fn leak_to_92_percent() -> Score {
    let cluster = Cluster::start(
        "incident92",
        ports::INCIDENT_FULL,
        &[
            "shared_preload_libraries = 'dbconn_guard'",
            "max_connections = 50",
            "dbconn_guard.sample_interval = '1s'",
        ],
    );
    let mut su = cluster.connect("postgres", "postgres", "it_i_su");
    su.batch_execute(&format!(
        "CREATE EXTENSION dbconn_guard; CREATE ROLE {APP_ROLE} LOGIN; CREATE ROLE it_i_dba LOGIN; \
         GRANT dbconn_guard_admin, pg_monitor TO it_i_dba"
    ))
    .unwrap();
    for (name, value) in [
        ("dbconn_guard.leak_idle_age", "3s"),
        ("dbconn_guard.idle_warning_age", "3s"),
        ("dbconn_guard.idle_in_transaction_warning_age", "3s"),
        ("dbconn_guard.diagnose_window", "2min"),
    ] {
        su.batch_execute(&format!("ALTER ROLE it_i_dba SET {name} = '{value}'"))
            .unwrap();
    }
    wait_until(
        &mut su,
        "SELECT running AND extension_ready FROM dbconn_guard.worker_status()",
        Duration::from_secs(30),
    );
    // the bystanders: 4 sessions running a statement every half second
    let stop = Arc::new(AtomicBool::new(false));
    let mut busy = Vec::new();
    let mut busy_pids = Vec::new();
    for _ in 0..4 {
        let mut c = cluster.connect(APP_ROLE, "postgres", "it_i_web");
        busy_pids.push(pid(&mut c));
        let stop = stop.clone();
        busy.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if c.batch_execute("SELECT 1").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(500));
            }
        }));
    }
    let mut dba = cluster.connect("it_i_dba", "postgres", "psql");
    // the leak: 40 idle sessions, with the others 46 of 50 slots
    let leak: Vec<(Client, i32)> = (0..40)
        .map(|_| {
            let mut c = cluster.connect(APP_ROLE, "postgres", "it_i_flood");
            let p = pid(&mut c);
            (c, p)
        })
        .collect();
    let pids: Vec<i32> = leak.iter().map(|(_, p)| *p).collect();
    thread::sleep(Duration::from_secs(6));
    let rows = diagnose(&mut dba, "5 minutes");
    let mut s = score(
        "an application leaking idle connections until 92% of the slots are taken",
        &rows,
        &["pool", "leaks"],
        "\"it_i_flood\"",
    );
    // the DBA pastes the first row
    assert!(
        rows[0].finding.contains("\"it_i_flood\""),
        "the first row: {:#?}",
        rows[0]
    );
    paste(&mut dba, &rows[0]);
    s.fixed = Some(all_gone(&mut su, &pids));
    s.spared = Some(all_alive(&mut su, &busy_pids));
    stop.store(true, Ordering::Relaxed);
    for t in busy {
        let _ = t.join();
    }
    drop(leak);
    s
}
