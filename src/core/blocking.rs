//! The blocking graph: who waits for whom, and which session sits at the root of a pile-up.
//!
//! The edges come from `pg_blocking_pids()` — PostgreSQL's own answer, which includes soft
//! blocks (a waiter queued behind another waiter whose request conflicts) and reports parallel
//! workers under their leader's pid. Nothing here re-derives lock conflicts.

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
    let mut seen = BTreeSet::new();
    for (i, w) in waits.iter().enumerate() {
        for &b in &w.blocked_by {
            if b != w.pid {
                seen.insert((w.pid, b, i));
            }
        }
    }
    // one pid may (with parallel workers) appear in two LockWait rows: keep the first row
    let mut out: Vec<Pair> = Vec::with_capacity(seen.len());
    for (blocked_pid, blocking_pid, wait) in seen {
        if out
            .last()
            .is_some_and(|p: &Pair| p.blocked_pid == blocked_pid && p.blocking_pid == blocking_pid)
        {
            continue;
        }
        out.push(Pair {
            blocked_pid,
            blocking_pid,
            wait,
        });
    }
    out
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
    fn pairs_are_deduplicated_and_sorted() {
        let waits = [w(30, &[10, 20, 10]), w(20, &[10]), w(40, &[40])];
        assert_eq!(pair_ids(&pairs(&waits)), vec![(20, 10), (30, 10), (30, 20)]);
        assert_eq!(pairs(&waits)[0].wait, 1);
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
}
