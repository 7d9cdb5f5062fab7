//! The background worker: wakes at the next session deadline (at most every naptime), plans with
//! the pure policy core, acts through `guard` (the one kill path, which `terminate_idle()`'s
//! requests take too), takes the history's samples (which leak detection reads), and publishes
//! what it did in shared memory.
//!
//! Signals are PostgreSQL's: SIGHUP reloads the configuration, SIGTERM is `die` (the worker
//! exits at the next interrupt check, even in the middle of a lock wait), and a cancel
//! (`pg_cancel_backend`) aborts the check in progress, if any, and nothing else.
//!
//! Settings of the worker's database and role (`ALTER DATABASE ... SET`) do not reach it: the
//! settings its SQL depends on are pinned after it connects (`PINNED`).
//!
//! Failure model: each step runs in its own transaction; an ERROR aborts that transaction, is
//! logged and shown in `worker_status().last_error`, and the next check retries. If the process
//! dies anyway, the postmaster restarts it after `RESTART_AFTER`.

use crate::core::history::{self as samples, ByRule, Churn, Extra};
use crate::core::leaks::{self, LeakReports, Reason};
use crate::core::policy::{self, Load, Target};
use crate::core::quote::{quoted, quoted_or};
use crate::core::recheck::Verdict;
use crate::core::session::{Micros, SECOND};
use crate::core::utilization;
use crate::guard::{self, Actor, Outcome};
use crate::shared::{POLICY_TEXT, SHARED};
use crate::{churn, guc, history, locks, requests, setting_changes, snapshot, xact};
use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::ffi::CStr;
use std::time::Duration;

pub const BACKEND_TYPE: &str = "dbconn_guard";
const RESTART_AFTER: Duration = Duration::from_secs(5);

/// Settings every SQL statement of the worker runs under, whatever `ALTER DATABASE` or
/// `ALTER ROLE` says for its database and role (a database's owner can set all of these for
/// it): it runs as itself (`role`), not as a role the owner names; no schema but `pg_catalog`
/// (and, last, its own `pg_temp`) can supply a function or operator; transactions are
/// read-write and READ COMMITTED (a database default of read-only or SERIALIZABLE would fail
/// every check, the latter on a standby); an ERROR stays an ERROR (`exit_on_error` would make
/// every lock timeout end the worker); no wait on a lock lasts more than a second; the audit
/// commits wait for the local WAL flush only, never for a synchronous standby that may be down.
///
/// Besides these, `session_authorization` is pinned to the bootstrap superuser (`pin_session_
/// authorization`, which needs a transaction to look the name up); no statement of the worker
/// runs longer than a minute (`statement_timeout`: a database default of 1ms would fail every
/// check); no query is compiled (`jit`) or run in parallel (`max_parallel_workers_per_gather`,
/// and `force_parallel_mode` / `debug_parallel_query` below).
const PINNED: [(&CStr, &CStr); 14] = [
    (c"role", c"none"),
    (c"statement_timeout", c"1min"),
    (c"jit", c"off"),
    (c"max_parallel_workers_per_gather", c"0"),
    (c"search_path", c"pg_catalog, pg_temp"),
    (c"default_transaction_read_only", c"off"),
    (c"default_transaction_isolation", c"read committed"),
    (c"default_transaction_deferrable", c"off"),
    (c"exit_on_error", c"off"),
    (c"lock_timeout", c"1s"),
    (c"idle_in_transaction_session_timeout", c"0"),
    (c"synchronous_commit", c"local"),
    (c"transform_null_equals", c"off"),
    (c"session_replication_role", c"origin"),
];

/// Registers the worker; called from `_PG_init` during `shared_preload_libraries` processing.
pub fn register() {
    BackgroundWorkerBuilder::new("dbconn_guard worker")
        .set_type(BACKEND_TYPE)
        .set_library("dbconn_guard")
        .set_function("dbconn_guard_worker_main")
        .enable_spi_access()
        // runs on hot standbys too: ending sessions needs no writes
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

/// What the worker remembers between cycles (process memory, not shared).
#[derive(Default)]
struct State {
    leaks: LeakReports,
    /// When the next sample of the history is due (aligned to the wall clock).
    next_sample: Micros,
    /// The interval `next_sample` was aligned to (a reload may change it).
    sample_interval: Micros,
    /// Sessions already acted on, by (pid, backend_start, state_change): a terminated backend
    /// stays in the status array for a moment while it exits, and a dry run must not record
    /// the same session every cycle. The value says whether it was only a dry run's record:
    /// those are forgotten when a reload changes the policy, so that every session is judged
    /// again under the new one (switching dry run off ends what the dry run recorded).
    acted: HashMap<(i32, Micros, Micros), Acted>,
    /// Transactions acted on by the transaction-age rule, by (pid, backend_start, xact_start):
    /// a client that keeps its transaction open with a statement now and then has a new
    /// state_change each time, and a dry run must record its transaction once.
    acted_xacts: HashMap<(i32, Micros, Micros), Acted>,
    /// Sessions spared at the last look for a reason that will not change soon (a COMMIT
    /// waiting for a synchronous standby, which is never cancelled), by the same key as
    /// `acted`: not judged again before `until`, then with a doubled delay; logged once.
    backoff: HashMap<(i32, Micros, Micros), Backoff>,
    /// Active roots whose statement was cancelled under `blocker_cancel`, by (pid,
    /// backend_start): when first and when last in this episode (`blocker_terminate_after`
    /// counts from the first). An episode ends when no cancel came for longer than
    /// `blocker_terminate_after` + `blocker_timeout` (the root let go), or the session ends.
    first_cancels: HashMap<(i32, Micros), (Micros, Micros)>,
    /// Sessions whose queued statement the lock-queue rule cancelled, by (pid, backend_start):
    /// when. A client that re-issues its DDL after the cancel queues again: for a while, its
    /// queue is counted toward its root again (`Recall::queue_cancelled_lately`).
    queue_cancels: HashMap<(i32, Micros), Micros>,
    /// Sessions the guard ended (by a rule that ends sessions, or `terminate_idle()`), or a dry
    /// run recorded under such a rule, by (pid, backend_start): their slots count as free for
    /// the budgets while they exit (`Recall::ending`). Dry runs' records go as in `acted`.
    ending: HashMap<(i32, Micros), Acted>,
    /// The count of connections that authenticated, read right after this check's status read
    /// (the churn of its sample is worked out from it).
    connections_at_read: u64,
    said_missing_extension: bool,
    terminations_total: i64,
    /// When audit rows were last purged (0: at the next check, e.g. after a reload).
    last_purge: Micros,
    /// `dbconn_guard.*` lines of the configuration files that PostgreSQL refused: while there
    /// are any, the policy in force is not the one written there (at server start a refused
    /// value leaves the default in force: an empty exclusion list), so the worker ends nothing.
    refused: Option<String>,
    /// Test builds: the last dbconn_guard.test_fill_history carried out.
    #[cfg(feature = "test_hooks")]
    filled: i32,
}

/// When to look again at a session spared for a lasting reason.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    until: Micros,
    delay: Micros,
}

