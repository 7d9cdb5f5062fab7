//! The sampled history: what the worker records of the server every `dbconn_guard.sample_interval`,
//! aligned to the wall clock, for the `history` and `history_by_group` views, for charts
//! over time, and for the leak trend (`leaks`), which reads its idle counts from here.
//!
//! A sample is taken from the status read of one of the worker's checks (the check at the
//! aligned instant), never from a read of its own.

use super::fasthash::FastMap;
use super::policy::{Rule, CLIENT_TOOLS, RULES};
use super::session::{Backend, Micros, Name, Snapshot, SECOND};
use super::utilization::{self, Limits};
use std::rc::Rc;

/// 1970-01-01 in PostgreSQL's timestamps (microseconds since 2000-01-01).
pub const UNIX_EPOCH: Micros = -946_684_800 * SECOND;

/// The first wall-clock-aligned instant strictly after `after`: a multiple of `interval` since
/// 1970-01-01 UTC (so at a 10-second interval, :00, :10, :20, ...), as Grafana buckets time.
pub fn next_sample_at(after: Micros, interval: Micros) -> Micros {
    let interval = interval.max(1);
    let unix = after - UNIX_EPOCH;
    (unix.div_euclid(interval) + 1) * interval + UNIX_EPOCH
}

/// Client backends by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub active: u32,
    pub idle: u32,
    pub idle_in_transaction: u32,
    pub idle_in_transaction_aborted: u32,
    /// `fastpath function call`, `disabled`, or no state yet (still starting).
    pub other_states: u32,
}

impl StateCounts {
    pub fn count(&mut self, state: Option<&str>) {
        match state {
            Some("active") => self.active += 1,
            Some("idle") => self.idle += 1,
            Some("idle in transaction") => self.idle_in_transaction += 1,
            Some("idle in transaction (aborted)") => self.idle_in_transaction_aborted += 1,
            _ => self.other_states += 1,
        }
    }

    pub fn total(&self) -> u32 {
        self.active
            + self.idle
            + self.idle_in_transaction
            + self.idle_in_transaction_aborted
            + self.other_states
    }

    pub fn add(&mut self, o: &StateCounts) {
        self.active += o.active;
        self.idle += o.idle;
        self.idle_in_transaction += o.idle_in_transaction;
        self.idle_in_transaction_aborted += o.idle_in_transaction_aborted;
        self.other_states += o.other_states;
    }
}

/// Who a group of sessions is: `history_by_group`'s key (no client address: a pool's
/// sessions come from many).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName {
    pub datname: Option<String>,
    pub usename: Option<String>,
    pub application_name: Option<String>,
}

/// One (datname, usename, application_name) group of a sample, or the remainder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSample {
    /// Empty (all `None`) for the remainder.
    pub name: GroupName,
    pub counts: StateCounts,
    /// The remainder: every group past the top ones, summed.
    pub other: bool,
}

/// What each rule did since the previous sample (sessions ended, or statements cancelled; not
/// dry-run records), in the order of `Rule::index`: the rule columns of the `history` view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByRule(pub [u32; RULES]);

impl ByRule {
    /// `now - before`, for counters that only grow (a counter that went back, as after a
    /// restart of the server, counts from zero).
    pub fn since(now: [i64; RULES], before: [i64; RULES]) -> ByRule {
        ByRule(std::array::from_fn(|i| {
            let v = if now[i] >= before[i] {
                now[i] - before[i]
            } else {
                now[i]
            };
            v.clamp(0, i64::from(u32::MAX)) as u32
        }))
    }

    /// What `rule` did.
    pub fn get(&self, rule: Rule) -> u32 {
        self.0[rule.index()]
    }

    /// Sets what `rule` did.
    pub fn set(&mut self, rule: Rule, n: u32) {
        self.0[rule.index()] = n;
    }

    /// The counts in the order of `Rule::index`.
    pub fn as_array(&self) -> [u32; RULES] {
        self.0
    }

    pub fn from_array(a: [u32; RULES]) -> ByRule {
        ByRule(a)
    }
}

