//! dbconn_guard benchmarks: `./dev.sh bench` starts a throwaway cluster and runs this.
//!
//! Every comparison is measured side by side in the same run, and reported as medians and
//! ratios. Nothing here fails on speed; it fails only on wrong results (a blocking pair set that
//! differs from pg_blocking_pids(), a stale session the worker did not end).
//!
//! `--check` runs a small version (a few dozen sessions) for the test suite.

mod blocker;
mod blocking;
mod budget;
mod cycle;
mod escalation;
mod history;
mod kill;
mod latency;
mod lock_queue;
mod memory;
mod pgbench;

use dbconn_guard_integration::*;
use postgres::Client;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

type Bg = (i32, JoinHandle<Result<(), postgres::Error>>);
/// Sessions made stale, and the state_change (epoch seconds) each had.
type Stale = (Vec<(Client, i32)>, Vec<(i32, f64)>);

struct Ctx {
    check: bool,
    out: String,
    admin: Client,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// "min / median / max" of per-round figures, in ms.
fn min_median_max(v: &[f64], digits: usize) -> String {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => format!(
            "{lo:.digits$} / {:.digits$} / {hi:.digits$}",
            median(v.clone())
        ),
        _ => "n/a".into(),
    }
}

/// Wall time of `sql` on `c`, in ms, median of `runs`.
fn time_query(c: &mut Client, sql: &str, runs: usize) -> f64 {
    c.batch_execute(sql).unwrap(); // warm up
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                c.batch_execute(sql).unwrap();
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect(),
    )
}

fn set(c: &mut Client, settings: &[(&str, &str)]) {
    alter_system(c, settings);
}

/// The cron + psql job of the runbook, in one statement (with the worker's protections).
const CRON_SQL: &str = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
    WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
      AND ((state = 'idle' AND state_change < now() - interval '10 minutes') \
        OR (state IN ('idle in transaction', 'idle in transaction (aborted)') AND state_change < now() - interval '5 minutes')) \
      AND usename NOT IN (SELECT rolname FROM pg_roles WHERE rolsuper)";

const SEED_BLOCKING: &str = "SELECT blocked_locks.pid AS blocked_pid, blocking_locks.pid AS blocking_pid \
    FROM pg_catalog.pg_locks blocked_locks \
    JOIN pg_catalog.pg_stat_activity blocked_activity ON blocked_activity.pid = blocked_locks.pid \
    JOIN pg_catalog.pg_locks blocking_locks ON blocking_locks.locktype = blocked_locks.locktype \
        AND blocking_locks.database IS NOT DISTINCT FROM blocked_locks.database \
        AND blocking_locks.relation IS NOT DISTINCT FROM blocked_locks.relation \
        AND blocking_locks.page IS NOT DISTINCT FROM blocked_locks.page \
        AND blocking_locks.tuple IS NOT DISTINCT FROM blocked_locks.tuple \
        AND blocking_locks.virtualxid IS NOT DISTINCT FROM blocked_locks.virtualxid \
        AND blocking_locks.transactionid IS NOT DISTINCT FROM blocked_locks.transactionid \
        AND blocking_locks.classid IS NOT DISTINCT FROM blocked_locks.classid \
        AND blocking_locks.objid IS NOT DISTINCT FROM blocked_locks.objid \
        AND blocking_locks.objsubid IS NOT DISTINCT FROM blocked_locks.objsubid \
        AND blocking_locks.pid != blocked_locks.pid \
    JOIN pg_catalog.pg_stat_activity blocking_activity ON blocking_activity.pid = blocking_locks.pid \
    WHERE NOT blocked_locks.granted";

const PG_BLOCKING_PIDS: &str =
    "SELECT pid AS blocked_pid, unnest(pg_blocking_pids(pid)) AS blocking_pid FROM pg_locks WHERE NOT granted";

/// The same, with what `blocking_pairs` shows of both sides taken from pg_stat_activity: what a
/// DBA has to write to get comparable rows without the extension.
const PG_BLOCKING_PIDS_DESCRIBED: &str = "SELECT w.pid AS blocked_pid, w.usename, w.application_name, w.datname, w.state,         now() - l.waitstart AS wait, now() - w.xact_start AS xact_age, w.query,         b.pid AS blocking_pid, b.usename, b.application_name, b.state, now() - b.state_change,         now() - b.xact_start, b.query, l.locktype, l.mode, l.relation::regclass     FROM pg_locks l     JOIN pg_stat_activity w ON w.pid = l.pid     CROSS JOIN LATERAL unnest(pg_blocking_pids(l.pid)) k(pid)     JOIN pg_stat_activity b ON b.pid = k.pid     WHERE NOT l.granted";

/// N client sessions of an ordinary role: 70% idle, 20% idle in transaction, 10% active.
struct Sessions {
    idle: Vec<Client>,
    active: Vec<Bg>,
}

