//! The kill path. Every session the guard ends — by one of the worker's rules or by
//! `terminate_idle()` — goes through `carry_out`, in the background worker, in this order:
//!
//! 1. **Record** (one transaction): for each session, a fresh in-place read of its status
//!    entry must still show it unchanged and unprotected (and, for `terminate_idle()`, one the
//!    caller may end); then its audit row is inserted, each in a subtransaction: a row that
//!    cannot be written drops that session only. The transaction first takes its lock on
//!    `dbconn_guard.terminations`, waiting no longer than the worker's `lock_timeout`, and a
//!    lock timeout on a row ends the batch: when the table cannot be written, nobody is ended.
//!    The rows are committed before any signal is sent.
//! 2. **Queue** every recorded row for withdrawal, in shared memory, before any signal.
//! 3. **Signal**: for each recorded session, one more in-place read of its status entry, the
//!    protections applied to that read, and at once `pg_terminate_backend()` — as the calling
//!    role for `terminate_idle()`, so PostgreSQL's own permission rules decide. The moment a
//!    session is signalled, its row leaves the queue.
//! 4. **Withdraw** what is left in the queue: the rows of sessions spared at the last look (they
//!    ran a query in between, or ended), or not reached because something stopped the worker
//!    (an error, SIGTERM, a FATAL error). Whatever happened, the queue outlives the attempt —
//!    and the worker: it is emptied at the worker's next check, also after a restart. So a row
//!    that says "terminated" stays only for a session that was signalled.
//!
//! No wait holds interrupts: a SIGTERM ends the worker at once, and whatever it had not
//! signalled yet is withdrawn by its successor.
//!
//! On a hot standby the table is read-only, and when it cannot be locked within the worker's
//! `lock_timeout` (a lock queue on it, its sequence or index, or the catalogs that prove it is
//! the extension's) it cannot be written in time: the record is then the shared-memory ring
//! and the LOG line, written with the signal while interrupts are held (no wait in between),
//! and — off a standby — a list of records waiting in shared memory, which the worker writes to
//! the table once it can.

use crate::core::blocking::{self, LockWait};
use crate::core::durations::dur;
use crate::core::policy::{self, Policy, Rule, Scope, Target};
use crate::core::quote::{quoted, quoted_or};
use crate::core::recheck::{self, Fresh, Task, Verdict};
use crate::core::rules::LastLook;
use crate::core::session::{age_seconds, Micros, Name};
use crate::guc;
use crate::read::backend_status::{self, Slot};
use crate::read::encoding::DbText;
use crate::read::locks;
use crate::read::process::ProcessStat;
use crate::read::snapshot;
use crate::read::time::timestamptz;
use crate::shmem::status::{self, FixedText, TerminationRecord, Withdrawal};
use crate::worker::xact;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::IntoDatum;
use std::time::Instant;

/// Who acts.
#[derive(Clone, Debug)]
pub enum Actor {
    /// One of the worker's rules, in its check number `cycle`.
    Worker { cycle: i64 },
    /// `terminate_idle()`, called by `role` (named `name`).
    Manual { role: pg_sys::Oid, name: String },
}

impl Actor {
    pub fn label(&self) -> String {
        match self {
            Actor::Worker { .. } => "worker".into(),
            Actor::Manual { name, .. } => format!("manual:{name}"),
        }
    }

    fn cycle(&self) -> Option<i64> {
        match self {
            Actor::Worker { cycle } => Some(*cycle),
            Actor::Manual { .. } => None,
        }
    }
}

/// What happened to one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded, then signalled `window_us` microseconds after its last look began (the read
    /// of its process, or of its status entry for an active statement).
    Terminated { window_us: u32 },
    /// Dry run: recorded, not signalled.
    WouldTerminate,
    /// Neither recorded nor signalled: the look before recording said so.
    Spared(Verdict),
    /// Recorded, then spared at the last look; its row was withdrawn.
    Withdrawn(Verdict),
    /// Its audit row could not be written: not signalled.
    NotRecorded,
    /// The caller of `terminate_idle()` may not end it (PostgreSQL's rule): not recorded.
    NotPermitted,
    /// `pg_terminate_backend()` refused or failed; its row was withdrawn.
    SignalFailed,
    /// The worker ended while carrying out the request: what happened is in the audit.
    Unknown,
}

impl Outcome {
    /// What was done, as `terminate_idle()` (`cancel` false) or `cancel_statements()` says it.
    pub fn action(self, cancel: bool) -> String {
        match self {
            Outcome::Terminated { .. } if cancel => "cancelled".into(),
            Outcome::WouldTerminate if cancel => "dry run: would cancel".into(),
            Outcome::Spared(
                v @ (Verdict::CommitWaitsForStandby | Verdict::Woken | Verdict::Stopped),
            )
            | Outcome::Withdrawn(
                v @ (Verdict::CommitWaitsForStandby | Verdict::Woken | Verdict::Stopped),
            ) => {
                format!("skipped: {}", v.as_str())
            }
            Outcome::Spared(v) | Outcome::Withdrawn(v)
                if cancel && !matches!(v, Verdict::Protected(_)) =>
            {
                format!(
                    "skipped: the statement ended or changed before it could be cancelled ({})",
                    v.as_str()
                )
            }
            Outcome::NotRecorded if cancel => {
                "skipped: its record could not be written, so it was not cancelled".into()
            }
            Outcome::Terminated { .. } => "terminated".into(),
            Outcome::WouldTerminate => "dry run: would terminate".into(),
            Outcome::Spared(Verdict::Protected(p)) | Outcome::Withdrawn(Verdict::Protected(p)) => {
                format!("skipped: protected ({})", p.as_str())
            }
            Outcome::Spared(v) | Outcome::Withdrawn(v) => format!(
                "skipped: session changed or ended before it could be ended ({})",
                v.as_str()
            ),
            Outcome::NotRecorded => {
                "skipped: its record could not be written, so it was not ended".into()
            }
            Outcome::NotPermitted => {
                "skipped: permission denied (needs pg_signal_backend or membership in the session's role)"
                    .into()
            }
            Outcome::SignalFailed => "skipped: permission denied or signal failed".into(),
            Outcome::Unknown => {
                "unknown: the worker stopped while carrying this out; see dbconn_guard.terminations"
                    .into()
            }
        }
    }

