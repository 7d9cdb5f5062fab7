//! How full the server's connection slots are.
//!
//! `max_connections` bounds the client backends only: background workers, autovacuum and
//! walsenders have slot pools of their own (`max_worker_processes`, `autovacuum_max_workers`,
//! `max_wal_senders`), so they are reported separately and never counted against it.

use super::session::Snapshot;

/// The server's connection limits, read from its settings.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    pub max_connections: i32,
    pub superuser_reserved_connections: i32,
    /// `reserved_connections` (PostgreSQL 16 and later; `None` on 15).
    pub reserved_connections: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Utilization {
    pub limits: Limits,
    /// Client backends, whatever their state.
    pub client_backends: i64,
    pub active: i64,
    pub idle: i64,
    pub idle_in_transaction: i64,
    pub idle_in_transaction_aborted: i64,
    /// Client backends in any other state: `fastpath function call`, `disabled`, or none yet
    /// (still authenticating).
    pub other_states: i64,
    /// Backends that are not client connections (workers, autovacuum, walsenders, ...).
    pub other_backends: i64,
    /// Backends whose type PostgreSQL hides from the calling role (see `pg_read_all_stats`).
    pub hidden_backends: i64,
    /// Slots an ordinary (non-superuser, non-reserved) role can still take:
    /// `max_connections - superuser_reserved_connections - reserved_connections - client_backends`,
    /// never below zero.
    pub available_connections: i64,
    /// `client_backends / max_connections * 100`.
    pub utilization_pct: f64,
}

pub fn utilization(snapshot: &Snapshot, limits: Limits) -> Utilization {
    let mut u = Utilization {
        limits,
        ..Default::default()
    };
    for b in &snapshot.backends {
        if b.is_hidden() {
            u.hidden_backends += 1;
            continue;
        }
        if !b.is_client() {
            u.other_backends += 1;
            continue;
        }
        u.client_backends += 1;
        match b.state {
            Some("active") => u.active += 1,
            Some("idle") => u.idle += 1,
            Some("idle in transaction") => u.idle_in_transaction += 1,
            Some("idle in transaction (aborted)") => u.idle_in_transaction_aborted += 1,
            _ => u.other_states += 1,
        }
    }
    let reserved = i64::from(limits.superuser_reserved_connections)
        + i64::from(limits.reserved_connections.unwrap_or(0));
    u.available_connections =
        (i64::from(limits.max_connections) - reserved - u.client_backends).max(0);
    u.utilization_pct = percent(u.client_backends, limits.max_connections);
    u
}

/// `part / whole * 100`, 0 when `whole` is not positive.
pub fn percent(part: i64, whole: i32) -> f64 {
    if whole <= 0 {
        0.0
    } else {
        part as f64 * 100.0 / f64::from(whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixtures::*;

    #[test]
    fn counts_clients_by_state_and_keeps_other_backends_apart() {
        let mut worker = client(10, "active", 1);
        worker.kind = Kind::Background;
        worker.backend_type = Some("background worker".into());
        let mut hidden = client(11, "idle", 1);
        hidden.kind = Kind::Hidden;
        hidden.backend_type = None;
        let mut starting = client(12, "idle", 1);
        starting.state = None;
        let snap = snapshot(vec![
            client(1, "active", 1),
            client(2, "idle", 1),
            client(3, "idle", 1),
            client(4, "idle in transaction", 1),
            client(5, "idle in transaction (aborted)", 1),
            worker,
            hidden,
            starting,
        ]);
        let limits = Limits {
            max_connections: 20,
            superuser_reserved_connections: 3,
            reserved_connections: Some(2),
        };
        let u = utilization(&snap, limits);
        assert_eq!(
            (
                u.client_backends,
                u.active,
                u.idle,
                u.idle_in_transaction,
                u.idle_in_transaction_aborted,
                u.other_states
            ),
            (6, 1, 2, 1, 1, 1)
        );
        assert_eq!((u.other_backends, u.hidden_backends), (1, 1));
        assert_eq!(u.available_connections, 20 - 3 - 2 - 6);
        assert_eq!(u.utilization_pct, 30.0);
    }

    #[test]
    fn available_never_negative_and_pct_safe_on_zero() {
        let snap = snapshot((1..=5).map(|p| client(p, "idle", 1)).collect());
        let u = utilization(
            &snap,
            Limits {
                max_connections: 5,
                superuser_reserved_connections: 3,
                reserved_connections: None,
            },
        );
        assert_eq!(u.available_connections, 0);
        assert_eq!(u.utilization_pct, 100.0);
        assert_eq!(percent(3, 0), 0.0);
    }
}