/// One sample of the server, as the `history` view shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub time: Micros,
    /// Client backends by state.
    pub clients: StateCounts,
    /// Backends waiting for a heavyweight lock.
    pub lock_waiters: u32,
    /// Seconds the longest current lock wait has lasted (0: none).
    pub longest_lock_wait_s: f64,
    /// Age of the oldest open transaction of a client backend, in seconds (0: none).
    pub oldest_xact_age_s: f64,
    /// Longest time a client backend has been idle in transaction (aborted or not), in
    /// seconds (0: none).
    pub longest_idle_in_xact_s: f64,
    /// Longest time a client backend's current statement has run (`active`, since
    /// `query_start`; PostgreSQL's client tools aside), in seconds (0: none active): how long
    /// this server's statements run, from which diagnose() judges a slow one.
    pub longest_statement_s: f64,
    pub max_connections: i32,
    pub utilization_pct: f64,
    pub available_connections: i64,
    /// Sessions ended since the previous sample, by rule.
    pub terminations: ByRule,
    /// Rows of `leak_suspects` at the sample.
    pub leak_suspect_groups: u32,
    /// Client connections that authenticated since the previous sample (0 for the first
    /// sample the worker takes).
    pub new_connections: u32,
    /// Client sessions that ended since the previous sample (of themselves, or ended by
    /// anyone): the previous sample's clients, plus the new connections, less this one's.
    pub ended_sessions: u32,
    /// The churn's carry for the next sample (`Churn::carry`; not kept in the history).
    pub churn_carry: u32,
    /// The root of the largest lock pile-up at the sample: its pid (0: none), how many
    /// sessions it held up, and its statement's `query_id` (0: none computed).
    pub top_root_pid: i32,
    pub top_root_held_up: u32,
    pub top_root_query_id: i64,
    /// The top groups by connections, largest first, then the remainder (when there is one):
    /// their counts add up to `clients`.
    pub groups: Vec<GroupSample>,
}

/// What a sample needs besides the status read.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// When each current lock wait began (0: not known yet).
    pub lock_wait_starts: Vec<Micros>,
    pub terminations: ByRule,
    pub leak_suspect_groups: u32,
    /// Client connections that authenticated since the server started, and the previous
    /// sample's count of it and of client backends (None: no previous sample).
    pub churn: Option<Churn>,
    /// The root of the largest lock pile-up and how many it held up (`blocking::largest_root`;
    /// None: no pile-up, or the lock graph was not read).
    pub largest_root: Option<(i32, u32)>,
}

/// What the churn of a sample is worked out from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Churn {
    /// Connections that authenticated since the server started, read beside the status read.
    pub connections_total: u64,
    pub previous_connections_total: u64,
    /// The previous sample's sessions (`churn_clients`).
    pub previous_clients: u32,
    /// Sessions counted as ended too early (a connection that authenticated between the two
    /// reads of a sample, seen as a session only at the next): taken off the next counts, so
    /// that over the samples the figures add up.
    pub carry: u32,
}

impl Churn {
    /// (new connections, ended sessions, the carry for the next sample) since the previous
    /// sample, with `clients` sessions now (`churn_clients`).
    pub fn since_previous(&self, clients: u32) -> (u32, u32, u32) {
        let new = self
            .connections_total
            .saturating_sub(self.previous_connections_total)
            .min(u64::from(u32::MAX)) as i64;
        let raw =
            i64::from(self.previous_clients) + new - i64::from(clients) - i64::from(self.carry);
        (new as u32, raw.max(0) as u32, (-raw).max(0) as u32)
    }
}

/// The sessions the churn counts: client backends in a state (not one still starting, which
/// PostgreSQL 18 shows before it has authenticated: it is counted when it has).
pub fn churn_clients(c: &StateCounts) -> u32 {
    c.total() - c.other_states
}