    pub fn ended(self) -> bool {
        matches!(self, Outcome::Terminated { .. })
    }

    /// One byte for the request mailbox of `terminate_idle()`.
    pub fn code(self) -> u8 {
        use crate::core::policy::Protection as P;
        match self {
            Outcome::Terminated { .. } => 1,
            Outcome::WouldTerminate => 2,
            Outcome::Unknown => 0,
            Outcome::NotRecorded => 3,
            Outcome::SignalFailed => 4,
            Outcome::NotPermitted => 5,
            Outcome::Spared(v) | Outcome::Withdrawn(v) => match v {
                Verdict::Proceed | Verdict::Gone => 10,
                Verdict::Unreadable => 11,
                Verdict::Changed => 12,
                Verdict::NoLongerBlocking => 13,
                Verdict::CommitWaitsForStandby => 14,
                Verdict::NoLongerQueued => 15,
                Verdict::ConcurrentIndexBuild => 16,
                Verdict::Woken => 17,
                Verdict::Stopped => 18,
                Verdict::Protected(p) => {
                    20 + match p {
                        P::NotAClientBackend => 0,
                        P::OwnSession => 1,
                        P::Superuser => 2,
                        P::ClientTool => 3,
                        P::ExcludedDatabase => 4,
                        P::ExcludedUser => 5,
                        P::ExcludedApplication => 6,
                        P::NotIncludedApplication => 7,
                    }
                }
            },
        }
    }

    pub fn from_code(c: u8) -> Outcome {
        use crate::core::policy::Protection as P;
        match c {
            0 => Outcome::Unknown,
            1 => Outcome::Terminated { window_us: 0 },
            2 => Outcome::WouldTerminate,
            3 => Outcome::NotRecorded,
            4 => Outcome::SignalFailed,
            5 => Outcome::NotPermitted,
            11 => Outcome::Spared(Verdict::Unreadable),
            12 => Outcome::Spared(Verdict::Changed),
            13 => Outcome::Spared(Verdict::NoLongerBlocking),
            14 => Outcome::Spared(Verdict::CommitWaitsForStandby),
            15 => Outcome::Spared(Verdict::NoLongerQueued),
            16 => Outcome::Spared(Verdict::ConcurrentIndexBuild),
            17 => Outcome::Spared(Verdict::Woken),
            18 => Outcome::Spared(Verdict::Stopped),
            20..=27 => Outcome::Spared(Verdict::Protected(
                [
                    P::NotAClientBackend,
                    P::OwnSession,
                    P::Superuser,
                    P::ClientTool,
                    P::ExcludedDatabase,
                    P::ExcludedUser,
                    P::ExcludedApplication,
                    P::NotIncludedApplication,
                ][usize::from(c - 20)],
            )),
            _ => Outcome::Spared(Verdict::Gone),
        }
    }
}

/// What `carry_out` did.
pub struct Report {
    /// One per target, in order.
    pub outcomes: Vec<Outcome>,
    /// Why rows could not be written (the whole batch, or some rows), if they could not.
    pub error: Option<String>,
    /// The audit could not be locked in time: the sessions were recorded in memory.
    pub locked_out: bool,
}

const LOCK_AUDIT: &str = "LOCK TABLE dbconn_guard.terminations IN ROW EXCLUSIVE MODE";

const RECORD: &str = "INSERT INTO dbconn_guard.terminations \
     (terminated_at, pid, usename, datname, application_name, client_addr, state, state_age_seconds, \
      xact_age_seconds, backend_start, rule, dry_run, actor, worker_cycle, \
      query, query_id, held_up, held_up_seconds, held_up_lock) \
     VALUES (pg_catalog.clock_timestamp(), $1, $2, $3, $4, $5::pg_catalog.inet, $6, $7, $8, $9, $10, $11, $12, $13, \
      $14, $15, $16, $17, $18) \
     RETURNING id";

/// The columns 0.1.0's table has (`RECORD`'s and `RECORD_LATER`'s first parameters): the
/// library of 0.2.0 runs against it from the restart that loads it until `ALTER EXTENSION
/// dbconn_guard UPDATE`, and keeps guarding meanwhile.
const RECORD_0_1: &str = "INSERT INTO dbconn_guard.terminations \
     (terminated_at, pid, usename, datname, application_name, client_addr, state, state_age_seconds, \
      xact_age_seconds, backend_start, rule, dry_run, actor, worker_cycle) \
     VALUES (pg_catalog.clock_timestamp(), $1, $2, $3, $4, $5::pg_catalog.inet, $6, $7, $8, $9, $10, $11, $12, $13) \
     RETURNING id";
const RECORD_LATER_0_1: &str = "INSERT INTO dbconn_guard.terminations \
     (terminated_at, pid, usename, datname, application_name, client_addr, state, state_age_seconds, \
      xact_age_seconds, backend_start, rule, dry_run, actor, worker_cycle) \
     VALUES ($1, $2, $3, $4, $5, $6::pg_catalog.inet, $7, $8, $9, $10, $11, $12, $13, $14)";

/// Whether the audit table has 0.2.0's columns (the statement and what it held up), or is
/// still 0.1.0's (the extension not updated yet).
fn audit_has_statement_columns(table: pg_sys::Oid) -> bool {
    unsafe { pg_sys::get_attnum(table, c"held_up_lock".as_ptr()) != 0 }
}

