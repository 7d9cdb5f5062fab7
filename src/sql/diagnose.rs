//! `dbconn_guard.diagnose()`: the runbook's decision tree, evaluated live. This layer reads the
//! server once, as the calling role sees it, into the core's `diagnose::Input`, and returns the
//! core's findings as rows. Nothing here decides anything, and nothing is written: it works on a
//! standby, without the preload and with an empty history (the core says what it could not
//! check).

// pgrx's TableIterator signatures spell out every column
#![allow(clippy::type_complexity)]

use crate::core::diagnose::{self, Caller, Guard, GuardAction, History, Input, Server, WorkerInfo};
use crate::core::session::{Kind, Micros};
use crate::guc;
use crate::read::encoding::DbText;
use crate::read::snapshot;
use crate::shmem::history;
use crate::shmem::status::{self, SHARED};
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

/// A setting's value, in its base unit, or `None` when it does not exist here. (For a
/// superuser-only setting the caller checks the role's privilege first: PostgreSQL raises an
/// error rather than return nothing.)
fn setting(name: &str) -> Option<String> {
    let name = CString::new(name).ok()?;
    unsafe {
        let v = pg_sys::GetConfigOption(name.as_ptr(), true, true);
        (!v.is_null()).then(|| CStr::from_ptr(v).to_string_lossy().into_owned())
    }
}

/// A time setting in milliseconds (its base unit), as microseconds.
fn millis_setting(name: &str) -> Option<Micros> {
    setting(name)?
        .parse::<i64>()
        .ok()
        .map(|ms| ms.saturating_mul(1000))
}

fn role_oid(name: &CStr) -> pg_sys::Oid {
    unsafe { pg_sys::get_role_oid(name.as_ptr(), true) }
}

fn has_privs_of(role: pg_sys::Oid) -> bool {
    role != pg_sys::InvalidOid && unsafe { pg_sys::has_privs_of_role(pg_sys::GetUserId(), role) }
}

fn interval_micros(i: &Interval) -> Micros {
    i.micros()
        .saturating_add(i64::from(i.days()).saturating_mul(86_400_000_000))
        .saturating_add(i64::from(i.months()).saturating_mul(30 * 86_400_000_000))
}

