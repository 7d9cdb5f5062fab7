//! A real pgbouncer (Debian's package, 1.18) in front of the test cluster, and pgbench through
//! it, for the tests of the guard behind a pooler (`tests/pgbouncer.rs`).
//!
//! pgbouncer refuses to run as root: started as root, it is told to switch to the `postgres` OS
//! user (`-u postgres`), so the child process is pgbouncer itself and is killed when the
//! [`Pgbouncer`] is dropped. Its configuration lives in a directory of its own under the temp
//! directory, readable by that user; it logs to stderr, which goes to a file there.

use postgres::{Client, Config, NoTls};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The `[pgbouncer]` settings every instance starts with, before the test's own.
pub const DEFAULT_SETTINGS: [(&str, &str); 12] = [
    ("default_pool_size", "20"),
    ("max_client_conn", "200"),
    // pgbouncer's own defaults, written out so the test states what it ran with
    ("server_idle_timeout", "600"),
    ("server_lifetime", "3600"),
    ("server_reset_query", "DISCARD ALL"),
    ("server_reset_query_always", "0"),
    ("server_check_delay", "30"),
    ("server_round_robin", "0"),
    ("application_name_add_host", "0"),
    // pgbench and JDBC send it; pgbouncer refuses unknown startup parameters otherwise
    ("ignore_startup_parameters", "extra_float_digits"),
    ("log_connections", "0"),
    ("log_disconnections", "1"),
];

/// A pgbouncer on 127.0.0.1:`port` serving one database of the test cluster; killed and its
/// directory deleted when dropped (its log's tail is printed when the test failed).
pub struct Pgbouncer {
    child: Child,
    dir: PathBuf,
    pub port: u16,
    pub pool_mode: String,
    pub dbname: String,
    /// The `[pgbouncer]` settings it runs with (defaults, then the test's own).
    pub settings: Vec<(String, String)>,
}

impl Pgbouncer {
    /// Starts pgbouncer on 127.0.0.1:`port` in `pool_mode` (`session` or `transaction`), in
    /// front of database `dbname` of the test cluster, with `trust` authentication for `users`
    /// (the first is also its admin) and `settings` over [`DEFAULT_SETTINGS`].
    ///
    /// The port is in the kernel's ephemeral range, where a client socket of this machine may
    /// hold it for a while: when pgbouncer cannot bind it, the next candidates (`port` + 10,
    /// + 20, ...) are tried; `port` holds the one it listens on.
    pub fn start(
        port: u16,
        pool_mode: &str,
        dbname: &str,
        users: &[&str],
        settings: &[(&str, &str)],
    ) -> Pgbouncer {
        let mut refused = Vec::new();
        for n in 0..10 {
            let candidate = port + 10 * n;
            match Pgbouncer::try_start(candidate, pool_mode, dbname, users, settings) {
                Ok(b) => return b,
                Err(log) if log.contains("Address already in use") => refused.push(candidate),
                Err(log) => panic!("pgbouncer on {candidate} exited:\n{log}"),
            }
        }
        panic!("pgbouncer could bind none of the ports {refused:?}");
    }

