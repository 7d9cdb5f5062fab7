//! Connection-leak suspects: a client (database, user, application, address) holding idle
//! sessions far longer than any healthy pool would.

use super::analysis::{borrowed_key, group, owned_key, Borrowed, ConnectionGroup, GroupKey};
use super::fasthash::FastMap;
use super::session::{Backend, Name, Snapshot};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

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

/// A row of the `leak_suspects` view.
#[derive(Clone, Debug, PartialEq)]
pub struct SuspectRow {
    /// The old idle sessions (or, for a growing group with none old yet, all its idle sessions).
    pub group: LeakSuspect,
    pub trend: Trend,
    /// `idle_age` (sessions idle past the threshold) or `growing` (idle count rising).
    pub reason: &'static str,
}

/// Leak suspects with the trend of their idle count: groups with idle sessions past `idle_age`,
/// plus groups whose idle count grew over a full `window` of the worker's samples.
/// `samples_of` returns a group's samples, oldest first (empty when the worker has none).
pub fn suspects_with_trend(
    snapshot: &Snapshot,
    idle_age: f64,
    window: usize,
    samples_of: impl Fn(&GroupKey) -> Vec<u32>,
) -> Vec<SuspectRow> {
    let now = snapshot.now;
    // the old idle sessions of each group, grouped once (not re-filtered per group)
    let mut old: HashMap<GroupKey, ConnectionGroup> = leak_suspects(snapshot, idle_age)
        .into_iter()
        .map(|g| (g.key.clone(), g))
        .collect();
    let mut rows = Vec::new();
    for all_idle in group(
        now,
        snapshot.clients().filter(|b| b.has_state("idle")),
        false,
    ) {
        let samples = samples_of(&all_idle.key);
        let t = trend(&samples);
        if let Some(g) = old.remove(&all_idle.key) {
            rows.push(SuspectRow {
                group: g,
                trend: t,
                reason: "idle_age",
            });
        } else if t == Trend::Growing && samples.len() >= window.max(2) {
            rows.push(SuspectRow {
                group: all_idle,
                trend: t,
                reason: "growing",
            });
        }
    }
    rows
}

/// Idle client sessions per (datname, usename, application_name, client_addr), now.
/// Counted in one pass, in runs of sessions with the same key (a pool's sessions mostly sit
/// side by side, and share their names, so a run continues on a pointer comparison): the
/// worker samples this every naptime.
pub fn idle_counts(snapshot: &Snapshot) -> HashMap<GroupKey, u32> {
    let mut counts: FastMap<Borrowed<'_>, u32> = FastMap::default();
    let mut run: Option<(&Backend, u32)> = None;
    for b in snapshot.clients().filter(|b| b.has_state("idle")) {
        match &mut run {
            Some((first, n)) if same_client(first, b) => *n += 1,
            _ => {
                if let Some((first, n)) = run.replace((b, 1)) {
                    *counts.entry(borrowed_key(first, false)).or_default() += n;
                }
            }
        }
    }
    if let Some((first, n)) = run {
        *counts.entry(borrowed_key(first, false)).or_default() += n;
    }
    counts.into_iter().map(|(k, n)| (owned_key(k), n)).collect()
}

/// Same (datname, usename, application_name, client_addr)? Shared names compare by pointer
/// first.
fn same_client(a: &Backend, b: &Backend) -> bool {
    fn same(x: &Option<Name>, y: &Option<Name>) -> bool {
        match (x, y) {
            (Some(x), Some(y)) => Rc::ptr_eq(x, y) || x == y,
            (None, None) => true,
            _ => false,
        }
    }
    same(&a.datname, &b.datname)
        && same(&a.usename, &b.usename)
        && same(&a.application_name, &b.application_name)
        && same(&a.client_addr, &b.client_addr)
}

/// How a group's idle count moved over the recent samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trend {
    /// Never fell, and ended higher than it began: the shape of a leak.
    Growing,
    Steady,
    Shrinking,
    /// Fewer than two samples (the worker has not watched this group long enough, or is not running).
    Unknown,
}

impl Trend {
    pub fn as_str(self) -> &'static str {
        match self {
            Trend::Growing => "growing",
            Trend::Steady => "steady",
            Trend::Shrinking => "shrinking",
            Trend::Unknown => "unknown",
        }
    }
}

/// The trend of `samples` (oldest first).
pub fn trend(samples: &[u32]) -> Trend {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Trend::Unknown;
    };
    if samples.len() < 2 {
        return Trend::Unknown;
    }
    let never_fell = samples.windows(2).all(|w| w[1] >= w[0]);
    let never_rose = samples.windows(2).all(|w| w[1] <= w[0]);
    if never_fell && last > first {
        Trend::Growing
    } else if never_rose && last < first {
        Trend::Shrinking
    } else {
        Trend::Steady
    }
}

