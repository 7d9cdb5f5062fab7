//! The kill path. Every session the guard ends — by one of the worker's rules or by
//! `terminate_idle()` — goes through `carry_out`, in the background worker, in this order:
//!
//! 1. **Record** (one transaction): for each session, a fresh in-place read of its status
//!    entry must still show it unchanged and unprotected; then its audit row is inserted (each
//!    in a subtransaction: a row that cannot be written drops that session only). The
//!    transaction first takes its lock on `dbconn_guard.terminations`, waiting no longer than
//!    the worker's `lock_timeout`: when the table cannot be written, nobody is ended. The rows
//!    are committed before any signal is sent.
//! 2. **Signal** (interrupts held, nothing that can wait): for each recorded session, one more
//!    in-place read of its status entry, the protections applied to that read, and at once
//!    `pg_terminate_backend()` — as the calling role for `terminate_idle()`, so PostgreSQL's own
//!    permission rules decide.
//! 3. **Withdraw**: the rows of sessions spared at that last look (they ran a query in
//!    between, or ended) are deleted, so a row that says "terminated" exists only for a
//!    session that was signalled. A deletion that fails is retried by the worker later (the ids
//!    wait in shared memory, surviving a worker restart).
//!
//! On a hot standby the table is read-only: the record is the shared-memory ring and the LOG
//! line only.

use crate::backend_status::{self, Slot};
use crate::core::policy::{Scope, Target};
use crate::core::quote::{quoted, quoted_or};
use crate::core::recheck::{self, Fresh, Verdict};
use crate::core::session::{age_seconds, Micros, Name};
use crate::shared::{self, FixedText, TerminationRecord};
use crate::xact::{self, HeldInterrupts};
use crate::{guc, snapshot};
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
    /// Recorded, then signalled `window_us` microseconds after its last status read began.
    Terminated { window_us: u32 },
    /// Dry run: recorded, not signalled.
    WouldTerminate,
    /// Neither recorded nor signalled: the look before recording said so.
    Spared(Verdict),
    /// Recorded, then spared at the last look; its row was withdrawn.
    Withdrawn(Verdict),
    /// Its audit row could not be written: not signalled.
    NotRecorded,
    /// `pg_terminate_backend()` refused or failed; its row was withdrawn.
    SignalFailed,
    /// The worker ended while carrying out the request: what happened is in the audit.
    Unknown,
}

