//! Section: the kill path's cost per termination.

use super::*;

/// The kill path at scale: `k` stale sessions among `n`, ended in one check. What that check
/// cost beyond a check with nothing to end, per termination, and the window from each session's
/// last status read to its signal (`recent_terminations().signal_window_us`).
pub(super) fn kill_path(ctx: &mut Ctx, scales: &[usize], k: usize) {
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
    writeln!(ctx.out, "## 7. The kill path\n\n{k} sessions go idle in transaction among the others (70% idle, 20% idle in transaction, 10% running a query) with the worker off; then it is switched on and ends them in one check. *Per termination*: that check's CPU (and wall) time beyond the median of 15 checks with nothing to end at the same session count, divided by the sessions it ended: recording (one committed transaction for the batch, a row each in its subtransaction), the last look at each session (its process's `/proc/<pid>/stat`, then an in-place read of its status entry), `pg_terminate_backend()`, and the LOG line. *read→signal*: from the start of the last look at a session to the return of the signal (`recent_terminations().signal_window_us`), the window in which a query that arrives is still ended with its session. Target: the cost per termination does not depend on the session count.\n\n{t}").unwrap();
}