/// The worker's memory of idle counts: the last `window` samples of every group seen idle.
#[derive(Clone, Debug, Default)]
pub struct LeakHistory {
    samples: HashMap<GroupKey, VecDeque<u32>>,
    reported: HashSet<GroupKey>,
}

impl LeakHistory {
    /// Adds one sample for every known group (0 for a group with no idle session now) and
    /// forgets groups whose whole window is 0.
    pub fn observe(&mut self, counts: &HashMap<GroupKey, u32>, window: usize) {
        let window = window.max(2);
        for key in counts.keys() {
            self.samples.entry(key.clone()).or_default();
        }
        self.samples.retain(|key, s| {
            s.push_back(counts.get(key).copied().unwrap_or(0));
            while s.len() > window {
                s.pop_front();
            }
            s.iter().any(|&c| c > 0)
        });
    }

    pub fn samples(&self, key: &GroupKey) -> Vec<u32> {
        self.samples
            .get(key)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn groups(&self) -> impl Iterator<Item = (&GroupKey, &VecDeque<u32>)> {
        self.samples.iter()
    }

    /// Groups suspect now: idle sessions past `idle_age`, or an idle count growing over a full
    /// window. Returns the ones not yet reported (each is to be logged once per episode: until
    /// the group has had no idle session for a whole window).
    pub fn new_suspects(
        &mut self,
        snapshot: &Snapshot,
        idle_age: f64,
        window: usize,
    ) -> Vec<LeakSuspectNote> {
        let mut now: HashMap<GroupKey, LeakSuspectNote> = HashMap::new();
        for g in leak_suspects(snapshot, idle_age) {
            now.insert(
                g.key.clone(),
                LeakSuspectNote {
                    key: g.key,
                    idle_count: g.connection_count,
                    reason: Reason::OldIdle(g.max_age_seconds),
                },
            );
        }
        for (key, s) in &self.samples {
            let s: Vec<u32> = s.iter().copied().collect();
            if s.len() >= window.max(2) && trend(&s) == Trend::Growing && !now.contains_key(key) {
                let last = *s.last().unwrap_or(&0);
                now.insert(
                    key.clone(),
                    LeakSuspectNote {
                        key: key.clone(),
                        idle_count: i64::from(last),
                        reason: Reason::Growing(s),
                    },
                );
            }
        }
        let mut fresh: Vec<LeakSuspectNote> = now
            .values()
            .filter(|n| !self.reported.contains(&n.key))
            .cloned()
            .collect();
        fresh.sort_by(|a, b| a.key.cmp(&b.key));
        // A group stays "reported" until it has had no idle session for a whole window, so a
        // trend that flaps between growing and steady is logged once, not at every rise.
        let samples = &self.samples;
        self.reported.retain(|k| samples.contains_key(k));
        self.reported.extend(now.into_keys());
        fresh
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// Idle sessions older than the leak threshold; the oldest, in seconds.
    OldIdle(f64),
    /// Idle count grew over these samples.
    Growing(Vec<u32>),
}

/// A group that just became a leak suspect.
#[derive(Clone, Debug, PartialEq)]
pub struct LeakSuspectNote {
    pub key: GroupKey,
    pub idle_count: i64,
    pub reason: Reason,
}

/// A stable 64-bit name for a group (FNV-1a), shared through shared memory between the worker
/// and the backends reading `leak_suspects`.
pub fn group_hash(key: &GroupKey) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for part in [
        &key.datname,
        &key.usename,
        &key.application_name,
        &key.client_addr,
    ] {
        match part {
            None => h = (h ^ 0xff).wrapping_mul(0x100000001b3),
            Some(s) => {
                for b in s.bytes().chain([0u8]) {
                    h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
                }
            }
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixtures::*;

    #[test]
    fn idle_counts_count_interleaved_runs_and_equal_names_of_separate_reads() {
        let mut other = client(3, "idle", 5);
        other.application_name = Some("batch".into());
        // same text, a different allocation: still the same group
        let mut copy = client(5, "idle", 5);
        copy.application_name = Some(String::from("api").into());
        let snap = snapshot(vec![
            client(1, "idle", 5),
            client(2, "idle", 5),
            other,
            client(4, "active", 5),
            copy,
            client(6, "idle in transaction", 5),
            client(7, "idle", 5),
        ]);
        let counts = idle_counts(&snap);
        let of = |app: &str| {
            counts
                .iter()
                .find(|(k, _)| k.application_name.as_deref() == Some(app))
                .map(|(_, n)| *n)
        };
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert_eq!(of("api"), Some(4));
        assert_eq!(of("batch"), Some(1));
    }

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

#[cfg(test)]
mod trend_tests {
    use super::*;
    use crate::session::fixtures::*;

    #[test]
    fn suspects_come_from_old_idle_sessions_or_a_growing_trend() {
        let mut other = client(7, "idle", 5);
        other.application_name = Some("other".into());
        let snap = snapshot(vec![client(1, "idle", 700), client(2, "idle", 5), other]);
        let samples = |k: &GroupKey| {
            if k.application_name.as_deref() == Some("other") {
                vec![1, 1, 1, 1]
            } else {
                vec![3, 2]
            }
        };
        let rows = suspects_with_trend(&snap, 600.0, 4, samples);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].reason, rows[0].trend, rows[0].group.pids.clone()),
            ("idle_age", Trend::Shrinking, vec![1])
        );

        let growing = |_: &GroupKey| vec![0, 1, 1, 1];
        let rows = suspects_with_trend(&snap, 600.0, 4, growing);
        let other_row = rows
            .iter()
            .find(|r| r.group.key.application_name.as_deref() == Some("other"))
            .unwrap();
        assert_eq!(
            (
                other_row.reason,
                other_row.trend,
                other_row.group.pids.clone()
            ),
            ("growing", Trend::Growing, vec![7])
        );
        // a window not yet full is not enough
        let short = |_: &GroupKey| vec![0, 1];
        assert_eq!(suspects_with_trend(&snap, 600.0, 4, short).len(), 1);
    }

    #[test]
    fn trend_shapes() {
        assert_eq!(trend(&[]), Trend::Unknown);
        assert_eq!(trend(&[3]), Trend::Unknown);
        assert_eq!(trend(&[1, 2, 2, 5]), Trend::Growing);
        assert_eq!(trend(&[2, 2, 2]), Trend::Steady);
        assert_eq!(trend(&[1, 3, 2, 4]), Trend::Steady);
        assert_eq!(trend(&[5, 4, 4, 1]), Trend::Shrinking);
    }

    fn key(app: &str) -> GroupKey {
        GroupKey {
            application_name: Some(app.into()),
            ..Default::default()
        }
    }

    #[test]
    fn history_keeps_a_window_and_forgets_quiet_groups() {
        let mut h = LeakHistory::default();
        for n in 1..=5 {
            h.observe(&HashMap::from([(key("a"), n)]), 3);
        }
        assert_eq!(h.samples(&key("a")), vec![3, 4, 5]);
        for _ in 0..3 {
            h.observe(&HashMap::new(), 3);
        }
        assert!(h.samples(&key("a")).is_empty());
    }

    #[test]
    fn new_suspects_are_reported_once() {
        let mut h = LeakHistory::default();
        let growing = |n: i32| snapshot((1..=n).map(|p| client(p, "idle", 1)).collect());
        let mut notes = Vec::new();
        for n in 1..=4 {
            let snap = growing(n);
            h.observe(&idle_counts(&snap), 4);
            notes.push(h.new_suspects(&snap, 600.0, 4));
        }
        assert!(notes[..3].iter().all(Vec::is_empty), "{notes:?}");
        assert_eq!(notes[3].len(), 1);
        assert_eq!(notes[3][0].reason, Reason::Growing(vec![1, 2, 3, 4]));
        let snap = growing(5);
        h.observe(&idle_counts(&snap), 4);
        assert!(
            h.new_suspects(&snap, 600.0, 4).is_empty(),
            "already reported"
        );
        // steady for a while, then growing again: the same episode, not reported again
        for _ in 0..4 {
            h.observe(&idle_counts(&snap), 4);
            assert!(h.new_suspects(&snap, 600.0, 4).is_empty());
        }
        let snap6 = growing(6);
        h.observe(&idle_counts(&snap6), 4);
        assert!(
            h.new_suspects(&snap6, 600.0, 4).is_empty(),
            "flapping trend reported once"
        );

        let mut elsewhere = client(9, "idle", 700);
        elsewhere.application_name = Some("batch".into());
        let old = snapshot(vec![elsewhere]);
        let fresh = h.new_suspects(&old, 600.0, 4);
        assert_eq!(fresh.len(), 1);
        assert!(matches!(fresh[0].reason, Reason::OldIdle(a) if a == 700.0));
    }

    #[test]
    fn group_hash_is_stable_and_distinguishes_parts() {
        let a = GroupKey {
            datname: Some("ab".into()),
            usename: Some("c".into()),
            ..Default::default()
        };
        let b = GroupKey {
            datname: Some("a".into()),
            usename: Some("bc".into()),
            ..Default::default()
        };
        assert_ne!(group_hash(&a), group_hash(&b));
        assert_eq!(group_hash(&a), group_hash(&a.clone()));
        assert_ne!(
            group_hash(&GroupKey::default()),
            group_hash(&GroupKey {
                datname: Some(String::new()),
                ..Default::default()
            })
        );
    }
}
