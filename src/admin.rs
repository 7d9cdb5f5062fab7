//! The guard's SQL surface: `worker_status()`, `recent_terminations()` and the manual
//! `terminate_idle()`.

// pgrx spells a set-returning function's columns in its return type (`name!(...)`).
#![allow(clippy::type_complexity)]

use crate::core::policy::{Rule, Target, IDLE, IDLE_IN_TRANSACTION, IDLE_IN_TRANSACTION_ABORTED};
use crate::core::session::{owned, Micros};
use crate::shared::{self, SHARED};
use crate::worker::BACKEND_TYPE;
use crate::{guard, guc, snapshot};
use pgrx::prelude::*;

fn ts(v: Micros) -> Option<TimestampWithTimeZone> {
    (v != 0)
        .then(|| TimestampWithTimeZone::try_from(v).ok())
        .flatten()
}

fn require_preloaded(what: &str) {
    if !shared::available() {
        error!(
            "dbconn_guard: {what} needs the library preloaded: add dbconn_guard to shared_preload_libraries and restart the server"
        );
    }
}

/// Is `pid` the live dbconn_guard worker?
fn worker_alive(pid: i32) -> bool {
    pid != 0 && !unsafe { pg_sys::BackendPidGetProc(pid) }.is_null()
}

/// The background worker: whether it runs, what its last cycle did, and the policy it applies.
#[pg_extern]
fn worker_status() -> TableIterator<
    'static,
    (
        name!(running, bool),
        name!(pid, Option<i32>),
        name!(backend_type, &'static str),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(extension_ready, bool),
        name!(cycles, i64),
        name!(last_cycle_start, Option<TimestampWithTimeZone>),
        name!(last_cycle_ms, f64),
        name!(last_cycle_cpu_ms, f64),
        name!(sessions_examined, i64),
        name!(terminations_last_cycle, i64),
        name!(deferred_last_cycle, i64),
        name!(terminations_total, i64),
        name!(next_wakeup, Option<TimestampWithTimeZone>),
        name!(last_error, Option<String>),
        name!(last_error_at, Option<TimestampWithTimeZone>),
        name!(policy, pgrx::JsonB),
    ),
> {
    require_preloaded("worker_status()");
    let s = *SHARED.share();
    let running = worker_alive(s.pid);
    let policy = serde_json::from_str(s.policy.get()).unwrap_or(serde_json::Value::Null);
    TableIterator::once((
        running,
        running.then_some(s.pid),
        BACKEND_TYPE,
        ts(s.started_at),
        s.extension_ready,
        s.cycles,
        ts(s.last_cycle_start),
        s.last_cycle_us as f64 / 1000.0,
        s.last_cycle_cpu_us as f64 / 1000.0,
        s.sessions_examined,
        s.terminations_last_cycle,
        s.deferred_last_cycle,
        s.terminations_total,
        if running { ts(s.next_wakeup) } else { None },
        s.last_error.opt(),
        ts(s.last_error_at),
        pgrx::JsonB(policy),
    ))
}

/// The latest terminations on this server, from shared memory (also those a hot standby
/// could not write to the terminations table).
#[pg_extern]
fn recent_terminations() -> TableIterator<
    'static,
    (
        name!(terminated_at, Option<TimestampWithTimeZone>),
        name!(pid, i32),
        name!(usename, Option<String>),
        name!(datname, Option<String>),
        name!(application_name, Option<String>),
        name!(client_addr, Option<String>),
        name!(state, Option<String>),
        name!(state_age_seconds, f64),
        name!(xact_age_seconds, Option<f64>),
        name!(backend_start, Option<TimestampWithTimeZone>),
        name!(rule, Option<String>),
        name!(dry_run, bool),
        name!(actor, Option<String>),
        name!(persisted, bool),
    ),
> {
    require_preloaded("recent_terminations()");
    let recent = SHARED.share().recent();
    TableIterator::new(recent.into_iter().rev().map(|r| {
        (
            ts(r.at),
            r.pid,
            r.usename.opt(),
            r.datname.opt(),
            r.application_name.opt(),
            r.client_addr.opt(),
            r.state.opt(),
            r.state_age_ms as f64 / 1000.0,
            (r.xact_age_ms >= 0).then(|| r.xact_age_ms as f64 / 1000.0),
            ts(r.backend_start),
            r.rule.opt(),
            r.dry_run,
            r.actor.opt(),
            r.persisted,
        )
    }))
}

const STATES: [&str; 3] = [IDLE, IDLE_IN_TRANSACTION, IDLE_IN_TRANSACTION_ABORTED];

/// Does the calling role have the privileges of `role` (by name)?
fn caller_has_privs_of(role: &str) -> bool {
    snapshot::select_one::<bool>("SELECT pg_catalog.pg_has_role($1, 'USAGE')", &[role.into()])
        .unwrap_or(false)
}

/// Ends sessions idle (in the given states) for at least `older_than`, with the worker's
/// protections, recording each in `dbconn_guard.terminations`.
#[pg_extern(volatile)]
fn terminate_idle(
    older_than: Option<Interval>,
    states: default!(
        Option<Vec<Option<String>>>,
        "ARRAY['idle', 'idle in transaction', 'idle in transaction (aborted)']"
    ),
    application_name: default!(Option<String>, "NULL"),
    dry_run: default!(Option<bool>, false),
) -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(usename, Option<String>),
        name!(datname, Option<String>),
        name!(application_name, Option<String>),
        name!(client_addr, Option<String>),
        name!(state, Option<String>),
        name!(state_age_seconds, f64),
        name!(xact_age_seconds, Option<f64>),
        name!(action, String),
    ),