/// The first and the longest delay before a session spared for a lasting reason is judged
/// again.
const BACKOFF_FIRST: Micros = SECOND;
const BACKOFF_LONGEST: Micros = 60 * SECOND;

/// How a session in `State::acted` was acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Acted {
    /// Signalled (ended, or its statement cancelled).
    Signalled,
    /// Recorded by a dry run only.
    DryRun,
}

impl State {
    /// A session spared at the last look for a lasting reason: judged again only after a
    /// delay that doubles each time (1 s up to a minute), and logged the first time only.
    fn back_off(&mut self, t: &Target, why: Verdict, now: Micros) {
        let k = key(&t.backend);
        let delay = match self.backoff.get(&k) {
            Some(b) => (b.delay * 2).min(BACKOFF_LONGEST),
            None => {
                log!(
                    "dbconn_guard: did not {} pid {}, the root of a lock pile-up (rule {}): {}; it is looked at again after a back-off ({}s, doubling up to {}s), and not logged again",
                    if t.rule.cancels() { "cancel" } else { "end" },
                    t.backend.pid,
                    t.rule.as_str(),
                    why.as_str(),
                    BACKOFF_FIRST / SECOND,
                    BACKOFF_LONGEST / SECOND
                );
                BACKOFF_FIRST
            }
        };
        self.backoff.insert(
            k,
            Backoff {
                until: now + delay,
                delay,
            },
        );
    }

    /// After a reload that changed the policy: what a dry run recorded is judged again (what
    /// was signalled stays remembered: it is on its way out).
    fn forget_dry_runs(&mut self) {
        let before = self.acted.len() + self.acted_xacts.len();
        self.acted.retain(|_, a| *a == Acted::Signalled);
        self.acted_xacts.retain(|_, a| *a == Acted::Signalled);
        self.ending.retain(|_, a| *a == Acted::Signalled);
        let forgotten = before - self.acted.len() - self.acted_xacts.len();
        if forgotten > 0 {
            log!(
                "dbconn_guard worker: the policy changed: {forgotten} sessions recorded by a dry run are judged again"
            );
        }
    }
}

fn now() -> Micros {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Pins `PINNED` for the worker's session, above any database or role setting
/// (`PGC_S_OVERRIDE`), outside any transaction (a database default the worker cannot run
/// under, such as SERIALIZABLE on a standby, must not stop it from pinning its own).
pub(crate) fn pin_settings() {
    #[allow(unused_mut)]
    let mut all: Vec<(&CStr, &CStr)> = PINNED.to_vec();
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    all.push((c"transaction_timeout", c"0"));
    #[cfg(feature = "pg15")]
    all.push((c"force_parallel_mode", c"off"));
    #[cfg(not(feature = "pg15"))]
    all.push((c"debug_parallel_query", c"off"));
    for (name, value) in all {
        let ok = PgTryBuilder::new(|| pin(name, value.as_ptr()))
            .catch_others(|_| false)
            .execute();
        if !ok {
            warning!(
                "dbconn_guard worker: could not pin {} = {}",
                name.to_string_lossy(),
                value.to_string_lossy()
            );
        }
    }
}

/// Sets `name` to `value` for the worker's session, above any database or role setting
/// (`PGC_S_OVERRIDE`); whether PostgreSQL took it. An ERROR (a value refused) propagates.
fn pin(name: &CStr, value: *const std::ffi::c_char) -> bool {
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value,
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
            pg_sys::GucAction::GUC_ACTION_SET,
            true,
            PgLogLevel::ERROR as i32,
            false,
        ) > 0
    }
}

/// Pins `session_authorization` to the bootstrap superuser, the role the worker runs as,
/// above any `ALTER DATABASE ... SET session_authorization` of its database's owner (which
/// would otherwise make the worker run as that owner from its next start). In a transaction:
/// the role's name is looked up in the catalog.
fn pin_session_authorization() {
    let pinned = xact::transaction(c"dbconn_guard: pinning session_authorization", || {
        let name = unsafe {
            pg_sys::GetUserNameFromId(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID), false)
        };
        pin(c"session_authorization", name)
    });
    if !matches!(pinned, Ok(true)) {
        warning!(
            "dbconn_guard worker: could not pin session_authorization to the bootstrap superuser"
        );
    }
}

