//! The standby phase: a hot standby of the soak's server, leakers ended on it, its promotion,
//! and leakers ended after it.

use super::*;

/// A hot standby of the soak's server, promoted halfway: leakers ended on it before the
/// promotion must stay visible in `recent_terminations()` (kept in shared memory, unpersisted),
/// and leakers ended after it must be in the audit table.
pub(super) struct StandbyRun {
    /// what happened, for the report
    pub(super) events: Vec<String>,
    /// (before, after) leakers ended and recorded as required
    pub(super) ended: (usize, usize),
    pub(super) wrong: Vec<String>,
    pub(super) missed: Vec<String>,
    pub(super) unaudited: Vec<String>,
}

/// `n` idle-in-transaction leakers on the server at `port`, at once; each waits past its
/// deadline and checks that it was ended. Returns (pid, backend_start, ended) of each.
fn standby_leakers(port: u16, n: usize, timeout: f64, grace: f64) -> Vec<(i32, String, bool)> {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            thread::spawn(move || {
                let mut c = config_at(port, APP_USER, "postgres", &format!("soak-standby-leaker-{i}"))
                    .connect(NoTls)
                    .expect("a session on the standby");
                let r = c
                    .query_one(
                        "SELECT pg_backend_pid(), backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                        &[],
                    )
                    .unwrap();
                c.batch_execute("BEGIN; SELECT 1").unwrap();
                thread::sleep(Duration::from_secs_f64(timeout + grace));
                let ended = matches!(
                    c.batch_execute("SELECT 1"),
                    Err(e) if e.code() == Some(&SqlState::ADMIN_SHUTDOWN)
                );
                (r.get(0), r.get(1), ended)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

pub(super) fn standby_phase(
    primary: u16,
    timeout: f64,
    grace: f64,
    promote_at: Instant,
    t0: Instant,
) -> StandbyRun {
    let mut run = StandbyRun {
        events: Vec::new(),
        ended: (0, 0),
        wrong: Vec::new(),
        missed: Vec::new(),
        unaudited: Vec::new(),
    };
    // the harness's replica (pg_basebackup -R, hot_standby), on the port after the primary's
    let standby = Replica::start(primary, primary + 1, &[]);
    let mut s = admin(standby.port);
    let in_recovery: bool = s
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery, "the soak's standby is not in recovery");
    // its worker runs (the extension came with the base backup)
    let start = Instant::now();
    while worker(&mut s) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no worker on the standby"
        );
        thread::sleep(Duration::from_millis(100));
    }
    run.events.push(format!(
        "{:.0}s: a hot standby started from a base backup (its worker guarding, policy from the primary's postgresql.auto.conf)",
        t0.elapsed().as_secs_f64()
    ));
    let recent = |s: &mut Client| -> HashMap<(i32, String), (bool, String)> {
        s.query(
            "SELECT pid, backend_start::text, persisted, rule FROM dbconn_guard.recent_terminations()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()),
                (r.get(2), r.get(3)),
            )
        })
        .collect()
    };
    let before = standby_leakers(standby.port, 10, timeout, grace);
    let kept = recent(&mut s);
    for (pid, start, ended) in &before {
        match kept.get(&(*pid, start.clone())) {
            Some((false, rule)) if rule == "idle_in_transaction_timeout" && *ended => {
                run.ended.0 += 1
            }
            Some(r) if !*ended => run.wrong.push(format!(
                "standby leaker {pid}: recorded {r:?}, but its client saw no termination"
            )),
            Some(r) => run
                .wrong
                .push(format!("standby leaker {pid}: recorded as {r:?}")),
            None if *ended => run.unaudited.push(format!(
                "standby leaker {pid}: ended, not in recent_terminations()"
            )),
            None => run.missed.push(format!("standby leaker {pid}: not ended")),
        }
    }
    thread::sleep(promote_at.saturating_duration_since(Instant::now()));
    standby.promote();
    let start = Instant::now();
    while s
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the standby was not promoted"
        );
        thread::sleep(Duration::from_millis(100));
    }
    run.events.push(format!(
        "{:.0}s: the standby promoted (pg_ctl promote), with the records of {} terminations in its shared memory",
        t0.elapsed().as_secs_f64(),
        run.ended.0
    ));
    let after = standby_leakers(standby.port, 10, timeout, grace);
    let audited: std::collections::HashSet<(i32, String)> = s
        .query(
            "SELECT pid, backend_start::text FROM dbconn_guard.terminations WHERE rule = 'idle_in_transaction_timeout' AND NOT dry_run",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
        .collect();
    for (pid, start, ended) in &after {
        let in_table = audited.contains(&(*pid, start.clone()));
        match (ended, in_table) {
            (true, true) => run.ended.1 += 1,
            (true, false) => run.unaudited.push(format!(
                "promoted standby leaker {pid}: ended, not in the audit table"
            )),
            (false, true) => run.wrong.push(format!(
                "promoted standby leaker {pid}: audited, but its client saw no termination"
            )),
            (false, false) => run
                .missed
                .push(format!("promoted standby leaker {pid}: not ended")),
        }
    }
    // the standby-era records: still visible, never written after the fact
    let kept = recent(&mut s);
    for (pid, start, _) in &before {
        let key = (*pid, start.clone());
        if kept.get(&key).is_none_or(|(persisted, _)| *persisted) {
            run.wrong.push(format!("standby leaker {pid}: its record is gone from recent_terminations() after the promotion"));
        }
        if audited.contains(&key) {
            run.wrong.push(format!(
                "standby leaker {pid}: written to the audit table after the promotion"
            ));
        }
    }
    run
}
