//! Section: how fast the root-blocker rule reacts.

use super::*;

/// The root-blocker rule's reaction: `n` pile-ups (a root idle in the transaction that holds a
/// row, one session waiting on it) begin spread over a few seconds among `background` ordinary
/// sessions; `blocker_timeout` = 5s, naptime 10s. Latency = the root's audit row − (its
/// waiter's `pg_locks.waitstart` + 5s).
pub(super) fn blocker_reaction(ctx: &mut Ctx, n: usize, background: usize) {
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
