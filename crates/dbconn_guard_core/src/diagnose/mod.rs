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
//!
//! This file holds the input, the output, the thresholds and the tree's order; the branches
//! are grouped by what they look at: `pool` (connect, pool, consumers, oversized pools, leaks),
//! `sessions` (idle in transaction, slow queries), `locks`, `changes` (error pattern, reloads,
//! deployments, storms), `configuration`, `worker` (the worker and visibility); `actions` is
//! where names become SQL, `format` how numbers and times read.

use crate::blocking::{self, Chain, LockWait};
use crate::config_changes::TimedChange;
use crate::health::{self, Thresholds};
use crate::history::{self, GroupName, Sample, StateCounts};
use crate::leaks;
use crate::overrides::{Key, Overrides};
use crate::policy::{
    self, Policy, Protection, CLIENT_TOOLS, IDLE, IDLE_IN_TRANSACTION, IDLE_IN_TRANSACTION_ABORTED,
};
use crate::quote::{list_item, quoted, quoted_or};
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
    /// The guard's latest actions (the worker's ring of its last terminations and cancels,
    /// `recent_terminations()`), for a caller who may read the history; empty otherwise.
    pub guard_actions: Vec<GuardAction>,
}

/// One session the guard ended, or one statement it cancelled.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GuardAction {
    pub at: Micros,
    pub pid: i32,
    /// The session's `backend_start`: a pid is reused by later sessions.
    pub backend_start: Micros,
    /// The audit's rule name (`blocker_cancel`, `idle_timeout`, ...).
    pub rule: String,
    /// A dry run's record: nothing was signalled.
    pub dry_run: bool,
    /// The statement it ran (`query_id`, 0: none; its text, when the audit keeps texts).
    pub query_id: i64,
    pub query: Option<String>,
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
    /// argument; 0 or less: not checked). `None`: relative to this server's statements (see
    /// `sessions::slow_threshold`).
    pub slow_query_age: Option<f64>,
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

pub use crate::status::Status;

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
    /// Who the finding is about, when it is about someone: the culprit it names.
    pub culprit: Option<Culprit>,
    /// What pasting `action` does.
    pub action_kind: ActionKind,
    /// One story per incident: the area of the row that tells it, when this row points there
    /// rather than diagnose the same sessions again (its finding says "see ...").
    pub see: Option<&'static str>,
    /// What the row reads the evidence as (a leak, a step, a lock cycle, ...): the reading a
    /// tool or a test can rely on, whatever the finding's words. `None` for rows that only
    /// report a state or give advice.
    pub reading: Option<Reading>,
}

/// What a finding reads its evidence as: the kind of incident or state it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// A group holds idle sessions past `leak_idle_age`.
    Leak,
    /// A group's idle sessions keep growing, sample after sample.
    LeakGrowing,
    /// Client connections stepped to another level and stayed there (a scale-out, a
    /// deployment, a pool resized): not a leak.
    Step,
    /// Client connections stepped up to the limit and sit there: a fast leak or too many
    /// clients.
    StepToLimit,
    /// A steady rise: the runbook's "leak or attack".
    SteadyRise,
    /// Spikes well above the usual level: the runbook's "resource contention".
    Spikes,
    /// Constantly high: the runbook's "configuration issue".
    HighLevel,
    /// Many new sessions within a minute: a traffic spike.
    Storm,
    /// A storm in the last samples whose sessions are gone.
    StormOver,
    /// Connections that open and end steadily, sample after sample: a client that connects
    /// per request without a pool.
    SteadyChurn,
    /// Applications that were not connected before the window.
    NewApplications,
    /// Client addresses that were not connected before the window.
    NewClients,
    /// A root blocker holds up a pile-up.
    RootBlocker,
    /// An active root holds up a pile-up again after the guard cancelled its statement: its
    /// client retries, or the statement ignores the cancel.
    RootReturns,
    /// Sessions wait on each other (a deadlock not yet detected).
    LockCycle,
    /// A statement queued for a relation lock holds up those queued behind it.
    QueuedStatement,
    /// The culprit's state is hidden from the calling role.
    HiddenState,
    /// A session the guard should have ended by now is still there: the worker lags.
    PastGuardDeadline,
    /// A session that holds up work now, which the guard protects.
    ProtectedHoldsUpWork,
    /// A session that holds up work now, which a timeout would end only later.
    HoldsUpWork,
    /// Statements running past the slow-query threshold.
    SlowQueries,
    /// A reload changed these settings.
    SettingsChanged,
    /// A reload whose changes cannot be named.
    ReloadUnnamed,
    /// A reload that changed no setting.
    ReloadChangedNothing,
    /// The server started within the window.
    ServerStarted,
    /// dbconn_guard is not in `shared_preload_libraries`.
    NotPreloaded,
}

