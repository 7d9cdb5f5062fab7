//! dbconn_guard benchmarks: `./dev.sh bench` starts a throwaway cluster and runs this.
//!
//! Every comparison is measured side by side in the same run, and reported as medians and
//! ratios. Nothing here fails on speed; it fails only on wrong results (a blocking pair set that
//! differs from pg_blocking_pids(), a stale session the worker did not end).
//!
//! `--check` runs a small version (a few dozen sessions) for the test suite.

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

fn worker_cycle(ctx: &mut Ctx, scales: &[usize]) {
    let a = &mut ctx.admin;
    set(
        a,
        &[
            ("dbconn_guard.naptime", "100ms"),
            ("dbconn_guard.idle_timeout", "1h"),
            ("dbconn_guard.idle_in_transaction_timeout", "1h"),
        ],
    );
    let mut t = String::from(
        "| sessions | worker cycle CPU (ms) | worker cycle wall (ms) | cron SQL on an open connection (ms) | cron job: connect + SQL (ms) | SQL / worker | connect+SQL / worker |\n|---|---|---|---|---|---|---|\n",
    );
    let mut sessions = Sessions::open(0);
    for &n in scales {
        sessions.grow(n);
        thread::sleep(Duration::from_millis(500));
        let (mc, mw) = idle_cycles(a, 30);
        let sql = time_query(a, CRON_SQL, 30);
        let connect_sql = median(
            (0..10)
                .map(|_| {
                    let t = Instant::now();
                    let mut c = connect("bench_cron");
                    c.batch_execute(CRON_SQL).unwrap();
                    drop(c);
                    t.elapsed().as_secs_f64() * 1000.0
                })
                .collect(),
        );
        writeln!(
            t,
            "| {} | {mc:.3} | {mw:.3} | {sql:.3} | {connect_sql:.3} | {:.1}× | {:.1}× |",
            sessions.len(),
            sql / mc,
            connect_sql / mc
        )
        .unwrap();
        println!("worker cycle at {} sessions: cpu {mc:.3} ms, wall {mw:.3} ms; cron SQL {sql:.3} ms; connect+SQL {connect_sql:.3} ms", sessions.len());
    }

    // views at the largest scale, against a plain count(*) over pg_stat_activity
    let mut v = String::from("| query | median (ms) | × count(*) |\n|---|---|---|\n");
    let base = time_query(a, "SELECT count(*) FROM pg_stat_activity", 30);
    writeln!(
        v,
        "| `SELECT count(*) FROM pg_stat_activity` | {base:.3} | 1.0× |"
    )
    .unwrap();
    for q in [
        "SELECT * FROM dbconn_guard.connection_analysis",
        "SELECT * FROM dbconn_guard.utilization",
        "SELECT dbconn_guard.utilization_pct()",
        "SELECT * FROM dbconn_guard.health()",
        "SELECT * FROM dbconn_guard.leak_suspects",
    ] {
        let ms = time_query(a, q, 30);
        writeln!(v, "| `{q}` | {ms:.3} | {:.1}× |", ms / base).unwrap();
    }
    sessions.close(a);
    writeln!(ctx.out, "## 1. Worker cycle cost\n\nCPU time of one check, from the worker's own counter (`worker_status().last_cycle_cpu_ms`, median of 30 cycles at naptime 100ms; no session due, so this is the cost of looking), against what a cron + psql job runs once per cycle: the same policy as one SQL statement over `pg_stat_activity` (median of 30, on an open connection) and the same with a new connection each time, as `psql -c` does (median of 10). Sessions: 70% idle, 20% idle in transaction, 10% running `pg_sleep`.\n\n{t}\nTargets at 2000 sessions: worker ≤ 2 ms, and ≥ 10× cheaper than the SQL.\n").unwrap();
    writeln!(ctx.out, "## 5. Views at {} sessions\n\nMedian wall time of 30 runs on an open connection, against a plain `count(*)` over `pg_stat_activity`. Target: at most 2×.\n\n{v}", scales.last().unwrap()).unwrap();
}

fn latency(ctx: &mut Ctx, n: usize) {
    let a = &mut ctx.admin;
    let timeout_s = 5.0;
    let spread = Duration::from_millis(if ctx.check { 1000 } else { 4000 });
    // the worker, deadline-driven
    set(
        a,
        &[
            ("dbconn_guard.naptime", "10s"),
            ("dbconn_guard.idle_in_transaction_timeout", "5s"),
            ("dbconn_guard.idle_timeout", "0"),
        ],
    );
    let (worker, changed) = stale_sessions(a, n, spread);
    let worker_lat = collect_worker_latency(a, &worker, &changed, timeout_s);
    drop(worker);
    // a fixed-interval poller at the same naptime, with the worker off
    set(a, &[("dbconn_guard.enabled", "off")]);
    let (polled, _) = stale_sessions(a, n, spread);
    let pids: Vec<i32> = polled.iter().map(|(_, p)| *p).collect();
    let mut poller = connect("bench_poller");
    let mut lat = Vec::new();
    let start = Instant::now();
    while lat.len() < n && start.elapsed() < Duration::from_secs(60) {
        let rows = poller
            .query(
                // MATERIALIZED: the filter must run before pg_terminate_backend() sees any row
                "WITH due AS MATERIALIZED (SELECT a.pid, a.state_change FROM pg_stat_activity a \
                   WHERE a.pid = ANY($1) AND a.state = 'idle in transaction' \
                     AND a.state_change < clock_timestamp() - make_interval(secs => $2)) \
                 SELECT pid, extract(epoch FROM clock_timestamp() - state_change)::float8 - $2 FROM due \
                  WHERE pg_terminate_backend(pid)",
                &[&pids, &timeout_s],
            )
            .unwrap();
        lat.extend(rows.iter().map(|r| r.get::<_, f64>(1) * 1000.0));
        thread::sleep(Duration::from_secs(10));
    }
    drop(polled);
    set(
        a,
        &[
            ("dbconn_guard.enabled", "on"),
            ("dbconn_guard.idle_in_transaction_timeout", "1h"),
        ],
    );
    assert_eq!(
        worker_lat.len(),
        n,
        "the worker ended {} of {n} stale sessions",
        worker_lat.len()
    );
    let row = |name: &str, v: &Vec<f64>| {
        format!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} |\n",
            v.len(),
            pct(v.clone(), 0.5),
            pct(v.clone(), 0.99),
            pct(v.clone(), 1.0)
        )
    };
    let t =
        format!(
        "| guard | sessions ended | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|---|\n{}{}",
        row("dbconn_guard worker (deadline-driven, naptime 10s)", &worker_lat),
        row("fixed-interval poller (every 10s)", &lat)
    );
    println!("{t}");
    writeln!(ctx.out, "## 2. Reaction latency\n\n{n} sessions go idle in transaction, spread over {:.0}s; `idle_in_transaction_timeout` = 5s, naptime 10s. Latency = moment of termination − (state_change + 5s). Target: p99 ≤ 250 ms.\n\n{t}", spread.as_secs_f64()).unwrap();
}

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

