//! Lock waits with `pg_blocking_pids()`'s exact semantics, read once per waited-on lock instead
//! of once per waiter.
//!
//! `pg_blocking_pids(pid)` calls `GetBlockerStatusData(pid)`, which locks every lock-manager
//! partition and copies every PROCLOCK of the lock `pid` waits for plus the wait queue ahead of
//! it; then it applies the lock method's conflict table. Called once per waiter, a queue of W
//! waiters on one table costs W such calls of O(W) each. Here `GetBlockerStatusData` is called
//! for the *last* waiter of each waited-on lock — whose "waiters ahead" is the whole queue, in
//! order — and the core (`core::blocking::blockers_on`) applies the same rules to every waiter
//! of that lock at once: hard blocks (a conflicting lock held), soft blocks (a conflicting
//! request ahead in the queue), lock-group members never blocking each other, blockers reported
//! by their group leader's pid, and a group member's result covering its whole waiting group.
//! The integration tests and the benchmark check the result against `pg_blocking_pids()` itself.

use crate::core::blocking::{blockers_on, LockHolder, LockQueue, LockWait};
use crate::core::fasthash::FastMap;
use pgrx::pg_sys;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CStr;

/// (pid, leader pid, the LOCK it waits on, when the wait began) of every process waiting for a
/// heavyweight lock, read racily from the PGPROC array; `GetBlockerStatusData` re-reads the
/// lock under lock. The wait start comes from here (`PGPROC.waitStart`, what `pg_locks.waitstart`
/// shows): `GetBlockerStatusData` leaves `LockInstanceData.waitStart` unset.
fn waiting_procs() -> Vec<(i32, i32, usize, i64)> {
    let mut out = Vec::new();
    for p in all_procs() {
        unsafe {
            let pid = std::ptr::read_volatile(&(*p).pid);
            let lock = std::ptr::read_volatile(&(*p).waitLock);
            if pid != 0 && !lock.is_null() {
                let leader = std::ptr::read_volatile(&(*p).lockGroupLeader);
                let leader_pid = if leader.is_null() { pid } else { (*leader).pid };
                let wait_start = std::ptr::read_volatile(&(*p).waitStart.value) as i64;
                out.push((pid, leader_pid, lock as usize, wait_start));
            }
        }
    }
    out
}

/// Every entry of the PGPROC array (its fields are read racily by the callers).
fn all_procs() -> impl Iterator<Item = *mut pg_sys::PGPROC> {
    let hdr = unsafe { pg_sys::ProcGlobal };
    let n = if hdr.is_null() {
        0
    } else {
        unsafe { (*hdr).allProcCount as usize }
    };
    (0..n).map(move |i| unsafe { (*hdr).allProcs.add(i) })
}

/// Every lock group with a member waiting for a heavyweight lock: leader pid -> all its
/// members (the leader included), waiting or not, read racily from the PGPROC array.
/// `pg_blocking_pids()` of any member reports the blockers of every waiting member.
fn waiting_groups(procs: &[(i32, i32, usize, i64)]) -> HashMap<i32, Vec<i32>> {
    let leaders: HashSet<i32> = procs
        .iter()
        .filter(|&&(pid, leader, _, _)| pid != leader)
        .map(|&(_, leader, _, _)| leader)
        .chain(procs.iter().map(|&(pid, _, _, _)| pid))
        .collect();
    let mut groups: HashMap<i32, Vec<i32>> = HashMap::new();
    if procs.is_empty() {
        return groups;
    }
    for p in all_procs() {
        unsafe {
            let pid = std::ptr::read_volatile(&(*p).pid);
            let leader = std::ptr::read_volatile(&(*p).lockGroupLeader);
            if pid == 0 || leader.is_null() {
                continue;
            }
            let leader_pid = (*leader).pid;
            if leaders.contains(&leader_pid) {
                groups.entry(leader_pid).or_default().push(pid);
            }
        }
    }
    // a group of one (a leader whose workers have exited) is no group
    groups.retain(|_, members| members.len() > 1);
    groups
}

/// Whether `pid`, or a member of the lock group it leads (its parallel workers), is held up by
/// a heavyweight lock wait now (`policy::held_up_by`: any wait but one on an advisory lock),
/// read from the PGPROC array itself: a session held up is no root of a pile-up, whatever a
/// lock read that missed its wait (a queue read that raced) would say.
pub fn waits_itself(pid: i32) -> bool {
    waiting_procs()
        .iter()
        .filter(|&&(p, leader, _, _)| p == pid || leader == pid)
        .any(|&(_, _, lock, _)| {
            // the LOCK it waits on, read racily (its memory stays in the lock table)
            let tag = unsafe { std::ptr::read_volatile(&(*(lock as *const pg_sys::LOCK)).tag) };
            locktype_name(&tag).as_deref() != Some("advisory")
        })
}