/// A sample of `snapshot`, with the `top` largest (datname, usename, application_name) groups
/// of client backends and one remainder row for the rest.
pub fn take(snapshot: &Snapshot, limits: Limits, extra: &Extra, top: usize) -> Sample {
    let now = snapshot.now;
    let u = utilization::utilization(snapshot, limits);
    let mut clients = StateCounts::default();
    let mut oldest_xact: f64 = 0.0;
    let mut longest_iit: f64 = 0.0;
    let mut longest_statement: f64 = 0.0;
    // grouped on borrowed names, in runs of sessions with the same names (a pool's sessions
    // sit side by side and share their strings: a run goes on on a pointer comparison); owned
    // strings only for the groups that are kept
    type Key<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);
    let mut groups: FastMap<Key<'_>, StateCounts> = FastMap::default();
    let mut run: Option<(&Backend, StateCounts)> = None;
    for b in snapshot.clients() {
        clients.count(b.state);
        if let Some(x) = b.xact_age(now) {
            oldest_xact = oldest_xact.max(x);
        }
        if matches!(
            b.state,
            Some("idle in transaction") | Some("idle in transaction (aborted)")
        ) {
            longest_iit = longest_iit.max(b.state_age(now));
        } else if b.state == Some("active")
            && !CLIENT_TOOLS.contains(&b.application_name.as_deref().unwrap_or(""))
        {
            // a dump or restore runs long by design: it says nothing of the workload's
            // statements
            if let Some(q) = b.query_start {
                longest_statement = longest_statement.max((now - q).max(0) as f64 / SECOND as f64);
            }
        }
        match &mut run {
            Some((first, c)) if same_names(first, b) => c.count(b.state),
            _ => {
                let mut c = StateCounts::default();
                c.count(b.state);
                if let Some((first, done)) = run.replace((b, c)) {
                    groups.entry(key_of(first)).or_default().add(&done);
                }
            }
        }
    }
    if let Some((first, done)) = run {
        groups.entry(key_of(first)).or_default().add(&done);
    }
    let mut ranked: Vec<(Key<'_>, StateCounts)> = groups.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then_with(|| a.0.cmp(&b.0)));
    let mut out: Vec<GroupSample> = Vec::with_capacity(top.min(ranked.len()) + 1);
    let mut rest = StateCounts::default();
    let mut any_rest = false;
    for (i, ((d, u, a), counts)) in ranked.into_iter().enumerate() {
        if i < top {
            out.push(GroupSample {
                name: GroupName {
                    datname: d.map(str::to_owned),
                    usename: u.map(str::to_owned),
                    application_name: a.map(str::to_owned),
                },
                counts,
                other: false,
            });
        } else {
            rest.add(&counts);
            any_rest = true;
        }
    }
    if any_rest {
        out.push(GroupSample {
            name: GroupName::default(),
            counts: rest,
            other: true,
        });
    }
    let longest_wait = extra
        .lock_wait_starts
        .iter()
        .filter(|&&s| s != 0)
        .map(|&s| (now - s).max(0) as f64 / SECOND as f64)
        .fold(0.0, f64::max);
    let churn = extra
        .churn
        .map_or((0, 0, 0), |c| c.since_previous(churn_clients(&clients)));
    let (top_root_pid, top_root_held_up) = extra.largest_root.unwrap_or((0, 0));
    let top_root_query_id = snapshot
        .backends
        .iter()
        .find(|b| top_root_pid != 0 && b.pid == top_root_pid)
        .and_then(|b| b.query_id)
        .unwrap_or(0);
    Sample {
        time: now,
        clients,
        lock_waiters: extra.lock_wait_starts.len() as u32,
        longest_lock_wait_s: longest_wait,
        oldest_xact_age_s: oldest_xact,
        longest_idle_in_xact_s: longest_iit,
        longest_statement_s: longest_statement,
        max_connections: limits.max_connections,
        utilization_pct: u.utilization_pct,
        available_connections: u.available_connections,
        terminations: extra.terminations,
        leak_suspect_groups: extra.leak_suspect_groups,
        new_connections: churn.0,
        ended_sessions: churn.1,
        churn_carry: churn.2,
        top_root_pid,
        top_root_held_up,
        top_root_query_id,
        groups: out,
    }
}