fn blocking(ctx: &mut Ctx, scales: &[usize]) {
    let a = &mut ctx.admin;
    a.batch_execute("DROP TABLE IF EXISTS bench_lock; CREATE TABLE bench_lock (id int); GRANT ALL ON bench_lock TO bench_app").unwrap();
    let most_chains = scales.iter().max().map_or(1, |w| (w / 10).max(1));
    for i in 0..most_chains {
        a.batch_execute(&format!("DROP TABLE IF EXISTS bench_chain_{i}; CREATE TABLE bench_chain_{i} (id int); GRANT ALL ON bench_chain_{i} TO bench_app")).unwrap();
    }
    let mut t = String::from(
        "| waiters | queue | pairs | `blocking_pairs` (ms) | `blocking_chains()` (ms) | seed pg_locks self-join (ms) | `pg_blocking_pids()` per waiter (ms) | the same with both sides described (ms) | seed / view | view / pg_blocking_pids | view / described | every column formed: view / described (ms) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for &w in scales {
        for mixed in [false, true] {
            let (mut root, _) = {
                let mut c = connect_as("bench_app", "bench_root");
                let p = pid(&mut c);
                c.batch_execute("BEGIN; LOCK TABLE bench_lock IN ACCESS EXCLUSIVE MODE")
                    .unwrap();
                (c, p)
            };
            let mut waiters = Vec::new();
            // the pile-up of the issue: one root, the rest waiting, plus chains — W/10 waiters
            // each hold a table of their own that one more session waits for (depth 2)
            let chains = if mixed { 0 } else { (w / 10).max(1) };
            for i in 0..chains {
                waiters.push(in_background_as(
                    "bench_app",
                    "bench_chain_head",
                    &format!("BEGIN; LOCK TABLE bench_chain_{i} IN ACCESS EXCLUSIVE MODE; SELECT count(*) FROM bench_lock; COMMIT"),
                ));
            }
            let heads: Vec<i32> = waiters.iter().map(|(p, _)| *p).collect();
            if !heads.is_empty() {
                // each head holds its table once it waits for the root's
                wait_for_lock_waits(a, &heads);
            }
            for i in 0..chains {
                waiters.push(in_background_as(
                    "bench_app",
                    "bench_chain_tail",
                    &format!("SELECT count(*) FROM bench_chain_{i}"),
                ));
            }
            for i in waiters.len()..w {
                let sql = if mixed && i % 2 == 1 {
                    "BEGIN; LOCK TABLE bench_lock IN ACCESS EXCLUSIVE MODE; COMMIT"
                } else {
                    "SELECT count(*) FROM bench_lock"
                };
                waiters.push(in_background_as("bench_app", "bench_waiter", sql));
            }
            let wpids: Vec<i32> = waiters.iter().map(|(p, _)| *p).collect();
            wait_for_lock_waits(a, &wpids);
            let ours: BTreeSet<(i32, i32)> = a
                .query(
                    "SELECT blocked_pid, blocking_pid FROM dbconn_guard.blocking_pairs",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let theirs: BTreeSet<(i32, i32)> = a
                .query(PG_BLOCKING_PIDS, &[])
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            assert_eq!(
                ours, theirs,
                "blocking_pairs differs from pg_blocking_pids() at {w} waiters"
            );
            if let Some(secs) = std::env::var("DBCONN_GUARD_BENCH_HOLD")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|_| mixed)
            {
                // profiling: the queue stays formed this long
                println!("blocking: {w} waiters ({}) held for {secs} s", ours.len());
                std::thread::sleep(Duration::from_secs(secs));
            }
            let runs = if w >= 1000 { 5 } else { 15 };
            let view = time_query(a, "SELECT count(*) FROM dbconn_guard.blocking_pairs", runs);
            let chains = time_query(
                a,
                "SELECT count(*) FROM dbconn_guard.blocking_chains()",
                runs,
            );
            let seed = time_query(
                a,
                &format!("SELECT count(*) FROM ({SEED_BLOCKING}) s"),
                if w >= 1000 { 3 } else { runs },
            );
            let pbp = time_query(
                a,
                &format!("SELECT count(*) FROM ({PG_BLOCKING_PIDS}) s"),
                runs,
            );
            let described = time_query(
                a,
                &format!("SELECT count(*) FROM ({PG_BLOCKING_PIDS_DESCRIBED}) s"),
                runs,
            );
            // every column of every row formed (a whole-row value each): the joins to both
            // sides' description and the lock are made, not removed
            let view_all = time_query(
                a,
                "SELECT count(p.*) FROM dbconn_guard.blocking_pairs p",
                runs,
            );
            let described_all = time_query(
                a,
                &format!("SELECT count(d.*) FROM ({PG_BLOCKING_PIDS_DESCRIBED}) d"),
                runs,
            );
            let queue = if mixed {
                "shared and exclusive alternating (soft blocks)"
            } else {
                "one root, shared waiters, and W/10 chains of depth 2"
            };
            writeln!(t, "| {w} | {queue} | {} | {view:.2} | {chains:.2} | {seed:.2} | {pbp:.2} | {described:.2} | {:.1}× | {:.2}× | {:.2}× | {view_all:.2} / {described_all:.2} ({:.2}×) |", ours.len(), seed / view, view / pbp, view / described, view_all / described_all).unwrap();
            println!("blocking at {w} waiters ({queue}): {} pairs; view {view:.2} ms, chains {chains:.2}, seed {seed:.2}, pg_blocking_pids {pbp:.2}, described {described:.2}; every column: view {view_all:.2}, described {described_all:.2}", ours.len());
            root.batch_execute("ROLLBACK").unwrap();
            for (_, h) in waiters {
                h.join().unwrap().unwrap();
            }
        }
    }
    writeln!(ctx.out, "## 4. Blocking views under long lock queues\n\nOne session holds `ACCESS EXCLUSIVE` on a table; W sessions queue behind it: either the pile-up of the issue — shared requests, plus W/10 chains (a waiter holding a table of its own that one more session waits for) — or, as a stress shape, shared and exclusive requests alternating, where every exclusive request soft-blocks everything queued behind it (about 3W²/8 pairs). Every run first checks that `blocking_pairs` holds exactly the pairs of `pg_blocking_pids()` (a mismatch fails the run). Medians of 15 runs (5 at 1000 waiters, 3 for the seed query there). Targets at W = 1000: ≥ 20× faster than the seed query, no slower than `pg_blocking_pids()` per waiter. That baseline returns two integers per pair; the column after it returns what `blocking_pairs` shows (both sides' user, application, state, ages and query, and the lock) from `pg_stat_activity` and `pg_locks`. These columns time `SELECT count(*)`: the view joins its pairs to what it shows of each session and each wait, and PostgreSQL leaves those joins out when no column of theirs is asked for (as in counting or grouping pairs), so they time the pairs alone. The last column forms every column of every row (`count(p.*)`), for the view and for the described query.\n\n{t}").unwrap();
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

/// The kill path at scale: `k` stale sessions among `n`, ended in one check. What that check
/// cost beyond a check with nothing to end, per termination, and the window from each session's
/// last status read to its signal (`recent_terminations().signal_window_us`).
fn kill_path(ctx: &mut Ctx, scales: &[usize], k: usize) {
    let a = &mut ctx.admin;
    let mut t = String::from(
        "| sessions | ended in the check | check CPU (ms) | a check with nothing to end (ms) | CPU per termination (µs) | wall per termination (µs) | read→signal p50 (µs) | p99 (µs) | max (µs) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut sessions = Sessions::open(0);
    for &n in scales {
        sessions.grow(n.saturating_sub(k));
        set(
            a,
            &[
                ("dbconn_guard.naptime", "100ms"),
                ("dbconn_guard.idle_timeout", "1h"),
                ("dbconn_guard.idle_in_transaction_timeout", "1h"),
            ],
        );
        thread::sleep(Duration::from_millis(500));
        let (base_cpu, base_wall) = idle_cycles(a, 15);
        // only the stale sessions made here: the pool's own idle-in-transaction sessions stay
        set(
            a,
            &[
                ("dbconn_guard.enabled", "off"),
                ("dbconn_guard.naptime", "10s"),
                ("dbconn_guard.include_applications", "bench_kill"),
                ("dbconn_guard.idle_in_transaction_timeout", "1s"),
            ],
        );
        let stale: Vec<(Client, i32)> = (0..k)
            .map(|_| {
                let mut c = connect_as("bench_app", "bench_kill");
                let p = pid(&mut c);
                c.batch_execute("BEGIN; SELECT 1").unwrap();
                (c, p)
            })
            .collect();
        let pids: Vec<i32> = stale.iter().map(|(_, p)| *p).collect();
        thread::sleep(Duration::from_millis(1200));
        let total0: i64 = a
            .query_one(
                "SELECT terminations_total FROM dbconn_guard.worker_status()",
                &[],
            )
            .unwrap()
            .get(0);
        set(a, &[("dbconn_guard.enabled", "on")]);
        let start = Instant::now();
        let (ended, cpu, wall) = loop {
            let r = a
                .query_one(
                    "SELECT terminations_total, terminations_last_cycle, last_cycle_cpu_ms, last_cycle_ms FROM dbconn_guard.worker_status()",
                    &[],
                )
                .unwrap();
            if r.get::<_, i64>(0) - total0 >= k as i64 {
                break (r.get::<_, i64>(1), r.get::<_, f64>(2), r.get::<_, f64>(3));
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the worker did not end the {k} stale sessions"
            );
            thread::sleep(Duration::from_millis(20));
        };
        let windows: Vec<f64> = a
            .query(
                "SELECT signal_window_us::float8 FROM dbconn_guard.recent_terminations() WHERE pid = ANY($1) AND signal_window_us IS NOT NULL",
                &[&pids],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            windows.len(),
            k,
            "every termination has its window recorded"
        );
        drop(stale);
        let per = |total: f64, base: f64| (total - base) * 1000.0 / ended.max(1) as f64;
        writeln!(
            t,
            "| {} | {ended} | {cpu:.3} | {base_cpu:.3} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            sessions.len() + k,
            per(cpu, base_cpu),
            per(wall, base_wall),
            pct(windows.clone(), 0.5),
            pct(windows.clone(), 0.99),
            pct(windows, 1.0)
        )
        .unwrap();
        println!(
            "kill path at {} sessions: {ended} ended in one check, {:.0} µs CPU each; read→signal p50 {:.0} µs",
            sessions.len() + k,
            per(cpu, base_cpu),
            pct(
                a.query("SELECT signal_window_us::float8 FROM dbconn_guard.recent_terminations() WHERE signal_window_us IS NOT NULL", &[])
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect(),
                0.5
            )
        );
    }
    sessions.close(a);
    set(
        a,
        &[
            ("dbconn_guard.naptime", "10s"),
            ("dbconn_guard.include_applications", ""),
            ("dbconn_guard.idle_in_transaction_timeout", "1h"),
        ],
    );
    writeln!(ctx.out, "## 7. The kill path\n\n{k} sessions go idle in transaction among the others (70% idle, 20% idle in transaction, 10% running a query) with the worker off; then it is switched on and ends them in one check. *Per termination*: that check's CPU (and wall) time beyond the median of 15 checks with nothing to end at the same session count, divided by the sessions it ended: recording (one committed transaction for the batch, a row each in its subtransaction), the last in-place read of each session's status entry, `pg_terminate_backend()`, and the LOG line. *read→signal*: from the start of the last read of a session's status to the return of the signal (`recent_terminations().signal_window_us`), the window in which a query that arrives is still ended with its session. Target: the cost per termination does not depend on the session count.\n\n{t}").unwrap();
}

fn rss_anon_kb(pid: i32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

fn memory(ctx: &mut Ctx, n: usize, seconds: u64) {
    let a = &mut ctx.admin;
    set(
        a,
        &[
            ("dbconn_guard.naptime", "100ms"),
            ("dbconn_guard.idle_timeout", "1h"),
            ("dbconn_guard.idle_in_transaction_timeout", "1h"),
        ],
    );
    let sessions = Sessions::open(n);
    let wpid = worker_pid(a);
    let cycles = |a: &mut Client| -> i64 {
        a.query_one("SELECT cycles FROM dbconn_guard.worker_status()", &[])
            .unwrap()
            .get(0)
    };
    thread::sleep(Duration::from_secs(3));
    let (c0, r0) = (cycles(a), rss_anon_kb(wpid));
    let mut samples = vec![(0u64, c0, r0)];
    let step = seconds / 4;
    for i in 1..=4 {
        thread::sleep(Duration::from_secs(step));
        samples.push((i * step, cycles(a), rss_anon_kb(wpid)));
    }
    sessions.close(a);
    let mut t = String::from("| elapsed (s) | cycles | worker RssAnon (kB) |\n|---|---|---|\n");
    for (s, c, r) in &samples {
        writeln!(t, "| {s} | {} | {r} |", c - c0).unwrap();
    }
    let growth = samples.last().unwrap().2 - samples[1].2;
    println!("{t}");
    writeln!(ctx.out, "## 6. Worker memory\n\n{n} sessions, naptime 100ms, {} cycles (an hour at the default 10s naptime is 360). Anonymous resident memory of the worker process (`RssAnon` in /proc; shared memory excluded). Growth after the first sample: {growth} kB.\n\n{t}", samples.last().unwrap().1 - c0).unwrap();
}

/// The history and the metrics endpoint at `n` sessions: what a sample adds to a check, what a
/// scrape costs (endpoint, SQL, postgres_exporter), reading 24 hours of samples, the reaction
/// with sampling every second and the endpoint scraped meanwhile, and every slot taken.
fn history_and_endpoint(ctx: &mut Ctx, n: usize) {
    let endpoint = std::env::var("DBCONN_GUARD_BENCH_METRICS").expect("DBCONN_GUARD_BENCH_METRICS");
    let runs = if ctx.check { 5 } else { 50 };
    let a = &mut ctx.admin;
    ensure_role(a, "bench_exporter", "GRANT pg_monitor TO bench_exporter");
    let sessions = Sessions::open(n);

    // (a) a check that samples against one that does not, at a naptime of 1s; in rounds, so
    // that the spread of this noisy difference is reported, not one draw of it
    let rounds = if ctx.check { 1 } else { 5 };
    let cycles = if ctx.check { 4 } else { 12 };
    let (mut plain_cpus, mut sampling_cpus, mut sample_costs) =
        (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        set(
            a,
            &[
                ("dbconn_guard.naptime", "1s"),
                ("dbconn_guard.sample_interval", "3600"),
            ],
        );
        thread::sleep(Duration::from_millis(2200));
        let (plain_cpu, _) = idle_cycles(a, cycles);
        let before: i64 = a
            .query_one("SELECT count(*) FROM dbconn_guard.history", &[])
            .unwrap()
            .get(0);
        set(a, &[("dbconn_guard.sample_interval", "1")]);
        thread::sleep(Duration::from_millis(2200));
        let (sampling_cpu, _) = idle_cycles(a, cycles);
        let after: i64 = a
            .query_one("SELECT count(*) FROM dbconn_guard.history", &[])
            .unwrap()
            .get(0);
        assert!(
            after >= before + cycles as i64 / 2,
            "the worker sampled ({before} -> {after})"
        );
        plain_cpus.push(plain_cpu);
        sampling_cpus.push(sampling_cpu);
        sample_costs.push((sampling_cpu - plain_cpu).max(0.0));
    }
    let (plain_cpu, sampling_cpu) = (median(plain_cpus), median(sampling_cpus));

    // (b) a scrape: the endpoint, metrics() over SQL, postgres_exporter with the queries file
    // in rounds of `runs` scrapes: each round's median and p99, and their spread. Each round
    // scrapes unloaded, then with 64 clients that connect and send nothing (each reconnecting
    // once the endpoint cuts it off) and 16 that send a byte every 0.3 s: the two alternate,
    // so drift in the server touches both alike, and both are paced 20 ms apart (back-to-back
    // scrapes find every cache warm, paced ones do not: a like-for-like ratio needs the same)
    let scrape_round = || -> Vec<f64> {
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let (code, body) = http_get(&endpoint, "/metrics");
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                assert_eq!(code, 200, "{body}");
                assert!(body.ends_with("# EOF\n"));
                thread::sleep(Duration::from_millis(20));
                ms
            })
            .collect()
    };
    let mut ep_rounds: Vec<Vec<f64>> = Vec::new();
    let mut loaded: Vec<Vec<f64>> = Vec::new();
    for _ in 0..rounds {
        ep_rounds.push(scrape_round());
        // the misbehaving clients run in a process of their own, as they would in the field
        let mut pests = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--pests", &endpoint])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("start the misbehaving clients");
        thread::sleep(Duration::from_millis(700));
        loaded.push(scrape_round());
        // their stdin closes: they stop
        drop(pests.stdin.take());
        let _ = pests.wait();
        // the endpoint cuts off what they left open
        thread::sleep(Duration::from_millis(300));
    }
    let round_pct =
        |r: &[Vec<f64>], p: f64| -> Vec<f64> { r.iter().map(|v| pct(v.clone(), p)).collect() };
    let (ep_p50, ep_p99) = (round_pct(&ep_rounds, 0.5), round_pct(&ep_rounds, 0.99));
    let (ld_p50, ld_p99) = (round_pct(&loaded, 0.5), round_pct(&loaded, 0.99));
    let ep: Vec<f64> = ep_rounds.concat();
    let sql_ms = time_query(a, "SELECT count(*) FROM dbconn_guard.metrics()", runs);
    let port: u16 = std::env::var("DBCONN_GUARD_TEST_PORT")
        .unwrap()
        .parse()
        .unwrap();
    let exporter = Exporter::start(port, ports::port(ports::BENCH_EXPORTER), "bench_exporter");
    let mut ex = Vec::new();
    for _ in 0..runs.min(20) {
        let t = Instant::now();
        let body = exporter.scrape();
        ex.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(metric_value(&body, "pg_up"), Some(1.0), "{body}");
    }
    drop(exporter);

    // (c) 24 hours of samples (8640 at 10s, written by the worker of this test build)
    let size: i32 = a
        .query_one("SHOW dbconn_guard.history_size", &[])
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    set(
        a,
        &[
            ("dbconn_guard.sample_interval", "3600"),
            ("dbconn_guard.test_fill_history", &size.to_string()),
        ],
    );
    let start = Instant::now();
    loop {
        let done: bool = a
            .query_one(
                "SELECT count(*) = $1 AND min(time) < now() - interval '23 hours' FROM dbconn_guard.history",
                &[&i64::from(size)],
            )
            .unwrap()
            .get(0);
        if done {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the worker did not fill the history"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let rows: i64 = a
        .query_one("SELECT count(*) FROM dbconn_guard.history", &[])
        .unwrap()
        .get(0);
    let group_rows: i64 = a
        .query_one("SELECT count(*) FROM dbconn_guard.history_by_group", &[])
        .unwrap()
        .get(0);
    // diagnose() at this scale, over a full history (its window, 1h, of the 24 h)
    let diagnose_ms = time_query(
        a,
        "SELECT count(*) FROM dbconn_guard.diagnose()",
        runs.min(10),
    );
    let hist_rounds: Vec<f64> = (0..rounds)
        .map(|_| time_query(a, "SELECT * FROM dbconn_guard.history", runs.min(20)))
        .collect();
    let hour_ms = time_query(
        a,
        "SELECT time, utilization_pct FROM dbconn_guard.history WHERE time > now() - interval '1 hour'",
        runs.min(20),
    );
    let groups_ms = time_query(
        a,
        "SELECT * FROM dbconn_guard.history_by_group",
        runs.min(10),
    );
    // what Grafana asks for: an hour, pushed down into the ring walk
    let hour_between_ms = time_query(
        a,
        "SELECT time, utilization_pct FROM dbconn_guard.history_between(now() - interval '1 hour', now())",
        runs.min(20),
    );
    let groups_hour_ms = time_query(
        a,
        "SELECT * FROM dbconn_guard.history_by_group_between(now() - interval '1 hour', now())",
        runs.min(20),
    );
    let groups_hour_rows: i64 = a
        .query_one(
            "SELECT count(*) FROM dbconn_guard.history_by_group_between(now() - interval '1 hour', now())",
            &[],
        )
        .unwrap()
        .get(0);
    let same_hour: bool = a
        .query_one(
            "SELECT (SELECT count(*) FROM dbconn_guard.history_by_group_between(now() - interval '1 hour', now())) \
                  BETWEEN (SELECT count(*) FROM dbconn_guard.history_by_group WHERE time >= now() - interval '1 hour') - 17 \
                      AND (SELECT count(*) FROM dbconn_guard.history_by_group WHERE time >= now() - interval '1 hour') + 17",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        same_hour,
        "history_by_group_between() returns the hour's rows"
    );
    set(a, &[("dbconn_guard.test_fill_history", "0")]);

    // (d) the reaction, without sampling, and with a sample every second and a scrape every 200 ms
    let k = if ctx.check { 10 } else { 100 };
    let spread = Duration::from_millis(if ctx.check { 1000 } else { 4000 });
    set(
        a,
        &[
            ("dbconn_guard.naptime", "10s"),
            ("dbconn_guard.idle_in_transaction_timeout", "5s"),
            ("dbconn_guard.sample_interval", "3600"),
        ],
    );
    let (quiet, changed) = stale_sessions(a, k, spread);
    let quiet_lat = collect_worker_latency(a, &quiet, &changed, 5.0);
    drop(quiet);
    set(a, &[("dbconn_guard.sample_interval", "1")]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = thread::spawn({
        let stop = stop.clone();
        let endpoint = endpoint.clone();
        move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(http_get(&endpoint, "/metrics").0, 200);
                n += 1;
                thread::sleep(Duration::from_millis(200));
            }
            n
        }
    });
    let (busy, changed) = stale_sessions(a, k, spread);
    let busy_lat = collect_worker_latency(a, &busy, &changed, 5.0);
    drop(busy);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes = scraper.join().unwrap();
    set(
        a,
        &[
            ("dbconn_guard.idle_in_transaction_timeout", "0"),
            ("dbconn_guard.sample_interval", "10"),
        ],
    );
    assert_eq!(quiet_lat.len(), k, "ended {} of {k}", quiet_lat.len());
    assert_eq!(busy_lat.len(), k, "ended {} of {k}", busy_lat.len());

    // (e) every slot taken: a postgres_exporter (re)started now cannot log in; the endpoint answers
    let mut held = Vec::new();
    while let Ok(c) = config("postgres", "bench_fill").connect(postgres::NoTls) {
        held.push(c);
        assert!(held.len() < 5000);
    }
    let exporter = Exporter::start(port, ports::port(ports::BENCH_EXPORTER), "bench_exporter");
    let t = Instant::now();
    let refused = exporter.scrape();
    let refused_ms = t.elapsed().as_secs_f64() * 1000.0;
    drop(exporter);
    let t = Instant::now();
    let (code, full) = http_get(&endpoint, "/metrics");
    let full_ms = t.elapsed().as_secs_f64() * 1000.0;
    let full_util = metric_value(&full, "dbconn_guard_utilization_ratio");
    let exporter_up = metric_value(&refused, "pg_up");
    let filled = held.len();
    drop(held);
    thread::sleep(Duration::from_millis(500));
    sessions.close(a);
    assert_eq!(code, 200);
    assert_eq!(full_util, Some(1.0), "{full}");
    assert_eq!(exporter_up, Some(0.0));

    let t = format!(
        "| measure | value |\n|---|---|\n\
         | worker CPU of a check at {n} sessions, no sample | {plain_cpu:.3} ms |\n\
         | the same check taking a sample | {sampling_cpu:.3} ms |\n\
         | **one sample adds** (target ≤ 0.3 ms), min / median / max of {rounds} rounds | **{}** ms |\n\
         | `GET /metrics` at {n} sessions, median / p99 of all {} scrapes | {:.2} / {:.2} ms |\n\
         | its p99 (target ≤ 5 ms), min / median / max of {rounds} rounds of {runs} | **{}** ms |\n\
         | its median, min / median / max of the rounds | {} ms |\n\
         | the same with 64 silent and 16 slow clients connected: the median, min / median / max of {rounds} rounds (target: within 2× of the unloaded one) | **{}** ms ({:.1}× the unloaded, median of the rounds) |\n\
         | and its p99, min / median / max of the rounds | {} ms ({:.1}× the unloaded) |\n\
         | `SELECT count(*) FROM dbconn_guard.metrics()`, median | {sql_ms:.2} ms |\n\
         | postgres_exporter scrape (default metrics + queries.yaml), median | {:.1} ms ({:.0}× the endpoint) |\n\
         | `SELECT * FROM dbconn_guard.history`: {rows} samples (24 h at 10s), min / median / max of {rounds} rounds' medians (target ≤ 20 ms) | **{}** ms |\n\
         | the last hour of it (`WHERE time > now() - '1 hour'`) | {hour_ms:.2} ms |\n\
         | **`diagnose()` at {n} sessions over this history** (target ≤ 50 ms), median | **{diagnose_ms:.1} ms** |\n\
         | the last hour through `history_between(now() - '1 hour', now())` | {hour_between_ms:.2} ms |\n\
         | `SELECT * FROM dbconn_guard.history_by_group`: {group_rows} rows | {groups_ms:.1} ms |\n\
         | **the last hour of it through `history_by_group_between()`**: {groups_hour_rows} rows (target ≤ 20 ms) | **{groups_hour_ms:.2} ms** |\n\
         | reaction past the deadline, {k} sessions, sampling off: p50 / p99 | {:.0} / {:.0} ms |\n\
         | the same with a sample every second and `/metrics` scraped every 200 ms ({scrapes} scrapes): p50 / p99 (target: unchanged, ≤ 250 ms) | {:.0} / {:.0} ms |\n\
         | every slot taken ({} more sessions): postgres_exporter started now | `pg_up 0` (it cannot log in), scrape {refused_ms:.0} ms |\n\
         | every slot taken: `GET /metrics` | {code}, `dbconn_guard_utilization_ratio 1`, {full_ms:.2} ms |\n",
        min_median_max(&sample_costs, 3),
        ep.len(),
        pct(ep.clone(), 0.5),
        pct(ep.clone(), 0.99),
        min_median_max(&ep_p99, 2),
        min_median_max(&ep_p50, 2),
        min_median_max(&ld_p50, 2),
        median(ld_p50.clone()) / median(ep_p50.clone()).max(0.001),
        min_median_max(&ld_p99, 2),
        median(ld_p99.clone()) / median(ep_p99.clone()).max(0.001),
        median(ex.clone()),
        median(ex.clone()) / pct(ep.clone(), 0.5).max(0.001),
        min_median_max(&hist_rounds, 2),
        pct(quiet_lat.clone(), 0.5),
        pct(quiet_lat.clone(), 0.99),
        pct(busy_lat.clone(), 0.5),
        pct(busy_lat.clone(), 0.99),
        filled,
    );
    println!("{t}");
    writeln!(ctx.out, "## 8. The history and the metrics endpoint\n\n{n} sessions (70% idle, 20% idle in transaction, 10% active). A sample's cost is the difference of the worker's median CPU per check (naptime 1s) with a sample at every check and with none. Scrapes are timed from the client, over loopback, 20 ms apart (Prometheus never scrapes back to back), in rounds that alternate unloaded and loaded. The 24 hours of samples are written by the worker of this build (`dbconn_guard.test_fill_history`, test builds only), each with 16 groups of 63-byte names and the remainder.\n\n{t}").unwrap();
}

/// CPU time (user + system) a process has used, in seconds, from /proc/<pid>/stat.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the command name (which may hold spaces) in parentheses
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line (proc(5)); `rest` starts at field 3,
    // so they are at indexes 11 and 12; in clock ticks of 1/100 s (Linux's USER_HZ)
    (ticks(11) + ticks(12)) / 100.0
}

fn pgbench(ctx: &mut Ctx) {
    let bin = std::env::var("DBCONN_GUARD_PG_BIN").expect("DBCONN_GUARD_PG_BIN");
    let data = std::env::var("DBCONN_GUARD_BENCH_DATA").expect("DBCONN_GUARD_BENCH_DATA");
    let port = test_port().to_string();
    let bin = std::path::PathBuf::from(bin);
    let pg = |prog: &str, args: &[&str]| -> String { run_as_postgres(&bin, prog, args) };
    let restart = |preload: bool| {
        let opts = if preload {
            String::new()
        } else {
            "-c shared_preload_libraries=''".to_string()
        };
        // -l: the server must not inherit this process's stdout pipe, or output() never returns
        let log = format!("{data}/server.log");
        pg(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-m", "fast", "-w", "-o", &opts, "restart",
            ],
        );
    };
    pg(
        "pgbench",
        &[
            "-i",
            "-q",
            "-s",
            "10",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "postgres",
        ],
    );
    let run = |script: &str| -> f64 {
        let mut args = vec![
            "-n",
            "-c",
            "2",
            "-j",
            "1",
            "-T",
            "10",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
        ];
        if script == "select-only" {
            args.push("-S");
        }
        args.push("postgres");
        let out = pg("pgbench", &args);
        out.lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let mut t = String::from("| workload | worker at defaults: TPS (A runs) | not preloaded: TPS (B runs) | median A / median B | worker CPU during the A runs (share of the machine) |\n|---|---|---|---|---|\n");
    for script in ["select-only", "tpcb-like"] {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let (mut worker_cpu, mut wall) = (0.0, 0.0);
        for _ in 0..4 {
            restart(true);
            let wpid = worker_pid(&mut connect("bench_admin"));
            let (c0, t0) = (cpu_seconds(wpid), Instant::now());
            with.push(run(script));
            worker_cpu += cpu_seconds(wpid) - c0;
            wall += t0.elapsed().as_secs_f64();
            restart(false);
            without.push(run(script));
        }
        let cores = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let share = worker_cpu / (wall * cores) * 100.0;
        restart(true);
        let fmt = |v: &Vec<f64>| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            t,
            "| {script} | {} | {} | {:.3} | {:.3} s of {:.0} s × {cores:.0} cores = {share:.4}% |",
            fmt(&with),
            fmt(&without),
            median(with.clone()) / median(without.clone()),
            worker_cpu,
            wall,
        )
        .unwrap();
    }
    println!("{t}");
    writeln!(ctx.out, "## 3. Overhead on real work\n\npgbench (scale 10, 2 clients, 1 thread, 10 s a run), alternating A/B four times: A with the extension preloaded and its worker at default settings, B with `shared_preload_libraries` emptied. Target: within 1%. The last column is the direct measure of what the worker takes from the workload: its CPU time (from /proc) over the A runs, as a share of the machine's CPU time in those runs. Client backends themselves run no dbconn_guard code unless they query its views.\n\n{t}").unwrap();
}