    /// pgbouncer on exactly `port`; Err(its log) when it exits before it is up.
    fn try_start(
        port: u16,
        pool_mode: &str,
        dbname: &str,
        users: &[&str],
        settings: &[(&str, &str)],
    ) -> Result<Pgbouncer, String> {
        let dir = std::env::temp_dir().join(format!("dbconn_guard-pgbouncer-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut all: Vec<(String, String)> = DEFAULT_SETTINGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in settings {
            match all.iter_mut().find(|(name, _)| name == k) {
                Some(s) => s.1 = v.to_string(),
                None => all.push((k.to_string(), v.to_string())),
            }
        }
        let host = std::env::var("DBCONN_GUARD_TEST_HOST").unwrap_or_else(|_| "127.0.0.1".into());
        let mut ini = format!(
            "[databases]\n{dbname} = host={host} port={} dbname={dbname}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {}\nadmin_users = {}\npool_mode = {pool_mode}\n",
            crate::test_port(),
            dir.join("userlist.txt").display(),
            users.first().copied().unwrap_or("postgres"),
        );
        for (k, v) in &all {
            ini.push_str(&format!("{k} = {v}\n"));
        }
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        let userlist: String = users.iter().map(|u| format!("\"{u}\" \"\"\n")).collect();
        std::fs::write(dir.join("userlist.txt"), userlist).unwrap();
        let bin = std::env::var("DBCONN_GUARD_PGBOUNCER")
            .unwrap_or_else(|_| "/usr/sbin/pgbouncer".into());
        let mut cmd = Command::new(&bin);
        if is_root() {
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("pgbouncer.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        let mut b = Pgbouncer {
            child,
            dir,
            port,
            pool_mode: pool_mode.to_string(),
            dbname: dbname.to_string(),
            settings: all,
        };
        let start = Instant::now();
        // up once it says so (it has bound its port then) and answers there
        while !(b.log().contains("process up")
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        {
            if let Ok(Some(status)) = b.child.try_wait() {
                // its Drop deletes the directory: the log is taken first
                return Err(format!("exit {status}:\n{}", b.log()));
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "pgbouncer did not listen on {port}:\n{}",
                b.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        Ok(b)
    }

    /// A client's settings for a session through pgbouncer.
    pub fn config(&self, user: &str, application_name: &str) -> Config {
        let mut c = Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user(user)
            .dbname(&self.dbname)
            .application_name(application_name)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// A client session through pgbouncer. In transaction mode consecutive statements may run
    /// on different server connections, and the `postgres` crate's `query` prepares a named
    /// statement in one round trip and runs it in another: use `simple_query` and
    /// `batch_execute` through it.
    pub fn connect(&self, user: &str, application_name: &str) -> Client {
        self.config(user, application_name)
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("connect through pgbouncer as {user}: {e}"))
    }

    /// What pgbouncer logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    /// The lines of its log that contain `what`.
    pub fn log_count(&self, what: &str) -> usize {
        self.log().lines().filter(|l| l.contains(what)).count()
    }

    /// pgbench through pgbouncer as `user`, with `args` before the database name.
    pub fn pgbench(&self, user: &str, args: &[&str]) -> Pgbench {
        let bin = pgbench_bin();
        let port = self.port.to_string();
        let out = Command::new(&bin)
            .args(["-h", "127.0.0.1", "-p", &port, "-U", user])
            .args(args)
            .arg(&self.dbname)
            .output()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        Pgbench::parse(
            out.status.code(),
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        )
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("pgbouncer log (last 40 lines):");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// pgbench: `DBCONN_GUARD_PGBENCH`, or Debian's `/usr/bin/pgbench`.
pub fn pgbench_bin() -> String {
    std::env::var("DBCONN_GUARD_PGBENCH").unwrap_or_else(|_| "/usr/bin/pgbench".into())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// What a pgbench run reported.
#[derive(Debug, Clone, Default)]
pub struct Pgbench {
    /// pgbench's exit status (0: success; 2: some client aborted).
    pub exit_code: Option<i32>,
    /// "number of transactions actually processed"
    pub processed: u64,
    /// "number of failed transactions" (serialization and deadlock failures; pgbench aborts a
    /// client on any other error)
    pub failed: u64,
    /// clients that pgbench reports aborted ("client N aborted ..."): each stops at its first
    /// error for the rest of the run
    pub aborted_clients: u64,
    /// the lines of the abort messages, for the report
    pub abort_lines: Vec<String>,
    pub stdout: String,
    pub stderr: String,
}

impl Pgbench {
    /// Reads pgbench's summary (stdout) and its complaints (stderr).
    pub fn parse(exit_code: Option<i32>, stdout: &str, stderr: &str) -> Pgbench {
        let number = |label: &str| -> u64 {
            stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .and_then(|rest| {
                    rest.trim()
                        .split(|c: char| !c.is_ascii_digit())
                        .next()
                        .and_then(|n| n.parse().ok())
                })
                .unwrap_or(0)
        };
        let abort_lines: Vec<String> = stderr
            .lines()
            .chain(stdout.lines())
            .filter(|l| {
                let l = l.trim_start_matches("pgbench: error: ");
                l.starts_with("client ") && l.contains(" aborted")
            })
            .map(str::to_string)
            .collect();
        Pgbench {
            exit_code,
            processed: number("number of transactions actually processed:"),
            failed: number("number of failed transactions:"),
            aborted_clients: abort_lines.len() as u64,
            abort_lines,
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
        }
    }

    /// Client errors pgbench saw: failed transactions and aborted clients.
    pub fn errors(&self) -> u64 {
        self.failed + self.aborted_clients
    }
}