/// Who a finding is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Culprit {
    /// One session (a root blocker, a session idle in transaction, a slow statement).
    Session(i32),
    /// A group of client sessions, by its application_name (the empty name for none): a
    /// leak, a slow group, a storm, the group that holds the idle slots.
    Application(String),
}

/// What pasting a finding's action does: the kind of statement it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionKind {
    /// No action (an `ok` row).
    None,
    /// Reads: a look before acting, or the context of a finding.
    Look,
    /// `pg_terminate_backend(pid)`: ends one session.
    EndSession,
    /// `pg_cancel_backend(pid)`: cancels one session's statement.
    CancelStatement,
    /// `terminate_idle(...)`: ends a group's idle sessions through the guard's kill path.
    EndIdleThroughGuard,
    /// `cancel_statements(...)`: cancels a group's statements through the guard's kill path.
    CancelThroughGuard,
    /// `pg_terminate_backend()` or `pg_cancel_backend()` over `pg_stat_activity`: a group,
    /// without the guard (where its functions cannot work or its protections cover the group).
    SignalOverActivity,
    /// A setting: `ALTER SYSTEM`, `ALTER ROLE`, `ALTER DATABASE`, or pgbouncer's configuration.
    Setting,
    /// `GRANT`: lets the caller see or do more.
    Grant,
}

impl Reading {
    /// Every reading, in the order above.
    pub const ALL: [Reading; 26] = [
        Reading::Leak,
        Reading::LeakGrowing,
        Reading::Step,
        Reading::StepToLimit,
        Reading::SteadyRise,
        Reading::Spikes,
        Reading::HighLevel,
        Reading::Storm,
        Reading::StormOver,
        Reading::SteadyChurn,
        Reading::NewApplications,
        Reading::NewClients,
        Reading::RootBlocker,
        Reading::RootReturns,
        Reading::LockCycle,
        Reading::QueuedStatement,
        Reading::HiddenState,
        Reading::PastGuardDeadline,
        Reading::ProtectedHoldsUpWork,
        Reading::HoldsUpWork,
        Reading::SlowQueries,
        Reading::SettingsChanged,
        Reading::ReloadUnnamed,
        Reading::ReloadChangedNothing,
        Reading::ServerStarted,
        Reading::NotPreloaded,
    ];

    /// The reading's name in `diagnose()`'s `reading` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Reading::Leak => "leak",
            Reading::LeakGrowing => "leak_growing",
            Reading::Step => "step",
            Reading::StepToLimit => "step_to_limit",
            Reading::SteadyRise => "steady_rise",
            Reading::Spikes => "spikes",
            Reading::HighLevel => "high_level",
            Reading::Storm => "storm",
            Reading::StormOver => "storm_over",
            Reading::SteadyChurn => "steady_churn",
            Reading::NewApplications => "new_applications",
            Reading::NewClients => "new_clients",
            Reading::RootBlocker => "root_blocker",
            Reading::RootReturns => "root_returns",
            Reading::LockCycle => "lock_cycle",
            Reading::QueuedStatement => "queued_statement",
            Reading::HiddenState => "hidden_state",
            Reading::PastGuardDeadline => "past_guard_deadline",
            Reading::ProtectedHoldsUpWork => "protected_holds_up_work",
            Reading::HoldsUpWork => "holds_up_work",
            Reading::SlowQueries => "slow_queries",
            Reading::SettingsChanged => "settings_changed",
            Reading::ReloadUnnamed => "reload_unnamed",
            Reading::ReloadChangedNothing => "reload_changed_nothing",
            Reading::ServerStarted => "server_started",
            Reading::NotPreloaded => "not_preloaded",
        }
    }
}

