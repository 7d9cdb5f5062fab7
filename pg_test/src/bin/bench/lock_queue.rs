//! Section: how fast the lock-queue rule reacts.

use super::*;

/// Section 10: `n` lock queues (a root idle in a transaction that read a table, an ALTER TABLE
/// queued behind it, a reader queued behind the ALTER) begin spread over a few seconds among
/// `background` other sessions; `lock_queue_timeout` = 5s, naptime 10s. Latency = the ALTER's
/// audit row − (its reader's `pg_locks.waitstart` + 5s).
pub(super) fn lock_queue_reaction(ctx: &mut Ctx, n: usize, background: usize) {
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
