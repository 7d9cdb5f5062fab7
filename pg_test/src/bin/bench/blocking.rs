//! Section: `blocking_pairs` against the runbook's query and `pg_blocking_pids()`.

use super::*;

pub(super) fn blocking(ctx: &mut Ctx, scales: &[usize]) {
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
