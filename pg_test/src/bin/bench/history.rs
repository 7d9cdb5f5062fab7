//! Section: the history and the metrics endpoint.

use super::*;

/// The history and the metrics endpoint at `n` sessions: what a sample adds to a check, what a
/// scrape costs (endpoint, SQL, postgres_exporter), reading 24 hours of samples, the reaction
/// with sampling every second and the endpoint scraped meanwhile, and every slot taken.
pub(super) fn history_and_endpoint(ctx: &mut Ctx, n: usize) {
    let endpoint = std::env::var("DBCONN_GUARD_BENCH_METRICS").expect("DBCONN_GUARD_BENCH_METRICS");
    let runs = if ctx.check { 5 } else { 50 };
    let a = &mut ctx.admin;
    ensure_role(a, "bench_exporter", "GRANT pg_monitor TO bench_exporter");
    let sessions = Sessions::open(n);

    // (a) a check that samples against one that does not, at a naptime of 1s; in rounds, so
    // that the spread of this noisy difference is reported, not one draw of it
    let rounds = if ctx.check { 1 } else { 5 };
    let cycles = if ctx.check { 4 } else { 12 };
    let (mut plain_cpus, mut sampling_cpus, mut sample_costs) =
        (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        set(
            a,
            &[
                ("dbconn_guard.naptime", "1s"),
                ("dbconn_guard.sample_interval", "3600"),
            ],
        );
        thread::sleep(Duration::from_millis(2200));
        let (plain_cpu, _) = idle_cycles(a, cycles);
        let before: i64 = a
            .query_one("SELECT count(*) FROM dbconn_guard.history", &[])
            .unwrap()
            .get(0);
        set(a, &[("dbconn_guard.sample_interval", "1")]);
        thread::sleep(Duration::from_millis(2200));
        let (sampling_cpu, _) = idle_cycles(a, cycles);
        let after: i64 = a
            .query_one("SELECT count(*) FROM dbconn_guard.history", &[])
            .unwrap()
            .get(0);
        assert!(
            after >= before + cycles as i64 / 2,
            "the worker sampled ({before} -> {after})"
        );
        plain_cpus.push(plain_cpu);
        sampling_cpus.push(sampling_cpu);
        sample_costs.push((sampling_cpu - plain_cpu).max(0.0));
    }
    let (plain_cpu, sampling_cpu) = (median(plain_cpus), median(sampling_cpus));

    // (b) a scrape: the endpoint, metrics() over SQL, postgres_exporter with the queries file
    // in rounds of `runs` scrapes: each round's median and p99, and their spread. Each round
    // scrapes unloaded, then with 64 clients that connect and send nothing (each reconnecting
    // once the endpoint cuts it off) and 16 that send a byte every 0.3 s: the two alternate,
    // so drift in the server touches both alike, and both are paced 20 ms apart (back-to-back
    // scrapes find every cache warm, paced ones do not: a like-for-like ratio needs the same)
    let scrape_round = || -> Vec<f64> {
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let (code, body) = http_get(&endpoint, "/metrics");
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                assert_eq!(code, 200, "{body}");
                assert!(body.ends_with("# EOF\n"));
                thread::sleep(Duration::from_millis(20));
                ms
            })
            .collect()
    };
    let mut ep_rounds: Vec<Vec<f64>> = Vec::new();
    let mut loaded: Vec<Vec<f64>> = Vec::new();
    for _ in 0..rounds {
        ep_rounds.push(scrape_round());
        // the misbehaving clients run in a process of their own, as they would in the field
        let mut pests = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--pests", &endpoint])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("start the misbehaving clients");
        thread::sleep(Duration::from_millis(700));
        loaded.push(scrape_round());
        // their stdin closes: they stop
        drop(pests.stdin.take());
        let _ = pests.wait();
        // the endpoint cuts off what they left open
        thread::sleep(Duration::from_millis(300));
    }
    let round_pct =
        |r: &[Vec<f64>], p: f64| -> Vec<f64> { r.iter().map(|v| pct(v.clone(), p)).collect() };
    let (ep_p50, ep_p99) = (round_pct(&ep_rounds, 0.5), round_pct(&ep_rounds, 0.99));
    let (ld_p50, ld_p99) = (round_pct(&loaded, 0.5), round_pct(&loaded, 0.99));
    let ep: Vec<f64> = ep_rounds.concat();
    let sql_ms = time_query(a, "SELECT count(*) FROM dbconn_guard.metrics()", runs);
    let port: u16 = std::env::var("DBCONN_GUARD_TEST_PORT")
        .unwrap()
        .parse()
        .unwrap();
    let exporter = Exporter::start(port, ports::port(ports::BENCH_EXPORTER), "bench_exporter");
    let mut ex = Vec::new();
    for _ in 0..runs.min(20) {
        let t = Instant::now();
        let body = exporter.scrape();
        ex.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(metric_value(&body, "pg_up"), Some(1.0), "{body}");
    }
    drop(exporter);

    // (c) 24 hours of samples (8640 at 10s, written by the worker of this test build)
    let size: i32 = a
        .query_one("SHOW dbconn_guard.history_size", &[])
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    set(
        a,
        &[
            ("dbconn_guard.sample_interval", "3600"),
            ("dbconn_guard.test_fill_history", &size.to_string()),
        ],
    );
    let start = Instant::now();
    loop {
        let done: bool = a
            .query_one(
                "SELECT count(*) = $1 AND min(time) < now() - interval '23 hours' FROM dbconn_guard.history",
                &[&i64::from(size)],
            )
            .unwrap()
            .get(0);
        if done {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the worker did not fill the history"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let rows: i64 = a
        .query_one("SELECT count(*) FROM dbconn_guard.history", &[])
        .unwrap()
        .get(0);
    let group_rows: i64 = a
        .query_one("SELECT count(*) FROM dbconn_guard.history_by_group", &[])
        .unwrap()
        .get(0);
    // diagnose() at this scale, over a full history (its window, 1h, of the 24 h)
    let diagnose_ms = time_query(
        a,
        "SELECT count(*) FROM dbconn_guard.diagnose()",
        runs.min(10),
    );
    let hist_rounds: Vec<f64> = (0..rounds)
        .map(|_| time_query(a, "SELECT * FROM dbconn_guard.history", runs.min(20)))
        .collect();
    let hour_ms = time_query(
        a,
        "SELECT time, utilization_pct FROM dbconn_guard.history WHERE time > now() - interval '1 hour'",
        runs.min(20),
    );
    let groups_ms = time_query(
        a,
        "SELECT * FROM dbconn_guard.history_by_group",
        runs.min(10),
    );
    // what Grafana asks for: an hour, pushed down into the ring walk
    let hour_between_ms = time_query(
        a,
        "SELECT time, utilization_pct FROM dbconn_guard.history_between(now() - interval '1 hour', now())",
        runs.min(20),
    );
    let groups_hour_ms = time_query(
        a,
        "SELECT * FROM dbconn_guard.history_by_group_between(now() - interval '1 hour', now())",
        runs.min(20),
    );
    let groups_hour_rows: i64 = a
        .query_one(
            "SELECT count(*) FROM dbconn_guard.history_by_group_between(now() - interval '1 hour', now())",
            &[],
        )
        .unwrap()
        .get(0);
    let same_hour: bool = a
        .query_one(
            "SELECT (SELECT count(*) FROM dbconn_guard.history_by_group_between(now() - interval '1 hour', now())) \
                  BETWEEN (SELECT count(*) FROM dbconn_guard.history_by_group WHERE time >= now() - interval '1 hour') - 17 \
                      AND (SELECT count(*) FROM dbconn_guard.history_by_group WHERE time >= now() - interval '1 hour') + 17",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        same_hour,
        "history_by_group_between() returns the hour's rows"
    );
    set(a, &[("dbconn_guard.test_fill_history", "0")]);

    // (d) the reaction, without sampling, and with a sample every second and a scrape every 200 ms
    let k = if ctx.check { 10 } else { 100 };
    let spread = Duration::from_millis(if ctx.check { 1000 } else { 4000 });
    set(
        a,
        &[
            ("dbconn_guard.naptime", "10s"),
            ("dbconn_guard.idle_in_transaction_timeout", "5s"),
            ("dbconn_guard.sample_interval", "3600"),
        ],
    );
    let (quiet, changed) = stale_sessions(a, k, spread);
    let quiet_lat = collect_worker_latency(a, &quiet, &changed, 5.0);
    drop(quiet);
    set(a, &[("dbconn_guard.sample_interval", "1")]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = thread::spawn({
        let stop = stop.clone();
        let endpoint = endpoint.clone();
        move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(http_get(&endpoint, "/metrics").0, 200);
                n += 1;
                thread::sleep(Duration::from_millis(200));
            }
            n
        }
    });
    let (busy, changed) = stale_sessions(a, k, spread);
    let busy_lat = collect_worker_latency(a, &busy, &changed, 5.0);
    drop(busy);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes = scraper.join().unwrap();
    set(
        a,
        &[
            ("dbconn_guard.idle_in_transaction_timeout", "0"),
            ("dbconn_guard.sample_interval", "10"),
        ],
    );
    assert_eq!(quiet_lat.len(), k, "ended {} of {k}", quiet_lat.len());
    assert_eq!(busy_lat.len(), k, "ended {} of {k}", busy_lat.len());

    // (e) every slot taken: a postgres_exporter (re)started now cannot log in; the endpoint answers
    let mut held = Vec::new();
    while let Ok(c) = config("postgres", "bench_fill").connect(postgres::NoTls) {
        held.push(c);
        assert!(held.len() < 5000);
    }
    let exporter = Exporter::start(port, ports::port(ports::BENCH_EXPORTER), "bench_exporter");
    let t = Instant::now();
    let refused = exporter.scrape();
    let refused_ms = t.elapsed().as_secs_f64() * 1000.0;
    drop(exporter);
    let t = Instant::now();
    let (code, full) = http_get(&endpoint, "/metrics");
    let full_ms = t.elapsed().as_secs_f64() * 1000.0;
    let full_util = metric_value(&full, "dbconn_guard_utilization_ratio");
    let exporter_up = metric_value(&refused, "pg_up");
    let filled = held.len();
    drop(held);
    thread::sleep(Duration::from_millis(500));
    sessions.close(a);
    assert_eq!(code, 200);
    assert_eq!(full_util, Some(1.0), "{full}");
    assert_eq!(exporter_up, Some(0.0));

    let t = format!(
        "| measure | value |\n|---|---|\n\
         | worker CPU of a check at {n} sessions, no sample | {plain_cpu:.3} ms |\n\
         | the same check taking a sample | {sampling_cpu:.3} ms |\n\
         | **one sample adds** (target ≤ 0.3 ms), min / median / max of {rounds} rounds | **{}** ms |\n\
         | `GET /metrics` at {n} sessions, median / p99 of all {} scrapes | {:.2} / {:.2} ms |\n\
         | its p99 (target ≤ 5 ms), min / median / max of {rounds} rounds of {runs} | **{}** ms |\n\
         | its median, min / median / max of the rounds | {} ms |\n\
         | the same with 64 silent and 16 slow clients connected: the median, min / median / max of {rounds} rounds (target: within 2× of the unloaded one) | **{}** ms ({:.1}× the unloaded, median of the rounds) |\n\
         | and its p99, min / median / max of the rounds | {} ms ({:.1}× the unloaded) |\n\
         | `SELECT count(*) FROM dbconn_guard.metrics()`, median | {sql_ms:.2} ms |\n\
         | postgres_exporter scrape (default metrics + queries.yaml), median | {:.1} ms ({:.0}× the endpoint) |\n\
         | `SELECT * FROM dbconn_guard.history`: {rows} samples (24 h at 10s), min / median / max of {rounds} rounds' medians (target ≤ 20 ms) | **{}** ms |\n\
         | the last hour of it (`WHERE time > now() - '1 hour'`) | {hour_ms:.2} ms |\n\
         | **`diagnose()` at {n} sessions over this history** (target ≤ 50 ms), median | **{diagnose_ms:.1} ms** |\n\
         | the last hour through `history_between(now() - '1 hour', now())` | {hour_between_ms:.2} ms |\n\
         | `SELECT * FROM dbconn_guard.history_by_group`: {group_rows} rows | {groups_ms:.1} ms |\n\
         | **the last hour of it through `history_by_group_between()`**: {groups_hour_rows} rows (target ≤ 20 ms) | **{groups_hour_ms:.2} ms** |\n\
         | reaction past the deadline, {k} sessions, sampling off: p50 / p99 | {:.0} / {:.0} ms |\n\
         | the same with a sample every second and `/metrics` scraped every 200 ms ({scrapes} scrapes): p50 / p99 (target: unchanged, ≤ 250 ms) | {:.0} / {:.0} ms |\n\
         | every slot taken ({} more sessions): postgres_exporter started now | `pg_up 0` (it cannot log in), scrape {refused_ms:.0} ms |\n\
         | every slot taken: `GET /metrics` | {code}, `dbconn_guard_utilization_ratio 1`, {full_ms:.2} ms |\n",
        min_median_max(&sample_costs, 3),
        ep.len(),
        pct(ep.clone(), 0.5),
        pct(ep.clone(), 0.99),
        min_median_max(&ep_p99, 2),
        min_median_max(&ep_p50, 2),
        min_median_max(&ld_p50, 2),
        median(ld_p50.clone()) / median(ep_p50.clone()).max(0.001),
        min_median_max(&ld_p99, 2),
        median(ld_p99.clone()) / median(ep_p99.clone()).max(0.001),
        median(ex.clone()),
        median(ex.clone()) / pct(ep.clone(), 0.5).max(0.001),
        min_median_max(&hist_rounds, 2),
        pct(quiet_lat.clone(), 0.5),
        pct(quiet_lat.clone(), 0.99),
        pct(busy_lat.clone(), 0.5),
        pct(busy_lat.clone(), 0.99),
        filled,
    );
    println!("{t}");
    writeln!(ctx.out, "## 8. The history and the metrics endpoint\n\n{n} sessions (70% idle, 20% idle in transaction, 10% active). A sample's cost is the difference of the worker's median CPU per check (naptime 1s) with a sample at every check and with none. Scrapes are timed from the client, over loopback, 20 ms apart (Prometheus never scrapes back to back), in rounds that alternate unloaded and loaded. The 24 hours of samples are written by the worker of this build (`dbconn_guard.test_fill_history`, test builds only), each with 16 groups of 63-byte names and the remainder.\n\n{t}").unwrap();
}