impl Sessions {
    fn open(n: usize) -> Sessions {
        let mut s = Sessions {
            idle: Vec::new(),
            active: Vec::new(),
        };
        s.grow(n);
        s
    }

    fn len(&self) -> usize {
        self.idle.len() + self.active.len()
    }

    fn grow(&mut self, n: usize) {
        while self.len() < n {
            let i = self.len();
            if i % 10 == 9 {
                self.active.push(in_background_as(
                    "bench_app",
                    "bench_active",
                    "SELECT pg_sleep(3600)",
                ));
            } else {
                let mut c = connect_as("bench_app", "bench_pool");
                if i % 10 >= 7 {
                    c.batch_execute("BEGIN; SELECT 1").unwrap();
                }
                self.idle.push(c);
            }
        }
    }

    fn close(self, admin: &mut Client) {
        let pids: Vec<i32> = self.active.iter().map(|(p, _)| *p).collect();
        terminate(admin, &pids);
        for (_, h) in self.active {
            let _ = h.join();
        }
        drop(self.idle);
    }
}

fn in_background_as(user: &str, app: &str, sql: &str) -> Bg {
    let mut c = connect_as(user, app);
    let p = pid(&mut c);
    let sql = sql.to_string();
    (p, thread::spawn(move || c.batch_execute(&sql)))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| format!("{:.0} GiB", k / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cores = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {mem} RAM")
}

// ---------------------------------------------------------------------------------------------

/// n ordinary sessions going idle in transaction, spread over `spread`, with the
/// state_change (epoch seconds) each had right after it went idle.
fn stale_sessions(a: &mut Client, n: usize, spread: Duration) -> Stale {
    let mut out = Vec::new();
    let mut changed = Vec::new();
    let start = Instant::now();
    for i in 0..n {
        let mut c = connect_as("bench_app", "bench_stale");
        let p = pid(&mut c);
        c.batch_execute("BEGIN; SELECT 1").unwrap();
        let sc: f64 = a
            .query_one("SELECT extract(epoch FROM state_change)::float8 FROM pg_stat_activity WHERE pid = $1", &[&p])
            .unwrap()
            .get(0);
        changed.push((p, sc));
        out.push((c, p));
        let due = spread.mul_f64((i + 1) as f64 / n as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
    (out, changed)
}

/// Milliseconds from each session's deadline (state_change + timeout) to its audit row.
fn collect_worker_latency(
    a: &mut Client,
    sessions: &[(Client, i32)],
    changed: &[(i32, f64)],
    timeout_s: f64,
) -> Vec<f64> {
    let pids: Vec<i32> = sessions.iter().map(|(_, p)| *p).collect();
    let start = Instant::now();
    loop {
        let left: i64 = a
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            )
            .unwrap()
            .get(0);
        if left == 0 || start.elapsed() > Duration::from_secs(40) {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let ended: Vec<(i32, f64)> = a
        .query(
            "SELECT pid, extract(epoch FROM terminated_at)::float8 FROM dbconn_guard.terminations \
              WHERE pid = ANY($1) AND actor = 'worker' AND NOT dry_run",
            &[&pids],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    ended
        .iter()
        .filter_map(|(p, at)| {
            changed
                .iter()
                .find(|(q, _)| q == p)
                .map(|(_, sc)| (at - sc - timeout_s) * 1000.0)
        })
        .collect()
}

/// Median CPU and wall time (ms) of `n` consecutive worker checks with nothing to do.
fn idle_cycles(a: &mut Client, n: usize) -> (f64, f64) {
    let mut cpu = Vec::new();
    let mut wall = Vec::new();
    let mut last = -1i64;
    let start = Instant::now();
    while cpu.len() < n && start.elapsed() < Duration::from_secs(30) {
        let r = a
            .query_one(
                "SELECT cycles, last_cycle_cpu_ms, last_cycle_ms FROM dbconn_guard.worker_status()",
                &[],
            )
            .unwrap();
        let c: i64 = r.get(0);
        if c != last && last >= 0 {
            cpu.push(r.get::<_, f64>(1));
            wall.push(r.get::<_, f64>(2));
        }
        last = c;
        thread::sleep(Duration::from_millis(110));
    }
    (median(cpu), median(wall))
}

/// `--pests <addr>`: 64 clients that connect to the metrics endpoint and send nothing (each
/// reconnecting once the endpoint cuts it off) and 16 that send a byte of a request every
/// 0.3 s, until stdin closes.
fn pests(endpoint: &str) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for k in 0..80 {
        let (endpoint, stop) = (endpoint.to_string(), stop.clone());
        thread::spawn(move || {
            use std::io::{Read, Write};
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(mut s) = std::net::TcpStream::connect(&endpoint) else {
                    thread::sleep(Duration::from_millis(50));
                    continue;
                };
                s.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                let mut b = [0u8; 256];
                let mut sent = 0;
                // silent: wait for the cut; slow: a byte of a request each 0.3 s
                loop {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    if k >= 64 {
                        let req = b"GET /metrics HTTP/1.1\r\n";
                        if s.write_all(&req[sent % req.len()..sent % req.len() + 1])
                            .is_err()
                        {
                            break;
                        }
                        sent += 1;
                    }
                    match s.read(&mut b) {
                        Ok(_) => break,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
            }
        });
    }
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--pests") {
        return pests(&args[i + 1]);
    }
    let check = std::env::args().any(|a| a == "--check");
    let max_n: usize = std::env::var("DBCONN_GUARD_BENCH_MAX_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut admin = connect("bench_admin");
    ensure_role(&mut admin, "bench_app", "");
    reset_system(&mut admin);
    let mut ctx = Ctx {
        check,
        out: String::new(),
        admin,
    };
    if check {
        // small and quick: results must be right, timings are not judged
        cycle::worker_cycle(&mut ctx, &[20, 50]);
        blocking::blocking(&mut ctx, &[10, 40]);
        latency::latency(&mut ctx, 20);
        kill::kill_path(&mut ctx, &[40], 10);
        blocker::blocker_reaction(&mut ctx, 5, 20);
        lock_queue::lock_queue_reaction(&mut ctx, 5, 20);
        escalation::escalation_reaction(&mut ctx, 3, 20);
        budget::budget_reaction(&mut ctx, 5, 20);
        if std::env::var("DBCONN_GUARD_BENCH_METRICS").is_ok_and(|v| !v.is_empty()) {
            history::history_and_endpoint(&mut ctx, 50);
        }
        reset_system(&mut ctx.admin);
        println!("bench: 8 passed, 0 failed");
        return;
    }
    let started = Instant::now();
    let scales: Vec<usize> = [100, 500, 2000]
        .into_iter()
        .filter(|&n| n <= max_n)
        .collect();
    // one section alone, printed only (for profiling): DBCONN_GUARD_BENCH_ONLY=cycle|kill|history|blocker|lockqueue|escalation|budget|blocking
    match std::env::var("DBCONN_GUARD_BENCH_ONLY").as_deref() {
        Ok("cycle") => return cycle::worker_cycle(&mut ctx, &scales),
        Ok("kill") => return kill::kill_path(&mut ctx, &scales, 100),
        Ok("history") => {
            return history::history_and_endpoint(&mut ctx, *scales.last().unwrap_or(&100))
        }
        Ok("blocker") => return blocker::blocker_reaction(&mut ctx, 100, 500),
        Ok("lockqueue") => return lock_queue::lock_queue_reaction(&mut ctx, 100, 500),
        Ok("escalation") => return escalation::escalation_reaction(&mut ctx, 50, 500),
        Ok("budget") => return budget::budget_reaction(&mut ctx, 50, 500),
        Ok("blocking") => return blocking::blocking(&mut ctx, &[1000]),
        _ => {}
    }
    cycle::worker_cycle(&mut ctx, &scales);
    history::history_and_endpoint(&mut ctx, *scales.last().unwrap_or(&100));
    latency::latency(&mut ctx, 200);
    kill::kill_path(&mut ctx, &scales, 100);
    blocker::blocker_reaction(&mut ctx, 100, 500);
    lock_queue::lock_queue_reaction(&mut ctx, 100, 500);
    escalation::escalation_reaction(&mut ctx, 50, 500);
    budget::budget_reaction(&mut ctx, 50, 500);
    blocking::blocking(&mut ctx, &[10, 100, 1000]);
    memory::memory(&mut ctx, 500, 60);
    pgbench::pgbench(&mut ctx);
    // the server was restarted: a new session
    ctx.admin = connect("bench_admin");
    reset_system(&mut ctx.admin);
    let server: String = ctx.admin.query_one("SELECT version()", &[]).unwrap().get(0);
    let header = format!(
        "# dbconn_guard benchmarks\n\nGenerated by `./dev.sh bench` (pg_test/src/bin/bench/, one file per section) in {:.0} s. Machine: {}. Server: {server}, `max_connections` = {}. Largest session count reached: {}.\n\nRatios are the contract; absolute times are context. Every comparison below was measured in the same run.\n\n",
        started.elapsed().as_secs_f64(),
        machine(),
        ctx.admin.query_one("SHOW max_connections", &[]).unwrap().get::<_, String>(0),
        scales.last().unwrap_or(&0),
    );
    let path = std::env::var("DBCONN_GUARD_BENCH_OUT").unwrap_or_else(|_| "BENCHMARKS.md".into());
    let notes = std::fs::read_to_string(format!("{path}.notes")).unwrap_or_default();
    // the soak's section (./dev.sh soak) stays
    let soak = std::fs::read_to_string(&path)
        .ok()
        .and_then(|md| soak_section(&md).map(|s| format!("\n{s}\n")))
        .unwrap_or_default();
    std::fs::write(&path, format!("{header}{}{notes}{soak}", ctx.out)).unwrap();
    println!("wrote {path}");
}