/// The name of the wait event `pid` reports now (`pg_stat_activity.wait_event`), if any.
pub fn wait_event_of(pid: i32) -> Option<String> {
    unsafe {
        let proc = pg_sys::BackendPidGetProc(pid);
        if proc.is_null() {
            return None;
        }
        let info = std::ptr::read_volatile(&(*proc).wait_event_info);
        if info == 0 {
            return None;
        }
        let name = pg_sys::pgstat_get_wait_event(info);
        (!name.is_null()).then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
    }
}

/// When each current heavyweight-lock wait began (0: not set yet), read racily from the PGPROC
/// array alone (no lock-manager partition is locked): the history's lock-wait counts.
pub fn wait_starts() -> Vec<i64> {
    waiting_procs()
        .into_iter()
        .map(|(_, _, _, start)| start)
        .collect()
}

/// What one `GetBlockerStatusData(pid)` call says about the lock `pid` waits for.
struct LockRead {
    instances: Vec<pg_sys::LockInstanceData>,
    /// pids ahead of `pid` in the wait queue, front first
    ahead: Vec<i32>,
}

fn read_lock(pid: i32) -> Option<LockRead> {
    unsafe {
        let data = pg_sys::GetBlockerStatusData(pid);
        if data.is_null() {
            return None;
        }
        let d = &*data;
        for i in 0..d.nprocs as usize {
            let bproc = &*d.procs.add(i);
            if bproc.pid != pid || bproc.num_locks <= 0 {
                continue;
            }
            let instances = std::slice::from_raw_parts(
                d.locks.add(bproc.first_lock as usize),
                bproc.num_locks as usize,
            )
            .to_vec();
            let ahead = if bproc.num_waiters > 0 {
                std::slice::from_raw_parts(
                    d.waiter_pids.add(bproc.first_waiter as usize),
                    bproc.num_waiters as usize,
                )
                .to_vec()
            } else {
                Vec::new()
            };
            return Some(LockRead { instances, ahead });
        }
        None
    }
}

/// Reads the lock `candidates` wait on until the read comes from the last waiter in its queue
/// (so the queue is complete). Each step moves to a waiter behind the previous one — the latest
/// to start waiting — so a FIFO queue takes at most two reads.
fn read_whole_queue(
    candidates: &[i32],
    wait_start_of: &HashMap<i32, i64>,
) -> Option<(LockRead, i32)> {
    // start from the waiter that began waiting last: in a FIFO queue, the last one
    let mut pid = *candidates
        .iter()
        .max_by_key(|p| wait_start_of.get(p).copied().unwrap_or(i64::MAX))?;
    for _ in 0..=candidates.len() {
        let read = read_lock(pid)?;
        let covered: HashSet<i32> = read.ahead.iter().copied().chain([pid]).collect();
        // everyone not covered waits behind `pid`: jump to the one that started waiting last
        let behind = read
            .instances
            .iter()
            .filter(|i| i.waitLockMode != pg_sys::NoLock as i32 && !covered.contains(&i.pid))
            .max_by_key(|i| wait_start_of.get(&i.pid).copied().unwrap_or(i64::MAX))
            .map(|i| i.pid);
        match behind {
            None => return Some((read, pid)),
            Some(next) => pid = next,
        }
    }
    None
}

fn conflicts_of(tag: &pg_sys::LOCKTAG) -> Vec<u32> {
    unsafe {
        let method = pg_sys::GetLockTagsMethodTable(tag);
        if method.is_null() {
            return Vec::new();
        }
        let n = (*method).numLockModes as usize;
        (0..=n)
            .map(|m| *(*method).conflictTab.add(m) as u32)
            .collect()
    }
}

/// The last lock tag type of this PostgreSQL (`LOCKTAG_LAST_TYPE`): a type read racily from
/// shared memory is never used to index `LockTagTypeNames` beyond it.
#[cfg(feature = "pg15")]
const LAST_LOCKTAG_TYPE: u32 = pg_sys::LockTagType::LOCKTAG_ADVISORY;
#[cfg(not(feature = "pg15"))]
const LAST_LOCKTAG_TYPE: u32 = pg_sys::LockTagType::LOCKTAG_APPLY_TRANSACTION;

