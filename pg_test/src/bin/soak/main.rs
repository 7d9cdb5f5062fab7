//! `./dev.sh soak [minutes]`: hundreds of real sessions of every kind against a cluster with the
//! guard preloaded, for minutes, under disturbances (hostile application names, a reload storm,
//! a policy change, the worker terminated, a crash-restart of the server). Every session knows
//! the outcome it must get; the run fails on any wrong, missed or unaudited termination.
//!
//! Sessions are told apart by (pid, backend_start): pids are reused within a run.
//!
//! Environment: DBCONN_GUARD_TEST_PORT (the cluster), DBCONN_GUARD_PG_BIN (its binaries, for
//! psql's replication connections), DBCONN_GUARD_SOAK_LOG (its server log),
//! DBCONN_GUARD_SOAK_SECONDS (default 600), DBCONN_GUARD_SOAK_OUT (a markdown file whose soak
//! section is replaced with the results; unset: print only).

mod sessions;
mod standby;

use dbconn_guard_integration::*;
use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const APP_USER: &str = "soak_app";
const EXCLUDED_USER: &str = "soak_excluded";
const EXCLUDED_DB: &str = "soak_excluded_db";

/// Names an attacker or a careless client may choose; none of them is protected.
const HOSTILE_NAMES: [&str; 10] = [
    "x'; DROP TABLE dbconn_guard.terminations; --",
    "\"); SELECT pg_terminate_backend(pg_backend_pid()); --",
    "%s%s%n%x%d",
    "soak-excluded",   // one character short of the excluded pattern soak-excluded-*
    "SOAK-EXCLUDED-x", // patterns are case-sensitive
    "pg_dump ",        // not PostgreSQL's pg_dump: the client tools match exactly
    "*",
    "ünïcødé-🔥-app",
    "",
    "line\nbreak\ttab",
];

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
enum Kind {
    Busy,
    Flapper,
    ShortTransactions,
    TransactionFlapper,
    LongQuery,
    ExcludedApplication,
    ExcludedUser,
    ExcludedDatabase,
    Superuser,
    ClientTool,
    Churn,
    IdleLeaker,
    TransactionLeaker,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Busy => "busy (gaps under the idle timeout)",
            Kind::Flapper => "flapper (idles 85% of the idle timeout)",
            Kind::ShortTransactions => "transactions with short gaps",
            Kind::TransactionFlapper => "transactions idling 80% of their timeout",
            Kind::LongQuery => "long active queries",
            Kind::ExcludedApplication => "protected: excluded application",
            Kind::ExcludedUser => "protected: excluded user",
            Kind::ExcludedDatabase => "protected: excluded database",
            Kind::Superuser => "protected: superuser",
            Kind::ClientTool => "protected: client tool (pg_dump)",
            Kind::Churn => "short-lived connections",
            Kind::IdleLeaker => "idle leakers",
            Kind::TransactionLeaker => "idle-in-transaction leakers",
        }
    }
    fn is_leaker(self) -> bool {
        matches!(self, Kind::IdleLeaker | Kind::TransactionLeaker)
    }
}

/// How a session ended, as its client saw it.
#[derive(Clone, Debug, PartialEq)]
enum Ending {
    /// still there when the run ended (or, for a leaker, when it checked: a miss)
    Alive,
    /// FATAL 57P01: "terminating connection due to administrator command"
    Terminated,
    /// any other loss of the connection (the crash-restart): code or message
    Lost(String),
}

