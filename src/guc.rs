//! The `dbconn_guard.*` settings.
//!
//! The thresholds of the views are `PGC_SUSET` (postgresql.conf, `ALTER SYSTEM`, or `SET` by a
//! superuser); the worker's policy is `PGC_SIGHUP` (postgresql.conf or `ALTER SYSTEM` + reload);
//! `dbconn_guard.database` is `PGC_POSTMASTER` and exists only when the library is preloaded.
//! PostgreSQL's GUC machinery does the parsing (units like `'10min'`) and refuses values outside
//! the ranges below with its usual message, keeping the old value.
//!
//! Every duration takes PostgreSQL's time units, and a bare number is **seconds**.

use crate::core::budgets::Budgets;
use crate::core::health::Thresholds;
use crate::core::overrides::Overrides;
use crate::core::patterns::PatternList;
use crate::core::policy::{Policy, Scope};
use crate::core::session::Micros;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

/// Longest age setting accepted: 30 days, in seconds.
const MAX_AGE_S: i32 = 30 * 24 * 3600;

/// Test builds only: milliseconds the guard waits between recording a session and its last
/// look before signalling, to let a test start a query inside that window.
#[cfg(feature = "test_hooks")]
pub static TEST_DELAY_BEFORE_SIGNAL: GucSetting<i32> = GucSetting::<i32>::new(0);
/// Test builds only: the kill path reads the process of this pid as busy when the kernel says
/// asleep (a backend woken by something that leaves its status alone, on demand).
#[cfg(feature = "test_hooks")]
pub static TEST_BUSY_PID: GucSetting<i32> = GucSetting::<i32>::new(0);
/// Test builds only: at a reload, the worker appends this many synthetic samples to the history
/// (the bench's "24 hours of samples"), once per value set.
#[cfg(feature = "test_hooks")]
pub static TEST_FILL_HISTORY: GucSetting<i32> = GucSetting::<i32>::new(0);

/// Shortest policy timeout but 0 (off), in seconds: shorter ones end sessions in ordinary use.
pub const MIN_TIMEOUT_S: f64 = 1.0;
/// Largest `dbconn_guard.history_size` (the history ring is allocated for it at server start).
pub const MAX_HISTORY_SIZE: i32 = 100_000;
/// Largest `dbconn_guard.history_groups`.
pub const MAX_HISTORY_GROUPS: i32 = 64;
/// Largest `dbconn_guard.max_terminations_per_cycle`: shared memory keeps the audit rows of one
/// batch for withdrawal (`shmem::status::WITHDRAW`).
pub const MAX_PER_CYCLE: i32 = 1024;

/// Refuses a value in a check hook: PostgreSQL reports `detail` and `hint` with its own
/// "invalid value for parameter" error, and keeps the old value.
fn refuse(detail: &str, hint: &CStr) -> bool {
    let detail = CString::new(detail.replace('\0', " ")).unwrap_or_default();
    unsafe {
        pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(detail.as_ptr());
        pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(hint.as_ptr());
    }
    false
}

/// The new value of a string setting's check hook (`None`: NULL, nothing to check).
///
/// # Safety
/// `newval` must be the argument PostgreSQL passes to a string check hook.
unsafe fn new_text(newval: *mut *mut std::ffi::c_char) -> Option<String> {
    unsafe {
        if newval.is_null() || (*newval).is_null() {
            return None;
        }
        Some(CStr::from_ptr(*newval).to_string_lossy().into_owned())
    }
}

/// Check hook of the policy timeouts: 0 (off) or at least `MIN_TIMEOUT_S`.
#[pg_guard]
unsafe extern "C-unwind" fn check_timeout(
    newval: *mut f64,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    let v = unsafe { *newval };
    if v == 0.0 || v >= MIN_TIMEOUT_S {
        return true;
    }
    refuse(
        &format!(
            "A termination timeout is 0 (off) or at least {MIN_TIMEOUT_S}s; {v}s would end sessions in ordinary use."
        ),
        c"A bare number is seconds; units work too, as in '90s', '5min' or '1h'.",
    )
}

/// The body of the list settings' check hooks: the new value parsed by `parse`, refused whole
/// with its reason and `hint` when malformed (NULL: nothing to check).
///
/// # Safety
/// `newval` must be the argument PostgreSQL passes to a string check hook.
unsafe fn check_list(
    newval: *mut *mut std::ffi::c_char,
    parse: impl Fn(&str) -> Result<(), String>,
    hint: &CStr,
) -> bool {
    match unsafe { new_text(newval) }.map(|v| parse(&v)) {
        None | Some(Ok(())) => true,
        Some(Err(why)) => refuse(&format!("{why}."), hint),
    }
}

/// Check hook of the name-list settings: a malformed list is refused whole, with the reason.
#[pg_guard]
unsafe extern "C-unwind" fn check_pattern_list(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    unsafe {
        check_list(
            newval,
            |v| PatternList::parse(v).map(drop),
            c"Give a comma-separated list of names, with * as a wildcard and double quotes around a name that holds a comma or a quote.",
        )
    }
}

/// Check hook of the override lists: a malformed list is refused whole, naming the bad item.
#[pg_guard]
unsafe extern "C-unwind" fn check_overrides(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    unsafe {
        check_list(
            newval,
            |v| Overrides::parse(v).map(drop),
            c"Give comma-separated items app:<name>=<duration> or user:<name>=<duration>, as in 'app:batch-*=1h, user:etl=30min'; * is a wildcard, 0 means never, a bare number is seconds.",
        )
    }
}

