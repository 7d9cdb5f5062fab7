//! `terminate_idle()`'s sessions are ended by the background worker, not by the caller.
//!
//! Why: an audit row written in the caller's transaction is lost when that transaction rolls
//! back (`BEGIN; SELECT dbconn_guard.terminate_idle('0'); ROLLBACK;`) or fails after the signals
//! went out, while the sessions stay ended. The worker records in transactions of its own,
//! commits before it signals, and is the one writer of `dbconn_guard.terminations`. It signals
//! as the calling role, so PostgreSQL's permission rules for `pg_terminate_backend()` apply.
//!
//! The caller puts the sessions it chose (pid, status slot, backend start, state and since
//! when) in a slot of the `REQUESTS` mailbox in shared memory and sets the worker's latch; the
//! worker re-reads each session itself, carries them out through the kill path
//! (`guard::carry_out`), writes one outcome per session back, and sets the caller's latch.
//! Like `pg_terminate_backend()`, what is done is done: it does not depend on the caller's
//! transaction committing.

use crate::core::policy::{Rule, Target, IDLE_STATES};
use crate::core::session::Micros;
use crate::read::backend_status::{self, Slot};
use crate::shmem::status::{
    self, FixedText, Request, RequestState, RequestTarget, REQUESTS, REQUEST_TARGETS, SHARED,
};
use crate::worker::guard::{self, Actor, Outcome};
use crate::worker::xact;
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// the worker's side

/// Called when the worker starts: a request another incarnation of the worker was carrying out
/// when it ended gets an answer (its caller may be waiting); a submitted one is served anew.
pub fn after_restart() {
    let mut r = REQUESTS.exclusive();
    for slot in r.slots.iter_mut() {
        match slot.state {
            RequestState::Working => {
                slot.outcomes = [0; REQUEST_TARGETS];
                slot.error.set(
                    "the dbconn_guard worker ended while carrying out this request; what it did is in dbconn_guard.terminations (in the worker's database, dbconn_guard.database)",
                );
                slot.state = RequestState::Done;
                wake(slot.caller_latch);
            }
            RequestState::Abandoned => slot.state = RequestState::Free,
            _ => {}
        }
    }
}

