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

mod check;
pub mod guard;
mod purge;
pub mod requests;
mod sample;
pub mod setting_changes;
pub mod xact;

use crate::core::history::{self as samples, ByRule, Churn, Extra};
use crate::core::leaks::{self, LeakReports, Reason};
use crate::core::policy::{self, Load, Target};
use crate::core::quote::{quoted, quoted_or};
use crate::core::recheck::Verdict;
use crate::core::session::{Micros, SECOND};
use crate::core::utilization;
use crate::guc;
use crate::read::locks;
use crate::read::snapshot;
use crate::shmem::churn;
use crate::shmem::history;
use crate::shmem::status::{POLICY_TEXT, SHARED};
use guard::{Actor, Outcome};
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
    /// waiting for a synchronous standby, which is never cancelled; an index built
    /// CONCURRENTLY; a stopped or traced process), by the same key as
    /// `acted`: not judged again before `until`, then with a doubled delay; logged once.
    backoff: HashMap<(i32, Micros, Micros), Backoff>,
    /// Sessions judged idle whose process a look found busy (`Verdict::Woken`), by the same
    /// key as `acted`: how many checks did. A statement on its way gives the session a new
    /// key; a process kept busy by anything else holds the rule up for `WOKEN_LOOKS` checks.
    woken: HashMap<(i32, Micros, Micros), u32>,
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
                    "dbconn_guard: did not {} pid {}{} (rule {}): {}; it is looked at again after a back-off ({}s, doubling up to {}s), and not logged again",
                    if t.rule.cancels() { "cancel" } else { "end" },
                    t.backend.pid,
                    if t.held_up > 0 { ", the root of a lock pile-up" } else { "" },
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

fn key(b: &crate::core::session::Backend) -> (i32, Micros, Micros) {
    (
        b.pid,
        b.backend_start.unwrap_or(0),
        b.state_change.unwrap_or(0),
    )
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
            sample::fill_history_for_tests(&mut state);
        }
        for ended in requests::serve(&mut state.terminations_total) {
            // a backend lingers in the status array while it exits: not a target again
            state.acted.insert(key(&ended), Acted::Signalled);
            state.ending.insert(session_key(&ended), Acted::Signalled);
        }
        sleep = check::cycle(&mut state);
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
