//! Connection churn: every client connection that authenticates is counted in shared memory
//! (`ClientAuthentication_hook`, installed with the preload), so the history and the metrics
//! say how many connections arrived between two samples, and how many sessions ended.

use pgrx::atomics::PgAtomic;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// Client connections that authenticated since the server started.
pub static CONNECTIONS: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"dbconn_guard_connections") };

static mut PREVIOUS_HOOK: pg_sys::libpq::ClientAuthentication_hook_type = None;

/// Sets up the counter and the hook (while the library is preloaded).
pub fn init() {
    pgrx::pg_shmem_init!(CONNECTIONS);
    unsafe {
        PREVIOUS_HOOK = pg_sys::libpq::ClientAuthentication_hook;
        pg_sys::libpq::ClientAuthentication_hook = Some(count_connection);
    }
}

/// Counts a connection that authenticated (not one whose authentication failed), unless it is
/// a replication connection, which is no client backend. A library loaded after this one runs
/// its hook first and may refuse the connection; PostgreSQL's own checks after authentication
/// (the connection limits, the database's CONNECT privilege) may too: such a connection counts
/// as new and, at the same sample, as ended, so the figures still add up.
#[pg_guard]
unsafe extern "C-unwind" fn count_connection(port: *mut pg_sys::libpq::be::Port, status: i32) {
    unsafe {
        if let Some(previous) = PREVIOUS_HOOK {
            previous(port, status);
        }
        if status == pg_sys::STATUS_OK as i32 && !pg_sys::am_walsender {
            CONNECTIONS.get().fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Client connections that authenticated since the server started (in a process of a server
/// that preloads the library).
pub fn connections_total() -> u64 {
    CONNECTIONS.get().load(Ordering::Relaxed)
}
