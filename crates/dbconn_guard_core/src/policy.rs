//! The termination policy: which sessions the guard ends, why, and when it must look again.
//!
//! Pure: given a snapshot, the server's connection load and the policy, `plan` returns the
//! sessions to end (most urgent first, at most `max_terminations_per_cycle`), and the earliest
//! moment a further session can cross its timeout, so the worker can sleep exactly until then.
//! Sessions the caller has already handled (a dry run records a session once) are left out
//! entirely: they count neither toward the cap nor toward the next deadline.

use super::blocking::{self, HeldUp, LockWait};
use super::budgets::{self, Budgets, OverBudget};
use super::overrides::Overrides;
use super::patterns::PatternList;
use super::rules;
use super::session::{Backend, Micros, Name, Snapshot};
use super::utilization::percent;

pub const IDLE: &str = "idle";
pub const IDLE_IN_TRANSACTION: &str = "idle in transaction";
pub const IDLE_IN_TRANSACTION_ABORTED: &str = "idle in transaction (aborted)";
/// The states a session can be ended in.
pub const IDLE_STATES: [&str; 3] = [IDLE, IDLE_IN_TRANSACTION, IDLE_IN_TRANSACTION_ABORTED];

/// `application_name`s of PostgreSQL's own client programs, protected while
/// `dbconn_guard.exclude_client_tools` is on: `pg_dump -j` keeps its leader idle in a
/// transaction for the whole parallel phase, and none of these should die half-way.
pub const CLIENT_TOOLS: [&str; 10] = [
    "pg_dump",
    "pg_dumpall",
    "pg_restore",
    "pg_basebackup",
    "pg_upgrade",
    "pg_rewind",
    "pg_amcheck",
    "vacuumdb",
    "reindexdb",
    "clusterdb",
];

pub use super::rules::{Rule, RULES};

/// Why a session is never ended, whatever its age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    NotAClientBackend,
    OwnSession,
    Superuser,
    ClientTool,
    ExcludedDatabase,
    ExcludedUser,
    ExcludedApplication,
    NotIncludedApplication,
}

impl Protection {
    pub fn as_str(self) -> &'static str {
        match self {
            Protection::NotAClientBackend => "not a client backend",
            Protection::OwnSession => "own session",
            Protection::Superuser => "superuser (dbconn_guard.terminate_superusers is off)",
            Protection::ClientTool => {
                "PostgreSQL client tool (dbconn_guard.exclude_client_tools is on)"
            }
            Protection::ExcludedDatabase => "database in dbconn_guard.exclude_databases",
            Protection::ExcludedUser => "user in dbconn_guard.exclude_users",
            Protection::ExcludedApplication => "application in dbconn_guard.exclude_applications",
            Protection::NotIncludedApplication => {
                "application not in dbconn_guard.include_applications"
            }
        }
    }
}

/// Who may be ended at all: the protections shared by the worker and `terminate_idle()`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scope {
    pub include_applications: PatternList,
    pub exclude_applications: PatternList,
    pub exclude_users: PatternList,
    pub exclude_databases: PatternList,
    pub terminate_superusers: bool,
    pub exclude_client_tools: bool,
}

impl Scope {
    /// `None` when the session may be ended; otherwise the first protection that applies.
    pub fn protection(&self, b: &Backend, own_pid: i32) -> Option<Protection> {
        if !b.is_client() {
            return Some(Protection::NotAClientBackend);
        }
        if b.pid == own_pid {
            return Some(Protection::OwnSession);
        }
        if b.is_superuser != Some(false) && !self.terminate_superusers {
            return Some(Protection::Superuser);
        }
        fn s(v: &Option<Name>) -> &str {
            v.as_deref().unwrap_or("")
        }
        let app = s(&b.application_name);
        if self.exclude_client_tools && CLIENT_TOOLS.contains(&app) {
            return Some(Protection::ClientTool);
        }
        if !self.exclude_databases.is_empty() && self.exclude_databases.matches(s(&b.datname)) {
            return Some(Protection::ExcludedDatabase);
        }
        if !self.exclude_users.is_empty() && self.exclude_users.matches(s(&b.usename)) {
            return Some(Protection::ExcludedUser);
        }
        if !self.exclude_applications.is_empty() && self.exclude_applications.matches(app) {
            return Some(Protection::ExcludedApplication);
        }
        if !self.include_applications.is_empty() && !self.include_applications.matches(app) {
            return Some(Protection::NotIncludedApplication);
        }
        None
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub scope: Scope,
    /// Microseconds; 0 = plain idle sessions are never ended.
    pub idle_timeout: Micros,
    /// Microseconds; 0 = idle-in-transaction sessions are never ended.
    pub idle_in_transaction_timeout: Micros,
    /// Microseconds; 0 = off. A session whose transaction is older is ended the moment it is
    /// idle in it.
    pub transaction_timeout: Micros,
    /// Plain idle sessions are ended only while utilization is at or above this percentage.
    pub min_utilization_pct: f64,
    pub max_terminations_per_cycle: usize,
    /// Per application / user: the first match replaces `idle_timeout` (0: never).
    pub idle_timeout_overrides: Overrides,
    /// Per application / user: the first match replaces `idle_in_transaction_timeout`.
    pub idle_in_transaction_timeout_overrides: Overrides,
    /// Per application / user: the first match replaces `transaction_timeout`.
    pub transaction_timeout_overrides: Overrides,
    /// Microseconds; 0 = off. The root of a lock pile-up idle in its transaction is ended once
    /// `blocker_min_waiters` of the waits it holds up have lasted longer than this.
    pub blocker_timeout: Micros,
    /// Per application / user: the first match replaces `blocker_timeout` for a root (0:
    /// never). Overrides are per rule: an override of the idle-in-transaction rule does not
    /// reach this one.
    pub blocker_timeout_overrides: Overrides,
    /// How many waits (at least 1) must have lasted `blocker_timeout`.
    pub blocker_min_waiters: usize,
    /// Whether a root running a statement has that statement cancelled under the same rule.
    pub cancel_active_blockers: bool,
    /// Microseconds; 0 = off. An active root still holding up a pile-up past `blocker_timeout`
    /// this long after its first cancel (under `cancel_active_blockers`) is ended.
    pub blocker_terminate_after: Micros,
    /// Microseconds; 0 = off. A statement waiting in a lock queue is cancelled once
    /// `lock_queue_min_waiters` of the waits it holds up have lasted longer than this.
    pub lock_queue_timeout: Micros,
    /// Per application / user: the first match replaces `lock_queue_timeout` for the waiting
    /// statement's session (0: never).
    pub lock_queue_timeout_overrides: Overrides,
    /// How many waits (at least 1) held up behind the queued statement must have lasted
    /// `lock_queue_timeout`.
    pub lock_queue_min_waiters: usize,
    /// Per application / user: how many sessions each may hold (empty: the budget rule is
    /// off).
    pub connection_budgets: Budgets,
    /// Microseconds: the budget rule ends only sessions idle at least this long.
    pub connection_budget_min_idle: Micros,
    /// Whether the budget rule may end sessions idle in a transaction (rolled back).
    pub connection_budget_idle_in_transaction: bool,
}

/// Every rule off, no scope, the settings' defaults otherwise (as the GUCs' boot values): a
/// fixture states only what it turns on.
impl Default for Policy {
    fn default() -> Policy {
        Policy {
            scope: Scope::default(),
            idle_timeout: 0,
            idle_in_transaction_timeout: 0,
            transaction_timeout: 0,
            min_utilization_pct: 0.0,
            max_terminations_per_cycle: 100,
            idle_timeout_overrides: Overrides::default(),
            idle_in_transaction_timeout_overrides: Overrides::default(),
            transaction_timeout_overrides: Overrides::default(),
            blocker_timeout: 0,
            blocker_timeout_overrides: Overrides::default(),
            blocker_min_waiters: 1,
            cancel_active_blockers: false,
            blocker_terminate_after: 0,
            lock_queue_timeout: 0,
            lock_queue_timeout_overrides: Overrides::default(),
            lock_queue_min_waiters: 1,
            connection_budgets: Budgets::default(),
            connection_budget_min_idle: DEFAULT_BUDGET_MIN_IDLE,
            connection_budget_idle_in_transaction: false,
        }
    }
}

/// `connection_budget_min_idle`'s default: a session idle for less may be a pool's
/// connection between two uses.
pub const DEFAULT_BUDGET_MIN_IDLE: Micros = 30 * 1_000_000;

impl Policy {
    /// The timeout a worker rule's setting gives (0: off; 0 for a manual rule). The one place
    /// a rule meets its fields; everything that lists the timeouts goes through it.
    pub fn timeout(&self, rule: Rule) -> Micros {
        match rule {
            Rule::IdleTimeout => self.idle_timeout,
            Rule::IdleInTransactionTimeout => self.idle_in_transaction_timeout,
            Rule::TransactionTimeout => self.transaction_timeout,
            Rule::BlockerTimeout | Rule::BlockerCancel => self.blocker_timeout,
            Rule::LockQueueCancel => self.lock_queue_timeout,
            Rule::BlockerTerminate => self.blocker_terminate_after,
            // a count, not a timeout: the worker wakes for it by the plan's next deadline
            Rule::Manual | Rule::ManualCancel | Rule::Budget => 0,
        }
    }

    /// The per-application / per-user overrides of a worker rule's timeout (None: a manual
    /// rule).
    pub fn overrides(&self, rule: Rule) -> Option<&Overrides> {
        match rule {
            Rule::IdleTimeout => Some(&self.idle_timeout_overrides),
            Rule::IdleInTransactionTimeout => Some(&self.idle_in_transaction_timeout_overrides),
            Rule::TransactionTimeout => Some(&self.transaction_timeout_overrides),
            Rule::BlockerTimeout | Rule::BlockerCancel | Rule::BlockerTerminate => {
                Some(&self.blocker_timeout_overrides)
            }
            Rule::LockQueueCancel => Some(&self.lock_queue_timeout_overrides),
            Rule::Manual | Rule::ManualCancel | Rule::Budget => None,
        }
    }

    /// Whether the root-blocker rule is on (it needs the lock waits read).
    pub fn watches_blockers(&self) -> bool {
        self.blocker_timeout > 0 || self.blocker_timeout_overrides.shortest().is_some()
    }

    /// Whether the lock-queue rule is on (it needs the lock waits read).
    pub fn watches_lock_queues(&self) -> bool {
        self.lock_queue_timeout > 0 || self.lock_queue_timeout_overrides.shortest().is_some()
    }

    /// Whether any rule needs the lock waits read.
    pub fn watches_locks(&self) -> bool {
        self.watches_blockers() || self.watches_lock_queues()
    }

    /// The lock-queue rule's timeout for the waiting session `b`.
    pub fn lock_queue_timeout_for(&self, b: &Backend) -> Micros {
        self.lock_queue_timeout_overrides
            .timeout_for(b)
            .unwrap_or(self.lock_queue_timeout)
    }

    /// The root-blocker rule's timeout for root `b`: the first of `blocker_timeout_overrides`
    /// that matches it, or `blocker_timeout` (0: never).
    pub fn blocker_timeout_for(&self, b: &Backend) -> Micros {
        self.blocker_timeout_overrides
            .timeout_for(b)
            .unwrap_or(self.blocker_timeout)
    }
}

/// How many client backends hold slots, out of how many.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    pub client_backends: i64,
    pub max_connections: i32,
}

/// A session to end, with the facts the audit row and the re-check need.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub backend: Backend,
    pub rule: Rule,
    /// When its timeout expired.
    pub deadline: Micros,
    /// Root-blocker and lock-queue rules: how many waiting sessions it held up when judged
    /// (0 otherwise).
    pub held_up: usize,
    /// The lock-queue rule: what its statement waited for, and behind whom.
    pub queued: Option<Queued>,
    /// Root-blocker rules: the queued statements whose waits, and the waits behind them, the
    /// root was judged without (the lock-queue rule's business); the re-check does the same.
    pub left_to_lock_queue_rule: Vec<i32>,
    /// The budget rule: the group over its budget.
    pub budget: Option<OverBudget>,
    /// What it held up when it was acted on, for the audit (filled in by the worker from the
    /// lock graph it read; empty when it read none).
    pub holds: HeldUp,
}