fn key_of(b: &Backend) -> (Option<&str>, Option<&str>, Option<&str>) {
    (
        b.datname.as_deref(),
        b.usename.as_deref(),
        b.application_name.as_deref(),
    )
}

/// Same (datname, usename, application_name)? Shared names compare by pointer first.
pub(crate) fn same_names(a: &Backend, b: &Backend) -> bool {
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
}

/// What a sample says of one group's idle sessions: its count, 0 when the sample is complete
/// without it (the group had no session then), or unknown when it may be in the remainder.
pub fn idle_in(sample: &Sample, name: &GroupName) -> Option<u32> {
    if let Some(g) = sample.groups.iter().find(|g| !g.other && g.name == *name) {
        return Some(g.counts.idle);
    }
    match sample.groups.iter().find(|g| g.other) {
        Some(rest) if rest.counts.total() > 0 => None,
        _ => Some(0),
    }
}

/// A group's idle counts over the newest `window` samples (oldest first), stopping at the
/// newest sample that does not say (the group was in the remainder then), and starting at the
/// first with an idle session: a pool that has just opened its connections is not a growing
/// one.
pub fn idle_series(samples: &[Sample], name: &GroupName, window: usize) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for s in samples.iter().rev().take(window) {
        match idle_in(s, name) {
            Some(v) => out.push(v),
            None => break,
        }
    }
    while out.last() == Some(&0) {
        out.pop();
    }
    out.reverse();
    out
}

/// The time of the newest sample but one of `samples` (oldest first): a session idle since then
/// was idle at that sample and at every one since (`leaks::suspects_with_trend`).
pub fn previous_sample_time(samples: &[Sample]) -> Option<Micros> {
    samples.len().checked_sub(2).map(|i| samples[i].time)
}

