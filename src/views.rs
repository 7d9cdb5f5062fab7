//! The read-only SQL surface: set-returning functions behind the views in `sql/finalize.sql`,
//! and the scalar/table functions DBAs call directly. Each reads PostgreSQL state once
//! (`crate::snapshot`), hands it to the core, and returns rows.

// pgrx spells a set-returning function's columns in its return type (`name!(...)`).
#![allow(clippy::type_complexity)]

use crate::core::session::{owned, Backend, Snapshot};
use crate::core::{analysis, blocking, health, leaks, utilization};
use crate::snapshot::Extras;
use crate::{guc, shared, snapshot};
use pgrx::prelude::*;
use std::collections::HashMap;

type Text = Option<String>;
type Secs = Option<f64>;

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[pg_extern(name = "_connection_analysis")]
fn connection_analysis_rows() -> TableIterator<
    'static,
    (
        name!(datname, Text),
        name!(usename, Text),
        name!(application_name, Text),
        name!(client_addr, Text),
        name!(state, Text),
        name!(connection_count, i64),
        name!(avg_age_seconds, f64),
        name!(max_age_seconds, f64),
        name!(oldest_xact_age_seconds, Secs),
        name!(pids, Vec<i32>),
    ),
> {
    let snap = snapshot::activity(Extras::default());
    TableIterator::new(analysis::connection_analysis(&snap).into_iter().map(|g| {
        (
            g.key.datname,
            g.key.usename,
            g.key.application_name,
            g.key.client_addr,
            g.key.state,
            g.connection_count,
            round2(g.avg_age_seconds),
            round2(g.max_age_seconds),
            g.oldest_xact_age_seconds.map(round2),
            g.pids,
        )
    }))
}

