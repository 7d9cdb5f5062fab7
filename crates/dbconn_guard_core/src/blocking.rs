//! The blocking graph: who waits for whom, and which session sits at the root of a pile-up.
//!
//! The edges come from `pg_blocking_pids()` — PostgreSQL's own answer, which includes soft
//! blocks (a waiter queued behind another waiter whose request conflicts) and reports parallel
//! workers under their leader's pid. Nothing here re-derives lock conflicts.

use super::fasthash::FastMap;
use super::session::Micros;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// One backend waiting for a heavyweight lock, with what PostgreSQL says blocks it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LockWait {
    pub pid: i32,
    /// As returned by `pg_blocking_pids(pid)`; may hold duplicates.
    pub blocked_by: Vec<i32>,
    pub locktype: Option<String>,
    pub mode: Option<String>,
    /// Relation name (schema-qualified when needed) or oid, when the lock is on a relation.
    pub relation: Option<String>,
    /// `pg_locks.waitstart`.
    pub wait_start: Option<Micros>,
    /// The leader of its lock group (a parallel query's leader) when it is a parallel worker
    /// or leader; 0 otherwise.
    pub leader_pid: i32,
}

/// What a session held up when it was judged, for the audit: the sessions waiting on it,
/// directly or behind one that does (each session once, a parallel query's workers with their
/// leader), how long the longest of them had waited, and the lock its longest-waiting direct
/// waiter asks for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeldUp {
    pub sessions: usize,
    pub longest_wait_s: f64,
    /// `RowExclusiveLock on relation orders`, `ShareLock on transactionid`, ...
    pub lock: Option<String>,
}

/// What `pid` holds up in `waits` at `now` (for one session; [`HeldUpIndex`] for many).
pub fn held_up(waits: &[LockWait], pid: i32, now: Micros) -> HeldUp {
    HeldUpIndex::new(waits).held_up(pid, now)
}

/// The waits by the pids they wait on, built once per read of the lock graph, so that what
/// each of many sessions holds up costs only the edges behind it (a session nobody waits on:
/// one look-up), not a pass over every wait.
pub struct HeldUpIndex<'a> {
    waits: &'a [LockWait],
    by_blocker: FastMap<i32, Vec<usize>>,
    /// The waiting pids of each parallel query's session (its leader and workers).
    by_session: FastMap<i32, Vec<i32>>,
}

impl<'a> HeldUpIndex<'a> {
    pub fn new(waits: &'a [LockWait]) -> Self {
        let mut by_blocker: FastMap<i32, Vec<usize>> = FastMap::default();
        let mut by_session: FastMap<i32, Vec<i32>> = FastMap::default();
        for (i, w) in waits.iter().enumerate() {
            if w.leader_pid != 0 {
                by_session.entry(w.leader_pid).or_default().push(w.pid);
            }
            for b in &w.blocked_by {
                let v = by_blocker.entry(*b).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
            }
        }
        HeldUpIndex {
            waits,
            by_blocker,
            by_session,
        }
    }