/// A record kept in memory while the table could not be locked, written at a later check.
const RECORD_LATER: &str = "INSERT INTO dbconn_guard.terminations \
     (terminated_at, pid, usename, datname, application_name, client_addr, state, state_age_seconds, \
      xact_age_seconds, backend_start, rule, dry_run, actor, worker_cycle, \
      query, query_id, held_up, held_up_seconds, held_up_lock) \
     VALUES ($1, $2, $3, $4, $5, $6::pg_catalog.inet, $7, $8, $9, $10, $11, $12, $13, $14, \
      $15, $16, $17, $18, $19)";

/// Rows by id *and* the pid they record: an id alone could name another row.
const WITHDRAW: &str = "DELETE FROM dbconn_guard.terminations t \
     USING ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int4[])) AS w(id, pid) \
     WHERE t.id OPERATOR(pg_catalog.=) w.id AND t.pid OPERATOR(pg_catalog.=) w.pid";

/// The process file a last look at `t` reads: for a session judged idle only (opened before
/// the look, so that the open is not inside the window).
fn process_of(t: &Target) -> ProcessStat {
    if recheck::reads_task(&t.backend) {
        ProcessStat::open(t.backend.pid)
    } else {
        ProcessStat::none()
    }
}

/// The last look at a target: for a session judged idle, what the kernel says of its process
/// (`stat`, opened by `process_of`), then its status entry read once more, in place, and both
/// judged (in this order: a statement that reached the backend before the process was read
/// shows in one or the other). `woken_before`: the checks in a row before this one that found
/// its process busy.
fn last_look(t: &Target, stat: &ProcessStat, scope: &Scope, me: i32, woken_before: u32) -> Verdict {
    let task = if recheck::reads_task(&t.backend) {
        #[allow(unused_mut)]
        let mut task = stat.task();
        #[cfg(feature = "test_hooks")]
        if guc::TEST_BUSY_PID.get() == t.backend.pid && task == Task::Sleeping {
            task = Task::Busy;
        }
        task.counted(woken_before)
    } else {
        Task::Unknown
    };
    let read = match t.backend.slot {
        Some(slot) => backend_status::read_slot(slot),
        None => Slot::Torn,
    };
    let fresh = match &read {
        Slot::Unused => Fresh::Gone,
        Slot::Torn => Fresh::Unreadable,
        Slot::Read(b) => Fresh::Read(b),
    };
    recheck::last_word(&t.backend, fresh, task, scope, me)
}

/// `pg_stat_activity.wait_event` of a commit waiting for a synchronous standby.
const SYNC_REP_WAIT: &str = "SyncRep";

/// For a target of a root-blocker rule, a fresh read of the lock graph: is it still the root
/// of a pile-up past the rule, under the policy in force now? (Its status entry, read next,
/// says whether it is still in the same transaction, or the same statement.) For any cancel:
/// is its statement a COMMIT waiting for a synchronous standby? Other targets pass.
fn still_the_root(t: &Target, pol: &Policy) -> Verdict {
    // a COMMIT waiting for a synchronous standby holds its locks until the standby answers;
    // cancelling it, or ending its session, commits locally without the standby: never,
    // whoever asks (a session in a state other than active waits for no standby)
    if (t.rule.cancels() || t.backend.has_state("active"))
        && locks::wait_event_of(t.backend.pid).as_deref() == Some(SYNC_REP_WAIT)
    {
        return Verdict::CommitWaitsForStandby;
    }
    match t.rule.row().last_look {
        LastLook::Session => return Verdict::Proceed,
        LastLook::StillQueued => {
            let waits = locks::lock_graph();
            let now = unsafe { pg_sys::GetCurrentTimestamp() };
            return if policy::still_queued(&t.backend, &waits, now, pol) {
                Verdict::Proceed
            } else {
                Verdict::NoLongerQueued
            };
        }
        LastLook::StillTheRoot => {}
    }
    if t.rule == Rule::BlockerTerminate
        && (!pol.cancel_active_blockers || pol.blocker_terminate_after == 0)
    {
        return Verdict::NoLongerBlocking;
    }
    if t.rule == Rule::BlockerCancel && !pol.cancel_active_blockers {
        return Verdict::NoLongerBlocking;
    }
    // it, or one of its parallel workers, waits itself: not the root
    if locks::waits_itself(t.backend.pid) {
        return Verdict::NoLongerBlocking;
    }
    // a CONCURRENTLY index build between two of its waits for older snapshots
    if t.backend.has_state("active")
        && t.backend
            .slot
            .is_some_and(backend_status::builds_index_concurrently)
    {
        return Verdict::ConcurrentIndexBuild;
    }
    let waits = locks::lock_graph();
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    if policy::still_blocking(&t.backend, &waits, now, pol, &t.left_to_lock_queue_rule) {
        Verdict::Proceed
    } else {
        Verdict::NoLongerBlocking
    }
}

/// May `caller` end a session of the role named `target`? PostgreSQL's rule for
/// `pg_terminate_backend()` (`pg_signal_backend()` in signalfuncs.c): a superuser's session
/// only for a superuser, others for a member of `pg_signal_backend` or of the session's role.
/// Checked before a row is written; PostgreSQL checks it again when the worker signals as the
/// caller.
fn may_signal(caller: pg_sys::Oid, target: Option<&str>) -> bool {
    let Some(Ok(name)) = target.map(std::ffi::CString::new) else {
        return false;
    };
    unsafe {
        let role = pg_sys::get_role_oid(name.as_ptr(), true);
        if role == pg_sys::InvalidOid {
            return false;
        }
        if pg_sys::superuser_arg(role) {
            return pg_sys::superuser_arg(caller);
        }
        pg_sys::has_privs_of_role(caller, role)
            || pg_sys::has_privs_of_role(caller, pg_sys::Oid::from(pg_sys::ROLE_PG_SIGNAL_BACKEND))
    }
}