/// Bytes of shared memory a ring of `samples` samples of `groups` top groups takes, given the
/// size of one sample's fixed part and of one group entry.
pub fn ring_bytes(samples: usize, groups: usize, fixed: usize, entry: usize) -> usize {
    samples.saturating_mul(fixed.saturating_add((groups + 1).saturating_mul(entry)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Backend, Kind};
    use std::rc::Rc;

    fn client(pid: i32, app: &str, state: &str, age_s: i64, now: Micros) -> Backend {
        Backend {
            pid,
            kind: Kind::Client,
            datname: Some(Rc::from("db")),
            usename: Some(Rc::from("u")),
            application_name: Some(Rc::from(app)),
            backend_type: Some("client backend".into()),
            state: Some(match state {
                "active" => "active",
                "idle" => "idle",
                "iit" => "idle in transaction",
                "aborted" => "idle in transaction (aborted)",
                _ => "fastpath function call",
            }),
            state_change: Some(now - age_s * SECOND),
            xact_start: (state == "iit" || state == "active").then_some(now - 2 * age_s * SECOND),
            query_start: Some(now - age_s * SECOND),
            ..Default::default()
        }
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 100,
            superuser_reserved_connections: 3,
            reserved_connections: None,
        }
    }

    #[test]
    fn aligned_to_the_wall_clock() {
        // 2026-01-01 00:00:07 UTC in PostgreSQL's epoch
        let unix = 1_767_225_607i64 * SECOND;
        let t = unix + UNIX_EPOCH;
        let next = next_sample_at(t, 10 * SECOND);
        assert_eq!((next - UNIX_EPOCH) % (10 * SECOND), 0);
        assert_eq!(next - t, 3 * SECOND);
        // strictly after: an aligned instant gives the next one
        assert_eq!(next_sample_at(next, 10 * SECOND), next + 10 * SECOND);
        // a minute interval lands on :00
        let m = next_sample_at(t, 60 * SECOND);
        assert_eq!((m - UNIX_EPOCH) % (60 * SECOND), 0);
        assert_eq!(m - t, 53 * SECOND);
    }

    #[test]
    fn counts_ages_and_top_groups_that_add_up() {
        let now = 1_000_000 * SECOND;
        let mut backends = Vec::new();
        let mut pid = 1;
        for (app, n, state, age) in [
            ("big", 5, "idle", 30),
            ("mid", 3, "active", 1),
            ("small", 2, "iit", 40),
            ("tiny", 1, "aborted", 70),
            ("odd", 1, "fast", 1),
        ] {
            for _ in 0..n {
                backends.push(client(pid, app, state, age, now));
                pid += 1;
            }
        }
        backends.push(Backend {
            pid: 999,
            kind: Kind::Background,
            ..Default::default()
        });
        let snap = Snapshot {
            now,
            backends,
            torn: 0,
        };
        let extra = Extra {
            lock_wait_starts: vec![now - 5 * SECOND, 0, now - 65 * SECOND],
            terminations: {
                let mut t = ByRule::default();
                t.set(Rule::IdleTimeout, 1);
                t.set(Rule::IdleInTransactionTimeout, 2);
                t.set(Rule::Manual, 3);
                t
            },
            leak_suspect_groups: 4,
            churn: None,
            largest_root: Some((1, 2)),
        };
        // the root's statement has a query id
        let mut snap = snap;
        snap.backends[0].query_id = Some(-42);
        let s = take(&snap, limits(), &extra, 2);
        assert_eq!(
            (s.top_root_pid, s.top_root_held_up, s.top_root_query_id),
            (1, 2, -42)
        );
        assert_eq!(
            s.clients,
            StateCounts {
                active: 3,
                idle: 5,
                idle_in_transaction: 2,
                idle_in_transaction_aborted: 1,
                other_states: 1
            }
        );
        assert_eq!(s.lock_waiters, 3);
        assert!((s.longest_lock_wait_s - 65.0).abs() < 1e-9);
        assert!((s.longest_idle_in_xact_s - 70.0).abs() < 1e-9);
        // the active ones' statements only (an idle session's last query ran long ago)
        assert!((s.longest_statement_s - 1.0).abs() < 1e-9);
        assert!((s.oldest_xact_age_s - 80.0).abs() < 1e-9);
        assert!((s.utilization_pct - 12.0).abs() < 1e-9);
        assert_eq!(s.available_connections, 100 - 3 - 12);
        assert_eq!(s.leak_suspect_groups, 4);
        assert_eq!(
            (s.new_connections, s.ended_sessions),
            (0, 0),
            "no previous sample"
        );
        assert_eq!(s.terminations.get(Rule::Manual), 3);
        // top two, largest first, then the remainder
        assert_eq!(s.groups.len(), 3);
        assert_eq!(s.groups[0].name.application_name.as_deref(), Some("big"));
        assert_eq!(s.groups[1].name.application_name.as_deref(), Some("mid"));
        assert!(s.groups[2].other && s.groups[2].name == GroupName::default());
        assert_eq!(s.groups[2].counts.total(), 4);
        let mut sum = StateCounts::default();
        for g in &s.groups {
            sum.add(&g.counts);
        }
        assert_eq!(sum, s.clients);
        // no remainder when every group fits
        let all = take(&snap, limits(), &extra, 16);
        assert_eq!(all.groups.len(), 5);
        assert!(all.groups.iter().all(|g| !g.other));
    }

    #[test]
    fn interleaved_sessions_and_equal_names_of_separate_reads_are_one_group() {
        let now = 100 * SECOND;
        let mut copy = client(4, "a", "idle", 1, now);
        // the same text in another allocation
        copy.application_name = Some(Rc::from(String::from("a")));
        let snap = Snapshot {
            now,
            backends: vec![
                client(1, "a", "idle", 1, now),
                client(2, "b", "active", 1, now),
                client(3, "a", "active", 1, now),
                copy,
            ],
            torn: 0,
        };
        let s = take(&snap, limits(), &Extra::default(), 16);
        assert_eq!(s.groups.len(), 2, "{:?}", s.groups);
        assert_eq!(s.groups[0].name.application_name.as_deref(), Some("a"));
        assert_eq!((s.groups[0].counts.idle, s.groups[0].counts.active), (2, 1));
    }

    #[test]
    fn an_empty_server() {
        let s = take(
            &Snapshot {
                now: 5,
                ..Default::default()
            },
            limits(),
            &Extra::default(),
            16,
        );
        assert_eq!(s.clients.total(), 0);
        assert_eq!(s.longest_lock_wait_s, 0.0);
        assert_eq!(s.oldest_xact_age_s, 0.0);
        assert!(s.groups.is_empty());
    }

    #[test]
    fn idle_series_stops_where_the_group_was_hidden_in_the_remainder() {
        let name = |a: &str| GroupName {
            datname: Some("db".into()),
            usename: Some("u".into()),
            application_name: Some(a.into()),
        };
        let with = |idle: Option<u32>, rest: u32| Sample {
            groups: idle
                .map(|i| GroupSample {
                    name: name("app"),
                    counts: StateCounts {
                        idle: i,
                        ..Default::default()
                    },
                    other: false,
                })
                .into_iter()
                .chain((rest > 0).then(|| GroupSample {
                    name: GroupName::default(),
                    counts: StateCounts {
                        idle: rest,
                        ..Default::default()
                    },
                    other: true,
                }))
                .collect(),
            ..Default::default()
        };
        let samples = vec![
            with(Some(9), 0),
            with(None, 5), // hidden in the remainder
            with(None, 0), // absent, nothing hidden: 0
            with(Some(1), 3),
            with(Some(2), 3),
        ];
        // from the first sample with an idle session (the one before says 0: not yet there)
        assert_eq!(idle_series(&samples, &name("app"), 10), vec![1, 2]);
        assert_eq!(idle_series(&samples, &name("app"), 2), vec![1, 2]);
        // a count that falls back to 0 later stays in
        let mut later = samples.clone();
        later.push(with(Some(0), 3));
        assert_eq!(idle_series(&later, &name("app"), 10), vec![1, 2, 0]);
        assert_eq!(idle_series(&samples, &name("other"), 10), Vec::<u32>::new());
    }

    #[test]
    fn terminations_since_the_previous_sample() {
        let now: [i64; RULES] = std::array::from_fn(|i| 5 + 2 * i as i64);
        let before: [i64; RULES] = std::array::from_fn(|i| i as i64);
        assert_eq!(
            ByRule::since(now, before),
            ByRule(std::array::from_fn(|i| 5 + i as u32))
        );
        // counters that went back (a crash-restart reset shared memory)
        let mut now = [0; RULES];
        now[Rule::IdleTimeout.index()] = 1;
        let mut before = [0; RULES];
        before[Rule::IdleTimeout.index()] = 4;
        assert_eq!(ByRule::since(now, before).get(Rule::IdleTimeout), 1);
        let b = ByRule::since(std::array::from_fn(|i| 1 + i as i64), [0; RULES]);
        assert_eq!(ByRule::from_array(b.as_array()), b);
    }

    #[test]
    fn ring_size() {
        assert_eq!(ring_bytes(10, 2, 100, 10), 10 * (100 + 30));
        assert_eq!(ring_bytes(usize::MAX, 16, 100, 10), usize::MAX);
    }

    #[test]
    fn churn_is_what_arrived_and_what_ended_since_the_previous_sample() {
        // 100 clients at the previous sample; 30 connections since; 110 clients now: 20 ended
        let c = Churn {
            connections_total: 1030,
            previous_connections_total: 1000,
            previous_clients: 100,
            carry: 0,
        };
        assert_eq!(c.since_previous(110), (30, 20, 0));
        // a session seen before its connection was counted: no negative count, and the one
        // too many is taken off the next sample's
        let c = Churn {
            connections_total: 1000,
            previous_connections_total: 1000,
            previous_clients: 100,
            carry: 0,
        };
        assert_eq!(c.since_previous(101), (0, 0, 1));
        let next = Churn {
            connections_total: 1001,
            previous_connections_total: 1000,
            previous_clients: 101,
            carry: 1,
        };
        assert_eq!(
            next.since_previous(101),
            (1, 0, 0),
            "the late connection, no phantom end"
        );
        // a session still starting is not counted until it has authenticated
        let starting = StateCounts {
            idle: 3,
            other_states: 2,
            ..Default::default()
        };
        assert_eq!(churn_clients(&starting), 3);
    }
}