    /// What `pid` holds up at `now`: breadth first over the waits behind it.
    pub fn held_up(&self, pid: i32, now: Micros) -> HeldUp {
        let Some(direct) = self.by_blocker.get(&pid) else {
            return HeldUp::default();
        };
        let waited = |w: &LockWait| w.wait_start.map_or(0.0, |t| (now - t).max(0) as f64 / 1e6);
        let mut reached: BTreeSet<i32> = BTreeSet::from([pid]);
        let mut seen_waits: BTreeSet<usize> = BTreeSet::new();
        let mut sessions: BTreeSet<i32> = BTreeSet::new();
        let mut longest: f64 = 0.0;
        let mut queue: VecDeque<i32> = VecDeque::from([pid]);
        while let Some(blocker) = queue.pop_front() {
            for &i in self.by_blocker.get(&blocker).map_or(&[][..], Vec::as_slice) {
                let w = &self.waits[i];
                let s = w.session_pid();
                if s == pid || w.pid == pid || !seen_waits.insert(i) {
                    continue;
                }
                longest = longest.max(waited(w));
                sessions.insert(s);
                // whoever waits on this session, by any of its pids, is held up too
                for p in [w.pid, s] {
                    if reached.insert(p) {
                        queue.push_back(p);
                    }
                }
                if s != w.pid {
                    // a parallel worker's session: its other workers' pids too
                    for &o in self.by_session.get(&s).map_or(&[][..], Vec::as_slice) {
                        if reached.insert(o) {
                            queue.push_back(o);
                        }
                    }
                }
            }
        }
        let lock = direct
            .iter()
            .map(|&i| &self.waits[i])
            .filter(|w| w.session_pid() != pid)
            .max_by(|a, b| waited(a).total_cmp(&waited(b)).then(b.pid.cmp(&a.pid)))
            .map(|w| {
                let mut s = format!(
                    "{} on {}",
                    w.mode.as_deref().unwrap_or("a lock"),
                    w.locktype.as_deref().unwrap_or("an object")
                );
                if let Some(r) = &w.relation {
                    s.push(' ');
                    s.push_str(r);
                }
                s
            });
        HeldUp {
            sessions: sessions.len(),
            longest_wait_s: longest,
            lock,
        }
    }
}

impl LockWait {
    /// The session this wait belongs to: its lock group's leader, or itself.
    pub fn session_pid(&self) -> i32 {
        if self.leader_pid != 0 {
            self.leader_pid
        } else {
            self.pid
        }
    }
}

/// One process's entry (PROCLOCK) on one lock object: what it holds and what it waits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: i32,
    /// Its lock group's leader (itself outside parallel query).
    pub leader_pid: i32,
    /// Bit `m` set: holds mode `m`.
    pub hold_mask: u32,
    /// The mode it waits for; 0 (NoLock) when not waiting.
    pub wait_mode: i32,
}

/// Everything that decides who blocks whom on one lock object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LockQueue {
    pub instances: Vec<LockHolder>,
    /// The waiting pids in queue order, front first.
    pub queue: Vec<i32>,
    /// `conflicts[m]`: bit mask of the modes that conflict with mode `m` (the lock method's table).
    pub conflicts: Vec<u32>,
}

/// For every waiter on the lock, the pids blocking it, by `pg_blocking_pids()`'s rules: a hard
/// block is an entry holding a mode that conflicts with the waiter's request; a soft block is an
/// entry waiting, ahead in the queue, for a conflicting mode; an entry never blocks itself nor
/// a member of its own lock group; blockers are named by their group leader's pid.
pub fn blockers_on(q: &LockQueue) -> Vec<(i32, Vec<i32>)> {
    let position: FastMap<i32, usize> = q.queue.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let mut out = Vec::new();
    for (wi, w) in q
        .instances
        .iter()
        .enumerate()
        .filter(|(_, i)| i.wait_mode != 0)
    {
        let mask = q.conflicts.get(w.wait_mode as usize).copied().unwrap_or(0);
        let mut blockers = Vec::new();
        let mut counted = vec![false; q.instances.len()];
        for (hi, h) in q.instances.iter().enumerate() {
            if hi != wi && h.leader_pid != w.leader_pid && mask & h.hold_mask != 0 {
                blockers.push(h.leader_pid);
                counted[hi] = true;
            }
        }
        // soft blocks: only entries ahead of the waiter in the queue
        if let Some(&mine) = position.get(&w.pid) {
            for (ai, a) in q.instances.iter().enumerate() {
                if ai == wi || counted[ai] || a.wait_mode == 0 || a.leader_pid == w.leader_pid {
                    continue;
                }
                if mask & (1u32 << a.wait_mode) != 0
                    && position.get(&a.pid).is_some_and(|&p| p < mine)
                {
                    blockers.push(a.leader_pid);
                }
            }
        }
        out.push((w.pid, blockers));
    }
    out
}