/// Reads everything the tree looks at, as the calling role.
fn read(slow_query_age: Option<f64>) -> Input {
    let snap = snapshot::activity_with_queries(|_| true);
    let now = snap.now;
    let user = unsafe { pg_sys::GetUserId() };
    let read_all_stats = has_privs_of(pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_STATS));
    // the history counts every role's sessions: shown to whom its view is (pg_monitor's
    // pg_read_all_stats and the guard's admins), as the views grant it
    let may_read_history = read_all_stats || has_privs_of(role_oid(c"dbconn_guard_admin"));
    let window = Micros::from(guc::DIAGNOSE_WINDOW.get()) * 1_000_000;
    let samples = if may_read_history {
        let interval = guc::sample_interval_us().max(1);
        let n = (window / interval + 1) as usize;
        history::read(Some(n), true)
            .into_iter()
            .filter(|s| s.time >= now - window)
            .collect()
    } else {
        Vec::new()
    };
    let preloaded = status::available();
    // the guard's latest actions (the ring recent_terminations() shows): for whom the history
    // is, since they name every role's sessions
    let guard_actions = if preloaded && may_read_history {
        SHARED
            .share()
            .recent()
            .into_iter()
            .map(|r| GuardAction {
                at: r.at,
                pid: r.pid,
                backend_start: r.backend_start,
                rule: r.rule.opt().unwrap_or_default(),
                dry_run: r.dry_run,
                query_id: r.query_id,
                query: r.query.opt(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let worker = preloaded.then(|| {
        // the fields used, read under the lock (the whole struct holds the rings)
        let s = SHARED.share();
        let running = s.pid != 0 && !unsafe { pg_sys::BackendPidGetProc(s.pid) }.is_null();
        let last_error = s.last_error.get();
        WorkerInfo {
            running,
            pid: running.then_some(s.pid),
            database: guc::database(),
            last_error: crate::sql::admin::last_error_for_caller(last_error),
            last_error_at: (s.last_error_at != 0).then_some(s.last_error_at),
            extension_ready: s.extension_ready,
            database_owner_not_superuser: s.database_owner_not_superuser.opt(),
        }
    });
    let hidden = snap
        .backends
        .iter()
        .filter(|b| b.kind == Kind::Hidden)
        .count() as i64;
    // the roles of visible sessions this role has the privileges of (it may signal their
    // sessions, by pg_terminate_backend()'s rules)
    let mut member_of: Vec<String> = Vec::new();
    let mut checked: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for b in snap.backends.iter().filter(|b| b.kind == Kind::Client) {
        let Some(u) = b.usename.as_deref() else {
            continue;
        };
        if !checked.insert(u) {
            continue;
        }
        if let Ok(name) = std::ffi::CString::new(u) {
            if has_privs_of(role_oid(&name)) {
                member_of.push(u.to_string());
            }
        }
    }
    let database = unsafe {
        let p = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        crate::read::encoding::cstr_to_rust(p).unwrap_or_default()
    };
    let role = unsafe {
        let p = pg_sys::GetUserNameFromId(user, true);
        crate::read::encoding::cstr_to_rust(p).unwrap_or_default()
    };
    let bytes = |name: &str, unit: i64| {
        setting(name)
            .and_then(|v| v.parse::<i64>().ok())
            .map(|v| v.saturating_mul(unit))
    };
    Input {
        limits: snapshot::limits(),
        lock_waits: snapshot::lock_waits(),
        history: History {
            enabled: history::enabled(),
            hidden_from_caller: !may_read_history,
            window,
            samples,
        },
        server: Server {
            in_recovery: unsafe { pg_sys::RecoveryInProgress() },
            postmaster_start: Some(unsafe { pg_sys::PgStartTime }),
            conf_load_time: Some(unsafe { pg_sys::PgReloadTime }),
            preloaded,
            // superuser-only to read: PostgreSQL raises an error for anyone else
            shared_preload_libraries: has_privs_of(pg_sys::Oid::from(
                pg_sys::ROLE_PG_READ_ALL_SETTINGS,
            ))
            .then(|| setting("shared_preload_libraries"))
            .flatten(),
            idle_in_transaction_session_timeout: millis_setting(
                "idle_in_transaction_session_timeout",
            ),
            idle_session_timeout: millis_setting("idle_session_timeout"),
            statement_timeout: millis_setting("statement_timeout"),
            transaction_timeout: millis_setting("transaction_timeout"),
            // work_mem in kB, shared_buffers in blocks
            work_mem: bytes("work_mem", 1024),
            shared_buffers: bytes("shared_buffers", i64::from(pg_sys::BLCKSZ)),
            // setting values can hold what only pg_read_all_settings may read
            setting_changes: (preloaded
                && has_privs_of(pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_SETTINGS)))
            .then(crate::worker::setting_changes::kept),
            settings_compared_reload: crate::worker::setting_changes::compared_reload(),
        },
        guard: Guard {
            policy: guc::policy(),
            enabled: guc::ENABLED.get(),
            dry_run: guc::DRY_RUN.get(),
            thresholds: guc::thresholds(),
            leak_idle_age: f64::from(guc::LEAK_IDLE_AGE.get()),
            leak_trend_samples: guc::LEAK_TREND_SAMPLES.get().max(2) as usize,
            slow_query_age,
        },
        worker,
        caller: Caller {
            pid: unsafe { pg_sys::MyProcPid },
            role,
            database,
            hidden_backends: hidden,
            has_read_all_stats: read_all_stats,
            lacks_terminate_idle: !unsafe { pg_sys::superuser() }
                && !has_privs_of(role_oid(c"dbconn_guard_admin")),
            is_superuser: unsafe { pg_sys::superuser() },
            has_signal_backend: has_privs_of(pg_sys::Oid::from(pg_sys::ROLE_PG_SIGNAL_BACKEND)),
            member_of,
        },
        guard_actions,
        snapshot: snap,
    }
}

/// The runbook's diagnosis decision tree, evaluated now: one row per finding, in the tree's
/// order, each not-ok row with one action to paste.
#[pg_extern]
fn diagnose(
    slow_query: default!(Option<Interval>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(step, i32),
        name!(area, &'static str),
        name!(finding, DbText),
        name!(status, &'static str),
        name!(evidence, DbText),
        name!(action, Option<DbText>),
        name!(reading, Option<&'static str>),
        name!(culprit_pid, Option<i32>),
        name!(culprit_application, Option<DbText>),
        name!(action_kind, &'static str),
        name!(see_area, Option<&'static str>),
    ),
> {
    // NULL: relative to how long this server's statements usually run (the history)
    let slow = slow_query.map(|given| {
        let us = interval_micros(&given);
        if us < 0 {
            error!(
                "dbconn_guard.diagnose(): slow_query must not be negative (it is {given}); give the age from which an active statement counts as slow, e.g. '5 minutes', or NULL for the default relative to this server's statements"
            );
        }
        us as f64 / 1e6
    });
    let input = read(slow);
    let rows = diagnose::diagnose(&input);
    TableIterator::new(rows.into_iter().map(|f| {
        // client-chosen names are in the texts: converted to the database's encoding
        (
            f.step,
            f.area,
            DbText::from(f.finding.as_str()),
            f.status.as_str(),
            DbText::from(f.evidence.as_str()),
            f.action.as_deref().map(DbText::from),
            f.reading.map(diagnose::Reading::as_str),
            match f.culprit {
                Some(diagnose::Culprit::Session(pid)) => Some(pid),
                _ => None,
            },
            match &f.culprit {
                Some(diagnose::Culprit::Application(a)) => Some(DbText::from(a.as_str())),
                _ => None,
            },
            f.action_kind.as_str(),
            f.see,
        )
    }))
}