/// What the audit rows of `targets` say besides the session: what each holds up now, by
/// `graph` (the lock graph read in this transaction, indexed once), on which relation (named
/// here, where catalog access is allowed, in a subtransaction: a failure leaves the relation's
/// oid and is logged, and never stops the check), and its last statement, re-read from its own
/// status entry (only the targets' texts are copied, never every session's; none with
/// `dbconn_guard.audit_query_text` off). Runs in the worker's check transaction.
pub fn describe_for_audit<'a>(
    targets: impl Iterator<Item = &'a mut Target>,
    graph: &[LockWait],
    now: Micros,
) {
    let index = blocking::HeldUpIndex::new(graph);
    let mut backends = Vec::new();
    for t in targets {
        t.holds = index.held_up(t.backend.pid, now);
        if let Some(l) = t.holds.lock.as_mut() {
            if let Some((mode, rel)) = l.split_once(" on relation ") {
                match xact::subtransaction(|| locks::relation_label(rel)) {
                    Ok(name) => *l = format!("{mode} on relation {name}"),
                    Err(f) => log!("dbconn_guard: the relation of a lock stays unnamed: {f}"),
                }
            }
        }
        backends.push(&mut t.backend);
    }
    if guc::AUDIT_QUERY_TEXT.get() {
        backend_status::read_queries_of(backends.into_iter());
    } else {
        for b in backends {
            b.query = None;
        }
    }
}