/// A (blocked, blocking) pair; `wait` indexes the blocked side's entry in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pair {
    pub blocked_pid: i32,
    pub blocking_pid: i32,
    pub wait: usize,
}

/// Every distinct (blocked, blocking) pair, ordered by blocked pid then blocking pid.
/// A pid listed twice (parallel groups) yields one pair; a waiter never blocks itself.
pub fn pairs(waits: &[LockWait]) -> Vec<Pair> {
    let mut all: Vec<Pair> = Vec::with_capacity(waits.iter().map(|w| w.blocked_by.len()).sum());
    for (i, w) in waits.iter().enumerate() {
        let start = all.len();
        all.extend(w.blocked_by.iter().filter(|&&b| b != w.pid).map(|&b| Pair {
            blocked_pid: w.pid,
            blocking_pid: b,
            wait: i,
        }));
        all[start..].sort_unstable();
    }
    // waits come in pid order (then the pieces are already in order); otherwise, or when one
    // pid (with parallel workers) has two LockWait rows, sort the whole
    if !all.is_sorted() {
        all.sort_unstable();
    }
    // a blocker may be listed twice, and a pid may have two rows: keep the first of each pair
    all.dedup_by(|next, kept| {
        next.blocked_pid == kept.blocked_pid && next.blocking_pid == kept.blocking_pid
    });
    all
}

/// A waiting backend traced to one root blocker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub pid: i32,
    /// The session at the head of the pile-up: it blocks others and waits for no lock itself.
    /// `None` for a waiter caught in a lock cycle (the deadlock detector will break it).
    pub root_pid: Option<i32>,
    /// 1 when the root blocks this pid directly, 2 through one intermediate waiter, ...
    pub depth: Option<i32>,
    /// pid, each intermediate blocker, root — the shortest such path.
    pub path: Vec<i32>,
    /// How many waiting sessions this root holds up, directly or through others.
    pub root_blocked_count: i64,
}

/// The root of the largest pile-up in `waits` and how many sessions it holds up (a tie: the
/// lower pid): what the history keeps of each sample's lock waits.
pub fn largest_root(waits: &[LockWait]) -> Option<(i32, u32)> {
    chains(waits).first().and_then(|c| {
        Some((
            c.root_pid?,
            c.root_blocked_count.clamp(0, i64::from(u32::MAX)) as u32,
        ))
    })
}

