//! The guard's SQL surface: `worker_status()`, `recent_terminations()`, `setting_changes()`,
//! and the manual `terminate_idle()` and `cancel_statements()`.

// pgrx spells a set-returning function's columns in its return type (`name!(...)`).
#![allow(clippy::type_complexity)]

use crate::core::filter::{self, SessionFilter};
use crate::core::policy::{self, IDLE_STATES};
use crate::core::session::owned;
use crate::errors;
use crate::guc;
use crate::read::encoding::DbText;
use crate::read::snapshot;
use crate::read::time::timestamptz;
use crate::shmem::status::{self, RequestTarget, POLICY_TEXT, SHARED};
use crate::worker::guard::Outcome;
use crate::worker::requests;
use crate::worker::requests::Ask;
use crate::worker::setting_changes;
use crate::worker::BACKEND_TYPE;
use pgrx::prelude::*;

fn require_preloaded(what: &str) {
    if !status::available() {
        errors::not_ready(
            format!("dbconn_guard: {what} needs the library preloaded"),
            None,
            "Add dbconn_guard to shared_preload_libraries and restart the server.",
        );
    }
}

const NOT_PRELOADED: &str = "dbconn_guard is not in shared_preload_libraries, so there is no worker: add it there (ALTER SYSTEM SET shared_preload_libraries = 'dbconn_guard') and restart the server";

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
    if !status::available() {
        // no worker to report on: say how to get one, and show the policy it would apply
        let policy = policy::summary_json(&guc::policy_values(), POLICY_TEXT);
        return TableIterator::once((
            false,
            None,
            BACKEND_TYPE,
            None,
            false,
            0,
            None,
            0.0,
            0.0,
            0,
            0,
            0,
            0,
            None,
            Some(NOT_PRELOADED.to_string()),
            None,
            pgrx::JsonB(serde_json::from_str(&policy).unwrap_or(serde_json::Value::Null)),
        ));
    }
    // the fields shown, read under the lock (the whole struct holds the rings: hundreds of kB)
    let s = SHARED.share();
    let running = worker_alive(s.pid);
    let policy = serde_json::from_str(s.policy.get()).unwrap_or(serde_json::Value::Null);
    TableIterator::once((
        running,
        running.then_some(s.pid),
        BACKEND_TYPE,
        timestamptz(s.started_at),
        s.extension_ready,
        s.cycles,
        timestamptz(s.last_cycle_start),
        s.last_cycle_us as f64 / 1000.0,
        s.last_cycle_cpu_us as f64 / 1000.0,
        s.sessions_examined,
        s.terminations_last_cycle,
        s.deferred_last_cycle,
        s.terminations_total,
        if running {
            timestamptz(s.next_wakeup)
        } else {
            None
        },
        last_error_for_caller(s.last_error.get()),
        timestamptz(s.last_error_at),
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
        name!(signal_window_us, Option<i64>),
    ),
> {
    require_preloaded("recent_terminations()");
    let recent = SHARED.share().recent();
    TableIterator::new(recent.into_iter().rev().map(|r| {
        (
            timestamptz(r.at),
            r.pid,
            r.usename.opt(),
            r.datname.opt(),
            r.application_name.opt(),
            r.client_addr.opt(),
            r.state.opt(),
            r.state_age_ms as f64 / 1000.0,
            (r.xact_age_ms >= 0).then(|| r.xact_age_ms as f64 / 1000.0),
            timestamptz(r.backend_start),
            r.rule.opt(),
            r.dry_run,
            r.actor.opt(),
            r.persisted,
            (r.signal_window_us >= 0).then_some(r.signal_window_us),
        )
    }))
}

/// The worker's last error as the calling role may see it: its text can name configuration
/// files and their lines, which `pg_settings` shows only to `pg_read_all_settings`; so the
/// text goes to members of that role and the guard's admins, others learn only that there is
/// one. `None` when there is none.
pub(crate) fn last_error_for_caller(text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    let may = unsafe { pg_sys::superuser() }
        || caller_has_privs_of("pg_read_all_settings")
        || caller_has_privs_of("dbconn_guard_admin");
    Some(if may {
        text.to_string()
    } else {
        "(hidden: the worker reported an error; its text, which may name configuration files, is shown to members of pg_read_all_settings and dbconn_guard_admin)".to_string()
    })
}

/// Does the calling role have the privileges of the role named `role`?
fn caller_has_privs_of(role: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(role) else {
        return false;
    };
    unsafe {
        let oid = pg_sys::get_role_oid(name.as_ptr(), true);
        oid != pg_sys::InvalidOid && pg_sys::has_privs_of_role(pg_sys::GetUserId(), oid)
    }
}

/// 0.1.0's `terminate_idle(interval, text[], text, boolean)`: kept so that an install of 0.1.0
/// works between the restart onto this library and `ALTER EXTENSION dbconn_guard UPDATE`,
/// which replaces it with the one below (declared in no SQL of this version).
#[pg_extern(volatile, sql = false)]
fn terminate_idle(
    older_than: Option<Interval>,
    states: Option<Vec<Option<String>>>,
    application_name: Option<String>,
    dry_run: Option<bool>,
) -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(usename, Option<DbText>),
        name!(datname, Option<DbText>),
        name!(application_name, Option<DbText>),
        name!(client_addr, Option<String>),
        name!(state, Option<String>),
        name!(state_age_seconds, f64),
        name!(xact_age_seconds, Option<f64>),
        name!(action, DbText),
    ),
