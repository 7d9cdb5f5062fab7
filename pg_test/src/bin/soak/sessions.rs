//! The load: sessions of every kind, each knowing the outcome it must get, the churn, the
//! leakers and the replication connections.

use super::*;

fn session_config(port: u16, kind: Kind, app: &str) -> Config {
    let (user, db) = match kind {
        Kind::ExcludedUser => (EXCLUDED_USER, "postgres"),
        Kind::ExcludedDatabase => (APP_USER, EXCLUDED_DB),
        Kind::Superuser => ("postgres", "postgres"),
        _ => (APP_USER, "postgres"),
    };
    config_at(port, user, db, app)
}

/// A session of `kind`: connects (retrying while the server restarts), learns its identity.
struct Session {
    client: Client,
    rec: Record,
}

fn open(sh: &Shared, kind: Kind, app: &str) -> Option<Session> {
    let cfg = session_config(sh.port, kind, app);
    loop {
        if sh.stopping() {
            return None;
        }
        match cfg.connect(NoTls) {
            Ok(mut client) => {
                let row = match client.query_one(
                    "SELECT pg_backend_pid(), backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                    &[],
                ) {
                    Ok(r) => r,
                    Err(_) => continue,
                };
                sh.started.fetch_add(1, Ordering::Relaxed);
                return Some(Session {
                    client,
                    rec: Record {
                        kind,
                        pid: row.get(0),
                        backend_start: row.get(1),
                        application_name: app.to_string(),
                        last_answer: now(),
                        noticed: 0.0,
                        ending: Ending::Alive,
                    },
                });
            }
            Err(_) => {
                // the server is restarting, or out of slots for a moment
                thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

impl Session {
    /// Runs `sql`; on an error, records how the session ended and returns false.
    fn run(&mut self, sql: &str) -> bool {
        match self.client.batch_execute(sql) {
            Ok(()) => {
                self.rec.last_answer = now();
                true
            }
            Err(e) => {
                self.rec.noticed = now();
                if e.code() == Some(&SqlState::ADMIN_SHUTDOWN) {
                    self.rec.ending = Ending::Terminated;
                } else if let Some(db) = e.as_db_error() {
                    if db.code() == &SqlState::DIVISION_BY_ZERO {
                        // the aborted-transaction leaker's own error
                        self.rec.last_answer = now();
                        return true;
                    }
                    self.rec.ending =
                        Ending::Lost(format!("{}: {}", db.code().code(), db.message()));
                } else {
                    self.rec.ending = Ending::Lost(e.to_string());
                }
                false
            }
        }
    }
    fn close(self, sh: &Shared) {
        sh.push(self.rec);
    }
}

/// A session that must never be ended, driven by `step` until the run stops; reconnects after
/// a loss (the crash-restart) so its kind stays represented.
pub(super) fn never_ended(sh: Arc<Shared>, kind: Kind, seed: u64) {
    let mut rng = Rng::new(seed);
    let t = sh.timeouts;
    let hostile = kind == Kind::Busy && seed.is_multiple_of(5);
    while !sh.stopping() {
        let app = match kind {
            Kind::ExcludedApplication => format!("soak-excluded-{}", seed % 7),
            Kind::ClientTool => "pg_dump".to_string(),
            _ if hostile => rng.pick(&HOSTILE_NAMES).to_string(),
            _ => format!("soak-{kind:?}").to_lowercase(),
        };
        let Some(mut s) = open(&sh, kind, &app) else {
            return;
        };
        let ok = loop {
            let alive = match kind {
                Kind::Busy => {
                    let sql = if rng.next().is_multiple_of(3) {
                        "SELECT pg_sleep(0.02)"
                    } else {
                        "SELECT count(*) FROM pg_class"
                    };
                    s.run(sql) && sh.nap(rng.range(0.0, 0.5 * t.idle_min()))
                }
                Kind::Flapper => s.run("SELECT 1") && sh.nap(t.idle_min() * rng.range(0.82, 0.88)),
                Kind::ShortTransactions | Kind::TransactionFlapper => {
                    let gap = |r: &mut Rng| {
                        if kind == Kind::TransactionFlapper {
                            t.iit_min() * r.range(0.77, 0.83)
                        } else {
                            r.range(0.0, 0.5 * t.iit_min())
                        }
                    };
                    let mut ok = s.run("BEGIN; SELECT 1");
                    for _ in 0..(2 + rng.next() % 4) {
                        ok = ok && sh.nap(gap(&mut rng)) && s.run("SELECT count(*) FROM pg_class");
                    }
                    // a commit always, even when stopping: the session stays clean
                    ok = ok && s.run("COMMIT");
                    ok && sh.nap(rng.range(0.0, 0.5 * t.idle_min()))
                }
                Kind::LongQuery => {
                    // active well past both timeouts
                    s.run(&format!("SELECT pg_sleep({:.1})", t.idle_min() * 1.5)) && !sh.stopping()
                }
                _ => {
                    // the protected kinds idle far past the timeouts, half of them in a
                    // transaction, then prove they are still there
                    let in_txn = seed.is_multiple_of(2);
                    let first = if in_txn {
                        "BEGIN; SELECT 1"
                    } else {
                        "SELECT 1"
                    };
                    let mut ok = s.run(first);
                    ok = ok && {
                        let rest = sh.nap(t.idle_min() * rng.range(1.5, 2.5));
                        // whether or not the run is stopping: the session must still answer
                        let alive = s.run(if in_txn {
                            "SELECT 1; COMMIT"
                        } else {
                            "SELECT 1"
                        });
                        alive && rest
                    };
                    ok
                }
            };
            if !alive {
                break s.rec.ending == Ending::Alive;
            }
        };
        // a last word: still there?
        if ok {
            s.run("SELECT 1");
        }
        let lost = s.rec.ending != Ending::Alive;
        s.close(&sh);
        if lost {
            thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Short-lived connections, one after the other.
pub(super) fn churn(sh: Arc<Shared>, seed: u64) {
    let mut rng = Rng::new(seed);
    while !sh.stopping() {
        let Some(mut s) = open(&sh, Kind::Churn, "soak-churn") else {
            return;
        };
        s.run("SELECT 1");
        s.close(&sh);
        sh.nap(rng.range(0.1, 0.3));
    }
}

/// Leakers, one after the other, from the start of the run to the last moment at which their
/// deadline (plus grace) still falls inside it. Each one checks, once past its deadline and the
/// grace, whether it was ended.
pub(super) fn leakers(sh: Arc<Shared>, kind: Kind, seed: u64) {
    let mut rng = Rng::new(seed);
    let t = sh.timeouts;
    let longest = match kind {
        Kind::IdleLeaker => t.idle[0].max(t.idle[1]),
        _ => t.in_transaction[0].max(t.in_transaction[1]),
    };
    // spread the starts over the run
    if !sh.nap(rng.range(0.0, longest)) {
        return;
    }
    while !sh.stopping() && now() + longest + sh.grace < sh.end_at {
        let app = if seed.is_multiple_of(4) {
            rng.pick(&HOSTILE_NAMES).to_string()
        } else {
            format!("soak-{kind:?}").to_lowercase()
        };
        let Some(mut s) = open(&sh, kind, &app) else {
            return;
        };
        let leak = match kind {
            Kind::IdleLeaker => "SELECT 1",
            _ if seed.is_multiple_of(3) => "BEGIN; SELECT 1/0", // idle in transaction (aborted)
            _ => "BEGIN; SELECT 1",
        };
        if s.run(leak) {
            let deadline = s.rec.last_answer + longest + sh.grace;
            // not `nap`: a leaker checks even when the run is stopping
            thread::sleep(Duration::from_secs_f64((deadline - now()).max(0.0)));
            if s.client.batch_execute("SELECT 1").is_ok() {
                s.rec.ending = Ending::Alive; // missed
            } else {
                let last = s.rec.last_answer;
                s.run("SELECT 1");
                s.rec.last_answer = last;
            }
        }
        s.close(&sh);
        if !sh.nap(rng.range(0.0, longest / 2.0)) {
            return;
        }
    }
}

/// Idle walsenders (`psql "replication=database"` kept open): never ended.
pub(super) fn replication_sessions(port: u16, n: usize) -> Vec<Child> {
    let bin = std::path::PathBuf::from(
        std::env::var("DBCONN_GUARD_PG_BIN").expect("DBCONN_GUARD_PG_BIN"),
    );
    (0..n)
        .map(|_| {
            Command::new(bin.join("psql"))
                .arg(format!(
                    "host=127.0.0.1 port={port} user=postgres dbname=postgres replication=database application_name=soak-replication"
                ))
                .args(["-X", "-q"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("psql")
        })
        .collect()
}