/// A statement waiting in a lock queue, as the lock-queue rule judged it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Queued {
    /// `pg_locks.locktype` and `mode` of its wait.
    pub locktype: Option<String>,
    pub mode: Option<String>,
    /// The relation (name, or oid where the reader does not name it).
    pub relation: Option<String>,
    /// The sessions it waits behind (`pg_blocking_pids`), once each.
    pub behind: Vec<i32>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Most urgent first: idle in transaction before idle, then longest overdue.
    pub targets: Vec<Target>,
    /// Expired sessions left for the next cycle by `max_terminations_per_cycle`.
    pub deferred: usize,
    /// Earliest future moment another session's timeout expires (`None`: nothing pending).
    /// When sessions were deferred this is `snapshot.now`: look again at once.
    pub next_deadline: Option<Micros>,
    /// Client backends examined.
    pub examined: usize,
}

/// The rule that governs session `b` in its state, if any, under `policy`, and when it
/// expires: for plain idle, the idle timeout; idle in a transaction, the earlier of the
/// idle-in-transaction timeout (from the moment it went idle) and the transaction timeout (from
/// the moment its transaction began). A timeout is the first override that matches the
/// session, or the global one (0 = never, either way).
fn rule_for(b: &Backend, policy: &Policy, idle_allowed: bool) -> Option<(Rule, Micros)> {
    let timeout = |global: Micros, overrides: &Overrides| {
        if overrides.is_empty() {
            global
        } else {
            overrides.timeout_for(b).unwrap_or(global)
        }
    };
    match b.state? {
        IDLE_IN_TRANSACTION | IDLE_IN_TRANSACTION_ABORTED => {
            let idle = timeout(
                policy.idle_in_transaction_timeout,
                &policy.idle_in_transaction_timeout_overrides,
            );
            let by_idle = (idle > 0)
                .then_some(b.state_change)
                .flatten()
                .map(|since| (Rule::IdleInTransactionTimeout, since.saturating_add(idle)));
            let by_age = transaction_deadline(b, policy)
                .map(|deadline| (Rule::TransactionTimeout, deadline));
            match (by_idle, by_age) {
                (Some(i), Some(t)) => Some(if t.1 < i.1 { t } else { i }),
                (i, t) => i.or(t),
            }
        }
        IDLE if idle_allowed => {
            let idle = timeout(policy.idle_timeout, &policy.idle_timeout_overrides);
            (idle > 0)
                .then_some(b.state_change)
                .flatten()
                .map(|since| (Rule::IdleTimeout, since.saturating_add(idle)))
        }
        _ => None,
    }
}

/// When `b`'s transaction crosses its transaction timeout (the first override that matches
/// it, or `transaction_timeout`), if a timeout applies and it has a transaction.
fn transaction_deadline(b: &Backend, policy: &Policy) -> Option<Micros> {
    let t = if policy.transaction_timeout_overrides.is_empty() {
        policy.transaction_timeout
    } else {
        policy
            .transaction_timeout_overrides
            .timeout_for(b)
            .unwrap_or(policy.transaction_timeout)
    };
    (t > 0)
        .then_some(b.xact_start)
        .flatten()
        .map(|since| since.saturating_add(t))
}

/// The root-blocker rule that applies to root `b` in its state, if any: idle in a transaction
/// (or an aborted one), it is ended; running a statement, that statement is cancelled while
/// `cancel_active_blockers` is on. In any other state (a plain idle session holding a
/// session-level advisory lock, a fast-path call) it is left alone.
fn blocker_rule_for(b: &Backend, policy: &Policy) -> Option<Rule> {
    match b.state? {
        IDLE_IN_TRANSACTION | IDLE_IN_TRANSACTION_ABORTED => Some(Rule::BlockerTimeout),
        "active" if policy.cancel_active_blockers => Some(Rule::BlockerCancel),
        _ => None,
    }
}

/// When a root's pile-up crosses the root-blocker rule's `timeout`: the moment the
/// `min_waiters`-th oldest of the waits it holds up has lasted `timeout`. A wait whose start is
/// not set yet has only just begun (`now`). `None` while it holds up fewer waits, or when the
/// timeout is 0 (never).
pub fn blocker_deadline(
    wait_starts: &[Option<Micros>],
    now: Micros,
    timeout: Micros,
    min_waiters: usize,
) -> Option<Micros> {
    let k = min_waiters.max(1);
    if timeout <= 0 || wait_starts.len() < k {
        return None;
    }
    let mut starts: Vec<Micros> = wait_starts.iter().map(|s| s.unwrap_or(now)).collect();
    starts.sort_unstable();
    Some(starts[k - 1].saturating_add(timeout))
}

/// The lock types whose waits make a pile-up for the root-blocker rule: those whose conflict
/// the waiter earned by its rights on the object — a relation, a row (`tuple`), a transaction
/// id (a row another transaction changed). Not: `advisory` (applications wait on purpose:
/// leader election, job queues), `virtualxid` (CREATE INDEX CONCURRENTLY, REINDEX
/// CONCURRENTLY, DETACH PARTITION CONCURRENTLY and the like wait for every older snapshot,
/// whoever holds it, on objects the waiter may have no rights on), nor the lock manager's
/// internal ones (`extend`, `page`, `object`, `spectoken`, ...).
pub const PILE_UP_LOCKTYPES: [&str; 3] = ["relation", "tuple", "transactionid"];

/// Whether a lock wait counts toward the root-blocker rule (`PILE_UP_LOCKTYPES`).
pub fn counts_for_blocker_rule(w: &LockWait) -> bool {
    w.locktype
        .as_deref()
        .is_some_and(|t| PILE_UP_LOCKTYPES.contains(&t))
}

/// Whether a session's wait makes it held up itself, hence no root: every wait but one on an
/// advisory lock (a session that waits on purpose while holding up others is the root of what
/// it holds up; one waiting for an older snapshot, a relation extension, ... is held up).
pub fn held_up_by(w: &LockWait) -> bool {
    w.locktype.as_deref() != Some("advisory")
}

/// Every root of a pile-up (counted waits only), by pid.
fn blocker_roots(
    waits: &[LockWait],
    policy: &Policy,
) -> std::collections::HashMap<i32, blocking::Root> {
    if !policy.watches_blockers() || waits.is_empty() {
        return Default::default();
    }
    blocking::roots(waits, counts_for_blocker_rule, held_up_by)
        .into_iter()
        .map(|r| (r.pid, r))
        .collect()
}

/// A statement waiting in a lock queue and the waits it holds up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LockQueue {
    pub queued: Queued,
    /// The oldest wait start of each session it holds up, directly or through others waiting
    /// behind it (`None`: just begun).
    pub wait_starts: Vec<Option<Micros>>,
}

/// Every statement waiting for a relation lock with sessions queued behind it (`queues_in`),
/// by its session pid: an ALTER TABLE queued behind a long transaction, and the readers queued
/// behind it. Empty while the lock-queue rule is off.
pub fn lock_queues(
    waits: &[LockWait],
    policy: &Policy,
) -> std::collections::HashMap<i32, LockQueue> {
    if !policy.watches_lock_queues() {
        return Default::default();
    }
    queues_in(waits)
}

/// `lock_queues`, whatever the policy (diagnose() names a queued statement with the rule off).
///
/// A session is queued behind statement S when it waits for a lock on the same relation, in a
/// mode that conflicts with the one S asks for, behind S, and behind none of the sessions S
/// waits for itself: the sessions a cancel of S lets go. A writer waiting on a row S holds is
/// not queued behind S (S is then a link in a chain whose root is the culprit), nor is a reader
/// that the root would hold up anyway. One pass over the waits: a long queue costs what its
/// pairs cost.
pub fn queues_in(waits: &[LockWait]) -> std::collections::HashMap<i32, LockQueue> {
    use std::collections::{HashMap, HashSet};
    let mut out: HashMap<i32, LockQueue> = HashMap::new();
    if waits.is_empty() {
        return out;
    }
    let by_pid: HashMap<i32, &LockWait> = waits.iter().map(|w| (w.pid, w)).collect();
    let session = |p: i32| by_pid.get(&p).map_or(p, |w| w.session_pid());
    // each relation waiter, with the sessions it waits for
    let mut ahead_of: HashMap<i32, HashSet<i32>> = HashMap::new();
    for w in waits {
        ahead_of
            .entry(w.session_pid())
            .or_default()
            .extend(w.blocked_by.iter().map(|&p| session(p)));
    }
    // (queued statement, the session queued behind it, its wait start)
    let mut pairs: Vec<(i32, i32, Option<Micros>)> = Vec::new();
    for w in waits
        .iter()
        .filter(|w| w.locktype.as_deref() == Some("relation"))
    {
        let me = w.session_pid();
        for &by in &w.blocked_by {
            let Some(s) = by_pid.get(&by) else {
                continue; // blocked by a lock holder that does not wait: no queue
            };
            let head = s.session_pid();
            let queued_behind = head != me
                && s.locktype.as_deref() == Some("relation")
                && s.relation.is_some()
                && s.relation == w.relation
                && modes_conflict(s.mode.as_deref(), w.mode.as_deref())
                && ahead_of.get(&head).is_some_and(|a| {
                    !a.is_empty() && w.blocked_by.iter().all(|&p| !a.contains(&session(p)))
                });
            if queued_behind {
                pairs.push((head, me, w.wait_start.filter(|&t| t != 0)));
            }
        }
    }
    pairs.sort_unstable_by_key(|&(h, m, _)| (h, m));
    pairs.dedup_by_key(|&mut (h, m, _)| (h, m));
    let mut relation_wait_of: HashMap<i32, &LockWait> = HashMap::new();
    for w in waits
        .iter()
        .filter(|w| w.locktype.as_deref() == Some("relation"))
    {
        relation_wait_of.entry(w.session_pid()).or_insert(w);
    }
    for (head, _, start) in pairs {
        let Some(s) = relation_wait_of.get(&head) else {
            continue;
        };
        let q = out.entry(head).or_insert_with(|| {
            let mut behind: Vec<i32> = ahead_of.get(&head).into_iter().flatten().copied().collect();
            behind.sort_unstable();
            LockQueue {
                queued: Queued {
                    locktype: s.locktype.clone(),
                    mode: s.mode.clone(),
                    relation: s.relation.clone(),
                    behind,
                },
                wait_starts: Vec::new(),
            }
        });
        q.wait_starts.push(start);
    }
    out
}

/// Whether two table-lock modes conflict (PostgreSQL's table of "Conflicting Lock Modes"); an
/// unknown mode conflicts with nothing here, so it never makes a queue.
pub fn modes_conflict(a: Option<&str>, b: Option<&str>) -> bool {
    const MODES: [&str; 8] = [
        "AccessShareLock",
        "RowShareLock",
        "RowExclusiveLock",
        "ShareUpdateExclusiveLock",
        "ShareLock",
        "ShareRowExclusiveLock",
        "ExclusiveLock",
        "AccessExclusiveLock",
    ];
    // the modes (by their index above) each mode conflicts with, as bit masks
    const CONFLICTS: [u8; 8] = [
        0b1000_0000,
        0b1100_0000,
        0b1111_0000,
        0b1111_1000,
        0b1110_1100,
        0b1111_1100,
        0b1111_1110,
        0b1111_1111,
    ];
    let index = |m: Option<&str>| m.and_then(|m| MODES.iter().position(|x| *x == m));
    match (index(a), index(b)) {
        (Some(i), Some(j)) => CONFLICTS[i] & (1 << j) != 0,
        _ => false,
    }
}

/// When the queued statement of `b` crosses the lock-queue rule, and how many waits it holds
/// up: only a statement (`active`: a waiting statement is active), never a session idle in its
/// transaction (that one is the root-blocker rule's).
fn queue_deadline(
    b: &Backend,
    queue: Option<&LockQueue>,
    now: Micros,
    policy: &Policy,
) -> Option<(Micros, usize)> {
    let q = queue?;
    if !b.has_state("active") {
        return None;
    }
    blocker_deadline(
        &q.wait_starts,
        now,
        policy.lock_queue_timeout_for(b),
        policy.lock_queue_min_waiters,
    )
    .map(|d| (d, q.wait_starts.len()))
}