> {
    // pgrx spells the columns in the return type: the same as terminate_idle_filtered()'s
    terminate_idle_filtered(
        older_than,
        states,
        application_name,
        dry_run,
        None,
        None,
        None,
    )
}

/// Ends sessions idle (in the given states) for at least `older_than`, with the worker's
/// protections, recording each in `dbconn_guard.terminations`; optionally only those of one
/// application, role, client address (`'local'`: Unix-socket sessions) and database. The
/// sessions are handed to the background worker, which records each (committed) before it
/// signals it; see `requests`.
#[pg_extern(volatile, name = "terminate_idle")]
fn terminate_idle_filtered(
    older_than: Option<Interval>,
    states: default!(
        Option<Vec<Option<String>>>,
        "ARRAY['idle', 'idle in transaction', 'idle in transaction (aborted)']"
    ),
    application_name: default!(Option<String>, "NULL"),
    dry_run: default!(Option<bool>, false),
    usename: default!(Option<String>, "NULL"),
    client_addr: default!(Option<String>, "NULL"),
    datname: default!(Option<String>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(usename, Option<DbText>),
        name!(datname, Option<DbText>),
        name!(application_name, Option<DbText>),
        name!(client_addr, Option<String>),
        name!(state, Option<String>),
        name!(state_age_seconds, f64),
        name!(xact_age_seconds, Option<f64>),
        name!(action, DbText),
    ),
> {
    let older_than_us = older_than_micros(Ask::Terminate, older_than);
    let Some(states) = states else {
        errors::raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "dbconn_guard.terminate_idle: states must not be NULL",
            None,
            Some("Allowed states: idle, idle in transaction, idle in transaction (aborted)."),
        )
    };
    if states.is_empty() {
        errors::invalid_argument(
            "dbconn_guard.terminate_idle: states must not be empty",
            "Allowed states: idle, idle in transaction, idle in transaction (aborted).",
        );
    }
    let mut wanted = Vec::new();
    for s in states {
        match s {
            Some(s) if IDLE_STATES.contains(&s.as_str()) => wanted.push(s),
            other => errors::invalid_argument(
                format!(
                    "dbconn_guard.terminate_idle: unknown state {:?}",
                    other.unwrap_or_else(|| "NULL".into())
                ),
                "Allowed states: idle, idle in transaction, idle in transaction (aborted).",
            ),
        }
    }
    let filters = session_filter(
        Ask::Terminate,
        application_name,
        usename,
        client_addr,
        datname,
    );
    TableIterator::new(ask_worker(
        Ask::Terminate,
        older_than_us,
        &wanted,
        filters,
        dry_run,
    ))
}

