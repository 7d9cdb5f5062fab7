//! `dbconn_guard.diagnose()`: the runbook's "Diagnosis Decision Tree", walked in one call.
//!
//! The seed runbook's tree (can we connect, is the pool exhausted, what is the error pattern,
//! what changed recently) plus the configuration, the guard's own worker and what the calling
//! role cannot see. Pure: the pgrx layer reads the server once into an [`Input`], calls
//! [`diagnose`], and returns the [`Finding`]s as rows, in order.
//!
//! Every finding that is not `ok` carries exactly one action a DBA can paste: a statement
//! (`SELECT pg_terminate_backend(4711);`), a setting with its reload, or a pgbouncer setting.
//! Names that come from clients (application_name above all) only ever enter an action as a
//! SQL string literal ([`sql_literal`]) or a quoted identifier ([`sql_ident`]), so a hostile
//! name cannot turn an action into another statement; in the evidence they are written with
//! [`crate::quote::quoted`], as in the guard's log lines.
//!
//! Nothing here panics on a state it does not expect (a standby, no preload, no history,
//! `max_connections = 0`, missing settings): a branch that cannot be checked says so in a row
//! of status `info`, with the action that would let it be checked or the manual query.

use crate::blocking::{self, Chain, LockWait};
use crate::config_changes::TimedChange;
use crate::health::{self, Thresholds};
use crate::history::{self, GroupName, Sample, StateCounts};
use crate::leaks;
use crate::overrides::{Key, Overrides};
use crate::policy::{Policy, IDLE, IDLE_IN_TRANSACTION, IDLE_IN_TRANSACTION_ABORTED};
use crate::quote::{quoted, quoted_or};
use crate::session::{age_seconds, Backend, Micros, Snapshot, SECOND};
use crate::utilization::{self, Limits, Utilization};
use std::collections::BTreeMap;
use std::fmt::Write;

// ---------------------------------------------------------------------------------------------
// Input
// ---------------------------------------------------------------------------------------------

/// Everything `diagnose()` looks at, read once by the pgrx layer as the calling role.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    /// `pg_stat_activity` as the calling role sees it (other roles' sessions are
    /// `Kind::Hidden` without `pg_read_all_stats`). `snapshot.now` is "now" for every age.
    pub snapshot: Snapshot,
    /// `max_connections`, `superuser_reserved_connections`, `reserved_connections`.
    pub limits: Limits,
    /// Backends waiting for a heavyweight lock, with `pg_blocking_pids()` (what
    /// `blocking_chains()` reads); traced to their roots with [`blocking::chains`].
    pub lock_waits: Vec<LockWait>,
    pub history: History,
    pub server: Server,
    pub guard: Guard,
    /// `worker_status()`; `None` when there is no worker to ask (library not preloaded).
    pub worker: Option<WorkerInfo>,
    pub caller: Caller,
}

/// The sampled history (`dbconn_guard.history`) over the diagnose window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// Samples are being taken: preloaded and `dbconn_guard.history_size > 0`.
    pub enabled: bool,
    /// The calling role may not read the history (it is granted to pg_read_all_stats and
    /// dbconn_guard_admin): `samples` is empty for that reason, not for want of samples.
    pub hidden_from_caller: bool,
    /// `dbconn_guard.diagnose_window` (default 1h), in microseconds: "recent" means within it.
    pub window: Micros,
    /// The samples with `time >= now - window`, oldest first (empty when there are none). They
    /// also give the leak trend (`leaks::suspects_with_trend` over `history::idle_series`), so
    /// the window should span at least `leak_trend_samples` samples.
    pub samples: Vec<Sample>,
}

/// The server's state and PostgreSQL's own settings. `None`: not readable by the caller, or
/// not on this version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Server {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// `pg_postmaster_start_time()`.
    pub postmaster_start: Option<Micros>,
    /// `pg_conf_load_time()`.
    pub conf_load_time: Option<Micros>,
    /// `dbconn_guard` is in `shared_preload_libraries` (the worker and the history exist).
    pub preloaded: bool,
    /// `SHOW shared_preload_libraries` (superuser or `pg_read_all_settings` only: `None` when
    /// hidden), to add dbconn_guard to the list rather than replace it.
    pub shared_preload_libraries: Option<String>,
    /// The calling session's values, in microseconds (0: off). Per-role or per-database
    /// values (`ALTER ROLE ... SET`) may differ for other sessions.
    pub idle_in_transaction_session_timeout: Option<Micros>,
    pub idle_session_timeout: Option<Micros>,
    pub statement_timeout: Option<Micros>,
    /// PostgreSQL 17 and later; `None` before.
    pub transaction_timeout: Option<Micros>,
    /// Bytes.
    pub work_mem: Option<i64>,
    /// Bytes.
    pub shared_buffers: Option<i64>,
    /// The settings the configuration reloads changed, as the worker saw them (oldest first);
    /// `None` when the caller may not read them (`pg_read_all_settings`) or there is no worker
    /// to have seen them.
    pub setting_changes: Option<Vec<TimedChange>>,
    /// `pg_conf_load_time()` of the last reload whose changes the worker compared (0: none):
    /// a later reload's changes were not seen.
    pub settings_compared_reload: Micros,
}

/// The guard's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Guard {
    /// The worker's termination policy (timeouts, overrides, exclusions).
    pub policy: Policy,
    /// `dbconn_guard.enabled`.
    pub enabled: bool,
    /// `dbconn_guard.dry_run`.
    pub dry_run: bool,
    /// The health thresholds (`dbconn_guard.warning_pct`, `critical_pct`,
    /// `idle_warning_age`, `idle_in_transaction_warning_age`, `lock_wait_*_age`, ...).
    pub thresholds: Thresholds,
    /// `dbconn_guard.leak_idle_age`, seconds.
    pub leak_idle_age: f64,
    /// `dbconn_guard.leak_trend_samples`.
    pub leak_trend_samples: usize,
    /// Active statements running longer than this many seconds are slow (the caller's
    /// argument, 5 min by default; 0 or less: not checked).
    pub slow_query_age: f64,
}

/// `dbconn_guard.worker_status()`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerInfo {
    pub running: bool,
    pub pid: Option<i32>,
    /// `dbconn_guard.database`: where the worker connects and writes the audit.
    pub database: String,
    pub last_error: Option<String>,
    pub last_error_at: Option<Micros>,
    /// The extension exists in `dbconn_guard.database`.
    pub extension_ready: bool,
    /// The owner of `dbconn_guard.database`, when it is not a superuser.
    pub database_owner_not_superuser: Option<String>,
}

/// Who is asking.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Caller {
    /// `pg_backend_pid()`: its own (active) session is never a slow query or a target.
    pub pid: i32,
    /// `current_user`.
    pub role: String,
    /// `current_database()`.
    pub database: String,
    /// Backends whose details PostgreSQL withheld from this role (`Kind::Hidden` in the
    /// snapshot, or counted apart by the reader).
    pub hidden_backends: i64,
    /// Member of `pg_read_all_stats` (or superuser).
    pub has_read_all_stats: bool,
    /// The caller may not execute `terminate_idle()` (it is granted to `dbconn_guard_admin`
    /// only): actions end sessions with `pg_terminate_backend()` instead.
    pub lacks_terminate_idle: bool,
    /// A superuser: may signal any session.
    pub is_superuser: bool,
    /// Has the privileges of `pg_signal_backend`: may signal any session but a superuser's.
    pub has_signal_backend: bool,
    /// The roles of visible sessions whose privileges the caller has (it may signal their
    /// sessions, as PostgreSQL's `pg_terminate_backend()` allows).
    pub member_of: Vec<String>,
}

impl Caller {
    /// May this role run `pg_terminate_backend()` / `pg_cancel_backend()` on `b`, by
    /// PostgreSQL's rules? A superuser's session only for a superuser; any other for
    /// `pg_signal_backend` or a member of the session's role.
    pub fn may_signal(&self, b: &Backend) -> bool {
        if self.is_superuser {
            return true;
        }
        if b.is_superuser != Some(false) {
            return false;
        }
        self.has_signal_backend
            || b.usename
                .as_deref()
                .is_some_and(|u| self.member_of.iter().any(|m| m == u))
    }

    /// What to add to an action that signals `b` when this role may not: who may.
    fn signal_note(&self, b: Option<&Backend>) -> Option<String> {
        match b {
            Some(b) if self.may_signal(b) => None,
            Some(b) if b.is_superuser != Some(false) => Some(format!(
                "{} may not signal this session (a superuser's, or one whose role it cannot see): a superuser must run the action",
                quoted(&self.role)
            )),
            Some(b) => Some(format!(
                "{} may not signal this session: run the action as a member of pg_signal_backend (dbconn_guard_admin is one) or of role {}",
                quoted(&self.role),
                quoted_or(b.usename.as_deref(), "-")
            )),
            None => Some(format!(
                "{} cannot see this session: run the action as a role that may see and signal it",
                quoted(&self.role)
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Info,
    Warning,
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Info => "info",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }
}

/// One row of `diagnose()`.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// 1, 2, 3, ... in the order of the rows.
    pub step: i32,
    /// The branch of the tree, a fixed short name (`pool`, `leaks`, `locks`, ...).
    pub area: &'static str,
    pub finding: String,
    pub status: Status,
    /// Short, with numbers.
    pub evidence: String,
    /// One statement or setting to paste; always present unless `status` is `ok`.
    pub action: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Thresholds of the tree
// ---------------------------------------------------------------------------------------------

/// Fewer samples than this: "not enough history".
pub const MIN_HISTORY_SAMPLES: usize = 3;
/// Rows per branch that lists sessions, roots or groups.
pub const TOP: usize = 3;
/// A group with fewer old idle sessions than this is no leak (a DBA's psql, a cron job's
/// connection), unless its idle count keeps growing.
pub const LEAK_MIN_SESSIONS: i64 = 3;
/// "Pool larger than its work": at least this many sessions from one client address, user and
/// application ...
pub const OVERSIZED_MIN_SESSIONS: u32 = 10;
/// ... of which at least this share has been idle for longer than
/// `dbconn_guard.idle_warning_age` (at least [`TRANSIENT_SECS`]: a pool that uses its
/// connections takes each one within seconds, however little traffic it has) ...
pub const OVERSIZED_IDLE_SHARE: f64 = 0.8;
/// ... and whose busiest moment over the window (its active and idle-in-transaction
/// sessions, now and in every sample of the history) plus this headroom is at most half of
/// it.
pub const OVERSIZED_HEADROOM: u32 = 2;
/// pgbouncer advice: at least this many client sessions ...
pub const MOSTLY_IDLE_MIN_CLIENTS: i64 = 20;
/// ... of which at least this share is idle.
pub const MOSTLY_IDLE_SHARE: f64 = 0.7;
/// A connection storm: this many new sessions within [`STORM_SPAN`] (or this rise between two
/// samples), or a tenth of `max_connections` if that is more.
pub const STORM_MIN_NEW: i64 = 20;
pub const STORM_SPAN: Micros = 60 * SECOND;
/// The idle-in-transaction timeout recommended where none is set (the runbook's value).
pub const RECOMMENDED_IIT_TIMEOUT: &str = "5min";
/// pgbouncer's `server_idle_timeout` recommended for its server connections, seconds.
pub const RECOMMENDED_SERVER_IDLE_TIMEOUT: i64 = 600;
/// application_names (case-insensitive substrings) of connection poolers.
pub const POOLER_NAMES: [&str; 4] = ["pgbouncer", "pgcat", "odyssey", "pgpool"];
/// A guard rule's deadline passed this long ago and the session is still there: the worker is
/// not keeping up (or not running).
pub const OVERDUE_SLACK: Micros = 60 * SECOND;
/// Seconds under which an idle state or a lock wait is a healthy client's ordinary moment (a
/// transaction between two statements, a row lock held for a few milliseconds): no row
/// offers to end or cancel a session on it.
pub const TRANSIENT_SECS: f64 = 5.0;

// ---------------------------------------------------------------------------------------------
// The tree
// ---------------------------------------------------------------------------------------------

/// The decision tree over `input`, as rows in the runbook's order: can we connect (the server
/// row), is the pool exhausted (pool, consumers, oversized pool, leaks, idle in transaction,
/// slow queries, locks), the error pattern, recent changes (configuration, deployment,
/// connection storm), the configuration (timeouts, guard, memory, pgbouncer, pooler), the
/// worker, and visibility.
pub fn diagnose(input: &Input) -> Vec<Finding> {
    let c = Ctx::new(input);
    let branches: [fn(&Ctx) -> Vec<Finding>; 20] = [
        server,
        pool,
        consumers,
        oversized_pool,
        leak_suspects,
        idle_in_transaction,
        slow_queries,
        lock_pileups,
        error_pattern,
        config_changes,
        new_applications,
        new_clients,
        connection_storm,
        timeouts,
        guard_state,
        memory,
        pgbouncer,
        pooler,
        worker,
        visibility,
    ];
    let mut out: Vec<Finding> = branches.iter().flat_map(|b| b(&c)).collect();
    for (i, f) in out.iter_mut().enumerate() {
        f.step = i as i32 + 1;
    }
    out
}

/// What every branch needs, worked out once.
struct Ctx<'a> {
    i: &'a Input,
    now: Micros,
    util: Utilization,
    /// Visible client backends.
    clients: Vec<&'a Backend>,
    /// Samples, oldest first.
    samples: Vec<Sample>,
    /// The worker is there to end sessions: preloaded, enabled, not a dry run, running.
    guard_ending: bool,
    /// `terminate_idle()` works: preloaded, worker running, extension in its database.
    terminate_idle_works: bool,
    chains: Vec<Chain>,
    /// The leak suspects (what the `leaks` row reports): one story per incident, so the
    /// other rows point to them rather than diagnose the same sessions again.
    leaks: Vec<leaks::SuspectRow>,
}

impl<'a> Ctx<'a> {
    fn new(i: &'a Input) -> Ctx<'a> {
        let running = i.worker.as_ref().is_some_and(|w| w.running);
        let mut samples = i.history.samples.clone();
        samples.sort_by_key(|s| s.time);
        let g = &i.guard;
        let window = g.leak_trend_samples.max(2);
        // a leak is many sessions: one or two old idle sessions (a DBA's psql, a cron job's
        // connection) are not one, unless their count keeps growing
        let leak_rows = leaks::suspects_with_trend(&i.snapshot, g.leak_idle_age, window, |n| {
            history::idle_series(&samples, n, window)
        })
        .into_iter()
        .filter(|r| r.reason == "growing" || r.group.connection_count >= LEAK_MIN_SESSIONS)
        .collect();
        Ctx {
            leaks: leak_rows,
            i,
            now: i.snapshot.now,
            util: utilization::utilization(&i.snapshot, i.limits),
            clients: i.snapshot.clients().collect(),
            samples,
            guard_ending: i.server.preloaded && i.guard.enabled && !i.guard.dry_run && running,
            terminate_idle_works: i.server.preloaded
                && running
                && i.worker.as_ref().is_some_and(|w| w.extension_ready)
                && !i.caller.lacks_terminate_idle,
            chains: blocking::chains(&i.lock_waits),
        }
    }

    fn window_start(&self) -> Micros {
        self.now.saturating_sub(self.i.history.window.max(0))
    }

    /// Why the history cannot be read, or `None` when it can.
    fn history_missing(&self) -> Option<String> {
        if !self.i.server.preloaded {
            Some("no history: dbconn_guard is not in shared_preload_libraries".into())
        } else if !self.i.history.enabled {
            Some("no history: dbconn_guard.history_size is 0".into())
        } else if self.i.history.hidden_from_caller {
            Some(format!(
                "the history is not readable by {}: it counts every role's sessions, so it is shown to pg_read_all_stats (pg_monitor) and dbconn_guard_admin only",
                quoted(&self.i.caller.role)
            ))
        } else if self.samples.len() < MIN_HISTORY_SAMPLES {
            Some(format!(
                "not enough history: {} sample(s) in the last {} (at least {MIN_HISTORY_SAMPLES} needed)",
                self.samples.len(),
                dur(self.i.history.window as f64 / 1e6)
            ))
        } else {
            None
        }
    }

    /// The action that makes the history available.
    fn history_action(&self) -> String {
        if !self.i.server.preloaded {
            preload_action(&self.i.server)
        } else if !self.i.history.enabled {
            "ALTER SYSTEM SET dbconn_guard.history_size = 8640;  -- takes effect after a restart"
                .into()
        } else if self.i.history.hidden_from_caller {
            format!(
                "GRANT pg_monitor TO {};  -- or run diagnose() as a monitoring role",
                sql_ident(&self.i.caller.role)
            )
        } else {
            "SELECT time, client_backends, utilization_pct FROM dbconn_guard.history ORDER BY time DESC LIMIT 10;"
                .into()
        }
    }

    /// Seconds after which an idle session of a pool counts as unused.
    fn unused_after(&self) -> f64 {
        self.i.guard.thresholds.idle_age.max(TRANSIENT_SECS)
    }

    /// Is a leak suspect of this client, user and application reported in the `leaks` row?
    fn is_leak(&self, addr: Option<&str>, user: Option<&str>, app: Option<&str>) -> bool {
        self.leaks.iter().any(|r| {
            let k = &r.group.key;
            k.client_addr.as_deref() == addr
                && k.usename.as_deref() == user
                && k.application_name.as_deref() == app
        })
    }

    /// Threshold of a connection storm.
    fn storm_threshold(&self) -> i64 {
        STORM_MIN_NEW.max(i64::from(self.i.limits.max_connections) / 10)
    }

    /// How many waiting sessions `pid` holds up as a root blocker.
    fn holds_up(&self, pid: i32) -> i64 {
        self.chains
            .iter()
            .find(|ch| ch.root_pid == Some(pid))
            .map_or(0, |ch| ch.root_blocked_count)
    }
}

fn ok(area: &'static str, finding: impl Into<String>, evidence: impl Into<String>) -> Finding {
    Finding {
        step: 0,
        area,
        finding: finding.into(),
        status: Status::Ok,
        evidence: evidence.into(),
        action: None,
    }
}

fn flag(
    area: &'static str,
    status: Status,
    finding: impl Into<String>,
    evidence: impl Into<String>,
    action: impl Into<String>,
) -> Finding {
    Finding {
        step: 0,
        area,
        finding: finding.into(),
        status,
        evidence: evidence.into(),
        action: Some(action.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Can connect directly to DB?
// ---------------------------------------------------------------------------------------------

fn server(c: &Ctx) -> Vec<Finding> {
    let up =
        c.i.server
            .postmaster_start
            .map(|t| format!("up for {}", dur(secs_between(c.now, t))))
            .unwrap_or_else(|| "start time unknown".into());
    if c.i.server.in_recovery {
        return vec![flag(
            "server",
            Status::Info,
            "Connected to a standby (in recovery): it is read-only",
            format!(
                "{up}; the guard's terminations here are not written to dbconn_guard.terminations (read-only), only kept in memory; lock waits may come from recovery conflicts; every other check runs on this server's sessions only"
            ),
            "SELECT * FROM dbconn_guard.recent_terminations();",
        )];
    }
    vec![ok(
        "server",
        "Connected: the database answers, so this is an application-side issue if clients cannot connect",
        format!("primary, {up}"),
    )]
}

// ---------------------------------------------------------------------------------------------
// Pool exhausted?
// ---------------------------------------------------------------------------------------------

fn pool(c: &Ctx) -> Vec<Finding> {
    let u = &c.util;
    let l = u.limits;
    let t = &c.i.guard.thresholds;
    if l.max_connections <= 0 {
        return vec![flag(
            "pool",
            Status::Info,
            "Could not check the pool: max_connections is unknown",
            format!(
                "max_connections read as {}; {} client sessions visible",
                l.max_connections, u.client_backends
            ),
            "SHOW max_connections;",
        )];
    }
    let checks = health::evaluate(&c.i.snapshot, u, &[], t);
    let mut status = checks
        .iter()
        .find(|k| k.name == "utilization")
        .map_or(Status::Ok, |k| from_health(k.status));
    let exhausted = u.available_connections == 0;
    if exhausted {
        status = Status::Critical;
    }
    let reserved = l.superuser_reserved_connections + l.reserved_connections.unwrap_or(0);
    let hidden = if u.hidden_backends > 0 {
        format!(
            "; {} backends hidden from this role are not counted",
            u.hidden_backends
        )
    } else {
        String::new()
    };
    let evidence = format!(
        "{} of {} slots ({:.1}%): {} active, {} idle, {} idle in transaction; {} reserved, {} left for ordinary roles; warning at {}%, critical at {}%{hidden}",
        u.client_backends,
        l.max_connections,
        u.utilization_pct,
        u.active,
        u.idle,
        u.idle_in_transaction + u.idle_in_transaction_aborted,
        reserved,
        u.available_connections,
        t.warning_pct,
        t.critical_pct,
    );
    let finding = match (status, exhausted) {
        (Status::Ok, _) => {
            return vec![ok(
                "pool",
                format!(
                    "Pool not exhausted: {:.1}% of connection slots in use",
                    u.utilization_pct
                ),
                evidence,
            )]
        }
        (_, true) => "Pool exhausted: no connection slot left for ordinary roles".to_string(),
        (Status::Critical, _) => format!(
            "Pool nearly exhausted: {:.1}% of connection slots in use (critical)",
            u.utilization_pct
        ),
        _ => format!(
            "Pool filling up: {:.1}% of connection slots in use",
            u.utilization_pct
        ),
    };
    let (action, evidence) = if u.idle > 0 {
        // the culprit: the group (application, user, client, database) holding most of the
        // idle sessions, when one does; otherwise every group's, said to be wider
        let mut idle_by: BTreeMap<IdleKey, u32> = BTreeMap::new();
        for b in c.clients.iter().filter(|b| b.has_state(IDLE)) {
            *idle_by
                .entry((
                    b.application_name.as_deref(),
                    b.usename.as_deref(),
                    b.client_addr.as_deref(),
                    b.datname.as_deref(),
                ))
                .or_default() += 1;
        }
        let total: u32 = idle_by.values().sum();
        let top = idle_by
            .iter()
            .max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k)))
            .map(|(k, n)| (*k, *n));
        let scope = match top {
            Some(((app, user, client, db), n)) if n >= 2 && 2 * n >= total => {
                IdleScope::group(app, user, client, db)
            }
            _ => IdleScope::default(),
        };
        let held = top.map_or(0, |(_, n)| n);
        let whose = if scope.is_everyone() {
            format!(
                "; no single group holds most of the {total} idle sessions (the largest {held})"
            )
        } else {
            format!(
                "; {} holds {held} of the {total} idle sessions",
                scope.describe()
            )
        };
        (
            end_idle(c, &scope, t.idle_age),
            format!("{evidence}{whose}{}", end_idle_scope(c, &scope, t.idle_age)),
        )
    } else {
        (
            format!(
                "ALTER SYSTEM SET max_connections = {};  -- takes effect after a restart",
                round_up_10((f64::from(l.max_connections) * 1.5) as i64)
            ),
            evidence,
        )
    };
    vec![flag("pool", status, finding, evidence, action)]
}

/// How a consumer is named in the evidence.
type NameOf = fn(&Backend) -> String;

/// (application, user, client address, database) of a client backend.
type IdleKey<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

/// Who holds the slots: the top applications, users and client addresses.
fn consumers(c: &Ctx) -> Vec<Finding> {
    if c.clients.is_empty() {
        return vec![ok(
            "consumers",
            "No client sessions visible",
            "0 client backends",
        )];
    }
    let total = c.clients.len();
    let dims: [(&str, NameOf); 3] = [
        ("application", |b| {
            quoted_or(b.application_name.as_deref(), "-")
        }),
        ("user", |b| quoted_or(b.usename.as_deref(), "-")),
        ("client", |b| quoted_or(b.client_addr.as_deref(), "local")),
    ];
    dims.iter()
        .map(|(dim, name_of)| {
            let mut tally: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            for b in &c.clients {
                let e = tally.entry(name_of(b)).or_default();
                e.0 += 1;
                e.1 += usize::from(b.has_state(IDLE));
            }
            let mut ranked: Vec<(String, (usize, usize))> = tally.into_iter().collect();
            ranked.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
            let shown: Vec<String> = ranked
                .iter()
                .take(TOP)
                .map(|(n, (k, idle))| {
                    format!(
                        "{n} {k} ({:.0}%, {:.0}% idle)",
                        share(*k, total),
                        share(*idle, *k)
                    )
                })
                .collect();
            let more = ranked.len().saturating_sub(TOP);
            let (top_name, (top_n, top_idle)) = &ranked[0];
            ok(
                "consumers",
                format!(
                    "Top {dim}: {top_name} holds {top_n} of {total} client sessions ({:.0}%), {:.0}% of them idle",
                    share(*top_n, total),
                    share(*top_idle, *top_n)
                ),
                format!(
                    "by {dim}: {}{}",
                    shown.join(", "),
                    if more > 0 {
                        format!("; {more} more")
                    } else {
                        String::new()
                    }
                ),
            )
        })
        .collect()
}

/// Sessions of one (client address, user, application).
struct ClientGroup<'a> {
    addr: Option<&'a str>,
    user: Option<&'a str>,
    app: Option<&'a str>,
    counts: StateCounts,
    oldest_idle: f64,
    /// Idle sessions not used for longer than `dbconn_guard.idle_warning_age` (see
    /// [`OVERSIZED_IDLE_SHARE`]).
    unused: u32,
    first: &'a Backend,
    /// An idle session of the group last ran `DISCARD ALL`: pgbouncer's reset query, which a
    /// session pool runs when a client leaves (its idle server connections show it).
    reset_query_seen: bool,
}

impl ClientGroup<'_> {
    fn describe(&self) -> String {
        format!(
            "{} sessions from {} (user {}, application {}): {} idle, {} active, {} idle in transaction",
            self.counts.total(),
            quoted_or(self.addr, "local"),
            quoted_or(self.user, "-"),
            quoted_or(self.app, "-"),
            self.counts.idle,
            self.counts.active,
            self.counts.idle_in_transaction + self.counts.idle_in_transaction_aborted
        )
    }

    fn mostly_idle_pool(&self) -> bool {
        let n = self.counts.total();
        n >= OVERSIZED_MIN_SESSIONS
            && f64::from(self.counts.idle) >= OVERSIZED_IDLE_SHARE * f64::from(n)
    }
}

fn client_groups<'a>(c: &Ctx<'a>) -> Vec<ClientGroup<'a>> {
    type K<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);
    let mut map: BTreeMap<K<'a>, ClientGroup<'a>> = BTreeMap::new();
    for &b in &c.clients {
        let k = (
            b.client_addr.as_deref(),
            b.usename.as_deref(),
            b.application_name.as_deref(),
        );
        let g = map.entry(k).or_insert_with(|| ClientGroup {
            addr: k.0,
            user: k.1,
            app: k.2,
            counts: StateCounts::default(),
            oldest_idle: 0.0,
            unused: 0,
            first: b,
            reset_query_seen: false,
        });
        g.counts.count(b.state);
        if b.has_state(IDLE) {
            g.oldest_idle = g.oldest_idle.max(b.state_age(c.now));
            if b.state_age(c.now) > c.unused_after() {
                g.unused += 1;
            }
            g.reset_query_seen |= b
                .query
                .as_deref()
                .is_some_and(|q| q.trim().eq_ignore_ascii_case(POOLER_RESET_QUERY));
        }
    }
    let mut groups: Vec<ClientGroup<'a>> = map.into_values().collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.counts.total()));
    groups
}