/// The owner of the worker's database, when it is not a superuser: that role can hold the
/// audit table's lock queue (VACUUM, ANALYZE), change the database's settings, and rename or
/// drop it while the worker is not connected. Said at every start, and published for
/// `diagnose()`.
fn check_database_owner() {
    let owner = xact::transaction(c"dbconn_guard: checking the database owner", || {
        Spi::get_two::<String, bool>(
            "SELECT r.rolname::pg_catalog.text, r.rolsuper FROM pg_catalog.pg_database d \
               JOIN pg_catalog.pg_authid r ON r.oid OPERATOR(pg_catalog.=) d.datdba \
              WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()",
        )
        .ok()
    });
    let not_superuser = match owner {
        Ok(Some((Some(name), Some(false)))) => Some(name),
        _ => None,
    };
    if let Some(name) = &not_superuser {
        warning!(
            "dbconn_guard worker: its database {} (dbconn_guard.database) is owned by {}, which is not a superuser: that role can delay the guard's audit writes (then records are kept in shared memory and the server log until the table is writable) and change or drop the database while the worker is not connected; use a database a superuser owns, such as postgres",
            quoted(&guc::database()),
            quoted(name)
        );
    }
    SHARED
        .exclusive()
        .database_owner_not_superuser
        .set(not_superuser.as_deref().unwrap_or(""));
}

/// Publishes the policy in force in shared memory; returns whether it differs from what was
/// published before.
fn publish_policy() -> bool {
    let text = policy::summary_json(&guc::policy_values(), POLICY_TEXT);
    let mut s = SHARED.exclusive();
    let changed = s.policy.get() != text;
    s.policy.set(&text);
    s.enabled = guc::ENABLED.get();
    s.dry_run = guc::DRY_RUN.get();
    changed
}

/// Reads `pg_file_settings` for `dbconn_guard.*` lines PostgreSQL refused; at start and after
/// each reload. While there are any the worker ends no session, and says why.
fn check_refused_settings(state: &mut State) {
    let found = xact::transaction(c"dbconn_guard: checking the configuration files", || {
        Spi::get_one::<String>(
            "SELECT pg_catalog.string_agg(pg_catalog.format('%s (%s line %s: %s)', name, sourcefile, sourceline, error), '; ') \
               FROM pg_catalog.pg_file_settings \
              WHERE name OPERATOR(pg_catalog.~~) 'dbconn_guard.%' AND error IS NOT NULL",
        )
        .ok()
        .flatten()
    });
    let refused = match found {
        Ok(r) => r,
        Err(f) => {
            warning!("dbconn_guard worker: could not read pg_file_settings: {f}");
            None
        }
    };
    if let Some(why) = &refused {
        let msg = format!(
            "the configuration files hold dbconn_guard settings PostgreSQL refused: {why}; the policy in force is not the one written there, so the worker ends no session until they are fixed and reloaded"
        );
        warning!("dbconn_guard worker: {msg}");
        let mut s = SHARED.exclusive();
        s.last_error.set(&msg);
        s.last_error_at = now();
    } else if state.refused.is_some() {
        log!("dbconn_guard worker: the refused settings are fixed: guarding again");
    }
    SHARED.exclusive().refused_config = refused.is_some();
    state.refused = refused;
}

/// Says once, at start and after each reload, what the worker will do.
fn announce_policy(pol: &policy::Policy) {
    for w in policy::warnings(pol) {
        warning!("{w}");
    }
    // every worker rule's timeout, then its overrides, from the rule table
    let settings = crate::core::rules::timeout_settings();
    let short = |n: &'static str| n.strip_prefix("dbconn_guard.").unwrap_or(n);
    let rules: Vec<String> = settings
        .iter()
        .filter(|(_, _, r)| pol.timeout(*r) > 0)
        .map(|(n, _, r)| format!("{} = {}s", short(n), pol.timeout(*r) as f64 / 1e6))
        .chain(
            settings
                .iter()
                .filter(|(_, _, r)| pol.overrides(*r).is_some_and(|o| !o.is_empty()))
                .map(|(_, o, _)| format!("{} = {}", short(o), quoted(&guc::show(o)))),
        )
        .chain(
            pol.watches_lock_queues()
                .then(|| format!("lock_queue_min_waiters = {}", pol.lock_queue_min_waiters)),
        )
        .chain((!pol.connection_budgets.is_empty()).then(|| {
            format!(
                "connection_budgets = {}, connection_budget_min_idle = {}s, connection_budget_idle_in_transaction = {}",
                quoted(&guc::show("dbconn_guard.connection_budgets")),
                pol.connection_budget_min_idle as f64 / 1e6,
                if pol.connection_budget_idle_in_transaction {
                    "on"
                } else {
                    "off"
                }
            )
        }))
        .chain(pol.watches_blockers().then(|| {
            format!(
                "blocker_min_waiters = {}, cancel_active_blockers = {}",
                pol.blocker_min_waiters,
                if pol.cancel_active_blockers {
                    "on"
                } else {
                    "off"
                }
            )
        }))
        .collect();
    match history::shape() {
        None => log!(
            "dbconn_guard worker: dbconn_guard.history_size is 0: no history, and leak_suspects has no trend (no 'growing' suspects)"
        ),
        Some((_, 0)) => log!(
            "dbconn_guard worker: dbconn_guard.history_groups is 0: leak_suspects has no trend (no 'growing' suspects)"
        ),
        Some((size, _)) if size + 1 < guc::LEAK_TREND_SAMPLES.get().max(2) as usize => log!(
            "dbconn_guard worker: dbconn_guard.history_size ({size}) is shorter than dbconn_guard.leak_trend_samples: no 'growing' leak suspects"
        ),
        _ => {}
    }
    if !guc::ENABLED.get() {
        log!("dbconn_guard worker: dbconn_guard.enabled is off: it ends no session");
    } else if rules.is_empty() {
        let names: Vec<&str> = settings.iter().map(|(n, _, _)| short(n)).collect();
        let (last, rest) = names.split_last().unwrap_or((&"", &[]));
        log!(
            "dbconn_guard worker: no termination rule is set (dbconn_guard.{} and {last} are 0, and no override gives a timeout): it ends no session, and only watches",
            rest.join(", ")
        );
    } else {
        log!(
            "dbconn_guard worker: ending sessions by {}{}",
            rules.join(", "),
            if guc::DRY_RUN.get() {
                " (dry run: recording only)"
            } else {
                ""
            }
        );
    }
}

