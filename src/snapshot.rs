//! Reads PostgreSQL's state into the core's plain structs, once per call.
//!
//! Backends come from the backend status array (`backend_status`), with `pg_stat_activity`'s
//! visibility rule for the calling role; lock waits from the lock manager (`locks`), with
//! `pg_blocking_pids()`'s semantics (lock data is public: `pg_locks` shows it to every role);
//! limits from the server's settings. Nothing here ever writes
//! (the views work on a hot standby).

pub use crate::backend_status::Extras;
use crate::backend_status::{self, Visibility};
use crate::core::blocking::LockWait;
use crate::core::session::Snapshot;
use crate::core::utilization::Limits;
use pgrx::prelude::*;

/// A fresh picture of every backend, as the caller may see it in `pg_stat_activity`.
///
/// PostgreSQL caches backend status for the rest of a transaction on first use; the cache is
/// dropped first (as `pg_stat_clear_snapshot()` does) so every call sees the present, and ages
/// are measured against the clock at the moment of reading.
pub fn activity(extras: Extras) -> Snapshot {
    backend_status::read(Visibility::Caller, extras)
}

/// Every backend with nothing hidden: the background worker's view.
pub fn activity_all() -> Snapshot {
    backend_status::read(Visibility::All, Extras::default())
}

/// Every backend waiting for a heavyweight lock, with what `pg_blocking_pids()` says of it.
pub fn lock_waits() -> Vec<LockWait> {
    crate::locks::lock_waits()
}

/// The server's connection limits, from its settings.
pub fn limits() -> Limits {
    #[cfg(feature = "pg15")]
    let (superuser_reserved, reserved) = (unsafe { pg_sys::ReservedBackends }, None);
    #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
    let (superuser_reserved, reserved) = unsafe {
        (
            pg_sys::SuperuserReservedConnections,
            Some(pg_sys::ReservedConnections),
        )
    };
    Limits {
        max_connections: unsafe { pg_sys::MaxConnections },
        superuser_reserved_connections: superuser_reserved,
        reserved_connections: reserved,
    }
}

/// Is the extension installed in the current database? Checked through the catalog caches:
/// its schema and its audit table (created with it, dropped with it) — the worker's check runs
/// every cycle, and a `pg_extension` scan cost more than reading 2000 sessions' status.
pub fn extension_exists() -> bool {
    unsafe {
        let ns = pg_sys::get_namespace_oid(c"dbconn_guard".as_ptr(), true);
        ns != pg_sys::InvalidOid
            && pg_sys::get_relname_relid(c"terminations".as_ptr(), ns) != pg_sys::InvalidOid
    }
}

/// The first column of the first row of a read-only query, `None` for no row or NULL.
///
/// Never `Spi::get_one`: pgrx runs that in read-write mode, which assigns a transaction id —
/// an error on a hot standby, and a wasted xid (and WAL) per call on a primary.
pub fn select_one<T: FromDatum + IntoDatum>(
    query: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Option<T> {
    Spi::connect(|client| {
        let table = client.select(query, Some(1), args)?;
        if table.is_empty() {
            return Ok(None);
        }
        table.first().get_one::<T>()
    })
    .unwrap_or_else(|e: spi::Error| error!("dbconn_guard: query failed: {e}"))
}
