//! Reads PostgreSQL's state into the core's plain structs, once per call.
//!
//! Backends come from the backend status array (`backend_status`), with `pg_stat_activity`'s
//! visibility rule for the calling role; lock waits from the lock manager (`locks`), with
//! `pg_blocking_pids()`'s semantics (lock data is public: `pg_locks` shows it to every role);
//! limits from the server's settings. Nothing here ever writes
//! (the views work on a hot standby).

use crate::core::blocking::LockWait;
use crate::core::session::Snapshot;
use crate::core::utilization::Limits;
use crate::read::backend_status::{self, Visibility};
use pgrx::pg_sys;

/// A fresh picture of every backend, as the caller may see it in `pg_stat_activity`.
///
/// PostgreSQL caches backend status for the rest of a transaction on first use; the cache is
/// dropped first (as `pg_stat_clear_snapshot()` does) so every call sees the present, and ages
/// are measured against the clock at the moment of reading.
pub fn activity() -> Snapshot {
    backend_status::read(Visibility::Caller)
}

/// `activity()`, with the query text of the backends whose pid `wanted` says (as the caller
/// may see it), read for those alone.
pub fn activity_with_queries(wanted: impl Fn(i32) -> bool) -> Snapshot {
    let mut snap = activity();
    backend_status::read_queries(&mut snap, wanted);
    snap
}

/// Every backend with nothing hidden: the background worker's view.
pub fn activity_all() -> Snapshot {
    backend_status::read(Visibility::All)
}

/// Every backend waiting for a heavyweight lock, with what `pg_blocking_pids()` says of it.
pub fn lock_waits() -> Vec<LockWait> {
    crate::read::locks::lock_waits()
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

/// Does the current database look like it has the extension: a schema `dbconn_guard` holding a
/// relation `terminations`? Checked through the catalog caches, cheaply enough for every cycle
/// (a `pg_extension` scan cost more than reading 2000 sessions' status). Any role with CREATE
/// on the database can make this true by planting the pair, so it is only good for "waiting
/// for CREATE EXTENSION"; before writing anything, `audit_table()` proves the table is the
/// extension's own.
pub fn extension_present() -> bool {
    unsafe {
        let ns = pg_sys::get_namespace_oid(c"dbconn_guard".as_ptr(), true);
        ns != pg_sys::InvalidOid
            && pg_sys::get_relname_relid(c"terminations".as_ptr(), ns) != pg_sys::InvalidOid
    }
}

/// The oid of `dbconn_guard.terminations` if it is a member of the installed extension
/// `dbconn_guard` (its `pg_depend` entry says so; only the extension's owner, a superuser, can
/// add objects to it). `None` otherwise: no extension, or a table someone else planted under
/// that name.
pub fn audit_table() -> Option<pg_sys::Oid> {
    unsafe {
        let ext = pg_sys::get_extension_oid(c"dbconn_guard".as_ptr(), true);
        if ext == pg_sys::InvalidOid {
            return None;
        }
        let ns = pg_sys::get_namespace_oid(c"dbconn_guard".as_ptr(), true);
        if ns == pg_sys::InvalidOid {
            return None;
        }
        let rel = pg_sys::get_relname_relid(c"terminations".as_ptr(), ns);
        if rel == pg_sys::InvalidOid
            || pg_sys::getExtensionOfObject(pg_sys::RelationRelationId, rel) != ext
        {
            return None;
        }
        Some(rel)
    }
}