/// PostgreSQL's own handlers: a reload flag, and `die` for SIGTERM — the FATAL exit at the next
/// CHECK_FOR_INTERRUPTS, which lock waits and latch waits both reach.
pub(crate) fn install_signal_handlers() {
    unsafe {
        #[cfg(not(feature = "pg18"))]
        {
            pg_sys::pqsignal(pg_sys::SIGHUP as i32, Some(SignalHandlerForConfigReload));
            pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(die));
        }
        #[cfg(feature = "pg18")]
        {
            pg_sys::pqsignal_be(pg_sys::SIGHUP as i32, Some(SignalHandlerForConfigReload));
            pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(die));
        }
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn clear_pid(_code: i32, _arg: pg_sys::Datum) {
    let mut s = SHARED.exclusive();
    s.pid = 0;
    s.latch = 0;
    s.next_wakeup = 0;
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn dbconn_guard_worker_main(_arg: pg_sys::Datum) {
    install_signal_handlers();
    let database = guc::database();
    log!(
        "dbconn_guard worker: connecting to database {} (dbconn_guard.database)",
        quoted(&database)
    );
    connect(&database);
    pin_settings();
    pin_session_authorization();
    check_database_owner();
    {
        let mut s = SHARED.exclusive();
        s.pid = unsafe { pg_sys::MyProcPid };
        s.latch = unsafe { std::ptr::addr_of_mut!((*pg_sys::MyProc).procLatch) } as usize;
        s.started_at = now();
        s.extension_ready = false;
    }
    unsafe { pg_sys::before_shmem_exit(Some(clear_pid), pg_sys::Datum::from(0)) };
    requests::after_restart();
    publish_policy();
    log!(
        "dbconn_guard worker started in database {}",
        quoted(&database)
    );
    announce_policy(&guc::policy());

    let mut state = State {
        terminations_total: SHARED.share().terminations_total,
        ..Default::default()
    };
    check_refused_settings(&mut state);
    // what the next reload changes is told from this reading
    let mut settings = setting_changes::read();
    let mut sleep: Micros = 0;
    loop {
        wait(sleep);
        if unsafe { pg_sys::ConfigReloadPending } != 0 {
            unsafe {
                pg_sys::ConfigReloadPending = 0;
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
            pin_settings();
            let now_set = setting_changes::read();
            if let (Some(before), Some(after)) = (&settings, &now_set) {
                setting_changes::record(before, after);
            }
            settings = now_set.or(settings);
            if publish_policy() {
                state.forget_dry_runs();
            }
            announce_policy(&guc::policy());
            check_refused_settings(&mut state);
            state.last_purge = 0;
            #[cfg(feature = "test_hooks")]
            fill_history_for_tests(&mut state);
        }
        for ended in requests::serve(&mut state.terminations_total) {
            // a backend lingers in the status array while it exits: not a target again
            state.acted.insert(key(&ended), Acted::Signalled);
            state.ending.insert(session_key(&ended), Acted::Signalled);
        }
        sleep = cycle(&mut state);
        // awake for the next sample too: it only ever shortens a sleep, so no deadline moves
        // (a sample missed by a failed check is taken by the next one: a due time already past
        // never shortens the sleep, so an error that recurs cannot make the worker spin)
        let t = now();
        if state.next_sample > t {
            sleep = sleep.min(state.next_sample - t);
        }
        SHARED.exclusive().next_wakeup = t + sleep;
    }
}

/// Connects to `database` as PostgreSQL connects a background worker without a role (the
/// bootstrap superuser), ignoring `ALLOW_CONNECTIONS false` (`BGWORKER_BYPASS_ALLOWCONN`), and
/// marks its process as that superuser's: PostgreSQL's signal rules then protect it from
/// non-superusers, `pg_signal_backend` members included — `pg_terminate_backend()` and
/// `DROP DATABASE ... WITH (FORCE)` by the database's owner are refused.
fn connect(database: &str) {
    let db = std::ffi::CString::new(database).unwrap_or_default();
    unsafe {
        pg_sys::BackgroundWorkerInitializeConnection(
            db.as_ptr(),
            std::ptr::null(),
            pg_sys::BGWORKER_BYPASS_ALLOWCONN,
        );
        // what InitializeSessionUserId() sets for a backend that connects as a role; a worker
        // connected without one keeps InvalidOid, which the signal functions take for a
        // plain role's process
        (*pg_sys::MyProc).roleId = pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID);
    }
}

/// Sleeps `us` microseconds, or until the latch is set (a reload, a request, a signal);
/// then acts on pending interrupts: SIGTERM ends the process here. A cancel of the idle worker
/// has nothing to cancel and is dropped.
fn wait(us: Micros) {
    if us > 0 {
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                ((us + 999) / 1000).max(1) as _,
                pg_sys::PG_WAIT_EXTENSION,
            );
        }
    }
    unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
    // SIGTERM (die) ends the process in here; a cancel — even one arriving just now — has
    // nothing to cancel, and must not become an ERROR outside any transaction (which a
    // background worker turns into its exit)
    PgTryBuilder::new(|| unsafe {
        if pg_sys::QueryCancelPending != 0 && pg_sys::ProcDiePending == 0 {
            pg_sys::QueryCancelPending = 0;
            log!("dbconn_guard worker: cancel request ignored (no check was running)");
        }
        pgrx::check_for_interrupts!();
    })
    .catch_others(|_| log!("dbconn_guard worker: cancel request ignored (no check was running)"))
    .execute();
}

