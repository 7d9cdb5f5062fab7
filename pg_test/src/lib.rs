//! Helpers for the integration tests: real client sessions against the throwaway cluster that
//! `./dev.sh test` starts with dbconn_guard preloaded.
//!
//! The cluster is named by `DBCONN_GUARD_TEST_PORT` (and optionally `DBCONN_GUARD_TEST_HOST`,
//! default 127.0.0.1); the tests connect as the superuser `postgres` unless they say otherwise.

pub mod pgbouncer;
pub mod ports;
use postgres::{Client, Config, NoTls};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub fn config(user: &str, application_name: &str) -> Config {
    config_db(user, "postgres", application_name)
}

/// The test cluster's port.
pub fn test_port() -> u16 {
    std::env::var("DBCONN_GUARD_TEST_PORT")
        .expect(
            "DBCONN_GUARD_TEST_PORT is not set: run the integration tests through ./dev.sh test",
        )
        .parse()
        .expect("DBCONN_GUARD_TEST_PORT must be a port number")
}

pub fn config_db(user: &str, dbname: &str, application_name: &str) -> Config {
    config_at(test_port(), user, dbname, application_name)
}

/// A session of another server on this machine (a standby), by port.
pub fn config_at(port: u16, user: &str, dbname: &str, application_name: &str) -> Config {
    let host = std::env::var("DBCONN_GUARD_TEST_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let mut c = Config::new();
    c.host(&host)
        .port(port)
        .user(user)
        .dbname(dbname)
        .application_name(application_name)
        .connect_timeout(Duration::from_secs(10));
    c
}

/// A new superuser session with the given application_name.
pub fn connect(application_name: &str) -> Client {
    connect_as("postgres", application_name)
}

pub fn connect_as(user: &str, application_name: &str) -> Client {
    config(user, application_name)
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

/// A session of `user` in database `dbname`.
pub fn connect_to(user: &str, dbname: &str, application_name: &str) -> Client {
    config_db(user, dbname, application_name)
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect as {user} to {dbname}: {e}"))
}

/// A session's backend pid.
pub fn pid(c: &mut Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// A session left idle.
pub fn idle(app: &str) -> (Client, i32) {
    let mut c = connect(app);
    let p = pid(&mut c);
    (c, p)
}

/// A session left idle in transaction (BEGIN; then `sql`).
pub fn idle_in_transaction(app: &str, sql: &str) -> (Client, i32) {
    let mut c = connect(app);
    let p = pid(&mut c);
    c.batch_execute("BEGIN").unwrap();
    c.batch_execute(sql).unwrap();
    (c, p)
}

/// Runs `sql` on a new session in a thread; returns the pid at once and the thread, which ends
/// when the statement does (or its session is terminated).
pub fn in_background(
    app: &str,
    setup: &str,
    sql: &str,
) -> (i32, JoinHandle<Result<(), postgres::Error>>) {
    let mut c = connect(app);
    let p = pid(&mut c);
    if !setup.is_empty() {
        c.batch_execute(setup).unwrap();
    }
    let sql = sql.to_string();
    let h = thread::spawn(move || {
        let r = c.batch_execute(&sql);
        // keep the session (and whatever it holds) until the statement returns
        drop(c);
        r
    });
    (p, h)
}

/// Polls `sql` (one boolean) until it is true; panics after `timeout`.
pub fn wait_until(c: &mut Client, sql: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let ok: bool = c.query_one(sql, &[]).unwrap().get(0);
        if ok {
            return;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for: {sql}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The first column of every row `sql` returns.
pub fn first_column<T: for<'a> postgres::types::FromSql<'a>>(c: &mut Client, sql: &str) -> Vec<T> {
    c.query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// How many checks the worker has run (`worker_status().cycles`).
pub fn worker_checks(c: &mut Client) -> i64 {
    c.query_one("SELECT cycles FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0)
}

/// Waits until the worker has run `n` more checks: a condition, not a time (on a loaded host
/// the checks come later, and a test that needs "several checks" gets them); panics after
/// `timeout`.
pub fn wait_for_checks(c: &mut Client, n: i64, timeout: Duration) {
    let start = Instant::now();
    let from = worker_checks(c);
    while worker_checks(c) < from + n {
        assert!(
            start.elapsed() < timeout,
            "the worker ran fewer than {n} checks in {timeout:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The statement's result, and its session still open.
pub type Finished = thread::JoinHandle<(Result<(), postgres::Error>, postgres::Client)>;

/// Runs `sql` on a new session of `user` in a thread; returns the pid at once, and from the
/// thread the statement's result with the session, still open (idle in whatever transaction
/// `sql` left).
pub fn in_background_as(user: &str, app: &str, sql: &str) -> (i32, Finished) {
    let mut c = connect_as(user, app);
    let p = pid(&mut c);
    let sql = sql.to_string();
    (
        p,
        thread::spawn(move || {
            let r = c.batch_execute(&sql);
            (r, c)
        }),
    )
}

/// Waits until each pid is waiting on a heavyweight lock.
pub fn wait_for_lock_waits(c: &mut Client, pids: &[i32]) {
    let list = pids
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    wait_until(
        c,
        &format!(
            "SELECT count(*) = {} FROM pg_stat_activity WHERE pid IN ({list}) AND wait_event_type = 'Lock'",
            pids.len()
        ),
        Duration::from_secs(20),
    );
}

/// Ends sessions by pid (cleanup after a test).
pub fn terminate(c: &mut Client, pids: &[i32]) {
    for p in pids {
        c.execute("SELECT pg_terminate_backend($1)", &[p]).unwrap();
    }
}

/// Sets `dbconn_guard.*` (or any) settings with ALTER SYSTEM, reloads, and waits until the
/// background worker applies them (its published policy matches what a new session shows).
pub fn alter_system(c: &mut Client, settings: &[(&str, &str)]) {
    for (name, value) in settings {
        c.batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'"))
            .unwrap_or_else(|e| panic!("{name} = {value}: {e}"));
    }
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for_worker_policy(settings);
}

/// ALTER SYSTEM RESET ALL, reload, and wait for the worker to apply the defaults.
pub fn reset_system(c: &mut Client) {
    c.batch_execute("ALTER SYSTEM RESET ALL").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for_worker_policy(&[
        ("dbconn_guard.idle_timeout", ""),
        ("dbconn_guard.dry_run", ""),
    ]);
}

fn wait_for_worker_policy(settings: &[(&str, &str)]) {
    let start = Instant::now();
    'outer: loop {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "worker did not apply {settings:?}"
        );
        thread::sleep(Duration::from_millis(50));
        let mut fresh = connect("it_policy_probe");
        for (name, _) in settings {
            let Some(short) = name.strip_prefix("dbconn_guard.") else {
                continue;
            };
            if matches!(
                short,
                "warning_pct" | "critical_pct" | "leak_idle_age" | "leak_trend_samples"
            ) || short.ends_with("_age")
                || short.starts_with("transaction_age")
                || short == "idle_warning_count"
            {
                continue; // not part of the worker's published policy
            }
            let same: bool = fresh
                .query_one(
                    "SELECT coalesce((SELECT NOT (policy ? $1) OR policy->>$1 = current_setting($2) FROM dbconn_guard.worker_status()), false)",
                    &[&short, name],
                )
                .unwrap()
                .get(0);
            if !same {
                continue 'outer;
            }
        }
        return;
    }
}

/// Is a backend with this pid still there?
pub fn alive(c: &mut Client, pid: i32) -> bool {
    c.query_one(
        "SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $1",
        &[&pid],
    )
    .unwrap()
    .get(0)
}

/// Waits until the backend is gone; panics after `timeout`.
pub fn wait_gone(c: &mut Client, pid: i32, timeout: Duration) {
    wait_until(
        c,
        &format!("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = {pid}"),
        timeout,
    );
}

/// The worker's pid (waits until it runs).
pub fn worker_pid(c: &mut Client) -> i32 {
    wait_until(
        c,
        "SELECT running AND extension_ready FROM dbconn_guard.worker_status()",
        Duration::from_secs(30),
    );
    c.query_one("SELECT pid FROM dbconn_guard.worker_status()", &[])
        .unwrap()
        .get(0)
}

/// Creates a LOGIN role (no superuser) if it does not exist.
pub fn ensure_role(c: &mut Client, role: &str, extra: &str) {
    c.batch_execute(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN; END IF; END $$; {extra}"
    ))
    .unwrap();
}

/// A session of `user` left idle in transaction.
pub fn idle_in_transaction_as(user: &str, app: &str) -> (Client, i32) {
    let mut c = connect_as(user, app);
    let p = pid(&mut c);
    c.batch_execute("BEGIN; SELECT 1").unwrap();
    (c, p)
}

/// Runs a PostgreSQL program (`pg_ctl`, `pg_basebackup`, `pgbench`, ...) from `bin` as the
/// `postgres` OS user; panics with its stderr when it fails; returns its stdout.
pub fn run_as_postgres(bin: &std::path::Path, program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("sudo")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(program))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One query over every view and function of the read-only surface.
pub const EVERY_VIEW: [&str; 7] = [
    "SELECT count(*) FROM dbconn_guard.connection_analysis",
    "SELECT count(*) FROM dbconn_guard.blocking_pairs",
    "SELECT count(*) FROM dbconn_guard.blocking_chains()",
    "SELECT count(*) FROM dbconn_guard.utilization",
    "SELECT count(*) FROM dbconn_guard.leak_suspects",
    "SELECT count(*) FROM dbconn_guard.health()",
    "SELECT dbconn_guard.health_status(), dbconn_guard.utilization_pct()",
];

/// The views and functions of 0.2.0: the history views (readable by pg_monitor /
/// pg_read_all_stats and the guard's admins) and diagnose().
pub const HISTORY_VIEWS: [&str; 3] = [
    "SELECT count(*) FROM dbconn_guard.history",
    "SELECT count(*) FROM dbconn_guard.history_by_group",
    "SELECT count(*) FROM dbconn_guard.diagnose()",
];

/// Runs every query of `EVERY_VIEW` and `HISTORY_VIEWS`; panics, naming `context` and the
/// query, on an error.
pub fn query_every_view(c: &mut Client, context: &str) {
    for sql in EVERY_VIEW.iter().chain(&HISTORY_VIEWS) {
        c.query_one(*sql, &[])
            .unwrap_or_else(|e| panic!("{context}: {sql}: {e}"));
    }
}

/// Runs every query of `EVERY_VIEW` (the views 0.1.0 had).
pub fn query_every_0_1_0_view(c: &mut Client, context: &str) {
    for sql in EVERY_VIEW {
        c.query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{context}: {sql}: {e}"));
    }
}

/// A throwaway cluster of its own, for tests that restart, stop or reconfigure a server (the
/// shared test cluster stays untouched). Stopped and deleted when dropped; its log's tail is
/// printed when the test failed.
pub struct Cluster {
    pub bin: std::path::PathBuf,
    pub data: std::path::PathBuf,
    pub port: u16,
}

impl Cluster {
    /// initdb a new cluster named `name` (port: the test port + `port_offset`) with `settings`
    /// (postgresql.conf lines) and start it.
    pub fn start(name: &str, port_offset: u16, settings: &[&str]) -> Cluster {
        let bin = std::path::PathBuf::from(
            std::env::var("DBCONN_GUARD_PG_BIN").expect("DBCONN_GUARD_PG_BIN"),
        );
        let state = std::path::PathBuf::from(
            std::env::var("DBCONN_GUARD_TEST_STATE").expect("DBCONN_GUARD_TEST_STATE"),
        );
        let port = test_port() + port_offset;
        let c = Cluster {
            bin,
            data: state.join(format!("{name}-{port}")),
            port,
        };
        let _ = std::process::Command::new("rm")
            .arg("-rf")
            .arg(&c.data)
            .status();
        let d = c.data_str();
        run_as_postgres(
            &c.bin,
            "initdb",
            &[
                "-D",
                &d,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let mut conf = vec![
            format!("port = {port}"),
            "listen_addresses = '127.0.0.1'".into(),
            "unix_socket_directories = '/tmp'".into(),
            "fsync = off".into(),
            "log_line_prefix = '%m [%p] %a '".into(),
        ];
        conf.extend(settings.iter().map(|s| s.to_string()));
        c.append_conf(&conf.join("\n"));
        c.pg_ctl(&["start", "-w", "-t", "60", "-l", &c.log_path()])
            .expect("cluster start");
        c
    }

    fn data_str(&self) -> String {
        self.data.to_str().unwrap().to_string()
    }

    pub fn log_path(&self) -> String {
        format!("{}/server.log", self.data_str())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Appends lines to postgresql.conf (as the postgres OS user).
    pub fn append_conf(&self, lines: &str) {
        let mut child = std::process::Command::new("sudo")
            .args(["-u", "postgres", "--", "tee", "-a"])
            .arg(self.data.join("postgresql.conf"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{lines}").unwrap();
        assert!(child.wait().unwrap().success());
    }

    /// Runs `pg_ctl -D <data> args...`; `Err(stderr)` when it fails.
    pub fn pg_ctl(&self, args: &[&str]) -> Result<String, String> {
        let d = self.data_str();
        let out = std::process::Command::new("sudo")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &d])
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn restart(&self) {
        self.pg_ctl(&[
            "restart",
            "-w",
            "-t",
            "60",
            "-m",
            "fast",
            "-l",
            &self.log_path(),
        ])
        .expect("cluster restart");
    }

    pub fn config(&self, user: &str, db: &str, app: &str) -> Config {
        config_at(self.port, user, db, app)
    }

    pub fn connect(&self, user: &str, db: &str, app: &str) -> Client {
        self.config(user, db, app)
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("connect to port {} as {user}: {e}", self.port))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("server log of {} (last 40 lines):", self.data_str());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        let _ = std::process::Command::new("rm")
            .arg("-rf")
            .arg(&self.data)
            .status();
    }
}

/// CPU time (user + system) a process has used so far, in seconds, from /proc.
pub fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the fields after the command name, which is in parentheses and may hold spaces
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ, 100 on Linux
    ticks / 100.0
}

/// A kB field of /proc/<pid>/status (`VmRSS`, `RssAnon`, ...); None: no such process or field.
pub fn proc_status_kb(pid: i32, field: &str) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The role whose sessions the guard tests expect to be ended (superusers are protected).
pub const APP_ROLE: &str = "it_w_app";

/// A superuser session for a guard test, with the policy reset to its defaults.
pub fn guard_admin() -> Client {
    let mut a = connect("it_admin");
    ensure_role(&mut a, APP_ROLE, "");
    reset_system(&mut a);
    a
}

/// An ordinary role's session left idle in transaction.
pub fn stale_in_transaction(app: &str) -> (Client, i32) {
    idle_in_transaction_as(APP_ROLE, app)
}

/// An ordinary role's idle session.
pub fn stale_idle(app: &str) -> (Client, i32) {
    let mut c = connect_as(APP_ROLE, app);
    let p = pid(&mut c);
    (c, p)
}

/// The audit rows of one pid: (rule, dry_run, actor, state_age_seconds).
pub fn audit(a: &mut Client, pid: i32) -> Vec<(String, bool, String, f64)> {
    a.query("SELECT rule, dry_run, actor, state_age_seconds FROM dbconn_guard.terminations WHERE pid = $1 ORDER BY id", &[&pid])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// The server error's message, detail and hint, for assertions.
pub fn db_error(e: &postgres::Error) -> String {
    e.as_db_error()
        .map(|d| {
            format!(
                "{} | {} | {}",
                d.message(),
                d.detail().unwrap_or(""),
                d.hint().unwrap_or("")
            )
        })
        .unwrap_or_else(|| e.to_string())
}

/// The soak's section of BENCHMARKS.md, between these markers: `./dev.sh soak` replaces it,
/// `./dev.sh bench` keeps it.
pub const SOAK_BEGIN: &str = "<!-- soak: written by ./dev.sh soak -->";
pub const SOAK_END: &str = "<!-- /soak -->";

/// The soak section of a markdown text, markers included.
pub fn soak_section(md: &str) -> Option<&str> {
    let a = md.find(SOAK_BEGIN)?;
    let b = md[a..].find(SOAK_END)? + a + SOAK_END.len();
    Some(&md[a..b])
}

/// Replaces (or appends) the soak section of the markdown file at `path`.
pub fn replace_soak_section(path: &str, section: &str) {
    let md = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{SOAK_BEGIN}\n{}\n{SOAK_END}", section.trim_end());
    let new = match soak_section(&md) {
        Some(old) => md.replacen(old, &block, 1),
        None => format!("{}\n\n{block}\n", md.trim_end()),
    };
    std::fs::write(path, new).unwrap();
}

// ---------------------------------------------------------------------------------------------
// HTTP, for the metrics endpoint and the exporters: a peer that can also misbehave

/// Sends `request` as it is to `addr`; returns the status code (0: no status line) and body.
pub fn http_raw(addr: &str, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // the server may answer and close before it has read an oversized request whole
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_response(&out)
}

/// Sends the first bytes of a request and then nothing: what the server answers, and when.
pub fn http_raw_slow(addr: &str, start: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(start).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_response(&out)
}

fn parse_response(out: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (code, String::new());
    };
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return (code, body.to_string());
    }
    // a chunked body (postgres_exporter's, once it outgrows one chunk): the chunks, joined
    let mut rest = &out[head.len() + 4..];
    let mut whole = Vec::new();
    while let Ok(httparse::Status::Complete((at, size))) = httparse::parse_chunk_size(rest) {
        let size = size as usize;
        if size == 0 || rest.len() < at + size {
            break;
        }
        whole.extend_from_slice(&rest[at..at + size]);
        rest = rest.get(at + size + 2..).unwrap_or_default();
    }
    (code, String::from_utf8_lossy(&whole).into_owned())
}

/// The value of the first sample of `metric` in a Prometheus text exposition (with any labels:
/// postgres_exporter adds `server`).
pub fn metric_value(text: &str, metric: &str) -> Option<f64> {
    text.lines()
        .find(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `GET path` from `addr`: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Waits until `GET path` answers `code`.
pub fn wait_for_http(addr: &str, path: &str, code: u16, timeout: Duration) {
    let start = Instant::now();
    loop {
        if std::net::TcpStream::connect(addr).is_ok() && http_get(addr, path).0 == code {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{addr}{path} never answered {code}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A real postgres_exporter (Debian's prometheus-postgres-exporter) with dbconn_guard's queries
/// file, logging in to the server on `pg_port` as `user`; killed when dropped.
pub struct Exporter {
    child: std::process::Child,
    pub addr: String,
}

impl Exporter {
    pub fn start(pg_port: u16, listen_port: u16, user: &str) -> Exporter {
        let bin = std::env::var("DBCONN_GUARD_POSTGRES_EXPORTER")
            .unwrap_or_else(|_| "/usr/bin/prometheus-postgres-exporter".into());
        let queries = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/postgres_exporter/queries.yaml");
        let addr = format!("127.0.0.1:{listen_port}");
        let child = std::process::Command::new(&bin)
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!("--extend.query-path={}", queries.display()))
            .arg("--log.level=warn")
            .env(
                "DATA_SOURCE_NAME",
                format!("host=127.0.0.1 port={pg_port} user={user} dbname=postgres sslmode=disable connect_timeout=5"),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        let e = Exporter { child, addr };
        let start = Instant::now();
        while std::net::TcpStream::connect(&e.addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "postgres_exporter did not listen"
            );
            thread::sleep(Duration::from_millis(100));
        }
        e
    }

    pub fn scrape(&self) -> String {
        let (code, body) = http_get(&self.addr, "/metrics");
        assert_eq!(code, 200, "{body}");
        body
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hot standby of the server on `primary_port` (pg_basebackup), on `port`, with `options`
/// (`-c name=value` each) over the primary's configuration; stopped and deleted when dropped.
pub struct Replica {
    pub bin: std::path::PathBuf,
    pub data: std::path::PathBuf,
    pub port: u16,
}

impl Replica {
    pub fn start(primary_port: u16, port: u16, options: &[&str]) -> Replica {
        let bin = std::path::PathBuf::from(
            std::env::var("DBCONN_GUARD_PG_BIN").expect("DBCONN_GUARD_PG_BIN"),
        );
        let state = std::path::PathBuf::from(
            std::env::var("DBCONN_GUARD_TEST_STATE").expect("DBCONN_GUARD_TEST_STATE"),
        );
        let r = Replica {
            bin,
            data: state.join(format!("replica-{port}")),
            port,
        };
        let _ = std::process::Command::new("rm")
            .arg("-rf")
            .arg(&r.data)
            .status();
        let data = r.data.to_str().unwrap().to_string();
        let pport = primary_port.to_string();
        run_as_postgres(
            &r.bin,
            "pg_basebackup",
            &[
                "-D",
                &data,
                "-h",
                "127.0.0.1",
                "-p",
                &pport,
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        );
        let mut opts = format!("-p {port} -c hot_standby=on");
        for o in options {
            opts.push_str(&format!(" -c {o}"));
        }
        let log = format!("{data}/server.log");
        run_as_postgres(
            &r.bin,
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &opts, "-w", "start"],
        );
        r
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default()
    }

    /// `pg_ctl promote`, waiting for it to finish.
    pub fn promote(&self) {
        run_as_postgres(
            &self.bin,
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "-w", "promote"],
        );
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let data = self.data.to_str().unwrap().to_string();
        if thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("standby server log (last 40 lines):");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = std::process::Command::new("sudo")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::process::Command::new("rm")
            .arg("-rf")
            .arg(&self.data)
            .status();
    }
}

/// A real Prometheus (Debian's package) on `port`, scraping `targets` every second as job
/// `dbconn_guard`, with the rules of `rules` (a file); killed and its data deleted when dropped.
pub struct Prometheus {
    child: std::process::Child,
    dir: std::path::PathBuf,
    pub addr: String,
}

impl Prometheus {
    pub fn start(port: u16, targets: &[String], rules: &std::path::Path) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("dbconn_guard-prometheus-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\n\
             scrape_configs:\n  - job_name: dbconn_guard\n    scrape_timeout: 900ms\n    static_configs:\n      - targets: [{list}]\n",
            rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr = format!("127.0.0.1:{port}");
        let bin = std::env::var("DBCONN_GUARD_PROMETHEUS")
            .unwrap_or_else(|_| "/usr/bin/prometheus".into());
        let child = std::process::Command::new(&bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        let p = Prometheus { child, dir, addr };
        wait_for_http(&p.addr, "/-/ready", 200, Duration::from_secs(30));
        p
    }

    /// `GET /api/v1/<path>?query=<promql>` (or any API path with its query string already
    /// encoded): the `data` of the answer.
    pub fn api(&self, path_and_query: &str) -> serde_json::Value {
        let (code, body) = http_get(&self.addr, &format!("/api/v1/{path_and_query}"));
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path_and_query}: {code} {e}: {body}"));
        assert_eq!(v["status"], "success", "{path_and_query}: {body}");
        v["data"].clone()
    }

    /// An instant query's result vector.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let d = self.api(&format!("query?query={}", url_encode(promql)));
        d["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "prometheus log:\n{}",
                std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a URL query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod procfs_tests {
    use super::*;

    #[test]
    fn a_status_field_is_read_by_its_exact_name() {
        let me = std::process::id() as i32;
        assert!(proc_status_kb(me, "VmRSS").is_some_and(|kb| kb > 0));
        // a prefix of another field's name is no field
        assert_eq!(proc_status_kb(me, "VmRS"), None);
        assert_eq!(proc_status_kb(me, "NoSuchField"), None);
        assert_eq!(proc_status_kb(i32::MAX, "VmRSS"), None);
        assert!(cpu_seconds(me) >= 0.0);
    }
}