/// The queued statements the lock-queue rule will act on, by pid: running, unprotected, with a
/// timeout (no override of 0), and holding up at least `lock_queue_min_waiters` sessions. Their
/// waits, and the waits behind them, are left to it: the root-blocker rule does not count them,
/// so a root that holds up only a queued ALTER TABLE and the readers behind it is not ended for
/// them — the ALTER is cancelled, and its client can retry. A queued statement the lock-queue
/// rule leaves alone counts toward its root as any wait does.
pub fn left_to_lock_queue_rule(
    snapshot: &Snapshot,
    queues: &std::collections::HashMap<i32, LockQueue>,
    policy: &Policy,
    own_pid: i32,
    set_aside: impl Fn(&Backend) -> bool,
) -> Vec<i32> {
    if queues.is_empty() {
        return Vec::new();
    }
    let index = snapshot.index();
    // the queue rule acts no later than the root-blocker rule would on the sessions it waits for
    let first = |b: &Backend, q: &LockQueue| {
        let mine = policy.lock_queue_timeout_for(b);
        q.queued.behind.iter().all(|r| {
            index.get(r).is_none_or(|root| {
                let theirs = policy.blocker_timeout_for(root);
                theirs == 0 || mine <= theirs
            })
        })
    };
    let mut out: Vec<i32> = snapshot
        .clients()
        .filter(|b| {
            queues.get(&b.pid).is_some_and(|q| {
                q.wait_starts.len() >= policy.lock_queue_min_waiters.max(1) && first(b, q)
            }) && b.has_state("active")
                && policy.lock_queue_timeout_for(b) > 0
                && policy.scope.protection(b, own_pid).is_none()
                // one cancelled already (a statement that caught its cancel and waits on), or
                // a client that re-issues its DDL after every cancel: the root-blocker rule
                // counts its queue again
                && !set_aside(b)
        })
        .map(|b| b.pid)
        .collect();
    out.sort_unstable();
    out
}

/// The lock graph as it will be once the statements of `sessions` are cancelled: their waits
/// gone, and they gone from every blocker list (a wait left with no blocker is gone too).
pub fn without_sessions(waits: &[LockWait], sessions: &[i32]) -> Vec<LockWait> {
    // the sessions' pids and their parallel workers' that wait
    let gone: std::collections::HashSet<i32> = sessions
        .iter()
        .copied()
        .chain(
            waits
                .iter()
                .filter(|w| sessions.contains(&w.session_pid()))
                .map(|w| w.pid),
        )
        .collect();
    let gone = |p: i32| gone.contains(&p);
    waits
        .iter()
        .filter(|w| !sessions.contains(&w.session_pid()))
        .filter_map(|w| {
            let mut w = w.clone();
            w.blocked_by.retain(|&p| !gone(p));
            (!w.blocked_by.is_empty()).then_some(w)
        })
        .collect()
}

/// Whether the statement of `b` still waits, in `waits` read at `now`, in a lock queue past
/// the lock-queue rule: the re-check right before its cancel.
pub fn still_queued(b: &Backend, waits: &[LockWait], now: Micros, policy: &Policy) -> bool {
    let queues = lock_queues(waits, policy);
    queue_deadline(b, queues.get(&b.pid), now, policy).is_some_and(|(d, _)| d <= now)
}

/// When root `b` crosses the root-blocker rule under `policy`, and how many waits it holds up.
fn root_deadline(
    b: &Backend,
    root: &blocking::Root,
    now: Micros,
    policy: &Policy,
) -> Option<(Micros, usize)> {
    blocker_deadline(
        &root.wait_starts,
        now,
        policy.blocker_timeout_for(b),
        policy.blocker_min_waiters,
    )
    .map(|d| (d, root.wait_starts.len()))
}

/// Whether session `b` is still, in `waits` read at `now`, the root of a pile-up past the
/// root-blocker rule: the re-check right before it is acted on. `left` are the queued
/// statements it was judged without (`Target::left_to_lock_queue_rule`).
pub fn still_blocking(
    b: &Backend,
    waits: &[LockWait],
    now: Micros,
    policy: &Policy,
    left: &[i32],
) -> bool {
    if !policy.watches_blockers() {
        return false;
    }
    let reduced;
    let waits = if left.is_empty() {
        waits
    } else {
        reduced = without_sessions(waits, left);
        &reduced
    };
    blocking::roots(waits, counts_for_blocker_rule, held_up_by)
        .iter()
        .find(|r| r.pid == b.pid)
        .and_then(|r| root_deadline(b, r, now, policy))
        .is_some_and(|(d, _)| d <= now)
}

/// How soon to look again at a session running a statement in a transaction past its
/// transaction timeout: it is ended at a check that finds it idle in that transaction, so
/// while it is there, the worker looks at least this often.
pub const BUSY_TRANSACTION_POLL: Micros = 1_000_000;

/// The longest the worker may sleep between checks: `naptime`, but never longer than a
/// timeout in force. A session entering a state right after a check is then seen before its
/// deadline, and the worker can wake exactly at it, however short the timeout.
pub fn longest_sleep(naptime: Micros, policy: &Policy) -> Micros {
    rules::timeout_settings()
        .into_iter()
        .flat_map(|(_, _, r)| {
            [
                policy.timeout(r),
                policy
                    .overrides(r)
                    .and_then(Overrides::shortest)
                    .unwrap_or(0),
            ]
        })
        .chain(
            // a session that goes idle right after a check is seen before the budget may end it
            (!policy.connection_budgets.is_empty()).then_some(policy.connection_budget_min_idle),
        )
        .filter(|&t| t > 0)
        .fold(naptime, Micros::min)
}

/// The shortest sleep between two checks, whatever the plan says: nothing can make the worker
/// spin.
pub const MIN_SLEEP: Micros = 10_000;
/// Wake a little after a deadline, so the session is past it when the worker looks.
pub const DEADLINE_SLACK: Micros = 2_000;

/// How long to sleep after a check that finished at `now`: until just past the next deadline,
/// at least `MIN_SLEEP`, at most `longest` (see `longest_sleep`).
pub fn sleep_after(next_deadline: Option<Micros>, now: Micros, longest: Micros) -> Micros {
    let longest = longest.max(MIN_SLEEP);
    match next_deadline {
        Some(d) => d
            .saturating_add(DEADLINE_SLACK)
            .saturating_sub(now)
            .clamp(MIN_SLEEP, longest),
        None => longest,
    }
}

/// Plans one check. `handled` says which sessions were already acted on (a dry run records
/// each session once; a terminated backend lingers in the status array while it exits).
pub fn plan(
    snapshot: &Snapshot,
    waits: &[LockWait],
    load: Load,
    policy: &Policy,
    own_pid: i32,
    handled: impl Fn(&Backend) -> bool,
) -> Plan {
    plan_with(
        snapshot,
        waits,
        load,
        policy,
        own_pid,
        |b, _| handled(b),
        |_| Recall::default(),
    )
}

/// What the worker remembers of a session across checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recall {
    /// When its statement was first cancelled under `blocker_cancel` in the episode it is in
    /// (for `blocker_terminate_after`); None: never.
    pub first_blocker_cancel: Option<Micros>,
    /// A statement of its was cancelled by the lock-queue rule lately: a client that re-issues
    /// its DDL after every cancel. Its next queue is not left to that rule alone (the
    /// root-blocker rule counts it again).
    pub queue_cancelled_lately: bool,
    /// The guard ended it already (it lingers while it exits), or a dry run recorded it under a
    /// rule that ends sessions: its slot counts as free (the budgets).
    pub ending: bool,
}

/// `plan`, with the worker's memory: `handled(b, rule)` says whether `b` was already acted on
/// for that rule (a statement cancelled once is not cancelled again; its escalation is judged
/// all the same), `recall` what it remembers of `b`.
pub fn plan_with(
    snapshot: &Snapshot,
    waits: &[LockWait],
    load: Load,
    policy: &Policy,
    own_pid: i32,
    handled: impl Fn(&Backend, Rule) -> bool,
    recall: impl Fn(&Backend) -> Recall,
) -> Plan {
    let now = snapshot.now;
    let queues = lock_queues(waits, policy);
    // the queues the lock-queue rule will act on are its business: the root-blocker rule judges
    // the graph without them (see `left_to_lock_queue_rule`)
    let left = left_to_lock_queue_rule(snapshot, &queues, policy, own_pid, |b| {
        handled(b, Rule::LockQueueCancel) || recall(b).queue_cancelled_lately
    });
    let roots = if left.is_empty() {
        blocker_roots(waits, policy)
    } else {
        blocker_roots(&without_sessions(waits, &left), policy)
    };
    let gate = policy.min_utilization_pct > 0.0;
    let idle_allowed =
        !gate || percent(load.client_backends, load.max_connections) >= policy.min_utilization_pct;
    let mut out = Plan::default();
    let mut expired: Vec<Target> = Vec::new();
    for b in snapshot.clients() {
        out.examined += 1;
        let blocking = roots
            .get(&b.pid)
            .and_then(|r| root_deadline(b, r, now, policy));
        let by_blocking =
            blocking.and_then(|(d, n)| blocker_rule_for(b, policy).map(|r| (r, d, n)));
        // an active root cancelled before, still the root of a pile-up past the rule: ended
        // once `blocker_terminate_after` has passed since that first cancel; until then each
        // statement it issues is cancelled, and the worker wakes for the escalation
        // (the worker's memory is looked up only for such a root: not for every session)
        let escalation = match by_blocking {
            Some((Rule::BlockerCancel, d, n)) if policy.blocker_terminate_after > 0 => {
                recall(b).first_blocker_cancel.map(|c| {
                    (
                        Rule::BlockerTerminate,
                        d.max(c.saturating_add(policy.blocker_terminate_after)),
                        n,
                    )
                })
            }
            _ => None,
        };
        if let Some((_, d, _)) = escalation.filter(|e| e.1 > now) {
            if policy.scope.protection(b, own_pid).is_none() {
                out.next_deadline = Some(out.next_deadline.map_or(d, |x: Micros| x.min(d)));
            }
        }
        let by_blocking = match escalation {
            Some(e) if e.1 <= now => Some(e),
            _ => by_blocking,
        };
        let by_state = rule_for(b, policy, idle_allowed).map(|(r, d)| (r, d, 0));
        let by_queue = queue_deadline(b, queues.get(&b.pid), now, policy)
            .map(|(d, n)| (Rule::LockQueueCancel, d, n));
        // the earliest deadline decides (a tie: the more urgent rule)
        let chosen = [by_queue, by_blocking, by_state]
            .into_iter()
            .flatten()
            .min_by_key(|(r, d, _)| (*d, r.row().urgency));
        let Some((rule, deadline, held_up)) = chosen else {
            // a statement running in a transaction already past its timeout: look again soon,
            // to find it idle in it (it is never ended while it runs)
            // likewise a root past the root-blocker rule's deadline that runs a statement (and
            // `cancel_active_blockers` is off): ended at the first check that finds it idle in
            // its transaction
            let busy_root = blocking.is_some_and(|(d, _)| d <= now);
            if b.has_state("active")
                && (busy_root || transaction_deadline(b, policy).is_some_and(|d| d <= now))
                && policy.scope.protection(b, own_pid).is_none()
            {
                let soon = now.saturating_add(BUSY_TRANSACTION_POLL);
                out.next_deadline = Some(out.next_deadline.map_or(soon, |d| d.min(soon)));
            }
            continue;
        };
        if policy.scope.protection(b, own_pid).is_some() || handled(b, rule) {
            continue;
        }
        if deadline <= now {
            let queued = (rule == Rule::LockQueueCancel)
                .then(|| queues.get(&b.pid).map(|q| q.queued.clone()))
                .flatten();
            expired.push(Target {
                backend: b.clone(),
                rule,
                deadline,
                held_up,
                queued,
                left_to_lock_queue_rule: if rule.is_blocker_rule() {
                    left.clone()
                } else {
                    Vec::new()
                },
                budget: None,
                holds: HeldUp::default(),
            });
        } else {
            out.next_deadline = Some(
                out.next_deadline
                    .map_or(deadline, |d: Micros| d.min(deadline)),
            );
        }
    }
    // the budgets: a group over its budget loses its longest idle sessions, down to it (the
    // sessions other rules end now count as gone)
    if !policy.connection_budgets.is_empty() && idle_allowed {
        let ending: std::collections::HashSet<i32> = expired
            .iter()
            .filter(|t| !t.rule.cancels())
            .map(|t| t.backend.pid)
            .collect();
        let (found, next) = budgets::over_budget(
            &policy.connection_budgets,
            snapshot.clients(),
            now,
            // a protected session is not the budget's: it neither counts nor goes
            |b| {
                !ending.contains(&b.pid)
                    && policy.scope.protection(b, own_pid).is_none()
                    && !recall(b).ending
            },
            |b| {
                (!handled(b, Rule::Budget))
                    .then(|| budget_eligible_from(b, policy))
                    .flatten()
            },
        );
        if let Some(n) = next {
            out.next_deadline = Some(out.next_deadline.map_or(n, |d: Micros| d.min(n)));
        }
        expired.extend(found.into_iter().map(|(b, deadline, over)| Target {
            backend: b.clone(),
            rule: Rule::Budget,
            deadline,
            held_up: 0,
            queued: None,
            left_to_lock_queue_rule: Vec::new(),
            budget: Some(over),
            holds: HeldUp::default(),
        }));
    }
    expired.sort_by(|a, b| {
        a.rule
            .row()
            .urgency
            .cmp(&b.rule.row().urgency)
            .then(a.deadline.cmp(&b.deadline))
            .then(a.backend.pid.cmp(&b.backend.pid))
    });
    if gate {
        // each session ended frees a slot: stop ending idle ones once utilization would fall
        // below the threshold (idle in transaction goes whatever the utilization)
        let mut clients = load.client_backends;
        expired.retain(|t| {
            let keep = !t.rule.row().utilization_gate
                || percent(clients, load.max_connections) >= policy.min_utilization_pct;
            if keep {
                clients -= 1;
            }
            keep
        });
    }
    if expired.len() > policy.max_terminations_per_cycle {
        out.deferred = expired.len() - policy.max_terminations_per_cycle;
        expired.truncate(policy.max_terminations_per_cycle);
        out.next_deadline = Some(now);
    }
    out.targets = expired;
    out
}