/// What pgbouncer runs on a server connection when a session-pool client leaves it
/// (`server_reset_query`'s default): its idle server connections show it as their last query.
pub const POOLER_RESET_QUERY: &str = "DISCARD ALL";

fn is_pooler_name(app: Option<&str>) -> bool {
    app.is_some_and(|a| {
        let a = a.to_ascii_lowercase();
        POOLER_NAMES.iter().any(|p| a.contains(p))
    })
}

/// The most sessions of `user` and `application` busy at once (active or idle in transaction)
/// in the samples of the window, summed over databases; `None` when no sample shows the group
/// (the history keeps the largest groups only).
fn peak_busy_in_history(c: &Ctx, user: Option<&str>, app: Option<&str>) -> Option<u32> {
    c.samples
        .iter()
        .filter_map(|s| {
            let mine: Vec<&history::GroupSample> = s
                .groups
                .iter()
                .filter(|g| {
                    !g.other
                        && g.name.usename.as_deref() == user
                        && g.name.application_name.as_deref() == app
                })
                .collect();
            (!mine.is_empty()).then(|| {
                mine.iter()
                    .map(|g| {
                        g.counts.active
                            + g.counts.idle_in_transaction
                            + g.counts.idle_in_transaction_aborted
                    })
                    .sum::<u32>()
            })
        })
        .max()
}

/// "Pool larger than its work": one client holding many sessions, most of them unused for a
/// minute or more now, whose busiest moment over the window (now and in the history) needs at
/// most half of them. A pool that takes each of its connections within seconds is not flagged
/// however idle it looks at one instant.
fn oversized_pool(c: &Ctx) -> Vec<Finding> {
    let t = &c.i.guard.thresholds;
    let big: Vec<(ClientGroup, u32, Option<u32>)> = client_groups(c)
        .into_iter()
        .filter(|g| {
            let n = g.counts.total();
            n >= OVERSIZED_MIN_SESSIONS
                && f64::from(g.unused) >= OVERSIZED_IDLE_SHARE * f64::from(n)
                && !is_pooler_name(g.app)
                && !g.reset_query_seen
        })
        .filter_map(|g| {
            let now = g.counts.active
                + g.counts.idle_in_transaction
                + g.counts.idle_in_transaction_aborted;
            // the history counts (user, application) over every client address: this
            // address's part of it, by its share of those sessions now
            let all_now = c
                .clients
                .iter()
                .filter(|b| {
                    b.usename.as_deref() == g.user && b.application_name.as_deref() == g.app
                })
                .count()
                .max(1) as f64;
            let share = f64::from(g.counts.total()) / all_now;
            let past = peak_busy_in_history(c, g.user, g.app)
                .map(|p| (f64::from(p) * share).ceil() as u32);
            let peak = now.max(past.unwrap_or(0));
            ((peak + OVERSIZED_HEADROOM) * 2 <= g.counts.total()).then_some((g, peak, past))
        })
        .collect();
    // a group the leaks row reports is that story, not a second one
    let (leaking, big): (Vec<_>, Vec<_>) = big
        .into_iter()
        .partition(|(g, _, _)| c.is_leak(g.addr, g.user, g.app));
    let mut big = big;
    if big.is_empty() && !leaking.is_empty() {
        let names: Vec<String> = leaking
            .iter()
            .map(|(g, _, _)| {
                format!(
                    "{} from {}",
                    quoted_or(g.app, "-"),
                    quoted_or(g.addr, "local")
                )
            })
            .collect();
        return vec![ok(
            "oversized pool",
            format!("The idle sessions of {} are a leak suspect: see leaks", names.join(", ")),
            "a pool larger than its work and a leak are one story here; the leaks row has it and its action",
        )];
    }
    if big.is_empty() {
        return vec![ok(
            "oversized pool",
            "No pool larger than its work",
            format!(
                "no client address holds {OVERSIZED_MIN_SESSIONS} or more sessions of one user and application with {:.0}% or more unused for longer than {} (dbconn_guard.idle_warning_age) and at most half of them busy at its busiest",
                OVERSIZED_IDLE_SHARE * 100.0,
                dur(c.unused_after())
            ),
        )];
    }
    big.sort_by_key(|(g, _, _)| std::cmp::Reverse(g.unused));
    big.iter()
        .take(TOP)
        .map(|(g, peak, past)| {
            let scope = IdleScope::group(g.app, g.user, g.addr, None);
            let busiest = match past {
                Some(_) => format!(
                    "at most {peak} busy at once now and over the last {} of samples",
                    dur(c.i.history.window as f64 / 1e6)
                ),
                None => format!("{peak} busy now (the history does not show this group)"),
            };
            flag(
                "oversized pool",
                Status::Warning,
                format!(
                    "Pool larger than its work: {} of {} sessions from {} (application {}) unused for more than {}",
                    g.unused,
                    g.counts.total(),
                    quoted_or(g.addr, "local"),
                    quoted_or(g.app, "-"),
                    dur(c.unused_after())
                ),
                format!(
                    "{}; oldest idle {}; {busiest}, so a pool of about {} would do (if this is a pooler, see the pooler row){}",
                    g.describe(),
                    dur(g.oldest_idle),
                    peak + OVERSIZED_HEADROOM,
                    end_idle_scope(c, &scope, t.idle_age)
                ),
                end_idle(c, &scope, t.idle_age),
            )
        })
        .collect()
}

