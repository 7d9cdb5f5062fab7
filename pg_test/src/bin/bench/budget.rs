//! Section: how fast the budget rule reacts.

use super::*;

/// The budget rule's reaction: one application opens `n + 1` idle sessions against a budget of
/// 1, spread over a second, among `background` others; each session but the last is over the
/// budget from the moment it has been idle `connection_budget_min_idle` (2s).
pub(super) fn budget_reaction(ctx: &mut Ctx, n: usize, background: usize) {
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
