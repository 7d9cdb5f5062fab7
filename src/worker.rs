//! The background worker: wakes at the next session deadline (at most every naptime), plans with
//! the pure policy core, acts through `guard`, samples idle counts for leak detection, and
//! publishes what it did in shared memory.
//!
//! Failure model: each cycle runs in its own transaction inside a PgTry block; an ERROR aborts
//! that transaction, is logged and shown in `worker_status().last_error`, and the next cycle
//! retries. If the process dies anyway, the postmaster restarts it after `RESTART_AFTER`.

use crate::core::leaks::{self, LeakHistory, Reason};
use crate::core::policy::{self, Target};
use crate::core::session::{Micros, SECOND};
use crate::core::utilization;
use crate::shared::{GroupSamples, MAX_GROUPS, MAX_SAMPLES, SHARED};
use crate::{guard, guc, snapshot};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

pub const BACKEND_TYPE: &str = "dbconn_guard";
const RESTART_AFTER: Duration = Duration::from_secs(5);
/// Wake a little after a deadline, so the session is past it when the worker looks.
const DEADLINE_SLACK_US: Micros = 2_000;

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
    history: LeakHistory,
    last_sample: Micros,
    /// Sessions already acted on, by (pid, backend_start, state_change): a terminated backend
    /// stays in pg_stat_activity for a moment while it exits, and a dry run must not record the
    /// same session every cycle.
    acted: HashMap<(i32, Micros, Micros), Micros>,
    said_missing_extension: bool,
    terminations_total: i64,
    /// When audit rows were last purged (0: at the next check, e.g. after a reload).
    last_purge: Micros,
}

fn now() -> Micros {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn publish_policy() {
    let text = guc::policy_summary();
    SHARED.exclusive().policy.set(&text);
}

#[pg_guard]
unsafe extern "C-unwind" fn clear_pid(_code: i32, _arg: pg_sys::Datum) {
    let mut s = SHARED.exclusive();
    s.pid = 0;
    s.next_wakeup = 0;
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn dbconn_guard_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = guc::database();
    log!("dbconn_guard worker: connecting to database \"{database}\" (dbconn_guard.database)");
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    {
        let mut s = SHARED.exclusive();
        s.pid = unsafe { pg_sys::MyProcPid };
        s.started_at = now();
        s.extension_ready = false;
    }
    unsafe { pg_sys::before_shmem_exit(Some(clear_pid), pg_sys::Datum::from(0)) };
    publish_policy();
    log!("dbconn_guard worker started in database \"{database}\"");

    let mut state = State {
        terminations_total: SHARED.share().terminations_total,
        ..Default::default()
    };
    let mut sleep = Duration::ZERO;
    while BackgroundWorker::wait_latch(Some(sleep)) {
        if BackgroundWorker::sighup_received() {
            unsafe {
                pg_sys::ConfigReloadPending = 0;
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
            publish_policy();
            state.last_purge = 0;
        }
        sleep = cycle(&mut state);
        SHARED.exclusive().next_wakeup = now() + sleep.as_micros() as Micros;
    }
    log!("dbconn_guard worker exiting on request; the postmaster restarts it unless the server is shutting down");
    // a non-zero exit code asks the postmaster to restart the worker after RESTART_AFTER
    unsafe { pg_sys::proc_exit(1) };
}

struct CycleReport {
    examined: i64,
    terminated: i64,
    deferred: i64,
    extension_ready: bool,
    next_deadline: Option<Micros>,
}

/// One check, in its own transaction; returns how long to sleep.
fn cycle(state: &mut State) -> Duration {
    // the policy in force, read once per check
    let pol = guc::policy();
    let naptime_us = policy::longest_sleep(Micros::from(guc::NAPTIME.get()) * 1000, &pol);
    let started = now();
    let cpu_before = cpu_time_us();
    let outcome = PgTryBuilder::new(AssertUnwindSafe(|| {
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            pg_sys::pgstat_report_activity(
                pg_sys::BackendState::STATE_RUNNING,
                c"dbconn_guard: checking sessions".as_ptr(),
            );
        }
        let report = check(state, &pol);
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
            pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
        }
        Ok(report)
    }))
    .catch_others(|e| {
        unsafe {
            pg_sys::AbortCurrentTransaction();
            pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
        }
        let msg = match &e {
            pg_sys::panic::CaughtError::PostgresError(r)
            | pg_sys::panic::CaughtError::ErrorReport(r)
            | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r.message().to_string(),
        };
        Err(msg)
    })
    .execute();

    let finished = now();
    let mut s = SHARED.exclusive();
    s.cycles += 1;
    s.last_cycle_start = started;
    s.last_cycle_us = finished - started;
    s.last_cycle_cpu_us = cpu_time_us() - cpu_before;
    match outcome {
        Ok(r) => {
            s.extension_ready = r.extension_ready;
            s.sessions_examined = r.examined;
            s.terminations_last_cycle = r.terminated;
            s.deferred_last_cycle = r.deferred;
            state.terminations_total += r.terminated;
            s.terminations_total = state.terminations_total;
            drop(s);
            let wake = match r.next_deadline {
                Some(d) => (d + DEADLINE_SLACK_US - finished).clamp(0, naptime_us),
                None => naptime_us,
            };
            Duration::from_micros(wake as u64)
        }
        Err(msg) => {
            s.last_error.set(&msg);
            s.last_error_at = finished;
            drop(s);
            warning!("dbconn_guard worker: check failed, retrying in one naptime: {msg}");
            Duration::from_micros(naptime_us as u64)
        }
    }
}