struct Planned {
    extension_ready: bool,
    examined: i64,
    targets: Vec<Target>,
    deferred: i64,
    next_deadline: Option<Micros>,
    judged_at: Micros,
    /// The check's status read, when a sample of the history is due: taken after the kill
    /// path has acted, so a sample never delays a termination.
    sample_from: Option<crate::core::session::Snapshot>,
}

/// One check: read and plan in one transaction, act through the kill path, purge; returns how
/// long to sleep.
fn cycle(state: &mut State) -> Micros {
    // the policy in force, read once per check
    let pol = guc::policy();
    let longest = policy::longest_sleep(guc::naptime_us(), &pol);
    let started = now();
    let cpu_before = cpu_time_us();
    let cycle_no = SHARED.share().cycles + 1;

    let planned = xact::transaction(c"dbconn_guard: checking sessions", || plan(state, &pol));
    let mut error: Option<String>;
    let mut could_not_record = false;
    // the audit could not be locked in time in this check: no further step waits for it
    let mut locked_out = false;
    let mut terminated = 0;
    let mut next_deadline = None;
    let mut extension_ready = false;
    let (mut examined, mut deferred) = (0, 0);
    let mut sample_from = None;
    match planned {
        Ok(mut p) => {
            sample_from = p.sample_from.take();
            extension_ready = p.extension_ready;
            examined = p.examined;
            deferred = p.deferred;
            next_deadline = p.next_deadline;
            // the cap counts sessions acted on, not sessions spared: the targets go to the
            // kill path in batches until that many are ended (or recorded, in a dry run), so
            // that sessions spared at the last look hold up no other target or rule
            let cap = pol.max_terminations_per_cycle.max(1);
            let mut acted_on = 0;
            let mut reached = 0;
            let mut errors: Vec<String> = Vec::new();
            while reached < p.targets.len() && acted_on < cap {
                let batch = &p.targets[reached..(reached + cap - acted_on).min(p.targets.len())];
                reached += batch.len();
                let report = guard::carry_out(
                    batch,
                    p.judged_at,
                    &Actor::Worker { cycle: cycle_no },
                    guc::DRY_RUN.get(),
                    locked_out,
                );
                locked_out |= report.locked_out;
                for (t, o) in batch.iter().zip(&report.outcomes) {
                    let acted = match o {
                        Outcome::Terminated { .. } => Some(Acted::Signalled),
                        Outcome::WouldTerminate => Some(Acted::DryRun),
                        _ => None,
                    };
                    // the escalation counts from an active root's first cancel
                    // only cancels that were sent: a dry run's records never make a real
                    // escalation
                    let sent = matches!(o, Outcome::Terminated { .. });
                    match (t.rule, sent) {
                        (policy::Rule::LockQueueCancel, true) => {
                            state
                                .queue_cancels
                                .insert(session_key(&t.backend), p.judged_at);
                        }
                        (policy::Rule::BlockerCancel, true) => {
                            let at = p.judged_at;
                            let gap = episode_gap(&pol);
                            state
                                .first_cancels
                                .entry(session_key(&t.backend))
                                .and_modify(|(first, last)| {
                                    if at - *last > gap {
                                        *first = at;
                                    }
                                    *last = at;
                                })
                                .or_insert((at, at));
                        }
                        (policy::Rule::BlockerTerminate, true) => {
                            state.first_cancels.remove(&session_key(&t.backend));
                        }
                        _ => {}
                    }
                    if let Some(a) = acted {
                        acted_on += 1;
                        state.acted.insert(key(&t.backend), a);
                        if !t.rule.cancels() {
                            state.ending.insert(session_key(&t.backend), a);
                        }
                        if t.rule == policy::Rule::TransactionTimeout {
                            state.acted_xacts.insert(xact_key(&t.backend), a);
                        }
                    }
                    if let Outcome::Spared(
                        v @ (Verdict::CommitWaitsForStandby | Verdict::ConcurrentIndexBuild),
                    ) = o
                    {
                        state.back_off(t, *v, p.judged_at);
                    }
                    // a cancelled statement is no ended session
                    if o.ended() && !t.rule.cancels() {
                        terminated += 1;
                    }
                }
                could_not_record |= report.outcomes.contains(&Outcome::NotRecorded);
                errors.extend(report.error);
                if could_not_record {
                    // the next batch would fail the same way
                    break;
                }
            }
            error = (!errors.is_empty()).then(|| errors.join("; "));
            // targets not reached wait for the next check, at once
            let left = (p.targets.len() - reached) as i64;
            if left > 0 {
                deferred += left;
                next_deadline = Some(p.judged_at);
            }
        }
        Err(f) => error = Some(f.message),
    }
    // the history's sample, from this check's read, once the kill path has acted; a failure
    // here is logged and never stops the guard
    if let Some(snap) = sample_from {
        let read_at = snap.now;
        let mut st = std::panic::AssertUnwindSafe(&mut *state);
        let ok = PgTryBuilder::new(move || {
            take_sample(&mut st, &snap);
            true
        })
        .catch_others(|_| false)
        .execute();
        if !ok {
            state.next_sample = samples::next_sample_at(read_at, state.sample_interval);
            warning!("dbconn_guard worker: could not take a sample of the history; the next one is due at its time");
        }
    }
    // records kept in memory while the audit table could not be locked: written once it can
    if extension_ready && !locked_out && guard::records_pending() {
        if let Err(f) = guard::write_pending() {
            warning!("dbconn_guard worker: the records kept in memory are not written to dbconn_guard.terminations yet (retrying at the next check): {f}");
            // the audit cannot be locked in time: no further step of this check waits for it
            locked_out |= f.sqlstate == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE;
        }
    }
    if extension_ready && !locked_out && guard::withdrawals_queued() {
        if let Err(e) = guard::withdraw_queued() {
            error.get_or_insert(format!("withdrawing audit rows: {e}"));
        }
    }
    if extension_ready && !locked_out && purge_due(state, now()) {
        if let Err(f) = xact::writing_transaction(c"dbconn_guard: purging old audit rows", || {
            purge_audit(state, now())
        }) {
            error.get_or_insert(format!("purging old audit rows: {f}"));
        }
    }

    let finished = now();
    let mut s = SHARED.exclusive();
    s.cycles = cycle_no;
    s.last_cycle_start = started;
    s.last_cycle_us = finished - started;
    s.last_cycle_cpu_us = cpu_time_us() - cpu_before;
    s.extension_ready = extension_ready;
    s.could_not_record = could_not_record;
    s.sessions_examined = examined;
    s.terminations_last_cycle = terminated;
    s.deferred_last_cycle = deferred;
    state.terminations_total += terminated;
    s.terminations_total = state.terminations_total;
    if let Some(msg) = &error {
        s.last_error.set(msg);
        s.last_error_at = finished;
    }
    drop(s);
    match error {
        Some(msg) => {
            warning!("dbconn_guard worker: check {cycle_no}: {msg}; retrying within a naptime");
            policy::sleep_after(None, finished, guc::naptime_us())
        }
        None => policy::sleep_after(next_deadline, finished, longest),
    }
}