/// When the budget rule may end `b` (counted, so unprotected), and its rank: idle for
/// `connection_budget_min_idle` (rank 0), or idle in a transaction that long where the policy
/// says so (rank 1: its end rolls the transaction back, so plain idle sessions go first);
/// None: never.
fn budget_eligible_from(b: &Backend, policy: &Policy) -> Option<(u8, Micros)> {
    let rank = if b.has_state(IDLE) {
        0
    } else if policy.connection_budget_idle_in_transaction
        && (b.has_state(IDLE_IN_TRANSACTION) || b.has_state(IDLE_IN_TRANSACTION_ABORTED))
    {
        1
    } else {
        return None;
    };
    Some((
        rank,
        b.state_change?
            .saturating_add(policy.connection_budget_min_idle),
    ))
}

/// Below this, a timeout ends sessions in ordinary use: an application that runs a few
/// statements in a transaction and does some work of its own in between is idle in transaction
/// for a moment each time.
pub const SHORT_TIMEOUT: Micros = 10 * 1_000_000;

/// WARNING texts for a policy whose timeouts are short enough to end sessions in ordinary use.
pub fn warnings(policy: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    let settings = rules::timeout_settings();
    for (name, r) in &rules::overrides_settings() {
        let shortest = policy.overrides(*r).and_then(Overrides::shortest);
        if let Some(t) = shortest.filter(|&t| t < SHORT_TIMEOUT) {
            out.push(format!(
                "{name} gives a timeout of {}s: sessions in ordinary use are ended; values under {}s are meant for tests",
                t as f64 / 1e6,
                SHORT_TIMEOUT / 1_000_000
            ));
        }
    }
    let min_idle = policy.connection_budget_min_idle;
    if !policy.connection_budgets.is_empty() && min_idle < SHORT_TIMEOUT {
        out.push(format!(
            "dbconn_guard.connection_budget_min_idle is {}s: pooled connections between two uses are ended by the budgets; values under {}s are meant for tests",
            min_idle as f64 / 1e6,
            SHORT_TIMEOUT / 1_000_000
        ));
    }
    for (name, _, r) in &settings {
        let t = policy.timeout(*r);
        if let Some(what) = r
            .row()
            .short_timeout_ends
            .filter(|_| t > 0 && t < SHORT_TIMEOUT)
        {
            out.push(format!(
                "{name} is {}s: {what} are ended; values under {}s are meant for tests",
                t as f64 / 1e6,
                SHORT_TIMEOUT / 1_000_000
            ));
        }
    }
    out
}

