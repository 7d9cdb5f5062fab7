//! Connection-leak suspects: a client (database, user, application, address) holding idle
//! sessions far longer than any healthy pool would.

use super::analysis::{group, ConnectionGroup};
use super::session::Snapshot;

/// A group of idle client sessions older than the leak threshold.
pub type LeakSuspect = ConnectionGroup;

/// Groups (datname, usename, application_name, client_addr) of client backends in state `idle`
/// for longer than `idle_age` seconds, with their count, ages and pids (oldest first).
/// The group key's `state` is always `None`.
pub fn leak_suspects(snapshot: &Snapshot, idle_age: f64) -> Vec<LeakSuspect> {
    let now = snapshot.now;
    let stale = snapshot
        .clients()
        .filter(|b| b.has_state("idle") && b.state_age(now) > idle_age);
    group(now, stale, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::session::fixtures::*;

    #[test]
    fn only_idle_sessions_past_the_threshold_count() {
        let mut elsewhere = client(5, "idle", 900);
        elsewhere.client_addr = Some("10.0.0.2".into());
        let snap = snapshot(vec![
            client(1, "idle", 700),
            client(2, "idle", 601),
            client(3, "idle", 599),
            client(4, "idle in transaction", 5000),
            client(6, "active", 5000),
            elsewhere,
        ]);
        let s = leak_suspects(&snap, 600.0);
        assert_eq!(s.len(), 2, "{s:#?}");
        assert_eq!(s[0].pids, vec![1, 2]);
        assert_eq!(s[0].max_age_seconds, 700.0);
        assert_eq!(s[0].key.client_addr.as_deref(), Some("10.0.0.1"));
        assert_eq!(s[1].pids, vec![5]);
    }
}