fn key(b: &crate::core::session::Backend) -> (i32, Micros, Micros) {
    (
        b.pid,
        b.backend_start.unwrap_or(0),
        b.state_change.unwrap_or(0),
    )
}

/// How long a session whose queued statement was cancelled counts as one that re-issues it:
/// two lock-queue timeouts, at least a minute.
fn queue_memory(pol: &policy::Policy) -> Micros {
    (2 * pol.lock_queue_timeout).max(60 * SECOND)
}

/// How long an active root may go without a cancel before its escalation starts afresh:
/// `blocker_terminate_after` + `blocker_timeout` (at least a second of slack).
fn episode_gap(pol: &policy::Policy) -> Micros {
    pol.blocker_terminate_after + pol.blocker_timeout.max(SECOND)
}

fn session_key(b: &crate::core::session::Backend) -> (i32, Micros) {
    (b.pid, b.backend_start.unwrap_or(0))
}

fn xact_key(b: &crate::core::session::Backend) -> (i32, Micros, Micros) {
    (
        b.pid,
        b.backend_start.unwrap_or(0),
        b.xact_start.unwrap_or(0),
    )
}

/// Reads every backend and plans (inside the check's first transaction).
fn plan(state: &mut State, pol: &policy::Policy) -> Planned {
    let mut out = Planned {
        extension_ready: false,
        examined: 0,
        targets: Vec::new(),
        deferred: 0,
        next_deadline: None,
        judged_at: 0,
        sample_from: None,
    };
    // the history is sampled whether the extension exists here or not (it lives in shared
    // memory, for the views of any database); a new interval, or a clock set back, aligns
    // the next sample anew
    let interval = guc::sample_interval_us();
    let t = now();
    if interval != state.sample_interval || state.next_sample - t > interval {
        state.sample_interval = interval;
        state.next_sample = samples::next_sample_at(t, interval);
    }
    if !snapshot::extension_present() {
        guard::forget_audit_table_proof();
        if t >= state.next_sample {
            out.sample_from = Some(snapshot::activity_all());
        }
        if !state.said_missing_extension {
            log!(
                "dbconn_guard worker: extension \"dbconn_guard\" does not exist in database {}; waiting for CREATE EXTENSION dbconn_guard there",
                quoted(&guc::database())
            );
            state.said_missing_extension = true;
        }
        return out;
    }
    if state.said_missing_extension {
        log!("dbconn_guard worker: extension found, guarding sessions");
        state.said_missing_extension = false;
    }
    out.extension_ready = true;
    if !unsafe { pg_sys::superuser() } {
        error!(
            "the worker does not run as a superuser (a setting of its database or role?): it ends no session"
        );
    }

    let snap = snapshot::activity_all();
    state.connections_at_read = churn::connections_total();
    out.judged_at = snap.now;
    let util = utilization::utilization(&snap, snapshot::limits());
    out.examined = util.client_backends;

    // forget sessions that are gone — only on a complete read: a status entry that could not
    // be read is no proof that its session ended
    if !state.acted.is_empty() && snap.torn == 0 {
        let present: std::collections::HashSet<(i32, Micros, Micros)> =
            snap.backends.iter().map(key).collect();
        state.acted.retain(|k, _| present.contains(k));
    }
    if !state.acted_xacts.is_empty() && snap.torn == 0 {
        let present: std::collections::HashSet<(i32, Micros, Micros)> =
            snap.backends.iter().map(xact_key).collect();
        state.acted_xacts.retain(|k, _| present.contains(k));
    }
    if (!state.first_cancels.is_empty() || !state.queue_cancels.is_empty()) && snap.torn == 0 {
        // a session that ended, or (for the escalation) that is idle outside a transaction,
        // starts afresh: a pooler's server connection serves another client's transaction next
        let busy: std::collections::HashSet<(i32, Micros)> = snap
            .backends
            .iter()
            .filter(|b| !b.has_state("idle"))
            .map(session_key)
            .collect();
        let present: std::collections::HashSet<(i32, Micros)> =
            snap.backends.iter().map(session_key).collect();
        state.first_cancels.retain(|k, _| busy.contains(k));
        state.queue_cancels.retain(|k, _| present.contains(k));
    }
    if !state.ending.is_empty() && snap.torn == 0 {
        let present: std::collections::HashSet<(i32, Micros)> =
            snap.backends.iter().map(session_key).collect();
        state.ending.retain(|k, _| present.contains(k));
    }
    if !state.backoff.is_empty() && snap.torn == 0 {
        let present: std::collections::HashSet<(i32, Micros, Micros)> =
            snap.backends.iter().map(key).collect();
        state.backoff.retain(|k, _| present.contains(k));
    }

    if guc::ENABLED.get() && state.refused.is_none() {
        let load = Load {
            client_backends: util.client_backends,
            max_connections: util.limits.max_connections,
        };
        let (acted, acted_xacts, backoff, first_cancels, queue_cancels, ending) = (
            &state.acted,
            &state.acted_xacts,
            &state.backoff,
            &state.first_cancels,
            &state.queue_cancels,
            &state.ending,
        );
        let judged_at = snap.now;
        // the lock graph only for the root-blocker and lock-queue rules (no catalog access,
        // no names)
        let waits = if pol.watches_locks() {
            locks::lock_graph()
        } else {
            Vec::new()
        };
        // every expired target, in order: the cap is applied as they are acted on (`cycle`)
        let uncapped = policy::Policy {
            max_terminations_per_cycle: usize::MAX,
            ..pol.clone()
        };
        let plan = policy::plan_with(
            &snap,
            &waits,
            load,
            &uncapped,
            unsafe { pg_sys::MyProcPid },
            |b, rule| {
                // a statement that ignored its cancel is the same statement: acted on once,
                // but its escalation is judged all the same
                (rule != policy::Rule::BlockerTerminate && acted.contains_key(&key(b)))
                    || (b.xact_start.is_some() && acted_xacts.contains_key(&xact_key(b)))
                    || backoff.get(&key(b)).is_some_and(|o| o.until > judged_at)
            },
            |b| policy::Recall {
                first_blocker_cancel: first_cancels
                    .get(&session_key(b))
                    .filter(|(_, last)| judged_at - last <= episode_gap(&uncapped))
                    .map(|(first, _)| *first),
                queue_cancelled_lately: queue_cancels
                    .get(&session_key(b))
                    .is_some_and(|at| judged_at - at <= queue_memory(&uncapped)),
                ending: ending.contains_key(&session_key(b)),
            },
        );
        out.targets = plan.targets;
        // a queued statement's relation, named here, in the check's transaction (the kill path
        // logs it later, with interrupts held: no catalog access there)
        for t in out.targets.iter_mut() {
            if let Some(r) = t.queued.as_mut().and_then(|q| q.relation.as_mut()) {
                *r = locks::relation_label(r);
            }
        }
        // for the audit: what each target holds up (from the lock graph, read here when the
        // rules did not read it: only when there is someone to act on), on which relation,
        // and its last statement, re-read from its own status entry
        if !out.targets.is_empty() {
            let read_now;
            let graph = if pol.watches_locks() {
                &waits
            } else {
                read_now = locks::lock_graph();
                &read_now
            };
            guard::describe_for_audit(out.targets.iter_mut(), graph, judged_at);
        }
        out.deferred = plan.deferred as i64;
        // a back-off that ends wakes nobody: its session is judged again at the first check
        // after it (at most a naptime, or the shortest timeout, later), so sessions spared at
        // different moments add no wake-ups of their own
        out.next_deadline = plan.next_deadline;
    }

    if snap.now >= state.next_sample {
        out.sample_from = Some(snap);
    }
    out
}

