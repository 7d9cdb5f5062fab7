//! One check: read every backend and plan in one transaction, act through the kill path
//! (`guard`), then take the history's sample and purge; returns how long to sleep.

use super::*;
use crate::core::recheck::WOKEN_LOOKS;

struct Planned {
    extension_ready: bool,
    examined: i64,
    targets: Vec<Target>,
    /// How many of `targets`, from the first, are described for the audit (`describe_for_audit`):
    /// one cap's worth at planning; the rest only if the kill path reaches them.
    described: usize,
    deferred: i64,
    next_deadline: Option<Micros>,
    judged_at: Micros,
    /// The check's status read, when a sample of the history is due: taken after the kill
    /// path has acted, so a sample never delays a termination.
    sample_from: Option<crate::core::session::Snapshot>,
}

/// One check: read and plan in one transaction, act through the kill path, purge; returns how
/// long to sleep.
pub(super) fn cycle(state: &mut State) -> Micros {
    // the policy in force, read once per check
    let pol = guc::policy();
    let longest = policy::longest_sleep(guc::naptime_us(), &pol);
    let started = now();
    let cpu_before = cpu_time_us();
    let cycle_no = SHARED.share().cycles + 1;

    let planned = xact::transaction(c"dbconn_guard: checking sessions", || plan(state, &pol));
    let mut error: Option<String>;
    let mut could_not_record = false;
    // the audit could not be locked in time in this check: no further step waits for it
    let mut locked_out = false;
    let mut terminated = 0;
    let mut next_deadline = None;
    let mut extension_ready = false;
    let (mut examined, mut deferred) = (0, 0);
    let mut sample_from = None;
    match planned {
        Ok(mut p) => {
            sample_from = p.sample_from.take();
            extension_ready = p.extension_ready;
            examined = p.examined;
            deferred = p.deferred;
            next_deadline = p.next_deadline;
            // the cap counts sessions acted on, not sessions spared: the targets go to the
            // kill path in batches until that many are ended (or recorded, in a dry run), so
            // that sessions spared at the last look hold up no other target or rule
            let cap = pol.max_terminations_per_cycle.max(1);
            let mut acted_on = 0;
            let mut reached = 0;
            let mut errors: Vec<String> = Vec::new();
            while reached < p.targets.len() && acted_on < cap {
                let end = (reached + cap - acted_on).min(p.targets.len());
                if end > p.described {
                    // reached because targets before them were spared: described now, from
                    // the lock graph as it is now
                    let from = p.described;
                    let described = xact::transaction(
                        c"dbconn_guard: describing sessions for the audit",
                        || {
                            let graph = locks::lock_graph();
                            guard::describe_for_audit(
                                p.targets[from..end].iter_mut(),
                                &graph,
                                now(),
                            );
                        },
                    );
                    if let Err(f) = described {
                        log!(
                            "dbconn_guard worker: the audit rows of this batch say nothing of what the sessions held up or ran: {}",
                            f.message
                        );
                    }
                    p.described = end;
                }
                let batch = &p.targets[reached..end];
                reached += batch.len();
                let woken = &state.woken;
                let report = guard::carry_out(
                    batch,
                    p.judged_at,
                    &Actor::Worker { cycle: cycle_no },
                    guc::DRY_RUN.get(),
                    locked_out,
                    &|t| woken.get(&key(&t.backend)).copied().unwrap_or(0),
                );
                locked_out |= report.locked_out;
                for (t, o) in batch.iter().zip(&report.outcomes) {
                    let acted = match o {
                        Outcome::Terminated { .. } => Some(Acted::Signalled),
                        Outcome::WouldTerminate => Some(Acted::DryRun),
                        _ => None,
                    };
                    // the escalation counts from an active root's first cancel
                    // only cancels that were sent: a dry run's records never make a real
                    // escalation
                    let sent = matches!(o, Outcome::Terminated { .. });
                    match (t.rule, sent) {
                        (policy::Rule::LockQueueCancel, true) => {
                            state
                                .queue_cancels
                                .insert(session_key(&t.backend), p.judged_at);
                        }
                        (policy::Rule::BlockerCancel, true) => {
                            let at = p.judged_at;
                            let gap = episode_gap(&pol);
                            state
                                .first_cancels
                                .entry(session_key(&t.backend))
                                .and_modify(|(first, last)| {
                                    if at - *last > gap {
                                        *first = at;
                                    }
                                    *last = at;
                                })
                                .or_insert((at, at));
                        }
                        (policy::Rule::BlockerTerminate, true) => {
                            state.first_cancels.remove(&session_key(&t.backend));
                        }
                        _ => {}
                    }
                    if let Some(a) = acted {
                        acted_on += 1;
                        state.acted.insert(key(&t.backend), a);
                        if !t.rule.cancels() {
                            state.ending.insert(session_key(&t.backend), a);
                        }
                        if t.rule == policy::Rule::TransactionTimeout {
                            state.acted_xacts.insert(xact_key(&t.backend), a);
                        }
                    }
                    if let Outcome::Spared(
                        v @ (Verdict::CommitWaitsForStandby
                        | Verdict::ConcurrentIndexBuild
                        | Verdict::Stopped),
                    ) = o
                    {
                        state.back_off(t, *v, p.judged_at);
                    }
                    // found busy, at either look: counted, not backed off (a statement on its
                    // way gives the session a new key at once; see core::recheck)
                    if let Outcome::Spared(Verdict::Woken) | Outcome::Withdrawn(Verdict::Woken) = o
                    {
                        let n = state.woken.entry(key(&t.backend)).or_insert(0);
                        *n += 1;
                        if *n == 1 {
                            log!(
                                "dbconn_guard: did not end pid {} yet (rule {}): {}; it is looked at again at the next check",
                                t.backend.pid,
                                t.rule.as_str(),
                                Verdict::Woken.as_str()
                            );
                        } else if *n == WOKEN_LOOKS {
                            log!(
                                "dbconn_guard: pid {} was found busy at {} checks in a row, its status unchanged: its process no longer holds up rule {}",
                                t.backend.pid,
                                WOKEN_LOOKS,
                                t.rule.as_str()
                            );
                        }
                    }
                    // a cancelled statement is no ended session
                    if o.ended() && !t.rule.cancels() {
                        terminated += 1;
                    }
                }
                could_not_record |= report.outcomes.contains(&Outcome::NotRecorded);
                errors.extend(report.error);
                if could_not_record {
                    // the next batch would fail the same way
                    break;
                }
            }
            error = (!errors.is_empty()).then(|| errors.join("; "));
            // targets not reached wait for the next check, at once
            let left = (p.targets.len() - reached) as i64;
            if left > 0 {
                deferred += left;
                next_deadline = Some(p.judged_at);
            }
        }
        Err(f) => error = Some(f.message),
    }
    // the history's sample, from this check's read, once the kill path has acted; a failure
    // here is logged and never stops the guard
    if let Some(snap) = sample_from {
        let read_at = snap.now;
        let mut st = std::panic::AssertUnwindSafe(&mut *state);
        let ok = PgTryBuilder::new(move || {
            sample::take_sample(&mut st, &snap);
            true
        })
        .catch_others(|_| false)
        .execute();
        if !ok {
            state.next_sample = samples::next_sample_at(read_at, state.sample_interval);
            warning!("dbconn_guard worker: could not take a sample of the history; the next one is due at its time");
        }
    }
    // records kept in memory while the audit table could not be locked: written once it can
    if extension_ready && !locked_out && guard::records_pending() {
        if let Err(f) = guard::write_pending() {
            warning!("dbconn_guard worker: the records kept in memory are not written to dbconn_guard.terminations yet (retrying at the next check): {f}");
            // the audit cannot be locked in time: no further step of this check waits for it
            locked_out |= f.sqlstate == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE;
        }
    }
    if extension_ready && !locked_out && guard::withdrawals_queued() {
        if let Err(e) = guard::withdraw_queued() {
            error.get_or_insert(format!("withdrawing audit rows: {e}"));
        }
    }
    if extension_ready && !locked_out && purge::purge_due(state, now()) {
        if let Err(f) = xact::writing_transaction(c"dbconn_guard: purging old audit rows", || {
            purge::purge_audit(state, now())
        }) {
            error.get_or_insert(format!("purging old audit rows: {f}"));
        }
    }

    let finished = now();
    let mut s = SHARED.exclusive();
    s.cycles = cycle_no;
    s.last_cycle_start = started;
    s.last_cycle_us = finished - started;
    s.last_cycle_cpu_us = cpu_time_us() - cpu_before;
    s.extension_ready = extension_ready;
    s.could_not_record = could_not_record;
    s.sessions_examined = examined;
    s.terminations_last_cycle = terminated;
    s.deferred_last_cycle = deferred;
    state.terminations_total += terminated;
    s.terminations_total = state.terminations_total;
    if let Some(msg) = &error {
        s.last_error.set(msg);
        s.last_error_at = finished;
    }
    drop(s);
    match error {
        Some(msg) => {
            warning!("dbconn_guard worker: check {cycle_no}: {msg}; retrying within a naptime");
            policy::sleep_after(None, finished, guc::naptime_us())
        }
        None => policy::sleep_after(next_deadline, finished, longest),
    }
}