> {
    let Some(older_than) = older_than else {
        error!(
            "dbconn_guard.terminate_idle: older_than must not be NULL (for example '10 minutes')"
        )
    };
    let older_than_us = older_than.as_micros();
    if older_than_us < 0 {
        error!("dbconn_guard.terminate_idle: older_than must not be negative (got {older_than})");
    }
    let Some(states) = states else {
        error!("dbconn_guard.terminate_idle: states must not be NULL")
    };
    if states.is_empty() {
        error!("dbconn_guard.terminate_idle: states must not be empty; allowed: idle, idle in transaction, idle in transaction (aborted)");
    }
    let mut wanted = Vec::new();
    for s in states {
        match s {
            Some(s) if STATES.contains(&s.as_str()) => wanted.push(s),
            other => error!(
                "dbconn_guard.terminate_idle: unknown state {:?}; allowed: idle, idle in transaction, idle in transaction (aborted)",
                other.unwrap_or_else(|| "NULL".into())
            ),
        }
    }
    let dry_run = dry_run.unwrap_or(false);

    let snap = snapshot::activity(snapshot::Extras::default());
    let scope = guc::scope();
    let me = unsafe { pg_sys::MyProcPid };
    let caller_is_superuser = unsafe { pg_sys::superuser() };
    let caller_can_signal = caller_is_superuser || caller_has_privs_of("pg_signal_backend");
    let actor = format!(
        "manual:{}",
        snapshot::select_one::<String>("SELECT current_user::text", &[]).unwrap_or_default()
    );

    let mut rows = Vec::new();
    let mut targets: Vec<(usize, Target)> = Vec::new();
    for b in snap.clients() {
        let Some(state) = b.state else {
            continue;
        };
        if !wanted.iter().any(|w| w == state) {
            continue;
        }
        if (b.state_age(snap.now) * 1e6) < older_than_us as f64 {
            continue;
        }
        if application_name
            .as_ref()
            .is_some_and(|a| b.application_name.as_deref() != Some(a.as_str()))
        {
            continue;
        }
        let skip = if let Some(p) = scope.protection(b, me) {
            Some(format!("skipped: protected ({})", p.as_str()))
        } else if b.is_superuser != Some(false) && !caller_is_superuser {
            Some("skipped: superuser session (only a superuser may end it)".to_string())
        } else if !caller_can_signal && !b.usename.as_deref().is_some_and(caller_has_privs_of) {
            Some("skipped: permission denied (needs pg_signal_backend or membership in the session's role)".to_string())
        } else {
            None
        };
        let row = (
            b.pid,
            owned(&b.usename),
            owned(&b.datname),
            owned(&b.application_name),
            owned(&b.client_addr),
            b.state.map(str::to_string),
            (b.state_age(snap.now) * 100.0).round() / 100.0,
            b.xact_age(snap.now).map(|x| (x * 100.0).round() / 100.0),
            skip.clone().unwrap_or_default(),
        );
        if skip.is_none() {
            targets.push((
                rows.len(),
                Target {
                    backend: b.clone(),
                    rule: Rule::Manual,
                    deadline: snap.now,
                },
            ));
        }
        rows.push(row);
    }
    let only: Vec<Target> = targets.iter().map(|(_, t)| t.clone()).collect();
    let actions = guard::execute(&only, snap.now, &actor, None, dry_run);
    for ((i, _), a) in targets.iter().zip(actions) {
        rows[*i].8 = a.as_str().to_string();
    }
    TableIterator::new(rows)
}