/// Check hook of the connection budgets: a malformed list is refused whole, naming the bad item.
#[pg_guard]
unsafe extern "C-unwind" fn check_budgets(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    unsafe {
        check_list(
            newval,
            |v| Budgets::parse(v).map(drop),
            c"Give comma-separated items app:<name>=<sessions> or user:<name>=<sessions>, as in 'app:api=200, user:etl=10, app:*=100'; * is a wildcard (a budget per name), 0 means no budget.",
        )
    }
}

/// Where a setting may be changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Changed {
    /// postgresql.conf, ALTER SYSTEM, or SET by a superuser (`PGC_SUSET`)
    Superuser,
    /// postgresql.conf or ALTER SYSTEM, then a reload (`PGC_SIGHUP`)
    Reload,
    /// postgresql.conf, at server start (`PGC_POSTMASTER`); defined only when preloading
    ServerStart,
}

/// What a setting holds, with its variable and bounds.
pub enum Value {
    /// whole seconds (a bare number is seconds; units accepted)
    Seconds {
        var: &'static GucSetting<i32>,
        min: i32,
        max: i32,
    },
    Int {
        var: &'static GucSetting<i32>,
        min: i32,
        max: i32,
    },
    /// a termination timeout: real seconds, 0 (off) or at least `MIN_TIMEOUT_S`
    Timeout(&'static GucSetting<f64>),
    /// real seconds within bounds
    RealSeconds {
        var: &'static GucSetting<f64>,
        min: f64,
        max: f64,
    },
    Bool(&'static GucSetting<bool>),
    /// a name list (`core::patterns`), refused whole when malformed
    Names(&'static GucSetting<Option<CString>>),
    /// `app:<pattern>=<duration>, user:<pattern>=<duration>, ...` (core::overrides).
    Overrides(&'static GucSetting<Option<CString>>),
    /// `app:<pattern>=<sessions>, user:<pattern>=<sessions>, ...` (core::budgets).
    Budgets(&'static GucSetting<Option<CString>>),
    Text(&'static GucSetting<Option<CString>>),
}

/// A setting's boot value: the variable's initial value and `pg_settings.boot_val`, written once
/// in `settings!` (which gives it to both).
#[derive(Clone, Copy, Debug)]
pub enum Boot {
    /// Only until `settings!` fills it in.
    Unset,
    Int(i32),
    Real(f64),
    Bool(bool),
    Text(&'static CStr),
}

impl Boot {
    /// As `pg_settings.boot_val` shows it.
    #[cfg_attr(not(any(test, feature = "pg_test")), allow(dead_code))]
    pub fn as_shown(&self) -> String {
        match self {
            Boot::Unset => "?".into(),
            Boot::Int(v) => v.to_string(),
            // PostgreSQL shows a real setting with %g: 10, 0.5
            Boot::Real(v) => v.to_string(),
            Boot::Bool(v) => if *v { "on" } else { "off" }.into(),
            Boot::Text(v) => v.to_string_lossy().into_owned(),
        }
    }
}

/// One `dbconn_guard.*` setting: the single source for its registration, the policy summary
/// (`worker_status().policy`), and the settings tables of docs/reference.md (checked by a test).
pub struct Setting {
    pub name: &'static CStr,
    pub short: &'static CStr,
    pub long: &'static CStr,
    pub value: Value,
    pub changed: Changed,
    /// shown in `worker_status().policy`
    pub in_policy: bool,
    /// The boot value (from `settings!`: the variable's initial value).
    #[cfg_attr(not(any(test, feature = "pg_test")), allow(dead_code))]
    pub boot: Boot,
    /// the "default" column of docs/reference.md where it is not the boot value as shown
    /// ("5min" for 300 seconds; checked to mean the same by a test)
    #[cfg_attr(not(test), allow(dead_code))]
    pub doc_default: Option<&'static str>,
    /// the "range" column of docs/reference.md (checked by a test)
    #[cfg_attr(not(test), allow(dead_code))]
    pub doc_range: &'static str,
}

impl Setting {
    /// The name without the `dbconn_guard.` prefix.
    pub fn short_name(&self) -> &'static str {
        let n = self.name.to_str().unwrap_or("");
        n.strip_prefix("dbconn_guard.").unwrap_or(n)
    }
}

/// A row with its boot value (`settings!`).
const fn with_boot(mut row: Setting, boot: Boot) -> Setting {
    row.boot = boot;
    row
}

/// The variable type of a setting kind of `settings!`.
macro_rules! var_type {
    (i32) => { i32 };
    (f64) => { f64 };
    (bool) => { bool };
    (text) => { Option<CString> };
}

/// A setting kind's initial value of its variable.
macro_rules! var_init {
    (text, $d:expr) => {
        Some($d)
    };
    ($t:ident, $d:expr) => {
        $d
    };
}

/// A setting kind's `Boot`.
macro_rules! boot {
    (i32, $d:expr) => {
        Boot::Int($d)
    };
    (f64, $d:expr) => {
        Boot::Real($d)
    };
    (bool, $d:expr) => {
        Boot::Bool($d)
    };
    (text, $d:expr) => {
        Boot::Text($d)
    };
}

/// The settings, one row each: `NAME: kind = default => |var| row;` declares the variable
/// `NAME` (a `GucSetting` of the kind, initialised to the default) and the row of `SETTINGS`
/// that registers it (`var` is the variable), with the same default as its boot value.
macro_rules! settings {
    ($( $(#[$m:meta])* $var:ident : $ty:ident = $default:expr => |$v:ident| $row:expr ; )*) => {
        $(
            $(#[$m])*
            pub static $var: GucSetting<var_type!($ty)> =
                GucSetting::<var_type!($ty)>::new(var_init!($ty, $default));
        )*
        /// Every `dbconn_guard.*` setting, in the order of the tables of docs/reference.md.
        pub static SETTINGS: [Setting; [$(stringify!($var)),*].len()] = [
            $({
                let $v = &$var;
                with_boot($row, boot!($ty, $default))
            }),*
        ];
    };
}

const fn reload_bool(
    name: &'static CStr,
    short: &'static CStr,
    var: &'static GucSetting<bool>,
) -> Setting {
    Setting {
        name,
        short,
        long: c"",
        value: Value::Bool(var),
        changed: Changed::Reload,
        in_policy: true,
        boot: Boot::Unset,
        doc_default: None,
        doc_range: "bool",
    }
}

const fn names(
    name: &'static CStr,
    short: &'static CStr,
    var: &'static GucSetting<Option<CString>>,
) -> Setting {
    Setting {
        name,
        short,
        long: c"Comma-separated names; * matches any run of characters; double-quote a name that holds a comma.",
        value: Value::Names(var),
        changed: Changed::Reload,
        in_policy: true,
        boot: Boot::Unset,
        doc_default: Some("''"),
        doc_range: "name list",
    }
}

const fn percent(
    name: &'static CStr,
    short: &'static CStr,
    var: &'static GucSetting<i32>,
) -> Setting {
    Setting {
        name,
        short,
        long: c"",
        value: Value::Int {
            var,
            min: 1,
            max: 100,
        },
        changed: Changed::Superuser,
        in_policy: false,
        boot: Boot::Unset,
        doc_default: None,
        doc_range: "1–100",
    }
}

const fn age(
    name: &'static CStr,
    short: &'static CStr,
    var: &'static GucSetting<i32>,
    min: i32,
    doc_default: &'static str,
    doc_range: &'static str,
) -> Setting {
    Setting {
        name,
        short,
        long: c"",
        value: Value::Seconds {
            var,
            min,
            max: MAX_AGE_S,
        },
        changed: Changed::Superuser,
        in_policy: false,
        boot: Boot::Unset,
        doc_default: Some(doc_default),
        doc_range,
    }
}

const fn timeout(
    name: &'static CStr,
    short: &'static CStr,
    var: &'static GucSetting<f64>,
) -> Setting {
    Setting {
        name,
        short,
        long: c"0 turns the rule off; otherwise at least 1s. A bare number is seconds.",
        value: Value::Timeout(var),
        changed: Changed::Reload,
        in_policy: true,
        boot: Boot::Unset,
        doc_default: Some("0 (off)"),
        doc_range: "0, or 1s–30d",
    }
}

settings! {
    WARNING_PCT: i32 = 80 => |var|
        percent(
            c"dbconn_guard.warning_pct",
            c"Connection utilization (percent of max_connections) at which health() reports warning.",
            var,
        );

    CRITICAL_PCT: i32 = 90 => |var|
        percent(
            c"dbconn_guard.critical_pct",
            c"Connection utilization (percent of max_connections) at which health() reports critical.",
            var,
        );

    IDLE_WARNING_AGE: i32 = 300 => |var|
        age(
            c"dbconn_guard.idle_warning_age",
            c"Idle sessions older than this count towards health()'s idle_sessions check.",
            var,
            1,
            "5min",
            "1s–30d",
        );

    IDLE_WARNING_COUNT: i32 = 10 => |var|
        Setting {
            name: c"dbconn_guard.idle_warning_count",
            short: c"health() warns when more sessions than this are idle for longer than dbconn_guard.idle_warning_age.",
            long: c"",
            value: Value::Int { var, min: 0, max: i32::MAX },
            changed: Changed::Superuser,
            in_policy: false,
            boot: Boot::Unset,
            doc_default: None,
            doc_range: "0–",
        };

    IDLE_IN_TRANSACTION_WARNING_AGE: i32 = 60 => |var|
        age(
            c"dbconn_guard.idle_in_transaction_warning_age",
            c"health() warns about sessions idle in transaction for longer than this.",
            var,
            0,
            "1min",
            "0–30d",
        );

    LOCK_WAIT_WARNING_AGE: i32 = 10 => |var|
        age(
            c"dbconn_guard.lock_wait_warning_age",
            c"health() warns when a session has waited on a lock for longer than this.",
            var,
            0,
            "10s",
            "0–30d",
        );

    LOCK_WAIT_CRITICAL_AGE: i32 = 60 => |var|
        age(
            c"dbconn_guard.lock_wait_critical_age",
            c"health() is critical when a session has waited on a lock for longer than this (0: never).",
            var,
            0,
            "1min",
            "0–30d (0: never critical)",
        );

    TRANSACTION_AGE_WARNING: i32 = 300 => |var|
        age(
            c"dbconn_guard.transaction_age_warning",
            c"health() warns when a transaction has been open for longer than this (0: never).",
            var,
            0,
            "5min",
            "0–30d (0: off)",
        );

    TRANSACTION_AGE_CRITICAL: i32 = 3600 => |var|
        age(
            c"dbconn_guard.transaction_age_critical",
            c"health() is critical when a transaction has been open for longer than this (0: never).",
            var,
            0,
            "1h",
            "0–30d (0: off)",
        );

    LEAK_IDLE_AGE: i32 = 600 => |var|
        age(
            c"dbconn_guard.leak_idle_age",
            c"Idle sessions older than this make their client a leak suspect.",
            var,
            1,
            "10min",
            "1s–30d",
        );

    DIAGNOSE_WINDOW: i32 = 3600 => |var|
        age(
            c"dbconn_guard.diagnose_window",
            c"How far back diagnose() reads the history for the error pattern and recent changes.",
            var,
            60,
            "1h",
            "1min–30d",
        );
    /// The guard's policy (PGC_SIGHUP: postgresql.conf or ALTER SYSTEM + pg_reload_conf()).
    ENABLED: bool = true => |var|
        reload_bool(
            c"dbconn_guard.enabled",
            c"Whether the background worker ends stale sessions.",
            var,
        );

    DRY_RUN: bool = false => |var|
        reload_bool(
            c"dbconn_guard.dry_run",
            c"When on, the worker records and logs the sessions it would end, and ends none.",
            var,
        );
    /// Off until a DBA sets them: preloading the library and creating the extension end nothing.
    /// Seconds (a `real`, so `'1500ms'` is exact and `'300ms'` is refused, not rounded to 0 = off).
    IDLE_TIMEOUT: f64 = 0.0 => |var|
        timeout(
            c"dbconn_guard.idle_timeout",
            c"Ends sessions idle for longer than this (0: never).",
            var,
        );

    IDLE_IN_TRANSACTION_TIMEOUT: f64 = 0.0 => |var|
        timeout(
            c"dbconn_guard.idle_in_transaction_timeout",
            c"Ends sessions idle in transaction (or aborted transaction) for longer than this (0: never).",
            var,
        );

    TRANSACTION_TIMEOUT: f64 = 0.0 => |var|
        timeout(
            c"dbconn_guard.transaction_timeout",
            c"Ends sessions whose transaction is older than this, at a moment they are idle in it, never while a statement runs (0: never).",
            var,
        );

    BLOCKER_TIMEOUT: f64 = 0.0 => |var|
        timeout(
            c"dbconn_guard.blocker_timeout",
            c"Ends the root of a lock pile-up while it is idle in transaction (or aborted), once dbconn_guard.blocker_min_waiters of the sessions it holds up have waited longer than this (0: never).",
            var,
        );

    BLOCKER_MIN_WAITERS: i32 = 1 => |var|
        Setting {
            name: c"dbconn_guard.blocker_min_waiters",
            short: c"How many sessions must have waited longer than dbconn_guard.blocker_timeout on one root blocker before the rule acts on it.",
            long: c"Counts every waiting session the root holds up, directly or behind another waiter.",
            value: Value::Int { var, min: 1, max: 10000 },
            changed: Changed::Reload,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: None,
            doc_range: "1–10000",
        };

    CANCEL_ACTIVE_BLOCKERS: bool = false => |var|
        reload_bool(
            c"dbconn_guard.cancel_active_blockers",
            c"When on, a root blocker running a statement has that statement cancelled (pg_cancel_backend, never terminated) under dbconn_guard.blocker_timeout, once per statement.",
            var,
        );

    BLOCKER_TERMINATE_AFTER: f64 = 0.0 => |var|
        timeout(
            c"dbconn_guard.blocker_terminate_after",
            c"Ends an active root blocker whose statement was cancelled under dbconn_guard.cancel_active_blockers and that still holds up a pile-up past dbconn_guard.blocker_timeout this long after that first cancel (0: never).",
            var,
        );

    LOCK_QUEUE_TIMEOUT: f64 = 0.0 => |var|
        timeout(
            c"dbconn_guard.lock_queue_timeout",
            c"Cancels a statement waiting in a lock queue (an ALTER TABLE behind a long transaction) once dbconn_guard.lock_queue_min_waiters of the sessions queued behind it have waited longer than this; never ends the session (0: never).",
            var,
        );

    LOCK_QUEUE_MIN_WAITERS: i32 = 1 => |var|
        Setting {
            name: c"dbconn_guard.lock_queue_min_waiters",
            short: c"How many sessions queued behind a waiting statement must have waited longer than dbconn_guard.lock_queue_timeout before the rule cancels it.",
            long: c"Counts every waiting session it holds up, directly or behind another waiter.",
            value: Value::Int { var, min: 1, max: 10000 },
            changed: Changed::Reload,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: None,
            doc_range: "1–10000",
        };

    MIN_UTILIZATION_PCT: i32 = 0 => |var|
        Setting {
            name: c"dbconn_guard.min_utilization_pct",
            short: c"Idle sessions are ended only while connection utilization is at or above this percentage.",
            long: c"Idle-in-transaction sessions are always subject to their timeout.",
            value: Value::Int { var, min: 0, max: 100 },
            changed: Changed::Reload,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: None,
            doc_range: "0–100",
        };

    INCLUDE_APPLICATIONS: text = c"" => |var|
        names(
            c"dbconn_guard.include_applications",
            c"When set, only sessions of these application_names are ever ended.",
            var,
        );

    EXCLUDE_APPLICATIONS: text = c"" => |var|
        names(
            c"dbconn_guard.exclude_applications",
            c"Sessions of these application_names are never ended.",
            var,
        );

    EXCLUDE_USERS: text = c"" => |var|
        names(
            c"dbconn_guard.exclude_users",
            c"Sessions of these users are never ended.",
            var,
        );

    EXCLUDE_DATABASES: text = c"" => |var|
        names(
            c"dbconn_guard.exclude_databases",
            c"Sessions connected to these databases are never ended.",
            var,
        );

    IDLE_TIMEOUT_OVERRIDES: text = c"" => |var|
        Setting {
            name: c"dbconn_guard.idle_timeout_overrides",
            short: c"Per application or user: items app:<name>=<duration> or user:<name>=<duration>; the first that matches a session replaces idle_timeout for it (0: never).",
            long: c"Comma-separated; * is a wildcard; a bare number is seconds; a timeout is 0 or at least 1s.",
            value: Value::Overrides(var),
            changed: Changed::Reload,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: Some("''"),
            doc_range: "override list",
        };

    IDLE_IN_TRANSACTION_TIMEOUT_OVERRIDES: text = c"" => |var|
        Setting {
            name: c"dbconn_guard.idle_in_transaction_timeout_overrides",
            short: c"Per application or user: items app:<name>=<duration> or user:<name>=<duration>; the first that matches a session replaces idle_in_transaction_timeout for it (0: never).",
            long: c"Comma-separated; * is a wildcard; a bare number is seconds; a timeout is 0 or at least 1s.",
            value: Value::Overrides(var),
            changed: Changed::Reload,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: Some("''"),
            doc_range: "override list",
        };

    TRANSACTION_TIMEOUT_OVERRIDES: text = c"" => |var|
        Setting {
            name: c"dbconn_guard.transaction_timeout_overrides",
            short: c"Per application or user: items app:<name>=<duration> or user:<name>=<duration>; the first that matches a session replaces transaction_timeout for it (0: never).",
            long: c"Comma-separated; * is a wildcard; a bare number is seconds; a timeout is 0 or at least 1s.",
            value: Value::Overrides(var),
            changed: Changed::Reload,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: Some("''"),
            doc_range: "override list",
        };

    BLOCKER_TIMEOUT_OVERRIDES: text = c"" => |var|
        Setting {
            name: c"dbconn_guard.blocker_timeout_overrides",
            short: c"Per application or user: items app:<name>=<duration> or user:<name>=<duration>; the first that matches a root blocker replaces blocker_timeout for it (0: never).",
            long: c"Comma-separated; * is a wildcard; a bare number is seconds; a timeout is 0 or at least 1s. Covers cancel_active_blockers too; the other rules' overrides do not reach the root-blocker rule.",
            value: Value::Overrides(var),
            changed: Changed::Reload,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: Some("''"),
            doc_range: "override list",
        };

    LOCK_QUEUE_TIMEOUT_OVERRIDES: text = c"" => |var|
        Setting {
            name: c"dbconn_guard.lock_queue_timeout_overrides",
            short: c"Per application or user: items app:<name>=<duration> or user:<name>=<duration>; the first that matches a waiting statement's session replaces lock_queue_timeout for it (0: never).",
            long: c"Comma-separated; * is a wildcard; a bare number is seconds; a timeout is 0 or at least 1s. The other rules' overrides do not reach the lock-queue rule.",
            value: Value::Overrides(var),
            changed: Changed::Reload,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: Some("''"),
            doc_range: "override list",
        };

    CONNECTION_BUDGETS: text = c"" => |var|
        Setting {
            name: c"dbconn_guard.connection_budgets",
            short: c"Per application or user: items app:<name>=<sessions> or user:<name>=<sessions>; a group holding more sessions than its budget loses its longest idle sessions, down to the budget (0: no budget).",
            long: c"Comma-separated; the first item that matches a session charges it; * is a wildcard, and a budget per name (app:*=100: each application 100), never charging a session without a name; an application's budget is per role. Never an active session; idle in transaction only with connection_budget_idle_in_transaction.",
            value: Value::Budgets(var),
            changed: Changed::Reload,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: Some("'' (off)"),
            doc_range: "budget list",
        };
    /// Seconds (a `real`): the budget rule ends only sessions idle at least this long.
    CONNECTION_BUDGET_MIN_IDLE: f64 = crate::core::policy::DEFAULT_BUDGET_MIN_IDLE as f64 / 1e6 => |var|
        Setting {
            name: c"dbconn_guard.connection_budget_min_idle",
            short: c"The budget rule ends only sessions idle at least this long (a pool's connection between two uses is spared).",
            long: c"A bare number is seconds; 1s to 1d.",
            value: Value::RealSeconds { var, min: 1.0, max: 86400.0 },
            changed: Changed::Reload,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: Some("30s"),
            doc_range: "1s–1d",
        };

    CONNECTION_BUDGET_IDLE_IN_TRANSACTION: bool = false => |var|
        reload_bool(
            c"dbconn_guard.connection_budget_idle_in_transaction",
            c"Whether the budget rule may end sessions idle in a transaction too (their transaction is rolled back).",
            var,
        );

    EXCLUDE_CLIENT_TOOLS: bool = true => |var|
        reload_bool(
            c"dbconn_guard.exclude_client_tools",
            c"Never end sessions of PostgreSQL's own client programs (pg_dump, pg_restore, pg_basebackup, vacuumdb, ...), by application_name.",
            var,
        );

    TERMINATE_SUPERUSERS: bool = false => |var|
        reload_bool(
            c"dbconn_guard.terminate_superusers",
            c"Whether sessions of superusers may be ended too.",
            var,
        );

    MAX_TERMINATIONS_PER_CYCLE: i32 = 100 => |var|
        Setting {
            name: c"dbconn_guard.max_terminations_per_cycle",
            short: c"Most sessions the worker ends in one cycle; the rest wait for the next one.",
            long: c"",
            value: Value::Int { var, min: 1, max: MAX_PER_CYCLE },
            changed: Changed::Reload,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: None,
            doc_range: "1–1024",
        };
    /// Seconds (a `real`, so `'100ms'` is 0.1).
    NAPTIME: f64 = 10.0 => |var|
        Setting {
            name: c"dbconn_guard.naptime",
            short: c"Longest sleep of the worker between checks; it wakes earlier when a session's deadline comes first.",
            long: c"A bare number is seconds; at least 50ms.",
            value: Value::RealSeconds { var, min: 0.05, max: 3600.0 },
            changed: Changed::Reload,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: Some("10s"),
            doc_range: "50ms–1h",
        };

    LEAK_TREND_SAMPLES: i32 = 6 => |var|
        Setting {
            name: c"dbconn_guard.leak_trend_samples",
            short: c"Samples of the history (one per sample_interval) over which a growing idle count makes a leak suspect.",
            long: c"",
            value: Value::Int { var, min: 2, max: 16 },
            changed: Changed::Reload,
            in_policy: false,
            boot: Boot::Unset,
            doc_default: None,
            doc_range: "2–16",
        };

    AUDIT_RETENTION: i32 = 30 * 24 * 3600 => |var|
        Setting {
            name: c"dbconn_guard.audit_retention",
            short: c"The worker deletes rows of dbconn_guard.terminations older than this, hourly (0: keep all).",
            long: c"",
            value: Value::Seconds { var, min: 0, max: i32::MAX },
            changed: Changed::Reload,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: Some("30d"),
            doc_range: "0–68y (0: keep all)",
        };

    AUDIT_QUERY_TEXT: bool = true => |var|
        reload_bool(
            c"dbconn_guard.audit_query_text",
            c"Whether the audit keeps the last statement of each session it records (query_id is kept either way).",
            var,
        );
    /// Seconds between two samples of the history.
    SAMPLE_INTERVAL: i32 = 10 => |var|
        Setting {
            name: c"dbconn_guard.sample_interval",
            short: c"Time between two samples of dbconn_guard.history, aligned to the wall clock.",
            long: c"A bare number is seconds.",
            value: Value::Seconds { var, min: 1, max: 3600 },
            changed: Changed::Reload,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: Some("10s"),
            doc_range: "1s–1h",
        };
    /// PGC_POSTMASTER: the history ring's size in shared memory (24 h at the default interval).
    HISTORY_SIZE: i32 = 8640 => |var|
        Setting {
            name: c"dbconn_guard.history_size",
            short: c"Samples dbconn_guard.history keeps in shared memory (0: no history).",
            long: c"The oldest sample is overwritten by the newest; the history is lost at a restart.",
            value: Value::Int { var, min: 0, max: MAX_HISTORY_SIZE },
            changed: Changed::ServerStart,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: None,
            doc_range: "0–100000",
        };

    HISTORY_GROUPS: i32 = 16 => |var|
        Setting {
            name: c"dbconn_guard.history_groups",
            short: c"(datname, usename, application_name) groups kept per sample in dbconn_guard.history_by_group, largest first; the rest are summed in one row.",
            long: c"",
            value: Value::Int { var, min: 0, max: MAX_HISTORY_GROUPS },
            changed: Changed::ServerStart,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: None,
            doc_range: "0–64",
        };
    /// PGC_POSTMASTER: where the metrics endpoint listens ('' = no endpoint).
    METRICS_LISTEN: text = c"" => |var|
        Setting {
            name: c"dbconn_guard.metrics_listen",
            short: c"Address and port of the metrics endpoint (GET /metrics, /healthz), e.g. 127.0.0.1:9187; empty: no endpoint.",
            long: c"There is no authentication: bind it to loopback or to an address only Prometheus reaches.",
            value: Value::Text(var),
            changed: Changed::ServerStart,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: Some("''"),
            doc_range: "IP:port",
        };
    /// PGC_POSTMASTER
    DATABASE: text = c"postgres" => |var|
        Setting {
            name: c"dbconn_guard.database",
            short: c"Database the background worker connects to; the extension must be created there.",
            long: c"",
            value: Value::Text(var),
            changed: Changed::ServerStart,
            in_policy: true,
            boot: Boot::Unset,
            doc_default: None,
            doc_range: "name",
        };
}

/// Registers every setting of `SETTINGS`. Called once from `_PG_init`.
pub fn define() {
    for s in &SETTINGS {
        let context = match s.changed {
            Changed::Superuser => GucContext::Suset,
            Changed::Reload => GucContext::Sighup,
            // A PGC_POSTMASTER setting can only be created while the postmaster loads the
            // library: defining it later (CREATE EXTENSION or LOAD without the preload) is a
            // FATAL error.
            Changed::ServerStart => {
                if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
                    continue;
                }
                GucContext::Postmaster
            }
        };
        match s.value {
            Value::Seconds { var, min, max } => GucRegistry::define_int_guc(
                s.name,
                s.short,
                s.long,
                var,
                min,
                max,
                context,
                GucFlags::UNIT_S,
            ),
            Value::Int { var, min, max } => GucRegistry::define_int_guc(
                s.name,
                s.short,
                s.long,
                var,
                min,
                max,
                context,
                GucFlags::default(),
            ),
            Value::Timeout(var) => GucRegistry::define_float_guc_with_hooks(
                s.name,
                s.short,
                s.long,
                var,
                0.0,
                f64::from(MAX_AGE_S),
                context,
                GucFlags::UNIT_S,
                Some(check_timeout),
                None,
                None,
            ),
            Value::RealSeconds { var, min, max } => GucRegistry::define_float_guc(
                s.name,
                s.short,
                s.long,
                var,
                min,
                max,
                context,
                GucFlags::UNIT_S,
            ),
            Value::Bool(var) => GucRegistry::define_bool_guc(
                s.name,
                s.short,
                s.long,
                var,
                context,
                GucFlags::default(),
            ),
            Value::Names(var) => unsafe {
                GucRegistry::define_string_guc_with_hooks(
                    s.name,
                    s.short,
                    s.long,
                    var,
                    context,
                    GucFlags::default(),
                    Some(check_pattern_list),
                    None,
                    None,
                )
            },
            Value::Overrides(var) => unsafe {
                GucRegistry::define_string_guc_with_hooks(
                    s.name,
                    s.short,
                    s.long,
                    var,
                    context,
                    GucFlags::default(),
                    Some(check_overrides),
                    None,
                    None,
                )
            },
            Value::Budgets(var) => unsafe {
                GucRegistry::define_string_guc_with_hooks(
                    s.name,
                    s.short,
                    s.long,
                    var,
                    context,
                    GucFlags::default(),
                    Some(check_budgets),
                    None,
                    None,
                )
            },
            Value::Text(var) => GucRegistry::define_string_guc(
                s.name,
                s.short,
                s.long,
                var,
                context,
                GucFlags::default(),
            ),
        }
    }
    #[cfg(feature = "test_hooks")]
    GucRegistry::define_int_guc(
        c"dbconn_guard.test_delay_before_signal",
        c"Test builds only: delay between recording a session and the last look before signalling it.",
        c"",
        &TEST_DELAY_BEFORE_SIGNAL,
        0,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS | GucFlags::NO_SHOW_ALL,
    );
    #[cfg(feature = "test_hooks")]
    GucRegistry::define_int_guc(
        c"dbconn_guard.test_busy_pid",
        c"Test builds only: the kill path reads this backend's process as busy when it is asleep.",
        c"",
        &TEST_BUSY_PID,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::NO_SHOW_ALL,
    );
    #[cfg(feature = "test_hooks")]
    GucRegistry::define_int_guc(
        c"dbconn_guard.test_fill_history",
        c"Test builds only: synthetic samples the worker appends to the history at a reload.",
        c"",
        &TEST_FILL_HISTORY,
        0,
        MAX_HISTORY_SIZE,
        GucContext::Sighup,
        GucFlags::NO_SHOW_ALL,
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

fn list(setting: &GucSetting<Option<CString>>) -> PatternList {
    let text = setting
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    // the check hook refused anything malformed, so this cannot fail
    PatternList::parse(&text).unwrap_or_default()
}

fn seconds_us(v: f64) -> Micros {
    (v * 1e6).round() as Micros
}

/// The longest sleep between the worker's checks, in microseconds.
pub fn naptime_us() -> Micros {
    seconds_us(NAPTIME.get())
}

/// `dbconn_guard.metrics_listen` ('' when unset or not preloaded).
pub fn metrics_listen() -> String {
    METRICS_LISTEN
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn sample_interval_us() -> Micros {
    Micros::from(SAMPLE_INTERVAL.get().max(1)) * 1_000_000
}

/// Who may be ended at all, under the settings in force.
pub fn scope() -> Scope {
    Scope {
        include_applications: list(&INCLUDE_APPLICATIONS),
        exclude_applications: list(&EXCLUDE_APPLICATIONS),
        exclude_users: list(&EXCLUDE_USERS),
        exclude_databases: list(&EXCLUDE_DATABASES),
        terminate_superusers: TERMINATE_SUPERUSERS.get(),
        exclude_client_tools: EXCLUDE_CLIENT_TOOLS.get(),
    }
}

/// The termination policy in force.
pub fn policy() -> Policy {
    Policy {
        scope: scope(),
        idle_timeout: seconds_us(IDLE_TIMEOUT.get()),
        idle_in_transaction_timeout: seconds_us(IDLE_IN_TRANSACTION_TIMEOUT.get()),
        transaction_timeout: seconds_us(TRANSACTION_TIMEOUT.get()),
        min_utilization_pct: f64::from(MIN_UTILIZATION_PCT.get()),
        max_terminations_per_cycle: MAX_TERMINATIONS_PER_CYCLE.get().max(1) as usize,
        idle_timeout_overrides: overrides(&IDLE_TIMEOUT_OVERRIDES),
        idle_in_transaction_timeout_overrides: overrides(&IDLE_IN_TRANSACTION_TIMEOUT_OVERRIDES),
        transaction_timeout_overrides: overrides(&TRANSACTION_TIMEOUT_OVERRIDES),
        blocker_timeout: seconds_us(BLOCKER_TIMEOUT.get()),
        blocker_timeout_overrides: overrides(&BLOCKER_TIMEOUT_OVERRIDES),
        blocker_min_waiters: BLOCKER_MIN_WAITERS.get().max(1) as usize,
        cancel_active_blockers: CANCEL_ACTIVE_BLOCKERS.get(),
        blocker_terminate_after: seconds_us(BLOCKER_TERMINATE_AFTER.get()),
        lock_queue_timeout: seconds_us(LOCK_QUEUE_TIMEOUT.get()),
        lock_queue_timeout_overrides: overrides(&LOCK_QUEUE_TIMEOUT_OVERRIDES),
        lock_queue_min_waiters: LOCK_QUEUE_MIN_WAITERS.get().max(1) as usize,
        connection_budgets: CONNECTION_BUDGETS
            .get()
            .and_then(|c| Budgets::parse(&c.to_string_lossy()).ok())
            .unwrap_or_default(),
        connection_budget_min_idle: seconds_us(CONNECTION_BUDGET_MIN_IDLE.get()),
        connection_budget_idle_in_transaction: CONNECTION_BUDGET_IDLE_IN_TRANSACTION.get(),
    }
}

/// An override list in force (its check hook has refused any malformed value).
fn overrides(g: &GucSetting<Option<CString>>) -> Overrides {
    g.get()
        .and_then(|c| Overrides::parse(&c.to_string_lossy()).ok())
        .unwrap_or_default()
}

pub fn database() -> String {
    DATABASE
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|| "postgres".into())
}

/// The policy in force as `(setting, value as SHOW displays it)`; "" for a setting that does not
/// exist in this process (`database` without the preload).
pub fn policy_values() -> Vec<(&'static str, String)> {
    SETTINGS
        .iter()
        .filter(|s| s.in_policy)
        .map(|s| {
            (
                s.short_name(),
                show(&format!("dbconn_guard.{}", s.short_name())),
            )
        })
        .collect()
}

/// A setting's value as `SHOW` displays it, by its full name ("" where it does not exist in
/// this process).
pub fn show(name: &str) -> String {
    let cname = CString::new(name).unwrap_or_default();
    unsafe {
        let v = pg_sys::GetConfigOptionByName(cname.as_ptr(), std::ptr::null_mut(), true);
        if v.is_null() {
            String::new()
        } else {
            crate::read::encoding::cstr_to_rust(v).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod readme {
    use super::SETTINGS;

    /// The settings tables of docs/reference.md list exactly the settings of `SETTINGS`, with their
    /// defaults and ranges.
    #[test]
    fn readme_settings_tables_match_the_settings_table() {
        let readme = include_str!("../docs/reference.md");
        let mut rows = std::collections::BTreeMap::new();
        for line in readme.lines() {
            let Some(rest) = line.strip_prefix("| `dbconn_guard.") else {
                continue;
            };
            let cells: Vec<&str> = rest.split(" | ").map(str::trim).collect();
            let name = format!("dbconn_guard.{}", cells[0].trim_end_matches('`'));
            assert!(
                rows.insert(name.clone(), (cells[1].to_string(), cells[2].to_string()))
                    .is_none(),
                "{name} is listed twice in docs/reference.md"
            );
        }
        for s in SETTINGS.iter() {
            let name = s.name.to_str().unwrap();
            let Some((default, range)) = rows.remove(name) else {
                panic!("{name} is missing from the settings tables of docs/reference.md");
            };
            let shown = s
                .doc_default
                .map_or_else(|| s.boot.as_shown(), String::from);
            assert_eq!(
                (default.as_str(), range.as_str()),
                (shown.as_str(), s.doc_range),
                "the documented default and range of {name}"
            );
        }
        assert!(
            rows.is_empty(),
            "docs/reference.md lists settings that do not exist: {:?}",
            rows.keys()
        );
    }

    /// Where the documented default is written apart ("5min"), it means the boot value.
    #[test]
    fn documented_defaults_mean_the_boot_values() {
        use super::Boot;
        for s in SETTINGS.iter() {
            assert!(!matches!(s.boot, Boot::Unset), "{:?}", s.name);
            let Some(doc) = s.doc_default else { continue };
            let doc = doc.split(" (").next().unwrap();
            let doc = if doc == "''" { "" } else { doc };
            let seconds = || crate::core::overrides::parse_duration(doc).unwrap() as f64 / 1e6;
            match s.boot {
                Boot::Int(v) => assert_eq!(seconds(), f64::from(v), "{:?}", s.name),
                Boot::Real(v) => assert_eq!(seconds(), v, "{:?}", s.name),
                Boot::Bool(v) => assert_eq!(doc, if v { "on" } else { "off" }),
                Boot::Text(v) => assert_eq!(doc, v.to_str().unwrap(), "{:?}", s.name),
                Boot::Unset => unreachable!(),
            }
        }
    }
}
