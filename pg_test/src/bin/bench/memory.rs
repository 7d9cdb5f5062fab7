//! Section: the worker's memory over a long run.

use super::*;

pub(super) fn rss_anon_kb(pid: i32) -> i64 {
    proc_status_kb(pid, "RssAnon").unwrap_or(-1)
}

pub(super) fn memory(ctx: &mut Ctx, n: usize, seconds: u64) {
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
