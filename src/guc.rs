//! The `dbconn_guard.*` settings.
//!
//! All are `PGC_SUSET`: set them in postgresql.conf or with
//! `ALTER SYSTEM SET dbconn_guard.… ; SELECT pg_reload_conf();`, or per session by a superuser.
//! PostgreSQL's GUC machinery does the parsing (units like `'10min'`) and refuses values outside
//! the ranges below with its usual message, keeping the old value.

use crate::core::health::Thresholds;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use std::ffi::CStr;

pub static WARNING_PCT: GucSetting<i32> = GucSetting::<i32>::new(80);
pub static CRITICAL_PCT: GucSetting<i32> = GucSetting::<i32>::new(90);
pub static IDLE_WARNING_AGE: GucSetting<i32> = GucSetting::<i32>::new(300);
pub static IDLE_WARNING_COUNT: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static IDLE_IN_TRANSACTION_WARNING_AGE: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static LOCK_WAIT_WARNING_AGE: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static LOCK_WAIT_CRITICAL_AGE: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static TRANSACTION_AGE_WARNING: GucSetting<i32> = GucSetting::<i32>::new(300);
pub static TRANSACTION_AGE_CRITICAL: GucSetting<i32> = GucSetting::<i32>::new(3600);
pub static LEAK_IDLE_AGE: GucSetting<i32> = GucSetting::<i32>::new(600);

/// Longest age setting accepted: 30 days, in seconds.
const MAX_AGE_S: i32 = 30 * 24 * 3600;

fn percent(name: &'static CStr, short: &'static CStr, setting: &'static GucSetting<i32>) {
    GucRegistry::define_int_guc(
        name,
        short,
        c"",
        setting,
        1,
        100,
        GucContext::Suset,
        GucFlags::default(),
    );
}

fn seconds(name: &'static CStr, short: &'static CStr, setting: &'static GucSetting<i32>, min: i32) {
    GucRegistry::define_int_guc(
        name,
        short,
        c"",
        setting,
        min,
        MAX_AGE_S,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
}

/// Registers every setting. Called once from `_PG_init`.
pub fn define() {
    percent(
        c"dbconn_guard.warning_pct",
        c"Connection utilization (percent of max_connections) at which health() reports warning.",
        &WARNING_PCT,
    );
    percent(
        c"dbconn_guard.critical_pct",
        c"Connection utilization (percent of max_connections) at which health() reports critical.",
        &CRITICAL_PCT,
    );
    seconds(
        c"dbconn_guard.idle_warning_age",
        c"Idle sessions older than this count towards health()'s idle_sessions check.",
        &IDLE_WARNING_AGE,
        1,
    );
    GucRegistry::define_int_guc(
        c"dbconn_guard.idle_warning_count",
        c"health() warns when more sessions than this are idle for longer than dbconn_guard.idle_warning_age.",
        c"",
        &IDLE_WARNING_COUNT,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    seconds(
        c"dbconn_guard.idle_in_transaction_warning_age",
        c"health() warns about sessions idle in transaction for longer than this.",
        &IDLE_IN_TRANSACTION_WARNING_AGE,
        0,
    );
    seconds(
        c"dbconn_guard.lock_wait_warning_age",
        c"health() warns when a session has waited on a lock for longer than this.",
        &LOCK_WAIT_WARNING_AGE,
        0,
    );
    seconds(
        c"dbconn_guard.lock_wait_critical_age",
        c"health() is critical when a session has waited on a lock for longer than this (0: never).",
        &LOCK_WAIT_CRITICAL_AGE,
        0,
    );
    seconds(
        c"dbconn_guard.transaction_age_warning",
        c"health() warns when a transaction has been open for longer than this (0: never).",
        &TRANSACTION_AGE_WARNING,
        0,
    );
    seconds(
        c"dbconn_guard.transaction_age_critical",
        c"health() is critical when a transaction has been open for longer than this (0: never).",
        &TRANSACTION_AGE_CRITICAL,
        0,
    );
    seconds(
        c"dbconn_guard.leak_idle_age",
        c"Idle sessions older than this make their client a leak suspect.",
        &LEAK_IDLE_AGE,
        1,
    );
    // Refuse misspelled dbconn_guard.* names instead of silently creating placeholders.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"dbconn_guard".as_ptr()) };
}

/// The health thresholds in force for this backend.
pub fn thresholds() -> Thresholds {
    let s = |g: &GucSetting<i32>| f64::from(g.get());
    Thresholds {
        warning_pct: s(&WARNING_PCT),
        critical_pct: s(&CRITICAL_PCT),
        idle_age: s(&IDLE_WARNING_AGE),
        idle_count: i64::from(IDLE_WARNING_COUNT.get()),
        idle_in_transaction_age: s(&IDLE_IN_TRANSACTION_WARNING_AGE),
        lock_wait_warning: s(&LOCK_WAIT_WARNING_AGE),
        lock_wait_critical: s(&LOCK_WAIT_CRITICAL_AGE),
        xact_age_warning: s(&TRANSACTION_AGE_WARNING),
        xact_age_critical: s(&TRANSACTION_AGE_CRITICAL),
    }
}