impl Outcome {
    /// What `terminate_idle()` reports.
    pub fn action(self) -> String {
        match self {
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
            Outcome::Spared(v) | Outcome::Withdrawn(v) => match v {
                Verdict::Proceed | Verdict::Gone => 10,
                Verdict::Unreadable => 11,
                Verdict::Changed => 12,
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
            11 => Outcome::Spared(Verdict::Unreadable),
            12 => Outcome::Spared(Verdict::Changed),
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
}

const LOCK_AUDIT: &str = "LOCK TABLE dbconn_guard.terminations IN ROW EXCLUSIVE MODE";

const RECORD: &str = "INSERT INTO dbconn_guard.terminations \
     (terminated_at, pid, usename, datname, application_name, client_addr, state, state_age_seconds, \
      xact_age_seconds, backend_start, rule, dry_run, actor, worker_cycle) \
     VALUES (pg_catalog.clock_timestamp(), $1, $2, $3, $4, $5::pg_catalog.inet, $6, $7, $8, $9, $10, $11, $12, $13) \
     RETURNING id";

const WITHDRAW: &str =
    "DELETE FROM dbconn_guard.terminations WHERE id OPERATOR(pg_catalog.=) ANY ($1)";

fn ts(v: Micros) -> Option<TimestampWithTimeZone> {
    TimestampWithTimeZone::try_from(v).ok()
}

fn human(seconds: f64) -> String {
    if seconds >= 3600.0 {
        format!("{:.1}h", seconds / 3600.0)
    } else if seconds >= 60.0 {
        format!("{:.1}min", seconds / 60.0)
    } else {
        format!("{seconds:.1}s")
    }
}

/// The last look at a target: its status entry read once more, in place, and judged.
fn last_look(t: &Target, scope: &Scope, me: i32) -> Verdict {
    let read = match t.backend.slot {
        Some(slot) => backend_status::read_slot(slot),
        None => Slot::Torn,
    };
    let fresh = match &read {
        Slot::Unused => Fresh::Gone,
        Slot::Torn => Fresh::Unreadable,
        Slot::Read(b) => Fresh::Read(b),
    };
    recheck::last_word(&t.backend, fresh, scope, me)
}

/// Records, then ends (or in a dry run only records) each target still unchanged; see the
/// module comment for the order and guarantees. `judged_at` is when the targets were read.
/// Runs in the background worker, outside any transaction.
pub fn carry_out(targets: &[Target], judged_at: Micros, actor: &Actor, dry_run: bool) -> Report {
    let scope = guc::scope();
    let me = unsafe { pg_sys::MyProcPid };
    let standby = unsafe { pg_sys::RecoveryInProgress() };
    let label = actor.label();
    let mut outcomes = vec![Outcome::NotRecorded; targets.len()];
    let mut row_ids: Vec<Option<i64>> = vec![None; targets.len()];
    let mut row_errors: Vec<String> = Vec::new();
    if targets.is_empty() {
        return Report {
            outcomes,
            error: None,
        };
    }

    // 1. record, and commit
    let recorded = xact::writing_transaction(c"dbconn_guard: recording terminations", || {
        if standby {
            for (i, t) in targets.iter().enumerate() {
                let v = last_look(t, &scope, me);
                outcomes[i] = if v == Verdict::Proceed {
                    Outcome::WouldTerminate
                } else {
                    Outcome::Spared(v)
                };
            }
            return;
        }
        if snapshot::audit_table().is_none() {
            error!(
                "dbconn_guard.terminations in database \"{}\" is not the table of the extension dbconn_guard: nothing is written to it, and no session is ended",
                guc::database()
            );
        }
        Spi::connect_mut(|client| {
            // the one wait of this transaction, bounded by the worker's lock_timeout
            client.update(LOCK_AUDIT, None, &[])?;
            for (i, t) in targets.iter().enumerate() {
                let v = last_look(t, &scope, me);
                if v != Verdict::Proceed {
                    outcomes[i] = Outcome::Spared(v);
                    continue;
                }
                let b = &t.backend;
                let state_age = age_seconds(judged_at, b.state_change).unwrap_or(0.0);
                let rec: [DatumWithOid; 13] = [
                    b.pid.into(),
                    b.usename.as_deref().into(),
                    b.datname.as_deref().into(),
                    b.application_name.as_deref().into(),
                    b.client_addr.as_deref().into(),
                    b.state.into(),
                    state_age.into(),
                    age_seconds(judged_at, b.xact_start).into(),
                    b.backend_start.and_then(ts).into(),
                    t.rule.as_str().into(),
                    dry_run.into(),
                    label.as_str().into(),
                    actor.cycle().into(),
                ];
                let row = xact::subtransaction(|| {
                    client
                        .update(RECORD, Some(1), &rec)
                        .and_then(|r| r.first().get::<i64>(1))
                });
                match row {
                    Ok(Ok(Some(id))) => {
                        row_ids[i] = Some(id);
                        outcomes[i] = Outcome::WouldTerminate;
                    }
                    Ok(Ok(None)) => row_errors.push(format!("pid {}: no row id", b.pid)),
                    Ok(Err(e)) => row_errors.push(format!("pid {}: {e}", b.pid)),
                    Err(f) => row_errors.push(format!("pid {}: {f}", b.pid)),
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
        };
    }
    let persisted = !standby;

    // 2. signal: the recorded sessions, each after one more look at it
    let mut withdraw: Vec<i64> = Vec::new();
    if !dry_run {
        let as_role = match actor {
            Actor::Manual { role, .. } => Some(*role),
            Actor::Worker { .. } => None,
        };
        let signalled = xact::writing_transaction(c"dbconn_guard: ending sessions", || {
            let held = HeldInterrupts::hold();
            for (i, t) in targets.iter().enumerate() {
                if outcomes[i] != Outcome::WouldTerminate {
                    continue;
                }
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
                    let start = Instant::now();
                    let v = last_look(t, &scope, me);
                    if v != Verdict::Proceed {
                        return (v, false, 0);
                    }
                    let sent = terminate(t.backend.pid, as_role);
                    let window_us = start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    (v, sent, window_us)
                });
                held.restore();
                outcomes[i] = match look_and_signal {
                    Ok((Verdict::Proceed, true, window_us)) => Outcome::Terminated { window_us },
                    Ok((Verdict::Proceed, false, _)) => Outcome::Withdrawn(Verdict::Gone),
                    Ok((v, _, _)) => Outcome::Withdrawn(v),
                    Err(f) => {
                        row_errors.push(format!("pid {}: {f}", t.backend.pid));
                        Outcome::SignalFailed
                    }
                };
                if !outcomes[i].ended() {
                    withdraw.extend(row_ids[i]);
                }
            }
            // 3. withdraw the rows of the sessions spared at the last moment: first noted in
            // shared memory (still with interrupts held), so that a SIGTERM during the deletion
            // leaves them to the next worker, which deletes them at its first check
            if !withdraw.is_empty() && !standby {
                stash_withdrawals(&withdraw);
            }
            drop(held);
            if !withdraw.is_empty() && !standby {
                if let Err(f) = xact::subtransaction(withdraw_pending) {
                    warning!(
                        "dbconn_guard: could not withdraw the audit rows {withdraw:?} of sessions spared at the last moment, will retry at the next check: {f}"
                    );
                }
            }
        });
        if let Err(f) = signalled {
            // the signals sent stand; only the withdrawal can have failed, and it is retried
            warning!("dbconn_guard: after the signals: {f}");
        }
    }

    for (t, o) in targets.iter().zip(&outcomes) {
        log_outcome(t, *o, judged_at, &label, dry_run);
        if matches!(o, Outcome::Terminated { .. } | Outcome::WouldTerminate) {
            remember(t, *o, judged_at, &label, dry_run, persisted);
        }
    }
    Report {
        outcomes,
        error: (!row_errors.is_empty()).then(|| row_errors.join("; ")),
    }
}

/// `pg_terminate_backend(pid)` (not waiting for the backend to exit), as `role` when given —
/// PostgreSQL's own permission rules — or as the worker. Called in a subtransaction: an error
/// (permission denied) aborts it, which also puts the user back.
fn terminate(pid: i32, role: Option<pg_sys::Oid>) -> bool {
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
        pgrx::direct_function_call::<bool>(
            pg_sys::pg_terminate_backend,
            &[pid.into_datum(), 0i64.into_datum()],
        )
        .unwrap_or(false)
    };
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    sent
}

fn delete_rows(ids: &[i64]) {
    Spi::connect_mut(|client| {
        client
            .update(WITHDRAW, None, &[ids.to_vec().into()])
            .map(|_| ())
    })
    .unwrap_or_else(|e| error!("{e}"));
}

/// Notes audit row ids to delete, in shared memory: they are deleted by `withdraw_pending`, at
/// once or, if that fails or the worker ends first, at a later check (also of a restarted
/// worker).
fn stash_withdrawals(ids: &[i64]) {
    if !shared::available() {
        return;
    }
    let mut s = shared::SHARED.exclusive();
    let mut lost = 0;
    for id in ids {
        let n = s.withdraw_len as usize;
        if n < s.withdraw.len() {
            s.withdraw[n] = *id;
            s.withdraw_len += 1;
        } else {
            lost += 1;
        }
    }
    drop(s);
    if lost > 0 {
        warning!(
            "dbconn_guard: {lost} audit rows of sessions spared at the last moment could not be queued for withdrawal (the queue is full); they remain in dbconn_guard.terminations"
        );
    }
}

/// Deletes the audit rows waiting in shared memory (see `stash_withdrawals`); called by the
/// worker in a transaction of its own.
pub fn withdraw_pending() {
    if !shared::available() || unsafe { pg_sys::RecoveryInProgress() } {
        return;
    }
    let ids: Vec<i64> = {
        let s = shared::SHARED.share();
        s.withdraw[..s.withdraw_len as usize].to_vec()
    };
    if ids.is_empty() || snapshot::audit_table().is_none() {
        return;
    }
    delete_rows(&ids);
    // only the ids deleted: others may have been queued meanwhile (not by this process, which
    // is the only one queuing, but keep it exact)
    let mut s = shared::SHARED.exclusive();
    let remaining: Vec<i64> = s.withdraw[..s.withdraw_len as usize]
        .iter()
        .copied()
        .filter(|id| !ids.contains(id))
        .collect();
    s.withdraw[..remaining.len()].copy_from_slice(&remaining);
    s.withdraw_len = remaining.len() as u16;
    drop(s);
    log!(
        "dbconn_guard: withdrew the audit rows {ids:?} of sessions that were spared at the last moment"
    );
}

fn log_outcome(t: &Target, o: Outcome, judged_at: Micros, actor: &str, dry_run: bool) {
    let b = &t.backend;
    let verb = match o {
        Outcome::Terminated { .. } => "terminated",
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
    log!(
        "dbconn_guard: {verb} pid {} ({} for {}; rule {}): user={} database={} application={} client={} transaction_age={} actor={}",
        b.pid,
        b.state.unwrap_or("?"),
        human(state_age),
        t.rule.as_str(),
        quoted_or(b.usename.as_deref(), "-"),
        quoted_or(b.datname.as_deref(), "-"),
        quoted_or(b.application_name.as_deref(), "-"),
        b.client_addr.as_deref().map_or_else(|| "local".to_string(), quoted),
        xact_age.map(human).unwrap_or_else(|| "-".into()),
        quoted(actor),
    );
}

/// Keeps the record in shared memory too: on a standby that is the only record.
fn remember(
    t: &Target,
    o: Outcome,
    judged_at: Micros,
    actor: &str,
    dry_run: bool,
    persisted: bool,
) {
    if !shared::available() {
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
    };
    rec.state.set(b.state.unwrap_or(""));
    rec.rule.set(t.rule.as_str());
    rec.actor.set(actor);
    shared::SHARED.exclusive().push_recent(rec);
}