/// The root-blocker rule's reaction: `n` pile-ups (a root idle in the transaction that holds a
/// row, one session waiting on it) begin spread over a few seconds among `background` ordinary
/// sessions; `blocker_timeout` = 5s, naptime 10s. Latency = the root's audit row − (its
/// waiter's `pg_locks.waitstart` + 5s).
fn blocker_reaction(ctx: &mut Ctx, n: usize, background: usize) {
    let timeout_s = 5.0;
    let spread = Duration::from_millis(if ctx.check { 1000 } else { 4000 });
    let others = Sessions::open(background);
    let a = &mut ctx.admin;
    a.batch_execute(&format!(
        "DROP TABLE IF EXISTS bench_rows; CREATE TABLE bench_rows (id int PRIMARY KEY);
         INSERT INTO bench_rows SELECT generate_series(1, {n}); GRANT SELECT, UPDATE ON bench_rows TO bench_app"
    ))
    .unwrap();
    set(
        a,
        &[
            ("dbconn_guard.naptime", "10s"),
            ("dbconn_guard.idle_in_transaction_timeout", "0"),
            ("dbconn_guard.idle_timeout", "0"),
            ("dbconn_guard.blocker_timeout", "5s"),
        ],
    );
    let mut roots = Vec::new();
    let mut waiters = Vec::new();
    let mut began: Vec<(i32, f64)> = Vec::new();
    let start = Instant::now();
    for i in 1..=n {
        let mut root = connect_as("bench_app", "bench_root");
        let rp = pid(&mut root);
        root.batch_execute(&format!(
            "BEGIN; UPDATE bench_rows SET id = id WHERE id = {i}"
        ))
        .unwrap();
        let (wp, h) = in_background_as(
            "bench_app",
            "bench_waiter",
            &format!("UPDATE bench_rows SET id = id WHERE id = {i}"),
        );
        let at = loop {
            let r = a
                .query_opt(
                    "SELECT extract(epoch FROM waitstart)::float8 FROM pg_locks WHERE pid = $1 AND NOT granted AND waitstart IS NOT NULL",
                    &[&wp],
                )
                .unwrap();
            if let Some(r) = r {
                break r.get::<_, f64>(0);
            }
            thread::sleep(Duration::from_millis(5));
        };
        began.push((rp, at));
        roots.push((root, rp));
        waiters.push((wp, h));
        let due = spread.mul_f64(i as f64 / n as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
    let lat = collect_worker_latency(a, &roots, &began, timeout_s);
    for (_, h) in waiters {
        h.join()
            .unwrap()
            .expect("a waiter goes on once its root is ended");
    }
    drop(roots);
    set(a, &[("dbconn_guard.blocker_timeout", "0")]);
    a.batch_execute("DROP TABLE bench_rows").unwrap();
    others.close(a);
    assert_eq!(
        lat.len(),
        n,
        "the worker ended {} of {n} root blockers",
        lat.len()
    );
    let t = format!(
        "| root blockers ended | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|\n| {} | {:.0} | {:.0} | {:.0} |\n",
        lat.len(),
        pct(lat.clone(), 0.5),
        pct(lat.clone(), 0.99),
        pct(lat.clone(), 1.0)
    );
    println!("{t}");
    writeln!(ctx.out, "## 9. The root-blocker rule: reaction\n\n{n} lock pile-ups (a root idle in the transaction that holds a row, one session waiting on it) begin spread over {:.0}s, among {background} other sessions (70% idle, 20% idle in transaction, 10% active); `blocker_timeout` = 5s, naptime 10s. Latency = the root's audit row − (its waiter's `pg_locks.waitstart` + 5s): the worker wakes at the oldest wait's deadline. Target: p99 ≤ 250 ms.\n\n{t}", spread.as_secs_f64()).unwrap();
}

/// Section 10: `n` lock queues (a root idle in a transaction that read a table, an ALTER TABLE
/// queued behind it, a reader queued behind the ALTER) begin spread over a few seconds among
/// `background` other sessions; `lock_queue_timeout` = 5s, naptime 10s. Latency = the ALTER's
/// audit row − (its reader's `pg_locks.waitstart` + 5s).
fn lock_queue_reaction(ctx: &mut Ctx, n: usize, background: usize) {
    let timeout_s = 5.0;
    let spread = Duration::from_millis(if ctx.check { 1000 } else { 4000 });
    let others = Sessions::open(background);
    let a = &mut ctx.admin;
    for i in 1..=n {
        a.batch_execute(&format!(
            "DROP TABLE IF EXISTS bench_q_{i}; CREATE TABLE bench_q_{i} (id int);
             ALTER TABLE bench_q_{i} OWNER TO bench_app"
        ))
        .unwrap();
    }
    set(
        a,
        &[
            ("dbconn_guard.naptime", "10s"),
            ("dbconn_guard.idle_in_transaction_timeout", "0"),
            ("dbconn_guard.idle_timeout", "0"),
            ("dbconn_guard.lock_queue_timeout", "5s"),
        ],
    );
    let waitstart = |a: &mut Client, p: i32| loop {
        let r = a
            .query_opt(
                "SELECT extract(epoch FROM waitstart)::float8 FROM pg_locks WHERE pid = $1 AND NOT granted AND waitstart IS NOT NULL",
                &[&p],
            )
            .unwrap();
        if let Some(r) = r {
            break r.get::<_, f64>(0);
        }
        thread::sleep(Duration::from_millis(5));
    };
    let mut roots = Vec::new();
    let mut alters = Vec::new();
    let mut readers = Vec::new();
    let mut began: Vec<(i32, f64)> = Vec::new();
    let start = Instant::now();
    for i in 1..=n {
        let mut root = connect_as("bench_app", "bench_q_root");
        root.batch_execute(&format!("BEGIN; SELECT count(*) FROM bench_q_{i}"))
            .unwrap();
        let (ap, ah) = in_background_as(
            "bench_app",
            "bench_q_alter",
            &format!("ALTER TABLE bench_q_{i} ADD COLUMN c int"),
        );
        waitstart(a, ap);
        let (rp, rh) = in_background_as(
            "bench_app",
            "bench_q_reader",
            &format!("SELECT count(*) FROM bench_q_{i}"),
        );
        began.push((ap, waitstart(a, rp)));
        roots.push(root);
        alters.push((ap, ah));
        readers.push(rh);
        let due = spread.mul_f64(i as f64 / n as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
    let pids: Vec<i32> = alters.iter().map(|(p, _)| *p).collect();
    let audit = "SELECT pid, extract(epoch FROM terminated_at)::float8 FROM dbconn_guard.terminations \
                  WHERE pid = ANY($1) AND rule = 'lock_queue_cancel' AND actor = 'worker' AND NOT dry_run";
    let waited = Instant::now();
    while a.query(audit, &[&pids]).unwrap().len() < n && waited.elapsed() < Duration::from_secs(40)
    {
        thread::sleep(Duration::from_millis(200));
    }
    let lat: Vec<f64> = a
        .query(audit, &[&pids])
        .unwrap()
        .iter()
        .filter_map(|r| {
            let (p, at): (i32, f64) = (r.get(0), r.get(1));
            began
                .iter()
                .find(|(q, _)| *q == p)
                .map(|(_, w)| (at - w - timeout_s) * 1000.0)
        })
        .collect();
    for (p, h) in alters {
        let r = h.join().unwrap();
        assert!(r.is_err(), "the ALTER of pid {p} was cancelled");
    }
    for h in readers {
        h.join()
            .unwrap()
            .expect("a reader goes on once the ALTER ahead of it is cancelled");
    }
    drop(roots);
    set(a, &[("dbconn_guard.lock_queue_timeout", "0")]);
    for i in 1..=n {
        a.batch_execute(&format!("DROP TABLE bench_q_{i}")).unwrap();
    }
    others.close(a);
    assert_eq!(
        lat.len(),
        n,
        "the worker cancelled {} of {n} queued statements",
        lat.len()
    );
    let t = format!(
        "| queued statements cancelled | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|\n| {} | {:.0} | {:.0} | {:.0} |\n",
        lat.len(),
        pct(lat.clone(), 0.5),
        pct(lat.clone(), 0.99),
        pct(lat.clone(), 1.0)
    );
    println!("{t}");
    writeln!(ctx.out, "## 10. The lock-queue rule: reaction\n\n{n} lock queues (a root idle in a transaction that read a table, an `ALTER TABLE` queued behind it, a reader queued behind the `ALTER`) begin spread over {:.0}s, among {background} other sessions (70% idle, 20% idle in transaction, 10% active); `lock_queue_timeout` = 5s, naptime 10s. Latency = the `ALTER`'s audit row − (its reader's `pg_locks.waitstart` + 5s): the worker wakes at the oldest queued wait's deadline. Target: p99 ≤ 250 ms.\n\n{t}", spread.as_secs_f64()).unwrap();
}

/// Section 11: `n` active roots whose clients re-issue their locking transaction right after
/// every cancel, each with a writer of the same row queued behind it, among `background` other
/// sessions; `blocker_timeout` = 1s, `cancel_active_blockers` on, `blocker_terminate_after` =
/// 3s, naptime 10s. Latency = the root's `blocker_terminate` audit row − (its first
/// `blocker_cancel` row + 3s).
fn escalation_reaction(ctx: &mut Ctx, n: usize, background: usize) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let after_s = 3.0;
    let others = Sessions::open(background);
    let a = &mut ctx.admin;
    a.batch_execute(&format!(
        "DROP TABLE IF EXISTS bench_esc; CREATE TABLE bench_esc (id int PRIMARY KEY, v int NOT NULL DEFAULT 0);
         INSERT INTO bench_esc (id) SELECT generate_series(1, {n}); GRANT SELECT, UPDATE ON bench_esc TO bench_app"
    ))
    .unwrap();
    set(
        a,
        &[
            ("dbconn_guard.naptime", "10s"),
            ("dbconn_guard.idle_in_transaction_timeout", "0"),
            ("dbconn_guard.idle_timeout", "0"),
            ("dbconn_guard.blocker_timeout", "1s"),
            ("dbconn_guard.cancel_active_blockers", "on"),
            ("dbconn_guard.blocker_terminate_after", "3s"),
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut roots = Vec::new();
    let mut threads = Vec::new();
    for i in 1..=n {
        let mut root = connect_as("bench_app", "bench_esc_root");
        roots.push(pid(&mut root));
        // the root: re-issues its transaction after every cancel, until its session is ended
        threads.push(thread::spawn(move || loop {
            let r = root.batch_execute(&format!(
                "BEGIN; UPDATE bench_esc SET v = v + 1 WHERE id = {i}; SELECT pg_sleep(60); COMMIT"
            ));
            match r {
                Err(e) if e.code() == Some(&postgres::error::SqlState::QUERY_CANCELED) => {
                    let _ = root.batch_execute("ROLLBACK");
                }
                _ => return,
            }
        }));
        // its victim: a writer of the same row, again and again
        let mut w = connect_as("bench_app", "bench_esc_writer");
        let stop = stop.clone();
        threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if w.batch_execute(&format!("UPDATE bench_esc SET v = v + 1 WHERE id = {i}"))
                    .is_err()
                {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    let audit = "SELECT pid, rule, extract(epoch FROM terminated_at)::float8 FROM dbconn_guard.terminations \
                  WHERE pid = ANY($1) AND actor = 'worker' AND NOT dry_run ORDER BY id";
    let waited = Instant::now();
    let ended = |a: &mut Client| {
        a.query(audit, &[&roots])
            .unwrap()
            .iter()
            .filter(|r| r.get::<_, String>(1) == "blocker_terminate")
            .count()
    };
    while ended(a) < n && waited.elapsed() < Duration::from_secs(60) {
        thread::sleep(Duration::from_millis(200));
    }
    let rows: Vec<(i32, String, f64)> = a
        .query(audit, &[&roots])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let lat: Vec<f64> = roots
        .iter()
        .filter_map(|p| {
            let first = rows
                .iter()
                .find(|(q, r, _)| q == p && r == "blocker_cancel")?
                .2;
            let end = rows
                .iter()
                .find(|(q, r, _)| q == p && r == "blocker_terminate")?
                .2;
            Some((end - first - after_s) * 1000.0)
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    set(
        a,
        &[
            ("dbconn_guard.blocker_timeout", "0"),
            ("dbconn_guard.cancel_active_blockers", "off"),
            ("dbconn_guard.blocker_terminate_after", "0"),
        ],
    );
    // any root left (a failed run) is ended here, so the writers go on and stop
    terminate(a, &roots);
    for t in threads {
        let _ = t.join();
    }
    a.batch_execute("DROP TABLE bench_esc").unwrap();
    others.close(a);
    assert_eq!(
        lat.len(),
        n,
        "the worker ended {} of {n} roots that retried after every cancel",
        lat.len()
    );
    let t = format!(
        "| roots ended after their first cancel | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|\n| {} | {:.0} | {:.0} | {:.0} |\n",
        lat.len(),
        pct(lat.clone(), 0.5),
        pct(lat.clone(), 0.99),
        pct(lat.clone(), 1.0)
    );
    println!("{t}");
    writeln!(ctx.out, "## 11. The escalation for an active root: reaction\n\n{n} active roots, each a client that re-issues its locking transaction right after every cancel, with a writer of the same row queued behind it, among {background} other sessions (70% idle, 20% idle in transaction, 10% active); `blocker_timeout` = 1s, `cancel_active_blockers` on, `blocker_terminate_after` = 3s, naptime 10s. Latency = the root's `blocker_terminate` audit row − (its first `blocker_cancel` row + 3s). Target: p99 ≤ 250 ms.\n\n{t}").unwrap();
}

/// The budget rule's reaction: one application opens `n + 1` idle sessions against a budget of
/// 1, spread over a second, among `background` others; each session but the last is over the
/// budget from the moment it has been idle `connection_budget_min_idle` (2s).
fn budget_reaction(ctx: &mut Ctx, n: usize, background: usize) {
    let min_idle_s = 2.0;
    let others = Sessions::open(background);
    let a = &mut ctx.admin;
    set(
        a,
        &[
            ("dbconn_guard.naptime", "10s"),
            ("dbconn_guard.idle_in_transaction_timeout", "0"),
            ("dbconn_guard.idle_timeout", "0"),
            ("dbconn_guard.connection_budgets", "app:bench_budget=1"),
            ("dbconn_guard.connection_budget_min_idle", "2s"),
        ],
    );
    let spread = Duration::from_secs(1);
    let start = Instant::now();
    let mut sessions = Vec::new();
    let mut changed = Vec::new();
    for i in 0..=n {
        let mut c = connect_as("bench_app", "bench_budget");
        let p = pid(&mut c);
        let sc: f64 = a
            .query_one(
                "SELECT extract(epoch FROM state_change)::float8 FROM pg_stat_activity WHERE pid = $1",
                &[&p],
            )
            .unwrap()
            .get(0);
        changed.push((p, sc));
        sessions.push((c, p));
        let due = spread.mul_f64((i + 1) as f64 / (n + 1) as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
    // the newest stays: the budget is 1
    let last = sessions.pop().unwrap();
    let lat = collect_worker_latency(a, &sessions, &changed, min_idle_s);
    let kept_last: bool = a
        .query_one(
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $1",
            &[&last.1],
        )
        .unwrap()
        .get(0);
    set(a, &[("dbconn_guard.connection_budgets", "")]);
    drop(sessions);
    drop(last);
    others.close(a);
    assert_eq!(
        lat.len(),
        n,
        "the worker ended {} of the {n} sessions over the budget",
        lat.len()
    );
    assert!(kept_last, "the session within the budget was kept");
    let t = format!(
        "| sessions ended over the budget | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|\n| {} | {:.0} | {:.0} | {:.0} |\n",
        lat.len(),
        pct(lat.clone(), 0.5),
        pct(lat.clone(), 0.99),
        pct(lat.clone(), 1.0)
    );
    println!("{t}");
    writeln!(ctx.out, "## 12. Connection budgets: reaction\n\nOne application opens {} idle sessions within a second against `connection_budgets` = `app:bench_budget=1`, among {background} other sessions (70% idle, 20% idle in transaction, 10% active); `connection_budget_min_idle` = 2s, naptime 10s. Each session but the newest is over the budget once it has been idle 2s. Latency = its `budget` audit row − (its `state_change` + 2s). Target: p99 ≤ 250 ms.\n\n{t}", n + 1).unwrap();
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
        worker_cycle(&mut ctx, &[20, 50]);
        blocking(&mut ctx, &[10, 40]);
        latency(&mut ctx, 20);
        kill_path(&mut ctx, &[40], 10);
        blocker_reaction(&mut ctx, 5, 20);
        lock_queue_reaction(&mut ctx, 5, 20);
        escalation_reaction(&mut ctx, 3, 20);
        budget_reaction(&mut ctx, 5, 20);
        if std::env::var("DBCONN_GUARD_BENCH_METRICS").is_ok_and(|v| !v.is_empty()) {
            history_and_endpoint(&mut ctx, 50);
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
        Ok("cycle") => return worker_cycle(&mut ctx, &scales),
        Ok("kill") => return kill_path(&mut ctx, &scales, 100),
        Ok("history") => return history_and_endpoint(&mut ctx, *scales.last().unwrap_or(&100)),
        Ok("blocker") => return blocker_reaction(&mut ctx, 100, 500),
        Ok("lockqueue") => return lock_queue_reaction(&mut ctx, 100, 500),
        Ok("escalation") => return escalation_reaction(&mut ctx, 50, 500),
        Ok("budget") => return budget_reaction(&mut ctx, 50, 500),
        Ok("blocking") => return blocking(&mut ctx, &[1000]),
        _ => {}
    }
    worker_cycle(&mut ctx, &scales);
    history_and_endpoint(&mut ctx, *scales.last().unwrap_or(&100));
    latency(&mut ctx, 200);
    kill_path(&mut ctx, &scales, 100);
    blocker_reaction(&mut ctx, 100, 500);
    lock_queue_reaction(&mut ctx, 100, 500);
    escalation_reaction(&mut ctx, 50, 500);
    budget_reaction(&mut ctx, 50, 500);
    blocking(&mut ctx, &[10, 100, 1000]);
    memory(&mut ctx, 500, 60);
    pgbench(&mut ctx);
    // the server was restarted: a new session
    ctx.admin = connect("bench_admin");
    reset_system(&mut ctx.admin);
    let server: String = ctx.admin.query_one("SELECT version()", &[]).unwrap().get(0);
    let header = format!(
        "# dbconn_guard benchmarks\n\nGenerated by `./dev.sh bench` (pg_test/src/bin/bench.rs) in {:.0} s. Machine: {}. Server: {server}, `max_connections` = {}. Largest session count reached: {}.\n\nRatios are the contract; absolute times are context. Every comparison below was measured in the same run.\n\n",
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