fn check(state: &mut State, pol: &policy::Policy) -> CycleReport {
    let mut report = CycleReport {
        examined: 0,
        terminated: 0,
        deferred: 0,
        extension_ready: false,
        next_deadline: None,
    };
    if !snapshot::extension_exists() {
        if !state.said_missing_extension {
            log!(
                "dbconn_guard worker: extension \"dbconn_guard\" does not exist in database \"{}\"; waiting for CREATE EXTENSION dbconn_guard there",
                guc::database()
            );
            state.said_missing_extension = true;
        }
        return report;
    }
    if state.said_missing_extension {
        log!("dbconn_guard worker: extension found, guarding sessions");
        state.said_missing_extension = false;
    }
    report.extension_ready = true;

    let snap = snapshot::activity_all();
    let util = utilization::utilization(&snap, snapshot::limits());
    report.examined = util.client_backends;

    // forget sessions that are gone
    if !state.acted.is_empty() {
        let present: std::collections::HashSet<(i32, Micros, Micros)> = snap
            .backends
            .iter()
            .map(|b| {
                (
                    b.pid,
                    b.backend_start.unwrap_or(0),
                    b.state_change.unwrap_or(0),
                )
            })
            .collect();
        state.acted.retain(|k, _| present.contains(k));
    }

    if guc::ENABLED.get() {
        let plan = policy::plan(&snap, util.utilization_pct, pol, unsafe {
            pg_sys::MyProcPid
        });
        let key = |t: &Target| {
            (
                t.backend.pid,
                t.backend.backend_start.unwrap_or(0),
                t.backend.state_change.unwrap_or(0),
            )
        };
        let targets: Vec<Target> = plan
            .targets
            .into_iter()
            .filter(|t| !state.acted.contains_key(&key(t)))
            .collect();
        let dry_run = guc::DRY_RUN.get();
        let cycle = SHARED.share().cycles + 1;
        let actions = guard::execute(&targets, snap.now, "worker", Some(cycle), dry_run);
        for (t, a) in targets.iter().zip(&actions) {
            if *a != guard::Action::Changed {
                state.acted.insert(key(t), snap.now);
            }
            if *a == guard::Action::Terminated {
                report.terminated += 1;
            }
        }
        report.deferred = plan.deferred as i64;
        report.next_deadline = plan.next_deadline;
    }

    sample_leaks(state, &snap);
    purge_audit(state, snap.now);
    report
}

const PURGE_EVERY: Micros = 3600 * SECOND;

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
    let deleted = Spi::connect_mut(|client| {
        client
            .update(
                "DELETE FROM dbconn_guard.terminations \
                  WHERE terminated_at < pg_catalog.now() - pg_catalog.make_interval(secs => $1) RETURNING 1",
                None,
                &[f64::from(retention_s).into()],
            )
            .map(|t| t.len())
    })
    .unwrap_or_else(|e| error!("dbconn_guard: could not purge old audit rows: {e}"));
    if deleted > 0 {
        log!("dbconn_guard worker: deleted {deleted} rows of dbconn_guard.terminations older than dbconn_guard.audit_retention ({retention_s}s)");
    }
}

fn sample_leaks(state: &mut State, snap: &crate::core::session::Snapshot) {
    let naptime_us = Micros::from(guc::NAPTIME.get()) * 1000;
    let window = (guc::LEAK_TREND_SAMPLES.get().max(2) as usize).min(MAX_SAMPLES);
    // one sample per naptime, however often deadlines wake the worker
    if snap.now - state.last_sample < naptime_us.max(SECOND / 10) {
        return;
    }
    state.last_sample = snap.now;
    state.history.observe(&leaks::idle_counts(snap), window);
    {
        // publish the samples; the lock is released before anything is logged
        let mut s = SHARED.exclusive();
        let mut n = 0;
        for (key, samples) in state.history.groups().take(MAX_GROUPS) {
            let mut g = GroupSamples {
                key: leaks::group_hash(key),
                len: 0,
                samples: [0; MAX_SAMPLES],
            };
            for (i, v) in samples.iter().rev().take(MAX_SAMPLES).rev().enumerate() {
                g.samples[i] = *v;
                g.len = (i + 1) as u8;
            }
            s.groups[n] = g;
            n += 1;
        }
        s.groups_len = n as u16;
    }
    let idle_age = f64::from(guc::LEAK_IDLE_AGE.get());
    for note in state.history.new_suspects(snap, idle_age, window) {
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
            k.datname.as_deref().unwrap_or(""),
            k.usename.as_deref().unwrap_or(""),
            k.application_name.as_deref().unwrap_or(""),
            k.client_addr.as_deref().unwrap_or("local"),
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