/// Records, then ends (or in a dry run only records) each target still unchanged; see the
/// module comment for the order and guarantees. `judged_at` is when the targets were read;
/// `woken_before` says, for a target, how many checks in a row before this one found its
/// process busy (`core::recheck`). Runs in the background worker, outside any transaction.
pub fn carry_out(
    targets: &[Target],
    judged_at: Micros,
    actor: &Actor,
    dry_run: bool,
    locked_out_before: bool,
    woken_before: &dyn Fn(&Target) -> u32,
) -> Report {
    let pol = guc::policy();
    let scope = pol.scope.clone();
    let me = unsafe { pg_sys::MyProcPid };
    let standby = unsafe { pg_sys::RecoveryInProgress() };
    let label = actor.label();
    let caller = match actor {
        Actor::Manual { role, .. } => Some(*role),
        Actor::Worker { .. } => None,
    };
    let mut outcomes = vec![Outcome::NotRecorded; targets.len()];
    let mut row_ids: Vec<Option<i64>> = vec![None; targets.len()];
    let mut row_errors: Vec<String> = Vec::new();
    let mut table = pg_sys::InvalidOid;
    if targets.is_empty() {
        return Report {
            outcomes,
            error: None,
            locked_out: false,
        };
    }

    // the look before recording: unchanged, unprotected, still the root, and one the caller
    // may end
    let check = |t: &Target| {
        let mut v = still_the_root(t, &pol);
        if v == Verdict::Proceed {
            v = last_look(t, &process_of(t), &scope, me, woken_before(t));
        }
        if v != Verdict::Proceed {
            Some(Outcome::Spared(v))
        } else if caller.is_some_and(|c| !may_signal(c, t.backend.usename.as_deref())) {
            Some(Outcome::NotPermitted)
        } else {
            None
        }
    };
    // targets recorded in memory (the ring and the LOG line) instead of the table, which
    // could not be locked within the worker's lock_timeout
    let mut in_memory = vec![false; targets.len()];
    let mut locked_out: Option<String> = None;
    // the table's proof waited out the lock timeout (the last proof stood in)
    let mut catalog_waited = false;
    if locked_out_before && !standby {
        // an earlier batch of this check waited out the lock already: not a second time
        in_memory.fill(true);
        locked_out = Some("an earlier batch of this check could not lock it".into());
    }

    // 1. record, and commit
    let mut wide = true;
    let recorded = xact::writing_transaction(c"dbconn_guard: recording terminations", || {
        if standby || locked_out.is_some() {
            if standby {
                for (i, t) in targets.iter().enumerate() {
                    outcomes[i] = check(t).unwrap_or(Outcome::WouldTerminate);
                }
            }
            return;
        }
        table = match verified_audit_table() {
            Ok((Some(t), waited)) => {
                catalog_waited = waited;
                t
            }
            Ok((None, _)) => error!(
                "dbconn_guard.terminations in database \"{}\" is not the table of the extension dbconn_guard: nothing is written to it, and no session is ended",
                guc::database()
            ),
            Err(f) => {
                in_memory.fill(true);
                locked_out = Some(f.message);
                return;
            }
        };
        Spi::connect_mut(|client| {
            // the table's lock first, bounded by the worker's lock_timeout; when it cannot be
            // had (a lock queue on the table, which its database's owner can hold), every
            // target is recorded in memory instead: nobody can stop the guard by holding it
            // and, under it (an ALTER EXTENSION UPDATE that adds columns waits for it), which
            // columns the table has: a catalog read that can wait too, bounded the same way
            let locked = xact::subtransaction(|| {
                client
                    .update(LOCK_AUDIT, None, &[])
                    .map(|_| audit_has_statement_columns(table))
            });
            match locked {
                Ok(r) => wide = r?,
                Err(f) if f.sqlstate == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE => {
                    in_memory.fill(true);
                    locked_out = Some(f.message);
                    return Ok(());
                }
                Err(f) => error!("{f}"),
            }
            for (i, t) in targets.iter().enumerate() {
                if let Some(o) = check(t) {
                    outcomes[i] = o;
                    continue;
                }
                let b = &t.backend;
                let state_age = age_seconds(judged_at, b.state_change).unwrap_or(0.0);
                let text = |v: Option<&str>| v.map(DbText::from);
                let h = &t.holds;
                let rec: [DatumWithOid; 18] = [
                    b.pid.into(),
                    text(b.usename.as_deref()).into(),
                    text(b.datname.as_deref()).into(),
                    text(b.application_name.as_deref()).into(),
                    b.client_addr.as_deref().into(),
                    b.state.into(),
                    state_age.into(),
                    age_seconds(judged_at, b.xact_start).into(),
                    b.backend_start.and_then(timestamptz).into(),
                    t.rule.as_str().into(),
                    dry_run.into(),
                    text(Some(label.as_str())).into(),
                    actor.cycle().into(),
                    text(b.query.as_deref()).into(),
                    b.query_id.into(),
                    (h.sessions.min(i32::MAX as usize) as i32).into(),
                    (h.sessions > 0).then_some(h.longest_wait_s).into(),
                    text(h.lock.as_deref()).into(),
                ];
                let row = xact::subtransaction(|| {
                    let (sql, params) = if wide {
                        (RECORD, &rec[..])
                    } else {
                        (RECORD_0_1, &rec[..13])
                    };
                    client
                        .update(sql, Some(1), params)
                        .and_then(|r| r.first().get::<i64>(1))
                });
                match row {
                    Ok(Ok(Some(id))) => {
                        row_ids[i] = Some(id);
                        outcomes[i] = Outcome::WouldTerminate;
                    }
                    Ok(Ok(None)) => row_errors.push(format!("pid {}: no row id", b.pid)),
                    Ok(Err(e)) => row_errors.push(format!("pid {}: {e}", b.pid)),
                    // a lock on the sequence or an index (REINDEX): this row and the rest
                    // are recorded in memory, like a lock on the table
                    Err(f) if f.sqlstate == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE => {
                        in_memory[i..].fill(true);
                        locked_out = Some(f.message);
                        break;
                    }
                    Err(f) => {
                        row_errors.push(format!("pid {}: {f}", b.pid));
                        if f.ends_the_batch() {
                            // a cancel: the check in progress is abandoned
                            break;
                        }
                    }
                }
            }
            Ok::<(), spi::Error>(())
        })
        .unwrap_or_else(|e| error!("{e}"));
    });
    if let Err(f) = &recorded {
        let msg = format!("could not record terminations, so none was carried out: {f}");
        return Report {
            outcomes: vec![Outcome::NotRecorded; targets.len()],
            error: Some(msg),
            locked_out: false,
        };
    }
    if let Some(why) = &locked_out {
        // the look before recording, for the targets recorded in memory
        let n = in_memory.iter().filter(|&&m| m).count();
        let looked = xact::transaction(c"dbconn_guard: recording terminations in memory", || {
            for (i, t) in targets.iter().enumerate() {
                if in_memory[i] {
                    outcomes[i] = check(t).unwrap_or(Outcome::WouldTerminate);
                }
            }
        });
        if let Err(f) = looked {
            for (i, o) in outcomes.iter_mut().enumerate() {
                if in_memory[i] {
                    *o = Outcome::NotRecorded;
                }
            }
            row_errors.push(format!("looking at sessions to record in memory: {f}"));
        }
        let msg = format!(
            "could not lock dbconn_guard.terminations within lock_timeout ({why}): {n} sessions are recorded in shared memory (recent_terminations()) and the server log instead, and written to the table once it can be locked"
        );
        // said once a check (a later batch of the same check follows the first's lead)
        if !locked_out_before {
            warning!("dbconn_guard: {msg}");
        }
        // shown (worker_status().last_error, diagnose()), but no failure of the check: the
        // worker keeps its deadlines
        if status::available() && !locked_out_before {
            let mut s = status::SHARED.exclusive();
            s.last_error.set(&msg);
            s.last_error_at = unsafe { pg_sys::GetCurrentTimestamp() };
        }
    }
    let persisted = !standby;
    // outcomes already logged and remembered (with interrupts held)
    let mut told = vec![false; targets.len()];
    // an outcome's LOG line, and its record in shared memory when it was acted on
    let tell = |i: usize, o: Outcome| {
        let t = &targets[i];
        log_outcome(t, o, judged_at, &label, dry_run);
        if matches!(o, Outcome::Terminated { .. } | Outcome::WouldTerminate) {
            remember(
                t,
                o,
                judged_at,
                &label,
                dry_run,
                persisted && !in_memory[i],
                in_memory[i],
                actor.cycle(),
            );
        }
    };

    if !dry_run {
        // 2. queue every recorded row for withdrawal, before any signal
        let written: Vec<Withdrawal> = targets
            .iter()
            .zip(&row_ids)
            .filter_map(|(t, id)| {
                id.map(|id| Withdrawal {
                    id,
                    pid: t.backend.pid,
                })
            })
            .collect();
        if !standby {
            queue_withdrawals(table, &written);
        }
        // 3. signal each after one more look at it, taking its row off the queue at once
        let signalled = xact::transaction(c"dbconn_guard: ending sessions", || {
            for (i, t) in targets.iter().enumerate() {
                if outcomes[i] != Outcome::WouldTerminate {
                    continue;
                }
                // a session recorded only in memory: the signal, its record in the ring and
                // its LOG line with interrupts held, so that a SIGTERM cannot come between
                // the signal and the record
                let held = (!persisted || in_memory[i]).then(HeldInterrupts::hold);
                #[cfg(feature = "test_hooks")]
                {
                    let ms = guc::TEST_DELAY_BEFORE_SIGNAL.get();
                    if ms > 0 {
                        unsafe { pg_sys::pg_usleep((i64::from(ms) * 1000) as _) };
                    }
                }
                // the last look and the signal, back to back, in a subtransaction begun
                // beforehand (so its setup is not inside the window)
                let look_and_signal = xact::subtransaction(|| {
                    // a root blocker: the lock graph read again first (outside the window:
                    // the status entry, read next, says whether it did anything since)
                    let v = still_the_root(t, &pol);
                    if v != Verdict::Proceed {
                        return (v, false, 0);
                    }
                    let stat = process_of(t);
                    let start = Instant::now();
                    let v = last_look(t, &stat, &scope, me, woken_before(t));
                    if v != Verdict::Proceed {
                        return (v, false, 0);
                    }
                    let sent = signal(t.backend.pid, caller, t.rule.cancels());
                    let window_us = start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    (v, sent, window_us)
                });
                outcomes[i] = match look_and_signal {
                    Ok((Verdict::Proceed, true, window_us)) => Outcome::Terminated { window_us },
                    Ok((Verdict::Proceed, false, _)) => Outcome::Withdrawn(Verdict::Gone),
                    Ok((v, _, _)) => Outcome::Withdrawn(v),
                    Err(f) => {
                        row_errors.push(format!("pid {}: {f}", t.backend.pid));
                        Outcome::SignalFailed
                    }
                };
                if let (Outcome::Terminated { .. }, Some(id), false) =
                    (outcomes[i], row_ids[i], standby)
                {
                    dequeue_withdrawals(&[Withdrawal {
                        id,
                        pid: t.backend.pid,
                    }]);
                }
                // its LOG line and ring entry at once, not after the batch (with interrupts
                // still held for a record kept in memory only)
                if outcomes[i].ended() {
                    tell(i, outcomes[i]);
                    told[i] = true;
                }
                drop(held);
            }
        });
        if let Err(f) = signalled {
            row_errors.push(format!("while ending sessions: {f}"));
        }
        // whatever the signal step did not reach was not signalled
        for o in outcomes.iter_mut() {
            if *o == Outcome::WouldTerminate {
                *o = Outcome::SignalFailed;
            }
        }
        // 4. withdraw the rows of the sessions not signalled (not while the audit cannot be
        // locked in time: the next check does, once it can)
        if !standby && locked_out.is_none() && !catalog_waited {
            if let Err(e) = withdraw_queued() {
                warning!(
                    "dbconn_guard: could not withdraw the audit rows of sessions that were not ended, will retry at the next check: {e}"
                );
            }
        }
    }

    for (i, o) in outcomes.iter().enumerate() {
        if !told[i] {
            tell(i, *o);
        }
    }
    Report {
        outcomes,
        error: (!row_errors.is_empty()).then(|| row_errors.join("; ")),
        locked_out: locked_out.is_some() || catalog_waited,
    }
}