const PURGE_EVERY: Micros = 3600 * SECOND;

/// Whether the hourly purge is due (checked without a transaction: most checks have nothing
/// to purge).
fn purge_due(state: &State, now: Micros) -> bool {
    guc::AUDIT_RETENTION.get() > 0
        && now - state.last_purge >= PURGE_EVERY
        && !unsafe { pg_sys::RecoveryInProgress() }
}
/// Rows deleted per statement when purging: a long backlog goes in steps, each well within the
/// worker's statement_timeout.
const PURGE_BATCH: i64 = 10_000;

/// Deletes audit rows older than `dbconn_guard.audit_retention`, hourly and after each reload
/// (not on a standby, where the table is read-only).
fn purge_audit(state: &mut State, now: Micros) {
    let retention_s = guc::AUDIT_RETENTION.get();
    if retention_s <= 0
        || now - state.last_purge < PURGE_EVERY
        || unsafe { pg_sys::RecoveryInProgress() }
    {
        return;
    }
    state.last_purge = now;
    if snapshot::audit_table().is_none() {
        return;
    }
    let mut deleted = 0;
    loop {
        let n = Spi::connect_mut(|client| {
            client
                .update(
                    "DELETE FROM dbconn_guard.terminations WHERE id OPERATOR(pg_catalog.=) ANY (ARRAY( \
                       SELECT id FROM dbconn_guard.terminations \
                        WHERE terminated_at OPERATOR(pg_catalog.<) \
                              (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1)) \
                        LIMIT $2))",
                    None,
                    &[f64::from(retention_s).into(), PURGE_BATCH.into()],
                )
                .map(|t| t.len())
        })
        .unwrap_or_else(|e| error!("could not purge old audit rows: {e}"));
        deleted += n;
        if (n as i64) < PURGE_BATCH {
            break;
        }
    }
    if deleted > 0 {
        log!("dbconn_guard worker: deleted {deleted} rows of dbconn_guard.terminations older than dbconn_guard.audit_retention ({retention_s}s)");
    }
}

