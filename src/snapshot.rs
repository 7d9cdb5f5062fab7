//! Reads PostgreSQL's state into the core's plain structs: one query per source, per call.
//!
//! Everything is read through SPI as the calling role, so PostgreSQL's own visibility rules
//! apply unchanged: a role sees in these views exactly what `pg_stat_activity` and `pg_locks`
//! show it, and nothing here ever writes (the views work on a hot standby).

use crate::core::blocking::LockWait;
use crate::core::session::{Backend, Micros, Snapshot};
use crate::core::utilization::Limits;
use pgrx::prelude::*;
use pgrx::spi::SpiTupleTable;

const ACTIVITY: &str = "SELECT a.pid, a.leader_pid, a.datname::text, a.usename::text, a.application_name, \
     pg_catalog.host(a.client_addr), a.backend_type, a.state, a.backend_start, a.xact_start, a.query_start, \
     a.state_change, a.wait_event_type, a.wait_event, a.query, pg_catalog.clock_timestamp(), r.rolsuper \
     FROM pg_catalog.pg_stat_activity a LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.usesysid";

const LOCK_WAITS: &str = "SELECT l.pid, l.locktype, l.mode, \
     CASE WHEN l.relation IS NULL THEN NULL \
          WHEN l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) \
          THEN l.relation::pg_catalog.regclass::text \
          ELSE l.relation::text END, \
     l.waitstart, pg_catalog.pg_blocking_pids(l.pid) \
     FROM pg_catalog.pg_locks l WHERE NOT l.granted AND l.pid IS NOT NULL";

const LIMITS: &str = "SELECT pg_catalog.current_setting('max_connections')::int, \
     pg_catalog.current_setting('superuser_reserved_connections')::int, \
     pg_catalog.current_setting('reserved_connections', true)::int";

fn ts(v: Option<TimestampWithTimeZone>) -> Option<Micros> {
    v.map(|t| t.into_inner())
}

fn read_activity(table: SpiTupleTable) -> Result<Snapshot, spi::Error> {
    let mut snap = Snapshot {
        now: 0,
        backends: Vec::with_capacity(table.len()),
    };
    for row in table {
        if snap.now == 0 {
            snap.now = ts(row.get(16)?).unwrap_or(0);
        }
        snap.backends.push(Backend {
            pid: row.get(1)?.unwrap_or(0),
            leader_pid: row.get(2)?,
            datname: row.get(3)?,
            usename: row.get(4)?,
            application_name: row.get(5)?,
            client_addr: row.get(6)?,
            backend_type: row.get(7)?,
            state: row.get(8)?,
            backend_start: ts(row.get(9)?),
            xact_start: ts(row.get(10)?),
            query_start: ts(row.get(11)?),
            state_change: ts(row.get(12)?),
            wait_event_type: row.get(13)?,
            wait_event: row.get(14)?,
            query: row.get(15)?,
            is_superuser: row.get(17)?,
        });
    }
    Ok(snap)
}

/// A fresh picture of every backend, as the caller may see it.
///
/// PostgreSQL caches `pg_stat_activity` for the rest of a transaction on first use; the cache is
/// dropped first (as `pg_stat_clear_snapshot()` does) so every call sees the present, and ages
/// are measured against the clock at the moment of reading.
pub fn activity() -> Snapshot {
    unsafe { pg_sys::pgstat_clear_snapshot() };
    Spi::connect(|client| read_activity(client.select(ACTIVITY, None, &[])?))
        .unwrap_or_else(|e| error!("dbconn_guard: could not read pg_stat_activity: {e}"))
}

/// Every backend waiting for a heavyweight lock, with `pg_blocking_pids()` for each.
pub fn lock_waits() -> Vec<LockWait> {
    let read = || -> Result<Vec<LockWait>, spi::Error> {
        Spi::connect(|client| {
            let table = client.select(LOCK_WAITS, None, &[])?;
            let mut out = Vec::with_capacity(table.len());
            for row in table {
                out.push(LockWait {
                    pid: row.get(1)?.unwrap_or(0),
                    locktype: row.get(2)?,
                    mode: row.get(3)?,
                    relation: row.get(4)?,
                    wait_start: ts(row.get(5)?),
                    blocked_by: row.get::<Vec<i32>>(6)?.unwrap_or_default(),
                });
            }
            Ok(out)
        })
    };
    read().unwrap_or_else(|e| error!("dbconn_guard: could not read pg_locks: {e}"))
}

/// The server's connection limits.
pub fn limits() -> Limits {
    let read = || -> Result<Limits, spi::Error> {
        Spi::connect(|client| {
            let row = client.select(LIMITS, Some(1), &[])?.first();
            Ok(Limits {
                max_connections: row.get(1)?.unwrap_or(0),
                superuser_reserved_connections: row.get(2)?.unwrap_or(0),
                reserved_connections: row.get(3)?,
            })
        })
    };
    read().unwrap_or_else(|e| error!("dbconn_guard: could not read connection settings: {e}"))
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