/// `pg_terminate_backend(pid)` (not waiting for the backend to exit), or with `cancel`
/// `pg_cancel_backend(pid)`, as `role` when given — PostgreSQL's own permission rules — or as
/// the worker. Called in a subtransaction: an error (permission denied) aborts it, which also
/// puts the user back.
fn signal(pid: i32, role: Option<pg_sys::Oid>, cancel: bool) -> bool {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        if let Some(r) = role {
            pg_sys::SetUserIdAndSecContext(
                r,
                saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
            );
        }
    }
    let sent = unsafe {
        if cancel {
            pgrx::direct_function_call::<bool>(pg_sys::pg_cancel_backend, &[pid.into_datum()])
        } else {
            pgrx::direct_function_call::<bool>(
                pg_sys::pg_terminate_backend,
                &[pid.into_datum(), 0i64.into_datum()],
            )
        }
        .unwrap_or(false)
    };
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    sent
}

/// Queues audit rows for withdrawal (see the module comment). Rows of another table than the
/// one already queued for mean the extension was dropped and created again: the old entries
/// are dropped, their table is gone.
fn queue_withdrawals(table: pg_sys::Oid, rows: &[Withdrawal]) {
    if !status::available() || rows.is_empty() {
        return;
    }
    let mut s = status::SHARED.exclusive();
    if s.withdraw_table != u32::from(table) {
        s.withdraw_len = 0;
        s.withdraw_table = u32::from(table);
    }
    let mut lost = 0;
    for w in rows {
        let n = s.withdraw_len as usize;
        if n < s.withdraw.len() {
            s.withdraw[n] = *w;
            s.withdraw_len += 1;
        } else {
            lost += 1;
        }
    }
    drop(s);
    if lost > 0 {
        warning!(
            "dbconn_guard: {lost} audit rows could not be queued for withdrawal (the queue is full); if their sessions are not ended, their rows remain in dbconn_guard.terminations"
        );
    }
}

fn dequeue_withdrawals(rows: &[Withdrawal]) {
    if !status::available() || rows.is_empty() {
        return;
    }
    let mut s = status::SHARED.exclusive();
    let n = s.withdraw_len as usize;
    let kept: Vec<Withdrawal> = s.withdraw[..n]
        .iter()
        .copied()
        .filter(|w| !rows.contains(w))
        .collect();
    s.withdraw[..kept.len()].copy_from_slice(&kept);
    s.withdraw_len = kept.len() as u16;
}

/// Whether audit rows wait to be withdrawn.
pub fn withdrawals_queued() -> bool {
    status::available() && status::SHARED.share().withdraw_len > 0
}

/// Whether records kept in memory wait to be written to the table.
pub fn records_pending() -> bool {
    status::available() && status::SHARED.share().pending_count() > 0
}

