//! `connection_analysis`: client connections grouped the way a DBA reads a pool.

use super::fasthash::FastMap;
use super::session::{Backend, Micros, Snapshot};

/// The grouping key: who connected, from where, to which database, and in what state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub datname: Option<String>,
    pub usename: Option<String>,
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    pub state: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionGroup {
    pub key: GroupKey,
    pub connection_count: i64,
    /// Mean of `now - state_change` over the group, in seconds.
    pub avg_age_seconds: f64,
    /// Largest `now - state_change` in the group, in seconds.
    pub max_age_seconds: f64,
    /// Age of the oldest open transaction in the group (`now - xact_start`), if any is open.
    pub oldest_xact_age_seconds: Option<f64>,
    /// Pids, the one longest in its state first.
    pub pids: Vec<i32>,
}

/// A group key borrowed from a backend: grouping hashes these, and the owned `GroupKey` is
/// built once per group, not once per backend.
pub(crate) type Borrowed<'b> = (
    Option<&'b str>,
    Option<&'b str>,
    Option<&'b str>,
    Option<&'b str>,
    Option<&'b str>,
);

pub(crate) fn borrowed_key(b: &Backend, with_state: bool) -> Borrowed<'_> {
    (
        b.datname.as_deref(),
        b.usename.as_deref(),
        b.application_name.as_deref(),
        b.client_addr.as_deref(),
        if with_state { b.state } else { None },
    )
}

pub(crate) fn owned_key(
    (datname, usename, application_name, client_addr, state): Borrowed<'_>,
) -> GroupKey {
    let owned = |s: Option<&str>| s.map(str::to_string);
    GroupKey {
        datname: owned(datname),
        usename: owned(usename),
        application_name: owned(application_name),
        client_addr: owned(client_addr),
        state: owned(state),
    }
}

/// Groups `backends` by (datname, usename, application_name, client_addr[, state]), with
/// counts, ages and pids, largest and oldest groups first. Shared by `connection_analysis`
/// (with state) and the leak rules (without).
pub(crate) fn group<'a>(
    now: Micros,
    backends: impl Iterator<Item = &'a Backend>,
    with_state: bool,
) -> Vec<ConnectionGroup> {
    let mut members: FastMap<Borrowed<'a>, Vec<&'a Backend>> = FastMap::default();
    for b in backends {
        members
            .entry(borrowed_key(b, with_state))
            .or_default()
            .push(b);
    }
    let mut groups: Vec<ConnectionGroup> = members
        .into_iter()
        .map(|(key, bs)| {
            // oldest state_change first; pid breaks ties so the order is stable
            let mut aged: Vec<(f64, &Backend)> =
                bs.iter().map(|b| (b.state_age(now), *b)).collect();
            aged.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.pid.cmp(&b.1.pid)));
            let n = aged.len();
            ConnectionGroup {
                key: owned_key(key),
                connection_count: n as i64,
                avg_age_seconds: aged.iter().map(|(a, _)| a).sum::<f64>() / n as f64,
                max_age_seconds: aged.first().map_or(0.0, |(a, _)| *a),
                oldest_xact_age_seconds: aged
                    .iter()
                    .filter_map(|(_, b)| b.xact_age(now))
                    .reduce(f64::max),
                pids: aged.iter().map(|(_, b)| b.pid).collect(),
            }
        })
        .collect();
    groups.sort_by(|a, b| {
        b.connection_count
            .cmp(&a.connection_count)
            .then(b.max_age_seconds.total_cmp(&a.max_age_seconds))
            .then_with(|| a.key.cmp(&b.key))
    });
    groups
}

/// Client backends grouped by (datname, usename, application_name, client_addr, state).
///
/// Only client backends the caller can see are counted: PostgreSQL hides the backend type of
/// other roles' sessions from roles without `pg_read_all_stats`, exactly as `pg_stat_activity` does.
pub fn connection_analysis(snapshot: &Snapshot) -> Vec<ConnectionGroup> {
    group(snapshot.now, snapshot.clients(), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixtures::*;
    use crate::session::SECOND;

    #[test]
    fn groups_by_key_and_state_with_counts_ages_and_pids_oldest_first() {
        let mut other_app = client(4, "idle", 10);
        other_app.application_name = Some("worker".into());
        let mut in_xact = client(5, "idle in transaction", 30);
        in_xact.xact_start = Some(NOW - 40 * SECOND);
        let mut autovac = client(6, "active", 1000);
        autovac.kind = Kind::Background;
        autovac.backend_type = Some("autovacuum worker".into());
        let snap = snapshot(vec![
            client(1, "idle", 100),
            client(2, "idle", 300),
            client(3, "idle", 200),
            other_app,
            in_xact,
            autovac,
        ]);
        let groups = connection_analysis(&snap);
        assert_eq!(groups.len(), 3, "{groups:#?}");
        let idle = &groups[0];
        assert_eq!(idle.key.state.as_deref(), Some("idle"));
        assert_eq!(idle.key.application_name.as_deref(), Some("api"));
        assert_eq!(idle.connection_count, 3);
        assert_eq!(idle.pids, vec![2, 3, 1]);
        assert_eq!(idle.avg_age_seconds, 200.0);
        assert_eq!(idle.max_age_seconds, 300.0);
        assert_eq!(idle.oldest_xact_age_seconds, None);
        // single-member groups: the older one (max age 30 > 10) first
        assert_eq!(groups[1].pids, vec![5]);
        assert_eq!(groups[1].oldest_xact_age_seconds, Some(40.0));
        assert_eq!(groups[2].pids, vec![4]);
    }

    #[test]
    fn hidden_sessions_are_not_counted() {
        let mut hidden = client(9, "idle", 5);
        hidden.kind = Kind::Hidden;
        hidden.backend_type = None;
        hidden.state = None;
        let groups = connection_analysis(&snapshot(vec![hidden]));
        assert!(groups.is_empty());
    }

    #[test]
    fn grouping_without_state_merges_states() {
        let snap = snapshot(vec![client(1, "idle", 1), client(2, "active", 2)]);
        let groups = group(snap.now, snap.clients(), false);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].pids, vec![2, 1]);
        assert_eq!(groups[0].key.state, None);
    }
}
