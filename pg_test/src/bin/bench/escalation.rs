//! Section: how fast an active root that returns is ended.

use super::*;

/// Section 11: `n` active roots whose clients re-issue their locking transaction right after
/// every cancel, each with a writer of the same row queued behind it, among `background` other
/// sessions; `blocker_timeout` = 1s, `cancel_active_blockers` on, `blocker_terminate_after` =
/// 3s, naptime 10s. Latency = the root's `blocker_terminate` audit row − (its first
/// `blocker_cancel` row + 3s).
pub(super) fn escalation_reaction(ctx: &mut Ctx, n: usize, background: usize) {
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
