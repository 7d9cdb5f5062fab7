//! Section: how long after its deadline the worker ends a session.

use super::*;

pub(super) fn latency(ctx: &mut Ctx, n: usize) {
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