/// Test builds only: appends `dbconn_guard.test_fill_history` synthetic samples, 10 seconds
/// apart (the default interval) and ending now, each with the ring's full number of groups under
/// 63-byte names (the worst case for a reader). The worker is the ring's only writer, so the
/// samples are written here, not by the backend that asks.
#[cfg(feature = "test_hooks")]
fn fill_history_for_tests(state: &mut State) {
    use crate::core::history::{GroupName, GroupSample, Sample, StateCounts};
    let n = guc::TEST_FILL_HISTORY.get();
    if n <= 0 || n == state.filled {
        return;
    }
    state.filled = n;
    let groups = history::shape().map_or(0, |(_, g)| g);
    let interval = 10 * SECOND;
    let end = now();
    let name = |i: usize, what: &str| Some(format!("{what}{i:0>59}"));
    for k in 0..n as i64 {
        let mut s = Sample {
            time: end - (n as i64 - 1 - k) * interval,
            max_connections: 2300,
            utilization_pct: 50.0,
            available_connections: 1147,
            lock_waiters: (k % 7) as u32,
            longest_lock_wait_s: (k % 90) as f64,
            ..Default::default()
        };
        for g in 0..=groups {
            let counts = StateCounts {
                active: 7,
                idle: 50 + (k % 10) as u32,
                idle_in_transaction: 3,
                ..Default::default()
            };
            s.clients.add(&counts);
            s.groups.push(GroupSample {
                name: if g < groups {
                    GroupName {
                        datname: name(g, "db"),
                        usename: name(g, "us"),
                        application_name: name(g, "ap"),
                    }
                } else {
                    GroupName::default()
                },
                counts,
                other: g == groups,
            });
        }
        history::append(&s);
    }
    log!("dbconn_guard worker: test build: appended {n} synthetic samples to the history");
}

/// Takes a sample of the history from the check's own status read, and logs the leak
/// suspects it shows for the first time.
fn take_sample(state: &mut State, snap: &crate::core::session::Snapshot) {
    state.next_sample = samples::next_sample_at(snap.now, state.sample_interval);
    let (by_rule, sampled) = {
        let s = SHARED.share();
        (s.terminations_by_rule, s.sampled_by_rule)
    };
    let connections_total = state.connections_at_read;
    let previous_churn = SHARED.share().previous_churn;
    let lock_wait_starts = locks::wait_starts();
    // the largest pile-up's root, from the lock graph, read only when something waits
    let largest_root = if lock_wait_starts.is_empty() {
        None
    } else {
        crate::core::blocking::largest_root(&locks::lock_graph())
    };
    let extra = Extra {
        lock_wait_starts,
        largest_root,
        terminations: ByRule::since(by_rule, sampled),
        leak_suspect_groups: 0,
        churn: previous_churn.map(|(total, clients, carry)| Churn {
            connections_total,
            previous_connections_total: total,
            previous_clients: clients,
            carry,
        }),
    };
    let top = history::shape().map_or(0, |(_, g)| g);
    let mut sample = samples::take(snap, snapshot::limits(), &extra, top);

    // the leak trend: this group's idle counts over the newest samples, this one included
    let window = guc::LEAK_TREND_SAMPLES.get().max(2) as usize;
    let mut recent = history::read(Some(window.saturating_sub(1)), true);
    if history::enabled() {
        recent.push(sample.clone());
    }
    let samples_of = |n: &samples::GroupName| samples::idle_series(&recent, n, window);
    let idle_age = f64::from(guc::LEAK_IDLE_AGE.get());
    let rows = leaks::suspects_with_trend(
        snap,
        idle_age,
        window,
        samples::previous_sample_time(&recent),
        samples_of,
    );
    sample.leak_suspect_groups = rows.len() as u32;
    history::append(&sample);
    {
        let mut s = SHARED.exclusive();
        s.sampled_by_rule = by_rule;
        s.sessions_ended_total += i64::from(sample.ended_sessions);
        s.previous_churn = Some((
            connections_total,
            samples::churn_clients(&sample.clients),
            sample.churn_carry,
        ));
    }
    let notes = state.leaks.note(&rows, samples_of);
    for note in notes {
        let k = &note.key;
        let why = match &note.reason {
            Reason::OldIdle(age) => {
                format!("idle sessions older than {idle_age:.0}s (oldest {age:.0}s)")
            }
            Reason::Growing(s) => format!(
                "idle count growing over the last {} samples: {s:?}",
                s.len()
            ),
        };
        warning!(
            "dbconn_guard: connection leak suspect: database={} user={} application={} client={} holds {} idle sessions; {why}",
            quoted_or(k.datname.as_deref(), "-"),
            quoted_or(k.usename.as_deref(), "-"),
            quoted_or(k.application_name.as_deref(), "-"),
            k.client_addr.as_deref().map_or_else(|| "local".to_string(), quoted),
            note.idle_count,
        );
    }
}

/// CPU time (user + system) this process has used, in microseconds.
fn cpu_time_us() -> i64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // CLOCK_PROCESS_CPUTIME_ID = 2 on Linux
    unsafe { clock_gettime(2, &mut ts) };
    ts.tv_sec * 1_000_000 + ts.tv_nsec / 1000
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

unsafe extern "C" {
    fn clock_gettime(clk: i32, tp: *mut Timespec) -> i32;
}

// PostgreSQL's signal handlers themselves (pgrx's `pg_sys` items are guarded Rust wrappers,
// which cannot be installed as handlers).
unsafe extern "C-unwind" {
    fn die(postgres_signal_arg: std::ffi::c_int);
    fn SignalHandlerForConfigReload(postgres_signal_arg: std::ffi::c_int);
}
