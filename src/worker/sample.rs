//! The history's samples, taken from a check's own status read, and the leak suspects they
//! show for the first time.

use super::*;

/// Test builds only: appends `dbconn_guard.test_fill_history` synthetic samples, 10 seconds
/// apart (the default interval) and ending now, each with the ring's full number of groups under
/// 63-byte names (the worst case for a reader). The worker is the ring's only writer, so the
/// samples are written here, not by the backend that asks.
#[cfg(feature = "test_hooks")]
pub(super) fn fill_history_for_tests(state: &mut State) {
    use crate::core::history::{GroupName, GroupSample, Sample, StateCounts};
    let n = guc::TEST_FILL_HISTORY.get();
    if n <= 0 || n == state.filled {
        return;
    }
    state.filled = n;
    let groups = history::shape().map_or(0, |(_, g)| g);
    let interval = 10 * SECOND;
    let end = now();
    let name = |i: usize, what: &str| Some(format!("{what}{i:0>59}"));
    for k in 0..n as i64 {
        let mut s = Sample {
            time: end - (n as i64 - 1 - k) * interval,
            max_connections: 2300,
            utilization_pct: 50.0,
            available_connections: 1147,
            lock_waiters: (k % 7) as u32,
            longest_lock_wait_s: (k % 90) as f64,
            ..Default::default()
        };
        for g in 0..=groups {
            let counts = StateCounts {
                active: 7,
                idle: 50 + (k % 10) as u32,
                idle_in_transaction: 3,
                ..Default::default()
            };
            s.clients.add(&counts);
            s.groups.push(GroupSample {
                name: if g < groups {
                    GroupName {
                        datname: name(g, "db"),
                        usename: name(g, "us"),
                        application_name: name(g, "ap"),
                    }
                } else {
                    GroupName::default()
                },
                counts,
                other: g == groups,
            });
        }
        history::append(&s);
    }
    log!("dbconn_guard worker: test build: appended {n} synthetic samples to the history");
}

/// Takes a sample of the history from the check's own status read, and logs the leak
/// suspects it shows for the first time.
pub(super) fn take_sample(state: &mut State, snap: &crate::core::session::Snapshot) {
    state.next_sample = samples::next_sample_at(snap.now, state.sample_interval);
    let (by_rule, sampled) = {
        let s = SHARED.share();
        (s.terminations_by_rule, s.sampled_by_rule)
    };
    let connections_total = state.connections_at_read;
    let previous_churn = SHARED.share().previous_churn;
    let lock_wait_starts = locks::wait_starts();
    // the largest pile-up's root, from the lock graph, read only when something waits
    let largest_root = if lock_wait_starts.is_empty() {
        None
    } else {
        crate::core::blocking::largest_root(&locks::lock_graph())
    };
    let extra = Extra {
        lock_wait_starts,
        largest_root,
        terminations: ByRule::since(by_rule, sampled),
        leak_suspect_groups: 0,
        churn: previous_churn.map(|(total, clients, carry)| Churn {
            connections_total,
            previous_connections_total: total,
            previous_clients: clients,
            carry,
        }),
    };
    let top = history::shape().map_or(0, |(_, g)| g);
    let mut sample = samples::take(snap, snapshot::limits(), &extra, top);

    // the leak trend: this group's idle counts over the newest samples, this one included
    let window = guc::LEAK_TREND_SAMPLES.get().max(2) as usize;
    let mut recent = history::read(Some(window.saturating_sub(1)), true);
    if history::enabled() {
        recent.push(sample.clone());
    }
    let samples_of = |n: &samples::GroupName| samples::idle_series(&recent, n, window);
    let idle_age = f64::from(guc::LEAK_IDLE_AGE.get());
    let rows = leaks::suspects_with_trend(
        snap,
        idle_age,
        window,
        samples::previous_sample_time(&recent),
        samples_of,
    );
    sample.leak_suspect_groups = rows.len() as u32;
    history::append(&sample);
    {
        let mut s = SHARED.exclusive();
        s.sampled_by_rule = by_rule;
        s.sessions_ended_total += i64::from(sample.ended_sessions);
        s.previous_churn = Some((
            connections_total,
            samples::churn_clients(&sample.clients),
            sample.churn_carry,
        ));
    }
    let notes = state.leaks.note(&rows, samples_of);
    for note in notes {
        let k = &note.key;
        let why = match &note.reason {
            Reason::OldIdle(age) => {
                format!("idle sessions older than {idle_age:.0}s (oldest {age:.0}s)")
            }
            Reason::Growing(s) => format!(
                "idle count growing over the last {} samples: {s:?}",
                s.len()
            ),
        };
        warning!(
            "dbconn_guard: connection leak suspect: database={} user={} application={} client={} holds {} idle sessions; {why}",
            quoted_or(k.datname.as_deref(), "-"),
            quoted_or(k.usename.as_deref(), "-"),
            quoted_or(k.application_name.as_deref(), "-"),
            k.client_addr.as_deref().map_or_else(|| "local".to_string(), quoted),
            note.idle_count,
        );
    }
}