/// Writes the records kept in memory while the table could not be locked (see `carry_out`)
/// to the table, in a transaction of its own, bounded by the worker's lock_timeout like every
/// write; marks them written once committed. Returns how many were written.
pub fn write_pending() -> Result<usize, xact::Failure> {
    if !status::available() || unsafe { pg_sys::RecoveryInProgress() } {
        return Ok(0);
    }
    let pending: Vec<TerminationRecord> = {
        let s = status::SHARED.share();
        s.pending[..usize::from(s.pending_len)].to_vec()
    };
    if pending.is_empty() {
        return Ok(0);
    }
    let (mut wide, mut table) = (true, pg_sys::InvalidOid);
    xact::writing_transaction(c"dbconn_guard: writing records kept in memory", || {
        match verified_audit_table() {
            Ok((Some(t), _)) => table = t,
            Ok((None, _)) => {
                error!("dbconn_guard.terminations is not the table of the extension dbconn_guard")
            }
            Err(f) => error!("{f}"),
        }
        Spi::connect_mut(|client| {
            client.update(LOCK_AUDIT, None, &[])?;
            // which columns the table has, under its lock (an update that adds them waits)
            wide = audit_has_statement_columns(table);
            for r in &pending {
                let text = |t: Option<String>| t.map(DbText);
                let rec: [DatumWithOid; 19] = [
                    timestamptz(r.at).into(),
                    r.pid.into(),
                    text(r.usename.opt()).into(),
                    text(r.datname.opt()).into(),
                    text(r.application_name.opt()).into(),
                    r.client_addr.opt().into(),
                    r.state.opt().into(),
                    (r.state_age_ms as f64 / 1000.0).into(),
                    (r.xact_age_ms >= 0)
                        .then(|| r.xact_age_ms as f64 / 1000.0)
                        .into(),
                    timestamptz(r.backend_start).into(),
                    r.rule.opt().into(),
                    r.dry_run.into(),
                    text(r.actor.opt()).into(),
                    (r.cycle >= 0).then_some(r.cycle).into(),
                    text(r.query.opt()).into(),
                    (r.query_id != 0).then_some(r.query_id).into(),
                    r.held_up.into(),
                    (r.held_up > 0).then(|| r.held_up_ms as f64 / 1000.0).into(),
                    text(r.held_up_lock.opt()).into(),
                ];
                if wide {
                    client.update(RECORD_LATER, None, &rec)?;
                } else {
                    client.update(RECORD_LATER_0_1, None, &rec[..14])?;
                }
            }
            Ok::<(), spi::Error>(())
        })
        .unwrap_or_else(|e| error!("{e}"));
    })?;
    // the worker alone adds to the list and writes it out: the first `len` are these
    status::SHARED.exclusive().written(pending.len());
    log!(
        "dbconn_guard: wrote {} records kept in memory while dbconn_guard.terminations could not be locked to the table",
        pending.len()
    );
    Ok(pending.len())
}

/// Deletes the queued rows (in a transaction of its own), and takes them off the queue once
/// the deletion is committed. Rows queued for a table that is no longer the extension's (it
/// was dropped) are dropped from the queue.
pub fn withdraw_queued() -> Result<(), String> {
    if !status::available() || unsafe { pg_sys::RecoveryInProgress() } {
        return Ok(());
    }
    let (table, rows): (u32, Vec<Withdrawal>) = {
        let s = status::SHARED.share();
        (
            s.withdraw_table,
            s.withdraw[..s.withdraw_len as usize].to_vec(),
        )
    };
    if rows.is_empty() {
        return Ok(());
    }
    let deleted = xact::writing_transaction(c"dbconn_guard: withdrawing audit rows", || {
        match verified_audit_table().unwrap_or_else(|f| error!("{f}")).0 {
            Some(t) if u32::from(t) == table => {
                let ids: Vec<i64> = rows.iter().map(|w| w.id).collect();
                let pids: Vec<i32> = rows.iter().map(|w| w.pid).collect();
                Spi::connect_mut(|client| {
                    client
                        .update(WITHDRAW, None, &[ids.into(), pids.into()])
                        .map(|t| t.len())
                })
                .unwrap_or_else(|e| error!("{e}"))
            }
            // the table they were written to is gone
            _ => 0,
        }
    })
    .map_err(|f| f.message)?;
    dequeue_withdrawals(&rows);
    if deleted > 0 {
        log!(
            "dbconn_guard: withdrew {deleted} audit rows of sessions that were not ended (spared at the last look, or not reached)"
        );
    }
    Ok(())
}

fn log_outcome(t: &Target, o: Outcome, judged_at: Micros, actor: &str, dry_run: bool) {
    let b = &t.backend;
    let cancel = t.rule.cancels();
    let verb = match o {
        Outcome::Terminated { .. } if cancel => "cancelled the statement of",
        Outcome::Terminated { .. } => "terminated",
        Outcome::WouldTerminate if dry_run && cancel => "dry run: would cancel the statement of",
        Outcome::WouldTerminate if dry_run => "dry run: would terminate",
        Outcome::Withdrawn(v) => {
            log!(
                "dbconn_guard: spared pid {} at the last moment ({}): its audit row is withdrawn",
                b.pid,
                v.as_str()
            );
            return;
        }
        _ => return,
    };
    let state_age = age_seconds(judged_at, b.state_change).unwrap_or(0.0);
    let xact_age = age_seconds(judged_at, b.xact_start);
    let sessions = |n: usize| format!("{n} session{}", if n == 1 { "" } else { "s" });
    let holding = match &t.queued {
        Some(q) => format!(
            ", waiting for {} on {} {} behind pid {}, holding up {}",
            q.mode.as_deref().unwrap_or("a lock"),
            q.locktype.as_deref().unwrap_or("?"),
            q.relation.as_deref().unwrap_or("-"),
            q.behind
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            sessions(t.held_up)
        ),
        None if t.held_up > 0 => format!(
            ", the root of a lock pile-up holding up {}",
            sessions(t.held_up)
        ),
        None => match &t.budget {
            Some(over) => format!(", {}", over.describe()),
            None => String::new(),
        },
    };
    log!(
        "dbconn_guard: {verb} pid {} ({} for {}; rule {}{holding}): user={} database={} application={} client={} transaction_age={} actor={}",
        b.pid,
        b.state.unwrap_or("?"),
        dur(state_age),
        t.rule.as_str(),
        quoted_or(b.usename.as_deref(), "-"),
        quoted_or(b.datname.as_deref(), "-"),
        quoted_or(b.application_name.as_deref(), "-"),
        b.client_addr.as_deref().map_or_else(|| "local".to_string(), quoted),
        xact_age.map(dur).unwrap_or_else(|| "-".into()),
        quoted(actor),
    );
}