#[derive(Clone, Debug)]
struct Record {
    kind: Kind,
    pid: i32,
    backend_start: String,
    application_name: String,
    /// client clock: when the last answer arrived before the session went quiet (leakers)
    last_answer: f64,
    /// client clock: when the client saw its session end (0 while it did not)
    noticed: f64,
    ending: Ending,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A pseudo-random number generator per thread (xorshift), seeded per session: no dependency.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// uniform in [a, b)
    fn range(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// The policy of the run: timeouts before and after the change halfway through.
#[derive(Clone, Copy)]
struct Timeouts {
    idle: [f64; 2],
    in_transaction: [f64; 2],
}

impl Timeouts {
    fn idle_min(&self) -> f64 {
        self.idle[0].min(self.idle[1])
    }
    fn iit_min(&self) -> f64 {
        self.in_transaction[0].min(self.in_transaction[1])
    }
}

struct Shared {
    port: u16,
    stop: AtomicBool,
    /// while a crash-restart is under way, and until every session had the chance to notice
    crash_window: Mutex<Option<(f64, f64)>>,
    records: Mutex<Vec<Record>>,
    timeouts: Timeouts,
    /// wall-clock end of the run
    end_at: f64,
    /// grace past a leaker's deadline before it checks whether it was ended (covers the
    /// worker's 5 s restart delay after it is terminated)
    grace: f64,
    started: AtomicUsize,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    /// Sleeps up to `secs` in slices; false when the run is stopping.
    fn nap(&self, secs: f64) -> bool {
        let until = Instant::now() + Duration::from_secs_f64(secs.max(0.0));
        while Instant::now() < until {
            if self.stopping() {
                return false;
            }
            thread::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
            );
        }
        !self.stopping()
    }
    fn push(&self, r: Record) {
        self.records.lock().unwrap().push(r);
    }
}

fn admin(port: u16) -> Client {
    let start = Instant::now();
    loop {
        match config_at(port, "postgres", "postgres", "soak-admin").connect(NoTls) {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "soak admin: {e}"
                );
                thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// The worker's pid once it runs with the extension ready (0 while it does not).
fn worker(c: &mut Client) -> i32 {
    c.query_one(
        "SELECT CASE WHEN running AND extension_ready THEN pid ELSE 0 END FROM dbconn_guard.worker_status()",
        &[],
    )
    .map(|r| r.get::<_, Option<i32>>(0).unwrap_or(0))
    .unwrap_or(0)
}

fn wait_for_new_worker(port: u16, old: i32) -> (i32, f64) {
    let start = Instant::now();
    loop {
        let mut c = admin(port);
        let p = worker(&mut c);
        if p != 0 && p != old {
            return (p, start.elapsed().as_secs_f64());
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the worker did not come back after pid {old}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn set_policy(c: &mut Client, idle: f64, iit: f64) {
    for (name, secs) in [("idle_timeout", idle), ("idle_in_transaction_timeout", iit)] {
        c.batch_execute(&format!(
            "ALTER SYSTEM SET dbconn_guard.{name} = '{}ms'",
            (secs * 1000.0) as i64
        ))
        .unwrap();
    }
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
}

/// The worker's CPU and memory over the run, sampled every second (across restarts).
#[derive(Default)]
struct WorkerUsage {
    cpu_by_pid: HashMap<i32, f64>,
    rss_kb_max: u64,
    rss_kb_first: u64,
    rss_kb_last: u64,
    samples: usize,
}

fn rss_kb(pid: i32) -> u64 {
    proc_status_kb(pid, "VmRSS").unwrap_or(0).max(0) as u64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let port = test_port();
    let seconds: f64 = std::env::var("DBCONN_GUARD_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600.0);
    // the timeouts scale with the run, so a short run still sees many deadlines pass
    let idle = (seconds / 20.0).clamp(8.0, 30.0);
    let timeouts = Timeouts {
        idle: [idle, idle * 1.25],
        in_transaction: [idle / 2.0, idle * 0.625],
    };
    let mut a = admin(port);
    a.batch_execute(&format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_USER}') THEN CREATE ROLE {APP_USER} LOGIN; END IF;
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{EXCLUDED_USER}') THEN CREATE ROLE {EXCLUDED_USER} LOGIN; END IF;
         END $$"
    ))
    .unwrap();
    for (name, value) in [
        ("exclude_applications", "soak-excluded-*"),
        ("exclude_users", EXCLUDED_USER),
        ("exclude_databases", EXCLUDED_DB),
        ("terminate_superusers", "off"),
        ("exclude_client_tools", "on"),
        ("max_terminations_per_cycle", "100"),
    ] {
        a.batch_execute(&format!("ALTER SYSTEM SET dbconn_guard.{name} = '{value}'"))
            .unwrap();
    }
    if a.query_opt(
        "SELECT 1 FROM pg_database WHERE datname = $1",
        &[&EXCLUDED_DB],
    )
    .unwrap()
    .is_none()
    {
        a.batch_execute(&format!("CREATE DATABASE {EXCLUDED_DB}"))
            .unwrap();
    }
    set_policy(&mut a, timeouts.idle[0], timeouts.in_transaction[0]);
    thread::sleep(Duration::from_secs(1));
    let started_wall = now();
    let started = Instant::now();
    let first_worker = worker(&mut a);
    assert!(first_worker != 0, "the worker is not running");
    let log_path = std::env::var("DBCONN_GUARD_SOAK_LOG").ok();
    let log_offset = log_path
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .unwrap_or(0);

    let sh = Arc::new(Shared {
        port,
        stop: AtomicBool::new(false),
        crash_window: Mutex::new(None),
        records: Mutex::new(Vec::new()),
        timeouts,
        end_at: started_wall + seconds,
        grace: 8.0,
        started: AtomicUsize::new(0),
    });

    // the population: over 500 sessions at once
    let mut plan: Vec<(Kind, usize)> = vec![
        (Kind::Busy, 200),
        (Kind::Flapper, 60),
        (Kind::ShortTransactions, 40),
        (Kind::TransactionFlapper, 20),
        (Kind::LongQuery, 30),
        (Kind::ExcludedApplication, 10),
        (Kind::ExcludedUser, 10),
        (Kind::ExcludedDatabase, 10),
        (Kind::Superuser, 10),
        (Kind::ClientTool, 6),
        (Kind::Churn, 8),
        (Kind::IdleLeaker, 70),
        (Kind::TransactionLeaker, 70),
    ];
    plan.sort();
    let mut handles = Vec::new();
    let mut seed = 1u64;
    for (kind, n) in &plan {
        for _ in 0..*n {
            let sh = sh.clone();
            let (k, s) = (*kind, seed);
            seed += 1;
            handles.push(
                thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || match k {
                        Kind::Churn => sessions::churn(sh, s),
                        k if k.is_leaker() => sessions::leakers(sh, k, s),
                        k => sessions::never_ended(sh, k, s),
                    })
                    .unwrap(),
            );
        }
    }
    let mut walsenders = sessions::replication_sessions(port, 3);
    // the standby, promoted at 55% of the run (its leakers use the first policy's timeout)
    let standby = {
        let (t, grace) = (timeouts.in_transaction[0], sh.grace);
        let promote_at = started + Duration::from_secs_f64(seconds * 0.55);
        thread::spawn(move || standby::standby_phase(port, t, grace, promote_at, started))
    };

    // the disturbances, at fixed points of the run
    let mut events: Vec<String> = Vec::new();
    let mut usage = WorkerUsage::default();
    let mut peak_sessions = 0i64;
    let at = |f: f64| started + Duration::from_secs_f64(seconds * f);
    let mut done = [false; 5];
    let mut crashed_pid = 0;
    let mut terminated_worker = 0;
    let mut reload_storm: Option<thread::JoinHandle<usize>> = None;
    let mut change_at = f64::INFINITY;
    while started.elapsed().as_secs_f64() < seconds {
        thread::sleep(Duration::from_secs(1));
        let mut c = admin(port);
        let w = worker(&mut c);
        if w != 0 {
            let cpu = cpu_seconds(w);
            usage.cpu_by_pid.insert(w, cpu);
            let rss = rss_kb(w);
            usage.rss_kb_max = usage.rss_kb_max.max(rss);
            if usage.samples == 5 {
                usage.rss_kb_first = rss;
            }
            usage.rss_kb_last = rss;
            usage.samples += 1;
        }
        if let Ok(r) = c.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('client backend', 'walsender')",
            &[],
        ) {
            peak_sessions = peak_sessions.max(r.get(0));
        }
        let now_i = Instant::now();
        if !done[0] && now_i >= at(0.15) {
            done[0] = true;
            let port = sh.port;
            let until = at(0.25);
            events.push(format!(
                "{:.0}s: reload storm (pg_reload_conf() every 20 ms for {:.0}s)",
                started.elapsed().as_secs_f64(),
                seconds * 0.10
            ));
            reload_storm = Some(thread::spawn(move || {
                let mut c = admin(port);
                let mut n = 0;
                while Instant::now() < until {
                    if c.batch_execute("SELECT pg_reload_conf()").is_ok() {
                        n += 1;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                n
            }));
        }
        if !done[1] && now_i >= at(0.35) {
            done[1] = true;
            c.batch_execute(&format!("SELECT pg_terminate_backend({w})"))
                .unwrap();
            terminated_worker = w;
            let (new, took) = wait_for_new_worker(port, w);
            events.push(format!(
                "{:.0}s: pg_terminate_backend(worker {w}): the postmaster started worker {new} {took:.1}s later",
                started.elapsed().as_secs_f64()
            ));
        }
        if !done[2] && now_i >= at(0.5) {
            done[2] = true;
            set_policy(&mut c, timeouts.idle[1], timeouts.in_transaction[1]);
            events.push(format!(
                "{:.0}s: policy change: idle_timeout {:.1}s -> {:.1}s, idle_in_transaction_timeout {:.1}s -> {:.1}s",
                started.elapsed().as_secs_f64(),
                timeouts.idle[0],
                timeouts.idle[1],
                timeouts.in_transaction[0],
                timeouts.in_transaction[1]
            ));
            change_at = now();
        }
        if !done[3] && now_i >= at(0.7) {
            done[3] = true;
            let mut victim = admin(port);
            let vpid: i32 = victim
                .query_one("SELECT pg_backend_pid()", &[])
                .unwrap()
                .get(0);
            crashed_pid = vpid;
            let t0 = now();
            *sh.crash_window.lock().unwrap() = Some((t0, f64::INFINITY));
            let ok = Command::new("kill")
                .args(["-9", &vpid.to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -9 {vpid}");
            drop(victim);
            let (new, took) = wait_for_new_worker(port, w);
            *sh.crash_window.lock().unwrap() = Some((t0, now() + 2.0));
            for mut p in walsenders.drain(..) {
                let _ = p.kill();
                let _ = p.wait();
            }
            walsenders = sessions::replication_sessions(port, 3);
            events.push(format!(
                "{:.0}s: crash-restart: backend {vpid} killed with SIGKILL; the server reinitialized and worker {new} ran {took:.1}s later",
                started.elapsed().as_secs_f64()
            ));
        }
    }
    let reloads = reload_storm.map(|h| h.join().unwrap_or(0)).unwrap_or(0);
    if let Some(e) = events.first_mut() {
        e.push_str(&format!(": {reloads} reloads"));
    }
    sh.stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let standby = standby.join().expect("the standby phase");
    events.extend(standby.events.iter().cloned());
    let at_s = |e: &String| -> f64 {
        e.split('s')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0)
    };
    events.sort_by(|a, b| at_s(a).total_cmp(&at_s(b)));
    // the walsenders: all still there
    let mut c = admin(port);
    let walsenders_alive: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' AND application_name = 'soak-replication'",
            &[],
        )
        .unwrap()
        .get(0);
    for mut p in walsenders {
        let _ = p.kill();
        let _ = p.wait();
    }
    let final_worker = worker(&mut c);
    let elapsed = started.elapsed().as_secs_f64();

    // ---- the verdict ----
    struct Audit {
        rule: String,
        state_age: f64,
        at: f64,
        dry_run: bool,
        application_name: String,
    }
    let mut audit: HashMap<(i32, String), Audit> = HashMap::new();
    for r in c
        .query(
            "SELECT pid, backend_start::text, rule, state_age_seconds, extract(epoch FROM terminated_at)::float8, dry_run, coalesce(application_name, '')
               FROM dbconn_guard.terminations WHERE terminated_at >= to_timestamp($1)",
            &[&(started_wall - 1.0)],
        )
        .unwrap()
    {
        audit.insert(
            (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()),
            Audit {
                rule: r.get(2),
                state_age: r.get(3),
                at: r.get(4),
                dry_run: r.get(5),
                application_name: r.get(6),
            },
        );
    }
    let records = std::mem::take(&mut *sh.records.lock().unwrap());
    let crash = *sh.crash_window.lock().unwrap();
    let in_crash = |t: f64| crash.is_some_and(|(a, b)| t >= a - 1.0 && t <= b);
    let mut wrong: Vec<String> = Vec::new();
    let mut missed: Vec<String> = Vec::new();
    let mut unaudited: Vec<String> = Vec::new();
    let mut reaction: Vec<f64> = Vec::new();
    let mut reaction_calm: Vec<f64> = Vec::new();
    let mut min_margin = f64::INFINITY;
    let mut per_kind: HashMap<Kind, (usize, usize, usize)> = HashMap::new(); // sessions, ended, lost to the crash
    let mut matched = 0usize;
    let disturbed = |deadline: f64| {
        // the worker was terminated at 35% (restart after 5 s), the server crashed at 70%
        let w = started_wall + seconds * 0.35;
        (deadline >= w - 1.0 && deadline <= w + 8.0) || in_crash(deadline)
    };
    for r in &records {
        let e = per_kind.entry(r.kind).or_default();
        e.0 += 1;
        let key = (r.pid, r.backend_start.clone());
        let label = format!(
            "{} pid {} (application_name {:?})",
            r.kind.name(),
            r.pid,
            r.application_name
        );
        match audit.get(&key) {
            Some(a) => {
                matched += 1;
                e.1 += 1;
                let want = match r.kind {
                    Kind::IdleLeaker => "idle_timeout",
                    Kind::TransactionLeaker => "idle_in_transaction_timeout",
                    _ => "",
                };
                if a.dry_run {
                    wrong.push(format!("{label}: a dry-run record"));
                } else if want.is_empty() {
                    wrong.push(format!("{label}: ended by rule {}", a.rule));
                } else if a.rule != want {
                    wrong.push(format!("{label}: ended by rule {}, not {want}", a.rule));
                } else {
                    let t = if r.kind == Kind::IdleLeaker {
                        timeouts.idle
                    } else {
                        timeouts.in_transaction
                    };
                    let near_change = (a.at - change_at).abs() < 2.0;
                    let in_force = if near_change {
                        t[0].min(t[1])
                    } else if a.at > change_at {
                        t[1]
                    } else {
                        t[0]
                    };
                    // by the client's own clock: the time from its last answer to the record
                    let margin = (a.at - r.last_answer) - in_force;
                    min_margin = min_margin.min(margin);
                    if margin < -0.1 {
                        wrong.push(format!(
                            "{label}: ended {:.3}s after its last answer, timeout {in_force:.1}s",
                            a.at - r.last_answer
                        ));
                    }
                    // by the server's own clock (the audit's state age, rounded to 10 ms)
                    if !near_change && a.state_age - in_force < -0.006 {
                        wrong.push(format!(
                            "{label}: ended after {:.3}s in its state, timeout {in_force:.1}s",
                            a.state_age
                        ));
                    }
                    if !near_change {
                        let late = a.state_age - in_force;
                        reaction.push(late);
                        if !disturbed(r.last_answer + in_force) {
                            reaction_calm.push(late);
                        }
                    }
                    if r.ending != Ending::Terminated && !matches!(r.ending, Ending::Lost(_)) {
                        wrong.push(format!(
                            "{label}: audited, but its client saw no termination ({:?})",
                            r.ending
                        ));
                    }
                }
            }
            None => match &r.ending {
                Ending::Terminated => {
                    if r.kind.is_leaker() {
                        unaudited.push(label);
                    } else {
                        unaudited.push(label.clone());
                        wrong.push(label);
                    }
                }
                Ending::Alive if r.kind.is_leaker() => missed.push(label),
                Ending::Alive => {}
                Ending::Lost(why) => {
                    // every session alive at the crash-restart loses its connection then
                    // (it was connected at the crash, and saw the loss after it)
                    if crash.is_some_and(|(a, b)| r.noticed >= a && r.last_answer <= b) {
                        e.2 += 1;
                    } else {
                        (if r.kind.is_leaker() {
                            &mut missed
                        } else {
                            &mut wrong
                        })
                        .push(format!("{label}: connection lost: {why}"));
                    }
                }
            },
        }
    }
    // terminations of sessions the soak did not start, or did not see end
    let known: std::collections::HashSet<(i32, String)> = records
        .iter()
        .map(|r| (r.pid, r.backend_start.clone()))
        .collect();
    for (k, a) in &audit {
        if !known.contains(k) {
            wrong.push(format!(
                "a session the soak did not expect to be ended: pid {} (application_name {:?}, rule {})",
                k.0, a.application_name, a.rule
            ));
        }
    }
    wrong.extend(standby.wrong.iter().cloned());
    missed.extend(standby.missed.iter().cloned());
    unaudited.extend(standby.unaudited.iter().cloned());
    if walsenders_alive != 3 {
        wrong.push(format!(
            "replication connections: {walsenders_alive} of 3 left"
        ));
    }
    if final_worker == 0 {
        wrong.push("the worker is not running at the end of the run".into());
    }
    // crash lines in the server log, besides the backend killed on purpose
    let mut crash_lines = Vec::new();
    if let Some(p) = &log_path {
        let log = std::fs::read(p).unwrap_or_default();
        let log =
            String::from_utf8_lossy(&log[(log_offset as usize).min(log.len())..]).into_owned();
        for l in log.lines() {
            let bad = l.contains("PANIC")
                || l.contains("TRAP")
                || l.contains("terminated by signal")
                || l.contains("terminated by exception")
                || l.contains("exited with exit code 1") && l.contains("dbconn_guard");
            // the two on purpose: the backend killed with SIGKILL, the worker terminated
            let expected = l.contains(&format!("PID {crashed_pid}) was terminated by signal 9"))
                || l.contains(&format!("PID {terminated_worker}) exited with exit code 1"));
            if bad && !expected {
                crash_lines.push(l.to_string());
            }
        }
    }
    reaction.sort_by(|a, b| a.partial_cmp(b).unwrap());
    reaction_calm.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let cpu: f64 = usage.cpu_by_pid.values().sum();

    // ---- the report ----
    let mut out = String::new();
    out.push_str(&format!(
        "Run of {elapsed:.0} s on {}: {} sessions opened in all, {peak_sessions} at the peak (client backends and walsenders). Policy: idle_timeout {:.1}s, idle_in_transaction_timeout {:.1}s, changed halfway to {:.1}s and {:.1}s; excluded application `soak-excluded-*`, user `{EXCLUDED_USER}`, database `{EXCLUDED_DB}`; superusers, client tools and walsenders protected by default.\n\n",
        c.query_one("SELECT split_part(version(), ' on ', 1)", &[]).unwrap().get::<_, String>(0),
        records.len(),
        timeouts.idle[0],
        timeouts.in_transaction[0],
        timeouts.idle[1],
        timeouts.in_transaction[1],
    ));
    out.push_str("Disturbances:\n\n");
    for e in &events {
        out.push_str(&format!("- {e}\n"));
    }
    out.push_str("\n| session kind | sessions | ended by the guard | lost to the crash-restart | must be |\n| --- | ---: | ---: | ---: | --- |\n");
    let mut kinds: Vec<_> = per_kind.iter().collect();
    kinds.sort();
    for (k, (n, ended, lost)) in kinds {
        out.push_str(&format!(
            "| {} | {n} | {ended} | {lost} | {} |\n",
            k.name(),
            if k.is_leaker() {
                "ended and audited"
            } else {
                "never ended"
            }
        ));
    }
    out.push_str(&format!(
        "| idle-in-transaction leakers on a hot standby, before its promotion | 10 | {} | 0 | ended, kept in `recent_terminations()` after the promotion |\n| idle-in-transaction leakers on that standby once promoted | 10 | {} | 0 | ended and audited |\n",
        standby.ended.0, standby.ended.1
    ));
    out.push_str(&format!(
        "| replication connections (idle walsenders, restarted after the crash) | 6 | 0 | 3 | never ended |\n\n| outcome | count |\n| --- | ---: |\n| **wrong terminations** (a protected or live session ended, or a leaker before its timeout by its client's clock) | **{}** |\n| **missed** (a leaker not ended by its deadline + {:.0} s) | **{}** |\n| **unaudited** (a client saw 57P01 with no audit row) | **{}** |\n| audited terminations matched to their sessions | {matched} |\n| crash lines in the server log (besides the SIGKILL on purpose) | {} |\n\n",
        wrong.len(),
        sh.grace,
        missed.len(),
        unaudited.len(),
        crash_lines.len()
    ));
    let ms = |v: f64| format!("{:.0} ms", v * 1000.0);
    out.push_str(&format!(
        "| reaction past the deadline (audit's state age − timeout) | p50 | p99 | max | n |\n| --- | ---: | ---: | ---: | ---: |\n| every termination | {} | {} | {} | {} |\n| outside the worker's restart and the crash | {} | {} | {} | {} |\n\n",
        ms(percentile(&reaction, 0.5)),
        ms(percentile(&reaction, 0.99)),
        ms(reaction.last().copied().unwrap_or(f64::NAN)),
        reaction.len(),
        ms(percentile(&reaction_calm, 0.5)),
        ms(percentile(&reaction_calm, 0.99)),
        ms(reaction_calm.last().copied().unwrap_or(f64::NAN)),
        reaction_calm.len(),
    ));
    out.push_str(&format!(
        "Smallest margin by a client's clock (record time − last answer − timeout; the client reads its clock after the answer arrives, so a scheduling delay can make it slightly negative, and 100 ms is allowed): {:.3} s. Smallest reaction by the server's clock: {:.0} ms. The worker: {cpu:.2} s of CPU over {elapsed:.0} s ({:.2}% of one core) across {} incarnations; RSS {} kB after 5 s, {} kB at the end, {} kB at most.\n",
        min_margin,
        reaction.first().copied().unwrap_or(f64::NAN) * 1000.0,
        100.0 * cpu / elapsed,
        usage.cpu_by_pid.len(),
        usage.rss_kb_first,
        usage.rss_kb_last,
        usage.rss_kb_max
    ));
    println!("{out}");
    for (what, list) in [
        ("WRONG", &wrong),
        ("MISSED", &missed),
        ("UNAUDITED", &unaudited),
        ("CRASH LINE", &crash_lines),
    ] {
        for l in list.iter().take(20) {
            println!("{what}: {l}");
        }
    }
    let failed = standby.ended != (10, 10)
        || !wrong.is_empty()
        || !missed.is_empty()
        || !unaudited.is_empty()
        || !crash_lines.is_empty()
        || matched == 0;
    if let Ok(path) = std::env::var("DBCONN_GUARD_SOAK_OUT") {
        if !failed {
            let section = format!("## 8. Soak\n\nGenerated by `./dev.sh soak {:.0}` (pg_test/src/bin/soak/) on {}. Machine: {}.\n\n{out}", seconds / 60.0, date(), machine_line());
            replace_soak_section(&path, &section);
            println!("wrote the soak section of {path}");
        }
    }
    println!(
        "soak: {} passed, {} failed",
        u8::from(!failed),
        u8::from(failed)
    );
    if failed {
        std::process::exit(1);
    }
}

fn date() -> String {
    String::from_utf8_lossy(
        &Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .trim()
    .to_string()
}

fn machine_line() -> String {
    let cpus = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    format!("{cpus} CPUs, {mem} memory")
}