fn wake(latch: usize) {
    if latch != 0 {
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// Carries out every submitted request (in the worker, between checks); returns the sessions
/// it ended.
pub fn serve(terminations_total: &mut i64) -> Vec<crate::core::session::Backend> {
    let mut ended = Vec::new();
    loop {
        let taken = {
            let mut r = REQUESTS.exclusive();
            r.slots
                .iter_mut()
                .enumerate()
                .find(|(_, s)| s.state == RequestState::Submitted)
                .map(|(i, s)| {
                    s.state = RequestState::Working;
                    (i, *s)
                })
        };
        let Some((i, req)) = taken else {
            return ended;
        };
        let (outcomes, error, done) = carry_out(&req);
        // a cancelled statement is no ended session: not counted, and its session may be
        // acted on again (a statement that survives a cancel is still the rules' to judge)
        if !req.cancel {
            ended.extend(done);
            *terminations_total += outcomes.iter().filter(|o| o.ended()).count() as i64;
            SHARED.exclusive().terminations_total = *terminations_total;
        }
        let mut r = REQUESTS.exclusive();
        let slot = &mut r.slots[i];
        if slot.ticket != req.ticket {
            continue;
        }
        if slot.state == RequestState::Abandoned || !alive(slot.caller_pid) {
            slot.state = RequestState::Free;
            continue;
        }
        for (k, o) in outcomes.iter().enumerate() {
            slot.outcomes[k] = o.code();
        }
        slot.error = FixedText::from_opt(error.as_deref());
        slot.state = RequestState::Done;
        wake(slot.caller_latch);
    }
}

/// Is a backend with this pid still there?
fn alive(pid: i32) -> bool {
    pid != 0 && !unsafe { pg_sys::BackendPidGetProc(pid) }.is_null()
}

fn carry_out(
    req: &Request,
) -> (
    Vec<Outcome>,
    Option<String>,
    Vec<crate::core::session::Backend>,
) {
    use crate::core::recheck::Verdict;
    let n = usize::from(req.len).min(REQUEST_TARGETS);
    let asked = &req.targets[..n];
    let mut outcomes = vec![Outcome::Spared(Verdict::Gone); n];
    // the worker's own read of each session: the same one, in the same state since the same
    // moment, or it is left alone
    let read = xact::transaction(c"dbconn_guard: reading requested sessions", || {
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        let mut targets = Vec::new();
        for (k, a) in asked.iter().enumerate() {
            let b = match backend_status::read_slot(a.slot) {
                Slot::Read(b) => b,
                Slot::Torn => {
                    outcomes[k] = Outcome::Spared(Verdict::Unreadable);
                    continue;
                }
                Slot::Unused => continue,
            };
            if b.pid != a.pid || b.backend_start != Some(a.backend_start) {
                continue;
            }
            let state = if req.cancel {
                Some("active")
            } else {
                IDLE_STATES.get(usize::from(a.state)).copied()
            };
            let same = b.state_change == Some(a.state_change) && b.state == state;
            if same {
                targets.push((
                    k,
                    Target {
                        backend: b,
                        rule: if req.cancel {
                            Rule::ManualCancel
                        } else {
                            Rule::Manual
                        },
                        deadline: now,
                        held_up: 0,
                        queued: None,
                        left_to_lock_queue_rule: Vec::new(),
                        budget: None,
                        holds: Default::default(),
                    },
                ));
            } else {
                outcomes[k] = Outcome::Spared(Verdict::Changed);
            }
        }
        if !targets.is_empty() {
            crate::worker::guard::describe_for_audit(
                targets.iter_mut().map(|(_, t)| t),
                &crate::read::locks::lock_graph(),
                now,
            );
        }
        (now, targets)
    });
    let (now, targets) = match read {
        Ok(r) => r,
        Err(f) => return (vec![Outcome::NotRecorded; n], Some(f.message), Vec::new()),
    };
    let actor = Actor::Manual {
        role: pg_sys::Oid::from(req.role),
        name: req
            .actor
            .get()
            .strip_prefix("manual:")
            .unwrap_or("")
            .to_string(),
    };
    let only: Vec<Target> = targets.iter().map(|(_, t)| t.clone()).collect();
    // the gates the rules obey, as this worker reads them now (a reload may have come between
    // the caller's look and this): closed, nothing is recorded; in a dry run, only recorded
    if let Err(c) = gates() {
        return (vec![Outcome::NotRecorded; n], Some(c.why), Vec::new());
    }
    let dry_run = req.dry_run || crate::guc::DRY_RUN.get();
    // a DBA's call: a process found busy is reported so, and the DBA may call again
    let report = guard::carry_out(&only, now, &actor, dry_run, false, &|_| 0);
    let mut ended = Vec::new();
    for ((k, t), o) in targets.iter().zip(report.outcomes) {
        outcomes[*k] = o;
        if o.ended() {
            ended.push(t.backend.clone());
        }
    }
    (outcomes, report.error, ended)
}

// ---------------------------------------------------------------------------------------------
// the caller's side

/// Longest wait for the worker to take and finish one request.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// Why `terminate_idle()` ends nothing now: the worker's own gates, as it published them.
pub struct Closed {
    pub why: String,
    pub hint: &'static str,
}

/// The gates the worker's rules obey, for `terminate_idle()` too: `Err` when the worker ends
/// no session (`dbconn_guard.enabled` off, or `dbconn_guard.*` lines PostgreSQL refused);
/// otherwise whether the worker is in a dry run (then a manual call is a dry run too).
pub fn gates() -> Result<bool, Closed> {
    let s = SHARED.share();
    if !s.enabled {
        return Err(Closed {
            why: "dbconn_guard.enabled is off: the guard ends no session, terminate_idle() and cancel_statements() included".into(),
            hint: "Turn the guard on (ALTER SYSTEM SET dbconn_guard.enabled = on; SELECT pg_reload_conf();), or end a session yourself with pg_terminate_backend(pid).",
        });
    }
    if s.refused_config {
        return Err(Closed {
            why: format!(
                "the configuration files hold dbconn_guard settings PostgreSQL refused, so the policy in force is not the one written there and the guard ends no session, terminate_idle() and cancel_statements() included: {}",
                s.last_error.get()
            ),
            hint: "Fix the lines SELECT * FROM pg_file_settings WHERE error IS NOT NULL shows, then SELECT pg_reload_conf().",
        });
    }
    Ok(s.dry_run)
}

/// Counts `rows` dry-run rows against `role`'s budget for this minute; `Err` with the count
/// when the role has used up `DRY_RUN_ROWS_PER_MINUTE` already (checked before a dry run,
/// counted after: one call may go past it, the next one is refused).
pub fn dry_run_budget(role: pg_sys::Oid, rows: i64) -> Result<(), i64> {
    const MINUTE: Micros = 60 * crate::core::session::SECOND;
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let role = u32::from(role);
    let mut r = REQUESTS.exclusive();
    let i = match r.dry_run_budgets.iter().position(|b| b.role == role) {
        Some(i) => i,
        None => {
            // a free entry, or the one whose window began longest ago
            let i = r
                .dry_run_budgets
                .iter()
                .enumerate()
                .min_by_key(|(_, b)| {
                    if b.role == 0 {
                        Micros::MIN
                    } else {
                        b.window_start
                    }
                })
                .map_or(0, |(i, _)| i);
            r.dry_run_budgets[i] = crate::shmem::status::DryRunBudget {
                role,
                window_start: now,
                rows: 0,
            };
            i
        }
    };
    let b = &mut r.dry_run_budgets[i];
    if now - b.window_start >= MINUTE {
        b.window_start = now;
        b.rows = 0;
    }
    if rows == 0 && b.rows >= crate::shmem::status::DRY_RUN_ROWS_PER_MINUTE {
        return Err(b.rows);
    }
    b.rows += rows;
    Ok(())
}

/// Whether the worker can take requests now; the reason why not otherwise.
pub fn worker_ready() -> Result<(), String> {
    if !status::available() {
        return Err("dbconn_guard is not in shared_preload_libraries, so its worker — which records and carries out every termination — is not running".into());
    }
    let s = SHARED.share();
    if s.pid == 0 || s.latch == 0 || unsafe { pg_sys::BackendPidGetProc(s.pid) }.is_null() {
        return Err("the dbconn_guard worker, which records and carries out every termination, is not running (see worker_status() and the server log)".into());
    }
    if !s.extension_ready {
        return Err(format!(
            "the dbconn_guard worker cannot record terminations: the extension does not exist in its database ({}; dbconn_guard.database)",
            crate::guc::database()
        ));
    }
    Ok(())
}

/// What a request asks of the worker: end the sessions (`terminate_idle()`), or cancel their
/// statements (`cancel_statements()`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Terminate,
    Cancel,
}

impl Ask {
    /// The SQL function that asks, for messages.
    pub fn function(self) -> &'static str {
        match self {
            Ask::Terminate => "dbconn_guard.terminate_idle",
            Ask::Cancel => "dbconn_guard.cancel_statements",
        }
    }

    /// "nothing was ended", or cancelled.
    pub fn nothing_done(self) -> &'static str {
        match self {
            Ask::Terminate => "nothing was ended",
            Ask::Cancel => "nothing was cancelled",
        }
    }
}