fn locktype_name(tag: &pg_sys::LOCKTAG) -> Option<String> {
    if u32::from(tag.locktag_type) > LAST_LOCKTAG_TYPE {
        return None;
    }
    unsafe {
        let p = *pg_sys::LockTagTypeNames
            .as_ptr()
            .add(tag.locktag_type as usize);
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

fn mode_name(tag: &pg_sys::LOCKTAG, mode: i32) -> Option<String> {
    unsafe {
        let p = pg_sys::GetLockmodeName(tag.locktag_lockmethodid as _, mode);
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// As `pg_locks.relation` shows it, named (`regclass`) when in the current database.
fn relation_name(tag: &pg_sys::LOCKTAG) -> Option<String> {
    use pg_sys::LockTagType::*;
    let t = tag.locktag_type as u32;
    if ![
        LOCKTAG_RELATION,
        LOCKTAG_RELATION_EXTEND,
        LOCKTAG_PAGE,
        LOCKTAG_TUPLE,
    ]
    .contains(&t)
    {
        return None;
    }
    let (db, rel) = (
        pg_sys::Oid::from(tag.locktag_field1),
        pg_sys::Oid::from(tag.locktag_field2),
    );
    // a process attached to no database (the metrics endpoint) cannot read pg_class at all:
    // PostgreSQL ends it (FATAL) for trying, so it never names a relation
    let mine = unsafe { pg_sys::MyDatabaseId };
    if db != mine || mine == pg_sys::InvalidOid {
        return Some(u32::from(rel).to_string());
    }
    unsafe {
        pgrx::direct_function_call_as_datum(pg_sys::regclassout, &[Some(pg_sys::Datum::from(rel))])
            .and_then(|d| crate::read::encoding::cstr_to_rust(d.cast_mut_ptr::<std::ffi::c_char>()))
    }
}

/// The relation a lock is on, as text without catalog access: its oid, and its database's
/// when that is not this process's (the same oid names another table there).
fn relation_oid(tag: &pg_sys::LOCKTAG) -> Option<String> {
    let t = tag.locktag_type as u32;
    if t != pg_sys::LockTagType::LOCKTAG_RELATION {
        return None;
    }
    let (db, rel) = (tag.locktag_field1, tag.locktag_field2);
    Some(
        if pg_sys::Oid::from(db) == unsafe { pg_sys::MyDatabaseId } {
            rel.to_string()
        } else {
            format!("{rel} in database {db}")
        },
    )
}

/// A relation for the worker's log line, from `relation_oid`'s text: `"orders" (oid 16390)`
/// for one of its own database, named in the check's transaction (called while planning, never
/// with interrupts held); the oid as given otherwise.
pub fn relation_label(oid_text: &str) -> String {
    let Ok(oid) = oid_text.parse::<u32>() else {
        return format!("oid {oid_text}");
    };
    unsafe {
        // named only when pg_class and its oid index can be read at once: a lock on them held
        // by another session (a database owner's VACUUM FULL pg_class, on PostgreSQL 16 and
        // older) must not stall the worker's check (the oid alone is logged then)
        let lockmode = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let catalogs = [
            pg_sys::RelationRelationId,
            pg_sys::Oid::from(pg_sys::ClassOidIndexId),
        ];
        if pg_sys::IsTransactionState() {
            let mut locked = 0;
            while locked < catalogs.len()
                && pg_sys::ConditionalLockRelationOid(catalogs[locked], lockmode)
            {
                locked += 1;
            }
            let name = if locked == catalogs.len() {
                let name = pg_sys::get_rel_name(pg_sys::Oid::from(oid));
                (!name.is_null())
                    .then(|| crate::read::encoding::cstr_to_rust(name).unwrap_or_default())
            } else {
                None
            };
            for c in &catalogs[..locked] {
                pg_sys::UnlockRelationOid(*c, lockmode);
            }
            if let Some(n) = name {
                return format!("{} (oid {oid})", crate::core::quote::quoted(&n));
            }
        }
    }
    format!("oid {oid}")
}

/// Every backend waiting for a heavyweight lock, with exactly what `pg_blocking_pids()` would
/// return for it (order aside).
pub fn lock_waits() -> Vec<LockWait> {
    read_waits(true)
}

/// The same, without the relations' names: no catalog access, for the root-blocker rule's
/// reads (the worker's plan and the re-check right before it acts).
pub fn lock_graph() -> Vec<LockWait> {
    read_waits(false)
}

/// A memory context of its own for a read whose allocations PostgreSQL leaves to the caller
/// (`GetBlockerStatusData`'s arrays): deleted when dropped, so a read outside a transaction
/// (the history's sample, the kill path's last look) leaves nothing behind in a long-lived
/// context, and one inside a transaction none until its end.
struct Scratch {
    cxt: pg_sys::MemoryContext,
    previous: pg_sys::MemoryContext,
}

impl Scratch {
    fn enter() -> Scratch {
        unsafe {
            let previous = pg_sys::CurrentMemoryContext;
            let cxt = pg_sys::AllocSetContextCreateExtended(
                previous,
                c"dbconn_guard lock graph".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            );
            pg_sys::CurrentMemoryContext = cxt;
            Scratch { cxt, previous }
        }
    }
}

impl Scratch {
    /// Frees what was allocated in it so far (each lock queue's arrays, once copied).
    fn reset(&self) {
        unsafe { pg_sys::MemoryContextReset(self.cxt) }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        unsafe {
            pg_sys::CurrentMemoryContext = self.previous;
            pg_sys::MemoryContextDelete(self.cxt);
        }
    }
}

fn read_waits(named: bool) -> Vec<LockWait> {
    let scratch = Scratch::enter();
    let procs = waiting_procs();
    let mut by_lock: BTreeMap<usize, Vec<i32>> = BTreeMap::new();
    let mut wait_start_of: HashMap<i32, i64> = HashMap::new();
    for (pid, _, lock, since) in &procs {
        by_lock.entry(*lock).or_default().push(*pid);
        if *since != 0 {
            wait_start_of.insert(*pid, *since);
        }
    }
    let mut direct: BTreeMap<i32, LockWait> = BTreeMap::new();
    for pids in by_lock.values() {
        // the previous queue's arrays are copied by now
        scratch.reset();
        let Some((read, last)) = read_whole_queue(pids, &wait_start_of) else {
            continue;
        };
        let Some(first) = read.instances.first() else {
            continue;
        };
        let tag = first.locktag;
        let queue = LockQueue {
            instances: read
                .instances
                .iter()
                .map(|i| LockHolder {
                    pid: i.pid,
                    leader_pid: i.leaderPid,
                    hold_mask: i.holdMask as u32,
                    wait_mode: i.waitLockMode,
                })
                .collect(),
            queue: read.ahead.iter().copied().chain([last]).collect(),
            conflicts: conflicts_of(&tag),
        };
        // the same for every waiter of this lock
        let (locktype, relation) = (
            locktype_name(&tag),
            if named {
                relation_name(&tag)
            } else {
                relation_oid(&tag)
            },
        );
        let instance_of: FastMap<i32, &pg_sys::LockInstanceData> =
            read.instances.iter().map(|i| (i.pid, i)).collect();
        for (pid, blockers) in blockers_on(&queue) {
            let inst = instance_of.get(&pid);
            direct.insert(
                pid,
                LockWait {
                    pid,
                    blocked_by: blockers,
                    locktype: locktype.clone(),
                    mode: inst.and_then(|i| mode_name(&tag, i.waitLockMode)),
                    relation: relation.clone(),
                    wait_start: wait_start_of.get(&pid).copied(),
                    leader_pid: 0,
                },
            );
        }
    }
    // pg_blocking_pids(pid) of a lock-group member reports the blockers of every waiting
    // member: every member of a group with a waiting member gets that union, under its own
    // pid — the leader too (the session the user sees), when only its workers wait
    for (leader, members) in waiting_groups(&procs) {
        let waiting: Vec<&LockWait> = members.iter().filter_map(|m| direct.get(m)).collect();
        let Some(first) = waiting.first() else {
            continue;
        };
        let union: Vec<i32> = waiting
            .iter()
            .flat_map(|w| w.blocked_by.iter().copied())
            .collect();
        let oldest = waiting.iter().filter_map(|w| w.wait_start).min();
        let template = (*first).clone();
        let rows: Vec<LockWait> = members
            .iter()
            .map(|&m| match direct.get(&m) {
                Some(w) => LockWait {
                    blocked_by: union.clone(),
                    leader_pid: leader,
                    ..w.clone()
                },
                // not waiting itself: it waits through its group's members
                None => LockWait {
                    pid: m,
                    blocked_by: union.clone(),
                    wait_start: oldest,
                    leader_pid: leader,
                    ..template.clone()
                },
            })
            .collect();
        for r in rows {
            direct.insert(r.pid, r);
        }
    }
    direct.into_values().collect()
}
