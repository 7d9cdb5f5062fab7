//! Acting on a plan: re-check each session, record it, end it. Shared by the background worker
//! and `dbconn_guard.terminate_idle()`, so both follow the same protections and leave the same
//! audit rows and log lines.

use crate::core::policy::Target;
use crate::core::session::{age_seconds, Micros, Name};
use crate::shared::{self, FixedText, TerminationRecord};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

/// What happened to one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Terminated,
    WouldTerminate,
    /// The session ended, ran a query, or changed state since it was read: left alone.
    Changed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Terminated => "terminated",
            Action::WouldTerminate => "dry run: would terminate",
            Action::Changed => "skipped: session changed or ended before it could be ended",
        }
    }
}

/// Same pid, same backend start, same state since the same moment: still the session that was
/// judged. Run right before the signal, in the same statement, after a fresh status read.
const TERMINATE_IF_UNCHANGED: &str = "SELECT pg_catalog.pg_terminate_backend(a.pid) \
     FROM pg_catalog.pg_stat_get_activity($1) a \
     WHERE a.pid = $1 AND a.backend_start = $2 AND a.state = $3 AND a.state_change = $4";

const STILL_UNCHANGED: &str = "SELECT true FROM pg_catalog.pg_stat_get_activity($1) a \
     WHERE a.pid = $1 AND a.backend_start = $2 AND a.state = $3 AND a.state_change = $4";

const RECORD: &str = "INSERT INTO dbconn_guard.terminations \
     (terminated_at, pid, usename, datname, application_name, client_addr, state, state_age_seconds, \
      xact_age_seconds, backend_start, rule, dry_run, actor, worker_cycle) \
     VALUES (pg_catalog.clock_timestamp(), $1, $2, $3, $4, $5::inet, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id";

const UNRECORD: &str = "DELETE FROM dbconn_guard.terminations WHERE id = $1";

fn ts(v: Micros) -> Option<TimestampWithTimeZone> {
    TimestampWithTimeZone::try_from(v).ok()
}

fn fresh_status() {
    // the backend-status snapshot is cached per transaction: drop it so the check sees now
    unsafe { pg_sys::pgstat_clear_snapshot() };
}

fn unchanged_args(t: &Target) -> Option<[DatumWithOid<'static>; 4]> {
    let b = &t.backend;
    let (Some(start), Some(state), Some(change)) = (b.backend_start, b.state, b.state_change)
    else {
        return None;
    };
    Some([
        b.pid.into(),
        ts(start).into(),
        state.into(),
        ts(change).into(),
    ])
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

/// Ends (or, in a dry run, only records) each target that is still unchanged, in order.
/// `now` is the time the targets were judged at; `actor` is `worker` (with its `cycle`) or
/// `manual:<role>`.
/// Errors (a failed audit insert, a permission error) propagate: the caller's transaction is
/// aborted, and the session whose row could not be written is not signalled.
pub fn execute(
    targets: &[Target],
    now: Micros,
    actor: &str,
    cycle: Option<i64>,
    dry_run: bool,
) -> Vec<Action> {
    let in_recovery = unsafe { pg_sys::RecoveryInProgress() };
    targets
        .iter()
        .map(|t| act(t, now, actor, cycle, dry_run, in_recovery))
        .collect()
}

fn act(
    t: &Target,
    now: Micros,
    actor: &str,
    cycle: Option<i64>,
    dry_run: bool,
    in_recovery: bool,
) -> Action {
    let Some(args) = unchanged_args(t) else {
        return Action::Changed;
    };
    let b = &t.backend;
    let state_age = age_seconds(now, b.state_change).unwrap_or(0.0);
    let xact_age = age_seconds(now, b.xact_start);

    let result: Result<Action, spi::Error> = Spi::connect_mut(|client| {
        fresh_status();
        if client.select(STILL_UNCHANGED, Some(1), &args)?.is_empty() {
            return Ok(Action::Changed);
        }
        let row_id: Option<i64> = if in_recovery {
            None
        } else {
            let rec: [DatumWithOid; 13] = [
                b.pid.into(),
                b.usename.as_deref().into(),
                b.datname.as_deref().into(),
                b.application_name.as_deref().into(),
                b.client_addr.as_deref().into(),
                b.state.into(),
                state_age.into(),
                xact_age.into(),
                b.backend_start.and_then(ts).into(),
                t.rule.as_str().into(),
                dry_run.into(),
                actor.into(),
                cycle.into(),
            ];
            client
                .update(RECORD, Some(1), &rec)?
                .first()
                .get::<i64>(1)?
        };
        if dry_run {
            return Ok(Action::WouldTerminate);
        }
        fresh_status();
        let signalled = client
            .select(TERMINATE_IF_UNCHANGED, Some(1), &args)?
            .first()
            .get::<bool>(1)
            .ok()
            .flatten()
            .unwrap_or(false);
        if !signalled {
            if let Some(id) = row_id {
                client.update(UNRECORD, None, &[id.into()])?;
            }
            return Ok(Action::Changed);
        }
        Ok(Action::Terminated)
    });
    let action =
        result.unwrap_or_else(|e| error!("dbconn_guard: could not end pid {}: {e}", b.pid));
    if action != Action::Changed {
        let verb = if action == Action::Terminated {
            "terminated"
        } else {
            "dry run: would terminate"
        };
        log!(
            "dbconn_guard: {verb} pid {} ({} for {}; rule {}): user={} database={} application={} client={} transaction_age={} actor={}",
            b.pid,
            b.state.unwrap_or("?"),
            human(state_age),
            t.rule.as_str(),
            b.usename.as_deref().unwrap_or(""),
            b.datname.as_deref().unwrap_or(""),
            b.application_name.as_deref().unwrap_or(""),
            b.client_addr.as_deref().unwrap_or("local"),
            xact_age.map(human).unwrap_or_else(|| "-".into()),
            actor,
        );
        remember(t, now, actor, dry_run, !in_recovery, state_age, xact_age);
    }
    action
}

/// Keeps the record in shared memory too: on a standby that is the only record.
fn remember(
    t: &Target,
    now: Micros,
    actor: &str,
    dry_run: bool,
    persisted: bool,
    state_age: f64,
    xact_age: Option<f64>,
) {
    if !shared::available() {
        return;
    }
    let b = &t.backend;
    let text = |s: &Option<Name>| FixedText::from_opt(s.as_deref());
    let mut rec = TerminationRecord {
        at: now,
        pid: b.pid,
        backend_start: b.backend_start.unwrap_or(0),
        state_age_ms: (state_age * 1000.0) as i64,
        xact_age_ms: xact_age.map_or(-1, |x| (x * 1000.0) as i64),
        dry_run,
        persisted,
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