/// The policy as a JSON object of `(setting, displayed value)`, at most `capacity` bytes and
/// always valid: when it would not fit, the longest values (name lists) are replaced, one by
/// one, by a note saying how long they are and where to see them whole.
pub fn summary_json(values: &[(&str, String)], capacity: usize) -> String {
    let mut shown: Vec<(String, String)> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let render = |shown: &[(String, String)]| {
        let map: serde_json::Map<String, serde_json::Value> = shown
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::Value::Object(map).to_string()
    };
    let mut json = render(&shown);
    let mut replaced = vec![false; shown.len()];
    while json.len() > capacity {
        let Some(i) = (0..shown.len())
            .filter(|&i| !replaced[i])
            .max_by_key(|&i| shown[i].1.len())
        else {
            return "{}".to_string();
        };
        replaced[i] = true;
        let (k, v) = &shown[i];
        shown[i].1 = format!(
            "({} bytes, too long to show here: SHOW dbconn_guard.{k})",
            v.len()
        );
        json = render(&shown);
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixtures::*;
    use crate::session::SECOND;

    fn policy() -> Policy {
        Policy {
            idle_timeout: 600 * SECOND,
            idle_in_transaction_timeout: 300 * SECOND,
            ..Policy::default()
        }
    }

    #[test]
    fn rule_all_is_in_index_order() {
        assert!(Rule::ALL.iter().enumerate().all(|(i, r)| r.index() == i));
    }

    #[test]
    fn each_worker_rule_has_its_timeout_and_overrides_and_a_manual_rule_none() {
        use crate::rules::{Trigger, RULE_TABLE};
        let mut pol = Policy::default();
        for (k, r) in RULE_TABLE.iter().enumerate() {
            let t = (k as Micros + 1) * SECOND;
            match r.trigger {
                Trigger::Worker { .. } => {
                    assert!(pol.overrides(r.rule).is_some(), "{r:?}");
                    // the timeout the rule reads is the one its setting gives
                    match r.rule {
                        Rule::IdleTimeout => pol.idle_timeout = t,
                        Rule::IdleInTransactionTimeout => pol.idle_in_transaction_timeout = t,
                        Rule::TransactionTimeout => pol.transaction_timeout = t,
                        Rule::BlockerTimeout | Rule::BlockerCancel => pol.blocker_timeout = t,
                        Rule::LockQueueCancel => pol.lock_queue_timeout = t,
                        Rule::BlockerTerminate => pol.blocker_terminate_after = t,
                        Rule::Manual | Rule::ManualCancel | Rule::Budget => unreachable!(),
                    }
                    assert_eq!(pol.timeout(r.rule), t, "{r:?}");
                }
                // a count, not a timeout (its overrides are the budgets themselves)
                Trigger::Manual | Trigger::Budget { .. } => {
                    assert_eq!(pol.timeout(r.rule), 0, "{r:?}");
                    assert!(pol.overrides(r.rule).is_none(), "{r:?}");
                }
            }
        }
        // the root-blocker rule's two effects share its one setting
        assert_eq!(
            pol.timeout(Rule::BlockerTimeout),
            pol.timeout(Rule::BlockerCancel)
        );
    }

    #[test]
    fn warnings_name_each_short_timeout_by_its_setting() {
        let mut pol = Policy {
            idle_timeout: 5 * SECOND,
            idle_in_transaction_timeout: 2 * SECOND,
            transaction_timeout: 3 * SECOND,
            // short by purpose: no warning
            blocker_timeout: SECOND,
            ..Policy::default()
        };
        pol.blocker_timeout_overrides = Overrides::parse("app:x=1s").unwrap();
        let w = warnings(&pol);
        assert_eq!(w.len(), 4, "{w:#?}");
        assert!(w[0].starts_with("dbconn_guard.blocker_timeout_overrides gives a timeout of 1s"));
        assert!(w[1].starts_with(
            "dbconn_guard.idle_timeout is 5s: pooled connections between two uses are ended"
        ));
        assert!(w[2].starts_with("dbconn_guard.idle_in_transaction_timeout is 2s"));
        assert!(w[3].starts_with("dbconn_guard.transaction_timeout is 3s: ordinary transactions"));
        assert!(warnings(&Policy::default()).is_empty());
    }

    #[test]
    fn a_statement_past_its_transaction_timeout_is_looked_at_again_soon() {
        let mut pol = policy();
        pol.transaction_timeout = 60 * SECOND;
        let mut busy = client(1, "active", 5);
        busy.xact_start = Some(busy.state_change.unwrap() - 115 * SECOND);
        let snap = snapshot(vec![busy.clone()]);
        let p = plan_at(&snap, 50.0, &pol, 0);
        assert!(p.targets.is_empty(), "never while it runs");
        assert_eq!(p.next_deadline, Some(snap.now + BUSY_TRANSACTION_POLL));
        // an override that exempts it: no reason to look
        pol.transaction_timeout_overrides = Overrides::parse("app:*=0").unwrap();
        assert_eq!(plan_at(&snap, 50.0, &pol, 0).next_deadline, None);
        // and an idle-in-transaction session of that app is not ended by age either
        let mut idle = client(2, "idle in transaction", 5);
        idle.xact_start = Some(idle.state_change.unwrap() - 115 * SECOND);
        let p = plan_at(&snapshot(vec![idle]), 50.0, &pol, 0);
        assert!(p.targets.is_empty());
    }

    #[test]
    fn an_old_transaction_is_ended_when_idle_in_it_never_while_it_runs() {
        let mut pol = policy(); // idle in transaction: 300s
        pol.transaction_timeout = 600 * SECOND;
        // idle in transaction for 5s, its transaction 700s old (a client that keeps it open
        // with a SELECT every few seconds): the transaction rule, long expired
        let mut keeper = client(1, "idle in transaction", 5);
        keeper.xact_start = Some(keeper.state_change.unwrap() - 695 * SECOND);
        // running a statement in an old transaction: never
        let mut running = client(2, "active", 5);
        running.xact_start = Some(running.state_change.unwrap() - 695 * SECOND);
        // idle in its transaction for 400s, the transaction 410s old: the idle rule comes first
        let mut idle = client(3, "idle in transaction", 400);
        idle.xact_start = Some(idle.state_change.unwrap() - 10 * SECOND);
        // young: due when it has been idle 300s
        let mut young = client(4, "idle in transaction", 5);
        young.xact_start = Some(young.state_change.unwrap() - 15 * SECOND);
        // the running one is never a target; past its transaction timeout, it makes the worker
        // look again within a second
        let with_running = snapshot(vec![keeper.clone(), running, idle.clone(), young.clone()]);
        let p = plan_at(&with_running, 50.0, &pol, 0);
        assert!(p.targets.iter().all(|t| t.backend.pid != 2));
        assert_eq!(p.targets.len(), 2);
        assert_eq!(
            p.next_deadline,
            Some(with_running.now + BUSY_TRANSACTION_POLL)
        );
        let snap = snapshot(vec![keeper, idle, young]);
        let p = plan_at(&snap, 50.0, &pol, 0);
        let got: Vec<(i32, Rule)> = p.targets.iter().map(|t| (t.backend.pid, t.rule)).collect();
        assert_eq!(
            got,
            vec![
                (3, Rule::IdleInTransactionTimeout),
                (1, Rule::TransactionTimeout)
            ]
        );
        assert_eq!(p.next_deadline, Some(snap.now + 295 * SECOND));
        assert_eq!(longest_sleep(3600 * SECOND, &pol), 300 * SECOND);
        // the transaction rule alone (no idle-in-transaction timeout): a young transaction is
        // due when it is 600s old
        pol.idle_in_transaction_timeout = 0;
        let p = plan_at(&snap, 50.0, &pol, 0);
        let got: Vec<(i32, Rule)> = p.targets.iter().map(|t| (t.backend.pid, t.rule)).collect();
        assert_eq!(got, vec![(1, Rule::TransactionTimeout)]);
        assert_eq!(p.next_deadline, Some(snap.now + 190 * SECOND));
        pol.idle_in_transaction_timeout = 300 * SECOND;
        // off: only the idle-in-transaction rule
        pol.transaction_timeout = 0;
        let p = plan_at(&snap, 50.0, &pol, 0);
        assert_eq!(p.targets.len(), 1);
    }

    #[test]
    fn overrides_replace_the_global_timeouts_for_their_sessions() {
        let mut pol = policy();
        pol.idle_in_transaction_timeout = 0; // off, but for the apps an override names
        pol.idle_in_transaction_timeout_overrides =
            Overrides::parse("app:fast=1min, app:keep-*=0").unwrap();
        pol.idle_timeout_overrides = Overrides::parse("user:batch=0, app:api=2min").unwrap();
        let mk = |pid: i32, state: &'static str, age: i64, app: &str, user: &str| {
            let mut b = client(pid, state, age);
            b.application_name = Some(app.into());
            b.usename = Some(user.into());
            b
        };
        let snap = snapshot(vec![
            mk(1, "idle in transaction", 90, "fast", "web"), // 1min override: ended
            mk(2, "idle in transaction", 5000, "slow", "web"), // global off: kept
            mk(3, "idle", 150, "api", "web"),                // 2min override: ended
            mk(4, "idle", 150, "api", "batch"),              // user:batch=0 first: kept
            mk(5, "idle", 700, "other", "web"),              // global 10min: ended
            mk(6, "idle in transaction", 9000, "keep-me", "web"), // 0: never
            mk(7, "idle", 100, "api", "web"),                // due at 120s
        ]);
        let p = plan_at(&snap, 50.0, &pol, 0);
        let ended: Vec<i32> = p.targets.iter().map(|t| t.backend.pid).collect();
        assert_eq!(ended, vec![1, 5, 3]);
        assert_eq!(p.targets[0].rule, Rule::IdleInTransactionTimeout);
        assert_eq!(p.next_deadline, Some(snap.now + 20 * SECOND));
        // the worker never sleeps past the shortest override
        assert_eq!(longest_sleep(3600 * SECOND, &pol), 60 * SECOND);
    }

    /// A plan at `pct` utilization (of 100 slots), nothing handled before.
    fn plan_at(snap: &Snapshot, pct: f64, pol: &Policy, own_pid: i32) -> Plan {
        plan(snap, &[], load(pct), pol, own_pid, |_| false)
    }

    fn load(pct: f64) -> Load {
        Load {
            client_backends: pct.round() as i64,
            max_connections: 100,
        }
    }

    fn pids(p: &Plan) -> Vec<i32> {
        p.targets.iter().map(|t| t.backend.pid).collect()
    }

    #[test]
    fn ends_only_sessions_past_their_state_timeout() {
        let snap = snapshot(vec![
            client(1, "idle", 601),
            client(2, "idle", 599),
            client(3, "idle in transaction", 300),
            client(4, "idle in transaction (aborted)", 301),
            client(5, "active", 100_000),
            client(6, "fastpath function call", 100_000),
        ]);
        let p = plan_at(&snap, 50.0, &policy(), 0);
        assert_eq!(
            pids(&p),
            vec![4, 3, 1],
            "idle in transaction first, then longest overdue"
        );
        assert_eq!(p.targets[0].rule, Rule::IdleInTransactionTimeout);
        assert_eq!(p.targets[2].rule, Rule::IdleTimeout);
        assert_eq!(p.examined, 6);
        assert_eq!(
            p.next_deadline,
            Some(NOW + SECOND),
            "pid 2 crosses in one second"
        );
    }

    fn budgeted(list: &str) -> Policy {
        Policy {
            connection_budgets: Budgets::parse(list).unwrap(),
            ..Policy::default()
        }
    }

    fn of(app: &str, mut b: Backend) -> Backend {
        b.application_name = Some(app.into());
        b
    }

    #[test]
    fn a_group_over_its_budget_loses_its_longest_idle_sessions_down_to_it() {
        // "api" may hold 4 and holds 7: 3 of its idle sessions go, the longest idle first;
        // never an active one, never one idle for less than 30s; "web" is within its budget
        let snap = snapshot(vec![
            of("api", client(1, "active", 5000)),
            of("api", client(2, "active", 3000)),
            of("api", client(3, "idle", 100)),
            of("api", client(4, "idle", 900)),
            of("api", client(5, "idle", 10)),
            of("api", client(6, "idle", 500)),
            of("api", client(7, "idle in transaction", 9000)),
            of("web", client(8, "idle", 9000)),
            of("web", client(9, "idle", 9000)),
        ]);
        let pol = budgeted("app:api=4, app:web=2");
        let p = plan_at(&snap, 50.0, &pol, 0);
        assert_eq!(pids(&p), vec![4, 6, 3], "{p:#?}");
        assert!(p.targets.iter().all(|t| t.rule == Rule::Budget));
        let over = p.targets[0].budget.clone().unwrap();
        assert_eq!((over.name.as_str(), over.holds, over.budget), ("api", 7, 4));
        assert_eq!(
            over.describe(),
            "application \"api\" of user \"web\" holds 7 sessions, over its budget of 4"
        );
        // the session idle 100s became eligible 70s ago
        assert_eq!(p.targets[2].deadline, NOW - 70 * SECOND);
        // down to 3: the young idle session (10s) is not yet eligible; the worker looks again
        // when it is
        let p = plan_at(&snap, 50.0, &budgeted("app:api=3"), 0);
        assert_eq!(pids(&p), vec![4, 6, 3]);
        assert_eq!(p.next_deadline, Some(NOW + 20 * SECOND));
        // idle in transaction only when the policy says so
        let p = plan_at(
            &snap,
            50.0,
            &Policy {
                connection_budget_idle_in_transaction: true,
                ..budgeted("app:api=3")
            },
            0,
        );
        assert_eq!(pids(&p), vec![7, 4, 6, 3]);
        // within its budget: nothing; no item or a budget of 0: nothing
        for list in ["app:api=7", "app:web=1, app:api=0, app:*=1", "user:etl=1"] {
            let p = plan_at(&snap, 50.0, &budgeted(list), 0);
            assert!(
                p.targets
                    .iter()
                    .all(|t| t.backend.application_name.as_deref() == Some("web")),
                "{list}: {p:#?}"
            );
        }
    }

    #[test]
    fn the_budget_obeys_every_protection_and_counts_what_other_rules_end() {
        let snap = snapshot(vec![
            of("api", client(1, "idle", 900)),
            of("api", client(2, "idle", 800)),
            of("api", client(3, "idle", 700)),
            of("api", client(4, "idle", 600)),
        ]);
        // an excluded application's sessions count toward nothing it may end
        let mut pol = budgeted("app:api=2");
        pol.scope.exclude_applications = PatternList::parse("api").unwrap();
        assert!(plan_at(&snap, 50.0, &pol, 0).targets.is_empty());
        // a superuser's session is not the budget's: it neither counts nor goes
        let mut su = snap.clone();
        su.backends[0].is_superuser = Some(true);
        let p = plan_at(&su, 50.0, &budgeted("app:api=2"), 0);
        assert_eq!(pids(&p), vec![2]);
        // nor the guard's own session
        let p = plan_at(&snap, 50.0, &budgeted("app:api=2"), 1);
        assert_eq!(pids(&p), vec![2]);
        // sessions the idle timeout ends now count as gone: one more, not two
        let pol = Policy {
            idle_timeout: 850 * SECOND,
            ..budgeted("app:api=2")
        };
        let p = plan_at(&snap, 50.0, &pol, 0);
        assert_eq!(pids(&p), vec![1, 2]);
        assert_eq!(
            (p.targets[0].rule, p.targets[1].rule),
            (Rule::IdleTimeout, Rule::Budget)
        );
        // sessions the guard is ending (or a dry run recorded) count as gone
        let ending = |pid: i32| {
            move |b: &Backend| Recall {
                ending: b.pid == pid,
                ..Recall::default()
            }
        };
        let pol = budgeted("app:api=2");
        let p = plan_with(
            &snap,
            &[],
            load(50.0),
            &pol,
            0,
            |b, _| b.pid == 1,
            ending(1),
        );
        assert_eq!(pids(&p), vec![2]);
        // a session merely not to be judged now (a back-off) still counts, and is not taken
        let p = plan_with(
            &snap,
            &[],
            load(50.0),
            &pol,
            0,
            |b, _| b.pid == 1,
            ending(0),
        );
        assert_eq!(pids(&p), vec![2, 3]);
        // below min_utilization_pct: nothing, as for the idle timeout
        let pol = Policy {
            min_utilization_pct: 80.0,
            ..budgeted("app:api=2")
        };
        assert!(plan_at(&snap, 50.0, &pol, 0).targets.is_empty());
        // and it stops where utilization would fall below the gate
        assert_eq!(pids(&plan_at(&snap, 80.0, &pol, 0)), vec![1]);
        // a budget per role, and per name under a wildcard
        let mut mixed = snap.clone();
        mixed.backends[2].usename = Some("etl".into());
        mixed.backends[3].usename = Some("etl".into());
        let p = plan_at(&mixed, 50.0, &budgeted("user:*=1"), 0);
        assert_eq!(
            pids(&p),
            vec![1, 3],
            "one of web's two and one of etl's two"
        );
        // an application's budget is per role: etl's two sessions that call themselves "api"
        // are a group of their own, and make none of web's go
        let p = plan_at(&mixed, 50.0, &budgeted("app:api=2"), 0);
        assert!(p.targets.is_empty(), "{p:#?}");
        let p = plan_at(&mixed, 50.0, &budgeted("app:api=1"), 0);
        assert_eq!(pids(&p), vec![1, 3], "one of each role's two");
        let over = p.targets[0].budget.clone().unwrap();
        assert_eq!(
            over.describe(),
            "application \"api\" of user \"web\" holds 2 sessions, over its budget of 1"
        );
        // a wildcard never charges sessions without a name: no one group of strangers
        let mut unnamed = snap.clone();
        for b in &mut unnamed.backends {
            b.application_name = None;
        }
        assert!(plan_at(&unnamed, 50.0, &budgeted("app:*=1"), 0)
            .targets
            .is_empty());
        // a plain idle session goes before one idle in a transaction (a rollback), whatever
        // their ages
        let mut iit = snap.clone();
        iit.backends[0].state = Some(IDLE_IN_TRANSACTION);
        iit.backends[0].xact_start = iit.backends[0].state_change;
        let pol = Policy {
            connection_budget_idle_in_transaction: true,
            ..budgeted("app:api=2")
        };
        assert_eq!(pids(&plan_at(&iit, 50.0, &pol, 0)), vec![2, 3]);
    }

    #[test]
    fn the_budget_keeps_the_worker_awake_for_its_sessions() {
        let pol = Policy {
            connection_budget_min_idle: 20 * SECOND,
            ..budgeted("app:api=1")
        };
        assert_eq!(longest_sleep(60 * SECOND, &pol), 20 * SECOND);
        assert_eq!(longest_sleep(60 * SECOND, &Policy::default()), 60 * SECOND);
        // short enough to end a pool's connections between two uses: a warning
        let w = warnings(&pol);
        assert_eq!(w.len(), 0, "{w:#?}");
        let short = Policy {
            connection_budget_min_idle: 2 * SECOND,
            ..pol
        };
        let w = warnings(&short);
        assert!(
            w.len() == 1 && w[0].starts_with("dbconn_guard.connection_budget_min_idle is 2s"),
            "{w:#?}"
        );
    }

    #[test]
    fn zero_turns_a_timeout_off() {
        let snap = snapshot(vec![
            client(1, "idle", 10_000),
            client(2, "idle in transaction", 10_000),
        ]);
        let p = plan_at(
            &snap,
            0.0,
            &Policy {
                idle_timeout: 0,
                ..policy()
            },
            0,
        );
        assert_eq!(pids(&p), vec![2]);
        let p = plan_at(
            &snap,
            0.0,
            &Policy {
                idle_in_transaction_timeout: 0,
                ..policy()
            },
            0,
        );
        assert_eq!(pids(&p), vec![1]);
    }

    #[test]
    fn idle_sessions_wait_for_min_utilization_but_idle_in_transaction_does_not() {
        let snap = snapshot(vec![
            client(1, "idle", 10_000),
            client(2, "idle in transaction", 10_000),
        ]);
        let pol = Policy {
            min_utilization_pct: 80.0,
            ..policy()
        };
        assert_eq!(pids(&plan_at(&snap, 79.0, &pol, 0)), vec![2]);
        // ending the idle-in-transaction one first brings 80 down to 79
        assert_eq!(pids(&plan_at(&snap, 80.0, &pol, 0)), vec![2]);
        assert_eq!(pids(&plan_at(&snap, 81.0, &pol, 0)), vec![2, 1]);
    }

    #[test]
    fn protected_sessions_survive() {
        let old = |pid| client(pid, "idle in transaction", 10_000);
        let mut superuser = old(1);
        superuser.is_superuser = Some(true);
        let mut unknown_role = old(2);
        unknown_role.is_superuser = None;
        let mut walsender = old(3);
        walsender.kind = Kind::Background;
        walsender.backend_type = Some("walsender".into());
        let mut worker = old(4);
        worker.kind = Kind::Background;
        worker.backend_type = Some("dbconn_guard".into());
        let mut hidden = old(5);
        hidden.kind = Kind::Hidden;
        hidden.backend_type = None;
        let mut excluded_db = old(6);
        excluded_db.datname = Some("critical_db".into());
        let mut excluded_user = old(7);
        excluded_user.usename = Some("replicator".into());
        let mut excluded_app = old(8);
        excluded_app.application_name = Some("pg_dump".into());
        let own = old(9);
        let plain = old(10);
        let snap = snapshot(vec![
            superuser,
            unknown_role,
            walsender,
            worker,
            hidden,
            excluded_db,
            excluded_user,
            excluded_app,
            own,
            plain,
        ]);
        let mut pol = policy();
        pol.scope.exclude_databases = PatternList::parse("critical_*").unwrap();
        pol.scope.exclude_users = PatternList::parse("replicator").unwrap();
        pol.scope.exclude_applications = PatternList::parse("pg_dump*, psql").unwrap();
        assert_eq!(pids(&plan_at(&snap, 0.0, &pol, 9)), vec![10]);
        pol.scope.terminate_superusers = true;
        assert_eq!(pids(&plan_at(&snap, 0.0, &pol, 9)), vec![1, 2, 10]);
    }

    #[test]
    fn include_list_limits_the_scope() {
        let mut batch = client(2, "idle", 10_000);
        batch.application_name = Some("batch-7".into());
        let mut no_app = client(3, "idle", 10_000);
        no_app.application_name = Some("".into());
        let snap = snapshot(vec![client(1, "idle", 10_000), batch, no_app]);
        let mut pol = policy();
        pol.scope.include_applications = PatternList::parse("batch-*").unwrap();
        assert_eq!(pids(&plan_at(&snap, 0.0, &pol, 0)), vec![2]);
        let b = &snap.backends[0];
        assert_eq!(
            pol.scope.protection(b, 0),
            Some(Protection::NotIncludedApplication)
        );
    }

    #[test]
    fn the_cap_defers_the_rest_and_asks_for_an_immediate_recheck() {
        let snap = snapshot(
            (1..=50)
                .map(|p| client(p, "idle", 1000 + i64::from(p)))
                .collect(),
        );
        let pol = Policy {
            max_terminations_per_cycle: 10,
            ..policy()
        };
        let p = plan_at(&snap, 0.0, &pol, 0);
        assert_eq!(p.targets.len(), 10);
        assert_eq!(p.deferred, 40);
        assert_eq!(
            pids(&p),
            (41..=50).rev().collect::<Vec<_>>(),
            "longest overdue first"
        );
        assert_eq!(p.next_deadline, Some(NOW));
    }

    #[test]
    fn sleep_never_outlasts_a_timeout() {
        let p = policy();
        assert_eq!(longest_sleep(10 * SECOND, &p), 10 * SECOND);
        let short = Policy {
            idle_in_transaction_timeout: 2 * SECOND,
            ..policy()
        };
        assert_eq!(longest_sleep(10 * SECOND, &short), 2 * SECOND);
        let off = Policy {
            idle_in_transaction_timeout: 0,
            idle_timeout: 0,
            ..policy()
        };
        assert_eq!(longest_sleep(10 * SECOND, &off), 10 * SECOND);
    }

    #[test]
    fn nothing_pending_means_no_deadline() {
        let p = plan_at(&snapshot(vec![client(1, "active", 5)]), 0.0, &policy(), 0);
        assert!(p.targets.is_empty());
        assert_eq!(p.next_deadline, None);
    }

    #[test]
    fn below_min_utilization_idle_sessions_set_no_deadline() {
        let p = plan_at(
            &snapshot(vec![client(1, "idle", 5)]),
            10.0,
            &Policy {
                min_utilization_pct: 50.0,
                ..policy()
            },
            0,
        );
        assert_eq!(p.next_deadline, None);
    }

    #[test]
    fn handled_sessions_count_neither_toward_the_cap_nor_the_deadline() {
        // a dry run past the cap: the first two are recorded; the next plan must move on to
        // the others, not pick the same two, filter them out and ask to look again at once
        let snap = snapshot(
            (1..=5)
                .map(|p| client(p, "idle", 1000 - i64::from(p)))
                .collect(),
        );
        let pol = Policy {
            max_terminations_per_cycle: 2,
            ..policy()
        };
        let first = plan_at(&snap, 0.0, &pol, 0);
        assert_eq!(pids(&first), vec![1, 2]);
        assert_eq!(first.deferred, 3);
        let done = pids(&first);
        let second = plan(&snap, &[], load(0.0), &pol, 0, |b| done.contains(&b.pid));
        assert_eq!(pids(&second), vec![3, 4]);
        let done = [1, 2, 3, 4];
        let third = plan(&snap, &[], load(0.0), &pol, 0, |b| done.contains(&b.pid));
        assert_eq!(pids(&third), vec![5]);
        assert_eq!(third.deferred, 0);
        assert_eq!(
            third.next_deadline, None,
            "nothing left: no immediate re-check"
        );
        let all = plan(&snap, &[], load(0.0), &pol, 0, |_| true);
        assert!(all.targets.is_empty());
        assert_eq!(all.next_deadline, None);
    }

    #[test]
    fn idle_sessions_are_ended_only_while_utilization_stays_at_the_threshold() {
        // 83 of 100 slots taken, threshold 80: ending 4 idle sessions brings it to 79
        let snap = snapshot(
            (1..=10)
                .map(|p| client(p, "idle", 1000 + i64::from(p)))
                .collect(),
        );
        let pol = Policy {
            min_utilization_pct: 80.0,
            ..policy()
        };
        let p = plan_at(&snap, 83.0, &pol, 0);
        assert_eq!(pids(&p), vec![10, 9, 8, 7], "longest idle first, then stop");
        assert_eq!(p.deferred, 0);
        // idle in transaction goes first and frees slots too
        let mut mixed = snap.clone();
        mixed.backends[0].state = Some(IDLE_IN_TRANSACTION);
        mixed.backends[1].state = Some(IDLE_IN_TRANSACTION);
        let p = plan_at(&mixed, 83.0, &pol, 0);
        assert_eq!(pids(&p), vec![2, 1, 10, 9], "{p:?}");
        // below the threshold: only idle in transaction
        let p = plan_at(&mixed, 79.0, &pol, 0);
        assert_eq!(pids(&p), vec![2, 1]);
    }

    #[test]
    fn postgresql_client_tools_are_protected_while_exclude_client_tools_is_on() {
        let mut dump = client(1, "idle in transaction", 10_000);
        dump.application_name = Some("pg_dump".into());
        let mut lookalike = client(2, "idle in transaction", 10_000);
        lookalike.application_name = Some("pg_dump_helper".into());
        let snap = snapshot(vec![dump, lookalike]);
        let mut pol = policy();
        pol.scope.exclude_client_tools = true;
        assert_eq!(
            pids(&plan_at(&snap, 0.0, &pol, 0)),
            vec![2],
            "exact names only"
        );
        assert_eq!(
            pol.scope.protection(&snap.backends[0], 0),
            Some(Protection::ClientTool)
        );
        pol.scope.exclude_client_tools = false;
        assert_eq!(pids(&plan_at(&snap, 0.0, &pol, 0)), vec![1, 2]);
    }

    #[test]
    fn the_worker_never_sleeps_less_than_the_minimum_nor_more_than_the_longest() {
        let longest = 10 * SECOND;
        assert_eq!(sleep_after(None, NOW, longest), longest);
        assert_eq!(
            sleep_after(Some(NOW + SECOND), NOW, longest),
            SECOND + DEADLINE_SLACK
        );
        assert_eq!(
            sleep_after(Some(NOW), NOW, longest),
            MIN_SLEEP,
            "deferred work"
        );
        assert_eq!(sleep_after(Some(NOW - SECOND), NOW, longest), MIN_SLEEP);
        assert_eq!(
            sleep_after(Some(NOW + 3600 * SECOND), NOW, longest),
            longest
        );
        assert_eq!(sleep_after(None, NOW, 0), MIN_SLEEP);
    }

    #[test]
    fn short_timeouts_are_warned_about() {
        let p = Policy {
            idle_in_transaction_timeout: 2 * SECOND,
            idle_timeout: 0,
            ..policy()
        };
        let w = warnings(&p);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("dbconn_guard.idle_in_transaction_timeout is 2s"),
            "{w:?}"
        );
        assert!(warnings(&policy()).is_empty());
    }

    #[test]
    fn the_policy_summary_is_always_valid_json_and_says_what_it_left_out() {
        let long = (0..500)
            .map(|i| format!("app-{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let values = vec![
            ("enabled", "on".to_string()),
            ("exclude_applications", long.clone()),
            ("exclude_users", "etl".to_string()),
        ];
        let whole = summary_json(&values, 100_000);
        let v: serde_json::Value = serde_json::from_str(&whole).unwrap();
        assert_eq!(v["exclude_applications"], long.as_str());
        let cut = summary_json(&values, 300);
        assert!(cut.len() <= 300, "{}", cut.len());
        let v: serde_json::Value = serde_json::from_str(&cut).unwrap();
        assert_eq!(v["enabled"], "on");
        assert_eq!(v["exclude_users"], "etl");
        let note = v["exclude_applications"].as_str().unwrap();
        assert!(
            note.contains("too long") && note.contains("SHOW dbconn_guard.exclude_applications"),
            "{note}"
        );
        assert_eq!(summary_json(&values, 1), "{}");
    }

    /// A lock wait of `pid` on `blockers`, begun `age_s` seconds ago (`None`: start not set).
    fn lock_wait(pid: i32, blockers: &[i32], age_s: Option<i64>) -> LockWait {
        LockWait {
            pid,
            blocked_by: blockers.to_vec(),
            wait_start: age_s.map(|a| NOW - a * SECOND),
            locktype: Some("transactionid".into()),
            ..Default::default()
        }
    }

    fn blocker_policy() -> Policy {
        Policy {
            idle_timeout: 0,
            idle_in_transaction_timeout: 0,
            blocker_timeout: 30 * SECOND,
            ..policy()
        }
    }

    fn blocker_plan(snap: &Snapshot, waits: &[LockWait], pol: &Policy) -> Plan {
        plan(snap, waits, load(10.0), pol, 0, |_| false)
    }

    fn relation_wait(pid: i32, blockers: &[i32], age_s: i64, mode: &str) -> LockWait {
        LockWait {
            pid,
            blocked_by: blockers.to_vec(),
            wait_start: Some(NOW - age_s * SECOND),
            locktype: Some("relation".into()),
            mode: Some(mode.into()),
            relation: Some("orders".into()),
            ..Default::default()
        }
    }

    /// A report (1) that has read `orders` for an hour, an ALTER TABLE (10) queued behind it
    /// for 40 s, and five readers (20..24) queued behind the ALTER for 30 s.
    fn queued_alter(root_state: &'static str) -> (Snapshot, Vec<LockWait>) {
        let mut sessions = vec![client(1, root_state, 3600), client(10, "active", 40)];
        sessions.extend((20..25).map(|p| client(p, "active", 30)));
        let mut waits = vec![relation_wait(10, &[1], 40, "AccessExclusiveLock")];
        waits.extend((20..25).map(|p| relation_wait(p, &[10], 30, "AccessShareLock")));
        (snapshot(sessions), waits)
    }

    /// The same waits, the readers' (20..) begun `age_s` ago.
    fn readers_waited(waits: &[LockWait], age_s: i64) -> Vec<LockWait> {
        waits
            .iter()
            .map(|w| {
                let mut w = w.clone();
                if w.pid >= 20 {
                    w.wait_start = Some(NOW - age_s * SECOND);
                }
                w
            })
            .collect()
    }

    fn queue_policy() -> Policy {
        Policy {
            lock_queue_timeout: 10 * SECOND,
            ..Policy::default()
        }
    }

    #[test]
    fn a_statement_queued_for_a_lock_that_holds_up_others_is_cancelled() {
        let (snap, waits) = queued_alter("active");
        let p = blocker_plan(&snap, &waits, &queue_policy());
        assert_eq!(pids(&p), vec![10], "{p:#?}");
        let t = &p.targets[0];
        assert_eq!((t.rule, t.held_up), (Rule::LockQueueCancel, 5));
        assert!(t.rule.cancels());
        assert_eq!(t.deadline, NOW - 20 * SECOND);
        let q = t.queued.clone().unwrap();
        assert_eq!(
            (q.mode.as_deref(), q.relation.as_deref(), q.behind),
            (Some("AccessExclusiveLock"), Some("orders"), vec![1])
        );
        // its waiters younger than the timeout: not yet, and the worker wakes at the deadline
        let young = readers_waited(&waits, 4);
        let p = blocker_plan(&snap, &young, &queue_policy());
        assert!(p.targets.is_empty());
        assert_eq!(p.next_deadline, Some(NOW + 6 * SECOND));
        // six waiters wanted, five there: never
        let six = Policy {
            lock_queue_min_waiters: 6,
            ..queue_policy()
        };
        let p = blocker_plan(&snap, &waits, &six);
        assert!(p.targets.is_empty());
        assert_eq!(p.next_deadline, None);
        // off, by default
        assert!(blocker_plan(&snap, &waits, &Policy::default())
            .targets
            .is_empty());
        // the worker never sleeps past the rule's timeout
        assert_eq!(longest_sleep(3600 * SECOND, &queue_policy()), 10 * SECOND);
        // the re-check right before the cancel
        let b = snap.clients().find(|b| b.pid == 10).unwrap();
        assert!(still_queued(b, &waits, NOW, &queue_policy()));
        let granted: Vec<LockWait> = waits.iter().filter(|w| w.pid != 10).cloned().collect();
        assert!(!still_queued(b, &granted, NOW, &queue_policy()));
    }

    #[test]
    fn only_sessions_a_cancel_would_let_go_are_queued_behind_a_statement() {
        // a writer waiting on a row the waiting statement holds: a chain, not a queue
        let mut row = lock_wait(30, &[10], Some(60));
        row.locktype = Some("transactionid".into());
        // a writer in a mode the ALTER's request does not conflict with... none does with
        // AccessExclusiveLock: take a SHARE request, which a RowShareLock reader passes
        let mut share = relation_wait(10, &[1], 40, "ShareLock");
        share.relation = Some("orders".into());
        let reader = relation_wait(20, &[10], 30, "RowShareLock");
        // a reader of another table, and one the root holds up too
        let mut elsewhere = relation_wait(21, &[10], 30, "AccessShareLock");
        elsewhere.relation = Some("lines".into());
        let both = relation_wait(22, &[10, 1], 30, "AccessShareLock");
        let q = queues_in(&[share, row, reader, elsewhere, both]);
        assert!(q.is_empty(), "{q:#?}");
        // the ALTER and a reader queued behind it: a queue of one
        let q = queues_in(&[
            relation_wait(10, &[1], 40, "AccessExclusiveLock"),
            relation_wait(20, &[10], 30, "AccessShareLock"),
        ]);
        assert_eq!(q[&10].wait_starts, vec![Some(NOW - 30 * SECOND)]);
        assert!(modes_conflict(
            Some("AccessShareLock"),
            Some("AccessExclusiveLock")
        ));
        assert!(modes_conflict(Some("ShareLock"), Some("RowExclusiveLock")));
        assert!(!modes_conflict(Some("ShareLock"), Some("ShareLock")));
        assert!(!modes_conflict(
            Some("RowExclusiveLock"),
            Some("RowExclusiveLock")
        ));
        assert!(!modes_conflict(
            Some("ExclusiveLock"),
            Some("AccessShareLock")
        ));
        assert!(!modes_conflict(None, Some("AccessExclusiveLock")));
    }

    #[test]
    fn the_lock_queue_rule_spares_what_it_must() {
        let (snap, waits) = queued_alter("active");
        // an excluded application's migration is not cancelled
        let mut pol = queue_policy();
        pol.scope.exclude_applications = PatternList::parse("api").unwrap();
        assert!(blocker_plan(&snap, &waits, &pol).targets.is_empty());
        // an override of 0 for its application: never
        let mut never = queue_policy();
        never.lock_queue_timeout_overrides = Overrides::parse("app:api=0").unwrap();
        assert!(blocker_plan(&snap, &waits, &never).targets.is_empty());
        // a session waiting on an advisory lock waits on purpose: not a queue
        let advisory: Vec<LockWait> = waits
            .iter()
            .map(|w| {
                let mut w = w.clone();
                if w.pid == 10 {
                    w.locktype = Some("advisory".into());
                }
                w
            })
            .collect();
        assert!(blocker_plan(&snap, &advisory, &queue_policy())
            .targets
            .is_empty());
        // a queue nobody waits behind: nothing
        let alone = [relation_wait(10, &[1], 40, "AccessExclusiveLock")];
        assert!(blocker_plan(&snap, &alone, &queue_policy())
            .targets
            .is_empty());
        // a dry run records a session once: one already handled is left out
        let p = plan(&snap, &waits, load(10.0), &queue_policy(), 0, |b| {
            b.pid == 10
        });
        assert!(p.targets.is_empty());
    }

    #[test]
    fn a_queued_statement_is_cancelled_before_its_root_is_ended() {
        // the report's session idle in its transaction, and both rules on at the same
        // timeout: the queued ALTER is cancelled (the client can retry), and its root, whose
        // pile-up is only the queue behind the ALTER, is not ended for it
        let (snap, waits) = queued_alter("idle in transaction");
        let both = Policy {
            blocker_timeout: 10 * SECOND,
            ..queue_policy()
        };
        let p = blocker_plan(&snap, &waits, &both);
        assert_eq!(pids(&p), vec![10], "{p:#?}");
        assert_eq!(p.targets[0].rule, Rule::LockQueueCancel);
        // a writer that waits on the root itself still makes it a pile-up root
        let mut more = waits.clone();
        more.push(lock_wait(30, &[1], Some(60)));
        let mut sessions: Vec<Backend> = snap.backends.clone();
        sessions.push(client(30, "active", 60));
        let p = blocker_plan(&snapshot(sessions), &more, &both);
        assert_eq!(pids(&p), vec![10, 1], "{p:#?}");
        assert_eq!(
            p.targets.iter().map(|t| t.rule).collect::<Vec<_>>(),
            vec![Rule::LockQueueCancel, Rule::BlockerTimeout]
        );
        // the ALTER has waited 40 s, its readers only 4: the queue is the lock-queue rule's
        // business, so the root is not ended for the ALTER's long wait; the cancel comes when
        // the readers have waited the timeout
        let young = readers_waited(&waits, 4);
        let p = blocker_plan(&snap, &young, &both);
        assert!(p.targets.is_empty(), "{p:#?}");
        assert_eq!(p.next_deadline, Some(NOW + 6 * SECOND));
        // a queued statement the lock-queue rule leaves alone (an excluded application's)
        // counts toward its root as before
        let mut spared_alter = both.clone();
        spared_alter.scope.exclude_applications = PatternList::parse("api").unwrap();
        let mut sessions: Vec<Backend> = snap.backends.clone();
        sessions[0].application_name = Some("report".into());
        let p = blocker_plan(&snapshot(sessions), &waits, &spared_alter);
        assert_eq!(pids(&p), vec![1], "{p:#?}");
        assert_eq!(p.targets[0].rule, Rule::BlockerTimeout);
        // the queue is left to the lock-queue rule only while that rule will act on it first:
        // not when its statement was cancelled once already (it caught its cancel and waits
        // on), not for a client that re-issues its DDL after every cancel, and not when its
        // timeout is longer than the root-blocker rule's
        let root_of = |p: &Plan| p.targets.iter().any(|t| t.backend.pid == 1);
        let cancelled_once = plan_with(
            &snap,
            &young,
            load(10.0),
            &both,
            0,
            |b, r| b.pid == 10 && r == Rule::LockQueueCancel,
            |_| Recall::default(),
        );
        assert!(root_of(&cancelled_once), "{cancelled_once:#?}");
        let re_issued = plan_with(
            &snap,
            &young,
            load(10.0),
            &both,
            0,
            |_, _| false,
            |b| Recall {
                queue_cancelled_lately: b.pid == 10,
                ..Default::default()
            },
        );
        assert!(root_of(&re_issued), "{re_issued:#?}");
        let slower = Policy {
            lock_queue_timeout: 20 * SECOND,
            ..both.clone()
        };
        assert!(root_of(&blocker_plan(&snap, &young, &slower)));
        // the root-blocker rule alone ends the root, as before
        let roots_only = Policy {
            blocker_timeout: 10 * SECOND,
            ..Policy::default()
        };
        assert_eq!(pids(&blocker_plan(&snap, &waits, &roots_only)), vec![1]);
        // the cancelled statement's wait and the waits behind it alone leave the graph
        let after = without_sessions(&more, &[10]);
        assert_eq!(after.iter().map(|w| w.pid).collect::<Vec<_>>(), vec![30]);
    }

    #[test]
    fn an_active_root_cancelled_before_is_ended_once_terminate_after_has_passed() {
        // an active root holding a row, its waiter's wait 40 s old
        let snap = snapshot(vec![client(1, "active", 5), client(2, "active", 40)]);
        let waits = [lock_wait(2, &[1], Some(40))];
        let pol = Policy {
            cancel_active_blockers: true,
            blocker_terminate_after: 20 * SECOND,
            ..blocker_policy()
        };
        // `handled`: the statement was cancelled already (once per statement)
        let run = |pol: &Policy, handled: bool, first: Option<Micros>| {
            plan_with(
                &snap,
                &waits,
                load(10.0),
                pol,
                0,
                |_, rule| handled && rule == Rule::BlockerCancel,
                |_| Recall {
                    first_blocker_cancel: first,
                    ..Default::default()
                },
            )
        };
        let rules = |p: &Plan| p.targets.iter().map(|t| t.rule).collect::<Vec<_>>();
        // never cancelled: a cancel
        let p = run(&pol, false, None);
        assert_eq!(rules(&p), vec![Rule::BlockerCancel]);
        // first cancelled 30 s ago, still the root: ended
        let p = run(&pol, false, Some(NOW - 30 * SECOND));
        assert_eq!(rules(&p), vec![Rule::BlockerTerminate]);
        assert!(!p.targets[0].rule.cancels());
        assert_eq!(p.targets[0].deadline, NOW - 10 * SECOND);
        // a statement that ignored its cancel is acted on once per statement, but that does
        // not hold back its escalation
        assert_eq!(
            rules(&run(&pol, true, Some(NOW - 30 * SECOND))),
            vec![Rule::BlockerTerminate]
        );
        // first cancelled 5 s ago: this statement (a new one) is cancelled again, and the
        // worker wakes when 20 s have passed since the first cancel
        let p = run(&pol, false, Some(NOW - 5 * SECOND));
        assert_eq!(rules(&p), vec![Rule::BlockerCancel]);
        assert_eq!(p.next_deadline, Some(NOW + 15 * SECOND));
        // the same statement, cancelled already: nothing now, the wake-up stays
        let p = run(&pol, true, Some(NOW - 5 * SECOND));
        assert!(p.targets.is_empty());
        assert_eq!(p.next_deadline, Some(NOW + 15 * SECOND));
        // off: cancels, never an end
        let off = Policy {
            blocker_terminate_after: 0,
            ..pol.clone()
        };
        assert_eq!(
            rules(&run(&off, false, Some(NOW - 30 * SECOND))),
            vec![Rule::BlockerCancel]
        );
        // without cancel_active_blockers nothing is cancelled, so nothing escalates
        let no_cancel = Policy {
            cancel_active_blockers: false,
            ..pol.clone()
        };
        assert!(run(&no_cancel, false, Some(NOW - 30 * SECOND))
            .targets
            .is_empty());
        // a protected root: never
        let mut protected = pol.clone();
        protected.scope.exclude_applications = PatternList::parse("api").unwrap();
        let p = run(&protected, false, Some(NOW - 30 * SECOND));
        assert!(p.targets.is_empty());
        // an override of 0 for its application spares it from the whole family
        let mut never = pol.clone();
        never.blocker_timeout_overrides = Overrides::parse("app:api=0").unwrap();
        assert!(run(&never, false, Some(NOW - 30 * SECOND))
            .targets
            .is_empty());
    }

    #[test]
    fn the_root_of_a_pile_up_idle_in_its_transaction_is_ended_once_its_waits_are_old() {
        let snap = snapshot(vec![
            client(1, "idle in transaction", 100),
            client(2, "active", 40),
            client(3, "active", 10),
        ]);
        // 2 waits on 1 for 40s, 3 behind 2 for 10s
        let waits = [
            lock_wait(2, &[1], Some(40)),
            lock_wait(3, &[2, 1], Some(10)),
        ];
        let pol = blocker_policy();
        let p = blocker_plan(&snap, &waits, &pol);
        assert_eq!(pids(&p), vec![1]);
        assert_eq!(p.targets[0].rule, Rule::BlockerTimeout);
        assert_eq!(p.targets[0].held_up, 2);
        assert_eq!(p.targets[0].deadline, NOW - 10 * SECOND);
        // two waits must have lasted 30s: the younger crosses in 20s
        let two = Policy {
            blocker_min_waiters: 2,
            ..blocker_policy()
        };
        let p = blocker_plan(&snap, &waits, &two);
        assert!(p.targets.is_empty());
        assert_eq!(p.next_deadline, Some(NOW + 20 * SECOND));
        // three: it holds up only two, nothing pending
        let three = Policy {
            blocker_min_waiters: 3,
            ..blocker_policy()
        };
        let p = blocker_plan(&snap, &waits, &three);
        assert!(p.targets.is_empty());
        assert_eq!(p.next_deadline, None);
        // off
        let off = Policy {
            blocker_timeout: 0,
            ..blocker_policy()
        };
        assert!(blocker_plan(&snap, &waits, &off).targets.is_empty());
        // a wait whose start is not set yet has just begun
        let fresh = [lock_wait(2, &[1], None)];
        let p = blocker_plan(&snap, &fresh, &pol);
        assert!(p.targets.is_empty());
        assert_eq!(p.next_deadline, Some(NOW + 30 * SECOND));
        // the worker never sleeps past the rule's timeout
        assert_eq!(longest_sleep(3600 * SECOND, &pol), 30 * SECOND);
    }

    #[test]
    fn an_active_root_is_only_cancelled_and_only_when_asked() {
        let snap = snapshot(vec![client(1, "active", 100), client(2, "active", 40)]);
        let waits = [lock_wait(2, &[1], Some(40))];
        let p = blocker_plan(&snap, &waits, &blocker_policy());
        assert!(p.targets.is_empty(), "an active root is never terminated");
        assert_eq!(
            p.next_deadline,
            Some(NOW + BUSY_TRANSACTION_POLL),
            "looked at again soon: it is ended once found idle in its transaction"
        );
        let cancel = Policy {
            cancel_active_blockers: true,
            ..blocker_policy()
        };
        let p = blocker_plan(&snap, &waits, &cancel);
        assert_eq!(pids(&p), vec![1]);
        assert_eq!(p.targets[0].rule, Rule::BlockerCancel);
        assert!(p.targets[0].rule.cancels());
        // once per statement: a statement already acted on is handled
        let p = plan(&snap, &waits, load(10.0), &cancel, 0, |b| b.pid == 1);
        assert!(p.targets.is_empty());
        // a plain idle root (a session-level advisory lock) is left alone, as is a waiter
        let idle = snapshot(vec![client(1, "idle", 100), client(2, "active", 40)]);
        assert!(blocker_plan(&idle, &waits, &cancel).targets.is_empty());
    }

    #[test]
    fn protections_win_over_the_root_blocker_rule() {
        let mut root = client(1, "idle in transaction", 100);
        root.is_superuser = Some(true);
        let mut tool = client(3, "idle in transaction", 100);
        tool.application_name = Some("pg_dump".into());
        let snap = snapshot(vec![
            root,
            client(2, "active", 40),
            tool,
            client(4, "active", 40),
        ]);
        let waits = [lock_wait(2, &[1], Some(40)), lock_wait(4, &[3], Some(40))];
        let mut pol = blocker_policy();
        pol.scope.exclude_client_tools = true;
        assert!(blocker_plan(&snap, &waits, &pol).targets.is_empty());
        // its own session (the worker) is never a target either
        let snap = snapshot(vec![
            client(9, "idle in transaction", 100),
            client(2, "active", 40),
        ]);
        let waits = [lock_wait(2, &[9], Some(40))];
        assert!(plan(&snap, &waits, load(10.0), &pol, 9, |_| false)
            .targets
            .is_empty());
        // a pid that is no client backend in the snapshot (a prepared transaction shows as 0)
        let waits = [lock_wait(2, &[0], Some(40))];
        assert!(blocker_plan(&snap, &waits, &pol).targets.is_empty());
    }

    #[test]
    fn the_earlier_of_the_root_blocker_and_the_idle_in_transaction_deadlines_decides() {
        let snap = snapshot(vec![
            client(1, "idle in transaction", 100),
            client(2, "active", 40),
        ]);
        let waits = [lock_wait(2, &[1], Some(40))];
        let mut pol = blocker_policy();
        pol.idle_in_transaction_timeout = 60 * SECOND; // expired 40s ago, before the blocker's
        let p = blocker_plan(&snap, &waits, &pol);
        assert_eq!(p.targets[0].rule, Rule::IdleInTransactionTimeout);
        pol.idle_in_transaction_timeout = 95 * SECOND; // expired 5s ago; blocker 10s ago
        let p = blocker_plan(&snap, &waits, &pol);
        assert_eq!(p.targets[0].rule, Rule::BlockerTimeout);
        // blocker targets come first in a capped batch
        let snap = snapshot(vec![
            client(1, "idle in transaction", 100),
            client(2, "active", 40),
            client(5, "idle in transaction", 10_000),
        ]);
        pol.max_terminations_per_cycle = 1;
        let p = blocker_plan(&snap, &waits, &pol);
        assert_eq!(pids(&p), vec![1]);
        assert_eq!(p.deferred, 1);
    }

    #[test]
    fn the_last_look_at_a_root_asks_whether_it_still_blocks_past_the_timeout() {
        let pol = blocker_policy();
        let waits = [lock_wait(2, &[1], Some(40)), lock_wait(3, &[2], Some(5))];
        assert!(still_blocking(
            &client(1, "idle in transaction", 100),
            &waits,
            NOW,
            &pol,
            &[]
        ));
        assert!(
            !still_blocking(
                &client(2, "idle in transaction", 100),
                &waits,
                NOW,
                &pol,
                &[]
            ),
            "2 waits itself: no root"
        );
        // its waiter gave up (lock_timeout, cancel): only the young wait is left
        let waits = [lock_wait(3, &[1], Some(5))];
        assert!(!still_blocking(
            &client(1, "idle in transaction", 100),
            &waits,
            NOW,
            &pol,
            &[]
        ));
        assert!(!still_blocking(
            &client(1, "idle in transaction", 100),
            &[],
            NOW,
            &pol,
            &[]
        ));
        // the rule was turned off by a reload
        let waits = [lock_wait(2, &[1], Some(40))];
        let off = Policy {
            blocker_timeout: 0,
            ..pol.clone()
        };
        assert!(!still_blocking(
            &client(1, "idle in transaction", 100),
            &waits,
            NOW,
            &off,
            &[]
        ));
        let more = Policy {
            blocker_min_waiters: 2,
            ..pol
        };
        assert!(!still_blocking(
            &client(1, "idle in transaction", 100),
            &waits,
            NOW,
            &more,
            &[]
        ));
    }

    #[test]
    fn only_relation_row_and_transaction_waits_make_a_pile_up() {
        let snap = snapshot(vec![
            client(1, "idle in transaction", 100),
            client(2, "active", 40),
        ]);
        let pol = blocker_policy();
        // CREATE INDEX CONCURRENTLY waiting for an older snapshot: not a pile-up
        for t in [
            "virtualxid",
            "advisory",
            "extend",
            "page",
            "object",
            "spectoken",
        ] {
            let mut wt = lock_wait(2, &[1], Some(40));
            wt.locktype = Some(t.into());
            assert!(
                blocker_plan(&snap, &[wt.clone()], &pol).targets.is_empty(),
                "a wait on a {t} lock"
            );
            assert!(
                !still_blocking(&snap.backends[0], &[wt], NOW, &pol, &[]),
                "{t}"
            );
        }
        for t in PILE_UP_LOCKTYPES {
            let mut wt = lock_wait(2, &[1], Some(40));
            wt.locktype = Some(t.into());
            assert_eq!(pids(&blocker_plan(&snap, &[wt], &pol)), vec![1], "{t}");
        }
    }

    #[test]
    fn the_root_blocker_rule_has_overrides_of_its_own() {
        let mut root = client(1, "idle in transaction", 100);
        root.application_name = Some("reporting".into());
        let snap = snapshot(vec![root.clone(), client(2, "active", 40)]);
        let waits = [lock_wait(2, &[1], Some(40))];
        // an override of the idle-in-transaction rule does not reach this rule
        let mut pol = blocker_policy();
        pol.idle_in_transaction_timeout_overrides = Overrides::parse("app:reporting=0").unwrap();
        assert_eq!(pids(&blocker_plan(&snap, &waits, &pol)), vec![1]);
        // its own does: 0 is never
        pol.blocker_timeout_overrides = Overrides::parse("app:reporting=0").unwrap();
        assert!(blocker_plan(&snap, &waits, &pol).targets.is_empty());
        assert!(!still_blocking(&root, &waits, NOW, &pol, &[]));
        // a longer one waits longer; another application keeps the global timeout
        pol.blocker_timeout_overrides = Overrides::parse("app:reporting=1min").unwrap();
        let p = blocker_plan(&snap, &waits, &pol);
        assert!(p.targets.is_empty());
        assert_eq!(p.next_deadline, Some(NOW + 20 * SECOND));
        pol.blocker_timeout_overrides = Overrides::parse("app:other=0").unwrap();
        assert_eq!(pids(&blocker_plan(&snap, &waits, &pol)), vec![1]);
        // an override alone turns the rule on, for the sessions it names
        let only = Policy {
            blocker_timeout: 0,
            blocker_timeout_overrides: Overrides::parse("app:reporting=10s").unwrap(),
            ..blocker_policy()
        };
        assert!(only.watches_blockers());
        assert_eq!(pids(&blocker_plan(&snap, &waits, &only)), vec![1]);
        assert_eq!(longest_sleep(3600 * SECOND, &only), 10 * SECOND);
    }

    #[test]
    fn waits_on_advisory_locks_do_not_count_toward_the_root_blocker_rule() {
        let snap = snapshot(vec![
            client(1, "idle in transaction", 100),
            client(2, "active", 40),
        ]);
        let mut adv = lock_wait(2, &[1], Some(40));
        adv.locktype = Some("advisory".into());
        let p = blocker_plan(&snap, &[adv.clone()], &blocker_policy());
        assert!(p.targets.is_empty(), "a leader holding its advisory lock");
        assert!(!still_blocking(
            &client(1, "idle in transaction", 100),
            &[adv],
            NOW,
            &blocker_policy(),
            &[]
        ));
    }
}