#[pg_extern(name = "_leak_suspects")]
fn leak_suspect_rows() -> TableIterator<
    'static,
    (
        name!(datname, Text),
        name!(usename, Text),
        name!(application_name, Text),
        name!(client_addr, Text),
        name!(idle_count, i64),
        name!(avg_idle_seconds, f64),
        name!(max_idle_seconds, f64),
        name!(pids, Vec<i32>),
        name!(trend, &'static str),
        name!(reason, &'static str),
    ),
> {
    let snap = snapshot::activity(Extras::default());
    let age = f64::from(guc::LEAK_IDLE_AGE.get());
    let window = guc::LEAK_TREND_SAMPLES.get().max(2) as usize;
    let shared = shared::available().then(|| *shared::SHARED.share());
    let samples_of = |k: &analysis::GroupKey| {
        shared
            .as_ref()
            .and_then(|s| s.samples_of(leaks::group_hash(k)).map(<[u32]>::to_vec))
            .unwrap_or_default()
    };
    TableIterator::new(
        leaks::suspects_with_trend(&snap, age, window, samples_of)
            .into_iter()
            .map(|r| {
                let g = r.group;
                (
                    g.key.datname,
                    g.key.usename,
                    g.key.application_name,
                    g.key.client_addr,
                    g.connection_count,
                    round2(g.avg_age_seconds),
                    round2(g.max_age_seconds),
                    g.pids,
                    r.trend.as_str(),
                    r.reason,
                )
            }),
    )
}

#[pg_extern(name = "_utilization")]
fn utilization_rows() -> TableIterator<
    'static,
    (
        name!(max_connections, i32),
        name!(superuser_reserved_connections, i32),
        name!(reserved_connections, Option<i32>),
        name!(client_backends, i64),
        name!(active, i64),
        name!(idle, i64),
        name!(idle_in_transaction, i64),
        name!(idle_in_transaction_aborted, i64),
        name!(other_states, i64),
        name!(other_backends, i64),
        name!(hidden_backends, i64),
        name!(available_connections, i64),
        name!(utilization_pct, f64),
    ),
> {
    let u = utilization::utilization(&snapshot::activity(Extras::default()), snapshot::limits());
    TableIterator::once((
        u.limits.max_connections,
        u.limits.superuser_reserved_connections,
        u.limits.reserved_connections,
        u.client_backends,
        u.active,
        u.idle,
        u.idle_in_transaction,
        u.idle_in_transaction_aborted,
        u.other_states,
        u.other_backends,
        u.hidden_backends,
        u.available_connections,
        round2(u.utilization_pct),
    ))
}

/// Client backends as a percentage of `max_connections`.
#[pg_extern]
fn utilization_pct() -> f64 {
    utilization::utilization(&snapshot::activity(Extras::default()), snapshot::limits())
        .utilization_pct
}

fn health_checks() -> Vec<health::Check> {
    let waits = snapshot::lock_waits();
    let snap = snapshot::activity(Extras::default());
    let util = utilization::utilization(&snap, snapshot::limits());
    health::evaluate(&snap, &util, &waits, &guc::thresholds())
}

/// Every health check with its status (`ok`, `warning`, `critical`), value and threshold.
#[pg_extern]
fn health() -> TableIterator<
    'static,
    (
        name!(check_name, String),
        name!(status, String),
        name!(value, f64),
        name!(threshold, f64),
        name!(detail, String),
    ),
> {
    TableIterator::new(health_checks().into_iter().map(|c| {
        (
            c.name.to_string(),
            c.status.as_str().to_string(),
            round2(c.value),
            c.threshold,
            c.detail,
        )
    }))
}

/// The worst status of `health()`: `ok`, `warning` or `critical`.
#[pg_extern]
fn health_status() -> &'static str {
    health::worst(&health_checks()).as_str()
}

type ByPid<'a> = HashMap<i32, &'a Backend>;

/// What the blocking views read: every lock wait, then the backends (with query text) to
/// describe both sides.
fn blocking_inputs() -> (Vec<blocking::LockWait>, Snapshot) {
    let waits = snapshot::lock_waits();
    (waits, snapshot::activity(Extras { query: true }))
}

/// (user, application, state, query, state age, transaction age) of a pid, as the caller sees it.
fn describe(snap: &Snapshot, by_pid: &ByPid, pid: i32) -> (Text, Text, Text, Text, Secs, Secs) {
    match by_pid.get(&pid) {
        Some(b) => (
            owned(&b.usename),
            owned(&b.application_name),
            b.state.map(str::to_string),
            b.query.clone(),
            b.backend_type
                .as_ref()
                .map(|_| round2(b.state_age(snap.now))),
            b.xact_age(snap.now).map(round2),
        ),
        None => (None, None, None, None, None, None),
    }
}

#[pg_extern(name = "_blocking_pairs")]
fn blocking_pair_rows() -> TableIterator<
    'static,
    (
        name!(blocked_pid, i32),
        name!(blocked_user, Text),
        name!(blocked_application, Text),
        name!(blocked_datname, Text),
        name!(blocked_state, Text),
        name!(blocked_wait_seconds, Secs),
        name!(blocked_xact_age_seconds, Secs),
        name!(blocked_query, Text),
        name!(blocking_pid, i32),
        name!(blocking_user, Text),
        name!(blocking_application, Text),
        name!(blocking_state, Text),
        name!(blocking_state_age_seconds, Secs),
        name!(blocking_xact_age_seconds, Secs),
        name!(blocking_query, Text),
        name!(locktype, Text),
        name!(mode, Text),
        name!(relation, Text),
    ),
> {
    let (waits, snap) = blocking_inputs();
    let by_pid = snap.index();
    let rows: Vec<_> = blocking::pairs(&waits)
        .into_iter()
        .map(|p| {
            let w = &waits[p.wait];
            let (bu, ba, bs, bq, bage, bx) = describe(&snap, &by_pid, p.blocked_pid);
            let datname = by_pid.get(&p.blocked_pid).and_then(|b| owned(&b.datname));
            let wait = w
                .wait_start
                .or_else(|| by_pid.get(&p.blocked_pid).and_then(|b| b.state_change))
                .and_then(|t| crate::core::session::age_seconds(snap.now, Some(t)))
                .map(round2)
                .or(bage);
            let (ku, ka, ks, kq, kage, kx) = describe(&snap, &by_pid, p.blocking_pid);
            (
                p.blocked_pid,
                bu,
                ba,
                datname,
                bs,
                wait,
                bx,
                bq,
                p.blocking_pid,
                ku,
                ka,
                ks,
                kage,
                kx,
                kq,
                w.locktype.clone(),
                w.mode.clone(),
                w.relation.clone(),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Every waiting backend traced to the root blocker(s) of its lock chain.
#[pg_extern]
fn blocking_chains() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(root_pid, Option<i32>),
        name!(depth, Option<i32>),
        name!(path, Vec<i32>),
        name!(root_blocked_count, i64),
        name!(usename, Text),
        name!(application_name, Text),
        name!(query, Text),
        name!(root_user, Text),
        name!(root_application, Text),
        name!(root_state, Text),
        name!(root_state_age_seconds, Secs),
        name!(root_xact_age_seconds, Secs),
        name!(root_query, Text),
    ),
> {
    let (waits, snap) = blocking_inputs();
    let by_pid = snap.index();
    let rows: Vec<_> = blocking::chains(&waits)
        .into_iter()
        .map(|c| {
            let (u, a, _, q, _, _) = describe(&snap, &by_pid, c.pid);
            let (ru, ra, rs, rq, rage, rx) = match c.root_pid {
                Some(r) => describe(&snap, &by_pid, r),
                None => (None, None, None, None, None, None),
            };
            (
                c.pid,
                c.root_pid,
                c.depth,
                c.path,
                c.root_blocked_count,
                u,
                a,
                q,
                ru,
                ra,
                rs,
                rage,
                rx,
                rq,
            )
        })
        .collect();
    TableIterator::new(rows)
}