/// Cancels the statements that have run for at least `older_than`, optionally only those of
/// one application, role, client address (`'local'`: Unix-socket sessions) and database, with
/// the worker's protections; the sessions stay. Each is recorded in `dbconn_guard.terminations`
/// (rule `manual_cancel`) before it is signalled, by the worker, as for `terminate_idle()`.
#[pg_extern(volatile)]
fn cancel_statements(
    older_than: Option<Interval>,
    application_name: default!(Option<String>, "NULL"),
    usename: default!(Option<String>, "NULL"),
    client_addr: default!(Option<String>, "NULL"),
    datname: default!(Option<String>, "NULL"),
    dry_run: default!(Option<bool>, false),
) -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(usename, Option<DbText>),
        name!(datname, Option<DbText>),
        name!(application_name, Option<DbText>),
        name!(client_addr, Option<String>),
        name!(state, Option<String>),
        name!(state_age_seconds, f64),
        name!(xact_age_seconds, Option<f64>),
        name!(action, DbText),
    ),
> {
    let older_than_us = older_than_micros(Ask::Cancel, older_than);
    let filters = session_filter(Ask::Cancel, application_name, usename, client_addr, datname);
    TableIterator::new(ask_worker(
        Ask::Cancel,
        older_than_us,
        &["active".to_string()],
        filters,
        dry_run,
    ))
}

/// `older_than` in microseconds: refused when NULL or negative.
fn older_than_micros(ask: Ask, older_than: Option<Interval>) -> i64 {
    let f = ask.function();
    let Some(older_than) = older_than else {
        errors::raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{f}: older_than must not be NULL"),
            None,
            Some("Give an interval, for example '10 minutes'; '0' means any age."),
        )
    };
    let us = older_than.as_micros();
    if us < 0 {
        errors::invalid_argument(
            format!("{f}: older_than must not be negative (got {older_than})"),
            "Give an interval of 0 or more, for example '10 minutes'.",
        );
    }
    us as i64
}

/// The filters of a call, the client address checked.
fn session_filter(
    ask: Ask,
    application_name: Option<String>,
    usename: Option<String>,
    client_addr: Option<String>,
    datname: Option<String>,
) -> SessionFilter {
    let client_addr = client_addr.map(|a| match filter::parse_client_addr(&a) {
        Ok(ip) => ip,
        Err(why) => errors::invalid_argument(
            format!("{}: {why}", ask.function()),
            "Give one address as pg_stat_activity.client_addr shows it (10.0.0.5, ::1), or 'local' for sessions over a Unix socket.",
        ),
    });
    SessionFilter {
        application_name,
        usename,
        client_addr,
        datname,
    }
}

/// A row of `terminate_idle()` and `cancel_statements()`.
type SessionRow = (
    i32,
    Option<DbText>,
    Option<DbText>,
    Option<DbText>,
    Option<String>,
    Option<String>,
    f64,
    Option<f64>,
    DbText,
);