/// For every waiting backend, each root blocker it ultimately waits for, with depth and path.
///
/// Ordered so the first row answers "which one session do I end?": largest
/// `root_blocked_count` first, then root pid, depth and pid. Cost is O(roots × edges): one
/// breadth-first search from each root over the reversed edges, not one per waiter (a queue of
/// W exclusive waiters has O(W²) soft-block edges).
pub fn chains(waits: &[LockWait]) -> Vec<Chain> {
    let edges = pairs(waits);
    // reversed adjacency: blocker -> the pids it blocks
    let mut blocks: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut waiting: BTreeSet<i32> = BTreeSet::new();
    for e in &edges {
        blocks
            .entry(e.blocking_pid)
            .or_default()
            .push(e.blocked_pid);
        waiting.insert(e.blocked_pid);
    }
    let roots: BTreeSet<i32> = blocks
        .keys()
        .copied()
        .filter(|p| !waiting.contains(p))
        .collect();

    // per waiter: root -> (depth, next hop towards the root)
    let mut reach: BTreeMap<i32, Vec<(i32, i32, i32)>> = BTreeMap::new();
    let mut root_count: HashMap<i32, i64> = HashMap::new();
    let mut next_hop_by_root: HashMap<i32, HashMap<i32, i32>> = HashMap::new();
    for &root in &roots {
        let mut next_hop: HashMap<i32, i32> = HashMap::new();
        let mut depth: HashMap<i32, i32> = HashMap::from([(root, 0)]);
        let mut queue = VecDeque::from([root]);
        while let Some(p) = queue.pop_front() {
            let d = depth[&p];
            for &w in blocks.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
                if let std::collections::hash_map::Entry::Vacant(e) = depth.entry(w) {
                    e.insert(d + 1);
                    next_hop.insert(w, p);
                    queue.push_back(w);
                    reach.entry(w).or_default().push((root, d + 1, p));
                }
            }
        }
        root_count.insert(root, depth.len() as i64 - 1);
        next_hop_by_root.insert(root, next_hop);
    }

    let mut out = Vec::new();
    for &pid in &waiting {
        match reach.get(&pid) {
            Some(rs) => {
                for &(root, depth, _) in rs {
                    let hops = &next_hop_by_root[&root];
                    let mut path = vec![pid];
                    let mut at = pid;
                    while at != root {
                        at = hops[&at];
                        path.push(at);
                    }
                    out.push(Chain {
                        pid,
                        root_pid: Some(root),
                        depth: Some(depth),
                        path,
                        root_blocked_count: root_count[&root],
                    });
                }
            }
            None => out.push(Chain {
                pid,
                root_pid: None,
                depth: None,
                path: vec![pid],
                root_blocked_count: 0,
            }),
        }
    }
    out.sort_by(|a, b| {
        b.root_blocked_count
            .cmp(&a.root_blocked_count)
            .then(a.root_pid.cmp(&b.root_pid))
            .then(a.depth.cmp(&b.depth))
            .then(a.pid.cmp(&b.pid))
    });
    out
}

/// The root of a lock pile-up and the waits it holds up, directly or through other waiters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    pub pid: i32,
    /// When each wait it holds up began (`pg_locks.waitstart`; `None`: not set yet, the wait
    /// has only just begun), one per waiting pid.
    pub wait_starts: Vec<Option<Micros>>,
}

