//! Section: the worker's check at scale, against the runbook's cron query.

use super::*;

pub(super) fn worker_cycle(ctx: &mut Ctx, scales: &[usize]) {
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