/// Leak suspects, by idle age and by a growing idle count (computed here from the snapshot and
/// the history with `leaks::suspects_with_trend`, as the `leak_suspects` view does).
fn leak_suspects(c: &Ctx) -> Vec<Finding> {
    let g = &c.i.guard;
    let window = g.leak_trend_samples.max(2);
    let rows = c.leaks.clone();
    let trend_note = if c.i.history.enabled && c.samples.len() >= window {
        format!("idle counts over the last {window} samples")
    } else {
        "trend not checked: no history, or fewer samples than dbconn_guard.leak_trend_samples"
            .into()
    };
    if rows.is_empty() {
        return vec![ok(
            "leaks",
            "No connection leak suspects",
            format!(
                "no client holds {LEAK_MIN_SESSIONS} or more sessions idle longer than {} (dbconn_guard.leak_idle_age), and no client's idle count keeps growing; {trend_note}",
                dur(g.leak_idle_age)
            ),
        )];
    }
    let mut rows = rows;
    rows.sort_by(|a, b| {
        b.group
            .connection_count
            .cmp(&a.group.connection_count)
            .then(b.group.max_age_seconds.total_cmp(&a.group.max_age_seconds))
    });
    let more = rows.len().saturating_sub(TOP);
    rows.iter()
        .take(TOP)
        .enumerate()
        .map(|(i, r)| {
            let k = &r.group.key;
            let who = format!(
                "application {} (user {}, client {}, database {})",
                quoted_or(k.application_name.as_deref(), "-"),
                quoted_or(k.usename.as_deref(), "-"),
                quoted_or(k.client_addr.as_deref(), "local"),
                quoted_or(k.datname.as_deref(), "-")
            );
            let series = history::idle_series(&c.samples, &leaks::history_name(k), window);
            let trend = if series.len() >= 2 {
                format!(
                    "trend {} ({})",
                    r.trend.as_str(),
                    series
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                format!("trend {}", r.trend.as_str())
            };
            let more = if i + 1 == TOP && more > 0 {
                format!("; {more} more in dbconn_guard.leak_suspects")
            } else {
                String::new()
            };
            let (finding, older_than) = if r.reason == "growing" {
                (
                    format!(
                        "Connection leak suspect: idle sessions of {} keep growing",
                        quoted_or(k.application_name.as_deref(), "-")
                    ),
                    g.thresholds.idle_age,
                )
            } else {
                (
                    format!(
                        "Connection leak suspect: application {} holds {} idle for up to {} ({:.0}% of the slots)",
                        quoted_or(k.application_name.as_deref(), "-"),
                        sessions(r.group.connection_count),
                        dur(r.group.max_age_seconds),
                        100.0 * r.group.connection_count as f64
                            / f64::from(c.i.limits.max_connections.max(1))
                    ),
                    g.leak_idle_age,
                )
            };
            // the leaking group only: its application, user, client and database
            let scope = IdleScope::group(
                k.application_name.as_deref(),
                k.usename.as_deref(),
                k.client_addr.as_deref(),
                k.datname.as_deref(),
            );
            flag(
                "leaks",
                Status::Warning,
                finding,
                format!(
                    "{} idle sessions of {who}, oldest idle {}; {trend}{more}{}",
                    r.group.connection_count,
                    dur(r.group.max_age_seconds),
                    end_idle_scope(c, &scope, older_than)
                ),
                end_idle(c, &scope, older_than),
            )
        })
        .collect()
}

/// A timeout that will end an idle-in-transaction session.
struct Cover {
    rule: String,
    timeout: Micros,
    deadline: Micros,
    by_guard: bool,
}

/// The timeout `overrides` give `b` (the first item that matches), or `global`.
fn effective(b: &Backend, global: Micros, overrides: &Overrides) -> (Micros, bool) {
    match overrides.timeout_for(b) {
        Some(t) => (t, true),
        None => (global, false),
    }
}

/// Every timeout that ends `b` (idle in transaction), earliest first.
fn covers(c: &Ctx, b: &Backend) -> Vec<Cover> {
    let p: &Policy = &c.i.guard.policy;
    let mut out = Vec::new();
    let mut push = |rule: String, timeout: Micros, since: Option<Micros>, by_guard: bool| {
        if let (true, Some(s)) = (timeout > 0, since) {
            out.push(Cover {
                rule,
                timeout,
                deadline: s.saturating_add(timeout),
                by_guard,
            });
        }
    };
    if c.guard_ending && p.scope.protection(b, c.i.caller.pid).is_none() {
        let (t, o) = effective(
            b,
            p.idle_in_transaction_timeout,
            &p.idle_in_transaction_timeout_overrides,
        );
        let name = if o {
            "dbconn_guard.idle_in_transaction_timeout_overrides"
        } else {
            "dbconn_guard.idle_in_transaction_timeout"
        };
        push(name.into(), t, b.state_change, true);
        let (t, o) = effective(b, p.transaction_timeout, &p.transaction_timeout_overrides);
        let name = if o {
            "dbconn_guard.transaction_timeout_overrides"
        } else {
            "dbconn_guard.transaction_timeout"
        };
        push(name.into(), t, b.xact_start, true);
    }
    let s = &c.i.server;
    if let Some(t) = s.idle_in_transaction_session_timeout {
        push(
            "PostgreSQL's idle_in_transaction_session_timeout".into(),
            t,
            b.state_change,
            false,
        );
    }
    if let Some(t) = s.transaction_timeout {
        push(
            "PostgreSQL's transaction_timeout".into(),
            t,
            b.xact_start,
            false,
        );
    }
    out.sort_by_key(|cv| cv.deadline);
    out
}

fn idle_in_transaction(c: &Ctx) -> Vec<Finding> {
    // never younger than a healthy client's pause between two statements
    let age =
        c.i.guard
            .thresholds
            .idle_in_transaction_age
            .max(TRANSIENT_SECS);
    let mut old: Vec<&Backend> = c
        .clients
        .iter()
        .copied()
        .filter(|b| {
            (b.has_state(IDLE_IN_TRANSACTION) || b.has_state(IDLE_IN_TRANSACTION_ABORTED))
                && b.state_age(c.now) > age
        })
        .collect();
    if old.is_empty() {
        return vec![ok(
            "idle in transaction",
            format!("No session idle in transaction for more than {}", dur(age)),
            "dbconn_guard.idle_in_transaction_warning_age decides what counts",
        )];
    }
    // harm first: a session that holds others up before older ones that hold up nobody
    old.sort_by(|a, b| {
        c.holds_up(b.pid)
            .cmp(&c.holds_up(a.pid))
            .then(b.state_age(c.now).total_cmp(&a.state_age(c.now)))
            .then(a.pid.cmp(&b.pid))
    });
    let total = old.len();
    old.iter()
        .take(TOP)
        .enumerate()
        .map(|(i, b)| {
            let mut ev = format!(
                "{} for {} (user {}, application {}, client {}); transaction open {}; last statement {}",
                b.state.unwrap_or("?"),
                dur(b.state_age(c.now)),
                quoted_or(b.usename.as_deref(), "-"),
                quoted_or(b.application_name.as_deref(), "-"),
                quoted_or(b.client_addr.as_deref(), "local"),
                b.xact_age(c.now).map_or_else(|| "?".into(), dur),
                query_text(b)
            );
            let held = c.holds_up(b.pid);
            if held > 0 {
                let _ = write!(ev, "; holds up {}", sessions(held));
            }
            if i == 0 && total > TOP {
                let _ = write!(ev, "; {} sessions in all", total);
            }
            let finding = format!(
                "pid {} idle in transaction for {}",
                b.pid,
                dur(b.state_age(c.now))
            );
            let terminate = format!("SELECT pg_terminate_backend({});", b.pid);
            // who may run it, when this role may not
            if let Some(note) = c.i.caller.signal_note(Some(b)) {
                let _ = write!(ev, "; {note}");
            }
            let cv = covers(c, b);
            if let Some(first) = cv.first() {
                let overdue = first.deadline < c.now.saturating_sub(OVERDUE_SLACK);
                let rule = format!("{} ({})", first.rule, dur(first.timeout as f64 / 1e6));
                let _ = if first.deadline <= c.now {
                    write!(
                        ev,
                        "; {rule} was due to end it {} ago",
                        dur(secs_between(c.now, first.deadline))
                    )
                } else {
                    write!(
                        ev,
                        "; {rule} ends it in {}",
                        dur(secs_between(first.deadline, c.now))
                    )
                };
                let (status, finding) = if overdue && first.by_guard {
                    (
                        Status::Warning,
                        format!("{finding}, past the guard's deadline: is the worker keeping up?"),
                    )
                } else {
                    (Status::Info, format!("{finding}; a timeout will end it"))
                };
                return flag("idle in transaction", status, finding, ev, terminate);
            }
            let p = &c.i.guard.policy;
            let protection = p.scope.protection(b, c.i.caller.pid);
            let never = p.idle_in_transaction_timeout_overrides.timeout_for(b) == Some(0);
            let action = if let Some(pr) = protection {
                let _ = write!(ev, "; the guard never ends it: {}", pr.as_str());
                terminate
            } else if never {
                ev.push_str("; dbconn_guard.idle_in_transaction_timeout_overrides gives it 0 (never)");
                terminate
            } else if c.guard_ending {
                ev.push_str("; no timeout ends it: the guard's idle_in_transaction_timeout and transaction_timeout are off, and PostgreSQL's too");
                enable_iit_action()
            } else {
                ev.push_str("; no timeout ends it, and the guard is not ending sessions (see the guard row)");
                terminate
            };
            flag(
                "idle in transaction",
                Status::Warning,
                format!("{finding}; nothing will end it"),
                ev,
                action,
            )
        })
        .collect()
}

fn enable_iit_action() -> String {
    format!(
        "ALTER SYSTEM SET dbconn_guard.idle_in_transaction_timeout = '{RECOMMENDED_IIT_TIMEOUT}'; SELECT pg_reload_conf();"
    )
}

fn slow_queries(c: &Ctx) -> Vec<Finding> {
    let limit = c.i.guard.slow_query_age;
    if limit <= 0.0 {
        return vec![flag(
            "slow queries",
            Status::Info,
            "Slow queries not checked: the threshold is 0",
            "a threshold of 0 or less turns this check off",
            "SELECT pid, now() - query_start AS running, query FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() ORDER BY query_start LIMIT 10;",
        )];
    }
    let running = |b: &Backend| age_seconds(c.now, b.query_start).unwrap_or(0.0);
    let mut slow: Vec<&Backend> = c
        .clients
        .iter()
        .copied()
        .filter(|b| b.has_state("active") && b.pid != c.i.caller.pid && running(b) > limit)
        .collect();
    if slow.is_empty() {
        return vec![ok(
            "slow queries",
            format!("No statement running longer than {}", dur(limit)),
            format!(
                "{} active client sessions, none past {}",
                c.util.active,
                dur(limit)
            ),
        )];
    }
    slow.sort_by(|a, b| running(b).total_cmp(&running(a)).then(a.pid.cmp(&b.pid)));
    let total = slow.len();
    slow.iter()
        .take(TOP)
        .enumerate()
        .map(|(i, b)| {
            let waiting = c.i.lock_waits.iter().any(|w| w.pid == b.pid);
            flag(
                "slow queries",
                Status::Warning,
                format!(
                    "Slow query: pid {} of application {} running for {}",
                    b.pid,
                    quoted_or(b.application_name.as_deref(), "-"),
                    dur(running(b))
                ),
                format!(
                    "user {}, application {}, client {}{}; {}{}",
                    quoted_or(b.usename.as_deref(), "-"),
                    quoted_or(b.application_name.as_deref(), "-"),
                    quoted_or(b.client_addr.as_deref(), "local"),
                    if waiting { ", waiting for a lock" } else { "" },
                    query_text(b),
                    if i == 0 && total > TOP {
                        format!("; {total} statements past {} in all", dur(limit))
                    } else {
                        String::new()
                    }
                ),
                format!("SELECT pg_cancel_backend({});", b.pid),
            )
        })
        .map(|mut f| {
            let pid = f.action.as_deref().and_then(|a| {
                a.strip_prefix("SELECT pg_cancel_backend(")
                    .and_then(|r| r.strip_suffix(");"))
                    .and_then(|p| p.parse::<i32>().ok())
            });
            let b = pid.and_then(|p| c.clients.iter().copied().find(|b| b.pid == p));
            if let Some(note) = c.i.caller.signal_note(b) {
                let _ = write!(f.evidence, "; {note}");
            }
            f
        })
        .collect()
}

/// Lock pile-ups from the blocking chains: the root, how many it holds up, what to end.
fn lock_pileups(c: &Ctx) -> Vec<Finding> {
    if c.chains.is_empty() {
        return vec![ok(
            "locks",
            "No lock pile-up",
            format!("{} sessions waiting for a lock", c.i.lock_waits.len()),
        )];
    }
    let t = &c.i.guard.thresholds;
    let index = c.i.snapshot.index();
    let wait_of = |pid: i32| -> f64 {
        let since =
            c.i.lock_waits
                .iter()
                .find(|w| w.pid == pid)
                .and_then(|w| w.wait_start)
                .or_else(|| index.get(&pid).and_then(|b| b.state_change));
        age_seconds(c.now, since).unwrap_or(0.0)
    };
    let mut roots: Vec<(i32, i64)> = Vec::new();
    for ch in &c.chains {
        if let Some(r) = ch.root_pid {
            if !roots.iter().any(|(p, _)| *p == r) {
                roots.push((r, ch.root_blocked_count));
            }
        }
    }
    // a root whose waiters have waited only a moment, or that has been idle only a moment, is
    // ordinary contention: nothing to end or cancel
    let longest_of = |root: i32| {
        c.chains
            .iter()
            .filter(|ch| ch.root_pid == Some(root))
            .map(|ch| wait_of(ch.pid))
            .fold(0.0, f64::max)
    };
    // (a root between two statements of a long transaction is idle for a moment only: its
    // transaction's age, not its state's, tells ordinary contention from a long hold)
    let transient = |root: i32| {
        longest_of(root) < TRANSIENT_SECS
            || index.get(&root).is_some_and(|b| {
                !b.is_hidden()
                    && matches!(
                        b.state,
                        Some(IDLE) | Some(IDLE_IN_TRANSACTION) | Some(IDLE_IN_TRANSACTION_ABORTED)
                    )
                    && b.xact_age(c.now).unwrap_or(f64::MAX) < TRANSIENT_SECS
            })
    };
    type Roots = Vec<(i32, i64)>;
    let (brief, lasting): (Roots, Roots) = roots.into_iter().partition(|&(r, _)| transient(r));
    if lasting.is_empty() && !brief.is_empty() {
        let waiting: i64 = brief.iter().map(|&(_, n)| n).sum();
        return vec![ok(
            "locks",
            format!("Only brief lock waits: none has lasted {}", dur(TRANSIENT_SECS)),
            format!(
                "{} waiting behind {} (pids {}), each for less than {} or behind a session idle for less than that: ordinary contention",
                sessions(waiting),
                if brief.len() == 1 { "one session".to_string() } else { format!("{} sessions", brief.len()) },
                pid_list(&brief.iter().map(|&(r, _)| r).collect::<Vec<_>>()),
                dur(TRANSIENT_SECS)
            ),
        )];
    }
    let roots = lasting;
    let mut out: Vec<Finding> = roots
        .iter()
        .take(TOP)
        .map(|&(root, count)| {
            let mine: Vec<&Chain> = c
                .chains
                .iter()
                .filter(|ch| ch.root_pid == Some(root))
                .collect();
            let direct: Vec<i32> = mine
                .iter()
                .filter(|ch| ch.depth == Some(1))
                .map(|ch| ch.pid)
                .collect();
            let longest = mine.iter().map(|ch| wait_of(ch.pid)).fold(0.0, f64::max);
            let on = direct
                .first()
                .and_then(|p| c.i.lock_waits.iter().find(|w| w.pid == *p))
                .map(|w| {
                    format!(
                        "; waiting for {} on {} {}",
                        w.mode.as_deref().unwrap_or("a lock"),
                        w.locktype.as_deref().unwrap_or("object"),
                        quoted_or(w.relation.as_deref(), "")
                    )
                })
                .unwrap_or_default();
            let b = index.get(&root).copied();
            let state = b.and_then(|b| b.state);
            let who = match b {
                Some(b) if !b.is_hidden() => format!(
                    "{} for {}, user {}, application {}",
                    state.unwrap_or("state unknown"),
                    dur(b.state_age(c.now)),
                    quoted_or(b.usename.as_deref(), "-"),
                    quoted_or(b.application_name.as_deref(), "-")
                ),
                Some(_) => "details hidden from this role".into(),
                None => "not in pg_stat_activity".into(),
            };
            let idle = matches!(
                state,
                Some(IDLE) | Some(IDLE_IN_TRANSACTION) | Some(IDLE_IN_TRANSACTION_ABORTED)
            );
            let hidden = b.is_none_or(|b| b.is_hidden());
            let (verb, action) = if hidden {
                // a cancel does nothing to a session idle in its transaction, and its state
                // is not known here: look first, as a role that may see it
                (
                    "its state is hidden from this role: look at it before acting".to_string(),
                    format!(
                        "SELECT pid, usename, application_name, state, now() - state_change AS in_state, query FROM pg_stat_activity WHERE pid = {root};  -- as a member of pg_read_all_stats: cancel it if active, end it if idle"
                    ),
                )
            } else if idle {
                ("end it: it runs nothing".to_string(), format!("SELECT pg_terminate_backend({root});"))
            } else {
                ("cancel its statement".to_string(), format!("SELECT pg_cancel_backend({root});"))
            };
            let who = match (hidden, b.and_then(|b| c.i.caller.signal_note(Some(b)))) {
                (false, Some(note)) => format!("{who}; {note}"),
                _ => who,
            };
            let status = if longest > t.lock_wait_critical && t.lock_wait_critical > 0.0 {
                Status::Critical
            } else if longest > t.lock_wait_warning {
                Status::Warning
            } else {
                Status::Info
            };
            flag(
                "locks",
                status,
                format!("Lock pile-up: pid {root} holds up {}; {verb}", sessions(count)),
                format!(
                    "root pid {root} ({who}) blocks {} directly, {count} in all; longest wait {}{on}",
                    direct.len(),
                    dur(longest)
                ),
                action,
            )
        })
        .collect();
    let cycle: Vec<i32> = c
        .chains
        .iter()
        .filter(|ch| ch.root_pid.is_none())
        .map(|ch| ch.pid)
        .collect();
    let cycle_wait = cycle.iter().map(|&p| wait_of(p)).fold(0.0, f64::max);
    if let (Some(&first), true) = (cycle.iter().min(), cycle_wait >= TRANSIENT_SECS) {
        out.push(flag(
            "locks",
            Status::Info,
            format!(
                "{} sessions wait on each other in a lock cycle",
                cycle.len()
            ),
            format!(
                "pids {}; PostgreSQL's deadlock detector ends one of them after deadlock_timeout",
                pid_list(&cycle)
            ),
            format!("SELECT pg_cancel_backend({first});"),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Error pattern?
// ---------------------------------------------------------------------------------------------

/// How the number of client backends moved over the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Level: the runbook's "configuration issue" (when that level is high).
    Constant,
    /// Spikes well above the usual level: "resource contention".
    Intermittent,
    /// A steady rise: "leak or attack".
    Increasing,
    /// A lasting change of level (a scale-out, a deployment, a pool resized): the samples
    /// from this index on sit at another level, each level flat.
    Step(usize),
}

/// Samples on each side of a step, at least.
pub const STEP_MIN_SIDE: usize = 3;

/// Sum of squared deviations from the mean.
fn sse_flat(v: &[f64]) -> f64 {
    let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
    v.iter().map(|y| (y - m) * (y - m)).sum()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Where `series` steps from one flat level to another, if it does: the split into two flat
/// levels (at least [`STEP_MIN_SIDE`] samples each) that fits best, when it fits at least
/// twice as well as a straight line (residual sum of squares) and the levels differ by at
/// least 3 sessions and 20% of the mean. A steady rise fits a line better; a step fits two
/// levels.
fn step_at(series: &[f64]) -> Option<usize> {
    let n = series.len();
    if n < 2 * STEP_MIN_SIDE {
        return None;
    }
    let nf = n as f64;
    let mean_t = (nf - 1.0) / 2.0;
    let m = mean(series);
    let (mut cov, mut var_t, mut var_y) = (0.0, 0.0, 0.0);
    for (i, y) in series.iter().enumerate() {
        let dt = i as f64 - mean_t;
        cov += dt * (y - m);
        var_t += dt * dt;
        var_y += (y - m) * (y - m);
    }
    let sse_line = var_y - cov * cov / var_t;
    let (sse, k) = (STEP_MIN_SIDE..=n - STEP_MIN_SIDE)
        .map(|k| (sse_flat(&series[..k]) + sse_flat(&series[k..]), k))
        .min_by(|a, b| a.0.total_cmp(&b.0))?;
    let jump = (mean(&series[k..]) - mean(&series[..k])).abs();
    // each level flat: a ramp (a leak that began within the window) rises inside a level
    let flat = |v: &[f64]| fitted_rise(v).abs() < 0.25 * jump;
    (jump >= 3.0_f64.max(0.2 * m)
        && sse <= 0.5 * sse_line
        && flat(&series[..k])
        && flat(&series[k..]))
    .then_some(k)
}

/// How much the least-squares line through `v` rises from its first sample to its last.
fn fitted_rise(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    if v.len() < 2 {
        return 0.0;
    }
    let mean_t = (n - 1.0) / 2.0;
    let m = mean(v);
    let (mut cov, mut var_t) = (0.0, 0.0);
    for (i, y) in v.iter().enumerate() {
        let dt = i as f64 - mean_t;
        cov += dt * (y - m);
        var_t += dt * dt;
    }
    cov / var_t * (n - 1.0)
}

/// The pattern of `series` (oldest first); `None` with fewer than [`MIN_HISTORY_SAMPLES`].
///
/// Step: two flat levels fit far better than a line (see `step_at`). Increasing: otherwise,
/// the counts correlate with time (Pearson r >= 0.7) and the fitted line rises by at least 3
/// sessions and 20% of the mean. Intermittent: otherwise, a peak at least 5
/// sessions and 50% above the median. Constant: neither.
pub fn classify(series: &[f64]) -> Option<Pattern> {
    let n = series.len();
    if n < MIN_HISTORY_SAMPLES {
        return None;
    }
    let nf = n as f64;
    let mean_t = (nf - 1.0) / 2.0;
    let mean = series.iter().sum::<f64>() / nf;
    let (mut cov, mut var_t, mut var_y) = (0.0, 0.0, 0.0);
    for (i, y) in series.iter().enumerate() {
        let dt = i as f64 - mean_t;
        let dy = y - mean;
        cov += dt * dy;
        var_t += dt * dt;
        var_y += dy * dy;
    }
    if let Some(k) = step_at(series) {
        return Some(Pattern::Step(k));
    }
    if var_y > 0.0 {
        let r = cov / (var_t * var_y).sqrt();
        let rise = cov / var_t * (nf - 1.0);
        if r >= 0.7 && rise >= 3.0_f64.max(0.2 * mean) {
            return Some(Pattern::Increasing);
        }
    }
    let mut sorted = series.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[n / 2];
    let max = sorted[n - 1];
    if max - median >= 5.0_f64.max(0.5 * median) {
        return Some(Pattern::Intermittent);
    }
    Some(Pattern::Constant)
}

fn error_pattern(c: &Ctx) -> Vec<Finding> {
    if let Some(why) = c.history_missing() {
        return vec![flag(
            "error pattern",
            Status::Info,
            "Error pattern not checked: not enough history",
            why,
            c.history_action(),
        )];
    }
    let series: Vec<f64> = c
        .samples
        .iter()
        .map(|s| f64::from(s.clients.total()))
        .collect();
    let Some(pattern) = classify(&series) else {
        return vec![];
    };
    let mut sorted = series.clone();
    sorted.sort_by(f64::total_cmp);
    let (min, median, max) = (
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
    );
    let peak_pct = c
        .samples
        .iter()
        .map(|s| s.utilization_pct)
        .fold(0.0, f64::max);
    let warn_pct = c.i.guard.thresholds.warning_pct;
    let evidence = format!(
        "{} samples over {}: client backends min {min:.0}, median {median:.0}, max {max:.0}, first {:.0}, last {:.0}; peak utilization {peak_pct:.1}%",
        series.len(),
        dur(secs_between(c.samples[c.samples.len() - 1].time, c.samples[0].time)),
        series[0],
        series[series.len() - 1],
    );
    let high = peak_pct >= warn_pct;
    match pattern {
        Pattern::Step(k) => {
            let (before, after) = (&series[..k], &series[k..]);
            let (from, to) = (mean(before).round(), mean(after).round());
            let at = c.samples[k].time;
            let ago = secs_between(c.now, at);
            let up = to > from;
            let t = &c.i.guard.thresholds;
            let at_limit = peak_pct >= t.critical_pct || c.util.available_connections == 0;
            if up && at_limit {
                // a level that is the limit tells no scale-out from a fast leak
                return vec![flag(
                    "error pattern",
                    Status::Warning,
                    format!(
                        "Client connections stepped up from {from:.0} to {to:.0} at {} ({} ago) and sit at the limit: a fast leak, or more clients than the server can take (see the pool and leaks rows)",
                        clock(at),
                        dur(secs_between(c.now, at))
                    ),
                    evidence,
                    "SELECT * FROM dbconn_guard.leak_suspects;",
                )];
            }
            let finding = format!(
                "Client connections stepped {} from {from:.0} to {to:.0} at {} ({} ago) and stayed there: a change of level (a scale-out, a deployment, a pool resized), not a leak",
                if up { "up" } else { "down" },
                clock(at),
                dur(ago)
            );
            // who stepped: the groups around the step
            let action = format!(
                "SELECT time, datname, usename, application_name, connections, active, idle FROM dbconn_guard.history_by_group_between(now() - interval '{} seconds', now() - interval '{} seconds') ORDER BY time, connections DESC;",
                (ago + 60.0).ceil() as i64,
                (ago - 60.0).max(0.0).floor() as i64
            );
            if up && high {
                vec![flag("error pattern", Status::Warning, finding, evidence, action)]
            } else if up {
                vec![flag("error pattern", Status::Info, finding, evidence, action)]
            } else {
                vec![ok("error pattern", finding, evidence)]
            }
        }
        Pattern::Increasing => vec![flag(
            "error pattern",
            Status::Warning,
            "Client connections are increasing: the runbook reads this as a leak or an attack",
            evidence,
            "SELECT * FROM dbconn_guard.leak_suspects;",
        )],
        Pattern::Intermittent => vec![flag(
            "error pattern",
            if high { Status::Warning } else { Status::Info },
            "Client connections come in spikes: the runbook reads this as resource contention",
            evidence,
            format!(
                "SELECT time, client_backends, active, idle, lock_waiters FROM dbconn_guard.history WHERE time > now() - interval '{} seconds' AND client_backends >= {} ORDER BY time;",
                c.i.history.window / SECOND,
                ((median + max) / 2.0).ceil() as i64
            ),
        )],
        Pattern::Constant if high => vec![flag(
            "error pattern",
            Status::Warning,
            "Client connections are constantly high: the runbook reads this as a configuration issue (the pools ask for about as many connections as the server has)",
            evidence,
            format!(
                "ALTER SYSTEM SET max_connections = {};  -- takes effect after a restart; or put pgbouncer in front (see the pgbouncer row)",
                round_up_10((max / (warn_pct / 100.0).max(0.01)).ceil() as i64 + i64::from(reserved(&c.i.limits)))
            ),
        )],
        Pattern::Constant => vec![ok(
            "error pattern",
            "Client connections are steady, below the warning level",
            evidence,
        )],
    }
}

// ---------------------------------------------------------------------------------------------
// Recent changes?
// ---------------------------------------------------------------------------------------------

const REVIEW_SETTINGS: &str = "SELECT name, setting, source, sourcefile, pending_restart FROM pg_settings WHERE source NOT IN ('default', 'override', 'client', 'session') OR pending_restart ORDER BY name;";

/// A configuration reload or a server start within the window: "review settings".
fn config_changes(c: &Ctx) -> Vec<Finding> {
    let s = &c.i.server;
    let start = c.window_start();
    let window = dur(c.i.history.window as f64 / 1e6);
    // a reload after a start within the window names what it changed: the newer story
    let reloaded_since_start = s.setting_changes.as_ref().is_some_and(|all| {
        all.iter()
            .any(|ch| ch.at >= start && s.postmaster_start.is_none_or(|p| ch.at >= p))
    });
    if let Some(t) = s
        .postmaster_start
        .filter(|&t| t >= start && !reloaded_since_start)
    {
        return vec![flag(
            "recent changes",
            Status::Info,
            format!(
                "The server started {} ago: review settings",
                dur(secs_between(c.now, t))
            ),
            format!("pg_postmaster_start_time() is within the last {window}; history and counters from before the start are gone"),
            REVIEW_SETTINGS,
        )];
    }
    match s.conf_load_time {
        None => vec![flag(
            "recent changes",
            Status::Info,
            "Configuration reloads not checked: pg_conf_load_time() was not read",
            "no configuration load time",
            "SELECT pg_conf_load_time(), pg_postmaster_start_time();",
        )],
        Some(t) if t >= start => match &s.setting_changes {
            Some(all) => {
                let recent: Vec<&TimedChange> = all
                    .iter()
                    .filter(|ch| ch.at >= start.max(s.postmaster_start.unwrap_or(0)))
                    .collect();
                let Some(last) = recent.last() else {
                    if s.settings_compared_reload < t {
                        // the worker did not compare this reload: it was away, or could not
                        // read the settings
                        return vec![flag(
                            "recent changes",
                            Status::Info,
                            format!(
                                "The configuration was reloaded {} ago: review settings",
                                dur(secs_between(c.now, t))
                            ),
                            format!("pg_conf_load_time() is within the last {window}; the worker did not compare the settings across this reload (it was not running, has not processed it yet, or could not read them)"),
                            REVIEW_SETTINGS,
                        )];
                    }
                    return vec![ok(
                        "recent changes",
                        format!(
                            "The configuration was reloaded {} ago and changed no setting",
                            dur(secs_between(c.now, t))
                        ),
                        format!("pg_conf_load_time() is within the last {window}; the worker saw no setting change in it"),
                    )];
                };
                // the latest reload's changes, then the window's others
                let at = last.at;
                let latest: Vec<&&TimedChange> = recent.iter().filter(|ch| ch.at == at).collect();
                let named: Vec<String> = latest
                    .iter()
                    .take(TOP)
                    .map(|ch| format!("{} {} → {}", ch.change.name, ch.change.old, ch.change.new))
                    .collect();
                let more = latest.len().saturating_sub(TOP);
                let earlier = recent.len() - latest.len();
                vec![flag(
                    "recent changes",
                    Status::Info,
                    format!(
                        "A reload changed {} at {} ({} ago): {}{}",
                        if latest.len() == 1 { "a setting".to_string() } else { format!("{} settings", latest.len()) },
                        clock(at),
                        dur(secs_between(c.now, at)),
                        named.join(", "),
                        if more > 0 { format!(" and {more} more") } else { String::new() }
                    ),
                    format!(
                        "{} setting change(s) in the last {window}{}",
                        recent.len(),
                        if earlier > 0 { format!(", {earlier} of them by earlier reloads") } else { String::new() }
                    ),
                    format!(
                        "SELECT * FROM dbconn_guard.setting_changes() WHERE changed_at > now() - interval '{} seconds';",
                        c.i.history.window / SECOND
                    ),
                )]
            }
            None => vec![flag(
                "recent changes",
                Status::Info,
                format!(
                    "The configuration was reloaded {} ago: review settings",
                    dur(secs_between(c.now, t))
                ),
                format!("pg_conf_load_time() is within the last {window}; which settings changed is shown to members of pg_read_all_settings (dbconn_guard.setting_changes()), with the library preloaded"),
                REVIEW_SETTINGS,
            )],
        },
        Some(t) => vec![ok(
            "recent changes",
            format!("No configuration reload or restart in the last {window}"),
            format!(
                "last reload {} ago{}",
                dur(secs_between(c.now, t)),
                s.postmaster_start
                    .map(|p| format!(", up for {}", dur(secs_between(c.now, p))))
                    .unwrap_or_default()
            ),
        )],
    }
}

/// (datname, usename, application_name) groups of the newest sample that the oldest sample did
/// not have: "deployment". Only when the oldest sample has no remainder row (a name summed in
/// the remainder is not known to be absent).
fn new_applications(c: &Ctx) -> Vec<Finding> {
    const MANUAL: &str = "SELECT application_name, usename, count(*), min(backend_start) AS first_connected FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1, 2 ORDER BY 4 DESC LIMIT 10;";
    if c.history_missing().is_some() {
        return vec![flag(
            "deployment",
            Status::Info,
            "New applications not checked: not enough history",
            c.history_missing().unwrap_or_default(),
            MANUAL,
        )];
    }
    let (first, last) = (&c.samples[0], &c.samples[c.samples.len() - 1]);
    if first.groups.iter().any(|g| g.other && g.counts.total() > 0) {
        return vec![flag(
            "deployment",
            Status::Info,
            "New applications not checked: the oldest sample sums some groups in its remainder",
            "dbconn_guard.history_groups keeps only the largest groups of a sample",
            MANUAL,
        )];
    }
    let known: Vec<&GroupName> = first
        .groups
        .iter()
        .filter(|g| !g.other)
        .map(|g| &g.name)
        .collect();
    // the calling session's own group, when it is the only session in it (a DBA's psql)
    let own: Option<GroupName> =
        c.i.snapshot
            .backends
            .iter()
            .find(|b| b.pid == c.i.caller.pid)
            .map(|b| GroupName {
                datname: b.datname.as_deref().map(Into::into),
                usename: b.usename.as_deref().map(Into::into),
                application_name: b.application_name.as_deref().map(Into::into),
            });
    let fresh: Vec<&GroupName> = last
        .groups
        .iter()
        .filter(|g| !g.other && g.counts.total() > 0 && !known.contains(&&g.name))
        // no name is no application: nothing to tell a deployment by
        .filter(|g| {
            g.name
                .application_name
                .as_deref()
                .is_some_and(|a| !a.is_empty())
        })
        .filter(|g| !(own.as_ref() == Some(&g.name) && g.counts.total() <= 1))
        .map(|g| &g.name)
        .collect();
    let since = dur(secs_between(c.now, first.time));
    if fresh.is_empty() {
        return vec![ok(
            "deployment",
            format!("No new application in the last {since}"),
            format!(
                "every group of the newest sample was in the oldest ({} groups)",
                known.len()
            ),
        )];
    }
    let mut apps: Vec<&str> = fresh
        .iter()
        .map(|n| n.application_name.as_deref().unwrap_or(""))
        .collect();
    apps.dedup();
    let shown: Vec<String> = fresh
        .iter()
        .take(TOP)
        .map(|n| {
            format!(
                "application {} (user {}, database {})",
                quoted_or(n.application_name.as_deref(), "-"),
                quoted_or(n.usename.as_deref(), "-"),
                quoted_or(n.datname.as_deref(), "-")
            )
        })
        .collect();
    let list: Vec<String> = apps.iter().take(TOP).map(|a| sql_literal(a)).collect();
    vec![flag(
        "deployment",
        Status::Info,
        format!(
            "{} new application group(s) connected in the last {since}: a deployment? check its migrations",
            fresh.len()
        ),
        format!("in the newest sample, not the oldest: {}", shown.join("; ")),
        format!(
            "SELECT application_name, usename, client_addr, count(*), min(backend_start) AS first_connected FROM pg_stat_activity WHERE application_name = ANY (ARRAY[{}]) GROUP BY 1, 2, 3;",
            list.join(", ")
        ),
    )]
}

/// Client addresses whose every current session started within the window (new, or all
/// reconnected): history has no client addresses, so this reads `backend_start`.
fn new_clients(c: &Ctx) -> Vec<Finding> {
    let start = c.window_start();
    let window = dur(c.i.history.window as f64 / 1e6);
    const MANUAL: &str = "SELECT client_addr, count(*), min(backend_start) AS first_connected FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1 ORDER BY 3 DESC LIMIT 10;";
    match c.i.server.postmaster_start {
        Some(p) if p < start => {}
        Some(_) => {
            return vec![flag(
            "deployment",
            Status::Info,
            "New clients not checked: the server started within the window, so every client is new",
            format!("up for less than {window}"),
            MANUAL,
        )]
        }
        None => {
            return vec![flag(
                "deployment",
                Status::Info,
                "New clients not checked: the server's start time is unknown",
                "pg_postmaster_start_time() was not read",
                MANUAL,
            )]
        }
    }
    let mut by_addr: BTreeMap<Option<&str>, (Micros, u32)> = BTreeMap::new();
    for b in &c.clients {
        let Some(bs) = b.backend_start else { continue };
        let e = by_addr
            .entry(b.client_addr.as_deref())
            .or_insert((Micros::MAX, 0));
        e.0 = e.0.min(bs);
        e.1 += 1;
    }
    let mut fresh: Vec<(Option<&str>, Micros, u32)> = by_addr
        .into_iter()
        .filter(|(_, (first, _))| *first >= start)
        .map(|(a, (f, n))| (a, f, n))
        .collect();
    if fresh.is_empty() {
        return vec![ok(
            "deployment",
            format!("No new client address in the last {window}"),
            "every client address has a session older than the window",
        )];
    }
    fresh.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    let shown: Vec<String> = fresh
        .iter()
        .take(TOP)
        .map(|(a, f, n)| {
            format!(
                "{} ({n} sessions, first {} ago)",
                quoted_or(*a, "local"),
                dur(secs_between(c.now, *f))
            )
        })
        .collect();
    let addrs: Vec<String> = fresh
        .iter()
        .take(TOP)
        .filter_map(|(a, _, _)| a.map(sql_literal))
        .collect();
    let mut cond = Vec::new();
    if !addrs.is_empty() {
        cond.push(format!(
            "client_addr = ANY (ARRAY[{}]::inet[])",
            addrs.join(", ")
        ));
    }
    if fresh.iter().take(TOP).any(|(a, _, _)| a.is_none()) {
        cond.push("client_addr IS NULL".into());
    }
    vec![flag(
        "deployment",
        Status::Info,
        format!(
            "{} client address(es) connected only within the last {window}: a deployment, or clients that reconnected",
            fresh.len()
        ),
        format!(
            "all their sessions are younger than the window: {}",
            shown.join(", ")
        ),
        format!(
            "SELECT client_addr, application_name, usename, count(*), min(backend_start) AS first_connected FROM pg_stat_activity WHERE backend_type = 'client backend' AND ({}) GROUP BY 1, 2, 3;",
            cond.join(" OR ")
        ),
    )]
}

/// A burst of new backends: many `backend_start`s within [`STORM_SPAN`], or a jump in client
/// backends between two consecutive samples: "traffic spike".
fn connection_storm(c: &Ctx) -> Vec<Finding> {
    let threshold = c.storm_threshold();
    let since = c.now.saturating_sub(STORM_SPAN);
    let new_now = c
        .clients
        .iter()
        .filter(|b| b.backend_start.is_some_and(|t| t >= since))
        .count() as i64;
    // the largest rise between two samples: by how much, when, and which group rose most
    let jump = c
        .samples
        .windows(2)
        .map(|w| {
            (
                i64::from(w[1].clients.total()) - i64::from(w[0].clients.total()),
                w[1].time,
                w,
            )
        })
        .max_by_key(|(d, _, _)| *d);
    let mut evidence = format!(
        "{new_now} sessions started in the last {}s",
        STORM_SPAN / SECOND
    );
    match &jump {
        Some((d, t, _)) => {
            let _ = write!(
                evidence,
                "; largest rise between two samples +{} ({} ago)",
                (*d).max(0),
                dur(secs_between(c.now, *t))
            );
        }
        None => evidence.push_str("; no history to compare samples"),
    }
    let _ = write!(evidence, "; storm threshold {threshold}");
    let jumped = jump.as_ref().is_some_and(|(d, _, _)| *d >= threshold);
    if new_now < threshold && !jumped {
        return vec![ok("connection storm", "No connection storm", evidence)];
    }
    const LOOK: &str = "SELECT client_addr, application_name, usename, count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND backend_start > now() - interval '10 minutes' GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 10;";
    if new_now >= threshold {
        // who stormed: the (application, client) with the most of the new sessions
        type Who<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);
        let mut by_group: BTreeMap<Who, (i64, i64)> = BTreeMap::new();
        for b in c
            .clients
            .iter()
            .filter(|b| b.backend_start.is_some_and(|t| t >= since))
        {
            let e = by_group
                .entry((
                    b.application_name.as_deref(),
                    b.client_addr.as_deref(),
                    b.usename.as_deref(),
                ))
                .or_default();
            e.0 += 1;
            if b.has_state("active") {
                e.1 += 1;
            }
        }
        let culprit = by_group
            .iter()
            .max_by_key(|(k, (n, _))| (*n, std::cmp::Reverse(**k)))
            .map(|(k, n)| (*k, *n));
        if let Some(((app, addr, user), (n, active))) = culprit {
            // one story: the new sessions are a leak's (most of them, and idle), or slow
            // queries'
            let idle_new = c
                .clients
                .iter()
                .filter(|b| {
                    b.backend_start.is_some_and(|t| t >= since)
                        && b.application_name.as_deref() == app
                        && b.client_addr.as_deref() == addr
                        && b.usename.as_deref() == user
                        && b.has_state(IDLE)
                })
                .count() as i64;
            if c.is_leak(addr, user, app) && 2 * n >= new_now && 2 * idle_new >= n {
                return vec![ok(
                    "connection storm",
                    format!(
                        "The new sessions are mostly {}'s, a leak suspect: see leaks",
                        quoted_or(app, "-")
                    ),
                    format!("{evidence}; a leak that opens sessions fast and a storm are one story here"),
                )];
            }
            let slow = c.i.guard.slow_query_age;
            let running_long = c
                .clients
                .iter()
                .filter(|b| {
                    b.backend_start.is_some_and(|t| t >= since)
                        && b.application_name.as_deref() == app
                        && b.has_state("active")
                        && slow > 0.0
                        && age_seconds(c.now, b.query_start).unwrap_or(0.0) > slow
                })
                .count() as i64;
            if active > 0 && running_long * 2 >= n {
                return vec![ok(
                    "connection storm",
                    format!(
                        "The new sessions are mostly {}'s slow queries: see slow queries",
                        quoted_or(app, "-")
                    ),
                    format!(
                        "{evidence}; {running_long} of its {n} new sessions run statements past {}",
                        dur(slow)
                    ),
                )];
            }
            return vec![flag(
                "connection storm",
                Status::Warning,
                format!(
                    "Connection storm: {new_now} new sessions in the last {}s, {n} of them from application {} ({}): a traffic spike (scale issue)",
                    STORM_SPAN / SECOND,
                    quoted_or(app, "-"),
                    quoted_or(addr, "local")
                ),
                evidence,
                LOOK,
            )];
        }
    }
    // a rise between two samples: who rose most, and whether it is still there
    let Some((d, t, w)) = jump else {
        return vec![ok("connection storm", "No connection storm", evidence)];
    };
    let rose = w[1]
        .groups
        .iter()
        .filter(|g| !g.other)
        .map(|g| {
            let before = w[0]
                .groups
                .iter()
                .find(|o| !o.other && o.name == g.name)
                .map_or(0, |o| o.counts.total());
            (i64::from(g.counts.total()) - i64::from(before), &g.name)
        })
        .max_by_key(|(r, _)| *r)
        .filter(|(r, _)| *r > 0);
    let who = rose
        .map(|(r, n)| {
            format!(
                ", {r} of them of application {}",
                quoted_or(n.application_name.as_deref(), "-")
            )
        })
        .unwrap_or_default();
    let now_total = c.util.client_backends;
    let over = now_total < i64::from(w[1].clients.total()) - d / 2;
    let finding = format!(
        "Connection storm at {} ({} ago): client backends rose by {d} between two samples{who}{}",
        clock(t),
        dur(secs_between(c.now, t)),
        if over {
            "; over now (most of those sessions are gone)"
        } else {
            ": a traffic spike (scale issue)"
        }
    );
    vec![flag(
        "connection storm",
        if over { Status::Info } else { Status::Warning },
        finding,
        format!("{evidence}; {now_total} client backends now"),
        LOOK,
    )]
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// PostgreSQL's own timeouts against the guard's: is idle in transaction covered by either?
fn timeouts(c: &Ctx) -> Vec<Finding> {
    let s = &c.i.server;
    let p = &c.i.guard.policy;
    let overrides = |o: &Overrides| {
        if o.is_empty() {
            String::new()
        } else {
            format!(" (+{} overrides)", o.items().len())
        }
    };
    let evidence = format!(
        "PostgreSQL: idle_in_transaction_session_timeout {}, idle_session_timeout {}, statement_timeout {}, transaction_timeout {}; guard: idle_in_transaction_timeout {}{}, transaction_timeout {}{}, idle_timeout {}{}",
        setting(s.idle_in_transaction_session_timeout),
        setting(s.idle_session_timeout),
        setting(s.statement_timeout),
        s.transaction_timeout.map_or("n/a (before PostgreSQL 17)".into(), |t| setting(Some(t))),
        setting(Some(p.idle_in_transaction_timeout)),
        overrides(&p.idle_in_transaction_timeout_overrides),
        setting(Some(p.transaction_timeout)),
        overrides(&p.transaction_timeout_overrides),
        setting(Some(p.idle_timeout)),
        overrides(&p.idle_timeout_overrides),
    );
    let any_override = |o: &Overrides| o.items().iter().any(|i| i.timeout > 0);
    let guard_covers = c.guard_ending
        && (p.idle_in_transaction_timeout > 0
            || p.transaction_timeout > 0
            || any_override(&p.idle_in_transaction_timeout_overrides)
            || any_override(&p.transaction_timeout_overrides));
    let pg_covers = s.idle_in_transaction_session_timeout.unwrap_or(0) > 0
        || s.transaction_timeout.unwrap_or(0) > 0;
    if s.idle_in_transaction_session_timeout.is_none() && !guard_covers {
        return vec![flag(
            "timeouts",
            Status::Info,
            "Timeouts not fully checked: PostgreSQL's idle_in_transaction_session_timeout was not read, and the guard does not end idle transactions",
            evidence,
            "SHOW idle_in_transaction_session_timeout;",
        )];
    }
    if !guard_covers && !pg_covers {
        let action = if c.i.server.preloaded {
            enable_iit_action()
        } else {
            format!(
                "ALTER SYSTEM SET idle_in_transaction_session_timeout = '{RECOMMENDED_IIT_TIMEOUT}'; SELECT pg_reload_conf();"
            )
        };
        // advice about configuration: nothing is wrong now (a session idle in transaction
        // that is, is the idle-in-transaction row's)
        return vec![flag(
            "timeouts",
            Status::Info,
            "Nothing ends a session idle in transaction: neither PostgreSQL's timeouts nor the guard's cover it",
            evidence,
            action,
        )];
    }
    let who = match (guard_covers, pg_covers) {
        (true, true) => "both the guard and PostgreSQL",
        (true, false) => "the guard",
        _ => "PostgreSQL (without the guard's exclusions and audit)",
    };
    vec![ok(
        "timeouts",
        format!("Idle in transaction is ended by {who}"),
        evidence,
    )]
}

/// The guard not preloaded, disabled, or in dry run.
fn guard_state(c: &Ctx) -> Vec<Finding> {
    let g = &c.i.guard;
    if !c.i.server.preloaded {
        return vec![flag(
            "guard",
            Status::Warning,
            "The guard is not preloaded: no worker ends sessions, no history is sampled",
            "dbconn_guard is not in shared_preload_libraries: only the views work; the worker, its rules, history, leak trends and terminate_idle() need the preload",
            preload_action(&c.i.server),
        )];
    }
    if !g.enabled {
        return vec![flag(
            "guard",
            Status::Warning,
            "The guard is disabled: it ends no session",
            format!(
                "dbconn_guard.enabled = off{}; the worker keeps sampling",
                if g.dry_run { ", dry_run = on" } else { "" }
            ),
            "ALTER SYSTEM SET dbconn_guard.enabled = on; SELECT pg_reload_conf();",
        )];
    }
    if let Some((db, owner)) = c.i.worker.as_ref().and_then(|w| {
        w.database_owner_not_superuser
            .as_ref()
            .map(|o| (&w.database, o))
    }) {
        return vec![flag(
            "guard",
            Status::Warning,
            format!(
                "The guard's database {} is owned by {}, not a superuser: that role can hold up the guard's audit and drop the database while the worker is away",
                quoted(db),
                quoted(owner)
            ),
            format!(
                "dbconn_guard.database = {}, owned by {}: the owner can VACUUM FULL the audit table (terminations are then recorded in shared memory and the server log until it can be written), change the database's settings, and rename or drop it while the worker is not connected{}",
                quoted(db),
                quoted(owner),
                if g.dry_run { "; dry_run = on" } else { "" }
            ),
            "ALTER SYSTEM SET dbconn_guard.database = 'postgres'; -- takes effect at the next restart; then CREATE EXTENSION dbconn_guard in postgres",
        )];
    }
    if g.dry_run {
        return vec![flag(
            "guard",
            Status::Info,
            "The guard is in dry run: it records what it would end, and ends nothing",
            "dbconn_guard.dry_run = on; dry-run records are in dbconn_guard.terminations with dry_run = true",
            "ALTER SYSTEM SET dbconn_guard.dry_run = off; SELECT pg_reload_conf();",
        )];
    }
    vec![ok(
        "guard",
        "The guard is preloaded, enabled and ending sessions",
        "dbconn_guard.enabled = on, dry_run = off",
    )]
}

/// `work_mem` × `max_connections` + `shared_buffers`: what is checked, and what is not.
fn memory(c: &Ctx) -> Vec<Finding> {
    let s = &c.i.server;
    let max = i64::from(c.i.limits.max_connections);
    let (Some(wm), Some(sb), true) = (s.work_mem, s.shared_buffers, max > 0) else {
        return vec![flag(
            "memory",
            Status::Info,
            "Memory per connection not checked: work_mem, shared_buffers or max_connections was not read",
            format!(
                "work_mem {}, shared_buffers {}, max_connections {}",
                s.work_mem.map_or("?".into(), bytes),
                s.shared_buffers.map_or("?".into(), bytes),
                max
            ),
            "SHOW work_mem; SHOW shared_buffers; SHOW max_connections;",
        )];
    };
    let per = wm.saturating_mul(max);
    let total = per.saturating_add(sb);
    let evidence = format!(
        "work_mem {} × max_connections {max} = {}, + shared_buffers {} = {}, if every slot ran one sort or hash at once (a query may use several work_mem); checked against 4 × shared_buffers (shared_buffers is usually 25% of RAM); available RAM is not readable from SQL: compare with the host's memory",
        bytes(wm),
        bytes(per),
        bytes(sb),
        bytes(total)
    );
    if per <= sb.saturating_mul(4) {
        return vec![ok(
            "memory",
            "max_connections × work_mem fits beside shared_buffers",
            evidence,
        )];
    }
    let peak = c
        .samples
        .iter()
        .map(|s| i64::from(s.clients.total()))
        .max()
        .unwrap_or(0)
        .max(c.util.client_backends);
    let suggested = round_up_10(((peak as f64) * 1.5) as i64).max(20);
    // never on a standby: one whose max_connections is below its primary's does not start
    let action = if suggested < max && !c.i.server.in_recovery {
        format!("ALTER SYSTEM SET max_connections = {suggested};  -- 1.5 × the peak of {peak} clients; takes effect after a restart")
    } else {
        let mb = (sb.saturating_mul(4) / max / (1024 * 1024)).max(1);
        format!("ALTER SYSTEM SET work_mem = '{mb}MB'; SELECT pg_reload_conf();")
    };
    vec![flag(
        "memory",
        Status::Info,
        "max_connections × work_mem may exceed the server's RAM",
        evidence,
        action,
    )]
}

/// The runbook's pgbouncer advice when most connections sit idle.
fn pgbouncer(c: &Ctx) -> Vec<Finding> {
    let u = &c.util;
    let idle_share = if u.client_backends > 0 {
        u.idle as f64 / u.client_backends as f64
    } else {
        0.0
    };
    let evidence_base = format!(
        "{} of {} client sessions idle ({:.0}%)",
        u.idle,
        u.client_backends,
        idle_share * 100.0
    );
    if u.client_backends < MOSTLY_IDLE_MIN_CLIENTS || idle_share < MOSTLY_IDLE_SHARE {
        return vec![ok(
            "pgbouncer",
            "Connections are not mostly idle: no pooler advice",
            format!(
                "{evidence_base}; advice given from {MOSTLY_IDLE_MIN_CLIENTS} sessions with {:.0}% idle",
                MOSTLY_IDLE_SHARE * 100.0
            ),
        )];
    }
    let busy = |s: &StateCounts| s.active + s.idle_in_transaction + s.idle_in_transaction_aborted;
    let (peak, from) = match c.samples.iter().map(|s| busy(&s.clients)).max() {
        Some(p) => (
            i64::from(p),
            format!(
                "the busy peak of the last {}",
                dur(c.i.history.window as f64 / 1e6)
            ),
        ),
        None => (
            u.active + u.idle_in_transaction + u.idle_in_transaction_aborted,
            "busy now (no history)".into(),
        ),
    };
    let pool_size = ((peak as f64) * 1.25).ceil().max(5.0) as i64;
    let in_front = c
        .clients
        .iter()
        .any(|b| is_pooler_name(b.application_name.as_deref()));
    let evidence = format!(
        "{evidence_base}; {peak} sessions active or in a transaction at {from}; default_pool_size is per database and user"
    );
    let action = if in_front {
        format!("default_pool_size = {pool_size}")
    } else {
        format!("[pgbouncer]\npool_mode = transaction\ndefault_pool_size = {pool_size}")
    };
    vec![flag(
        "pgbouncer",
        Status::Info,
        if in_front {
            "Most server connections sit idle behind the pooler: its pool is larger than the work"
        } else {
            "Most connections sit idle: put pgbouncer in front, in transaction pooling"
        },
        evidence,
        action,
    )]
}

/// Sessions that look like a pooler's server connections, which the guard's idle_timeout would
/// end: let the pooler close them (`server_idle_timeout`) instead.
fn pooler(c: &Ctx) -> Vec<Finding> {
    let groups = client_groups(c);
    let looks: Vec<&ClientGroup> = groups
        .iter()
        // more than a name a client chooses: pgbouncer's reset query, or the shape of a pool
        .filter(|g| g.reset_query_seen || g.mostly_idle_pool())
        .collect();
    if looks.is_empty() {
        return vec![ok(
            "pooler",
            "No pooler's connections recognised",
            "no idle server connections that last ran a pooler's reset query (DISCARD ALL), and no client address with many mostly idle sessions of one user and application",
        )];
    }
    let p = &c.i.guard.policy;
    let ended_by_guard = |g: &ClientGroup| {
        c.guard_ending
            && p.scope.protection(g.first, c.i.caller.pid).is_none()
            && effective(g.first, p.idle_timeout, &p.idle_timeout_overrides).0 > 0
    };
    let mut out: Vec<Finding> = Vec::new();
    for g in looks.iter().take(TOP) {
        let named = is_pooler_name(g.app) || g.reset_query_seen;
        let what = if g.reset_query_seen {
            "pgbouncer's server connections (idle ones last ran its reset query DISCARD ALL)"
        } else if named {
            "a pooler's server connections"
        } else {
            "an application's pool or a pooler (pgbouncer) in front"
        };
        let ev = format!(
            "{}; one address, one user and application, mostly idle: {what}",
            g.describe()
        );
        if !ended_by_guard(g) {
            out.push(ok(
                "pooler",
                format!(
                    "Sessions from {} look like {what}; the guard's idle_timeout does not end them",
                    quoted_or(g.addr, "local")
                ),
                ev,
            ));
            continue;
        }
        let t = dur(effective(g.first, p.idle_timeout, &p.idle_timeout_overrides).0 as f64 / 1e6);
        let finding = if named {
            format!(
                "Sessions from {} are a pooler's server connections: the guard's idle_timeout ({t}) ends them",
                quoted_or(g.addr, "local")
            )
        } else {
            format!(
                "If the sessions from {} are a pooler's (pgbouncer), the guard's idle_timeout ({t}) ends its server connections",
                quoted_or(g.addr, "local")
            )
        };
        out.push(flag(
            "pooler",
            if named { Status::Warning } else { Status::Info },
            finding,
            format!(
                "{ev}; let pgbouncer close its idle server connections itself (server_idle_timeout = {RECOMMENDED_SERVER_IDLE_TIMEOUT}) and keep the guard's idle_timeout off them; its idle-in-transaction rules still apply"
            ),
            exempt_from_idle_timeout(p, g.first),
        ));
    }
    out
}

/// `ALTER SYSTEM` that puts an item giving `b`'s application (or, when that cannot be written,
/// its user) an idle timeout of 0 in front of the existing `idle_timeout_overrides`, so the
/// first match is the new one. Checked by parsing the new list back; when no such list can be
/// written, the idle rule is turned off.
fn exempt_from_idle_timeout(p: &Policy, b: &Backend) -> String {
    let existing: Vec<String> = p
        .idle_timeout_overrides
        .items()
        .iter()
        .filter_map(|o| {
            let key = match o.key {
                Key::Application => "app",
                Key::User => "user",
            };
            let [pat] = o.pattern.patterns() else {
                return None;
            };
            Some(format!(
                "{key}:{}={}",
                list_name(pat),
                duration_text(o.timeout)
            ))
        })
        .collect();
    let complete = existing.len() == p.idle_timeout_overrides.items().len();
    // the user first: a pooler's server connections carry its clients' application_names
    // (pgbouncer sets each client's own), but always the role the pooler logs in as
    let candidates = [
        ("user", b.usename.as_deref()),
        ("app", b.application_name.as_deref()),
    ];
    for (key, name) in candidates {
        // the list syntax has no literal `*`: such a name would become a wildcard that exempts
        // everyone, so it is never written
        let Some(name) = name.filter(|n| !n.is_empty() && !n.contains('*')) else {
            continue;
        };
        if !complete {
            break;
        }
        let mut items = vec![format!("{key}:{}=0", list_name(name))];
        items.extend(existing.iter().cloned());
        let list = items.join(", ");
        let parsed = Overrides::parse(&list);
        if parsed.as_ref().is_ok_and(|o| {
            // the new item first, and every existing item back exactly as it was
            o.items().len() == items.len()
                && o.items()[1..] == *p.idle_timeout_overrides.items()
                && o.timeout_for(b) == Some(0)
        }) {
            return format!(
                "ALTER SYSTEM SET dbconn_guard.idle_timeout_overrides = {}; SELECT pg_reload_conf();",
                sql_literal(&list)
            );
        }
    }
    // the list in force cannot be written back exactly: say what to do, never turn the idle
    // rule off for everyone
    let who = b
        .usename
        .as_deref()
        .filter(|u| !u.contains('*'))
        .map(|u| format!("user:{}=0", list_name(u)))
        .unwrap_or_else(|| "user:<the pooler's role>=0".into());
    format!(
        "SHOW dbconn_guard.idle_timeout_overrides;  -- then ALTER SYSTEM SET dbconn_guard.idle_timeout_overrides to that list with {} in front, and SELECT pg_reload_conf();",
        sql_literal(&format!("{who}, "))
    )
}

// ---------------------------------------------------------------------------------------------
// The worker itself
// ---------------------------------------------------------------------------------------------

fn worker(c: &Ctx) -> Vec<Finding> {
    const STATUS: &str =
        "SELECT running, pid, last_error, last_error_at, extension_ready FROM dbconn_guard.worker_status();";
    let Some(w) = &c.i.worker else {
        let (finding, action) = if c.i.server.preloaded {
            (
                "The worker could not be checked: worker_status() was not read".to_string(),
                STATUS.to_string(),
            )
        } else {
            (
                "The worker could not be checked: the library is not preloaded, so there is no worker".to_string(),
                preload_action(&c.i.server),
            )
        };
        return vec![flag(
            "worker",
            Status::Info,
            finding,
            "no worker status; the rules, history and terminate_idle() need the worker",
            action,
        )];
    };
    let mut out = Vec::new();
    let err = w.last_error.as_deref().filter(|e| !e.is_empty());
    let err_text = |e: &str| {
        format!(
            "last error {}{}",
            quoted(&truncate(e, 200)),
            w.last_error_at
                .map(|t| format!(" {} ago", dur(secs_between(c.now, t))))
                .unwrap_or_default()
        )
    };
    if !w.running {
        out.push(flag(
            "worker",
            Status::Warning,
            "The guard's worker is not running: no rule ends sessions, no history is sampled",
            format!(
                "worker_status().running = false; PostgreSQL restarts it after a crash within seconds; {}",
                err.map_or_else(|| "no last error".into(), err_text)
            ),
            STATUS,
        ));
    }
    if !w.extension_ready {
        out.push(flag(
            "worker",
            Status::Warning,
            format!(
                "The extension is missing in dbconn_guard.database ({}): the worker cannot record or serve terminate_idle()",
                quoted(&w.database)
            ),
            format!(
                "worker_status().extension_ready = false in database {}",
                quoted(&w.database)
            ),
            format!(
                "psql -d {} -c 'CREATE EXTENSION dbconn_guard;'",
                shell_quote(&w.database)
            ),
        ));
    }
    if let Some(e) = err.filter(|_| w.running) {
        let recent = w.last_error_at.is_none_or(|t| t >= c.window_start());
        if recent {
            out.push(flag(
                "worker",
                Status::Warning,
                "The worker reported an error recently",
                err_text(e),
                STATUS,
            ));
        }
    }
    if w.database != c.i.caller.database {
        out.push(flag(
            "worker",
            Status::Info,
            format!(
                "The worker is attached to database {}, not this one ({}): it watches every database, but its audit rows are written there",
                quoted(&w.database),
                quoted(&c.i.caller.database)
            ),
            "dbconn_guard.terminations in this database stays empty; recent_terminations() reads shared memory from any database",
            "SELECT * FROM dbconn_guard.recent_terminations();",
        ));
    }
    if out.is_empty() {
        out.push(ok(
            "worker",
            format!(
                "The worker is running{}, in database {}",
                w.pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                quoted(&w.database)
            ),
            err.map_or_else(
                || "no error reported".into(),
                |e| format!("{} (outside the window)", err_text(e)),
            ),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Visibility
// ---------------------------------------------------------------------------------------------

fn visibility(c: &Ctx) -> Vec<Finding> {
    let cl = &c.i.caller;
    let hidden = cl.hidden_backends.max(c.util.hidden_backends);
    let torn = if c.i.snapshot.torn > 0 {
        format!(
            "; {} status entries could not be read (being rewritten)",
            c.i.snapshot.torn
        )
    } else {
        String::new()
    };
    if hidden == 0 || cl.has_read_all_stats {
        return vec![ok(
            "visibility",
            if cl.has_read_all_stats {
                "This role sees every session (pg_read_all_stats)"
            } else {
                "No session is hidden from this role now"
            },
            format!(
                "{} client backends visible, {hidden} hidden{torn}",
                c.util.client_backends
            ),
        )];
    }
    let seen = c.util.client_backends + c.util.other_backends;
    let status = if hidden as f64 >= 0.1 * (seen + hidden) as f64 {
        Status::Warning
    } else {
        Status::Info
    };
    vec![flag(
        "visibility",
        status,
        format!(
            "{hidden} backends of other roles are hidden from {}: the counts above leave them out",
            sql_ident(&cl.role)
        ),
        format!(
            "PostgreSQL shows other roles' state, query, times and client address only to pg_read_all_stats; {seen} backends visible, {hidden} hidden{torn}"
        ),
        format!("GRANT pg_read_all_stats TO {};", sql_ident(&cl.role)),
    )]
}

// ---------------------------------------------------------------------------------------------
// Actions and text
// ---------------------------------------------------------------------------------------------

/// Ends the idle sessions (of `app`, when given) idle longer than `older_than` seconds:
/// through `terminate_idle()` (the guard's protections and audit) when the worker can serve it,
/// or straight from `pg_stat_activity` (sparing superusers and this session) when not.
/// What an `end_idle` action for one application ends, said in the evidence: it is wider than
/// the finding's group (every client, user and database of that application).
/// Whose idle sessions an action ends: one group's (every name given must match), or, with
/// none given, every client's.
#[derive(Clone, Copy, Debug, Default)]
struct IdleScope<'a> {
    app: Option<&'a str>,
    user: Option<&'a str>,
    /// `Some(None)`: local (Unix-socket) sessions.
    client: Option<Option<&'a str>>,
    db: Option<&'a str>,
}

impl<'a> IdleScope<'a> {
    /// A group of client backends: application (an absent one is the empty name), user,
    /// client address (absent: local) and, when known, database.
    fn group(
        app: Option<&'a str>,
        user: Option<&'a str>,
        client: Option<&'a str>,
        db: Option<&'a str>,
    ) -> Self {
        IdleScope {
            app: Some(app.unwrap_or("")),
            user,
            client: Some(client),
            db,
        }
    }

    fn is_everyone(&self) -> bool {
        self.app.is_none() && self.user.is_none() && self.client.is_none() && self.db.is_none()
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = self.app {
            parts.push(format!("application {}", quoted(a)));
        }
        if let Some(u) = self.user {
            parts.push(format!("user {}", quoted(u)));
        }
        if let Some(cl) = self.client {
            parts.push(format!("client {}", quoted_or(cl, "local")));
        }
        if let Some(d) = self.db {
            parts.push(format!("database {}", quoted(d)));
        }
        parts.join(", ")
    }
}

/// What an `end_idle` action ends, in words, for the evidence.
fn end_idle_scope(c: &Ctx, scope: &IdleScope, older_than: f64) -> String {
    let secs = older_than.max(TRANSIENT_SECS).ceil() as i64;
    let whose = if scope.is_everyone() {
        "of every application, user and client (wider: no single group stands out)".to_string()
    } else {
        format!("of {} only", scope.describe())
    };
    format!(
        "; the action ends the sessions {whose} idle for longer than {secs}s{}",
        if c.terminate_idle_works {
            " (through terminate_idle(): the guard's protections and audit apply)"
        } else {
            " (superusers and this session excepted; no audit row)"
        }
    )
}

/// The statement that ends the idle sessions of `scope` idle for longer than `older_than`:
/// `terminate_idle()` with the group's names as literals, or, where it cannot work, the same
/// over `pg_stat_activity`.
/// Never younger than [`TRANSIENT_SECS`]: a healthy client's session is idle for a moment
/// between two uses.
fn end_idle(c: &Ctx, scope: &IdleScope, older_than: f64) -> String {
    let secs = older_than.max(TRANSIENT_SECS).ceil() as i64;
    if c.terminate_idle_works {
        let mut named = String::new();
        if let Some(a) = scope.app {
            let _ = write!(named, ", application_name => {}", sql_literal(a));
        }
        if let Some(u) = scope.user {
            let _ = write!(named, ", usename => {}", sql_literal(u));
        }
        if let Some(cl) = scope.client {
            let _ = write!(
                named,
                ", client_addr => {}",
                sql_literal(cl.unwrap_or("local"))
            );
        }
        if let Some(d) = scope.db {
            let _ = write!(named, ", datname => {}", sql_literal(d));
        }
        format!(
            "SELECT * FROM dbconn_guard.terminate_idle('{secs} seconds', ARRAY['idle']{named});"
        )
    } else {
        let mut filter = String::new();
        if let Some(a) = scope.app {
            let _ = write!(
                filter,
                " AND coalesce(application_name, '') = {}",
                sql_literal(a)
            );
        }
        if let Some(u) = scope.user {
            let _ = write!(filter, " AND usename = {}", sql_literal(u));
        }
        match scope.client {
            Some(Some(cl)) => {
                let _ = write!(filter, " AND client_addr = {}::inet", sql_literal(cl));
            }
            Some(None) => filter.push_str(" AND client_addr IS NULL"),
            None => {}
        }
        if let Some(d) = scope.db {
            let _ = write!(filter, " AND datname = {}", sql_literal(d));
        }
        format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND state = 'idle'{filter} AND state_change < now() - interval '{secs} seconds' AND pid <> pg_backend_pid() AND usesysid NOT IN (SELECT oid FROM pg_roles WHERE rolsuper);"
        )
    }
}

/// The names of a list setting as `SHOW` displays it (`a, "b c"`): split at commas outside
/// double quotes, each unquoted (`""` inside quotes is one quote).
fn library_items(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = list.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// Adds dbconn_guard to `shared_preload_libraries`, keeping what is there.
fn preload_action(s: &Server) -> String {
    let listed = |l: &str| {
        l.split(',')
            .any(|x| x.trim().trim_matches('"') == "dbconn_guard")
    };
    match s.shared_preload_libraries.as_deref().map(str::trim) {
        Some(l) if listed(l) => "SELECT name, setting, pending_restart FROM pg_settings WHERE name = 'shared_preload_libraries';  -- dbconn_guard is listed but not loaded: restart PostgreSQL".into(),
        Some("") => "ALTER SYSTEM SET shared_preload_libraries = 'dbconn_guard';  -- then restart PostgreSQL".into(),
        // one literal per library: a single literal holding "a, b" would be stored as ONE
        // quoted name, and the server would not start
        Some(list) => format!(
            "ALTER SYSTEM SET shared_preload_libraries = {};  -- then restart PostgreSQL",
            library_items(list)
                .iter()
                .map(String::as_str)
                .chain(["dbconn_guard"])
                .map(sql_literal)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "SHOW shared_preload_libraries;  -- then ALTER SYSTEM SET shared_preload_libraries to that list plus dbconn_guard, and restart PostgreSQL".into(),
    }
}

/// `s` as a SQL string literal that is always one literal: `'...'` with quotes doubled, or
/// `E'...'` with backslashes and control characters escaped when it holds any (so it reads the
/// same whatever `standard_conforming_strings` is, and stays on one line).
pub fn sql_literal(s: &str) -> String {
    let escape = s.chars().any(|c| c == '\\' || c.is_control());
    let mut out = String::with_capacity(s.len() + 3);
    if escape {
        out.push('E');
    }
    out.push('\'');
    for ch in s.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ch if ch.is_control() => {
                let _ = write!(out, "\\u{:04x}", ch as u32);
            }
            ch => out.push(ch),
        }
    }
    out.push('\'');
    out
}

/// `s` as a quoted SQL identifier (`"..."`, quotes doubled): always one identifier.
pub fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `s` as one shell word (`'...'`, a quote written `'\''`).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A name for a name list or override item: bare, or in double quotes when it holds what the
/// list syntax reads (comma, quote, `=`, spaces at either end).
fn list_name(name: &str) -> String {
    let special = name.contains([',', '"', '='])
        || name.starts_with([' ', '\t'])
        || name.ends_with([' ', '\t']);
    if special {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_string()
    }
}

/// A timeout as the override syntax writes it.
fn duration_text(us: Micros) -> String {
    if us % SECOND == 0 {
        format!("{}s", us / SECOND)
    } else {
        format!("{}ms", us / 1000)
    }
}

fn from_health(s: health::Status) -> Status {
    match s {
        health::Status::Ok => Status::Ok,
        health::Status::Warning => Status::Warning,
        health::Status::Critical => Status::Critical,
    }
}

fn reserved(l: &Limits) -> i32 {
    l.superuser_reserved_connections + l.reserved_connections.unwrap_or(0)
}

fn secs_between(later: Micros, earlier: Micros) -> f64 {
    later.saturating_sub(earlier).max(0) as f64 / 1e6
}

fn share(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn round_up_10(n: i64) -> i64 {
    (n.max(1) + 9) / 10 * 10
}

/// A duration for people: `45s`, `12min`, `3h 5min`, `2d 3h`.
pub fn dur(seconds: f64) -> String {
    let s = if seconds.is_finite() {
        seconds.max(0.0).round() as i64
    } else {
        0
    };
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 600 && s % 60 != 0 => format!("{}min {}s", s / 60, s % 60),
        s if s < 7200 => format!("{}min", s / 60),
        s if s < 172_800 => match (s % 3600) / 60 {
            0 => format!("{}h", s / 3600),
            m => format!("{}h {m}min", s / 3600),
        },
        s => match (s % 86400) / 3600 {
            0 => format!("{}d", s / 86400),
            h => format!("{}d {h}h", s / 86400),
        },
    }
}

/// The time of day of `t` (PostgreSQL's microseconds since 2000-01-01 00:00 UTC), as
/// `14:05 UTC`.
fn clock(t: Micros) -> String {
    let minutes = t.div_euclid(60 * SECOND).rem_euclid(24 * 60);
    format!("{:02}:{:02} UTC", minutes / 60, minutes % 60)
}

fn setting(v: Option<Micros>) -> String {
    match v {
        None => "?".into(),
        Some(t) if t <= 0 => "0 (off)".into(),
        Some(t) => dur(t as f64 / 1e6),
    }
}

/// Bytes in PostgreSQL's units (1024-based).
pub fn bytes(b: i64) -> String {
    const K: f64 = 1024.0;
    let f = b as f64;
    if f >= K * K * K * K {
        format!("{:.1}TB", f / (K * K * K * K))
    } else if f >= K * K * K {
        format!("{:.1}GB", f / (K * K * K))
    } else if f >= K * K {
        format!("{:.0}MB", f / (K * K))
    } else if f >= K {
        format!("{:.0}kB", f / K)
    } else {
        format!("{b}B")
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max_chars {
        one_line
    } else {
        let mut t: String = one_line.chars().take(max_chars).collect();
        t.push('…');
        t
    }
}

fn query_text(b: &Backend) -> String {
    b.query
        .as_deref()
        .map_or_else(|| "hidden".into(), |q| quoted(&truncate(q, 80)))
}

/// `1 session`, `3 sessions`.
fn sessions(n: i64) -> String {
    if n == 1 {
        "1 session".into()
    } else {
        format!("{n} sessions")
    }
}

fn pid_list(pids: &[i32]) -> String {
    let mut v: Vec<String> = pids.iter().take(10).map(i32::to_string).collect();
    if pids.len() > 10 {
        v.push("...".into());
    }
    v.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocking::LockWait;
    use crate::history::GroupSample;
    use crate::patterns::PatternList;
    use crate::policy::Scope;
    use crate::session::fixtures::*;

    const MB: i64 = 1024 * 1024;
    const HOUR: Micros = 3600 * SECOND;

    /// A client connected two hours ago (before the window), in `state` for `age_s` seconds.
    fn c(pid: i32, state: &'static str, age_s: i64) -> Backend {
        let mut b = client(pid, state, age_s);
        b.backend_start = Some(NOW - 2 * HOUR - age_s * SECOND);
        if state == "active" {
            b.query_start = b.state_change;
        }
        if state.starts_with("idle in transaction") {
            b.xact_start = Some(NOW - (age_s + 5) * SECOND);
        }
        b
    }

    fn app(mut b: Backend, name: &str) -> Backend {
        b.application_name = Some(name.into());
        b
    }

    fn addr(mut b: Backend, a: &str) -> Backend {
        b.client_addr = Some(a.into());
        b
    }

    fn policy() -> Policy {
        Policy {
            scope: Scope::default(),
            idle_timeout: 0,
            idle_in_transaction_timeout: 300 * SECOND,
            transaction_timeout: 0,
            min_utilization_pct: 0.0,
            max_terminations_per_cycle: 100,
            idle_timeout_overrides: Overrides::default(),
            idle_in_transaction_timeout_overrides: Overrides::default(),
            transaction_timeout_overrides: Overrides::default(),
            blocker_timeout: 0,
            blocker_timeout_overrides: Default::default(),
            blocker_min_waiters: 1,
            cancel_active_blockers: false,
        }
    }

    fn counts(active: u32, idle: u32) -> StateCounts {
        StateCounts {
            active,
            idle,
            ..Default::default()
        }
    }

    /// A sample `ago_s` seconds ago with one group ("app", "web", "api").
    fn sample(ago_s: i64, active: u32, idle: u32) -> Sample {
        let cl = counts(active, idle);
        Sample {
            time: NOW - ago_s * SECOND,
            clients: cl,
            max_connections: 100,
            utilization_pct: f64::from(cl.total()),
            groups: vec![GroupSample {
                name: GroupName {
                    datname: Some("app".into()),
                    usename: Some("web".into()),
                    application_name: Some("api".into()),
                },
                counts: cl,
                other: false,
            }],
            ..Default::default()
        }
    }

    /// A quiet, healthy server: 2 active and 3 idle sessions, an hour of steady history.
    fn input() -> Input {
        with(vec![
            c(1, "active", 1),
            c(2, "active", 2),
            c(3, "idle", 10),
            c(4, "idle", 20),
            c(5, "idle", 30),
        ])
    }

    fn with(backends: Vec<Backend>) -> Input {
        Input {
            snapshot: snapshot(backends),
            limits: Limits {
                max_connections: 100,
                superuser_reserved_connections: 3,
                reserved_connections: None,
            },
            lock_waits: vec![],
            history: History {
                enabled: true,
                hidden_from_caller: false,
                window: HOUR,
                samples: (0..6).rev().map(|i| sample(i * 600, 2, 3)).collect(),
            },
            server: Server {
                in_recovery: false,
                postmaster_start: Some(NOW - 240 * HOUR),
                conf_load_time: Some(NOW - 200 * HOUR),
                preloaded: true,
                shared_preload_libraries: Some("pg_stat_statements,dbconn_guard".into()),
                idle_in_transaction_session_timeout: Some(0),
                idle_session_timeout: Some(0),
                statement_timeout: Some(0),
                transaction_timeout: Some(0),
                work_mem: Some(4 * MB),
                shared_buffers: Some(128 * MB),
                setting_changes: Some(vec![]),
                settings_compared_reload: NOW - 200 * HOUR,
            },
            guard: Guard {
                policy: policy(),
                enabled: true,
                dry_run: false,
                thresholds: Thresholds::default(),
                leak_idle_age: 600.0,
                leak_trend_samples: 6,
                slow_query_age: 300.0,
            },
            worker: Some(WorkerInfo {
                running: true,
                pid: Some(99),
                database: "app".into(),
                last_error: None,
                last_error_at: None,
                extension_ready: true,
                database_owner_not_superuser: None,
            }),
            caller: Caller {
                pid: 1,
                role: "dba".into(),
                database: "app".into(),
                hidden_backends: 0,
                has_read_all_stats: true,
                lacks_terminate_idle: false,
                is_superuser: true,
                has_signal_backend: true,
                member_of: vec![],
            },
        }
    }

    fn area<'a>(fs: &'a [Finding], a: &str) -> Vec<&'a Finding> {
        fs.iter().filter(|f| f.area == a).collect()
    }

    fn one<'a>(fs: &'a [Finding], a: &str) -> &'a Finding {
        let rows = area(fs, a);
        assert_eq!(rows.len(), 1, "{a}: {rows:#?}");
        rows[0]
    }

    fn not_ok<'a>(fs: &'a [Finding], a: &str) -> Vec<&'a Finding> {
        area(fs, a)
            .into_iter()
            .filter(|f| f.status != Status::Ok)
            .collect()
    }

    fn action(f: &Finding) -> &str {
        f.action
            .as_deref()
            .unwrap_or_else(|| panic!("no action: {f:#?}"))
    }

    const ORDER: [&str; 18] = [
        "server",
        "pool",
        "consumers",
        "oversized pool",
        "leaks",
        "idle in transaction",
        "slow queries",
        "locks",
        "error pattern",
        "recent changes",
        "deployment",
        "connection storm",
        "timeouts",
        "guard",
        "memory",
        "pgbouncer",
        "pooler",
        "worker",
    ];

    // --- shape ---------------------------------------------------------------------------

    #[test]
    fn a_healthy_server_is_ok_everywhere_in_the_runbooks_order() {
        let fs = diagnose(&input());
        for f in &fs {
            assert_eq!(f.status, Status::Ok, "{f:#?}");
        }
        let steps: Vec<i32> = fs.iter().map(|f| f.step).collect();
        assert_eq!(steps, (1..=fs.len() as i32).collect::<Vec<_>>());
        let mut areas: Vec<&str> = fs.iter().map(|f| f.area).collect();
        areas.dedup();
        let mut expected = ORDER.to_vec();
        expected.push("visibility");
        assert_eq!(areas, expected);
    }

    #[test]
    fn status_names() {
        assert_eq!(
            [Status::Ok, Status::Info, Status::Warning, Status::Critical].map(Status::as_str),
            ["ok", "info", "warning", "critical"]
        );
        assert!(Status::Critical > Status::Warning && Status::Info > Status::Ok);
    }

    // --- server ------------------------------------------------------------------------------

    #[test]
    fn a_standby_says_what_differs_and_everything_else_still_runs() {
        let mut i = input();
        i.server.in_recovery = true;
        let fs = diagnose(&i);
        let s = one(&fs, "server");
        assert_eq!(s.status, Status::Info);
        assert!(s.evidence.contains("read-only"), "{}", s.evidence);
        assert_eq!(
            action(s),
            "SELECT * FROM dbconn_guard.recent_terminations();"
        );
        assert_eq!(fs.len(), diagnose(&input()).len());
    }

    // --- pool ---------------------------------------------------------------------------------

    fn n_clients(n: i32, state: &'static str) -> Vec<Backend> {
        (1..=n).map(|p| c(p + 10, state, 5)).collect()
    }

    #[test]
    fn pool_grades_by_the_health_thresholds_and_reserved_slots() {
        let fs = diagnose(&with(n_clients(50, "active")));
        let p = one(&fs, "pool");
        assert_eq!(p.status, Status::Ok);
        assert!(
            p.evidence.starts_with("50 of 100 slots (50.0%)"),
            "{}",
            p.evidence
        );
        assert!(p.evidence.contains("3 reserved, 47 left"), "{}", p.evidence);

        // one group holds the idle sessions: the action ends its idle sessions only, and
        // spares the bystanders
        let mut clients = n_clients(40, "active");
        clients.extend((0..40).map(|i| c(200 + i, "idle", 400)));
        clients.extend((0..5).map(|i| app(c(300 + i, "idle", 400), "billing")));
        let fs = diagnose(&with(clients.clone()));
        let p = one(&fs, "pool");
        assert_eq!(p.status, Status::Warning);
        assert_eq!(
            action(p),
            "SELECT * FROM dbconn_guard.terminate_idle('300 seconds', ARRAY['idle'], application_name => 'api', usename => 'web', client_addr => '10.0.0.1', datname => 'app');"
        );
        assert!(
            p.evidence.contains("holds 40 of the 45 idle sessions"),
            "{}",
            p.evidence
        );
        // none stands out: every group's, and said to be wider
        let mut spread = n_clients(40, "active");
        spread.extend((0..40).map(|i| app(c(200 + i, "idle", 400), &format!("app{}", i % 4))));
        let fs = diagnose(&with(spread));
        let p = one(&fs, "pool");
        assert_eq!(
            action(p),
            "SELECT * FROM dbconn_guard.terminate_idle('300 seconds', ARRAY['idle']);"
        );
        assert!(p.evidence.contains("wider"), "{}", p.evidence);

        let fs = diagnose(&with(n_clients(92, "active")));
        let p = one(&fs, "pool");
        assert_eq!(p.status, Status::Critical);
        assert!(
            action(p).starts_with("ALTER SYSTEM SET max_connections = 150;"),
            "{p:#?}"
        );

        let fs = diagnose(&with(n_clients(97, "active")));
        let p = one(&fs, "pool");
        assert_eq!(p.status, Status::Critical);
        assert!(p.finding.starts_with("Pool exhausted"), "{}", p.finding);
    }

    #[test]
    fn pool_without_max_connections_cannot_be_checked() {
        let mut i = input();
        i.limits.max_connections = 0;
        let fs = diagnose(&i);
        let p = one(&fs, "pool");
        assert_eq!(
            (p.status, action(p)),
            (Status::Info, "SHOW max_connections;")
        );
        assert_eq!(one(&fs, "memory").status, Status::Info);
    }

    #[test]
    fn pool_action_without_the_worker_reads_pg_stat_activity() {
        let mut clients = n_clients(10, "active");
        clients.extend((0..75).map(|i| c(200 + i, "idle", 400)));
        let mut i = with(clients);
        i.worker.as_mut().unwrap().running = false;
        let fs = diagnose(&i);
        let a = action(one(&fs, "pool"));
        assert!(
            a.starts_with("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"),
            "{a}"
        );
        assert!(
            a.contains("state_change < now() - interval '300 seconds'"),
            "{a}"
        );
        assert!(a.contains("rolsuper"), "spares superusers: {a}");
    }

    // --- consumers -----------------------------------------------------------------------------

    #[test]
    fn consumers_by_application_user_and_client_with_shares() {
        let mut clients: Vec<Backend> = (0..6).map(|p| c(10 + p, "idle", 5)).collect();
        clients.push(app(c(20, "active", 1), "batch"));
        clients.push(addr(app(c(21, "active", 1), "batch"), "10.0.0.2"));
        let fs = diagnose(&with(clients));
        let rows = area(&fs, "consumers");
        assert_eq!(rows.len(), 3);
        assert!(
            rows[0].finding.starts_with(
                "Top application: \"api\" holds 6 of 8 client sessions (75%), 100% of them idle"
            ),
            "{}",
            rows[0].finding
        );
        assert_eq!(
            rows[0].evidence,
            "by application: \"api\" 6 (75%, 100% idle), \"batch\" 2 (25%, 0% idle)"
        );
        assert!(rows[1].evidence.starts_with("by user: \"web\" 8 (100%"));
        assert!(
            rows[2].evidence.contains("\"10.0.0.2\" 1 (12%, 0% idle)"),
            "{}",
            rows[2].evidence
        );
        assert!(rows.iter().all(|r| r.status == Status::Ok));

        let fs = diagnose(&with(vec![]));
        assert_eq!(one(&fs, "consumers").finding, "No client sessions visible");
    }

    // --- oversized pool ------------------------------------------------------------------------

    #[test]
    fn a_pool_larger_than_its_work_is_named_by_client() {
        let mut clients: Vec<Backend> = (0..11)
            .map(|p| addr(c(10 + p, "idle", 400), "10.0.0.5"))
            .collect();
        clients.push(addr(c(30, "active", 1), "10.0.0.5"));
        let fs = diagnose(&with(clients.clone()));
        let o = one(&fs, "oversized pool");
        assert_eq!(o.status, Status::Warning);
        assert!(
            o.finding
                .contains("11 of 12 sessions from \"10.0.0.5\" (application \"api\")"),
            "{}",
            o.finding
        );
        // its busiest moment in the history (2 busy) plus headroom
        assert!(
            o.evidence.contains("a pool of about 4 would do"),
            "{}",
            o.evidence
        );
        assert_eq!(
            action(o),
            "SELECT * FROM dbconn_guard.terminate_idle('300 seconds', ARRAY['idle'], application_name => 'api', usename => 'web', client_addr => '10.0.0.5');"
        );
        // below the size, or not idle enough: nothing
        let fs = diagnose(&with(clients[..9].to_vec()));
        assert_eq!(one(&fs, "oversized pool").status, Status::Ok);
        let mut busy = clients.clone();
        busy.extend((0..4).map(|p| addr(c(40 + p, "active", 1), "10.0.0.5")));
        assert_eq!(
            one(&diagnose(&with(busy)), "oversized pool").status,
            Status::Ok
        );
        // a pooler's are left to the pooler row
        let pooled: Vec<Backend> = clients
            .iter()
            .cloned()
            .map(|b| app(b, "pgbouncer"))
            .collect();
        assert_eq!(
            one(&diagnose(&with(pooled)), "oversized pool").status,
            Status::Ok
        );
        // a pool whose busiest moment in the window needed most of it is sized for its peak
        let mut peaked = with(clients.clone());
        peaked.history.samples[2] = sample(1800, 8, 4);
        assert_eq!(one(&diagnose(&peaked), "oversized pool").status, Status::Ok);
    }

    #[test]
    fn a_pool_on_several_hosts_is_judged_by_its_share_of_the_history() {
        // three pods of 12 sessions each, all unused for minutes; the history's busiest sample
        // had 12 busy in all (4 a pod): each pod's pool is three times its work
        let clients: Vec<Backend> = (0..36)
            .map(|p| addr(c(10 + p, "idle", 400), &format!("10.0.0.{}", 10 + p / 12)))
            .collect();
        let mut i = with(clients);
        i.history.samples[2] = sample(1800, 12, 24);
        let fs = diagnose(&i);
        assert_eq!(not_ok(&fs, "oversized pool").len(), 3, "{fs:#?}");
        assert!(not_ok(&fs, "oversized pool")[0]
            .evidence
            .contains("a pool of about 6 would do"));
    }

    #[test]
    fn a_healthy_pool_that_takes_each_connection_within_seconds_is_not_oversized() {
        // ten connections, each used every half second: idle for a second at most, at any
        // instant most of them idle
        let mut clients: Vec<Backend> = (0..9)
            .map(|p| addr(c(10 + p, "idle", 1), "10.0.0.5"))
            .collect();
        clients.push(addr(c(30, "active", 0), "10.0.0.5"));
        clients.extend((0..10).map(|p| addr(c(40 + p, "idle", 0), "10.0.0.6")));
        let fs = diagnose(&with(clients));
        assert_eq!(one(&fs, "oversized pool").status, Status::Ok);
        assert!(not_ok(&fs, "oversized pool").is_empty());
    }

    // --- leaks -------------------------------------------------------------------------------

    #[test]
    fn leak_suspects_by_idle_age() {
        let mut clients = vec![c(1, "active", 1)];
        clients.extend((0..4).map(|p| app(c(10 + p, "idle", 900 + i64::from(p)), "orders")));
        let fs = diagnose(&with(clients));
        let l = one(&fs, "leaks");
        assert_eq!(l.status, Status::Warning);
        assert!(
            l.finding.contains("4 sessions idle for up to 15min"),
            "{}",
            l.finding
        );
        assert!(
            l.evidence.contains("application \"orders\""),
            "{}",
            l.evidence
        );
        // the leaking group only: application, user, client and database
        assert_eq!(
            action(l),
            "SELECT * FROM dbconn_guard.terminate_idle('600 seconds', ARRAY['idle'], application_name => 'orders', usename => 'web', client_addr => '10.0.0.1', datname => 'app');"
        );
        assert_eq!(one(&diagnose(&input()), "leaks").status, Status::Ok);
    }

    #[test]
    fn leak_suspects_by_a_growing_trend_from_history() {
        let mut i = with((0..6).map(|p| c(10 + p, "idle", 30)).collect());
        i.history.samples = (0..6)
            .map(|k| sample((5 - k) * 60, 0, k as u32 + 1))
            .collect();
        let fs = diagnose(&i);
        let l = one(&fs, "leaks");
        assert_eq!(l.status, Status::Warning);
        assert!(l.finding.contains("keep growing"), "{}", l.finding);
        assert!(
            l.evidence.contains("trend growing (1, 2, 3, 4, 5, 6)"),
            "{}",
            l.evidence
        );
        // without history only the age is checked, and the row says so
        i.history = History {
            enabled: false,
            hidden_from_caller: false,
            window: HOUR,
            samples: vec![],
        };
        let l = diagnose(&i);
        let l = one(&l, "leaks");
        assert_eq!(l.status, Status::Ok);
        assert!(l.evidence.contains("trend not checked"), "{}", l.evidence);
    }

    #[test]
    fn leak_rows_are_bounded() {
        let clients: Vec<Backend> = (0..18)
            .map(|p| app(c(10 + p, "idle", 900), &format!("app{}", p / 3)))
            .collect();
        let fs = diagnose(&with(clients));
        let rows = area(&fs, "leaks");
        assert_eq!(rows.len(), TOP);
        assert!(rows[2]
            .evidence
            .contains("3 more in dbconn_guard.leak_suspects"));
    }

    // --- idle in transaction ---------------------------------------------------------------------

    #[test]
    fn idle_in_transaction_names_the_guard_rule_that_ends_it() {
        let fs = diagnose(&with(vec![c(4711, "idle in transaction", 120)]));
        let f = one(&fs, "idle in transaction");
        assert_eq!(f.status, Status::Info);
        assert!(
            f.evidence
                .contains("dbconn_guard.idle_in_transaction_timeout (5min) ends it in 3min"),
            "{}",
            f.evidence
        );
        assert_eq!(action(f), "SELECT pg_terminate_backend(4711);");
        // young ones are not reported
        let fs = diagnose(&with(vec![c(4711, "idle in transaction", 30)]));
        assert_eq!(one(&fs, "idle in transaction").status, Status::Ok);
    }

    #[test]
    fn idle_in_transaction_past_the_guards_deadline_asks_about_the_worker() {
        let fs = diagnose(&with(vec![c(4711, "idle in transaction (aborted)", 1200)]));
        let f = one(&fs, "idle in transaction");
        assert_eq!(f.status, Status::Warning);
        assert!(
            f.finding.contains("past the guard's deadline"),
            "{}",
            f.finding
        );
        assert!(
            f.evidence.contains("was due to end it 15min ago"),
            "{}",
            f.evidence
        );
    }

    #[test]
    fn idle_in_transaction_nobody_ends_gets_the_setting_to_enable() {
        let mut i = with(vec![c(4711, "idle in transaction", 120)]);
        i.guard.policy.idle_in_transaction_timeout = 0;
        let fs = diagnose(&i);
        let f = one(&fs, "idle in transaction");
        assert_eq!(f.status, Status::Warning);
        assert_eq!(
            action(f),
            "ALTER SYSTEM SET dbconn_guard.idle_in_transaction_timeout = '5min'; SELECT pg_reload_conf();"
        );
        // PostgreSQL's own timeout covers it
        i.server.idle_in_transaction_session_timeout = Some(600 * SECOND);
        let fs = diagnose(&i);
        let f = one(&fs, "idle in transaction");
        assert_eq!(f.status, Status::Info);
        assert!(
            f.evidence.contains(
                "PostgreSQL's idle_in_transaction_session_timeout (10min) ends it in 8min"
            ),
            "{}",
            f.evidence
        );
        // transaction_timeout of the guard: from the transaction's start
        i.server.idle_in_transaction_session_timeout = Some(0);
        i.guard.policy.transaction_timeout = 130 * SECOND;
        let fs = diagnose(&i);
        let f = one(&fs, "idle in transaction");
        assert!(
            f.evidence
                .contains("dbconn_guard.transaction_timeout (2min 10s) ends it in 5s"),
            "{}",
            f.evidence
        );
    }

    #[test]
    fn idle_in_transaction_the_guard_may_not_end_is_terminated_by_pid() {
        // a superuser: protected
        let mut su = c(4711, "idle in transaction", 120);
        su.is_superuser = Some(true);
        let fs = diagnose(&with(vec![su]));
        let f = one(&fs, "idle in transaction");
        assert_eq!(f.status, Status::Warning);
        assert!(f.evidence.contains("superuser"), "{}", f.evidence);
        assert_eq!(action(f), "SELECT pg_terminate_backend(4711);");
        // an override of 0 for its application
        let mut i = with(vec![c(4712, "idle in transaction", 120)]);
        i.guard.policy.idle_in_transaction_timeout_overrides =
            Overrides::parse("app:api=0").unwrap();
        let fs = diagnose(&i);
        let f = one(&fs, "idle in transaction");
        assert!(f.evidence.contains("gives it 0 (never)"), "{}", f.evidence);
        assert_eq!(action(f), "SELECT pg_terminate_backend(4712);");
        // the guard in dry run ends nothing
        let mut i = with(vec![c(4713, "idle in transaction", 120)]);
        i.guard.dry_run = true;
        let fs = diagnose(&i);
        assert_eq!(
            action(one(&fs, "idle in transaction")),
            "SELECT pg_terminate_backend(4713);"
        );
    }

    #[test]
    fn idle_in_transaction_mentions_what_it_blocks() {
        let mut i = with(vec![
            c(4711, "idle in transaction", 120),
            c(20, "active", 30),
        ]);
        i.lock_waits = vec![LockWait {
            pid: 20,
            blocked_by: vec![4711],
            ..Default::default()
        }];
        let fs = diagnose(&i);
        assert!(one(&fs, "idle in transaction")
            .evidence
            .contains("holds up 1 session"));
    }

    // --- slow queries ----------------------------------------------------------------------------

    #[test]
    fn slow_queries_are_cancelled_by_pid_oldest_first() {
        let mut mine = c(1, "active", 4000);
        mine.pid = 1; // the caller's own session
        let clients = vec![
            mine,
            c(4711, "active", 600),
            c(4712, "active", 900),
            c(3, "active", 10),
        ];
        let fs = diagnose(&with(clients));
        let rows = area(&fs, "slow queries");
        assert_eq!(rows.len(), 2, "{rows:#?}");
        assert_eq!(action(rows[0]), "SELECT pg_cancel_backend(4712);");
        assert_eq!(action(rows[1]), "SELECT pg_cancel_backend(4711);");
        assert!(rows[0].finding.contains("running for 15min"));
        assert!(
            rows[0].evidence.contains("\"select 4712\""),
            "{}",
            rows[0].evidence
        );
    }

    #[test]
    fn slow_queries_off_or_none() {
        let mut i = with(vec![c(4711, "active", 600)]);
        i.guard.slow_query_age = 0.0;
        let fs = diagnose(&i);
        assert_eq!(one(&fs, "slow queries").status, Status::Info);
        assert_eq!(one(&diagnose(&input()), "slow queries").status, Status::Ok);
    }

    #[test]
    fn slow_query_rows_are_bounded() {
        let fs = diagnose(&with((0..5).map(|p| c(10 + p, "active", 600)).collect()));
        let rows = area(&fs, "slow queries");
        assert_eq!(rows.len(), TOP);
        assert!(rows[0].evidence.contains("5 statements past 5min in all"));
    }

    // --- locks ------------------------------------------------------------------------------

    fn wait(pid: i32, by: &[i32], waited_s: i64) -> LockWait {
        LockWait {
            pid,
            blocked_by: by.to_vec(),
            locktype: Some("relation".into()),
            mode: Some("RowExclusiveLock".into()),
            relation: Some("orders".into()),
            wait_start: Some(NOW - waited_s * SECOND),
            leader_pid: 0,
        }
    }

    #[test]
    fn a_root_idle_in_transaction_is_terminated_and_an_active_one_cancelled() {
        let mut i = with(vec![
            c(4711, "idle in transaction", 100),
            c(21, "active", 90),
            c(22, "active", 80),
            c(5000, "active", 20),
            c(31, "active", 5),
        ]);
        i.lock_waits = vec![
            wait(21, &[4711], 90),
            wait(22, &[21], 80),
            wait(31, &[5000], 5),
        ];
        let fs = diagnose(&i);
        let rows = area(&fs, "locks");
        assert_eq!(rows.len(), 2, "{rows:#?}");
        assert_eq!(rows[0].status, Status::Critical);
        assert_eq!(action(rows[0]), "SELECT pg_terminate_backend(4711);");
        assert!(
            rows[0].finding.contains("pid 4711 holds up 2 sessions"),
            "{}",
            rows[0].finding
        );
        assert!(rows[0].evidence.contains("blocks 1 directly, 2 in all; longest wait 90s; waiting for RowExclusiveLock on relation \"orders\""), "{}", rows[0].evidence);
        assert_eq!(rows[1].status, Status::Info, "a 5s wait is ordinary");
        assert_eq!(action(rows[1]), "SELECT pg_cancel_backend(5000);");
    }

    #[test]
    fn lock_cycles_and_no_waits() {
        let mut i = with(vec![c(1, "active", 30), c(2, "active", 30)]);
        i.lock_waits = vec![wait(1, &[2], 20), wait(2, &[1], 20)];
        let fs = diagnose(&i);
        let l = one(&fs, "locks");
        assert_eq!(l.status, Status::Info);
        assert!(l.finding.contains("lock cycle"));
        assert_eq!(action(l), "SELECT pg_cancel_backend(1);");
        // a cycle of a second is the deadlock detector's to break: no action
        i.lock_waits = vec![wait(1, &[2], 1), wait(2, &[1], 1)];
        assert!(not_ok(&diagnose(&i), "locks").is_empty());
        assert_eq!(one(&diagnose(&input()), "locks").status, Status::Ok);
    }

    #[test]
    fn the_session_idle_in_transaction_that_holds_others_up_comes_first() {
        // four older sessions idle in transaction that hold up nobody, and a younger root of
        // five waiters
        let mut clients: Vec<Backend> = (0..4)
            .map(|p| c(10 + p, "idle in transaction", 3600 + i64::from(p)))
            .collect();
        clients.push(c(20, "idle in transaction", 120));
        clients.extend((0..5).map(|p| c(30 + p, "active", 60)));
        let mut i = with(clients);
        i.lock_waits = (0..5).map(|p| wait(30 + p, &[20], 60)).collect();
        let fs = diagnose(&i);
        let rows = area(&fs, "idle in transaction");
        assert!(rows[0].finding.starts_with("pid 20 "), "{rows:#?}");
        assert!(
            rows[0].evidence.contains("holds up 5 sessions"),
            "{}",
            rows[0].evidence
        );
    }

    #[test]
    fn an_action_the_caller_may_not_run_says_who_may_and_a_hidden_root_is_looked_at_first() {
        // a pg_monitor member: sees everything, may signal nobody
        let monitor = |i: &mut Input| {
            i.caller.is_superuser = false;
            i.caller.has_signal_backend = false;
            i.caller.member_of = vec![];
        };
        let mut i = with(vec![c(1, "idle in transaction", 600), c(2, "active", 400)]);
        i.guard.policy.idle_in_transaction_timeout = 0;
        i.guard.enabled = false;
        monitor(&mut i);
        i.caller.pid = 99;
        i.guard.slow_query_age = 60.0;
        let fs = diagnose(&i);
        for a in ["idle in transaction", "slow queries"] {
            let rows = not_ok(&fs, a);
            assert!(!rows.is_empty(), "{a}: {fs:#?}");
            assert!(
                rows[0].evidence.contains(
                    "may not signal this session: run the action as a member of pg_signal_backend"
                ),
                "{a}: {}",
                rows[0].evidence
            );
        }
        // a member of the sessions' role may: no note
        i.caller.member_of = vec!["web".into()];
        let fs = diagnose(&i);
        assert!(!not_ok(&fs, "slow queries")[0]
            .evidence
            .contains("may not signal"));

        // a plain role that cannot see the root: no cancel (it may be idle in its transaction,
        // where a cancel does nothing), a look first
        let mut root = c(1, "idle in transaction", 600);
        root.kind = Kind::Hidden;
        root.state = None;
        root.usename = None;
        let mut i = with(vec![root, c(2, "active", 30)]);
        i.lock_waits = vec![wait(2, &[1], 30)];
        monitor(&mut i);
        let l = not_ok(&diagnose(&i), "locks")[0].clone();
        assert!(l.finding.contains("hidden from this role"), "{}", l.finding);
        assert!(!action(&l).contains("pg_cancel_backend"), "{}", action(&l));
        assert!(
            action(&l).starts_with("SELECT pid, usename"),
            "{}",
            action(&l)
        );
    }

    #[test]
    fn a_root_of_brief_waits_or_idle_for_a_moment_is_ordinary_contention() {
        // pgbench: a transaction idle between two statements holds a row another waits for
        let mut i = with(vec![
            c(1, "idle in transaction", 0),
            c(2, "active", 0),
            c(3, "idle in transaction", 2),
            c(4, "active", 3),
        ]);
        i.lock_waits = vec![wait(2, &[1], 0), wait(4, &[3], 3)];
        let fs = diagnose(&i);
        assert!(not_ok(&fs, "locks").is_empty(), "{fs:#?}");
        assert!(area(&fs, "locks").iter().all(|f| f.action.is_none()));
        // nor is a session idle in transaction for a moment offered for termination, whatever
        // the warning age
        i.guard.thresholds.idle_in_transaction_age = 0.0;
        let fs = diagnose(&i);
        assert!(not_ok(&fs, "idle in transaction").is_empty(), "{fs:#?}");
        // a root idle for a minute whose waiter has waited 30 s is offered
        let mut i = with(vec![c(1, "idle in transaction", 60), c(2, "active", 30)]);
        i.lock_waits = vec![wait(2, &[1], 30)];
        let l = one(&diagnose(&i), "locks").clone();
        assert_eq!(l.status, Status::Warning);
        assert_eq!(action(&l), "SELECT pg_terminate_backend(1);");
        // a root idle for a minute whose waiter came a second ago: not yet
        i.lock_waits = vec![wait(2, &[1], 1)];
        assert!(not_ok(&diagnose(&i), "locks").is_empty());
        // a long transaction between two of its statements (idle for a moment) that has held
        // a lock for 20 minutes: a pile-up, never hidden as brief
        let mut root = c(1, "idle in transaction", 1);
        root.xact_start = Some(NOW - 1200 * SECOND);
        let mut i = with(vec![root, c(2, "active", 600)]);
        i.lock_waits = vec![wait(2, &[1], 600)];
        let l = not_ok(&diagnose(&i), "locks")[0].clone();
        assert_eq!(l.status, Status::Critical);
        assert_eq!(action(&l), "SELECT pg_terminate_backend(1);");
    }

    // --- error pattern -------------------------------------------------------------------------

    #[test]
    fn classify_shapes() {
        let f = |v: &[u32]| classify(&v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
        assert_eq!(f(&[5, 5]), None);
        assert_eq!(f(&[50, 51, 49, 50, 50, 52]), Some(Pattern::Constant));
        assert_eq!(f(&[7, 7, 7]), Some(Pattern::Constant));
        assert_eq!(f(&[40, 45, 43, 52, 58, 61, 70]), Some(Pattern::Increasing));
        assert_eq!(
            f(&[40, 41, 90, 40, 42, 95, 41]),
            Some(Pattern::Intermittent)
        );
        // a rise of 2 sessions is noise, not a leak
        assert_eq!(f(&[10, 10, 11, 11, 12]), Some(Pattern::Constant));
        // a step is not a trend: a scale-out in the middle of the window, with noise
        let mut step = vec![120u32, 122, 119, 121, 120, 118, 121];
        step.extend([300, 302, 299, 301, 300, 298, 301, 300]);
        assert_eq!(f(&step), Some(Pattern::Step(7)));
        // nor at a quarter or three quarters of it
        let early: Vec<u32> = (0..12).map(|k| if k < 3 { 120 } else { 300 }).collect();
        assert_eq!(f(&early), Some(Pattern::Step(3)));
        let late: Vec<u32> = (0..12).map(|k| if k < 9 { 120 } else { 300 }).collect();
        assert_eq!(f(&late), Some(Pattern::Step(9)));
        // a leak growing one session a sample is a trend, noisy or not
        let leak: Vec<u32> = (0..20).map(|k| 100 + 3 * k).collect();
        assert_eq!(f(&leak), Some(Pattern::Increasing));
        let noisy: Vec<u32> = (0..20).map(|k| 100 + 2 * k + (k % 3) * 3).collect();
        assert_eq!(f(&noisy), Some(Pattern::Increasing));
        // a leak that began within the window (flat, then a ramp) is not a step either
        let hockey: Vec<u32> = (0..60)
            .map(|k| if k < 45 { 100 } else { 100 + 2 * (k - 44) })
            .collect();
        assert!(
            !matches!(f(&hockey), Some(Pattern::Step(_))),
            "{:?}",
            f(&hockey)
        );
    }

    #[test]
    fn a_step_reads_as_a_change_of_level_with_its_time_not_as_a_leak() {
        let mut series = vec![120u32; 30];
        series.extend([300u32; 30]);
        // of 360 slots: 83% at the new level, high (warning) but not at the limit
        let mut i = with_series(&series);
        for s in &mut i.history.samples {
            s.utilization_pct = f64::from(s.clients.total()) / 3.6;
        }
        let fs = diagnose(&i);
        let e = one(&fs, "error pattern");
        assert_eq!(e.status, Status::Warning);
        assert!(e.finding.contains("from 120 to 300"), "{}", e.finding);
        assert!(!e.finding.contains("leak or"), "{}", e.finding);
        // the step's sample was taken 29 minutes ago (one a minute, the last one now)
        assert!(e.finding.contains("(29min ago)"), "{}", e.finding);
        assert!(
            action(e).contains("history_by_group_between(now() - interval '1800 seconds', now() - interval '1680 seconds')"),
            "{}",
            action(e)
        );
        // a step up to the limit is not called a change of level: a fast leak is as likely
        let mut full = vec![100u32; 30];
        full.extend([297u32; 30]);
        let mut i = with_series(&full);
        for s in &mut i.history.samples {
            s.utilization_pct = f64::from(s.clients.total()) / 3.0;
        }
        let e = one(&diagnose(&i), "error pattern").clone();
        assert!(e.finding.contains("sit at the limit"), "{}", e.finding);
        assert!(!e.finding.contains("not a leak"), "{}", e.finding);
        assert_eq!(action(&e), "SELECT * FROM dbconn_guard.leak_suspects;");
        // and a step down is no alarm
        series.reverse();
        assert!(not_ok(&diagnose(&with_series(&series)), "error pattern").is_empty());
    }

    fn with_series(series: &[u32]) -> Input {
        let mut i = input();
        let n = series.len() as i64;
        i.history.samples = series
            .iter()
            .enumerate()
            .map(|(k, &v)| sample((n - 1 - k as i64) * 60, v, 0))
            .collect();
        i
    }

    #[test]
    fn error_pattern_gives_the_runbooks_readings() {
        let fs = diagnose(&with_series(&[40, 45, 43, 52, 58, 61, 70]));
        let e = one(&fs, "error pattern");
        assert_eq!(e.status, Status::Warning);
        assert!(e.finding.contains("leak or an attack"));
        assert_eq!(action(e), "SELECT * FROM dbconn_guard.leak_suspects;");

        let fs = diagnose(&with_series(&[40, 41, 90, 40, 42, 95, 41]));
        let e = one(&fs, "error pattern");
        assert_eq!(e.status, Status::Warning, "peaks past 80%");
        assert!(e.finding.contains("resource contention"));
        assert!(action(e).contains("client_backends >= 68"), "{}", action(e));

        let fs = diagnose(&with_series(&[85, 86, 85, 86]));
        let e = one(&fs, "error pattern");
        assert_eq!(e.status, Status::Warning);
        assert!(e.finding.contains("configuration issue"));
        assert!(
            action(e).starts_with("ALTER SYSTEM SET max_connections = 120;"),
            "{}",
            action(e)
        );

        let fs = diagnose(&with_series(&[20, 21, 20, 20]));
        let e = one(&fs, "error pattern");
        assert_eq!(e.status, Status::Ok);
        assert!(e.evidence.contains("4 samples over 3min"), "{}", e.evidence);
    }

    #[test]
    fn error_pattern_without_history_says_why() {
        let fs = diagnose(&with_series(&[5, 5]));
        let e = one(&fs, "error pattern");
        assert_eq!(e.status, Status::Info);
        assert!(
            e.evidence.contains("not enough history: 2 sample(s)"),
            "{}",
            e.evidence
        );

        let mut i = input();
        i.history.enabled = false;
        i.history.samples.clear();
        let fs = diagnose(&i);
        let e = one(&fs, "error pattern");
        assert!(e.evidence.contains("history_size is 0"));
        assert!(action(e).contains("history_size = 8640"));

        let mut i = input();
        i.server.preloaded = false;
        i.server.shared_preload_libraries = Some("pg_stat_statements".into());
        i.history.enabled = false;
        i.history.samples.clear();
        let fs = diagnose(&i);
        let e = one(&fs, "error pattern");
        assert_eq!(
            action(e),
            "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements', 'dbconn_guard';  -- then restart PostgreSQL",
            "one literal per library: one literal with a comma would be one library name"
        );
        i.server.shared_preload_libraries = Some("auto_explain, \"$libdir/my, lib\"".into());
        let fs = diagnose(&i);
        assert_eq!(
            action(one(&fs, "error pattern")),
            "ALTER SYSTEM SET shared_preload_libraries = 'auto_explain', '$libdir/my, lib', 'dbconn_guard';  -- then restart PostgreSQL"
        );
        // listed already, not loaded: a restart is pending, nothing to add
        i.server.shared_preload_libraries = Some("pg_stat_statements, dbconn_guard".into());
        let fs = diagnose(&i);
        assert!(action(one(&fs, "guard")).contains("listed but not loaded: restart"));
    }

    // --- recent changes -----------------------------------------------------------------------

    #[test]
    fn a_reload_or_a_start_within_the_window_means_review_settings() {
        let mut i = input();
        i.server.setting_changes = None;
        i.server.conf_load_time = Some(NOW - 720 * SECOND);
        let fs = diagnose(&i);
        let r = one(&fs, "recent changes");
        assert_eq!(r.status, Status::Info);
        assert!(
            r.finding.contains("reloaded 12min ago: review settings"),
            "{}",
            r.finding
        );
        assert_eq!(action(r), REVIEW_SETTINGS);

        i.server.postmaster_start = Some(NOW - 1200 * SECOND);
        let fs = diagnose(&i);
        assert!(one(&fs, "recent changes")
            .finding
            .contains("started 20min ago"));
        // and new clients cannot be told apart from the restart
        assert!(area(&fs, "deployment")
            .iter()
            .any(|f| f.finding.starts_with("New clients not checked")));

        i.server.postmaster_start = None;
        i.server.conf_load_time = None;
        let fs = diagnose(&i);
        assert_eq!(one(&fs, "recent changes").status, Status::Info);
    }

    #[test]
    fn a_reload_names_the_settings_it_changed_from_what_to_what_and_when() {
        use crate::config_changes::Change;
        let change = |ago: i64, name: &str, old: &str, new: &str| TimedChange {
            at: NOW - ago * SECOND,
            change: Change {
                name: name.into(),
                old: old.into(),
                new: new.into(),
            },
        };
        let mut i = input();
        i.server.conf_load_time = Some(NOW - 180 * SECOND);
        // one before the window, one by an earlier reload in it, one by the last
        i.server.setting_changes = Some(vec![
            change(7200, "log_min_duration_statement", "-1", "1s"),
            change(1200, "maintenance_work_mem", "64MB", "1GB"),
            change(180, "work_mem", "4MB", "64MB"),
        ]);
        let fs = diagnose(&i);
        let r = one(&fs, "recent changes");
        assert_eq!(r.status, Status::Info);
        assert!(r.finding.contains("work_mem 4MB → 64MB"), "{}", r.finding);
        assert!(r.finding.contains("(3min ago)"), "{}", r.finding);
        assert!(!r.finding.contains("maintenance_work_mem"), "{}", r.finding);
        assert!(
            r.evidence.starts_with("2 setting change(s)"),
            "{}",
            r.evidence
        );
        assert!(action(r).contains("dbconn_guard.setting_changes()"));
        // a start in the window before the reload: the reload's changes are the newer story
        i.server.postmaster_start = Some(NOW - 600 * SECOND);
        let r = one(&diagnose(&i), "recent changes").clone();
        assert!(r.finding.contains("work_mem 4MB → 64MB"), "{}", r.finding);
        assert!(
            r.evidence.starts_with("1 setting change(s)"),
            "{}",
            r.evidence
        );
        i.server.postmaster_start = Some(NOW - 120 * SECOND);
        let r = one(&diagnose(&i), "recent changes").clone();
        assert!(r.finding.contains("started 2min ago"), "{}", r.finding);
        i.server.postmaster_start = Some(NOW - 240 * HOUR);
        // a reload that changed nothing is no finding, once the worker compared it
        i.server.setting_changes = Some(vec![change(7200, "work_mem", "4MB", "64MB")]);
        i.server.settings_compared_reload = NOW - 180 * SECOND;
        let fs = diagnose(&i);
        let r = one(&fs, "recent changes");
        assert_eq!(r.status, Status::Ok);
        assert!(r.finding.contains("changed no setting"), "{}", r.finding);
        // a reload the worker did not compare (it was away): review settings
        i.server.settings_compared_reload = NOW - 7200 * SECOND;
        let r = one(&diagnose(&i), "recent changes").clone();
        assert_eq!(r.status, Status::Info);
        assert!(r.evidence.contains("did not compare"), "{}", r.evidence);
    }

    #[test]
    fn a_new_application_in_the_history_means_deployment() {
        let mut i = input();
        let mut last = sample(0, 2, 3);
        last.groups.push(GroupSample {
            name: GroupName {
                datname: Some("app".into()),
                usename: Some("web".into()),
                application_name: Some("billing-v2".into()),
            },
            counts: counts(4, 0),
            other: false,
        });
        *i.history.samples.last_mut().unwrap() = last;
        let fs = diagnose(&i);
        let d = area(&fs, "deployment");
        assert_eq!(d[0].status, Status::Info);
        assert!(
            d[0].evidence.contains("application \"billing-v2\""),
            "{}",
            d[0].evidence
        );
        assert!(action(d[0]).contains("WHERE application_name = ANY (ARRAY['billing-v2'])"));
        // neither a group with no application name nor the DBA's own session is a deployment
        let mut quiet = input();
        let mut last = sample(0, 2, 3);
        let mut dba = app(c(77, "active", 0), "psql");
        dba.usename = Some("dba".into());
        quiet.snapshot.backends.push(dba);
        quiet.caller.pid = 77;
        for (app_name, user) in [(Some(""), "web"), (None, "web"), (Some("psql"), "dba")] {
            last.groups.push(GroupSample {
                name: GroupName {
                    datname: Some("app".into()),
                    usename: Some(user.into()),
                    application_name: app_name.map(Into::into),
                },
                counts: counts(1, 0),
                other: false,
            });
        }
        *quiet.history.samples.last_mut().unwrap() = last;
        let fs = diagnose(&quiet);
        assert!(not_ok(&fs, "deployment").is_empty(), "{fs:#?}");
        // a remainder in the oldest sample: cannot tell
        i.history.samples[0].groups.push(GroupSample {
            name: GroupName::default(),
            counts: counts(1, 0),
            other: true,
        });
        let fs = diagnose(&i);
        assert!(area(&fs, "deployment")[0].finding.contains("remainder"));
    }

    #[test]
    fn a_client_address_with_only_young_sessions_is_new() {
        let mut b = addr(c(50, "idle", 10), "10.9.9.9");
        b.backend_start = Some(NOW - 600 * SECOND);
        let mut clients = input().snapshot.backends;
        clients.push(b);
        let fs = diagnose(&with(clients));
        let d = area(&fs, "deployment");
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].status, Status::Info);
        assert!(
            d[1].evidence
                .contains("\"10.9.9.9\" (1 sessions, first 10min ago)"),
            "{}",
            d[1].evidence
        );
        assert!(action(d[1]).contains("client_addr = ANY (ARRAY['10.9.9.9']::inet[])"));
    }

    #[test]
    fn a_leak_is_one_story_the_pool_and_storm_rows_point_to() {
        // a leak: 30 sessions of "orders" idle for 15 minutes (past leak_idle_age), all opened
        // within the last minute of the history's view... as a pool they are oversized too
        let mut clients = input().snapshot.backends;
        clients.extend((0..30).map(|p| app(addr(c(100 + p, "idle", 900), "10.0.0.9"), "orders")));
        let fs = diagnose(&with(clients.clone()));
        assert_eq!(not_ok(&fs, "leaks").len(), 1, "{fs:#?}");
        let o = one(&fs, "oversized pool");
        assert_eq!(o.status, Status::Ok);
        assert!(o.finding.contains("see leaks"), "{}", o.finding);
        // a leak opening its sessions fast: the storm row points to it
        for b in clients.iter_mut().filter(|b| b.pid >= 100) {
            b.backend_start = Some(NOW - 30 * SECOND);
            b.state_change = Some(NOW - 20 * SECOND);
        }
        let mut i = with(clients);
        i.guard.leak_idle_age = 15.0;
        let fs = diagnose(&i);
        assert!(
            not_ok(&fs, "leaks")
                .iter()
                .any(|f| f.finding.contains("\"orders\"")),
            "{fs:#?}"
        );
        let s = one(&fs, "connection storm");
        assert_eq!(s.status, Status::Ok);
        assert!(
            s.finding.contains("\"orders\"") && s.finding.contains("see leaks"),
            "{}",
            s.finding
        );
    }

    #[test]
    fn a_burst_of_new_backends_is_a_connection_storm() {
        let mut clients = input().snapshot.backends;
        clients.extend((0..25).map(|p| {
            let mut b = c(100 + p, "idle", 1);
            b.backend_start = Some(NOW - 10 * SECOND);
            b
        }));
        let fs = diagnose(&with(clients));
        let s = one(&fs, "connection storm");
        assert_eq!(s.status, Status::Warning);
        assert!(
            s.finding.contains("25 new sessions in the last 60s"),
            "{}",
            s.finding
        );
        assert!(s.finding.contains("traffic spike"));
        // the culprit is in the finding
        assert!(
            s.finding
                .contains("25 of them from application \"api\" (\"10.0.0.1\")"),
            "{}",
            s.finding
        );
        // or a jump between two samples, named by the group that rose, still there...
        let mut i = with_series(&[10, 10, 40, 40]);
        i.snapshot
            .backends
            .extend((0..35).map(|p| c(400 + p, "idle", 200)));
        let fs = diagnose(&i);
        let s = one(&fs, "connection storm");
        assert_eq!(s.status, Status::Warning);
        assert!(s.evidence.contains("+30"), "{}", s.evidence);
        assert!(
            s.finding.contains("30 of them of application \"api\""),
            "{}",
            s.finding
        );
        // ... or over (its sessions gone): info
        let fs = diagnose(&with_series(&[10, 10, 40, 40]));
        let s = one(&fs, "connection storm");
        assert_eq!(s.status, Status::Info);
        assert!(s.finding.contains("over now"), "{}", s.finding);
        assert_eq!(
            one(&diagnose(&input()), "connection storm").status,
            Status::Ok
        );
    }

    // --- configuration ------------------------------------------------------------------------

    #[test]
    fn timeouts_advise_where_neither_covers_idle_in_transaction() {
        let mut i = input();
        i.guard.policy.idle_in_transaction_timeout = 0;
        let fs = diagnose(&i);
        let t = one(&fs, "timeouts");
        // configuration advice: nothing is wrong now
        assert_eq!(t.status, Status::Info);
        assert_eq!(action(t), enable_iit_action());
        assert!(t
            .evidence
            .contains("idle_in_transaction_session_timeout 0 (off)"));
        // not preloaded: PostgreSQL's own
        i.server.preloaded = false;
        let fs = diagnose(&i);
        assert_eq!(
            action(one(&fs, "timeouts")),
            "ALTER SYSTEM SET idle_in_transaction_session_timeout = '5min'; SELECT pg_reload_conf();"
        );
        // PostgreSQL's covers it
        i.server.idle_in_transaction_session_timeout = Some(600 * SECOND);
        assert_eq!(one(&diagnose(&i), "timeouts").status, Status::Ok);
        // the guard's rule does not count while it ends nothing
        let mut i = input();
        i.guard.enabled = false;
        assert_eq!(one(&diagnose(&i), "timeouts").status, Status::Info);
        // PostgreSQL 16: no transaction_timeout
        let mut i = input();
        i.server.transaction_timeout = None;
        assert!(one(&diagnose(&i), "timeouts")
            .evidence
            .contains("n/a (before PostgreSQL 17)"));
    }

    #[test]
    fn the_guard_not_preloaded_disabled_or_in_dry_run() {
        let mut i = input();
        i.guard.dry_run = true;
        let g = diagnose(&i);
        let g = one(&g, "guard");
        assert_eq!(
            (g.status, action(g)),
            (
                Status::Info,
                "ALTER SYSTEM SET dbconn_guard.dry_run = off; SELECT pg_reload_conf();"
            )
        );
        i.guard.enabled = false;
        let g = diagnose(&i);
        let g = one(&g, "guard");
        assert_eq!(g.status, Status::Warning);
        assert_eq!(
            action(g),
            "ALTER SYSTEM SET dbconn_guard.enabled = on; SELECT pg_reload_conf();"
        );
        i.server.preloaded = false;
        i.server.shared_preload_libraries = Some(String::new());
        let g = diagnose(&i);
        let g = one(&g, "guard");
        assert!(g.finding.contains("not preloaded"));
        assert!(
            action(g).starts_with("ALTER SYSTEM SET shared_preload_libraries = 'dbconn_guard';")
        );
        i.server.shared_preload_libraries = None;
        let g = diagnose(&i);
        assert!(action(one(&g, "guard")).starts_with("SHOW shared_preload_libraries;"));
    }

    #[test]
    fn a_guard_database_owned_by_a_plain_role_is_said_loudly() {
        let mut i = input();
        assert_eq!(one(&diagnose(&i), "guard").status, Status::Ok);
        i.worker.as_mut().unwrap().database_owner_not_superuser = Some("app_owner".into());
        let g = diagnose(&i);
        let g = one(&g, "guard");
        assert_eq!(g.status, Status::Warning);
        assert!(g.finding.contains("\"app_owner\""), "{}", g.finding);
        assert!(action(g).starts_with("ALTER SYSTEM SET dbconn_guard.database = 'postgres';"));
        // even in a dry run (the owner's reach does not depend on it)
        i.guard.dry_run = true;
        assert_eq!(one(&diagnose(&i), "guard").status, Status::Warning);
    }

    #[test]
    fn memory_states_what_is_checked_and_what_is_not() {
        let fs = diagnose(&input());
        let m = one(&fs, "memory");
        assert_eq!(m.status, Status::Ok);
        assert!(
            m.evidence.contains(
                "work_mem 4MB × max_connections 100 = 400MB, + shared_buffers 128MB = 528MB"
            ),
            "{}",
            m.evidence
        );
        assert!(m
            .evidence
            .contains("available RAM is not readable from SQL"));

        let mut i = input();
        i.limits.max_connections = 1000;
        let fs = diagnose(&i);
        let m = one(&fs, "memory");
        assert_eq!(m.status, Status::Info);
        assert!(
            action(m).starts_with("ALTER SYSTEM SET max_connections = 20;"),
            "{}",
            action(m)
        );
        // a standby with a lower max_connections than its primary's does not start: work_mem
        i.server.in_recovery = true;
        let fs = diagnose(&i);
        let m = one(&fs, "memory");
        assert!(!action(m).contains("max_connections"), "{}", action(m));
        assert!(
            action(m).starts_with("ALTER SYSTEM SET work_mem"),
            "{}",
            action(m)
        );
        // every slot used: work_mem instead
        let mut i = with(n_clients(95, "active"));
        i.server.work_mem = Some(64 * MB);
        let fs = diagnose(&i);
        assert_eq!(
            action(one(&fs, "memory")),
            "ALTER SYSTEM SET work_mem = '5MB'; SELECT pg_reload_conf();"
        );
        let mut i = input();
        i.server.work_mem = None;
        assert_eq!(one(&diagnose(&i), "memory").status, Status::Info);
    }

    #[test]
    fn pgbouncer_advice_when_most_connections_sit_idle() {
        let mut clients = n_clients(4, "active");
        clients.extend((0..26).map(|p| addr(c(100 + p, "idle", 30), &format!("10.1.0.{p}"))));
        let mut i = with(clients.clone());
        i.history.samples = vec![sample(120, 8, 20), sample(60, 11, 19), sample(0, 4, 26)];
        let fs = diagnose(&i);
        let p = one(&fs, "pgbouncer");
        assert_eq!(p.status, Status::Info);
        assert_eq!(
            action(p),
            "[pgbouncer]\npool_mode = transaction\ndefault_pool_size = 14"
        );
        assert!(
            p.evidence.contains("26 of 30 client sessions idle (87%)"),
            "{}",
            p.evidence
        );
        assert!(p
            .evidence
            .contains("11 sessions active or in a transaction"));
        // with a pooler in front: its pool size
        let behind: Vec<Backend> = clients.into_iter().map(|b| app(b, "pgbouncer")).collect();
        let fs = diagnose(&with(behind));
        assert_eq!(action(one(&fs, "pgbouncer")), "default_pool_size = 5");
        assert_eq!(one(&diagnose(&input()), "pgbouncer").status, Status::Ok);
    }

    fn pgbouncer_sessions() -> Vec<Backend> {
        let mut v: Vec<Backend> = (0..12)
            .map(|p| app(addr(c(100 + p, "idle", 30), "10.0.0.7"), "pgbouncer"))
            .collect();
        v.push(app(addr(c(200, "active", 1), "10.0.0.7"), "pgbouncer"));
        v
    }

    #[test]
    fn a_poolers_connections_are_kept_from_the_idle_timeout() {
        let mut i = with(pgbouncer_sessions());
        i.guard.policy.idle_timeout = 900 * SECOND;
        i.guard.policy.idle_timeout_overrides =
            Overrides::parse("user:etl=30min, app:\"a,b\"=1500ms").unwrap();
        let fs = diagnose(&i);
        let p = one(&fs, "pooler");
        assert_eq!(p.status, Status::Warning);
        assert!(
            p.finding.contains("idle_timeout (15min) ends them"),
            "{}",
            p.finding
        );
        assert!(p.evidence.contains("server_idle_timeout = 600"));
        let a = action(p);
        assert_eq!(
            a,
            "ALTER SYSTEM SET dbconn_guard.idle_timeout_overrides = 'user:web=0, user:etl=1800s, app:\"a,b\"=1500ms'; SELECT pg_reload_conf();"
        );
        // the list it sets parses, keeps the old items, and exempts the pooler
        let list = a.split('\'').nth(1).unwrap();
        let o = Overrides::parse(list).unwrap();
        assert_eq!(o.items().len(), 3);
        assert_eq!(o.timeout_for(&pgbouncer_sessions()[0]), Some(0));
        // the idle timeout off: nothing to warn about
        let mut i = with(pgbouncer_sessions());
        i.guard.policy.idle_timeout = 0;
        assert_eq!(one(&diagnose(&i), "pooler").status, Status::Ok);
        // excluded already
        let mut i = with(pgbouncer_sessions());
        i.guard.policy.idle_timeout = 900 * SECOND;
        i.guard.policy.scope.exclude_applications = PatternList::parse("pgbouncer").unwrap();
        assert_eq!(one(&diagnose(&i), "pooler").status, Status::Ok);
        assert_eq!(one(&diagnose(&input()), "pooler").status, Status::Ok);
    }

    #[test]
    fn a_pooler_takes_more_than_a_name_and_no_name_becomes_a_wildcard() {
        // one client that calls itself pgbouncer is no pooler
        let mut i = with(vec![app(addr(c(300, "idle", 30), "10.0.0.9"), "pgbouncer")]);
        i.guard.policy.idle_timeout = 900 * SECOND;
        let fs = diagnose(&i);
        let p = one(&fs, "pooler");
        assert_eq!(p.status, Status::Ok, "{}", p.finding);
        // a pool whose role is named `*`: `user:*=0` would exempt everyone
        let starred: Vec<Backend> = pgbouncer_sessions()
            .into_iter()
            .map(|mut b| {
                b.usename = Some("*".into());
                b.application_name = Some("pg*bouncer".into());
                b
            })
            .collect();
        let mut i = with(starred);
        i.guard.policy.idle_timeout = 900 * SECOND;
        let fs = diagnose(&i);
        let p = one(&fs, "pooler");
        let a = action(p);
        assert!(!a.contains("=0'"), "{a}");
        assert!(!a.contains("user:*"), "{a}");
        assert!(
            a.starts_with("SHOW dbconn_guard.idle_timeout_overrides;"),
            "{a}"
        );
    }

    #[test]
    fn a_many_sessions_client_may_be_a_pooler() {
        let clients: Vec<Backend> = pgbouncer_sessions()
            .into_iter()
            .map(|b| app(b, ""))
            .collect();
        let mut i = with(clients);
        i.guard.policy.idle_timeout = 900 * SECOND;
        let fs = diagnose(&i);
        let p = one(&fs, "pooler");
        assert_eq!(p.status, Status::Info);
        // no application name to key on: the user
        assert_eq!(
            action(p),
            "ALTER SYSTEM SET dbconn_guard.idle_timeout_overrides = 'user:web=0'; SELECT pg_reload_conf();"
        );
    }

    // --- worker -------------------------------------------------------------------------------

    #[test]
    fn worker_problems_each_get_a_row() {
        let mut i = input();
        {
            let w = i.worker.as_mut().unwrap();
            w.running = false;
            w.extension_ready = false;
            w.database = "postgres".into();
            w.last_error = Some("could not connect\nto database".into());
            w.last_error_at = Some(NOW - 30 * SECOND);
        }
        let fs = diagnose(&i);
        let rows = area(&fs, "worker");
        assert_eq!(rows.len(), 3, "{rows:#?}");
        assert_eq!(rows[0].status, Status::Warning);
        assert!(
            rows[0]
                .evidence
                .contains("last error \"could not connect to database\" 30s ago"),
            "{}",
            rows[0].evidence
        );
        assert_eq!(
            action(rows[1]),
            "psql -d 'postgres' -c 'CREATE EXTENSION dbconn_guard;'"
        );
        assert_eq!(rows[2].status, Status::Info);
        assert!(rows[2]
            .finding
            .contains("attached to database \"postgres\""));

        // running, with an error in the window
        let mut i = input();
        i.worker.as_mut().unwrap().last_error = Some("boom".into());
        i.worker.as_mut().unwrap().last_error_at = Some(NOW - 60 * SECOND);
        let fs = diagnose(&i);
        assert_eq!(one(&fs, "worker").status, Status::Warning);
        // an old error: ok, said
        i.worker.as_mut().unwrap().last_error_at = Some(NOW - 3 * HOUR);
        let fs = diagnose(&i);
        let w = one(&fs, "worker");
        assert_eq!(w.status, Status::Ok);
        assert!(w.evidence.contains("outside the window"));
    }

    #[test]
    fn no_preload_says_what_could_not_be_checked() {
        let mut i = input();
        i.server.preloaded = false;
        i.worker = None;
        i.history = History {
            enabled: false,
            window: HOUR,
            samples: vec![],
            hidden_from_caller: false,
        };
        let fs = diagnose(&i);
        let w = one(&fs, "worker");
        assert_eq!(w.status, Status::Info);
        assert!(w.finding.contains("not preloaded"));
        assert_eq!(one(&fs, "error pattern").status, Status::Info);
        assert_eq!(area(&fs, "deployment")[0].status, Status::Info);
        assert_eq!(one(&fs, "guard").status, Status::Warning);
        // the actions that end sessions fall back to pg_stat_activity
        let mut clients = vec![c(1, "active", 1)];
        clients.extend((0..4).map(|p| c(10 + p, "idle", 900)));
        i.snapshot = snapshot(clients);
        let fs = diagnose(&i);
        assert!(action(one(&fs, "leaks"))
            .starts_with("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"));
    }

    // --- visibility ------------------------------------------------------------------------------

    #[test]
    fn hidden_sessions_say_which_role_shows_them() {
        let mut i = input();
        i.caller.has_read_all_stats = false;
        i.caller.hidden_backends = 4;
        i.caller.role = "app_ro".into();
        let fs = diagnose(&i);
        let v = one(&fs, "visibility");
        assert_eq!(v.status, Status::Warning);
        assert_eq!(action(v), "GRANT pg_read_all_stats TO \"app_ro\";");
        // a few of many: info
        let mut i = with(n_clients(60, "active"));
        i.caller.has_read_all_stats = false;
        i.caller.hidden_backends = 2;
        assert_eq!(one(&diagnose(&i), "visibility").status, Status::Info);
        // hidden backends in the snapshot count too
        let mut h = c(9, "idle", 5);
        h.kind = Kind::Hidden;
        let mut i = with(vec![h]);
        i.caller.has_read_all_stats = false;
        let fs = diagnose(&i);
        assert_eq!(one(&fs, "visibility").status, Status::Warning);
        assert!(one(&fs, "pool")
            .evidence
            .contains("1 backends hidden from this role are not counted"));
    }

    // --- quoting ---------------------------------------------------------------------------------

    /// The statements of `sql` (split at `;` outside literals, quoted identifiers and `--`
    /// comments), each with its literals and identifiers blanked to `?`.
    fn statements(sql: &str) -> Vec<String> {
        let ch: Vec<char> = sql.chars().collect();
        let mut out = vec![String::new()];
        let mut i = 0;
        while i < ch.len() {
            let cur = out.last_mut().unwrap();
            match ch[i] {
                '-' if ch.get(i + 1) == Some(&'-') => {
                    while i < ch.len() && ch[i] != '\n' {
                        i += 1;
                    }
                }
                '\'' => {
                    let escapes = cur.ends_with('E');
                    if escapes {
                        cur.pop();
                    }
                    i += 1;
                    loop {
                        assert!(i < ch.len(), "unterminated literal in {sql}");
                        match ch[i] {
                            '\\' if escapes => i += 2,
                            '\'' if ch.get(i + 1) == Some(&'\'') => i += 2,
                            '\'' => break,
                            _ => i += 1,
                        }
                    }
                    cur.push('?');
                    i += 1;
                }
                '"' => {
                    i += 1;
                    loop {
                        assert!(i < ch.len(), "unterminated identifier in {sql}");
                        match ch[i] {
                            '"' if ch.get(i + 1) == Some(&'"') => i += 2,
                            '"' => break,
                            _ => i += 1,
                        }
                    }
                    cur.push('?');
                    i += 1;
                }
                ';' => {
                    out.push(String::new());
                    i += 1;
                }
                c => {
                    cur.push(c);
                    i += 1;
                }
            }
        }
        out.into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    const HOSTILE: &str = "'); DROP TABLE x; --";

    fn assert_single_intended(sql: &str, n: usize) {
        let st = statements(sql);
        assert_eq!(st.len(), n, "{sql} -> {st:?}");
        for s in &st {
            assert!(!s.to_uppercase().contains("DROP"), "{sql} -> {s}");
            let first = s.split_whitespace().next().unwrap_or("");
            assert!(
                ["SELECT", "ALTER", "GRANT", "SHOW"].contains(&first),
                "{sql} -> {s}"
            );
        }
    }

    #[test]
    fn sql_quoting() {
        assert_eq!(sql_literal("api"), "'api'");
        assert_eq!(sql_literal(HOSTILE), "'''); DROP TABLE x; --'");
        assert_eq!(sql_literal("a\\'b"), "E'a\\\\''b'");
        assert_eq!(sql_literal("x\ny\u{1}"), "E'x\\ny\\u0001'");
        assert_eq!(sql_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(
            statements(&format!("SELECT {};", sql_literal("a\\'; DROP x; --"))),
            vec!["SELECT ?"]
        );
    }

    #[test]
    fn hostile_names_never_become_another_statement() {
        let evil = |b: Backend| app(b, HOSTILE);
        // leaks, oversized pool, pool: terminate_idle with the name as a literal
        let mut clients: Vec<Backend> = (0..12)
            .map(|p| evil(addr(c(10 + p, "idle", 900), "10.0.0.5")))
            .collect();
        // a pool larger than its work that is no leak (idle past idle_warning_age, not past
        // leak_idle_age): the leak's own sessions are the leaks row's story
        clients.extend((0..12).map(|p| evil(addr(c(60 + p, "idle", 400), "10.0.0.6"))));
        clients.push(evil(c(40, "active", 1)));
        let mut i = with(clients.clone());
        i.guard.policy.idle_timeout = 900 * SECOND;
        i.caller.role = "x\"; DROP ROLE y; --".into();
        i.caller.has_read_all_stats = false;
        i.caller.hidden_backends = 5;
        let mut last = sample(0, 2, 3);
        last.groups[0].name.application_name = Some(HOSTILE.into());
        i.history.samples.push(last);
        let fs = diagnose(&i);
        let mut checked = 0;
        for f in &fs {
            let Some(a) = f.action.as_deref() else {
                continue;
            };
            let n = match f.area {
                "pgbouncer" => continue,
                _ if a.starts_with("psql ") => continue,
                _ => a.matches("pg_reload_conf").count() + 1,
            };
            assert_single_intended(a, n);
            checked += 1;
        }
        for a in [
            "oversized pool",
            "leaks",
            "pooler",
            "deployment",
            "visibility",
        ] {
            assert!(
                !not_ok(&fs, a).is_empty(),
                "{a} should fire: {:#?}",
                area(&fs, a)
            );
        }
        // oversized pool, leaks, deployment, visibility, and a pooler row per client address
        assert_eq!(checked, 6, "{fs:#?}");
        // without the worker, the pg_stat_activity form too
        let mut i = with(clients);
        i.worker = None;
        for f in diagnose(&i).iter().filter(|f| f.area == "leaks") {
            assert_single_intended(action(f), 1);
        }
        // a hostile database name stays one shell word
        let mut i = input();
        i.worker.as_mut().unwrap().extension_ready = false;
        i.worker.as_mut().unwrap().database = "x'; rm -rf /; '".into();
        let fs = diagnose(&i);
        let a = action(area(&fs, "worker")[0]);
        assert_eq!(
            a,
            "psql -d 'x'\\''; rm -rf /; '\\''' -c 'CREATE EXTENSION dbconn_guard;'"
        );
    }

    #[test]
    fn hostile_names_in_evidence_are_quoted() {
        let fs = diagnose(&with(
            (0..4)
                .map(|p| app(c(10 + p, "idle", 900), "x\"\nLOG: fake"))
                .collect(),
        ));
        let l = one(&fs, "leaks");
        assert!(
            l.evidence.contains("\"x\\\"\\nLOG: fake\""),
            "{}",
            l.evidence
        );
        assert!(!l.evidence.contains('\n'));
    }

    // --- every fixture ----------------------------------------------------------------------------

    /// Every state the tests use, and a few odd ones: none panics, every non-ok row has one
    /// action, steps ascend.
    #[test]
    fn every_non_ok_row_has_an_action_in_every_state() {
        let mut states: Vec<Input> = vec![
            input(),
            with(vec![]),
            with(n_clients(97, "active")),
            with(n_clients(40, "idle in transaction")),
            with(pgbouncer_sessions()),
            with_series(&[40, 45, 43, 52, 58, 61, 70]),
            with_series(&[40, 41, 90, 40, 42, 95, 41]),
            with_series(&[85, 86, 85, 86]),
            with_series(&[1]),
        ];
        let mut odd = input();
        odd.limits = Limits::default();
        odd.server = Server::default();
        odd.worker = None;
        odd.history = History::default();
        odd.caller = Caller::default();
        odd.guard.leak_trend_samples = 0;
        odd.guard.slow_query_age = -1.0;
        states.push(odd);
        let mut standby = with(n_clients(30, "idle"));
        standby.server.in_recovery = true;
        standby.worker.as_mut().unwrap().running = false;
        states.push(standby);
        let mut locked = with(vec![c(4711, "idle in transaction", 100), c(2, "active", 5)]);
        locked.lock_waits = vec![
            wait(2, &[4711], 100),
            wait(3, &[2], 1),
            wait(4, &[5], 1),
            wait(5, &[4], 1),
        ];
        locked.guard.policy.idle_in_transaction_timeout = 0;
        states.push(locked);
        let mut weird_clock = input();
        weird_clock.snapshot.backends.push(Backend {
            pid: 77,
            kind: Kind::Client,
            ..Default::default()
        });
        weird_clock.history.samples.reverse();
        weird_clock.history.window = -5;
        states.push(weird_clock);
        for (n, i) in states.iter().enumerate() {
            let fs = diagnose(i);
            assert!(fs.len() >= 19, "state {n}");
            for (k, f) in fs.iter().enumerate() {
                assert_eq!(f.step, k as i32 + 1);
                assert!(
                    !f.finding.is_empty() && !f.evidence.is_empty(),
                    "state {n}: {f:#?}"
                );
                if f.status != Status::Ok {
                    let a = f
                        .action
                        .as_deref()
                        .unwrap_or_else(|| panic!("state {n}: {f:#?}"));
                    assert!(!a.trim().is_empty());
                }
            }
            let mut areas: Vec<&str> = fs.iter().map(|f| f.area).collect();
            areas.dedup();
            assert_eq!(&areas[..ORDER.len()], &ORDER[..], "state {n}");
        }
    }

    #[test]
    fn text_helpers() {
        assert_eq!(dur(45.0), "45s");
        assert_eq!(dur(720.0), "12min");
        assert_eq!(dur(3.0 * 3600.0 + 300.0), "3h 5min");
        assert_eq!(dur(7200.0), "2h");
        assert_eq!(dur(2.0 * 86400.0 + 3.0 * 3600.0), "2d 3h");
        assert_eq!(dur(f64::NAN), "0s");
        assert_eq!(bytes(4 * MB), "4MB");
        assert_eq!(bytes(1536 * MB), "1.5GB");
        assert_eq!(bytes(512), "512B");
        assert_eq!(truncate("a\n  b   c", 80), "a b c");
        assert_eq!(truncate("abcdef", 3), "abc…");
    }

    #[test]
    fn pgbouncers_session_pool_is_recognised_by_its_reset_query() {
        // what a session pool's idle server connections look like (measured with pgbouncer
        // 1.18): no application_name, last query DISCARD ALL
        let mut v: Vec<Backend> = (0..4)
            .map(|p| {
                let mut b = app(addr(c(100 + p, "idle", 30), "10.0.0.9"), "");
                b.query = Some("DISCARD ALL".into());
                b
            })
            .collect();
        v.push(app(addr(c(200, "active", 1), "10.0.0.9"), ""));
        let mut i = with(v);
        i.guard.policy.idle_timeout = 900 * SECOND;
        let fs = diagnose(&i);
        let p = one(&fs, "pooler");
        assert_eq!(p.status, Status::Warning, "{p:?}");
        assert!(p.evidence.contains("DISCARD ALL"), "{}", p.evidence);
        assert!(
            action(p).contains("'user:web=0'"),
            "the pooler's role is exempted: {}",
            action(p)
        );
    }

    #[test]
    fn a_history_hidden_from_the_caller_is_said_to_be_hidden() {
        let mut i = input();
        i.history.samples.clear();
        i.history.hidden_from_caller = true;
        i.caller.role = "app".into();
        let fs = diagnose(&i);
        let e = one(&fs, "error pattern");
        assert!(
            e.evidence.contains("not readable by \"app\""),
            "{}",
            e.evidence
        );
        assert!(
            action(e).starts_with("GRANT pg_monitor TO \"app\";"),
            "{}",
            action(e)
        );
    }
}