/// Interrupts held (PostgreSQL's HOLD_INTERRUPTS) for a few steps that must not be parted by
/// a SIGTERM, until dropped — also when a Rust panic or an ERROR unwinds through it (an ERROR
/// raised by PostgreSQL resets the count itself; dropping puts back the count from before).
struct HeldInterrupts {
    saved: u32,
}

impl HeldInterrupts {
    fn hold() -> HeldInterrupts {
        unsafe {
            let saved = pg_sys::InterruptHoldoffCount;
            pg_sys::InterruptHoldoffCount = saved + 1;
            HeldInterrupts { saved }
        }
    }
}

impl Drop for HeldInterrupts {
    /// A SIGTERM that came meanwhile acts at the next interrupt check.
    fn drop(&mut self) {
        unsafe { pg_sys::InterruptHoldoffCount = self.saved };
    }
}

/// The audit table's oid as last proven the extension's own (`snapshot::audit_table`), kept by
/// this process: the proof reads `pg_extension` and `pg_depend`, whose locks a database's owner
/// can queue up (VACUUM FULL behind an open ANALYZE). While that lookup waits out the lock
/// timeout, the last proof stands — only for the very table it proved: its name must still
/// lead to that oid (through the catalog caches, which read neither catalog). Dropping the
/// extension takes the table with it (a look-alike planted afterwards has another oid), and
/// the worker forgets the proof whenever the table is gone (`forget_audit_table_proof`).
static VERIFIED_AUDIT_TABLE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The extension is gone from the worker's database: no proof stands.
pub fn forget_audit_table_proof() {
    VERIFIED_AUDIT_TABLE.store(0, std::sync::atomic::Ordering::Relaxed);
}

/// `snapshot::audit_table()`, in a subtransaction, and whether it waited out the lock timeout
/// (the last proof standing in). `Err` only when its catalogs could not be locked in time and
/// no earlier proof stands for the table the name leads to (the caller records in memory).
fn verified_audit_table() -> Result<(Option<pg_sys::Oid>, bool), xact::Failure> {
    use std::sync::atomic::Ordering;
    match xact::subtransaction(snapshot::audit_table) {
        Ok(t) => {
            VERIFIED_AUDIT_TABLE.store(t.map_or(0, u32::from), Ordering::Relaxed);
            Ok((t, false))
        }
        Err(f) if f.sqlstate == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE => {
            let proven = VERIFIED_AUDIT_TABLE.load(Ordering::Relaxed);
            let named = unsafe {
                let ns = pg_sys::get_namespace_oid(c"dbconn_guard".as_ptr(), true);
                if ns == pg_sys::InvalidOid {
                    0
                } else {
                    u32::from(pg_sys::get_relname_relid(c"terminations".as_ptr(), ns))
                }
            };
            if proven != 0 && named == proven {
                Ok((Some(pg_sys::Oid::from(proven)), true))
            } else {
                Err(f)
            }
        }
        Err(f) => error!("{f}"),
    }
}

/// Keeps the record in shared memory too: on a standby, and while the table cannot be locked
/// (`pending`: written there later), that is the only record besides the LOG line.
#[allow(clippy::too_many_arguments)]
fn remember(
    t: &Target,
    o: Outcome,
    judged_at: Micros,
    actor: &str,
    dry_run: bool,
    persisted: bool,
    pending: bool,
    cycle: Option<i64>,
) {
    if !status::available() {
        return;
    }
    let b = &t.backend;
    let text = |s: &Option<Name>| FixedText::from_opt(s.as_deref());
    let state_age = age_seconds(judged_at, b.state_change).unwrap_or(0.0);
    let mut rec = TerminationRecord {
        at: judged_at,
        pid: b.pid,
        backend_start: b.backend_start.unwrap_or(0),
        state_age_ms: (state_age * 1000.0) as i64,
        xact_age_ms: age_seconds(judged_at, b.xact_start).map_or(-1, |x| (x * 1000.0) as i64),
        dry_run,
        persisted,
        cycle: cycle.unwrap_or(-1),
        signal_window_us: match o {
            Outcome::Terminated { window_us } => i64::from(window_us),
            _ => -1,
        },
        usename: text(&b.usename),
        datname: text(&b.datname),
        application_name: text(&b.application_name),
        client_addr: text(&b.client_addr),
        state: FixedText::empty(),
        rule: FixedText::empty(),
        actor: FixedText::empty(),
        query: FixedText::from_opt(b.query.as_deref()),
        query_id: b.query_id.unwrap_or(0),
        held_up: t.holds.sessions.min(i32::MAX as usize) as i32,
        held_up_ms: (t.holds.longest_wait_s * 1000.0) as i64,
        held_up_lock: FixedText::from_opt(t.holds.lock.as_deref()),
    };
    rec.state.set(b.state.unwrap_or(""));
    rec.rule.set(t.rule.as_str());
    rec.actor.set(actor);
    let mut s = status::SHARED.exclusive();
    s.push_recent(rec);
    if matches!(o, Outcome::Terminated { .. }) && !dry_run {
        s.terminations_by_rule[t.rule.index()] += 1;
    }
    // a termination recorded in memory only waits to be written to the table (a dry run's
    // record does not: it is in the ring and the server log, and must not crowd out one)
    if pending && !dry_run && !s.push_pending(rec) {
        let lost = s.audit_lost;
        drop(s);
        warning!(
            "dbconn_guard: {} records wait to be written to dbconn_guard.terminations already: the termination of pid {} is recorded in the server log and recent_terminations() only ({lost} such records since the server started)",
            status::PENDING,
            b.pid
        );
    }
}