/// Every root blocker of the pile-ups made of the waits `counts` accepts, with the waits it
/// holds up (directly or behind other counted waits).
///
/// * Only counted waits make edges: a wait that does not count (on an advisory lock, on a
///   virtual transaction id) neither holds anyone up nor carries the pile-up through.
/// * A root is held up by nothing itself, by `held_up`: a session whose wait `held_up` accepts
///   (or one of whose lock group's) is no root. The root-blocker rule counts every wait but one
///   on an advisory lock there: a session waiting on purpose while it holds up others is the
///   root of what it holds up, while one waiting for an older snapshot (a concurrent index
///   build) is held up itself, by a session that is no root of a pile-up.
/// * A parallel group is one session: its waiting members count once, under their leader's pid,
///   with the group's oldest wait.
///
/// Pids in lock cycles have no root and are left out (the deadlock detector breaks them).
pub fn roots(
    waits: &[LockWait],
    counts: impl Fn(&LockWait) -> bool,
    held_up: impl Fn(&LockWait) -> bool,
) -> Vec<Root> {
    let counted: Vec<LockWait> = waits.iter().filter(|w| counts(w)).cloned().collect();
    // every session held up itself, by the pid its blockers are named by
    let waiting: std::collections::HashSet<i32> = waits
        .iter()
        .filter(|w| held_up(w))
        .flat_map(|w| [w.pid, w.session_pid()])
        .collect();
    let session_of: HashMap<i32, i32> = counted.iter().map(|w| (w.pid, w.session_pid())).collect();
    // a group's oldest wait (a start not set yet: the wait has only just begun)
    let mut start_of: HashMap<i32, Option<Micros>> = HashMap::new();
    for w in &counted {
        let start = w.wait_start.filter(|&t| t != 0);
        start_of
            .entry(w.session_pid())
            .and_modify(|s| {
                *s = match (*s, start) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .or_insert(start);
    }
    let mut by_root: BTreeMap<i32, BTreeSet<i32>> = BTreeMap::new();
    for c in chains(&counted) {
        if let Some(r) = c.root_pid.filter(|r| !waiting.contains(r)) {
            let held = session_of.get(&c.pid).copied().unwrap_or(c.pid);
            if held != r {
                by_root.entry(r).or_default().insert(held);
            }
        }
    }
    by_root
        .into_iter()
        .map(|(pid, held)| Root {
            pid,
            wait_starts: held
                .iter()
                .filter_map(|p| start_of.get(p).copied())
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(pid: i32, blocked_by: &[i32]) -> LockWait {
        LockWait {
            pid,
            blocked_by: blocked_by.to_vec(),
            ..Default::default()
        }
    }

    fn pair_ids(ps: &[Pair]) -> Vec<(i32, i32)> {
        ps.iter().map(|p| (p.blocked_pid, p.blocking_pid)).collect()
    }

    #[test]
    fn held_up_counts_each_session_behind_a_pid_once_with_its_longest_wait_and_lock() {
        let at = |pid: i32, by: &[i32], waited_s: i64| LockWait {
            wait_start: Some(1_000_000_000 - waited_s * 1_000_000),
            mode: Some("RowExclusiveLock".into()),
            locktype: Some("relation".into()),
            relation: Some("orders".into()),
            ..w(pid, by)
        };
        let now = 1_000_000_000;
        // 10 holds up 20 and 21 directly, 30 behind 20 (and 10), and a parallel worker 41 of
        // 40 behind 30; 50 waits on 60, not on 10; 10 itself waits on 70
        let mut worker = at(41, &[30], 50);
        worker.leader_pid = 40;
        let waits = [
            at(20, &[10], 30),
            at(21, &[10], 5),
            at(30, &[20, 10], 40),
            at(40, &[30], 2),
            worker,
            at(50, &[60], 90),
            at(10, &[70], 99),
        ];
        let h = held_up(&waits, 10, now);
        assert_eq!(h.sessions, 4, "20, 21, 30 and 40 (with its worker): {h:?}");
        assert_eq!(h.longest_wait_s, 50.0);
        assert_eq!(
            h.lock.as_deref(),
            Some("RowExclusiveLock on relation orders")
        );
        // nobody behind it: nothing, and no lock
        assert_eq!(held_up(&waits, 21, now), HeldUp::default());
        // a cycle ends
        let cycle = [at(1, &[2], 3), at(2, &[1], 4)];
        assert_eq!(held_up(&cycle, 1, now).sessions, 1);
        // a transaction id wait names no relation
        let mut x = at(5, &[6], 1);
        x.locktype = Some("transactionid".into());
        x.mode = Some("ShareLock".into());
        x.relation = None;
        assert_eq!(
            held_up(&[x], 6, now).lock.as_deref(),
            Some("ShareLock on transactionid")
        );
    }

    #[test]
    fn the_largest_root_holds_up_the_most_sessions() {
        // 10 holds up 20 and 30 (behind 20); 40 holds up 50; 60 and 61 wait on each other
        let waits = [
            w(20, &[10]),
            w(30, &[20]),
            w(50, &[40]),
            w(60, &[61]),
            w(61, &[60]),
        ];
        assert_eq!(largest_root(&waits), Some((10, 2)));
        assert_eq!(largest_root(&waits[2..]), Some((40, 1)));
        assert_eq!(largest_root(&waits[3..]), None, "a cycle has no root");
        assert_eq!(largest_root(&[]), None);
    }

    #[test]
    fn pairs_are_deduplicated_and_sorted() {
        let waits = [w(30, &[10, 20, 10]), w(20, &[10]), w(40, &[40])];
        assert_eq!(pair_ids(&pairs(&waits)), vec![(20, 10), (30, 10), (30, 20)]);
        assert_eq!(pairs(&waits)[0].wait, 1);
    }

    #[test]
    fn pairs_from_waits_in_pid_order_and_a_pid_with_two_rows() {
        // in pid order: each waiter's blockers are sorted in place, no global sort
        let ordered = [w(20, &[15, 10]), w(30, &[20, 10, 25])];
        assert_eq!(
            pair_ids(&pairs(&ordered)),
            vec![(20, 10), (20, 15), (30, 10), (30, 20), (30, 25)]
        );
        // a parallel group's pid in two rows (lock waits of leader and worker): one pair each,
        // from the first row
        let twice = [w(30, &[20]), w(30, &[20, 10])];
        let ps = pairs(&twice);
        assert_eq!(pair_ids(&ps), vec![(30, 10), (30, 20)]);
        assert_eq!(ps[1].wait, 0);
    }

    // PostgreSQL's table-lock conflict matrix (lock.c): modes 1..=8 =
    // AccessShare, RowShare, RowExclusive, ShareUpdateExclusive, Share, ShareRowExclusive,
    // Exclusive, AccessExclusive.
    fn table_conflicts() -> Vec<u32> {
        let bit = |m: u32| 1u32 << m;
        vec![
            0,
            bit(8),
            bit(7) | bit(8),
            bit(5) | bit(6) | bit(7) | bit(8),
            bit(4) | bit(5) | bit(6) | bit(7) | bit(8),
            bit(3) | bit(4) | bit(6) | bit(7) | bit(8),
            bit(3) | bit(4) | bit(5) | bit(6) | bit(7) | bit(8),
            bit(2) | bit(3) | bit(4) | bit(5) | bit(6) | bit(7) | bit(8),
            bit(1) | bit(2) | bit(3) | bit(4) | bit(5) | bit(6) | bit(7) | bit(8),
        ]
    }

    fn holder(pid: i32, holds: &[u32], waits: i32) -> LockHolder {
        LockHolder {
            pid,
            leader_pid: pid,
            hold_mask: holds.iter().fold(0, |m, b| m | (1 << b)),
            wait_mode: waits,
        }
    }

    fn sorted(mut v: Vec<(i32, Vec<i32>)>) -> Vec<(i32, Vec<i32>)> {
        v.iter_mut().for_each(|(_, b)| b.sort());
        v.sort();
        v
    }

    #[test]
    fn hard_and_soft_blocks_follow_the_queue() {
        // 1 reads (AccessShare); 2 wants AccessExclusive; 3 wants AccessShare behind 2
        let q = LockQueue {
            instances: vec![holder(1, &[1], 0), holder(2, &[], 8), holder(3, &[], 1)],
            queue: vec![2, 3],
            conflicts: table_conflicts(),
        };
        assert_eq!(sorted(blockers_on(&q)), vec![(2, vec![1]), (3, vec![2])]);
    }

    #[test]
    fn shared_waiters_do_not_block_each_other() {
        let q = LockQueue {
            instances: vec![holder(1, &[8], 0), holder(2, &[], 1), holder(3, &[], 1)],
            queue: vec![2, 3],
            conflicts: table_conflicts(),
        };
        assert_eq!(sorted(blockers_on(&q)), vec![(2, vec![1]), (3, vec![1])]);
    }

    #[test]
    fn a_waiter_behind_is_no_blocker_and_upgrades_block_by_hold() {
        // 1 holds RowExclusive and waits for AccessExclusive (upgrade); 2 holds AccessShare;
        // 3, queued after 1, wants RowExclusive: blocked by 1's request? 1 is ahead: soft block.
        let q = LockQueue {
            instances: vec![holder(1, &[3], 8), holder(2, &[1], 0), holder(3, &[], 3)],
            queue: vec![1, 3],
            conflicts: table_conflicts(),
        };
        assert_eq!(sorted(blockers_on(&q)), vec![(1, vec![2]), (3, vec![1])]);
        // the same, with 3 ahead of 1: 3 is not blocked by 1's request, but 1 is by 3's
        let q2 = LockQueue {
            queue: vec![3, 1],
            ..q
        };
        assert_eq!(sorted(blockers_on(&q2)), vec![(1, vec![2, 3]), (3, vec![])]);
    }

    #[test]
    fn lock_group_members_never_block_each_other_and_report_the_leader() {
        let mut worker = holder(11, &[1], 0);
        worker.leader_pid = 10;
        let mut leader_waits = holder(10, &[], 8);
        leader_waits.leader_pid = 10;
        let mut other_worker = holder(21, &[1], 0);
        other_worker.leader_pid = 20;
        let q = LockQueue {
            instances: vec![worker, leader_waits, other_worker],
            queue: vec![10],
            conflicts: table_conflicts(),
        };
        assert_eq!(blockers_on(&q), vec![(10, vec![20])]);
    }

    #[test]
    fn no_waits_no_pairs_no_chains() {
        assert!(pairs(&[]).is_empty());
        assert!(chains(&[]).is_empty());
        // a waiter with no blockers (lock just granted) is not part of any chain
        assert!(chains(&[w(1, &[])]).is_empty());
    }

    #[test]
    fn three_deep_chain_traces_to_its_root() {
        // 10 holds; 20 waits for 10; 30 waits for 20; 40 waits for 30
        let waits = [w(40, &[30]), w(20, &[10]), w(30, &[20])];
        let cs = chains(&waits);
        assert_eq!(cs.len(), 3);
        for c in &cs {
            assert_eq!(c.root_pid, Some(10));
            assert_eq!(c.root_blocked_count, 3);
        }
        let c40 = cs.iter().find(|c| c.pid == 40).unwrap();
        assert_eq!(c40.depth, Some(3));
        assert_eq!(c40.path, vec![40, 30, 20, 10]);
        assert_eq!(cs[0].pid, 20, "ordered by depth within a root");
    }

    #[test]
    fn the_root_blocking_most_comes_first() {
        // root 1 blocks 11 and 12; root 2 blocks 21 only; 13 waits for both roots
        let waits = [w(21, &[2]), w(11, &[1]), w(12, &[1]), w(13, &[1, 2])];
        let cs = chains(&waits);
        assert_eq!(cs[0].root_pid, Some(1));
        assert_eq!(cs[0].root_blocked_count, 3);
        let roots_of_13: Vec<_> = cs
            .iter()
            .filter(|c| c.pid == 13)
            .map(|c| c.root_pid)
            .collect();
        assert_eq!(roots_of_13, vec![Some(1), Some(2)]);
        let last = cs.last().unwrap();
        assert_eq!((last.root_pid, last.root_blocked_count), (Some(2), 2));
    }

    #[test]
    fn soft_blocks_in_a_queue_use_the_shortest_path() {
        // 1 holds; 2 waits for 1; 3 waits for 1 and (soft) for 2; 4 waits for 1, 2, 3
        let waits = [w(2, &[1]), w(3, &[1, 2]), w(4, &[1, 2, 3])];
        let cs = chains(&waits);
        assert!(cs
            .iter()
            .all(|c| c.depth == Some(1) && c.root_pid == Some(1)));
        assert_eq!(cs.iter().find(|c| c.pid == 4).unwrap().path, vec![4, 1]);
    }

    #[test]
    fn a_lock_cycle_has_no_root() {
        let waits = [w(1, &[2]), w(2, &[1]), w(3, &[1])];
        let cs = chains(&waits);
        assert_eq!(cs.len(), 3);
        assert!(cs.iter().all(|c| c.root_pid.is_none() && c.depth.is_none()));
    }

    #[test]
    fn large_queue_is_linear_in_edges() {
        // 1 root, 1000 waiters each soft-blocked by every waiter ahead of it: ~500k edges
        let n = 1000;
        let waits: Vec<LockWait> = (2..=n + 1)
            .map(|p| w(p, &(1..p).collect::<Vec<_>>()))
            .collect();
        let cs = chains(&waits);
        assert_eq!(cs.len(), n as usize);
        assert!(cs
            .iter()
            .all(|c| c.root_blocked_count == n as i64 && c.depth == Some(1)));
    }

    #[test]
    fn roots_hold_up_every_waiter_behind_them() {
        let mut a = w(20, &[10]);
        a.wait_start = Some(100);
        let mut b = w(30, &[20]);
        b.wait_start = Some(50);
        let c = w(40, &[10, 35]);
        // a cycle: no root
        let x = w(50, &[60]);
        let y = w(60, &[50]);
        let rs = roots(&[a, b, c, x, y], |_| true, |_| true);
        assert_eq!(
            rs,
            vec![
                Root {
                    pid: 10,
                    wait_starts: vec![Some(100), Some(50), None]
                },
                Root {
                    pid: 35,
                    wait_starts: vec![None]
                },
            ]
        );
        // a wait left uncounted makes no edge: the one it waits for holds up nobody; its
        // waiter is the root of what it holds up when that wait is on purpose (advisory)...
        let mut adv = w(20, &[10]);
        adv.locktype = Some("advisory".into());
        let behind = w(30, &[20]);
        let counts = |w: &LockWait| w.locktype.as_deref() != Some("advisory");
        assert_eq!(
            roots(&[adv.clone(), behind.clone()], counts, |w| counts(w)),
            vec![Root {
                pid: 20,
                wait_starts: vec![None]
            }]
        );
        // ...and held up itself otherwise (a concurrent index build waiting for a snapshot)
        let mut vxid = w(20, &[10]);
        vxid.locktype = Some("virtualxid".into());
        let counted = |w: &LockWait| w.locktype.as_deref() != Some("virtualxid");
        assert_eq!(roots(&[vxid, behind], counted, |_| true), vec![]);
        // nor is it counted against the one it waits for
        let mut direct = w(40, &[10]);
        direct.wait_start = Some(7);
        assert_eq!(
            roots(&[adv, direct], counts, |w| counts(w)),
            vec![Root {
                pid: 10,
                wait_starts: vec![Some(7)]
            }]
        );
    }

    #[test]
    fn a_parallel_group_counts_once_as_its_leader_with_its_oldest_wait() {
        // leader 20 and its workers 21, 22 all wait on root 10 (pg_blocking_pids reports the
        // group's blockers under each member)
        let member = |pid: i32, start: Option<Micros>| LockWait {
            pid,
            blocked_by: vec![10],
            wait_start: start,
            leader_pid: 20,
            ..Default::default()
        };
        let mut other = w(30, &[10]);
        other.wait_start = Some(50);
        let waits = [
            member(20, None),
            member(21, Some(40)),
            member(22, Some(45)),
            other,
        ];
        assert_eq!(
            roots(&waits, |_| true, |_| true),
            vec![Root {
                pid: 10,
                wait_starts: vec![Some(40), Some(50)]
            }]
        );
        // a root whose parallel worker waits on a counted lock waits itself: no root
        let mut worker_waits = w(11, &[99]);
        worker_waits.leader_pid = 10;
        // (99 is the root of session 10, which its worker 11 waits for)
        assert_eq!(
            roots(&[w(30, &[10]), worker_waits.clone()], |_| true, |_| true),
            vec![Root {
                pid: 99,
                wait_starts: vec![None]
            }]
        );
        // on one it waits for on purpose (advisory): still the root of what it holds up
        worker_waits.locktype = Some("advisory".into());
        let counts = |w: &LockWait| w.locktype.as_deref() != Some("advisory");
        assert_eq!(
            roots(&[w(30, &[10]), worker_waits], counts, |w| counts(w)),
            vec![Root {
                pid: 10,
                wait_starts: vec![None]
            }]
        );
    }
}
