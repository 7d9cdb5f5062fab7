//! Errors a caller sees: each with its SQLSTATE, and the way out in the hint, as PostgreSQL's own
//! `ereport()` calls give them (not `error!()`, which is SQLSTATE XX000, "internal error").

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Raises an ERROR with `code`, `message`, and an optional detail and hint. Never returns.
#[track_caller]
pub fn raise(
    code: PgSqlErrorCode,
    message: impl Into<String>,
    detail: Option<String>,
    hint: Option<&str>,
) -> ! {
    let mut r = ErrorReport::new(code, message.into(), "dbconn_guard");
    if let Some(d) = detail {
        r = r.set_detail(d);
    }
    if let Some(h) = hint {
        r = r.set_hint(h);
    }
    r.report(PgLogLevel::ERROR);
    unreachable!("an ERROR does not return")
}

/// A bad argument of a function (SQLSTATE 22023), with what is allowed in the hint.
#[track_caller]
pub fn invalid_argument(message: impl Into<String>, hint: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message,
        None,
        Some(hint),
    )
}

/// The server is not in the state this needs (SQLSTATE 55000), with the way out in the hint.
#[track_caller]
pub fn not_ready(message: impl Into<String>, detail: Option<String>, hint: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        message,
        detail,
        Some(hint),
    )
}
