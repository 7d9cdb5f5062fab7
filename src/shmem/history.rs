//! The history ring in shared memory: `dbconn_guard.history_size` samples of
//! `dbconn_guard.history_groups` top groups each, allocated at server start, written by the
//! worker alone and read by any backend without a lock.
//!
//! Each slot carries a sequence word, as PostgreSQL's backend status entries carry their
//! `st_changecount`: the writer makes it odd, writes, and sets it to `2 × (sample number + 1)`;
//! a reader copies the slot and keeps the copy only if the word was that even value before and
//! after. A slot being rewritten, or already overwritten by a newer sample, is skipped, so a
//! reader never waits for the worker and the worker never waits for a reader.
//!
//! Lost at a restart (shared memory is laid out anew), like `pg_stat_activity`.

use crate::core::history::{ByRule, GroupName, GroupSample, Sample, StateCounts};
use crate::core::session::Micros;
use crate::guc;
use crate::shmem::status::FixedText;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::sync::atomic::{fence, AtomicPtr, AtomicU64, Ordering};

/// NAMEDATALEN: names are kept as PostgreSQL keeps them (at most 63 bytes).
const NAME: usize = 64;

#[derive(Clone, Copy)]
#[repr(C)]
struct Fixed {
    time: i64,
    clients: [u32; 5],
    lock_waiters: u32,
    longest_lock_wait_s: f64,
    oldest_xact_age_s: f64,
    longest_idle_in_xact_s: f64,
    longest_statement_s: f64,
    utilization_pct: f64,
    available_connections: i64,
    max_connections: i32,
    terminations: [u32; crate::core::policy::RULES],
    leak_suspect_groups: u32,
    groups: u32,
    new_connections: u32,
    ended_sessions: u32,
    top_root_pid: i32,
    top_root_held_up: u32,
    top_root_query_id: i64,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Entry {
    datname: FixedText<NAME>,
    usename: FixedText<NAME>,
    application_name: FixedText<NAME>,
    counts: [u32; 5],
    other: bool,
    /// Bit 0, 1, 2: datname, usename, application_name is NULL (an empty name is not).
    nulls: u8,
}

#[repr(C)]
struct Header {
    /// Samples the ring holds.
    capacity: u64,
    /// Top groups per sample (a slot has room for one more: the remainder).
    groups: u64,
    slot_size: u64,
    /// Samples written since the server started.
    written: AtomicU64,
}

#[repr(C)]
struct SlotHead {
    seq: AtomicU64,
    fixed: Fixed,
}

const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

fn slot_size(groups: usize) -> usize {
    align8(size_of::<SlotHead>() + (groups + 1) * size_of::<Entry>())
}

/// Bytes of shared memory the ring takes at these settings.
pub fn ring_bytes(samples: usize, groups: usize) -> usize {
    if samples == 0 {
        return 0;
    }
    align8(size_of::<Header>()).saturating_add(samples.saturating_mul(slot_size(groups)))
}

static RING: AtomicPtr<Header> = AtomicPtr::new(std::ptr::null_mut());
static mut PREV_REQUEST: Option<unsafe extern "C-unwind" fn()> = None;
static mut PREV_STARTUP: Option<unsafe extern "C-unwind" fn()> = None;

fn configured() -> (usize, usize) {
    (
        guc::HISTORY_SIZE.get().clamp(0, guc::MAX_HISTORY_SIZE) as usize,
        guc::HISTORY_GROUPS.get().clamp(0, guc::MAX_HISTORY_GROUPS) as usize,
    )
}

/// Registers the ring's shared memory; called from `_PG_init` while preloading, after the
/// settings are defined (their values from postgresql.conf are known by then).
pub fn init() {
    unsafe {
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        let (samples, groups) = configured();
        if samples > 0 {
            pg_sys::RequestAddinShmemSpace(ring_bytes(samples, groups));
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        let (samples, groups) = configured();
        if samples == 0 {
            RING.store(std::ptr::null_mut(), Ordering::Release);
            return;
        }
        let size = ring_bytes(samples, groups);
        // AddinShmemInitLock
        let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let p = pg_sys::ShmemInitStruct(c"dbconn_guard history".as_ptr(), size, &mut found)
            as *mut Header;
        if !found {
            std::ptr::write_bytes(p as *mut u8, 0, size);
            (*p).capacity = samples as u64;
            (*p).groups = groups as u64;
            (*p).slot_size = slot_size(groups) as u64;
            (*p).written = AtomicU64::new(0);
        }
        pg_sys::LWLockRelease(lock);
        RING.store(p, Ordering::Release);
    }
}

fn ring() -> Option<&'static Header> {
    let p = RING.load(Ordering::Acquire);
    // SAFETY: set once at shared-memory startup, to memory that lives as long as the server
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Whether there is a ring (the library preloaded and `history_size` above 0).
pub fn enabled() -> bool {
    ring().is_some()
}

/// (capacity, groups per sample) of the ring, when there is one.
pub fn shape() -> Option<(usize, usize)> {
    ring().map(|h| (h.capacity as usize, h.groups as usize))
}

unsafe fn slot(h: &Header, i: u64) -> *mut SlotHead {
    let base = (h as *const Header as *mut u8).add(align8(size_of::<Header>()));
    base.add(((i % h.capacity) * h.slot_size) as usize) as *mut SlotHead
}

unsafe fn entries(s: *mut SlotHead) -> *mut Entry {
    (s as *mut u8).add(size_of::<SlotHead>()) as *mut Entry
}

fn counts_of(c: &StateCounts) -> [u32; 5] {
    [
        c.active,
        c.idle,
        c.idle_in_transaction,
        c.idle_in_transaction_aborted,
        c.other_states,
    ]
}

fn counts_from(a: [u32; 5]) -> StateCounts {
    StateCounts {
        active: a[0],
        idle: a[1],
        idle_in_transaction: a[2],
        idle_in_transaction_aborted: a[3],
        other_states: a[4],
    }
}

/// Appends a sample (the worker alone calls this). Groups past the ring's room are dropped;
/// the core has already summed everything past the top ones into the remainder.
pub fn append(sample: &Sample) {
    let Some(h) = ring() else { return };
    let n = h.written.load(Ordering::Relaxed);
    let room = h.groups as usize + 1;
    let fixed = Fixed {
        time: sample.time,
        clients: counts_of(&sample.clients),
        lock_waiters: sample.lock_waiters,
        longest_lock_wait_s: sample.longest_lock_wait_s,
        oldest_xact_age_s: sample.oldest_xact_age_s,
        longest_idle_in_xact_s: sample.longest_idle_in_xact_s,
        longest_statement_s: sample.longest_statement_s,
        utilization_pct: sample.utilization_pct,
        available_connections: sample.available_connections,
        max_connections: sample.max_connections,
        terminations: sample.terminations.as_array(),
        leak_suspect_groups: sample.leak_suspect_groups,
        groups: sample.groups.len().min(room) as u32,
        new_connections: sample.new_connections,
        ended_sessions: sample.ended_sessions,
        top_root_pid: sample.top_root_pid,
        top_root_held_up: sample.top_root_held_up,
        top_root_query_id: sample.top_root_query_id,
    };
    unsafe {
        let s = slot(h, n);
        (*s).seq.store(2 * n + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        std::ptr::write_volatile(&raw mut (*s).fixed, fixed);
        let e = entries(s);
        for (i, g) in sample.groups.iter().take(room).enumerate() {
            std::ptr::write_volatile(
                e.add(i),
                Entry {
                    datname: FixedText::from_opt(g.name.datname.as_deref()),
                    usename: FixedText::from_opt(g.name.usename.as_deref()),
                    application_name: FixedText::from_opt(g.name.application_name.as_deref()),
                    counts: counts_of(&g.counts),
                    other: g.other,
                    nulls: u8::from(g.name.datname.is_none())
                        | u8::from(g.name.usename.is_none()) << 1
                        | u8::from(g.name.application_name.is_none()) << 2,
                },
            );
        }
        (*s).seq.store(2 * n + 2, Ordering::Release);
    }
    h.written.store(n + 1, Ordering::Release);
}

/// The newest `last` samples (all of them when `None`), oldest first, with their groups when
/// `with_groups`. Samples overwritten while being read are left out.
pub fn read(last: Option<usize>, with_groups: bool) -> Vec<Sample> {
    let Some(h) = ring() else {
        return Vec::new();
    };
    let written = h.written.load(Ordering::Acquire);
    let held = written.min(h.capacity);
    let want = last.map_or(held, |l| (l as u64).min(held));
    let mut out = Vec::with_capacity(want as usize);
    for n in written - want..written {
        if let Some(s) = unsafe { read_one(h, n, with_groups) } {
            out.push(s);
        }
    }
    out
}

/// The samples taken from `since` to `until` (inclusive), oldest first, with their groups when
/// `with_groups`: the ring walked from the first such sample only (found by bisection on the
/// samples' times, which the worker takes in order), not copied whole.
pub fn read_between(since: Micros, until: Micros, with_groups: bool) -> Vec<Sample> {
    let Some(h) = ring() else {
        return Vec::new();
    };
    let written = h.written.load(Ordering::Acquire);
    let held = written.min(h.capacity);
    // the first sample at or after `since` (a sample being overwritten is the oldest: before)
    let (mut lo, mut hi) = (written - held, written);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match unsafe { read_one(h, mid, false) } {
            Some(s) if s.time >= since => hi = mid,
            _ => lo = mid + 1,
        }
    }
    let mut out = Vec::new();
    for n in lo..written {
        let Some(s) = (unsafe { read_one(h, n, with_groups) }) else {
            continue;
        };
        if s.time > until {
            break;
        }
        if s.time >= since {
            out.push(s);
        }
    }
    out
}

/// A stored name: NULL, or its text (which may be empty: an application that set none).
fn name(t: &FixedText<NAME>, null: bool) -> Option<String> {
    (!null).then(|| t.get().to_string())
}

unsafe fn read_one(h: &Header, n: u64, with_groups: bool) -> Option<Sample> {
    let s = slot(h, n);
    let expect = 2 * n + 2;
    if (*s).seq.load(Ordering::Acquire) != expect {
        return None;
    }
    let f: Fixed = std::ptr::read_volatile(&raw const (*s).fixed);
    let mut groups = Vec::new();
    if with_groups {
        let e = entries(s);
        let len = (f.groups as usize).min(h.groups as usize + 1);
        groups.reserve(len);
        for i in 0..len {
            let g: Entry = std::ptr::read_volatile(e.add(i));
            groups.push(GroupSample {
                name: GroupName {
                    datname: name(&g.datname, g.nulls & 1 != 0),
                    usename: name(&g.usename, g.nulls & 2 != 0),
                    application_name: name(&g.application_name, g.nulls & 4 != 0),
                },
                counts: counts_from(g.counts),
                other: g.other,
            });
        }
    }
    fence(Ordering::Acquire);
    if (*s).seq.load(Ordering::Relaxed) != expect {
        return None;
    }
    Some(Sample {
        time: f.time,
        clients: counts_from(f.clients),
        lock_waiters: f.lock_waiters,
        longest_lock_wait_s: f.longest_lock_wait_s,
        oldest_xact_age_s: f.oldest_xact_age_s,
        longest_idle_in_xact_s: f.longest_idle_in_xact_s,
        longest_statement_s: f.longest_statement_s,
        max_connections: f.max_connections,
        utilization_pct: f.utilization_pct,
        available_connections: f.available_connections,
        terminations: ByRule::from_array(f.terminations),
        leak_suspect_groups: f.leak_suspect_groups,
        new_connections: f.new_connections,
        ended_sessions: f.ended_sessions,
        churn_carry: 0,
        top_root_pid: f.top_root_pid,
        top_root_held_up: f.top_root_held_up,
        top_root_query_id: f.top_root_query_id,
        groups,
    })
}

#[cfg(test)]
mod layout {
    /// The sizes docs/reference.md gives for the ring (and the cluster test checks against
    /// `pg_shmem_allocations`): 32 bytes, and 168 + 224 × (history_groups + 1) per sample.
    #[test]
    fn ring_layout_is_as_documented() {
        assert_eq!(super::align8(size_of::<super::Header>()), 32);
        assert_eq!(size_of::<super::SlotHead>(), 168);
        assert_eq!(size_of::<super::Entry>(), 224);
        assert_eq!(super::ring_bytes(8640, 16), 32 + 8640 * (168 + 224 * 17));
        assert_eq!(super::ring_bytes(0, 16), 0);
    }
}
