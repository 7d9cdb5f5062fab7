//! Transactions of the background worker, and subtransactions, with an abort path.
//!
//! pgrx's `BackgroundWorker::transaction` has none: an ERROR inside it leaves the transaction
//! half-open. Here an ERROR aborts exactly what it must — the transaction, or the
//! subtransaction around one audit row — and comes back as an `Err` with PostgreSQL's message,
//! so the caller decides what to do (the worker logs it and retries).

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;

/// PostgreSQL's message (and SQLSTATE) of a caught error.
#[derive(Clone, Debug)]
pub struct Failure {
    pub message: String,
    pub sqlstate: PgSqlErrorCode,
}

impl Failure {
    /// A lock wait ended by `lock_timeout`, or a cancel (`pg_cancel_backend`): every further
    /// step of the same kind would end the same way.
    pub fn ends_the_batch(&self) -> bool {
        matches!(
            self.sqlstate,
            PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE | PgSqlErrorCode::ERRCODE_QUERY_CANCELED
        )
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn failure(e: &pg_sys::panic::CaughtError) -> Failure {
    match e {
        pg_sys::panic::CaughtError::PostgresError(r)
        | pg_sys::panic::CaughtError::ErrorReport(r)
        | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => Failure {
            message: r.message().to_string(),
            sqlstate: r.sql_error_code(),
        },
    }
}

/// Runs `body` in a transaction of its own (with an active snapshot), committing it; an ERROR
/// aborts the transaction and is returned. Must be called outside any transaction.
pub fn transaction<R>(activity: &std::ffi::CStr, body: impl FnOnce() -> R) -> Result<R, Failure> {
    run(activity, false, body)
}

/// `transaction`, for a transaction that writes: its statistics (the dead rows of a purge or a
/// withdrawal) are reported at once, for autovacuum to see.
pub fn writing_transaction<R>(
    activity: &std::ffi::CStr,
    body: impl FnOnce() -> R,
) -> Result<R, Failure> {
    run(activity, true, body)
}

fn run<R>(activity: &std::ffi::CStr, writes: bool, body: impl FnOnce() -> R) -> Result<R, Failure> {
    PgTryBuilder::new(AssertUnwindSafe(|| {
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, activity.as_ptr());
        }
        let r = body();
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
            // a background worker has no idle loop that reports its statistics: without this,
            // the dead rows of the audit purge never reach autovacuum (forced after a write;
            // otherwise at PostgreSQL's own pace, at most once a second)
            pg_sys::pgstat_report_stat(writes);
            pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
        }
        Ok(r)
    }))
    .catch_others(|e| {
        unsafe {
            pg_sys::AbortCurrentTransaction();
            pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
        }
        Err(failure(&e))
    })
    .execute()
}

/// Runs `body` in a subtransaction of the current transaction: released when it returns,
/// rolled back (and the error returned) when it raises one, the outer transaction going on
/// either way — as a PL/pgSQL `BEGIN ... EXCEPTION` block does.
pub fn subtransaction<R>(body: impl FnOnce() -> R) -> Result<R, Failure> {
    let (context, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    unsafe { pg_sys::BeginInternalSubTransaction(std::ptr::null()) };
    PgTryBuilder::new(AssertUnwindSafe(|| {
        let r = body();
        unsafe {
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        }
        Ok(r)
    }))
    .catch_others(|e| {
        unsafe {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        }
        Err(failure(&e))
    })
    .execute()
}