/// Hands `targets` to the worker and waits for their outcomes (one per target).
pub fn hand_over(
    targets: &[RequestTarget],
    role: pg_sys::Oid,
    actor: &str,
    dry_run: bool,
    ask: Ask,
) -> (Vec<Outcome>, Option<String>) {
    let mut outcomes = Vec::with_capacity(targets.len());
    let mut errors = Vec::new();
    for chunk in targets.chunks(REQUEST_TARGETS) {
        let (o, e) = round_trip(chunk, role, actor, dry_run, ask);
        outcomes.extend(o);
        errors.extend(e);
    }
    (outcomes, (!errors.is_empty()).then(|| errors.join("; ")))
}

fn round_trip(
    chunk: &[RequestTarget],
    role: pg_sys::Oid,
    actor: &str,
    dry_run: bool,
    ask: Ask,
) -> (Vec<Outcome>, Option<String>) {
    let my_latch = unsafe { pg_sys::MyLatch } as usize;
    let started = Instant::now();
    // a free slot of the mailbox
    let (slot, ticket) = loop {
        {
            let mut r = REQUESTS.exclusive();
            let ticket = r.next_ticket;
            // a slot whose caller ended (a FATAL error while it waited) and that nobody will
            // read or free is free
            for s in r.slots.iter_mut() {
                if matches!(s.state, RequestState::Done | RequestState::Submitted)
                    && !alive(s.caller_pid)
                {
                    s.state = match s.state {
                        RequestState::Done => RequestState::Free,
                        other => other,
                    };
                }
            }
            if let Some(i) = r.slots.iter().position(|s| s.state == RequestState::Free) {
                r.next_ticket += 1;
                let s = &mut r.slots[i];
                s.ticket = ticket;
                s.caller_latch = my_latch;
                s.caller_pid = unsafe { pg_sys::MyProcPid };
                s.role = u32::from(role);
                s.actor.set(actor);
                s.dry_run = dry_run;
                s.cancel = ask == Ask::Cancel;
                s.len = chunk.len() as u16;
                s.targets[..chunk.len()].copy_from_slice(chunk);
                s.outcomes = [0; REQUEST_TARGETS];
                s.error = FixedText::empty();
                s.state = RequestState::Submitted;
                break (i, ticket);
            }
        }
        if started.elapsed() > ANSWER_WITHIN {
            crate::errors::raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
                format!(
                    "{}: the worker is busy with other requests; {}",
                    ask.function(),
                    ask.nothing_done()
                ),
                None,
                Some("Try again."),
            );
        }
        sleep_on_latch(10);
    };
    wake(SHARED.share().latch);

    // its answer; a cancel meanwhile leaves the request to the worker, which frees the slot
    let answer = PgTryBuilder::new(AssertUnwindSafe(|| loop {
        {
            let mut r = REQUESTS.exclusive();
            let s = &mut r.slots[slot];
            if s.ticket == ticket && s.state == RequestState::Done {
                let out: Vec<Outcome> = s.outcomes[..chunk.len()]
                    .iter()
                    .map(|c| Outcome::from_code(*c))
                    .collect();
                let err = s.error.opt();
                s.state = RequestState::Free;
                return (out, err);
            }
        }
        if started.elapsed() > ANSWER_WITHIN || worker_ready().is_err() {
            abandon(slot, ticket);
            crate::errors::not_ready(
                format!("{}: the worker did not answer", ask.function()),
                None,
                &format!(
                    "What it did is in dbconn_guard.terminations of database {} and in dbconn_guard.recent_terminations(); check dbconn_guard.worker_status().",
                    crate::core::quote::quoted(&crate::guc::database())
                ),
            );
        }
        sleep_on_latch(100);
    }))
    .catch_others(|e| {
        abandon(slot, ticket);
        e.rethrow()
    })
    .execute();
    answer
}

fn abandon(slot: usize, ticket: u64) {
    let mut r = REQUESTS.exclusive();
    let s = &mut r.slots[slot];
    if s.ticket == ticket {
        s.state = match s.state {
            RequestState::Submitted | RequestState::Done => RequestState::Free,
            RequestState::Working => RequestState::Abandoned,
            other => other,
        };
    }
}

/// Waits on this backend's latch for up to `ms`, then checks for interrupts (a cancel or
/// statement_timeout ends the wait with an error).
fn sleep_on_latch(ms: i64) {
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}
