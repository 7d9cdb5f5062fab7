//! A worker pointed at a database that does not exist: the server stays up, the failure is
//! logged clearly, and the worker retries (the postmaster restarts it).

use dbconn_guard_integration::*;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn a_missing_database_is_logged_and_retried_without_harm() {
    let bin = PathBuf::from(std::env::var("DBCONN_GUARD_PG_BIN").expect("DBCONN_GUARD_PG_BIN"));
    let state =
        PathBuf::from(std::env::var("DBCONN_GUARD_TEST_STATE").expect("DBCONN_GUARD_TEST_STATE"));
    let port = test_port() + 200;
    let data = state.join(format!("nodb-{port}"));
    let _ = Command::new("rm").arg("-rf").arg(&data).status();
    let d = data.to_str().unwrap().to_string();
    run_as_postgres(
        &bin,
        "initdb",
        &["-D", &d, "-U", "postgres", "--auth=trust", "--no-sync"],
    );
    let opts = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp \
         -c shared_preload_libraries=dbconn_guard -c dbconn_guard.database=no_such_db"
    );
    let log = format!("{d}/server.log");
    run_as_postgres(
        &bin,
        "pg_ctl",
        &["-D", &d, "-l", &log, "-o", &opts, "-w", "start"],
    );

    // two connection attempts at least (the restart interval is 5 s)
    let start = Instant::now();
    let attempts = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("database \"no_such_db\" does not exist"))
            .count()
    };
    while attempts() < 2 && start.elapsed() < Duration::from_secs(20) {
        thread::sleep(Duration::from_millis(200));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let stop = || {
        let _ = run_as_postgres(&bin, "pg_ctl", &["-D", &d, "-m", "immediate", "-w", "stop"]);
        let _ = Command::new("rm").arg("-rf").arg(&data).status();
    };
    let result = std::panic::catch_unwind(|| {
        assert!(attempts() >= 2, "no retry logged:\n{text}");
        assert!(text.contains("dbconn_guard worker: connecting to database \"no_such_db\" (dbconn_guard.database)"), "{text}");
        // the server itself is fine
        let mut c = config_at(port, "postgres", "postgres", "it_nodb")
            .connect(postgres::NoTls)
            .unwrap();
        let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
        assert_eq!(one, 1);
        assert!(
            !text.contains("PANIC") && !text.contains("terminated by signal"),
            "{text}"
        );
    });
    stop();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
