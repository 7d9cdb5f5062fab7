//! The audit's purge: rows older than `dbconn_guard.audit_retention`, hourly and after each
//! reload, in batches.

use super::*;

const PURGE_EVERY: Micros = 3600 * SECOND;

/// Whether the hourly purge is due (checked without a transaction: most checks have nothing
/// to purge).
pub(super) fn purge_due(state: &State, now: Micros) -> bool {
    guc::AUDIT_RETENTION.get() > 0
        && now - state.last_purge >= PURGE_EVERY
        && !unsafe { pg_sys::RecoveryInProgress() }
}
/// Rows deleted per statement when purging: a long backlog goes in steps, each well within the
/// worker's statement_timeout.
const PURGE_BATCH: i64 = 10_000;

/// Deletes audit rows older than `dbconn_guard.audit_retention`, hourly and after each reload
/// (not on a standby, where the table is read-only).
pub(super) fn purge_audit(state: &mut State, now: Micros) {
    let retention_s = guc::AUDIT_RETENTION.get();
    if retention_s <= 0
        || now - state.last_purge < PURGE_EVERY
        || unsafe { pg_sys::RecoveryInProgress() }
    {
        return;
    }
    state.last_purge = now;
    if snapshot::audit_table().is_none() {
        return;
    }
    let mut deleted = 0;
    loop {
        let n = Spi::connect_mut(|client| {
            client
                .update(
                    "DELETE FROM dbconn_guard.terminations WHERE id OPERATOR(pg_catalog.=) ANY (ARRAY( \
                       SELECT id FROM dbconn_guard.terminations \
                        WHERE terminated_at OPERATOR(pg_catalog.<) \
                              (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1)) \
                        LIMIT $2))",
                    None,
                    &[f64::from(retention_s).into(), PURGE_BATCH.into()],
                )
                .map(|t| t.len())
        })
        .unwrap_or_else(|e| error!("could not purge old audit rows: {e}"));
        deleted += n;
        if (n as i64) < PURGE_BATCH {
            break;
        }
    }
    if deleted > 0 {
        log!("dbconn_guard worker: deleted {deleted} rows of dbconn_guard.terminations older than dbconn_guard.audit_retention ({retention_s}s)");
    }
}
