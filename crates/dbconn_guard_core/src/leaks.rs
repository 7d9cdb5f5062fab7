//! Connection-leak suspects: a client (database, user, application, address) holding idle
//! sessions far longer than any healthy pool would.

use super::analysis::{group, ConnectionGroup, GroupKey};
use super::fasthash::FastMap;
use super::history::{same_names, GroupName};
use super::session::{Backend, Micros, Snapshot};
use std::collections::{HashMap, HashSet};

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

/// (datname, usename, application_name), borrowed from a snapshot.
type Name3<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);

fn names_of(b: &Backend) -> Name3<'_> {
    (
        b.datname.as_deref(),
        b.usename.as_deref(),
        b.application_name.as_deref(),
    )
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
/// plus groups whose idle count grew over a full `window` of samples. `samples_of` returns the
/// idle counts of a (datname, usename, application_name) in the history, oldest first (empty
/// when there are none), and is asked once per such name.
///
/// A growing idle count is a leak only when it is made of sessions that stay idle
/// (`leak_growth`): it rose at two samples at least (a pool that opens is one step), and the
/// group holds as many sessions idle since `previous_sample` (the time of the newest sample but
/// one) as the count rose by. A busy pool's sessions are idle for milliseconds between uses:
/// its idle count can rise from sample to sample by chance, but none of them stays idle.
///
/// The worker runs this at every sample over thousands of sessions: one pass over the idle
/// sessions with borrowed names finds the few to group (old ones, and those of a growing name).
pub fn suspects_with_trend<'s>(
    snapshot: &'s Snapshot,
    idle_age: f64,
    window: usize,
    previous_sample: Option<Micros>,
    samples_of: impl Fn(&GroupName) -> Vec<u32>,
) -> Vec<SuspectRow> {
    let now = snapshot.now;
    // a session idle since the newest sample but one: idle at it and at every sample since
    let stayed_age = previous_sample.map(|t| (now - t) as f64 / 1e6);
    // per name: its trend, and the rise a growing count must be made of (None: not growing)
    let mut trends: FastMap<Name3<'s>, (Trend, Option<u32>)> = FastMap::default();
    let mut trend_of = |b: &'s Backend| -> (Trend, Option<u32>) {
        let k: Name3<'s> = names_of(b);
        if let Some(t) = trends.get(&k) {
            return *t;
        }
        let name = GroupName {
            datname: k.0.map(str::to_owned),
            usename: k.1.map(str::to_owned),
            application_name: k.2.map(str::to_owned),
        };
        let samples = samples_of(&name);
        let t = trend(&samples);
        let rise = (samples.len() >= window.max(2))
            .then(|| leak_growth(&samples))
            .flatten();
        let v = (t, rise);
        trends.insert(k, v);
        v
    };
    let idle: Vec<&'s Backend> = snapshot.clients().filter(|b| b.has_state("idle")).collect();
    let mut growing: Vec<(&'s Backend, u32)> = Vec::new();
    let mut stayed: FastMap<Name3<'s>, u32> = FastMap::default();
    let mut any_old = false;
    // a pool's sessions sit side by side with shared names: a run reuses its first's answer
    let mut run: Option<(&'s Backend, Option<u32>)> = None;
    for b in &idle {
        let g = match run {
            Some((first, g)) if same_names(first, b) => g,
            _ => trend_of(b).1,
        };
        run = Some((b, g));
        if let Some(rise) = g {
            growing.push((b, rise));
            if stayed_age.is_some_and(|s| b.state_age(now) >= s) {
                *stayed.entry(names_of(b)).or_default() += 1;
            }
        }
        any_old |= b.state_age(now) > idle_age;
    }
    // a growing count of sessions that do not stay idle is a busy pool, not a leak
    let growing = growing
        .into_iter()
        .filter(|(b, rise)| stayed.get(&names_of(b)).is_some_and(|n| n >= rise))
        .map(|(b, _)| b);
    let mut rows = Vec::new();
    let mut old_keys: HashSet<GroupKey> = HashSet::new();
    if any_old {
        // the old idle sessions of each group, grouped once
        for g in leak_suspects(snapshot, idle_age) {
            let first = idle
                .iter()
                .find(|b| {
                    b.datname.as_deref() == g.key.datname.as_deref()
                        && b.usename.as_deref() == g.key.usename.as_deref()
                        && b.application_name.as_deref() == g.key.application_name.as_deref()
                })
                .copied();
            let t = first.map_or(Trend::Unknown, |b| trend_of(b).0);
            old_keys.insert(g.key.clone());
            rows.push(SuspectRow {
                group: g,
                trend: t,
                reason: "idle_age",
            });
        }
    }
    for g in group(now, growing, false) {
        if !old_keys.contains(&g.key) {
            rows.push(SuspectRow {
                group: g,
                trend: Trend::Growing,
                reason: "growing",
            });
        }
    }
    rows
}

/// The `history_by_group` group whose idle counts give a leak group its trend: the same
/// (datname, usename, application_name), over every client address.
pub fn history_name(key: &GroupKey) -> GroupName {
    GroupName {
        datname: key.datname.clone(),
        usename: key.usename.clone(),
        application_name: key.application_name.clone(),
    }
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

/// The rise a growing idle count must be made of, if `samples` (oldest first) grow like a leak:
/// never falling, and rising at two samples at least (one rise is a step: a pool that opens,
/// a deployment). `None` when they do not.
pub fn leak_growth(samples: &[u32]) -> Option<u32> {
    let rises = samples.windows(2).filter(|w| w[1] > w[0]).count();
    (trend(samples) == Trend::Growing && rises >= 2)
        .then(|| samples[samples.len() - 1] - samples[0])
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

/// The worker's memory of the leak suspects it has logged, so each is logged once per episode.
#[derive(Clone, Debug, Default)]
pub struct LeakReports {
    reported: HashSet<GroupKey>,
}

impl LeakReports {
    /// Groups suspect now (the rows of `leak_suspects`: idle sessions past `idle_age`, or an
    /// idle count growing over a full `window` of samples, from `samples_of`). Returns the ones
    /// not yet reported: a group stays reported until it has had no idle session for a whole
    /// window, so a trend that flaps between growing and steady is logged once.
    pub fn new_suspects(
        &mut self,
        snapshot: &Snapshot,
        idle_age: f64,
        window: usize,
        previous_sample: Option<Micros>,
        samples_of: impl Fn(&GroupName) -> Vec<u32>,
    ) -> Vec<LeakSuspectNote> {
        let rows = suspects_with_trend(snapshot, idle_age, window, previous_sample, &samples_of);
        self.note(&rows, samples_of)
    }

    /// `new_suspects` over the `leak_suspects` rows already made of a snapshot.
    pub fn note(
        &mut self,
        rows: &[SuspectRow],
        samples_of: impl Fn(&GroupName) -> Vec<u32>,
    ) -> Vec<LeakSuspectNote> {
        let mut now: HashMap<GroupKey, LeakSuspectNote> = HashMap::new();
        for r in rows.iter().cloned() {
            let reason = if r.reason == "growing" {
                Reason::Growing(samples_of(&history_name(&r.group.key)))
            } else {
                Reason::OldIdle(r.group.max_age_seconds)
            };
            now.insert(
                r.group.key.clone(),
                LeakSuspectNote {
                    key: r.group.key,
                    idle_count: r.group.connection_count,
                    reason,
                },
            );
        }
        let mut fresh: Vec<LeakSuspectNote> = now
            .values()
            .filter(|n| !self.reported.contains(&n.key))
            .cloned()
            .collect();
        fresh.sort_by(|a, b| a.key.cmp(&b.key));
        // an episode lasts while the group is a suspect, or its name had idle sessions in the
        // window of samples
        self.reported
            .retain(|k| now.contains_key(k) || samples_of(&history_name(k)).iter().any(|&c| c > 0));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixtures::*;

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
    use crate::session::SECOND;

    #[test]
    fn suspects_come_from_old_idle_sessions_or_a_growing_trend() {
        let other = |pid: i32, age: i64| {
            let mut o = client(pid, "idle", age);
            o.application_name = Some("other".into());
            o
        };
        let snap = snapshot(vec![
            client(1, "idle", 700),
            client(2, "idle", 5),
            other(7, 5),
            other(8, 3),
        ]);
        // the newest sample but one was taken 2 s ago
        let prev = Some(NOW - 2 * SECOND);
        let samples = |k: &GroupName| {
            if k.application_name.as_deref() == Some("other") {
                vec![1, 1, 1, 1]
            } else {
                vec![3, 2]
            }
        };
        let rows = suspects_with_trend(&snap, 600.0, 4, prev, samples);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].reason, rows[0].trend, rows[0].group.pids.clone()),
            ("idle_age", Trend::Shrinking, vec![1])
        );

        let growing = |_: &GroupName| vec![0, 1, 2, 2];
        let rows = suspects_with_trend(&snap, 600.0, 4, prev, growing);
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
            ("growing", Trend::Growing, vec![7, 8])
        );
        // a window not yet full is not enough
        let short = |_: &GroupName| vec![0, 1];
        assert_eq!(suspects_with_trend(&snap, 600.0, 4, prev, short).len(), 1);
        // one rise is a step (a pool that opens), not a leak
        let step = |_: &GroupName| vec![0, 0, 2, 2];
        assert_eq!(suspects_with_trend(&snap, 600.0, 4, prev, step).len(), 1);
        // the rise must be made of sessions idle since the newest sample but one: with that
        // sample 4 s ago, only pid 7 was idle at it, and the count rose by 2
        let rows = suspects_with_trend(&snap, 600.0, 4, Some(NOW - 4 * SECOND), growing);
        assert_eq!(rows.len(), 1, "{rows:?}");
        // without two samples, no growth can be shown
        assert_eq!(suspects_with_trend(&snap, 600.0, 4, None, growing).len(), 1);
    }

    #[test]
    fn a_busy_pool_whose_idle_count_rises_by_chance_is_no_leak() {
        // a pool of 10, each session used every 0.5 s: idle between uses for milliseconds;
        // its idle counts at the last samples happen to climb
        let pool: Vec<Backend> = (1..=10)
            .map(|p| {
                let mut b = client(p, if p <= 6 { "idle" } else { "active" }, 0);
                b.state_change = Some(NOW - 20_000 * i64::from(p));
                b
            })
            .collect();
        let snap = snapshot(pool);
        let climbing = |_: &GroupName| vec![2, 3, 3, 5, 6, 6];
        let rows = suspects_with_trend(&snap, 600.0, 6, Some(NOW - SECOND), climbing);
        assert!(rows.is_empty(), "{rows:?}");
        // the same counts made of sessions that stay idle are a leak
        let leaking: Vec<Backend> = (1..=6)
            .map(|p| client(p, "idle", 2 * i64::from(p)))
            .collect();
        let rows = suspects_with_trend(&snapshot(leaking), 600.0, 6, Some(NOW - SECOND), climbing);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].reason, "growing");
    }

    #[test]
    fn leak_growth_needs_two_rises_and_no_fall() {
        assert_eq!(leak_growth(&[1, 2, 3, 4]), Some(3));
        assert_eq!(leak_growth(&[1, 1, 2, 2, 3]), Some(2));
        assert_eq!(leak_growth(&[1, 1, 1, 4]), None, "a step");
        assert_eq!(leak_growth(&[1, 2, 1, 4]), None, "it fell");
        assert_eq!(leak_growth(&[2, 2, 2]), None);
        assert_eq!(leak_growth(&[]), None);
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

    #[test]
    fn new_suspects_are_reported_once() {
        let mut h = LeakReports::default();
        let growing = |n: i32| {
            snapshot(
                (1..=n)
                    .map(|p| client(p, "idle", i64::from(n - p + 1)))
                    .collect(),
            )
        };
        // the samples so far of the one group (the history's idle counts), newest last
        let mut series: Vec<u32> = Vec::new();
        let mut step = |h: &mut LeakReports, n: i32| {
            series.push(n as u32);
            let window: Vec<u32> = series.iter().rev().take(4).rev().copied().collect();
            h.new_suspects(
                &growing(n),
                600.0,
                4,
                Some(NOW - SECOND),
                |_: &GroupName| window.clone(),
            )
        };
        let notes: Vec<_> = (1..=4).map(|n| step(&mut h, n)).collect();
        assert!(notes[..3].iter().all(Vec::is_empty), "{notes:?}");
        assert_eq!(notes[3].len(), 1);
        assert_eq!(notes[3][0].reason, Reason::Growing(vec![1, 2, 3, 4]));
        assert_eq!(notes[3][0].idle_count, 4);
        assert!(step(&mut h, 5).is_empty(), "already reported");
        // steady for a while, then growing again: the same episode, not reported again
        for _ in 0..4 {
            assert!(step(&mut h, 5).is_empty());
        }
        assert!(step(&mut h, 6).is_empty(), "flapping trend reported once");

        let mut elsewhere = client(9, "idle", 700);
        elsewhere.application_name = Some("batch".into());
        let old = snapshot(vec![elsewhere]);
        let fresh = h.new_suspects(&old, 600.0, 4, Some(NOW - SECOND), |_: &GroupName| {
            vec![1, 1]
        });
        assert_eq!(fresh.len(), 1);
        assert!(matches!(fresh[0].reason, Reason::OldIdle(a) if a == 700.0));
    }

    #[test]
    fn an_episode_ends_after_a_window_without_idle_sessions() {
        let mut h = LeakReports::default();
        let snap = snapshot(vec![client(1, "idle", 700)]);
        assert_eq!(
            h.new_suspects(&snap, 600.0, 2, Some(NOW - SECOND), |_: &GroupName| vec![1])
                .len(),
            1
        );
        let gone = snapshot(vec![]);
        // still idle within the window: the episode goes on
        assert!(h
            .new_suspects(&gone, 600.0, 2, Some(NOW - SECOND), |_: &GroupName| vec![
                1, 0
            ])
            .is_empty());
        assert!(h
            .new_suspects(&snap, 600.0, 2, Some(NOW - SECOND), |_: &GroupName| vec![
                0, 1
            ])
            .is_empty());
        // a whole window at 0: the next one is a new episode
        assert!(h
            .new_suspects(&gone, 600.0, 2, Some(NOW - SECOND), |_: &GroupName| vec![
                0, 0
            ])
            .is_empty());
        assert_eq!(
            h.new_suspects(&snap, 600.0, 2, Some(NOW - SECOND), |_: &GroupName| vec![
                0, 1
            ])
            .len(),
            1
        );
    }

    #[test]
    fn history_name_drops_the_client_address() {
        let k = GroupKey {
            datname: Some("d".into()),
            usename: Some("u".into()),
            application_name: Some("a".into()),
            client_addr: Some("10.0.0.1".into()),
            state: None,
        };
        let n = history_name(&k);
        assert_eq!(
            (
                n.datname.as_deref(),
                n.usename.as_deref(),
                n.application_name.as_deref()
            ),
            (Some("d"), Some("u"), Some("a"))
        );
    }
}
