//! Reads what the metrics are made of (`core::metrics::Inputs`) from shared memory, the backend
//! status array and the lock manager — no SQL, no table — for `/metrics` (the endpoint worker)
//! and `dbconn_guard.metrics()`.

use crate::core::history::{self as samples, Extra};
use crate::core::metrics::{self, Inputs};
use crate::core::{blocking, health, leaks, utilization};
use crate::guc;
use crate::read::backend_status::{self, Visibility};
use crate::read::snapshot;
use crate::shmem::history;
use crate::shmem::status;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::collections::HashSet;

/// Everything, read now (inside a transaction: role and database names come from the catalog
/// caches).
pub fn collect() -> Inputs {
    let snap = backend_status::read(Visibility::All);
    let limits = snapshot::limits();
    let waits = snapshot::lock_waits();
    let chains = blocking::chains(&waits);
    let roots: HashSet<i32> = chains.iter().filter_map(|c| c.root_pid).collect();
    let held: HashSet<i32> = chains
        .iter()
        .filter(|c| c.root_pid.is_some())
        .map(|c| c.pid)
        .collect();
    let largest = chains
        .iter()
        .map(|c| c.root_blocked_count)
        .max()
        .unwrap_or(0);
    let wait_starts: Vec<i64> = waits.iter().map(|w| w.wait_start.unwrap_or(0)).collect();
    let top =
        history::shape().map_or_else(|| guc::HISTORY_GROUPS.get().max(0) as usize, |(_, g)| g);
    let sample = samples::take(
        &snap,
        limits,
        &Extra {
            lock_wait_starts: wait_starts.clone(),
            ..Default::default()
        },
        top,
    );
    let window = guc::LEAK_TREND_SAMPLES.get().max(2) as usize;
    let recent = history::read(Some(window), true);
    let suspects = leaks::suspects_with_trend(
        &snap,
        f64::from(guc::LEAK_IDLE_AGE.get()),
        window,
        samples::previous_sample_time(&recent),
        |n: &samples::GroupName| samples::idle_series(&recent, n, window),
    );
    let util = utilization::utilization(&snap, limits);
    let checks = health::evaluate(&snap, &util, &waits, &guc::thresholds());
    let worker = status::available().then(|| {
        let s = status::SHARED.share();
        (
            (s.pid != 0, s.extension_ready, s.last_error_at),
            s.last_cycle_us,
            s.last_cycle_start,
            s.terminations_by_rule,
            (s.pending_count(), s.audit_lost),
            (
                crate::shmem::churn::connections_total(),
                s.sessions_ended_total,
            ),
        )
    });
    let ((up, ready, error_at), cycle_us, cycle_start, by_rule, (in_memory, lost), churn) = worker
        .unwrap_or((
            (false, false, 0),
            0,
            0,
            [0; crate::core::policy::RULES],
            (0, 0),
            (0, 0),
        ));
    Inputs {
        oldest_lock_wait_start: wait_starts.iter().copied().filter(|&t| t != 0).min(),
        oldest_xact_start: snap.clients().filter_map(|b| b.xact_start).min(),
        root_blockers: roots.len() as u32,
        blocked_by_roots: held.len() as u32,
        largest_pileup: largest.max(0) as u32,
        leak_suspects: suspects.len() as u32,
        terminations_by_rule: by_rule,
        connections_total: churn.0,
        sessions_ended_total: churn.1,
        worker_up: up,
        worker_extension_ready: up && ready,
        worker_can_act: can_act().is_ok(),
        audit_records_in_memory: in_memory,
        audit_records_lost: lost,
        worker_last_error: (error_at != 0).then_some(error_at),
        worker_last_cycle_seconds: cycle_us as f64 / 1e6,
        worker_last_cycle_start: (cycle_start != 0).then_some(cycle_start),
        health: checks.iter().map(|c| (c.name, c.status)).collect(),
        in_recovery: unsafe { pg_sys::RecoveryInProgress() },
        sample,
    }
}

/// Whether the guard can act now: its worker runs, the extension exists in its database, the
/// configuration files hold no refused `dbconn_guard.*` line, and its last check recorded
/// every session it had to end. `Err` says why not. (`/healthz`, `worker_can_act`.)
pub fn can_act() -> Result<(), String> {
    if !status::available() {
        return Err("dbconn_guard is not in shared_preload_libraries: there is no worker".into());
    }
    let s = status::SHARED.share();
    if s.pid == 0 || unsafe { pg_sys::BackendPidGetProc(s.pid) }.is_null() {
        return Err("the dbconn_guard worker is not running".into());
    }
    if !s.extension_ready {
        return Err("the dbconn_guard worker waits for CREATE EXTENSION dbconn_guard in dbconn_guard.database".into());
    }
    if s.refused_config {
        return Err(format!(
            "the configuration files hold dbconn_guard settings PostgreSQL refused, so the worker ends no session: {}",
            s.last_error.get()
        ));
    }
    if s.could_not_record {
        return Err(format!(
            "the worker's last check could not record the sessions it had to end, so it ended none: {}",
            s.last_error.get()
        ));
    }
    Ok(())
}

/// The metrics `/metrics` serves, as rows: for exporters that must run SQL
/// (postgres_exporter's `--extend.query-path`, deploy/postgres_exporter/queries.yaml).
#[pg_extern]
fn metrics() -> TableIterator<
    'static,
    (
        name!(metric, String),
        name!(labels, pgrx::JsonB),
        name!(value, f64),
        name!(metric_type, &'static str),
        name!(help, &'static str),
    ),
> {
    let rows = metrics::rows(&collect());
    TableIterator::new(rows.into_iter().map(|r| {
        let labels: serde_json::Map<String, serde_json::Value> = r
            .labels
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        (
            r.metric,
            pgrx::JsonB(serde_json::Value::Object(labels)),
            r.value,
            r.kind,
            r.help,
        )
    }))
}