/// How long a session whose queued statement was cancelled counts as one that re-issues it:
/// two lock-queue timeouts, at least a minute.
fn queue_memory(pol: &policy::Policy) -> Micros {
    (2 * pol.lock_queue_timeout).max(60 * SECOND)
}

/// How long an active root may go without a cancel before its escalation starts afresh:
/// `blocker_terminate_after` + `blocker_timeout` (at least a second of slack).
fn episode_gap(pol: &policy::Policy) -> Micros {
    pol.blocker_terminate_after + pol.blocker_timeout.max(SECOND)
}

/// Reads every backend and plans (inside the check's first transaction).
fn plan(state: &mut State, pol: &policy::Policy) -> Planned {
    let mut out = Planned {
        extension_ready: false,
        examined: 0,
        targets: Vec::new(),
        described: 0,
        deferred: 0,
        next_deadline: None,
        judged_at: 0,
        sample_from: None,
    };
    // the history is sampled whether the extension exists here or not (it lives in shared
    // memory, for the views of any database); a new interval, or a clock set back, aligns
    // the next sample anew
    let interval = guc::sample_interval_us();
    let t = now();
    if interval != state.sample_interval || state.next_sample - t > interval {
        state.sample_interval = interval;
        state.next_sample = samples::next_sample_at(t, interval);
    }
    if !snapshot::extension_present() {
        guard::forget_audit_table_proof();
        if t >= state.next_sample {
            out.sample_from = Some(snapshot::activity_all());
        }
        if !state.said_missing_extension {
            log!(
                "dbconn_guard worker: extension \"dbconn_guard\" does not exist in database {}; waiting for CREATE EXTENSION dbconn_guard there",
                quoted(&guc::database())
            );
            state.said_missing_extension = true;
        }
        return out;
    }
    if state.said_missing_extension {
        log!("dbconn_guard worker: extension found, guarding sessions");
        state.said_missing_extension = false;
    }
    out.extension_ready = true;
    if !unsafe { pg_sys::superuser() } {
        error!(
            "the worker does not run as a superuser (a setting of its database or role?): it ends no session"
        );
    }

    let snap = snapshot::activity_all();
    state.connections_at_read = churn::connections_total();
    out.judged_at = snap.now;
    let util = utilization::utilization(&snap, snapshot::limits());
    out.examined = util.client_backends;

    // forget sessions that are gone — only on a complete read: a status entry that could not
    // be read is no proof that its session ended
    if !state.acted.is_empty() && snap.torn == 0 {
        let present: std::collections::HashSet<(i32, Micros, Micros)> =
            snap.backends.iter().map(key).collect();
        state.acted.retain(|k, _| present.contains(k));
    }
    if !state.acted_xacts.is_empty() && snap.torn == 0 {
        let present: std::collections::HashSet<(i32, Micros, Micros)> =
            snap.backends.iter().map(xact_key).collect();
        state.acted_xacts.retain(|k, _| present.contains(k));
    }
    if (!state.first_cancels.is_empty() || !state.queue_cancels.is_empty()) && snap.torn == 0 {
        // a session that ended, or (for the escalation) that is idle outside a transaction,
        // starts afresh: a pooler's server connection serves another client's transaction next
        let busy: std::collections::HashSet<(i32, Micros)> = snap
            .backends
            .iter()
            .filter(|b| !b.has_state("idle"))
            .map(session_key)
            .collect();
        let present: std::collections::HashSet<(i32, Micros)> =
            snap.backends.iter().map(session_key).collect();
        state.first_cancels.retain(|k, _| busy.contains(k));
        state.queue_cancels.retain(|k, _| present.contains(k));
    }
    if !state.ending.is_empty() && snap.torn == 0 {
        let present: std::collections::HashSet<(i32, Micros)> =
            snap.backends.iter().map(session_key).collect();
        state.ending.retain(|k, _| present.contains(k));
    }
    if (!state.backoff.is_empty() || !state.woken.is_empty()) && snap.torn == 0 {
        let present: std::collections::HashSet<(i32, Micros, Micros)> =
            snap.backends.iter().map(key).collect();
        state.backoff.retain(|k, _| present.contains(k));
        state.woken.retain(|k, _| present.contains(k));
    }

    if guc::ENABLED.get() && state.refused.is_none() {
        let load = Load {
            client_backends: util.client_backends,
            max_connections: util.limits.max_connections,
        };
        let (acted, acted_xacts, backoff, first_cancels, queue_cancels, ending) = (
            &state.acted,
            &state.acted_xacts,
            &state.backoff,
            &state.first_cancels,
            &state.queue_cancels,
            &state.ending,
        );
        let judged_at = snap.now;
        // the lock graph only for the root-blocker and lock-queue rules (no catalog access,
        // no names)
        let waits = if pol.watches_locks() {
            locks::lock_graph()
        } else {
            Vec::new()
        };
        // every expired target, in order: the cap is applied as they are acted on (`cycle`)
        let uncapped = policy::Policy {
            max_terminations_per_cycle: usize::MAX,
            ..pol.clone()
        };
        let plan = policy::plan_with(
            &snap,
            &waits,
            load,
            &uncapped,
            unsafe { pg_sys::MyProcPid },
            |b, rule| {
                // a statement that ignored its cancel is the same statement: acted on once,
                // but its escalation is judged all the same
                (rule != policy::Rule::BlockerTerminate && acted.contains_key(&key(b)))
                    || (b.xact_start.is_some() && acted_xacts.contains_key(&xact_key(b)))
                    || backoff.get(&key(b)).is_some_and(|o| o.until > judged_at)
            },
            |b| policy::Recall {
                first_blocker_cancel: first_cancels
                    .get(&session_key(b))
                    .filter(|(_, last)| judged_at - last <= episode_gap(&uncapped))
                    .map(|(first, _)| *first),
                queue_cancelled_lately: queue_cancels
                    .get(&session_key(b))
                    .is_some_and(|at| judged_at - at <= queue_memory(&uncapped)),
                ending: ending.contains_key(&session_key(b)),
            },
        );
        out.targets = plan.targets;
        // a queued statement's relation, named here, in the check's transaction (the kill path
        // logs it later, with interrupts held: no catalog access there)
        for t in out.targets.iter_mut() {
            if let Some(r) = t.queued.as_mut().and_then(|q| q.relation.as_mut()) {
                *r = locks::relation_label(r);
            }
        }
        // for the audit: what each target holds up (from the lock graph, read here when the
        // rules did not read it: only when there is someone to act on), on which relation,
        // and its last statement, re-read from its own status entry
        // (only one cap's worth: the kill path acts on no more unless some are spared, and the
        // targets it does not reach are planned again at the next check)
        let first = out.targets.len().min(pol.max_terminations_per_cycle.max(1));
        if first > 0 {
            let read_now;
            let graph = if pol.watches_locks() {
                &waits
            } else {
                read_now = locks::lock_graph();
                &read_now
            };
            guard::describe_for_audit(out.targets[..first].iter_mut(), graph, judged_at);
        }
        out.described = first;
        out.deferred = plan.deferred as i64;
        // a back-off that ends wakes nobody: its session is judged again at the first check
        // after it (at most a naptime, or the shortest timeout, later), so sessions spared at
        // different moments add no wake-ups of their own
        out.next_deadline = plan.next_deadline;
    }

    if snap.now >= state.next_sample {
        out.sample_from = Some(snap);
    }
    out
}
