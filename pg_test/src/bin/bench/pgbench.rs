//! Section: what the guard costs a pgbench workload.

use super::*;

pub(super) fn pgbench(ctx: &mut Ctx) {
    let bin = std::env::var("DBCONN_GUARD_PG_BIN").expect("DBCONN_GUARD_PG_BIN");
    let data = std::env::var("DBCONN_GUARD_BENCH_DATA").expect("DBCONN_GUARD_BENCH_DATA");
    let port = test_port().to_string();
    let bin = std::path::PathBuf::from(bin);
    let pg = |prog: &str, args: &[&str]| -> String { run_as_postgres(&bin, prog, args) };
    let restart = |preload: bool| {
        let opts = if preload {
            String::new()
        } else {
            "-c shared_preload_libraries=''".to_string()
        };
        // -l: the server must not inherit this process's stdout pipe, or output() never returns
        let log = format!("{data}/server.log");
        pg(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-m", "fast", "-w", "-o", &opts, "restart",
            ],
        );
    };
    pg(
        "pgbench",
        &[
            "-i",
            "-q",
            "-s",
            "10",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "postgres",
        ],
    );
    let run = |script: &str| -> f64 {
        let mut args = vec![
            "-n",
            "-c",
            "2",
            "-j",
            "1",
            "-T",
            "10",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
        ];
        if script == "select-only" {
            args.push("-S");
        }
        args.push("postgres");
        let out = pg("pgbench", &args);
        out.lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let mut t = String::from("| workload | worker at defaults: TPS (A runs) | not preloaded: TPS (B runs) | median A / median B | worker CPU during the A runs (share of the machine) |\n|---|---|---|---|---|\n");
    for script in ["select-only", "tpcb-like"] {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let (mut worker_cpu, mut wall) = (0.0, 0.0);
        for _ in 0..4 {
            restart(true);
            let wpid = worker_pid(&mut connect("bench_admin"));
            let (c0, t0) = (cpu_seconds(wpid), Instant::now());
            with.push(run(script));
            worker_cpu += cpu_seconds(wpid) - c0;
            wall += t0.elapsed().as_secs_f64();
            restart(false);
            without.push(run(script));
        }
        let cores = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let share = worker_cpu / (wall * cores) * 100.0;
        restart(true);
        let fmt = |v: &Vec<f64>| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            t,
            "| {script} | {} | {} | {:.3} | {:.3} s of {:.0} s × {cores:.0} cores = {share:.4}% |",
            fmt(&with),
            fmt(&without),
            median(with.clone()) / median(without.clone()),
            worker_cpu,
            wall,
        )
        .unwrap();
    }
    println!("{t}");
    writeln!(ctx.out, "## 3. Overhead on real work\n\npgbench (scale 10, 2 clients, 1 thread, 10 s a run), alternating A/B four times: A with the extension preloaded and its worker at default settings, B with `shared_preload_libraries` emptied. Target: within 1%. The last column is the direct measure of what the worker takes from the workload: its CPU time (from /proc) over the A runs, as a share of the machine's CPU time in those runs. Client backends themselves run no dbconn_guard code unless they query its views.\n\n{t}").unwrap();
}