impl ActionKind {
    /// The kind's name in `diagnose()`'s `action_kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::None => "none",
            ActionKind::Look => "look",
            ActionKind::EndSession => "end_session",
            ActionKind::CancelStatement => "cancel_statement",
            ActionKind::EndIdleThroughGuard => "end_idle_through_guard",
            ActionKind::CancelThroughGuard => "cancel_through_guard",
            ActionKind::SignalOverActivity => "signal_over_activity",
            ActionKind::Setting => "setting",
            ActionKind::Grant => "grant",
        }
    }

    /// The kind of the action text `a` (as the tree writes its actions).
    pub fn of(a: &str) -> ActionKind {
        let a = a.trim_start();
        let starts = |p: &str| a.starts_with(p);
        if starts("SELECT * FROM dbconn_guard.terminate_idle(") {
            ActionKind::EndIdleThroughGuard
        } else if starts("SELECT * FROM dbconn_guard.cancel_statements(") {
            ActionKind::CancelThroughGuard
        } else if starts("SELECT pg_terminate_backend(pid) FROM pg_stat_activity")
            || starts("SELECT pg_cancel_backend(pid) FROM pg_stat_activity")
        {
            ActionKind::SignalOverActivity
        } else if starts("SELECT pg_terminate_backend(") {
            ActionKind::EndSession
        } else if starts("SELECT pg_cancel_backend(") {
            ActionKind::CancelStatement
        } else if starts("ALTER SYSTEM")
            || starts("ALTER ROLE")
            || starts("ALTER DATABASE")
            || starts("[pgbouncer]")
        {
            ActionKind::Setting
        } else if starts("GRANT") {
            ActionKind::Grant
        } else {
            ActionKind::Look
        }
    }
}

impl Finding {
    /// The finding, naming `who`.
    fn about(mut self, who: Culprit) -> Finding {
        self.culprit = Some(who);
        self
    }

    /// The finding reads its evidence as `r`.
    fn reads(mut self, r: Reading) -> Finding {
        self.reading = Some(r);
        self
    }

    /// This row points to the row of `area`, which tells the incident's story.
    fn points_to(mut self, area: &'static str) -> Finding {
        self.see = Some(area);
        self
    }
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
/// Steady churn: at least this many connections a second open and end, as the median over the
/// window's samples (a pooled application opens next to none once warm) ...
pub const CHURN_MIN_RATE: f64 = 5.0;
/// ... a warning from this many: a process start and an authentication per request.
pub const CHURN_WARN_RATE: f64 = 20.0;
/// Sessions younger than this are a churning client's (a session per request lives for well
/// under this).
pub const CHURN_YOUNG_SECS: f64 = 10.0;
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
/// A root "came back" after the guard cancelled its statement when that cancel was this
/// recent (a retry loop comes back within seconds; a cancel long ago is another episode).
pub const ROOT_RETURNS_WITHIN: Micros = 10 * 60 * SECOND;

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
    let branches: [fn(&Ctx) -> Vec<Finding>; 21] = [
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
        connection_churn,
        timeouts,
        guard_state,
        memory,
        pgbouncer,
        pooler,
        worker,
        visibility,
    ];
    let rows: Vec<Finding> = branches.iter().flat_map(|b| b(&c)).collect();
    // a row that says "see <area>" points to that area's row, which is there
    debug_assert!(
        rows.iter().all(|f| match f.see {
            Some(a) =>
                (f.finding.ends_with(&format!("see {a}")) || a == f.area)
                    && rows.iter().any(|g| g.area == a && !std::ptr::eq(g, f)),
            None => !f.finding.contains(": see "),
        }),
        "a pointer row without its `see`, or a `see` without its row"
    );
    // the incident in one line first, then the tree
    let mut out = vec![incident(&rows)];
    out.extend(rows);
    for (i, f) in out.iter_mut().enumerate() {
        f.step = i as i32 + 1;
    }
    out
}