/// The client sessions in one of `wanted` states for at least `older_than_us` that pass
/// `filters`, handed to the worker to end (or cancel) each through the kill path; one row per
/// session matched, with what was done.
fn ask_worker(
    ask: Ask,
    older_than_us: i64,
    wanted: &[String],
    filters: SessionFilter,
    dry_run: Option<bool>,
) -> Vec<SessionRow> {
    let f = ask.function();
    if let Err(why) = requests::worker_ready() {
        errors::not_ready(
            format!("{f}: {}", ask.nothing_done()),
            Some(why.to_string()),
            "The background worker carries out and records every termination and cancel: check SELECT * FROM dbconn_guard.worker_status().",
        );
    }
    // the gates the worker's rules obey: closed, refused; in a dry run, a dry run
    let worker_dry_run = match requests::gates() {
        Ok(d) => d,
        Err(c) => errors::not_ready(format!("{f}: {}", ask.nothing_done()), Some(c.why), c.hint),
    };
    if worker_dry_run && dry_run != Some(true) {
        notice!(
            "dbconn_guard.dry_run is on: {}() records the sessions it would {}, and {} none",
            f.trim_start_matches("dbconn_guard."),
            if ask == Ask::Cancel { "cancel" } else { "end" },
            if ask == Ask::Cancel {
                "cancels"
            } else {
                "ends"
            },
        );
    }
    let dry_run = dry_run.unwrap_or(false) || worker_dry_run;
    let role = unsafe { pg_sys::GetUserId() };
    if dry_run {
        if let Err(rows) = requests::dry_run_budget(role, 0) {
            errors::raise(
                PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                format!("{f}: too many dry runs: nothing was recorded"),
                Some(format!(
                    "This role recorded {rows} dry-run rows in the last minute; the limit is {} a minute per role.",
                    crate::shmem::status::DRY_RUN_ROWS_PER_MINUTE
                )),
                Some("Wait a minute and call it again; dbconn_guard.terminations already holds what the earlier dry runs would do."),
            );
        }
    }
    let snap = snapshot::activity();
    let scope = guc::scope();
    let me = unsafe { pg_sys::MyProcPid };
    let caller_is_superuser = unsafe { pg_sys::superuser() };
    let caller_can_signal = caller_is_superuser || caller_has_privs_of("pg_signal_backend");
    let actor = format!(
        "manual:{}",
        unsafe { crate::read::encoding::cstr_to_rust(pg_sys::GetUserNameFromId(role, true)) }
            .unwrap_or_default()
    );

    let mut rows: Vec<SessionRow> = Vec::new();
    let mut asked: Vec<(usize, RequestTarget)> = Vec::new();
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
        if !filters.keep(b) {
            continue;
        }
        // PostgreSQL's rule for pg_terminate_backend(): a superuser's session only for a
        // superuser; others for pg_signal_backend or a member of the session's role. The
        // worker signals as this role, so PostgreSQL checks it again.
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
            b.usename.as_deref().map(DbText::from),
            b.datname.as_deref().map(DbText::from),
            b.application_name.as_deref().map(DbText::from),
            owned(&b.client_addr),
            b.state.map(str::to_string),
            (b.state_age(snap.now) * 100.0).round() / 100.0,
            b.xact_age(snap.now).map(|x| (x * 100.0).round() / 100.0),
            DbText(skip.clone().unwrap_or_default()),
        );
        if skip.is_none() {
            let target = b.slot.zip(b.backend_start).zip(b.state_change);
            match target {
                Some(((slot, backend_start), state_change)) => asked.push((
                    rows.len(),
                    RequestTarget {
                        pid: b.pid,
                        slot,
                        backend_start,
                        state_change,
                        // a cancel's target is active: not read
                        state: IDLE_STATES.iter().position(|s| *s == state).unwrap_or(0) as u8,
                    },
                )),
                None => {
                    rows.push(row);
                    let last = rows.len() - 1;
                    rows[last].8 = DbText::from(if ask == Ask::Cancel {
                        "skipped: the statement ended or changed before it could be cancelled (its status could not be read)"
                    } else {
                        "skipped: session changed or ended before it could be ended (its status could not be read)"
                    });
                    continue;
                }
            }
        }
        rows.push(row);
    }
    let only: Vec<RequestTarget> = asked.iter().map(|(_, t)| *t).collect();
    let (outcomes, error) = requests::hand_over(&only, role, &actor, dry_run, ask);
    if dry_run {
        let recorded = outcomes
            .iter()
            .filter(|o| **o == Outcome::WouldTerminate)
            .count() as i64;
        // counted, never refused here: the rows are written already
        let _ = requests::dry_run_budget(role, recorded);
    }
    for ((i, _), o) in asked.iter().zip(&outcomes) {
        rows[*i].8 = DbText(o.action(ask == Ask::Cancel));
    }
    if let Some(e) = error {
        if outcomes.contains(&Outcome::NotRecorded) {
            warning!(
                "{f}: some sessions were not {} because their audit rows could not be written: {e}",
                if ask == Ask::Cancel {
                    "cancelled"
                } else {
                    "ended"
                }
            );
        } else {
            warning!("{f}: {e}");
        }
    }
    rows
}

/// The settings the configuration reloads changed (the last 64), newest first: when the worker
/// saw the reload, the setting, and its value before and after, as `SHOW` shows them.
#[pg_extern]
fn setting_changes() -> TableIterator<
    'static,
    (
        name!(changed_at, Option<TimestampWithTimeZone>),
        name!(name, String),
        name!(old_value, String),
        name!(new_value, String),
    ),
> {
    let rows: Vec<_> = setting_changes::kept()
        .into_iter()
        .rev()
        .map(|c| (timestamptz(c.at), c.change.name, c.change.old, c.change.new))
        .collect();
    TableIterator::new(rows)
}