/// The areas of findings that are an incident in progress, most harmful first: slots running
/// out, work held up, slots held by what does no work, then what arrived or changed.
const HARM: [&str; 11] = [
    "pool",
    "locks",
    // an open transaction holds locks (and the row ends the root of a pile-up)
    "idle in transaction",
    "leaks",
    "slow queries",
    "connection storm",
    "connection churn",
    "oversized pool",
    "error pattern",
    "recent changes",
    "worker",
];

/// The first row: the most harmful finding that is `warning` or `critical` (critical first,
/// then by [`HARM`], then in the tree's order), in one line with its action, so the first row
/// that is not ok names the incident and its culprit; `ok` when nothing is wrong now.
fn incident(rows: &[Finding]) -> Finding {
    let rank = |f: &Finding| {
        (
            std::cmp::Reverse(f.status),
            HARM.iter().position(|a| *a == f.area).unwrap_or(HARM.len()),
        )
    };
    let alarms: Vec<&Finding> = rows
        .iter()
        .filter(|f| f.status >= Status::Warning)
        .collect();
    let Some(worst) = alarms.iter().copied().min_by_key(|f| rank(f)) else {
        let info = rows.iter().filter(|f| f.status == Status::Info).count();
        return ok(
            "incident",
            "No incident: nothing is wrong now",
            format!("no row is warning or critical; {info} rows are info (advice or context)"),
        );
    };
    let mut others: Vec<&str> = alarms
        .iter()
        .filter(|f| !std::ptr::eq(**f, worst))
        .map(|f| f.area)
        .collect();
    others.dedup();
    Finding {
        step: 0,
        area: "incident",
        finding: worst.finding.clone(),
        status: worst.status,
        evidence: if others.is_empty() {
            format!(
                "from the {} row below, the only one that is warning or critical",
                worst.area
            )
        } else {
            format!(
                "from the {} row below; also warning or critical: {}",
                worst.area,
                others.join(", ")
            )
        },
        action: worst.action.clone(),
        culprit: worst.culprit.clone(),
        action_kind: worst.action_kind,
        see: worst.see,
        reading: worst.reading,
    }
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
    /// `terminate_idle()` and `cancel_statements()` work: preloaded, the guard enabled (they
    /// obey its gates), worker running, extension in its database, and the caller may run them.
    terminate_idle_works: bool,
    chains: Vec<Chain>,
    /// Seconds after which an active statement is slow (0 or less: not checked), and how that
    /// was chosen, for the rows.
    slow_limit: f64,
    slow_basis: String,
    /// The leak suspects (what the `leaks` row reports): one story per incident, so the
    /// other rows point to them rather than diagnose the same sessions again.
    leaks: Vec<leaks::SuspectRow>,
    /// Steady connection churn over the window, if any: the storm row points to it.
    churn: Option<changes::SteadyChurn>,
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
        let leak_rows = leaks::suspects_with_trend(
            &i.snapshot,
            g.leak_idle_age,
            window,
            history::previous_sample_time(&samples),
            |n| history::idle_series(&samples, n, window),
        )
        .into_iter()
        .filter(|r| r.reason == "growing" || r.group.connection_count >= LEAK_MIN_SESSIONS)
        .collect();
        let mut c = Ctx {
            leaks: leak_rows,
            i,
            now: i.snapshot.now,
            util: utilization::utilization(&i.snapshot, i.limits),
            clients: i.snapshot.clients().collect(),
            samples,
            guard_ending: i.server.preloaded && i.guard.enabled && !i.guard.dry_run && running,
            terminate_idle_works: i.server.preloaded
                && i.guard.enabled
                && running
                && i.worker.as_ref().is_some_and(|w| w.extension_ready)
                && !i.caller.lacks_terminate_idle,
            chains: blocking::chains(&i.lock_waits),
            slow_limit: 0.0,
            slow_basis: String::new(),
            churn: None,
        };
        (c.slow_limit, c.slow_basis) = sessions::slow_threshold(&c);
        c.churn = changes::steady_churn(&c);
        c
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

    /// Whether the leak suspects include a group of this user and application (any client).
    fn leaks_in(&self, user: Option<&str>, app: Option<&str>) -> bool {
        self.leaks.iter().any(|r| {
            let k = &r.group.key;
            k.usename.as_deref() == user && k.application_name.as_deref() == app
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

    /// When the guard cancelled `b`'s statement as a root blocker (`blocker_cancel`, not in a
    /// dry run) within the last [`ROOT_RETURNS_WITHIN`], oldest first: this session (not an
    /// earlier one of its pid), and the statement it runs now (by `query_id`, else by text,
    /// where both are known: a pooler's server connection runs other clients' statements).
    fn guard_cancels(&self, b: &Backend) -> Vec<Micros> {
        let start = self.now.saturating_sub(ROOT_RETURNS_WITHIN);
        let same_statement = |a: &GuardAction| match (a.query_id, b.query_id) {
            (x, Some(y)) if x != 0 => x == y,
            // (the ring keeps a text's first 1024 bytes); neither known: not shown to be the
            // same statement, so no end is advised on it
            _ => match (&a.query, &b.query) {
                (Some(x), Some(y)) => y.starts_with(x.as_str()),
                _ => false,
            },
        };
        let mut at: Vec<Micros> = self
            .i
            .guard_actions
            .iter()
            .filter(|a| {
                a.rule == crate::rules::Rule::BlockerCancel.as_str()
                    && !a.dry_run
                    && a.pid == b.pid
                    && Some(a.backend_start) == b.backend_start
                    && a.at >= start
                    && same_statement(a)
            })
            .map(|a| a.at)
            .collect();
        at.sort_unstable();
        at
    }

    /// Seconds the longest wait that `pid` holds up as a root blocker has lasted (0: none, or
    /// none with a known start). Only the waits of a pile-up count, as for the root-blocker
    /// rule (`policy::counts_for_blocker_rule`): not a CREATE INDEX CONCURRENTLY waiting for
    /// every older snapshot, nor an application waiting on an advisory lock on purpose.
    fn longest_wait_held(&self, pid: i32) -> f64 {
        self.chains
            .iter()
            .filter(|ch| ch.root_pid == Some(pid))
            .filter_map(|ch| self.i.lock_waits.iter().find(|w| w.pid == ch.pid))
            .filter(|w| policy::counts_for_blocker_rule(w))
            .filter_map(|w| age_seconds(self.now, w.wait_start))
            .fold(0.0, f64::max)
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
        culprit: None,
        action_kind: ActionKind::None,
        see: None,
        reading: None,
    }
}

fn flag(
    area: &'static str,
    status: Status,
    finding: impl Into<String>,
    evidence: impl Into<String>,
    action: impl Into<String>,
) -> Finding {
    let action: String = action.into();
    Finding {
        step: 0,
        area,
        finding: finding.into(),
        status,
        evidence: evidence.into(),
        action_kind: ActionKind::of(&action),
        action: Some(action),
        culprit: None,
        see: None,
        reading: None,
    }
}

mod actions;
mod changes;
mod configuration;
mod format;
mod locks;
mod pool;
mod sessions;
#[cfg(test)]
mod tests;
mod worker;

use actions::*;
use configuration::*;
use locks::*;
use pool::*;
use sessions::*;
use worker::*;

pub use crate::quote::{shell_quote, sql_ident, sql_literal};
use changes::*;
pub use changes::{classify, Pattern, STEP_MIN_SIDE};
use format::*;
pub use format::{bytes, dur};
pub use pool::POOLER_RESET_QUERY;
